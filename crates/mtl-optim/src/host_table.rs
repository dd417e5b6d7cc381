//! Row-sparse embedding training: each step gathers only the table rows the batch uses,
//! differentiates through those, and updates only those rows with a row-wise (lazy) Adam.
//!
//! Rows a step does not touch ([`SparseAdamConfig::catch_up`]):
//! - `catch-up` (the default): as dense Adam moves them — a row's momentum keeps acting after
//!   its last use, and weight decay acts every step. Done lazily: each row remembers the step
//!   it was last brought up to date, and when it is next used the steps it missed are replayed
//!   with a zero gradient (each with its own learning rate and bias correction), element for
//!   element the operations dense Adam would have done; [`SparseAdam::catch_up`] brings every
//!   row up to date before the table is read. The table equals burn's dense Adam's.
//! - `frozen` (TensorFlow's LazyAdam, `torch.optim.SparseAdam`): untouched rows keep their
//!   values and moments bit for bit; weight decay acts on touched rows only.
//!
//! Either way the bias correction uses the global step count and gradient-norm clipping
//! applies to the step's rows. Dense layers keep burn's optimiser.
//!
//! The table and its moments live in host memory, one row's value, first and second moment
//! side by side (`3 × dim` floats), so that a step's update of a row touches one place in
//! memory, in one pass; on Linux the buffer asks for transparent huge pages, so random rows
//! of a multi-GB table do not each cost a TLB miss. Each step uploads the rows the batch
//! uses to the training device and reads their gradient back (on the CPU backends both are
//! plain copies). Moving the table out of a model and back in is the trainer's business.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};

use crate::OptimError;
use crate::moments::{read_moments, write_moments};
use crate::row_adam::{RowAdamConfig, StepConstants, average_keep};

/// How the host table is set up: the row-wise Adam, what happens to untouched rows, and the
/// weight average.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseAdamConfig {
    /// The row-wise Adam's constants.
    pub adam: RowAdamConfig,
    /// Untouched rows catch up exactly (dense Adam's result) instead of staying frozen.
    pub catch_up: bool,
    /// Keep a weight average of every row with this decay (needs `catch_up`; ignored
    /// without it).
    pub average_decay: Option<f32>,
}

/// Host memory for `len` floats, zeroed: an anonymous mapping advised to use huge pages
/// where the platform has them, else a vector.
enum HostBuf {
    Map(memmap2::MmapMut),
    Vec(Vec<f32>),
}

impl HostBuf {
    /// `len` zeroed floats, or `None` when the memory cannot be had (no abort).
    fn zeroed(len: usize) -> Option<Self> {
        let bytes = len.checked_mul(4)?;
        match memmap2::MmapOptions::new().len(bytes).map_anon() {
            Ok(map) if len > 0 => {
                // advice only: without huge pages the table works the same, a little slower
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                Some(Self::Map(map))
            }
            _ => zeroed_vec(len).map(Self::Vec),
        }
    }

    fn floats(&self) -> &[f32] {
        match self {
            Self::Map(map) => bytemuck::cast_slice(&map[..]),
            Self::Vec(v) => v,
        }
    }

    fn floats_mut(&mut self) -> &mut [f32] {
        match self {
            Self::Map(map) => bytemuck::cast_slice_mut(&mut map[..]),
            Self::Vec(v) => v,
        }
    }
}

/// `len` zeroed floats in a vector, or `None` when the allocation fails.
fn zeroed_vec(len: usize) -> Option<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).ok()?;
    v.resize(len, 0.0);
    Some(v)
}

/// The error of an allocation of `floats` floats for `what` that failed.
fn no_memory(what: &str, floats: usize) -> OptimError {
    OptimError::Memory {
        what: what.to_string(),
        gib: floats as f64 * 4.0 / f64::from(1u32 << 30),
    }
}

/// What a step did to a row it did not touch, kept for replaying it (`catch-up`).
#[derive(Debug, Clone, Copy)]
struct Missed {
    factor: f32,
    eps: f32,
    lr: f32,
    /// The weight average's decay at the step ([`average_keep`]).
    keep: f32,
}

/// The `catch-up` bookkeeping: when each row was last brought up to date, and the constants
/// of the steps since every row last was.
struct CatchUp {
    /// Per row: the step it is up to date with.
    last: Vec<u64>,
    /// Every row is up to date with step `base`.
    base: u64,
    /// The constants of steps `base + 1 ..= time`.
    steps: Vec<Missed>,
}

