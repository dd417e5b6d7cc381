//! The seam between the training loop and a distributed engine: the few collective operations
//! data-parallel training needs ([`Collective`]), one process's trivial version ([`Solo`]),
//! ranks that are threads of one process ([`threads::ThreadRank`], `mtl train --ranks N`) and,
//! behind the `mpi` feature, MPI's ([`mpi::MpiGroup`], rsmpi on the system's OpenMPI or MPICH).
//!
//! Every rank runs the same loop on its share of each global batch; the loop calls these
//! operations at the same points on every rank, in the same order. Another engine (burn's
//! own `all_reduce` on CUDA/NCCL for the GPUs of one node) plugs in by implementing
//! [`Collective`]; nothing else in the trainer names MPI.

use std::cell::Cell;
use std::fmt::Debug;
use std::rc::Rc;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};

use crate::TrainError;

/// [`Collective`]'s typed sums and gathers, for an engine with generic `sum(&self, &mut [T])`
/// and `gather(&self, &[T]) -> Vec<Vec<T>>` methods of its own.
macro_rules! typed_collectives {
    () => {
        fn sum_f32(&self, buf: &mut [f32]) {
            self.sum(buf)
        }

        fn sum_f64(&self, buf: &mut [f64]) {
            self.sum(buf)
        }

        fn gather_f32(&self, local: &[f32]) -> Vec<Vec<f32>> {
            self.gather(local)
        }

        fn gather_i32(&self, local: &[i32]) -> Vec<Vec<i32>> {
            self.gather(local)
        }
    };
}

#[cfg(feature = "mpi")]
pub mod mpi;
pub mod threads;

/// Held by a rank while it draws from the process's random stream (burn's device seed) where
/// the ranks are threads of one process ([`Group::random_turn`]).
static RANDOM_STREAM: Mutex<()> = Mutex::new(());

/// Collective operations over the ranks of one training job. Each call is made by every rank
/// at the same point of the loop; an engine's failure (a rank that died) ends the job, as
/// MPI's default error handler does — none of these returns an error.
pub trait Collective: Debug {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// The ranks in the job.
    fn size(&self) -> usize;
    /// Sums `buf` element-wise over the ranks, in place (every rank gets the sum).
    fn sum_f32(&self, buf: &mut [f32]);
    /// Sums `buf` element-wise over the ranks, in place.
    fn sum_f64(&self, buf: &mut [f64]);
    /// Every rank's `local` (of any length), in rank order.
    fn gather_f32(&self, local: &[f32]) -> Vec<Vec<f32>>;
    /// Every rank's `local` (of any length), in rank order.
    fn gather_i32(&self, local: &[i32]) -> Vec<Vec<i32>>;
    /// Ends every rank of the job at once with `code` (after this rank printed why).
    fn abort(&self, code: i32) -> !;
    /// Whether the ranks are threads of this one process ([`threads::ThreadRank`]): they
    /// then share its memory and its random stream.
    fn threads_of_one_process(&self) -> bool {
        false
    }
}

/// One process: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn sum_f32(&self, _buf: &mut [f32]) {}

    fn sum_f64(&self, _buf: &mut [f64]) {}

    fn gather_f32(&self, local: &[f32]) -> Vec<Vec<f32>> {
        vec![local.to_vec()]
    }

    fn gather_i32(&self, local: &[i32]) -> Vec<Vec<i32>> {
        vec![local.to_vec()]
    }

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The ranks a job trains on, shared by the parts of the loop (one process by default). Its
/// collectives are [`Collective`]'s, timed and counted ([`Group::take_traffic`]).
#[derive(Debug, Clone)]
pub struct Group {
    engine: Rc<dyn Collective>,
    traffic: Rc<Cell<Traffic>>,
}

/// Time spent in collectives and bytes this rank put into them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    /// Seconds inside collective calls: the transfer, and waiting for the slowest rank.
    pub secs: f64,
    /// Bytes of the buffers this rank summed with the others (all-reduce).
    pub reduced: u64,
    /// Bytes this rank contributed to gathers (all-gather; every rank receives every part).
    pub gathered: u64,
}

impl Default for Group {
    fn default() -> Self {
        Self::new(Solo)
    }
}

impl Group {
    /// The group of `engine`'s ranks.
    pub fn new(engine: impl Collective + 'static) -> Self {
        Self {
            engine: Rc::new(engine),
            traffic: Rc::default(),
        }
    }

    /// This process's rank, `0..size`.
    pub fn rank(&self) -> usize {
        self.engine.rank()
    }

    /// The ranks in the job.
    pub fn size(&self) -> usize {
        self.engine.size()
    }

    /// Ends every rank of the job at once with `code`.
    pub fn abort(&self, code: i32) -> ! {
        self.engine.abort(code)
    }

    /// The collectives' time and bytes since the last call.
    pub fn take_traffic(&self) -> Traffic {
        self.traffic.take()
    }

