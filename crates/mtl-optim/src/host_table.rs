//! Row-sparse embedding training: each step gathers only the table rows the batch uses,
//! differentiates through those, and updates only those rows with a row-wise (lazy) Adam.
//!
//! Rows a step does not touch ([`SparseAdamConfig::catch_up`]):
//! - caught up ([`CatchUpReplay`]): as dense Adam moves them — a row's momentum keeps acting
//!   after its last use, and weight decay acts every step. Done lazily: each row remembers the
//!   step it was last brought up to date, and when it is next used the steps it missed are
//!   replayed with a zero gradient (each with its own learning rate and bias correction):
//!   `Exact`ly, element for element the operations dense Adam would have done (the table equals
//!   burn's dense Adam's), or `Strided` ([`crate::replay`]: the first steps exactly, the rest in
//!   closed-form strides; rows no batch has used by one map for all). [`SparseAdam::catch_up`]
//!   brings every row up to date before the table is read; [`SparseAdam::snapshot`] does it on
//!   copies, and [`SparseAdam::save`] keeps rows behind as they are, so that a checkpoint does
//!   not change the run.
//! - frozen (TensorFlow's LazyAdam, `torch.optim.SparseAdam`): untouched rows keep their
//!   values and moments bit for bit; weight decay acts on touched rows only.
//!
//! Either way the bias correction uses the global step count and gradient-norm clipping
//! applies to the step's rows. Dense layers keep burn's optimiser.
//!
//! With catch-up, a step can be pipelined ([`SparseAdam::prepare_beside`]): while its passes
//! run, a second thread brings the next batch's other rows up to date, and updates the rows
//! the previous step left waiting — a pipelined step updates at once only the rows the next
//! batch shares with it ([`crate::row_step`]). Whatever reads a waiting row first (a gather, a
//! snapshot, a checkpoint, a catch-up) updates it: the same floats as steps taken one at a time.
//!
//! The table and its moments live in host memory, one row's value, first and second moment
//! side by side (`3 × dim` floats), so that a step's update of a row touches one place in
//! memory, in one pass; on Linux the buffer asks for transparent huge pages, so random rows
//! of a multi-GB table do not each cost a TLB miss. Each step uploads the rows the batch
//! uses to the training device and reads their gradient back (on the CPU backends both are
//! plain copies). Moving the table out of a model and back in is the trainer's business.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};

use crate::OptimError;
use crate::lazy_file;
use crate::moments::{read_moments, write_moments};
use crate::replay::{Betas, Fresh, LazyFreshMap, Missed, ReplayRow, ReplayRows};
use crate::row_adam::{RowAdamConfig, average_keep};
use crate::row_step::{DEFERRED, Deferred, RowStep, Split, StepScalars, split_rows};

/// How the host table is set up: the row-wise Adam, what happens to untouched rows, and the
/// weight average.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseAdamConfig {
    /// The row-wise Adam's constants.
    pub adam: RowAdamConfig,
    /// How untouched rows catch up ([`CatchUpReplay`]); `None` leaves them frozen.
    pub catch_up: Option<CatchUpReplay>,
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

/// Rows a replay task takes at a time.
const REPLAY_CHUNK: usize = 64;

/// Rows either thread of a pipelined step takes at a time ([`SharedReplay`]): a calling
/// thread whose passes end first waits for the chunk the second thread is in, so chunks are
/// smaller than [`REPLAY_CHUNK`] — one group whose cache lines the replay reads together.
/// Measured against 64 (ESMM example at the defaults, 2 threads, runs alternated, medians of
/// 10 pair ratios): 1.07× (7 of 10 ahead); every chunk at 32 rows: 1.09× and 1.06× (7 and 6 of
/// 10), at 16: 1.04× (6 of 10).
const SHARED_CHUNK: usize = 32;

/// One bring-up-to-date's replay: the steps missed since `base`, and how they are replayed.
struct Replay<'a> {
    steps: &'a [Missed],
    base: u64,
    time: u64,
    dim: usize,
    betas: Betas,
    /// With strides: the map of rows no batch has used.
    fresh: Option<LazyFreshMap<'a>>,
}