/// The embedding table and its row-wise Adam state.
pub struct SparseAdam {
    /// Per row: value, first moment, second moment (`3 × dim` floats).
    buf: HostBuf,
    rows: usize,
    dim: usize,
    /// Steps taken (drives the bias correction).
    pub time: usize,
    config: RowAdamConfig,
    /// `Some` with [`SparseAdamConfig::catch_up`].
    catch_up: Option<CatchUp>,
    /// The weight average of every row (`[rows, dim]`) and its decay, with `ema_decay`;
    /// kept up to date lazily with the rows (it needs `catch-up`'s bookkeeping).
    average: Option<(Vec<f32>, f32)>,
    /// The plain (non-autodiff) training device, where gathered rows go.
    device: Device,
}

/// Replays the missed steps of some rows, each given as its `3 × dim` floats and its
/// up-to-date step, compiled for the widest SIMD the CPU has (as [`RowAdam`]).
struct ReplayRows<'a, 'r> {
    rows: &'a mut [ReplayRow<'r>],
    /// The constants of steps `base + 1 ..= time`.
    steps: &'a [Missed],
    base: u64,
    time: u64,
    dim: usize,
    betas: Betas,
}

impl pulp::WithSimd for ReplayRows<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let d = self.dim;
        for (slot, average, last) in self.rows.iter_mut() {
            let (w, moments) = slot.split_at_mut(d);
            let (m, v) = moments.split_at_mut(d);
            let missed = &self.steps[(**last - self.base) as usize..];
            replay(w, m, v, average.as_deref_mut(), missed, self.betas);
            **last = self.time;
        }
    }
}

/// One row to replay: its `3 × dim` floats, its weight average (if kept) and its
/// up-to-date step.
type ReplayRow<'r> = (&'r mut [f32], Option<&'r mut [f32]>, &'r mut u64);

/// Rows a replay task takes at a time.
const REPLAY_CHUNK: usize = 64;

/// The constants of a replay that do not change from step to step.
#[derive(Debug, Clone, Copy)]
struct Betas {
    b1: f32,
    b2: f32,
    wd_grad: f32,
    wd_update: f32,
}

impl StepConstants {
    fn betas(&self) -> Betas {
        Betas {
            b1: self.b1,
            b2: self.b2,
            wd_grad: self.wd_grad,
            wd_update: self.wd_update,
        }
    }
}

/// Replays the steps `missed` on one row (`w`, `m`, `v`) with a zero gradient: dense Adam's
/// operations on a row no example used, weight decay included; and the weight average's
/// update after each step, when kept.
#[inline(always)]
fn replay(
    w: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    mut average: Option<&mut [f32]>,
    missed: &[Missed],
    k: Betas,
) {
    for s in missed {
        for ((w, m), v) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()) {
            // the same operations as a touched row's with g = 0 (0 · coef + w · wd = w · wd)
            let g = 0.0 + *w * k.wd_grad;
            *m = *m * k.b1 + g * (1.0 - k.b1);
            *v = *v * k.b2 + g * g * (1.0 - k.b2);
            let update = *m * s.factor / (v.sqrt() + s.eps);
            *w -= (update + *w * k.wd_update) * s.lr;
        }
        if let Some(a) = average.as_deref_mut() {
            average_row(a, w, s.keep);
        }
    }
}

/// One step of a row's weight average: `a ← keep · a + (1 − keep) · w`.
#[inline(always)]
fn average_row(a: &mut [f32], w: &[f32], keep: f32) {
    for (a, &w) in a.iter_mut().zip(w) {
        *a = *a * keep + w * (1.0 - keep);
    }
}

/// The row-wise Adam update of [`SparseAdam::step`] as one loop, compiled for the widest SIMD
/// the CPU has (pulp's runtime dispatch: AVX-512, AVX2 or SSE2). Element for element the same
/// IEEE operations as a scalar loop, so the results do not depend on the CPU.
struct RowAdam<'a> {
    floats: &'a mut [f32],
    ids: &'a [i32],
    g: &'a [f32],
    dim: usize,
    coef: f32,
    b1: f32,
    b2: f32,
    factor: f32,
    eps: f32,
    lr: f32,
    wd_grad: f32,
    wd_update: f32,
    /// With `catch-up`: each row's up-to-date step (the step's rows were brought up to date
    /// by [`SparseAdam::gather`]; they are up to date with this step after it).
    catch_up: Option<&'a mut [u64]>,
    /// With a weight average: every row's average (`[rows, dim]`) and this step's decay.
    average: Option<(&'a mut [f32], f32)>,
    /// This step (1-based).
    time: u64,
}

