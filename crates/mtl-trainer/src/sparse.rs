//! Row-sparse embedding training: each step gathers only the table rows the batch uses,
//! differentiates through those, and updates only those rows with a row-wise (lazy) Adam.
//!
//! Rows a step does not touch follow [`UntouchedRows`]:
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
//! plain copies). The table is the trainer's business: [`crate::step::Stepper`] moves it out
//! of the model and swaps it back in for evaluation, checkpoints and the end of training.

use std::io::{Read, Write};
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{OptimizerKind, TrainSettings, UntouchedRows};
use crate::{TrainError, io_err};

/// First bytes of a saved moments file.
const MOMENTS_MAGIC: &[u8; 7] = b"MTLMOM1";

/// Host memory for `len` floats, zeroed: an anonymous mapping advised to use huge pages
/// where the platform has them, else a vector.
enum HostBuf {
    Map(memmap2::MmapMut),
    Vec(Vec<f32>),
}

impl HostBuf {
    fn zeroed(len: usize) -> Self {
        match memmap2::MmapOptions::new().len(len * 4).map_anon() {
            Ok(map) if len > 0 => {
                // advice only: without huge pages the table works the same, a little slower
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                Self::Map(map)
            }
            _ => Self::Vec(vec![0.0; len]),
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

/// The row-wise Adam's settings, shared by the host table and the device table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowAdamConfig {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    decoupled: bool,
    /// Gradient-norm clipping threshold over a step's rows.
    pub(crate) clip_norm: Option<f32>,
}

/// The constants of step `t`: betas, bias-corrected factor and epsilon (burn's Adam's
/// formulation), and the weight decay split into the gradient's part (L2, Adam) and the
/// update's (decoupled, AdamW).
pub(crate) struct StepConstants {
    pub(crate) b1: f32,
    pub(crate) b2: f32,
    pub(crate) factor: f32,
    pub(crate) eps: f32,
    pub(crate) wd_grad: f32,
    pub(crate) wd_update: f32,
}

impl RowAdamConfig {
    /// burn's Adam defaults (β 0.9, 0.999) with the run's ε, the table's weight decay
    /// ([`TrainSettings::embedding_decay`]) and clipping.
    pub(crate) fn new(settings: &TrainSettings) -> Self {
        Self {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: settings.adam_epsilon as f32,
            weight_decay: settings.embedding_decay() as f32,
            decoupled: settings.optimizer == OptimizerKind::AdamW,
            clip_norm: settings.grad_clip_norm,
        }
    }

    /// The constants of step `t` (1-based).
    pub(crate) fn at(&self, t: usize) -> StepConstants {
        let t = t as i32;
        let (b1, b2) = (self.beta_1, self.beta_2);
        let bc2 = (1.0 - b2.powi(t)).sqrt();
        let wd = self.weight_decay;
        StepConstants {
            b1,
            b2,
            factor: bc2 / (1.0 - b1.powi(t)),
            eps: self.epsilon * bc2,
            // L2 weight decay goes into the gradient, decoupled (AdamW) into the update
            wd_grad: if self.decoupled { 0.0 } else { wd },
            wd_update: if self.decoupled { wd } else { 0.0 },
        }
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

/// The weight average's decay at step `t` (1-based): `min(decay, (1 + t) / (10 + t))`, so
/// that the first steps' values, far from trained, leave the average quickly (TensorFlow's
/// `ExponentialMovingAverage` with `num_updates`).
pub(crate) fn average_keep(decay: f32, t: usize) -> f32 {
    let t = t as f64;
    (decay as f64).min((1.0 + t) / (10.0 + t)) as f32
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
    /// `Some` for [`UntouchedRows::CatchUp`].
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
    /// with zero moments.
    pub fn new(table: Tensor<2>, settings: &TrainSettings, device: &Device) -> Self {
        let [rows, dim] = table.dims();
        let plain = device.clone().without_autodiff();
        let table = table.into_data();
        let values = table.as_slice::<f32>().expect("embedding tables are f32");
        let mut buf = HostBuf::zeroed(rows * 3 * dim);
        let floats = buf.floats_mut();
        for (slot, row) in floats.chunks_exact_mut(3 * dim).zip(values.chunks_exact(dim)) {
            slot[..dim].copy_from_slice(row);
        }
        let catch_up = (settings.untouched() == UntouchedRows::CatchUp).then(|| CatchUp {
            last: vec![0; rows],
            base: 0,
            steps: Vec::new(),
        });
        // the average starts at the initial values; it needs catch-up's per-row steps
        let average = settings
            .average_decay()
            .filter(|_| catch_up.is_some())
            .map(|decay| (values.to_vec(), decay));
        drop(table);
        Self {
            buf,
            rows,
            dim,
            time: 0,
            config: RowAdamConfig::new(settings),
            catch_up,
            average,
            device: plain,
        }
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
    pub fn set_average(&mut self, values: Tensor<2>) -> Result<(), TrainError> {
        let Some((a, _)) = self.average.as_mut() else {
            return Ok(());
        };
        let data = values.into_data();
        let values = data
            .as_slice::<f32>()
            .map_err(|e| TrainError::Backend(format!("reading the table's average: {e:?}")))?;
        if values.len() != a.len() {
            return Err(TrainError::Backend(format!(
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
    pub fn save(&mut self, path: &Path) -> Result<(), TrainError> {
        self.catch_up();
        let (d, floats) = (self.dim, self.buf.floats());
        write_moments(path, self.rows, d, |part, r| {
            &floats[r * 3 * d + part * d..r * 3 * d + (part + 1) * d]
        })
    }

    /// Restores moments saved by [`SparseAdam::save`] (or the device table's) and the step
    /// count.
    pub fn load(&mut self, path: &Path, time: usize) -> Result<(), TrainError> {
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

/// Writes a moments file: a header (`MTLMOM1`, rows, dim as u64 LE), then every row of the
/// first moment and every row of the second, f32 LE; `row(part, r)` is row `r` of moment
/// `part` (1 first, 2 second).
pub(crate) fn write_moments<'a>(
    path: &Path,
    rows: usize,
    dim: usize,
    row: impl Fn(usize, usize) -> &'a [f32],
) -> Result<(), TrainError> {
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    out.write_all(MOMENTS_MAGIC).map_err(io_err(path))?;
    out.write_all(&(rows as u64).to_le_bytes())
        .map_err(io_err(path))?;
    out.write_all(&(dim as u64).to_le_bytes()).map_err(io_err(path))?;
    for part in [1, 2] {
        for r in 0..rows {
            out.write_all(bytemuck::cast_slice(row(part, r)))
                .map_err(io_err(path))?;
        }
    }
    out.into_inner()
        .map_err(|e| io_err(path)(e.into_error()))?
        .sync_all()
        .map_err(io_err(path))
}

/// Reads a moments file of a `rows × dim` table, handing each row to `put(part, r, values)`;
/// a file of another shape, or one that ends early, is an error naming it.
pub(crate) fn read_moments(
    path: &Path,
    rows: usize,
    dim: usize,
    mut put: impl FnMut(usize, usize, &[f32]),
) -> Result<(), TrainError> {
    let bad = |message: String| TrainError::Record {
        path: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut input = std::io::BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; 23];
    input
        .read_exact(&mut header)
        .map_err(|_| bad("not a moments file (too short)".into()))?;
    if &header[..7] != MOMENTS_MAGIC {
        return Err(bad("not a moments file (bad magic)".into()));
    }
    let file_rows = u64::from_le_bytes(header[7..15].try_into().expect("8 bytes"));
    let file_dim = u64::from_le_bytes(header[15..23].try_into().expect("8 bytes"));
    if (file_rows, file_dim) != (rows as u64, dim as u64) {
        return Err(bad(format!(
            "moments of a {file_rows} × {file_dim} table; this table is {rows} × {dim}"
        )));
    }
    let mut bytes = vec![0u8; dim * 4];
    let mut values = vec![0f32; dim];
    for part in [1, 2] {
        for r in 0..rows {
            input
                .read_exact(&mut bytes)
                .map_err(|_| bad("the file ends early".into()))?;
            for (dst, src) in values.iter_mut().zip(bytes.chunks_exact(4)) {
                *dst = f32::from_le_bytes(src.try_into().expect("4 bytes"));
            }
            put(part, r, &values);
        }
    }
    Ok(())
}