impl<'a> Replay<'a> {
    /// The replay of the steps `steps` (those after `base`) up to `time`, exact or strided
    /// (with the untouched-row grid `fresh`) as `how` says.
    fn new(
        steps: &'a [Missed],
        base: u64,
        how: (CatchUpReplay, &'a Fresh),
        time: u64,
        dim: usize,
        config: &RowAdamConfig,
    ) -> Self {
        Self {
            steps,
            base,
            time,
            dim,
            betas: config.at(1).betas(),
            fresh: (how.0 == CatchUpReplay::Strided).then(|| LazyFreshMap::new(how.1)),
        }
    }

    /// Replays `rows`, compiled for the widest SIMD the CPU has.
    fn run(&self, rows: &mut [ReplayRow<'_>]) {
        let op = ReplayRows {
            rows,
            steps: self.steps,
            base: self.base,
            time: self.time,
            dim: self.dim,
            betas: self.betas,
            strided: self.fresh.as_ref(),
        };
        pulp::Arch::new().dispatch(op);
    }

    /// Replays the rows of a block of the table (`3 × dim` floats, up-to-date step and
    /// average per row) that are behind; returns how many were, and the steps they missed.
    fn block(&self, floats: &mut [f32], lasts: &mut [u64], averages: Option<&mut [f32]>) -> (u64, u64) {
        let d = self.dim;
        let mut averages = averages.map(|a| a.chunks_exact_mut(d));
        let mut rows: Vec<ReplayRow<'_>> = Vec::with_capacity(lasts.len());
        for (slot, last) in floats.chunks_exact_mut(3 * d).zip(lasts.iter_mut()) {
            let average = averages.as_mut().and_then(|a| a.next());
            if *last < self.time {
                rows.push((slot, average, last));
            }
        }
        let behind = self.behind(&rows);
        self.run(&mut rows);
        behind
    }

    /// How many of `rows` there are, and the steps they missed: what replaying them does.
    fn behind(&self, rows: &[ReplayRow<'_>]) -> (u64, u64) {
        let missed = rows.iter().map(|(_, _, last)| self.time - **last).sum();
        (rows.len() as u64, missed)
    }
}

/// Rows behind and their replay, shared by two threads: chunks of rows handed out in order,
/// each taken once (the lock only makes a chunk shareable).
struct SharedReplay<'a> {
    replay: Replay<'a>,
    chunks: Vec<std::sync::Mutex<Vec<ReplayRow<'a>>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl<'a> SharedReplay<'a> {
    fn new(replay: Replay<'a>, rows: Vec<ReplayRow<'a>>) -> Self {
        let mut chunks = Vec::with_capacity(rows.len().div_ceil(SHARED_CHUNK));
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<ReplayRow<'a>> = rows.by_ref().take(SHARED_CHUNK).collect();
            chunks.push(std::sync::Mutex::new(chunk));
        }
        Self {
            replay,
            chunks,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Replays chunks not yet taken until none is left.
    fn take_chunks(&self) {
        use std::sync::atomic::Ordering;
        while let Some(chunk) = self.chunks.get(self.next.fetch_add(1, Ordering::Relaxed)) {
            let mut rows = chunk.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.replay.run(&mut rows);
        }
    }
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
    /// How the missed steps are replayed.
    replay: CatchUpReplay,
    /// Steps `base + 1 ..= time` on a row no batch has used ([`Fresh`]).
    fresh: Fresh,
}

/// How catch-up replays the steps a row missed ([`crate::replay`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUpReplay {
    /// Every step, as dense Adam does it: the table equals dense Adam's.
    Exact,
    /// The first [`crate::replay::EXACT_STEPS`] exactly, the rest in closed-form strides
    /// of doubling length: `O(log² gap)` per row, within 2e-3 of the exact replay.
    Strided,
}

/// What the steps did to the host table since it was last asked ([`SparseAdam::take_traffic`]):
/// the rows they updated and the rows catch-up brought up to date on the way (by a gather or
/// [`SparseAdam::prepare_beside`]), and apart from those the rows [`SparseAdam::catch_up`] brought up
/// to date (where the whole table was read). Every row's replay is counted once, so the sums
/// of both kinds do not depend on which rows a pipelined step prepared ahead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableTraffic {
    /// Steps ended ([`SparseAdam::apply`]).
    pub steps: u64,
    /// Row updates by those steps (a row once per step that used it).
    pub rows_updated: u64,
    /// Rows brought up to date before a step used them.
    pub rows_caught_up: u64,
    /// The steps those rows had missed, summed over the rows.
    pub missed_steps: u64,
    /// Rows brought up to date by [`SparseAdam::catch_up`].
    pub rows_caught_up_whole: u64,
    /// The steps those rows had missed, summed.
    pub missed_steps_whole: u64,
}

/// The embedding table and its row-wise Adam state.
pub struct SparseAdam {
    /// Per row: value, first moment, second moment (`3 × dim` floats).
    buf: HostBuf,
    rows: usize,
    dim: usize,
    /// Steps taken (drives the bias correction).
    pub time: usize,
    /// The constants of the step [`SparseAdam::advance`] started and [`SparseAdam::apply`]
    /// has not yet ended.
    current: Option<Missed>,
    config: RowAdamConfig,
    /// `Some` with [`SparseAdamConfig::catch_up`].
    catch_up: Option<CatchUp>,
    /// The weight average of every row (`[rows, dim]`) and its decay, with `ema_decay`;
    /// kept up to date lazily with the rows (it needs `catch-up`'s bookkeeping).
    average: Option<(Vec<f32>, f32)>,
    /// The plain (non-autodiff) training device, where gathered rows go.
    device: Device,
    /// What the steps did since [`SparseAdam::take_traffic`] last asked.
    traffic: TableTraffic,
    /// How the started step's rows divide, found by [`SparseAdam::prepare_beside`].
    split: Option<Split>,
    /// An ended step's rows whose update waits ([`crate::row_step`]).
    deferred: Option<Deferred>,
    /// The thread that takes a pipelined step's second-thread work
    /// ([`SparseAdam::prepare_beside`]): started by the first such step and kept (a thread
    /// started for every step cost the calling thread the start, each step).
    helper: Option<rayon::ThreadPool>,
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
        let catch_up = config.catch_up.map(|replay| CatchUp {
            last: vec![0; rows],
            base: 0,
            steps: Vec::new(),
            replay,
            fresh: Fresh::new(),
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
            current: None,
            config: config.adam,
            catch_up,
            average,
            device: plain,
            traffic: TableTraffic::default(),
            split: None,
            deferred: None,
            helper: None,
        })
    }

    /// Brings every row up to date with the last step (`catch-up`; nothing to do when frozen):
    /// replays the steps each row missed. The table then reads as dense Adam's would.
    pub fn catch_up(&mut self) {
        self.take_deferred();
        self.bring_up_to_date(None);
        if let Some(state) = self.catch_up.as_mut() {
            state.base = self.time as u64;
            state.steps.clear();
            state.fresh = Fresh::new();
        }
    }