impl pulp::WithSimd for RowAdam<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let d = self.dim;
        let (b1, b2, factor, eps, lr) = (self.b1, self.b2, self.factor, self.eps, self.lr);
        let mut catch_up = self.catch_up;
        let mut average = self.average;
        for (&id, g) in self.ids.iter().zip(self.g.chunks_exact(d)) {
            let base = id as usize * 3 * d;
            let (w, moments) = self.floats[base..base + 3 * d].split_at_mut(d);
            let (m, v) = moments.split_at_mut(d);
            if let Some(last) = catch_up.as_mut() {
                debug_assert_eq!(last[id as usize] + 1, self.time, "row {id} was not gathered");
                last[id as usize] = self.time;
            }
            for (((w, m), v), &g) in w.iter_mut().zip(m).zip(v).zip(g) {
                let g = g * self.coef + *w * self.wd_grad;
                *m = *m * b1 + g * (1.0 - b1);
                *v = *v * b2 + g * g * (1.0 - b2);
                let update = *m * factor / (v.sqrt() + eps);
                *w -= (update + *w * self.wd_update) * lr;
            }
            if let Some((a, keep)) = average.as_mut() {
                let row = id as usize * d;
                average_row(&mut a[row..row + d], w, *keep);
            }
        }
    }
}

impl SparseAdam {
    /// Takes `table` (`[rows, dim]`, its memory released once copied) into host memory,
    /// with zero moments; aborts when the memory cannot be had, as a `Vec` does (see
    /// [`SparseAdam::try_new`]).
    pub fn new(table: Tensor<2>, config: SparseAdamConfig, device: &Device) -> Self {
        Self::try_new(table, config, device).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`SparseAdam::new`] that returns an error naming the buffer and its size when the
    /// table, its moments or its average cannot be allocated.
    pub fn try_new(table: Tensor<2>, config: SparseAdamConfig, device: &Device) -> Result<Self, OptimError> {
        let [rows, dim] = table.dims();
        let plain = device.clone().without_autodiff();
        let table = table.into_data();
        let values = table.as_slice::<f32>().expect("embedding tables are f32");
        let len = rows.saturating_mul(3 * dim);
        let mut buf = HostBuf::zeroed(len)
            .ok_or_else(|| no_memory("the host embedding table and its Adam moments", len))?;
        let floats = buf.floats_mut();
        for (slot, row) in floats.chunks_exact_mut(3 * dim).zip(values.chunks_exact(dim)) {
            slot[..dim].copy_from_slice(row);
        }
        let catch_up = config.catch_up.then(|| CatchUp {
            last: vec![0; rows],
            base: 0,
            steps: Vec::new(),
        });
        // the average starts at the initial values; it needs catch-up's per-row steps
        let average = match config.average_decay.filter(|_| catch_up.is_some()) {
            Some(decay) => {
                let mut copy = Vec::new();
                copy.try_reserve_exact(values.len())
                    .map_err(|_| no_memory("the embedding table's weight average", values.len()))?;
                copy.extend_from_slice(values);
                Some((copy, decay))
            }
            None => None,
        };
        drop(table);
        Ok(Self {
            buf,
            rows,
            dim,
            time: 0,
            config: config.adam,
            catch_up,
            average,
            device: plain,
        })
    }

    /// Brings every row up to date with the last step (`catch-up`; nothing to do when frozen):
    /// replays the steps each row missed. The table then reads as dense Adam's would.
    pub fn catch_up(&mut self) {
        self.bring_up_to_date(None);
        if let Some(state) = self.catch_up.as_mut() {
            state.base = self.time as u64;
            state.steps.clear();
        }
    }