    /// Runs the collective `f` on `bytes` (a gather's part when `gather`), counting it
    /// (nothing in one process).
    fn timed<T>(&self, bytes: usize, gather: bool, f: impl FnOnce(&dyn Collective) -> T) -> T {
        if !self.is_distributed() {
            return f(&*self.engine);
        }
        let started = Instant::now();
        let out = f(&*self.engine);
        let mut t = self.traffic.get();
        t.secs += started.elapsed().as_secs_f64();
        match gather {
            true => t.gathered += bytes as u64,
            false => t.reduced += bytes as u64,
        }
        self.traffic.set(t);
        out
    }

    /// [`Collective::sum_f32`], counted.
    pub fn sum_f32(&self, buf: &mut [f32]) {
        self.timed(buf.len() * 4, false, |c| c.sum_f32(buf))
    }

    /// [`Collective::sum_f64`], counted.
    pub fn sum_f64(&self, buf: &mut [f64]) {
        self.timed(buf.len() * 8, false, |c| c.sum_f64(buf))
    }

    /// [`Collective::gather_f32`], counted.
    pub fn gather_f32(&self, local: &[f32]) -> Vec<Vec<f32>> {
        self.timed(local.len() * 4, true, |c| c.gather_f32(local))
    }

    /// [`Collective::gather_i32`], counted.
    pub fn gather_i32(&self, local: &[i32]) -> Vec<Vec<i32>> {
        self.timed(local.len() * 4, true, |c| c.gather_i32(local))
    }

    /// Whether this rank writes the run's files (rank 0).
    pub fn is_leader(&self) -> bool {
        self.rank() == 0
    }

    /// Whether the job has more than one rank.
    pub fn is_distributed(&self) -> bool {
        self.size() > 1
    }

    /// Whether the job's ranks are threads of this one process (`mtl train --ranks N`).
    pub fn threads_of_one_process(&self) -> bool {
        self.is_distributed() && self.engine.threads_of_one_process()
    }

    /// The process's random stream (burn's device seed and the draws after it) to this rank
    /// alone until the guard is dropped, where the ranks are threads of one process: each
    /// rank then seeds and draws in a turn of its own, so every rank draws what a process of
    /// its own would. `None` where each rank is a process.
    pub fn random_turn(&self) -> Option<MutexGuard<'static, ()>> {
        self.threads_of_one_process()
            .then(|| RANDOM_STREAM.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// This rank's part of a global batch of `rows` rows: a contiguous range, the ranks'
    /// ranges in rank order covering `0..rows` once (sizes differ by one at most).
    pub fn share(&self, rows: usize) -> std::ops::Range<usize> {
        share(rows, self.rank(), self.size())
    }

    /// Rank 0's `ok` on every rank: what followers wait on before reading what the leader
    /// wrote (a barrier that carries whether the leader succeeded).
    pub fn leader_ok(&self, ok: bool) -> bool {
        let mut flag = [if self.is_leader() && ok { 1.0 } else { 0.0 }];
        self.sum_f64(&mut flag);
        flag[0] > 0.5
    }
}

/// How many ranks an MPI launcher says share this host (OpenMPI's
/// `OMPI_COMM_WORLD_LOCAL_SIZE`, MPICH's `MPI_LOCALNRANKS`), where it says.
pub fn launcher_local_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// Rank `rank`'s part of `0..rows` split into `ranks` contiguous ranges in rank order.
pub fn share(rows: usize, rank: usize, ranks: usize) -> std::ops::Range<usize> {
    rows * rank / ranks..rows * (rank + 1) / ranks
}

/// Row-sparse gradients gathered from every rank merged into one: each distinct row once, in
/// the order first met (rank 0's rows first), its gradient the sum of the ranks' (`dim`
/// floats a row).
pub fn merge_rows(ids: &[Vec<i32>], grads: &[Vec<f32>], dim: usize) -> (Vec<i32>, Vec<f32>) {
    let mut at = std::collections::HashMap::new();
    let (mut merged_ids, mut merged) = (Vec::new(), Vec::new());
    for (ids, grads) in ids.iter().zip(grads) {
        for (&id, row) in ids.iter().zip(grads.chunks_exact(dim)) {
            let k = *at.entry(id).or_insert_with(|| {
                merged_ids.push(id);
                merged.extend(std::iter::repeat_n(0.0f32, dim));
                merged_ids.len() - 1
            });
            for (m, g) in merged[k * dim..(k + 1) * dim].iter_mut().zip(row) {
                *m += g;
            }
        }
    }
    (merged_ids, merged)
}

/// One tensor of the fused buffer: a trained parameter's gradient, or a running statistic
/// (BatchNorm's, which the forward pass updates from the rank's own rows).
struct Slot {
    len: usize,
    gradient: bool,
}

/// Takes the model's gradients (zeros where a rank has none) and running statistics, in the
/// module's order, into one list of flat tensors; the embedding table `table` (row-sparse,
/// summed apart) is left out.
struct Take<'a> {
    grads: &'a mut GradientsParams,
    table: Option<ParamId>,
    slots: Vec<Slot>,
    parts: Vec<Tensor<1>>,
    present: Vec<f32>,
}