    /// Replays the missed steps of the rows `ids` (every row when `None`); nothing when frozen.
    /// Rows are independent, so they are replayed in parallel over rayon's threads, as
    /// disjoint slices of the buffer ([`SparseAdam::rows_behind`]). Returns whether any of
    /// `ids` waits for an ended step's update (such a row is not behind: see `rows_behind`).
    fn bring_up_to_date(&mut self, ids: Option<&[i32]>) -> bool {
        use rayon::prelude::*;
        let Some(ids) = ids else {
            self.bring_every_row_up_to_date();
            return false;
        };
        let Some((replay, mut rows, waits)) = self.rows_behind(ids) else {
            return false;
        };
        rows.par_chunks_mut(REPLAY_CHUNK)
            .for_each(|chunk| replay.run(chunk));
        waits
    }

    /// Every row's missed steps replayed, block by block over rayon's threads (no list of all
    /// rows is made).
    fn bring_every_row_up_to_date(&mut self) {
        use rayon::prelude::*;
        let Some(state) = self.catch_up.as_mut() else {
            return;
        };
        let d = self.dim;
        let replay = Replay::new(
            &state.steps,
            state.base,
            (state.replay, &state.fresh),
            self.time as u64,
            d,
            &self.config,
        );
        let blocks = self
            .buf
            .floats_mut()
            .par_chunks_mut(3 * d * REPLAY_CHUNK)
            .zip(state.last.par_chunks_mut(REPLAY_CHUNK));
        let add = |a: (u64, u64), b: (u64, u64)| (a.0 + b.0, a.1 + b.1);
        let (rows, missed) = match self.average.as_mut() {
            Some((a, _)) => blocks
                .zip(a.par_chunks_mut(d * REPLAY_CHUNK))
                .map(|((f, l), a)| replay.block(f, l, Some(a)))
                .reduce(|| (0, 0), add),
            None => blocks
                .map(|(f, l)| replay.block(f, l, None))
                .reduce(|| (0, 0), add),
        };
        self.traffic.rows_caught_up_whole += rows;
        self.traffic.missed_steps_whole += missed;
    }

    /// The rows among `ids` that are behind, split off the buffer as disjoint slices (sorted;
    /// a repeated id is taken once), counted in the traffic, with the replay that brings them
    /// up to date, and whether any of `ids` waits for an ended step's update — never behind:
    /// its up-to-date step reads [`DEFERRED`], past every step, and once updated it is up to
    /// date (the step that left it waiting was the last); `None` when frozen.
    fn rows_behind(&mut self, ids: &[i32]) -> Option<(Replay<'_>, Vec<ReplayRow<'_>>, bool)> {
        let state = self.catch_up.as_mut()?;
        let (d, time) = (self.dim, self.time as u64);
        let mut floats: &mut [f32] = self.buf.floats_mut();
        let mut lasts: &mut [u64] = &mut state.last;
        let mut averages: Option<&mut [f32]> = self.average.as_mut().map(|(a, _)| a.as_mut_slice());
        let replay = Replay::new(
            &state.steps,
            state.base,
            (state.replay, &state.fresh),
            time,
            d,
            &self.config,
        );
        let mut rows: Vec<ReplayRow<'_>> = Vec::new();
        // only the rows behind are sorted (after a prepared step, often none)
        let mut waits = false;
        let mut sorted: Vec<i32> = ids
            .iter()
            .copied()
            .filter(|&id| {
                let last = lasts[id as usize];
                waits |= last == DEFERRED;
                last < time
            })
            .collect();
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
        let (behind, missed) = replay.behind(&rows);
        self.traffic.rows_caught_up += behind;
        self.traffic.missed_steps += missed;
        Some((replay, rows, waits))
    }