    /// Replays the missed steps of the rows `ids` (every row when `None`); nothing when frozen.
    /// Rows are independent, so they are replayed in parallel: the rows behind `ids` (sorted;
    /// a repeated id is taken once) are split off the buffer as disjoint slices.
    fn bring_up_to_date(&mut self, ids: Option<&[i32]>) {
        use rayon::prelude::*;
        let Some(state) = self.catch_up.as_mut() else {
            return;
        };
        let (d, time) = (self.dim, self.time as u64);
        let mut floats: &mut [f32] = self.buf.floats_mut();
        let mut lasts: &mut [u64] = &mut state.last;
        let mut averages: Option<&mut [f32]> = self.average.as_mut().map(|(a, _)| a.as_mut_slice());
        let mut rows: Vec<ReplayRow<'_>> = Vec::new();
        match ids {
            Some(ids) => {
                let mut sorted = ids.to_vec();
                sorted.sort_unstable();
                let mut at = 0usize;
                for id in sorted {
                    let id = id as usize;
                    if id < at {
                        continue;
                    }
                    let (_, rest) = std::mem::take(&mut floats).split_at_mut((id - at) * 3 * d);
                    let (slot, rest) = rest.split_at_mut(3 * d);
                    floats = rest;
                    let (_, rest) = std::mem::take(&mut lasts).split_at_mut(id - at);
                    let (last, rest) = rest.split_at_mut(1);
                    lasts = rest;
                    let average = averages.as_mut().map(|a| {
                        let (_, rest) = std::mem::take(a).split_at_mut((id - at) * d);
                        let (row, rest) = rest.split_at_mut(d);
                        *a = rest;
                        row
                    });
                    at = id + 1;
                    if last[0] < time {
                        rows.push((slot, average, &mut last[0]));
                    }
                }
            }
            None => {
                let mut averages = averages.map(|a| a.chunks_exact_mut(d));
                for (slot, last) in floats.chunks_exact_mut(3 * d).zip(lasts.iter_mut()) {
                    let average = averages.as_mut().and_then(|a| a.next());
                    if *last < time {
                        rows.push((slot, average, last));
                    }
                }
            }
        }
        let (steps, base) = (state.steps.as_slice(), state.base);
        let betas = self.config.at(1).betas();
        rows.par_chunks_mut(REPLAY_CHUNK).for_each(|chunk| {
            pulp::Arch::new().dispatch(ReplayRows {
                rows: chunk,
                steps,
                base,
                time,
                dim: d,
                betas,
            })
        });
    }

    /// Width of a row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The plain (non-autodiff) device the table's rows are uploaded to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The rows `ids` as an autodiff leaf on the training device, and the ids back; with
    /// `catch-up` the rows are first brought up to date (the forward pass sees what dense
    /// Adam's would).
    ///
    /// # Shapes
    /// - output: `[ids, dim]` leaf
    pub fn gather(&mut self, ids: Vec<i32>) -> (Tensor<2>, Vec<i32>) {
        let d = self.dim;
        self.bring_up_to_date(Some(&ids));
        let floats = self.buf.floats();
        let mut out = Vec::with_capacity(ids.len() * d);
        for &id in &ids {
            let base = id as usize * 3 * d;
            out.extend_from_slice(&floats[base..base + d]);
        }
        let rows = Tensor::<2>::from_data(TensorData::new(out, [ids.len(), d]), &self.device);
        (rows.autodiff().require_grad(), ids)
    }

    /// One row-wise Adam step on the rows `ids` (as [`SparseAdam::gather`] returned them, which
    /// brought them up to date) with their gradient `grad` (`[ids, dim]`).
    pub fn step(&mut self, ids: &[i32], grad: Tensor<2>, lr: f64) {
        let g = grad.into_data();
        let g = g.as_slice::<f32>().expect("gradients are f32");
        let d = self.dim;
        debug_assert_eq!(g.len(), ids.len() * d);
        self.time += 1;
        // as burn's clip_by_norm: coef = min(1, threshold / (‖g‖ + tiny))
        let coef = self.config.clip_norm.map_or(1.0, |threshold| {
            let norm = g.iter().map(|x| x * x).sum::<f32>().sqrt();
            (threshold / (norm + f32::MIN_POSITIVE)).min(1.0)
        });
        let c = self.config.at(self.time);
        let lr = lr as f32;
        let keep = self
            .average
            .as_ref()
            .map_or(0.0, |(_, decay)| average_keep(*decay, self.time));
        let catch_up = self.catch_up.as_mut().map(|state| {
            state.steps.push(Missed {
                factor: c.factor,
                eps: c.eps,
                lr,
                keep,
            });
            state.last.as_mut_slice()
        });
        let average = self.average.as_mut().map(|(a, _)| (a.as_mut_slice(), keep));
        let floats = self.buf.floats_mut();
        let op = RowAdam {
            floats,
            ids,
            g,
            dim: d,
            coef,
            b1: c.b1,
            b2: c.b2,
            factor: c.factor,
            eps: c.eps,
            lr,
            wd_grad: c.wd_grad,
            wd_update: c.wd_update,
            catch_up,
            average,
            time: self.time as u64,
        };
        pulp::Arch::new().dispatch(op);
    }