impl ModuleVisitor for Take<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if Some(param.id) == self.table {
            return;
        }
        let value = param.val();
        let len = value.shape().num_elements();
        let gradient = value.is_require_grad();
        let part = match gradient {
            true => match self.grads.remove::<D>(param.id) {
                Some(g) => {
                    self.present.push(1.0);
                    g.reshape([len])
                }
                None => {
                    self.present.push(0.0);
                    Tensor::zeros([len], &value.inner().device())
                }
            },
            false => value.inner().reshape([len]),
        };
        self.slots.push(Slot { len, gradient });
        self.parts.push(part);
    }
}

/// Puts the summed buffer back: gradients (where some rank had one) into `grads`, running
/// statistics into the model.
struct PutBack<'a> {
    grads: &'a mut GradientsParams,
    table: Option<ParamId>,
    summed: Tensor<1>,
    present: Vec<f32>,
    at: usize,
    slot: usize,
}

impl ModuleMapper for PutBack<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if Some(param.id) == self.table {
            return param;
        }
        let dims = param.val().shape();
        let len = dims.num_elements();
        let value = self.summed.clone().slice(self.at..self.at + len).reshape(dims);
        self.at += len;
        if param.val().is_require_grad() {
            let present = self.present[self.slot];
            self.slot += 1;
            if present > 0.0 {
                self.grads.register::<D>(param.id, value);
            }
            param
        } else {
            Param::initialized(param.id, Tensor::from_inner(value))
        }
    }
}

/// The step's dense gradients summed over the ranks in one fused buffer: each rank's weighted
/// by `weight` (its rows ÷ the global batch's, so the sum is the global batch's mean-loss
/// gradient), and the running statistics averaged (so the replicas stay identical). `table`
/// is the row-sparse table's parameter, left out. One process returns them as they are.
pub fn sum_gradients<M: Module>(
    group: &Group,
    model: M,
    mut grads: GradientsParams,
    weight: f32,
    table: Option<ParamId>,
) -> Result<(M, GradientsParams), TrainError> {
    if !group.is_distributed() {
        return Ok((model, grads));
    }
    let mut take = Take {
        grads: &mut grads,
        table,
        slots: Vec::new(),
        parts: Vec::new(),
        present: Vec::new(),
    };
    model.visit(&mut take);
    let Take {
        slots,
        parts,
        mut present,
        ..
    } = take;
    let Some(device) = parts.first().map(Tensor::device) else {
        return Ok((model, grads));
    };
    let mut buf = mtl_eval::to_host(Tensor::cat(parts, 0))?;
    let mut at = 0;
    let share = 1.0 / group.size() as f32;
    for slot in &slots {
        let scale = if slot.gradient { weight } else { share };
        buf[at..at + slot.len].iter_mut().for_each(|x| *x *= scale);
        at += slot.len;
    }
    let flags = present.len();
    buf.extend_from_slice(&present);
    group.sum_f32(&mut buf);
    present.copy_from_slice(&buf[at..at + flags]);
    buf.truncate(at);
    let summed = Tensor::<1>::from_data(TensorData::new(buf, [at]), &device);
    let model = model.map(&mut PutBack {
        grads: &mut grads,
        table,
        summed,
        present,
        at: 0,
        slot: 0,
    });
    Ok((model, grads))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_row_once_in_rank_order() {
        for ranks in 1..6 {
            for rows in 0..20 {
                let parts: Vec<_> = (0..ranks).map(|r| share(rows, r, ranks)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[ranks - 1].end, rows);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let (min, max) = (
                    parts.iter().map(|p| p.len()).min().unwrap(),
                    parts.iter().map(|p| p.len()).max().unwrap(),
                );
                assert!(max - min <= 1, "{rows} rows over {ranks}: {parts:?}");
            }
        }
        // 512 over 2: 256 each, as the equivalence with one process × 512 needs
        assert_eq!(share(512, 1, 2), 256..512);
    }

    #[test]
    fn merged_rows_sum_each_row_once_in_first_seen_order() {
        // rank 0 has rows 5 and 2, rank 1 rows 2 and 9 (dim 2)
        let ids = vec![vec![5, 2], vec![2, 9]];
        let grads = vec![vec![1.0, 2.0, 3.0, 4.0], vec![10.0, 20.0, 30.0, 40.0]];
        let (m, g) = merge_rows(&ids, &grads, 2);
        assert_eq!(m, [5, 2, 9]);
        assert_eq!(g, [1.0, 2.0, 13.0, 24.0, 30.0, 40.0]);
        let (m, g) = merge_rows(&[vec![], vec![]], &[vec![], vec![]], 3);
        assert!(m.is_empty() && g.is_empty());
    }

    #[test]
    fn one_process_collectives_are_the_identity() {
        let group = Group::default();
        assert!(group.is_leader() && !group.is_distributed());
        let mut buf = [1.5f32, -2.0];
        group.sum_f32(&mut buf);
        assert_eq!(buf, [1.5, -2.0]);
        assert_eq!(group.gather_i32(&[3, 4]), [vec![3, 4]]);
        assert!(group.leader_ok(true) && !group.leader_ok(false));
        assert_eq!(group.share(7), 0..7);
    }
}