    /// What the steps did to the table since the last call (zero counts afterwards).
    pub fn take_traffic(&mut self) -> TableTraffic {
        std::mem::take(&mut self.traffic)
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
        // rows waiting for an ended step's update are not behind: they take it after the replay
        if self.bring_up_to_date(Some(&ids)) {
            self.take_deferred();
        }
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
    /// brought them up to date) with their gradient `grad` (`[ids, dim]`):
    /// [`SparseAdam::advance`], then [`SparseAdam::apply`].
    pub fn step(&mut self, ids: &[i32], grad: Tensor<2>, lr: f64) {
        self.advance(lr);
        self.apply(ids, grad);
    }

    /// Starts the next step at learning rate `lr`: its constants are known before its
    /// gradient, so that rows it will not touch can be brought up to date with it
    /// ([`SparseAdam::prepare_beside`]) while the gradient is computed. [`SparseAdam::apply`] ends it.
    pub fn advance(&mut self, lr: f64) {
        self.time += 1;
        let c = self.config.at(self.time);
        let keep = self
            .average
            .as_ref()
            .map_or(0.0, |(_, decay)| average_keep(*decay, self.time));
        let missed = Missed {
            factor: c.factor,
            eps: c.eps,
            lr: lr as f32,
            keep,
        };
        if let Some(state) = self.catch_up.as_mut() {
            state.steps.push(missed);
            if state.replay == CatchUpReplay::Strided {
                state.fresh.push(&missed, c.betas());
            }
        }
        self.current = Some(missed);
        self.split = None;
    }

    /// Whether a step [`SparseAdam::advance`] started waits for [`SparseAdam::apply`].
    pub fn started(&self) -> bool {
        self.current.is_some()
    }

    /// Brings the rows of the next batch (`next`, distinct) that the current step does not use
    /// (`current`, distinct: [`SparseAdam::apply`] brings those) up to date with the step
    /// [`SparseAdam::advance`] started — the replay a later [`SparseAdam::gather`] of them would
    /// do, done ahead — on a second thread while `work` runs on the calling thread, which then
    /// takes its share of what is left; returns what `work` returned. The second thread first
    /// updates the rows an earlier step left waiting, and finds which of `current`'s rows the
    /// next batch uses: [`SparseAdam::apply`] (given `current`) updates only those and leaves
    /// the others to the next step's second thread ([`crate::row_step`]). Each row is updated
    /// and replayed whole by one thread, so the floats do not depend on which. The second
    /// thread is the table's own, started by the first call and kept.
    pub fn prepare_beside<R>(&mut self, next: &[i32], current: &[i32], work: impl FnOnce() -> R) -> R {
        if self.catch_up.is_none() {
            return work();
        }
        // without a thread to do it on, the step is taken as without `prepare_beside`: the
        // same floats (the gathers replay the rows, `apply` updates them all)
        let Some(helper) = self.helper.take().or_else(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(|_| "mtl-table".into())
                .build()
                .ok()
        }) else {
            return work();
        };
        let shared = std::sync::OnceLock::new();
        let (table, shared_rows) = (&mut *self, &shared);
        // ends when both sides are done; a panic on the second thread reaches this one
        let out = helper.in_place_scope(|scope| {
            scope.spawn(move |_| {
                table.take_deferred();
                let (ahead, split) = split_rows(next, current);
                table.split = Some(split);
                // the rows an earlier step left waiting were updated just above
                if let Some((replay, rows, _)) = SparseAdam::rows_behind(table, &ahead) {
                    shared_rows
                        .get_or_init(|| SharedReplay::new(replay, rows))
                        .take_chunks();
                }
            });
            let out = work();
            if let Some(rows) = shared.get() {
                rows.take_chunks();
            }
            out
        });
        self.helper = Some(helper);
        out
    }

    /// Ends the step [`SparseAdam::advance`] started: the row-wise Adam update of the rows
    /// `ids` with their gradient `grad` (`[ids, dim]`). After [`SparseAdam::prepare_beside`]
    /// (with `ids` as its `current`) the rows the next batch does not use wait: the next
    /// step's second thread, or whatever reads them first, updates them.
    pub fn apply(&mut self, ids: &[i32], grad: Tensor<2>) {
        let Some(Missed { lr, keep, .. }) = self.current.take() else {
            panic!("SparseAdam::apply without SparseAdam::advance");
        };
        self.take_deferred();
        let g = grad.into_data();
        let values = g.as_slice::<f32>().expect("gradients are f32");
        debug_assert_eq!(values.len(), ids.len() * self.dim);
        // as burn's clip_by_norm: coef = min(1, threshold / (‖g‖ + tiny))
        let coef = self.config.clip_norm.map_or(1.0, |threshold| {
            let norm = values.iter().map(|x| x * x).sum::<f32>().sqrt();
            (threshold / (norm + f32::MIN_POSITIVE)).min(1.0)
        });
        let s = StepScalars {
            c: self.config.at(self.time),
            coef,
            lr,
            keep,
            time: self.time as u64,
        };
        self.traffic.steps += 1;
        self.traffic.rows_updated += ids.len() as u64;
        let split = self.split.take().filter(|split| split.rows == ids.len());
        self.update_rows(ids, values, split.as_ref().map(|split| split.now.as_slice()), s);
        let (Some(split), Some(state)) = (split, self.catch_up.as_mut()) else {
            return;
        };
        if split.later.is_empty() {
            return;
        }
        for &p in &split.later {
            state.last[ids[p as usize] as usize] = DEFERRED;
        }
        self.deferred = Some(Deferred {
            ids: ids.to_vec(),
            g,
            later: split.later,
            s,
        });
    }

    /// The update ([`RowStep`]) of the rows `ids` at the positions `only` (every one when
    /// `None`) with their gradient `g` (`[ids, dim]`) at a step's scalars `s`.
    fn update_rows(&mut self, ids: &[i32], g: &[f32], only: Option<&[u32]>, s: StepScalars) {
        let op = RowStep {
            floats: self.buf.floats_mut(),
            ids,
            g,
            only,
            dim: self.dim,
            s,
            catch_up: self.catch_up.as_mut().map(|state| state.last.as_mut_slice()),
            average: self.average.as_mut().map(|(a, _)| a.as_mut_slice()),
        };
        pulp::Arch::new().dispatch(op);
    }

    /// Updates the rows an ended step left waiting, if any ([`crate::row_step`]).
    fn take_deferred(&mut self) {
        if let Some(d) = self.deferred.take() {
            let g = d.g.as_slice::<f32>().expect("gradients are f32");
            self.update_rows(&d.ids, g, Some(&d.later), d.s);
        }
    }