    /// Column block `part` (0 value, 1 first moment, 2 second moment) of every row as a
    /// `[rows, dim]` tensor on the plain training device.
    fn part(&self, part: usize) -> Tensor<2> {
        let d = self.dim;
        let mut out = Vec::with_capacity(self.rows * d);
        for row in self.buf.floats().chunks_exact(3 * d) {
            out.extend_from_slice(&row[part * d..(part + 1) * d]);
        }
        Tensor::from_data(TensorData::new(out, [self.rows, d]), &self.device)
    }

    /// The first and second moments `[rows, dim]` (plain device), every row up to date.
    pub fn moments(&mut self) -> (Tensor<2>, Tensor<2>) {
        self.catch_up();
        (self.part(1), self.part(2))
    }

    /// The current table `[rows, dim]` (plain device), every row up to date.
    pub fn table(&mut self) -> Tensor<2> {
        self.catch_up();
        self.part(0)
    }

    /// The weight average of the table `[rows, dim]` (plain device), every row up to date;
    /// `None` without one.
    pub fn average(&mut self) -> Option<Tensor<2>> {
        self.catch_up();
        let (a, _) = self.average.as_ref()?;
        Some(Tensor::from_data(
            TensorData::new(a.clone(), [self.rows, self.dim]),
            &self.device,
        ))
    }

    /// Restores the table's weight average (`[rows, dim]`, as [`SparseAdam::average`] gave
    /// it) when resuming; nothing without one.
    pub fn set_average(&mut self, values: Tensor<2>) -> Result<(), OptimError> {
        let Some((a, _)) = self.average.as_mut() else {
            return Ok(());
        };
        let data = values.into_data();
        let values = data
            .as_slice::<f32>()
            .map_err(|e| OptimError::Backend(format!("reading the table's average: {e:?}")))?;
        if values.len() != a.len() {
            return Err(OptimError::Backend(format!(
                "the saved table average has {} values; the table has {}",
                values.len(),
                a.len()
            )));
        }
        a.copy_from_slice(values);
        Ok(())
    }

    /// Saves the moments next to a checkpoint ([`write_moments`]), every row brought up to
    /// date first and streamed from the table's memory (no copy of the moments is made).
    pub fn save(&mut self, path: &Path) -> Result<(), OptimError> {
        self.catch_up();
        let (d, floats) = (self.dim, self.buf.floats());
        write_moments(path, self.rows, d, |part, r| {
            &floats[r * 3 * d + part * d..r * 3 * d + (part + 1) * d]
        })
    }

    /// Restores moments saved by [`SparseAdam::save`] (or the device table's) and the step
    /// count.
    pub fn load(&mut self, path: &Path, time: usize) -> Result<(), OptimError> {
        let (rows, d) = (self.rows, self.dim);
        let floats = self.buf.floats_mut();
        read_moments(path, rows, d, |part, r, values| {
            floats[r * 3 * d + part * d..r * 3 * d + (part + 1) * d].copy_from_slice(values);
        })?;
        self.time = time;
        // a saved table is up to date with its step
        if let Some(state) = self.catch_up.as_mut() {
            state.last.fill(time as u64);
            state.base = time as u64;
            state.steps.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_beyond_memory_is_refused_not_aborted() {
        // 2^60 floats (4 EiB): neither a mapping nor a vector can hold it
        assert!(HostBuf::zeroed(1 << 60).is_none());
        assert!(zeroed_vec(1 << 60).is_none());
        assert!(HostBuf::zeroed(usize::MAX).is_none(), "the byte count overflows");
        let small = HostBuf::zeroed(1000).unwrap();
        assert_eq!(small.floats().len(), 1000);
        assert!(small.floats().iter().all(|&x| x == 0.0));
        let message = no_memory("the table", 1 << 29).to_string();
        assert!(message.contains("the table (2.0 GiB)"), "{message}");
    }
}