    /// Whether any of the rows `ids` waits for an ended step's update.
    #[cfg(test)]
    fn waits_for_any(&self, ids: &[i32]) -> bool {
        match (&self.deferred, &self.catch_up) {
            (Some(_), Some(state)) => ids.iter().any(|&id| state.last[id as usize] == DEFERRED),
            _ => false,
        }
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
        self.take_deferred();
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

    /// The table and its weight average (`[rows, dim]`, plain device) as [`SparseAdam::table`]
    /// and [`SparseAdam::average`] give them, every row brought up to date — on copies: the
    /// rows and their bookkeeping stay as they are (checkpoints, so that a run stopped and
    /// resumed anywhere trains as the uninterrupted one; rows whose update waits take it
    /// first, as they would anyway).
    pub fn snapshot(&mut self) -> (Tensor<2>, Option<Tensor<2>>) {
        use rayon::prelude::*;
        self.take_deferred();
        let (rows, d) = (self.rows, self.dim);
        let mut values = vec![0f32; rows * d];
        let mut average = self.average.as_ref().map(|(a, _)| a.clone());
        let floats = self.buf.floats();
        let block = 3 * d * REPLAY_CHUNK;
        let copy_values = |out: &mut [f32], slots: &[f32]| {
            for (o, slot) in out.chunks_exact_mut(d).zip(slots.chunks_exact(3 * d)) {
                o.copy_from_slice(&slot[..d]);
            }
        };
        match &self.catch_up {
            None => values
                .par_chunks_mut(d * REPLAY_CHUNK)
                .zip(floats.par_chunks(block))
                .for_each(|(out, slots)| copy_values(out, slots)),
            Some(state) => {
                let how = (state.replay, &state.fresh);
                let replay = Replay::new(&state.steps, state.base, how, self.time as u64, d, &self.config);
                let blocks = values
                    .par_chunks_mut(d * REPLAY_CHUNK)
                    .zip(floats.par_chunks(block))
                    .zip(state.last.par_chunks(REPLAY_CHUNK));
                let one = |out: &mut [f32], slots: &[f32], last: &[u64], average: Option<&mut [f32]>| {
                    let (mut slots, mut last) = (slots.to_vec(), last.to_vec());
                    replay.block(&mut slots, &mut last, average);
                    copy_values(out, &slots);
                };
                match average.as_mut() {
                    Some(a) => blocks
                        .zip(a.par_chunks_mut(d * REPLAY_CHUNK))
                        .for_each(|(((out, slots), last), a)| one(out, slots, last, Some(a))),
                    None => blocks.for_each(|((out, slots), last)| one(out, slots, last, None)),
                }
            }
        }
        let tensor = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [rows, d]), &self.device);
        (tensor(values), average.map(tensor))
    }

    /// Where [`SparseAdam::save`] puts the catch-up bookkeeping beside the moments file
    /// `moments` ([`crate::lazy_file`]).
    pub fn catch_up_path(moments: &Path) -> PathBuf {
        moments.with_extension("catchup")
    }

    /// Saves the moments next to a checkpoint ([`write_moments`], streamed from the table's
    /// memory) as they are, and with catch-up its bookkeeping — each row's step, the steps'
    /// constants, the rows' values and average as stored — at [`SparseAdam::catch_up_path`]:
    /// the table is not brought up to date, so that the run goes on exactly as before.
    pub fn save(&mut self, path: &Path) -> Result<(), OptimError> {
        self.take_deferred();
        let (d, floats) = (self.dim, self.buf.floats());
        write_moments(path, self.rows, d, |part, r| {
            &floats[r * 3 * d + part * d..r * 3 * d + (part + 1) * d]
        })?;
        let Some(state) = self.catch_up.as_ref() else {
            return Ok(());
        };
        let lazy = lazy_file::LazyState {
            rows: self.rows,
            dim: d,
            time: self.time as u64,
            base: state.base,
            steps: Cow::Borrowed(&state.steps),
            fresh: Cow::Borrowed(&state.fresh),
            last: Cow::Borrowed(&state.last),
            average: self.average.as_ref().map(|(a, _)| Cow::Borrowed(a.as_slice())),
        };
        lazy_file::write(&Self::catch_up_path(path), &lazy, |r| {
            &floats[r * 3 * d..r * 3 * d + d]
        })
    }

    /// Restores moments saved by [`SparseAdam::save`] (or the device table's) and the step
    /// count; the rows are taken as up to date with it (see [`SparseAdam::restore_catch_up`]).
    pub fn load(&mut self, path: &Path, time: usize) -> Result<(), OptimError> {
        let (rows, d) = (self.rows, self.dim);
        let floats = self.buf.floats_mut();
        read_moments(path, rows, d, |part, r, values| {
            floats[r * 3 * d + part * d..r * 3 * d + (part + 1) * d].copy_from_slice(values);
        })?;
        self.time = time;
        (self.split, self.deferred) = (None, None);
        if let Some(state) = self.catch_up.as_mut() {
            state.last.fill(time as u64);
            state.base = time as u64;
            state.steps.clear();
            state.fresh = Fresh::new();
        }
        Ok(())
    }

    /// After [`SparseAdam::load`] (and [`SparseAdam::set_average`]): where the checkpoint has
    /// catch-up bookkeeping beside the moments file `moments`, takes the rows' values, average
    /// and steps as saved, rows not yet brought up to date included; a checkpoint without it
    /// (or a table without catch-up) stays as loaded.
    pub fn restore_catch_up(&mut self, moments: &Path) -> Result<(), OptimError> {
        let path = Self::catch_up_path(moments);
        let Some(state) = self.catch_up.as_mut() else {
            return Ok(());
        };
        if !path.exists() {
            return Ok(());
        }
        let (saved, values) = lazy_file::read(&path, self.rows, self.dim, self.time as u64)?;
        if saved.average.is_some() != self.average.is_some() {
            return Err(OptimError::Record {
                path: path.display().to_string(),
                message: "saved with and loaded without a weight average, or the other way round".into(),
            });
        }
        let d = self.dim;
        for (slot, v) in self
            .buf
            .floats_mut()
            .chunks_exact_mut(3 * d)
            .zip(values.chunks_exact(d))
        {
            slot[..d].copy_from_slice(v);
        }
        if let (Some((a, _)), Some(saved)) = (self.average.as_mut(), saved.average) {
            a.copy_from_slice(&saved);
        }
        state.base = saved.base;
        state.steps = saved.steps.into_owned();
        state.fresh = saved.fresh.into_owned();
        state.last = saved.last.into_owned();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 400-row, 4-wide table with weight decay 1e-3, `replay` for untouched rows (`None`:
    /// frozen) and the weight average.
    fn sparse_table(replay: Option<CatchUpReplay>) -> SparseAdam {
        let (rows, dim) = (400usize, 4usize);
        let device = Device::flex();
        let init: Vec<f32> = (0..rows * dim)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 2e-4)
            .collect();
        let table = Tensor::<2>::from_data(TensorData::new(init, [rows, dim]), &device);
        let config = SparseAdamConfig {
            catch_up: replay,
            ..table_config(CatchUpReplay::Exact)
        };
        SparseAdam::new(table, config, &device)
    }

    /// The rows step `step` of a made-up run touches: up to 6, low ids often, high ids
    /// rarely (gaps of 1 to hundreds of steps; some rows never come back), drawn from the step
    /// number alone so that a resumed run draws the same.
    fn step_ids(step: u64) -> Vec<i32> {
        let mut state = step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let mut ids: Vec<i32> = (0..6)
            .map(|_| ((next() % 400) * (next() % 400) / 400) as i32)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Step `step`'s made-up gradient for `n` rows of `dim`.
    fn step_grad(step: u64, n: usize, dim: usize, device: &Device) -> Tensor<2> {
        let grad: Vec<f32> = (0..n * dim)
            .map(|i| ((step as usize * 7919 + i * 104729) % 2001) as f32 * 1e-6 - 1e-3)
            .collect();
        Tensor::<2>::from_data(TensorData::new(grad, [n, dim]), device)
    }

    /// Steps `steps` of the made-up run ([`step_ids`], [`step_grad`]); `pipelined`: as the
    /// trainer's pipeline takes them, each step started ahead of its gradient and the next
    /// step's other rows brought up to date before it ends.
    fn train_with(table: &mut SparseAdam, steps: std::ops::RangeInclusive<u64>, pipelined: bool) {
        let next = |step: u64| step_ids(step + 1);
        train_hinted(
            table,
            steps,
            pipelined.then_some(&next as &dyn Fn(u64) -> Vec<i32>),
        );
    }

    /// [`train_with`], one step at a time.
    fn train(table: &mut SparseAdam, steps: std::ops::RangeInclusive<u64>) {
        train_with(table, steps, false);
    }

    #[test]
    fn a_pipelined_run_is_the_sequential_run_bit_for_bit() {
        for replay in [CatchUpReplay::Strided, CatchUpReplay::Exact] {
            let (mut sequential, mut pipelined) = (sparse_table(Some(replay)), sparse_table(Some(replay)));
            train_with(&mut sequential, 1..=300, false);
            train_with(&mut pipelined, 1..=300, true);
            // the rows brought up to date ahead are counted once, as the gathers count them (the
            // pipelined run prepared step 301's rows: the sequential one gathers them here)
            for table in [&mut sequential, &mut pipelined] {
                drop(table.gather(step_ids(301)));
            }
            let traffic = sequential.take_traffic();
            assert_eq!(pipelined.take_traffic(), traffic);
            assert!(traffic.rows_caught_up > 0 && traffic.steps == 300);
            // rows prepared ahead of a whole-table read are counted there by the other run:
            // the sums of both kinds agree
            train_with(&mut sequential, 302..=310, false);
            train_with(&mut pipelined, 302..=310, true);
            let whole = |t: &mut SparseAdam| {
                t.catch_up();
                t.take_traffic()
            };
            let (s, p) = (whole(&mut sequential), whole(&mut pipelined));
            assert_ne!(s.rows_caught_up, p.rows_caught_up);
            assert_eq!(
                (
                    s.rows_caught_up + s.rows_caught_up_whole,
                    s.missed_steps + s.missed_steps_whole
                ),
                (
                    p.rows_caught_up + p.rows_caught_up_whole,
                    p.missed_steps + p.missed_steps_whole
                )
            );
            let read = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
            assert_eq!(read(pipelined.table()), read(sequential.table()), "{replay:?}");
            assert_eq!(
                read(pipelined.average().unwrap()),
                read(sequential.average().unwrap())
            );
            let (m1, v1) = pipelined.moments();
            let (m2, v2) = sequential.moments();
            assert_eq!((read(m1), read(v1)), (read(m2), read(v2)));
        }
    }

    #[test]
    fn rows_prepared_by_both_threads_are_those_a_gather_replays() {
        let read = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
        for replay in [CatchUpReplay::Strided, CatchUpReplay::Exact] {
            let (mut gathered, mut prepared) = (sparse_table(Some(replay)), sparse_table(Some(replay)));
            train(&mut gathered, 1..=60);
            train(&mut prepared, 1..=60);
            // step 61 uses rows 0-2; the other 397 rows (13 chunks, most behind) are brought up
            // to date beside it: the helper thread starts, the calling thread joins in after its
            // own work, and together they replay what the gather of step 62 replays alone
            let (ids, rest): (Vec<i32>, Vec<i32>) = ((0..3).collect(), (3..400).collect());
            let (dim, device) = (gathered.dim(), gathered.device().clone());
            let grad = || step_grad(61, ids.len(), dim, &device);
            drop(gathered.gather(ids.clone()));
            gathered.step(&ids, grad(), 1e-3);
            drop(gathered.gather(rest.clone()));
            drop(prepared.gather(ids.clone()));
            prepared.advance(1e-3);
            let next: Vec<i32> = (0..400).collect();
            assert_eq!(prepared.prepare_beside(&next, &ids, || 7), 7);
            prepared.apply(&ids, grad());
            drop(prepared.gather(rest.clone()));
            assert_eq!(prepared.take_traffic(), gathered.take_traffic());
            // read straight from the buffers: every row is up to date, nothing left to replay
            let buffer = |t: &SparseAdam| t.buf.floats().to_vec();
            assert_eq!(buffer(&prepared), buffer(&gathered), "{replay:?}");
            assert_eq!(
                read(prepared.average().unwrap()),
                read(gathered.average().unwrap())
            );
        }
    }

    #[test]
    fn the_traffic_counts_updated_rows_and_the_steps_rows_missed() {
        let mut table = sparse_table(Some(CatchUpReplay::Exact));
        let dim = table.dim();
        let mut step = |ids: Vec<i32>| {
            let (_, ids) = table.gather(ids);
            let grad = step_grad(1, ids.len(), dim, table.device());
            table.step(&ids, grad, 1e-3);
        };
        // step 1: rows 0-2, none behind; step 2: row 3 missed step 1; step 3: row 0 missed
        // step 2, row 3 is current; step 4: row 1 missed steps 2 and 3, row 5 steps 1-3
        step(vec![0, 1, 2]);
        step(vec![2, 3]);
        step(vec![0, 3]);
        step(vec![1, 5]);
        let want = TableTraffic {
            steps: 4,
            rows_updated: 9,
            rows_caught_up: 4,
            missed_steps: 1 + 1 + 2 + 3,
            ..TableTraffic::default()
        };
        assert_eq!(table.take_traffic(), want);
        assert_eq!(table.take_traffic(), TableTraffic::default());
        // reading the whole table counts apart: of 400 rows, 395 were never used (4 missed
        // steps each), row 0 is one step behind, row 2 two, row 3 one; rows 1 and 5 are current
        table.catch_up();
        let whole = TableTraffic {
            rows_caught_up_whole: 395 + 3,
            missed_steps_whole: 395 * 4 + 1 + 2 + 1,
            ..TableTraffic::default()
        };
        assert_eq!(table.take_traffic(), whole);
        // frozen rows are never brought up to date
        let mut frozen = sparse_table(None);
        for ids in [vec![0, 1], vec![2], vec![0, 2]] {
            let (_, ids) = frozen.gather(ids);
            let grad = step_grad(1, ids.len(), dim, frozen.device());
            frozen.step(&ids, grad, 1e-3);
        }
        let t = frozen.take_traffic();
        assert_eq!(
            (t.steps, t.rows_updated, t.rows_caught_up, t.missed_steps),
            (3, 5, 0, 0)
        );
    }

    /// Steps `steps` of the made-up run, pipelined with `hint(step)` named as the next batch's
    /// rows (the real next batch's or not), or one at a time without a hint; returns how many
    /// gathers found rows waiting, and every gathered row's values.
    fn train_hinted(
        table: &mut SparseAdam,
        steps: std::ops::RangeInclusive<u64>,
        hint: Option<&dyn Fn(u64) -> Vec<i32>>,
    ) -> (usize, Vec<f32>) {
        let (dim, mut waited, mut values) = (table.dim(), 0, Vec::new());
        for step in steps {
            let ids = step_ids(step);
            waited += usize::from(table.waits_for_any(&ids));
            let (gathered, ids) = table.gather(ids);
            values.extend(gathered.into_data().iter::<f32>());
            let grad = step_grad(step, ids.len(), dim, table.device());
            match hint {
                Some(hint) => {
                    table.advance(1e-3);
                    table.prepare_beside(&hint(step), &ids, || ());
                    table.apply(&ids, grad);
                }
                None => table.step(&ids, grad, 1e-3),
            }
        }
        (waited, values)
    }

    #[test]
    fn rows_left_waiting_are_updated_before_anything_reads_them() {
        let read = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
        // every third step names the next batch without this step's rows as the next: the
        // next gather finds the rows both use waiting (the rows brought up to date ahead are
        // the same: strides replayed in two parts are not the strides of the whole gap)
        let hint = &|step: u64| match step % 3 {
            0 => {
                let this = step_ids(step);
                step_ids(step + 1)
                    .into_iter()
                    .filter(|id| !this.contains(id))
                    .collect()
            }
            _ => step_ids(step + 1),
        };
        for replay in [CatchUpReplay::Strided, CatchUpReplay::Exact] {
            let mut sequential = sparse_table(Some(replay));
            let (mut read_first, mut saved_first) = (sparse_table(Some(replay)), sparse_table(Some(replay)));
            let (_, want) = train_hinted(&mut sequential, 1..=60, None);
            let (waited, gathered) = train_hinted(&mut read_first, 1..=60, Some(hint));
            assert!(waited > 0 && gathered == want, "{replay:?}");
            train_hinted(&mut saved_first, 1..=60, Some(hint));
            assert!(read_first.deferred.is_some() && saved_first.deferred.is_some());
            // a checkpoint taken with rows waiting: its snapshot is the sequential run's, and its
            // moments and bookkeeping resume as the sequential run goes on
            let (values, average) = read_first.snapshot();
            let (want_values, want_average) = sequential.snapshot();
            assert!(read(values.clone()) == read(want_values), "{replay:?}");
            assert!(read(average.clone().unwrap()) == read(want_average.unwrap()));
            let dir = tempfile::tempdir().unwrap();
            let moments = dir.path().join("moments.bin");
            saved_first.save(&moments).unwrap();
            let mut resumed = SparseAdam::new(values, table_config(replay), &Device::flex());
            resumed.load(&moments, 60).unwrap();
            resumed.set_average(average.unwrap()).unwrap();
            resumed.restore_catch_up(&moments).unwrap();
            let (_, want) = train_hinted(&mut sequential, 61..=120, None);
            train(&mut resumed, 61..=120);
            let (_, gathered) = train_hinted(&mut read_first, 61..=120, Some(hint));
            assert!(gathered == want, "{replay:?}");
            // a step taken one at a time after a pipelined one updates the waiting rows first
            train(&mut read_first, 121..=125);
            train(&mut sequential, 121..=125);
            train(&mut resumed, 121..=125);
            for (name, table) in [("pipelined", &mut read_first), ("resumed", &mut resumed)] {
                assert!(
                    read(table.table()) == read(sequential.table()),
                    "{name} {replay:?}"
                );
                let average = read(table.average().unwrap());
                assert!(average == read(sequential.average().unwrap()), "{name}");
                let ((m1, v1), (m2, v2)) = (table.moments(), sequential.moments());
                assert!((read(m1), read(v1)) == (read(m2), read(v2)), "{name}");
            }
        }
    }

    /// [`train`] 300 steps with a full catch-up (as an evaluation does) after step 150;
    /// returns the table and its average.
    fn sparse_run(replay: Option<CatchUpReplay>) -> (Vec<f32>, Vec<f32>) {
        let mut table = sparse_table(replay);
        train(&mut table, 1..=150);
        table.catch_up();
        train(&mut table, 151..=300);
        let values = table.table().into_data().try_to_vec::<f32>().unwrap();
        let average = table
            .average()
            .map_or(Vec::new(), |a| a.into_data().try_to_vec::<f32>().unwrap());
        (values, average)
    }

    #[test]
    fn a_run_saved_mid_way_resumes_bit_for_bit_and_the_snapshot_changes_nothing() {
        for replay in [CatchUpReplay::Strided, CatchUpReplay::Exact] {
            let mut whole = sparse_table(Some(replay));
            train(&mut whole, 1..=120);
            // what a checkpoint writes: the table brought up to date on copies, the moments
            // and the bookkeeping as they are
            let (values, average) = whole.snapshot();
            let dir = tempfile::tempdir().unwrap();
            let moments = dir.path().join("moments.bin");
            whole.save(&moments).unwrap();
            train(&mut whole, 121..=260);
            let mut resumed = SparseAdam::new(values.clone(), table_config(replay), &Device::flex());
            resumed.load(&moments, 120).unwrap();
            resumed.set_average(average.clone().unwrap()).unwrap();
            resumed.restore_catch_up(&moments).unwrap();
            train(&mut resumed, 121..=260);
            let read = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
            assert_eq!(read(resumed.table()), read(whole.table()), "{replay:?}");
            assert_eq!(read(resumed.average().unwrap()), read(whole.average().unwrap()));
            // the snapshot is what an in-place catch-up gives
            let mut again = sparse_table(Some(replay));
            train(&mut again, 1..=120);
            assert_eq!(read(again.table()), read(values), "{replay:?}");
            assert_eq!(read(again.average().unwrap()), read(average.unwrap()));
        }
    }

    #[test]
    fn saved_catch_up_state_for_another_table_or_step_is_refused() {
        let mut table = sparse_table(Some(CatchUpReplay::Strided));
        train(&mut table, 1..=30);
        let dir = tempfile::tempdir().unwrap();
        let moments = dir.path().join("moments.bin");
        table.save(&moments).unwrap();
        let mut other = sparse_table(Some(CatchUpReplay::Strided));
        other.load(&moments, 29).unwrap();
        let message = other.restore_catch_up(&moments).unwrap_err().to_string();
        assert!(
            message.contains("moments.catchup") && message.contains("step 30"),
            "{message}"
        );
        std::fs::write(SparseAdam::catch_up_path(&moments), b"MTLLAZY1\0\0").unwrap();
        other.load(&moments, 30).unwrap();
        let message = other.restore_catch_up(&moments).unwrap_err().to_string();
        assert!(message.contains("ends early"), "{message}");
    }

    /// [`sparse_table`]'s set-up.
    fn table_config(replay: CatchUpReplay) -> SparseAdamConfig {
        SparseAdamConfig {
            adam: RowAdamConfig {
                weight_decay: 1e-3,
                ..RowAdamConfig::default()
            },
            catch_up: Some(replay),
            average_decay: Some(0.99),
        }
    }

    #[test]
    fn strided_catch_up_stays_near_the_exact_table_and_is_deterministic() {
        let exact = sparse_run(Some(CatchUpReplay::Exact));
        let strided = sparse_run(Some(CatchUpReplay::Strided));
        let frozen = sparse_run(None);
        let scale = exact.0.iter().fold(0f32, |s, x| s.max(x.abs()));
        let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let (strided_error, frozen_error) = (diff(&strided.0, &exact.0), diff(&frozen.0, &exact.0));
        assert!(strided_error < 1e-2 * scale, "strided {strided_error} of {scale}");
        assert!(diff(&strided.1, &exact.1) < 1e-2 * scale, "the averages differ");
        assert!(
            strided_error * 50.0 < frozen_error,
            "strided {strided_error}, frozen {frozen_error}"
        );
        // the same run again gives the same floats
        assert_eq!(strided, sparse_run(Some(CatchUpReplay::Strided)));
    }

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
