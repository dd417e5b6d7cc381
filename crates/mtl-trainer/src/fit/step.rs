//! One training step: forward, a check that the loss is finite, backward, and the optimisers —
//! burn's for the dense parameters and, for row-sparse training, [`SparseAdam`] for the
//! embedding table — behind one type, [`Stepper`].
//!
//! The row-sparse table is the trainer's business alone. The model contract knows nothing of
//! it: the stepper finds the table parameter by its id, keeps the table in host memory, and
//! swaps values into that parameter with a [`ModuleMapper`] — the batch's gathered rows for a
//! step (the batch's ids are then positions in them), a one-row placeholder between steps,
//! the whole table for evaluation, checkpoints and the end of training.

use std::any::Any;
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use mtl_features::{BatchTensors, TableLayout};
use mtl_layers::{MultiTaskModel, with_running_stats_frozen};
use mtl_optim::{Average, DeviceAdam, SparseAdam};

use crate::TrainError;
use crate::config::{EmbeddingUpdate, TablePlace, TrainSettings};
use crate::error::record_err;
use crate::fit::branches::{self, Branches};
use crate::fit::checkpoint::SPARSE_MOMENTS;
use crate::fit::collective::{Group, merge_rows, sum_gradients};
use crate::fit::loader::Batch;
use crate::fit::state::StepLosses;
use crate::fit::weighting::{WeightReport, Weighting, WeightingState};

/// A step's sums over the ranks (see [`Stepper::global`]).
struct Global {
    terms: Vec<f32>,
    grad_norms: Option<Vec<f64>>,
    weight: f32,
    rows: u64,
}

/// What a step's forward and backward passes give ([`Stepper::step`]).
struct Passes {
    terms: Vec<f32>,
    total: f64,
    grad_norms: Option<Vec<f64>>,
    weight: f32,
    rows: u64,
    row_grad: Option<Tensor<2>>,
    grads: GradientsParams,
}

/// `Σ wᵢ · termᵢ` (a missing weight is 1).
pub(crate) fn weighted(terms: &[f64], weights: &[f32]) -> f64 {
    terms
        .iter()
        .enumerate()
        .map(|(i, t)| t * f64::from(weights.get(i).copied().unwrap_or(1.0)))
        .sum()
}

/// Puts `value` into the float parameter `id`, keeping the id.
struct SetParam {
    id: ParamId,
    value: Option<Tensor<2>>,
}

impl ModuleMapper for SetParam {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if param.id != self.id {
            return param;
        }
        let Some(value) = self.value.take() else {
            return param;
        };
        // the table parameter is the `[rows, dim]` one, so `D` is 2 here
        match (Box::new(value) as Box<dyn Any>).downcast::<Tensor<D>>() {
            Ok(value) => Param::initialized(param.id, *value),
            Err(_) => param,
        }
    }
}

/// Where the row-sparse table lives and its row-wise Adam.
enum Store {
    Host(Box<SparseAdam>),
    Device(Box<DeviceAdam>),
}

/// The rows a step gathered, as its table place keeps them.
enum Gathered {
    Host(Vec<i32>),
    Device(Box<Tensor<1, Int>>),
}

impl Store {
    fn dim(&self) -> usize {
        match self {
            Self::Host(a) => a.dim(),
            Self::Device(a) => a.dim(),
        }
    }

    fn device(&self) -> &Device {
        match self {
            Self::Host(a) => a.device(),
            Self::Device(a) => a.device(),
        }
    }

    fn time(&self) -> usize {
        match self {
            Self::Host(a) => a.time,
            Self::Device(a) => a.time,
        }
    }

    fn gather(&mut self, ids: Vec<i32>) -> (Tensor<2>, Gathered) {
        match self {
            Self::Host(a) => {
                let (leaf, ids) = a.gather(ids);
                (leaf, Gathered::Host(ids))
            }
            Self::Device(a) => {
                let (leaf, idx) = a.gather(ids);
                (leaf, Gathered::Device(Box::new(idx)))
            }
        }
    }

    /// Starts the step ahead of its gradient ([`SparseAdam::advance`]; the host table only).
    fn advance(&mut self, lr: f64) {
        if let Self::Host(a) = self {
            a.advance(lr);
        }
    }

    /// Brings the rows of `next` not in `current` up to date with the step started beside `work`
    /// ([`SparseAdam::prepare_beside`]; the host table only).
    fn prepare_beside<R>(&mut self, next: &[i32], current: &[i32], work: impl FnOnce() -> R) -> R {
        match self {
            Self::Host(a) => a.prepare_beside(next, current, work),
            Self::Device(_) => work(),
        }
    }

    /// Whether a step was started by [`Store::advance`] and not yet ended.
    fn advanced(&self) -> bool {
        matches!(self, Self::Host(a) if a.started())
    }

    /// The row-wise step on `rows` (ending one [`Store::advance`] started).
    fn step(&mut self, rows: &Gathered, grad: Tensor<2>, lr: f64) {
        match (self, rows) {
            (Self::Host(a), Gathered::Host(ids)) if a.started() => a.apply(ids, grad),
            (Self::Host(a), Gathered::Host(ids)) => a.step(ids, grad, lr),
            (Self::Device(a), Gathered::Device(idx)) => a.step(idx, grad, lr),
            _ => unreachable!("rows are gathered by the store that steps them"),
        }
    }

    fn table(&mut self) -> Tensor<2> {
        match self {
            Self::Host(a) => a.table(),
            Self::Device(a) => a.table(),
        }
    }

    fn save(&mut self, path: &Path) -> Result<(), TrainError> {
        match self {
            Self::Host(a) => a.save(path),
            Self::Device(a) => a.save(path),
        }
        .map_err(TrainError::from)
    }

    fn load(&mut self, path: &Path, time: usize) -> Result<(), TrainError> {
        match self {
            Self::Host(a) => a.load(path, time),
            Self::Device(a) => a.load(path, time),
        }
        .map_err(TrainError::from)
    }

    /// The table and its weight average brought up to date on copies, the store left as it
    /// is (checkpoints; the device table has nothing to bring up to date and no average).
    fn snapshot(&mut self) -> (Tensor<2>, Option<Tensor<2>>) {
        match self {
            Self::Host(a) => a.snapshot(),
            Self::Device(a) => (a.table(), None),
        }
    }

    /// The table's weight average (the host table keeps one with `ema_decay`).
    fn average(&mut self) -> Option<Tensor<2>> {
        match self {
            Self::Host(a) => a.average(),
            Self::Device(_) => None,
        }
    }
}

/// The row-sparse embedding table: its optimiser and the parameter it stands for.
struct Table {
    adam: Store,
    id: ParamId,
}

impl Table {
    fn set<M: Module>(&self, model: M, value: Tensor<2>) -> M {
        model.map(&mut SetParam {
            id: self.id,
            value: Some(value),
        })
    }

    fn placeholder(&self) -> Tensor<2> {
        Tensor::zeros([1, self.adam.dim()], self.adam.device())
    }

    /// One process's row-wise Adam step on the step's `rows` with their gradient `grad`
    /// (none when they fed no loss).
    fn step_alone(&mut self, rows: &Gathered, grad: Option<Tensor<2>>, lr: f64) {
        match grad {
            Some(grad) => self.adam.step(rows, grad, lr),
            // a step started ahead ends: rows that fed nothing have a zero gradient
            None if self.adam.advanced() => {
                let n = match rows {
                    Gathered::Host(ids) => ids.len(),
                    Gathered::Device(_) => 0,
                };
                let zeros = Tensor::zeros([n, self.adam.dim()], self.adam.device());
                self.adam.step(rows, zeros, lr);
            }
            None => {}
        }
    }
}

/// Takes optimiser steps: burn's optimiser on the dense parameters and, with
/// `embedding = "sparse"`, a row-wise Adam on the rows of the embedding table a batch uses.
pub struct Stepper {
    dense: ModuleOptimizer,
    table: Option<Table>,
    lr: f64,
    weighting: Weighting,
    loss_names: Vec<String>,
    /// The weight average of the dense parameters, with `ema_decay`.
    average: Option<Average>,
    /// The ranks training this model (one process by default).
    group: Group,
    /// Whether steps bring the next batch's rows up to date on a second thread
    /// ([`Stepper::pipelines`]).
    pipeline: Pipeline,
    /// The seconds the last step's gather took (a pipelining trial weighs them).
    gather_secs: f64,
    /// How the passes go through a model's branches ([`Stepper::with_branches`]).
    branches: Branches,
    /// Whether the table's and the dense optimiser's steps run side by side
    /// ([`Stepper::with_optimisers_beside`]).
    optimisers_beside: bool,
}

/// The least number of trainable dense parameters for which one process with several threads
/// takes the dense optimiser's step beside the table's ([`Stepper::with_optimisers_beside`]):
/// below it handing one over to another thread costs more than it saves (measured: ESMM and
/// MMOE example slower, ESMM and MMOE large faster).
pub const OPTIMISERS_BESIDE_PARAMS: usize = 131_072;

/// Whether steps are pipelined: fixed, or tried both ways over the first steps.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pipeline {
    Off,
    On,
    /// `steps` timed so far, the seconds of the timed pipelined and sequential ones, and
    /// those of the warm-up's sequential steps and of their gathers ([`Pipeline::SHARE`]).
    Trial {
        steps: usize,
        secs: [f64; 2],
        warm: [f64; 2],
    },
}

impl Pipeline {
    /// A trial takes its steps in blocks of this many; a block's first step is not timed (it
    /// pays or profits from the other way's last step: a pipelined step prepares the next
    /// batch's rows, a sequential one does not).
    const BLOCK: usize = 10;
    /// The ways of a trial's blocks (pipelined `true`): one of each untimed (warming up), then
    /// four of each timed in the order A B B A B A A B, so that steps growing faster as the run
    /// warms up (a drift close to linear or quadratic) favour neither way.
    const ORDER: [bool; 10] = [true, false, true, false, false, true, false, true, true, false];
    /// Steps a trial leaves untimed (its first two blocks).
    const WARM: usize = 2 * Self::BLOCK;
    /// Where the gathers of the warm-up's sequential steps (their catch-up's replay, which a
    /// pipelined step takes off the calling thread) take at least this share of those steps'
    /// time, the trial ends there with the pipelined way and skips the timed blocks, whose
    /// sequential half costs such a model most. Measured on `configs/` (800k rows of `mtl
    /// gen-data ccp`, 2 threads): the examples' gathers take 0.13–0.33 of such steps and they
    /// train 1.06–1.45× faster pipelined; the large configurations' 0.02–0.07, where the two
    /// ways are within about ±10 % and the timed blocks decide.
    const SHARE: f64 = 0.1;

    /// A trial about to take its first step.
    fn trial() -> Self {
        Self::Trial {
            steps: 0,
            secs: [0.0; 2],
            warm: [0.0; 2],
        }
    }

    fn on(self) -> bool {
        match self {
            Self::Off => false,
            Self::On => true,
            Self::Trial { steps, .. } => Self::ORDER[(steps / Self::BLOCK).min(Self::ORDER.len() - 1)],
        }
    }

    /// Counts a step of `secs` whose gather took `gather` of them; a trial's last one (or the
    /// warm-up's last, where its gathers take [`Pipeline::SHARE`]) picks the faster way for
    /// the rest.
    fn record(self, secs: f64, gather: f64) -> Self {
        let Self::Trial {
            steps,
            secs: mut by,
            mut warm,
        } = self
        else {
            return self;
        };
        let first_of_block = steps.is_multiple_of(Self::BLOCK);
        if steps >= Self::WARM && !first_of_block {
            by[usize::from(!self.on())] += secs;
        }
        if steps < Self::WARM && !first_of_block && !self.on() {
            warm[0] += secs;
            warm[1] += gather;
        }
        if steps + 1 == Self::WARM && warm[0] > 0.0 && warm[1] >= Self::SHARE * warm[0] {
            tracing::info!(
                gather_share = warm[1] / warm[0],
                "pipelining trial: the gathers' catch-up takes a large share of a sequential step; the pipelined way is kept"
            );
            return Self::On;
        }
        if steps + 1 == Self::ORDER.len() * Self::BLOCK {
            let on = by[0] < by[1];
            tracing::info!(
                pipelined_secs = by[0],
                sequential_secs = by[1],
                gather_share = warm[1] / warm[0],
                "pipelining trial: the {} way is faster",
                if on { "pipelined" } else { "sequential" }
            );
            return if on { Self::On } else { Self::Off };
        }
        Self::Trial {
            steps: steps + 1,
            secs: by,
            warm,
        }
    }
}

impl Stepper {
    /// A stepper for `model`. With row-sparse updates it moves the embedding table out of the
    /// model (which keeps a one-row placeholder) into host memory, with the moments saved at
    /// `moments` (the file and the step count) when resuming; `weighting` is the learned loss
    /// weighting's state when resuming. With `ema_decay` the weight average starts at
    /// `averaged` (a checkpoint's saved average, when resuming) or else at `model`.
    #[allow(clippy::too_many_arguments)]
    pub fn new<M: MultiTaskModel>(
        model: M,
        dense: ModuleOptimizer,
        settings: &TrainSettings,
        layout: &TableLayout,
        device: &Device,
        moments: Option<(&Path, usize)>,
        weighting: Option<WeightingState>,
        averaged: Option<&M>,
    ) -> Result<(M, Self), TrainError> {
        let loss_names = model.loss_names();
        let outputs: Vec<String> = model.outputs().into_iter().map(|o| o.name).collect();
        let mut stepper = Self {
            dense,
            table: None,
            lr: settings.lr,
            weighting: Weighting::new(
                &settings.loss_weighting,
                &settings.loss_weights,
                &loss_names,
                &outputs,
                weighting,
            ),
            loss_names,
            average: None,
            group: Group::default(),
            pipeline: Pipeline::Off,
            gather_secs: 0.0,
            branches: Branches::Whole,
            optimisers_beside: false,
        };
        // a schema without id fields has no table to update
        if settings.embedding == EmbeddingUpdate::Dense || layout.total_rows == 0 {
            // burn initialises parameters lazily; a large table's random initialisation
            // (seconds at tens of millions of rows) happens here at the latest, before the
            // training clock (`train` draws a new run's parameters before it calls `fit`)
            let _ = model.input_layer().embedding.weight.val();
            stepper.average = settings
                .average_decay()
                .map(|decay| Average::new(decay, averaged.unwrap_or(&model), None));
            return Ok((model, stepper));
        }
        let weight = &model.input_layer().embedding.weight;
        let (id, values) = (weight.id, weight.val().inner());
        stepper.average = settings
            .average_decay()
            .map(|decay| Average::new(decay, averaged.unwrap_or(&model), Some(id)));
        let plain = device.clone().without_autodiff();
        // the placeholder first, so that the table's memory is the copy's alone
        let placeholder = Tensor::zeros([1, values.dims()[1]], &plain);
        let model = model.map(&mut SetParam {
            id,
            value: Some(placeholder),
        });
        let mut adam = match settings.embedding_table {
            TablePlace::Host => Store::Host(Box::new(SparseAdam::try_new(
                values,
                settings.sparse_adam(),
                device,
            )?)),
            TablePlace::Device => {
                Store::Device(Box::new(DeviceAdam::new(values, settings.row_adam(), device)))
            }
        };
        if let Some((path, time)) = moments {
            if !path.exists() {
                return Err(TrainError::Record {
                    path: path.display().to_string(),
                    message: "missing: the checkpoint has no moments of the row-sparse \
                              optimiser (written by an older mtl, or incomplete)"
                        .into(),
                });
            }
            adam.load(path, time)?;
        }
        if let (Some(saved), Store::Host(host)) = (averaged, &mut adam) {
            host.set_average(saved.input_layer().embedding.weight.val().inner())?;
        }
        if let (Some((path, _)), Store::Host(host)) = (moments, &mut adam) {
            // rows the saved run had not yet brought up to date, as they were
            host.restore_catch_up(path)?;
        }
        let catches_up = matches!(&adam, Store::Host(_)) && settings.untouched().replay().is_some();
        stepper.pipeline = match (catches_up, settings.pipeline) {
            (false, _) | (true, Some(false)) => Pipeline::Off,
            (true, Some(true)) => Pipeline::On,
            (true, None) if rayon::current_num_threads() > 1 => Pipeline::trial(),
            (true, None) => Pipeline::Off,
        };
        stepper.table = Some(Table { adam, id });
        Ok((model, stepper))
    }

    /// The stepper of one rank of `group` (every rank's stepper takes the same steps).
    pub fn with_group(mut self, group: Group) -> Self {
        // every rank steps the rows of all ranks: the next batch's are not known here
        if group.is_distributed() {
            self.pipeline = Pipeline::Off;
            self.optimisers_beside = false;
        }
        self.group = group;
        self
    }

    /// The stepper with a branching model's passes ([`mtl_layers::Branching`]) cut at its
    /// branches, one after another or side by side on rayon's threads ([`Branches::of`]);
    /// [`Branches::Whole`] (the default): one pass over the whole graph.
    pub fn with_branches(mut self, branches: Branches) -> Self {
        self.branches = branches;
        self
    }

    /// The stepper with the row-sparse table's optimiser step and the dense optimiser's step
    /// taken side by side on rayon's threads when `beside` (for a CPU backend with several
    /// threads and a model of at least [`OPTIMISERS_BESIDE_PARAMS`] dense parameters) and it
    /// is one process (ranks sum the gradients first); they update disjoint state, so the
    /// floats are the same either way.
    pub fn with_optimisers_beside(mut self, beside: bool) -> Self {
        self.optimisers_beside = beside && !self.group.is_distributed();
        self
    }

    /// Whether the embedding table is updated row-sparse (batches then carry their rows).
    pub fn row_sparse(&self) -> bool {
        self.table.is_some()
    }

    /// What the host table's steps did since the last call (`None` without a host table).
    pub fn take_table_traffic(&mut self) -> Option<mtl_optim::TableTraffic> {
        match self.table.as_mut().map(|t| &mut t.adam) {
            Some(Store::Host(a)) => Some(a.take_traffic()),
            _ => None,
        }
    }

    /// Steps of the row-sparse optimiser so far (0 without one).
    pub fn sparse_time(&self) -> usize {
        self.table.as_ref().map_or(0, |t| t.adam.time())
    }

    /// One step on `batch`; `step` (1-based) names it in a non-finite-loss error. Over
    /// several ranks the batch is this rank's share of the global batch: the losses, the
    /// gradients and the table's row gradients are summed over the ranks (each weighted by
    /// its share of the rows), so every rank takes the global batch's step. With the next
    /// batch's table rows (`next_rows`) and pipelining on, the rows of the next batch that this
    /// one does not use are brought up to date with this step on a second thread while the
    /// forward and backward passes run ([`Stepper::pipelines`]): the same replay the next
    /// gather would do, so the same floats.
    pub fn step<M: MultiTaskModel>(
        &mut self,
        model: M,
        batch: Batch,
        step: usize,
        next_rows: Option<&[i32]>,
    ) -> Result<(M, StepLosses), TrainError> {
        let Batch {
            tensors,
            table_rows,
            mass,
        } = batch;
        let local_rows = tensors.rows;
        let local_ids = match self.group.is_distributed() {
            true => table_rows.clone(),
            false => Vec::new(),
        };
        let (model, gathered) = match &mut self.table {
            Some(table) => {
                let clock = std::time::Instant::now();
                let (leaf, ids) = table.adam.gather(table_rows);
                self.gather_secs = clock.elapsed().as_secs_f64();
                (table.set(model, leaf.clone()), Some((leaf, ids)))
            }
            None => (model, None),
        };
        // a rank whose share of a short last batch is empty adds nothing but takes the step
        let grad_norms = match self.weighting.wants_grad_norms(step) {
            true if local_rows > 0 => Some(self.task_grad_norms(&model, &tensors)?),
            true => Some(vec![0.0; self.weighting.task_terms().len()]),
            false => None,
        };
        let ahead = match (&gathered, next_rows) {
            (Some((_, Gathered::Host(ids))), Some(next)) if self.pipeline.on() => Some((next, ids)),
            _ => None,
        };
        let mut table = self.table.take();
        let passes = match (ahead, table.as_mut()) {
            (Some((next, current)), Some(table)) => {
                table.adam.advance(self.lr);
                table.adam.prepare_beside(next, current, || {
                    self.passes(&model, &tensors, &gathered, grad_norms, mass, step)
                })
            }
            _ => self.passes(&model, &tensors, &gathered, grad_norms, mass, step),
        };
        self.table = table;
        let p = passes?;
        let table = self.table.as_ref().map(|t| t.id);
        let model = match (gathered, &mut self.table) {
            (Some((_, rows)), Some(t)) if self.optimisers_beside => {
                // two optimisers on disjoint state side by side: the floats of one after the other
                let (dense, lr) = (&mut self.dense, self.lr);
                let (grads, row_grad) = (p.grads, p.row_grad);
                let (_, model) = rayon::join(
                    || t.step_alone(&rows, row_grad, lr),
                    || dense.step(lr, model, grads),
                );
                model
            }
            (gathered, _) => {
                if let Some((_, rows)) = gathered {
                    self.step_table(rows, local_ids, p.row_grad, p.weight)?;
                }
                let (model, grads) = sum_gradients(&self.group, model, p.grads, p.weight, table)?;
                self.dense.step(self.lr, model, grads)
            }
        };
        let model = self.without_table(model);
        if let Some(average) = &mut self.average {
            average.update(&model, step);
        }
        self.weighting.update(&p.terms, p.grad_norms.as_deref());
        let (total, terms, rows) = (p.total, p.terms, p.rows);
        Ok((model, StepLosses { total, terms, rows }))
    }

    /// Whether the next step brings the following batch's rows up to date on a second thread
    /// while its forward and backward passes run (`train.pipeline`; by default, with more than
    /// one thread, a host table that catches up and one process, the first steps try both ways
    /// — the same floats either way — and the rest take the faster).
    pub fn pipelines(&self) -> bool {
        self.pipeline.on()
    }

    /// Counts a step that took `secs` (a pipelining trial times them and their gathers).
    pub fn timed(&mut self, secs: f64) {
        self.pipeline = self.pipeline.record(secs, self.gather_secs);
    }

    /// The forward pass, the loss terms over every rank (an error where they are not finite),
    /// and the backward pass: the table rows' gradient and the module's.
    fn passes<M: MultiTaskModel>(
        &self,
        model: &M,
        tensors: &BatchTensors,
        gathered: &Option<(Tensor<2>, Gathered)>,
        grad_norms: Option<Vec<f64>>,
        mass: f64,
        step: usize,
    ) -> Result<Passes, TrainError> {
        let local_rows = tensors.rows;
        let (terms, loss) = match local_rows {
            0 => (vec![0.0; self.loss_names.len()], None),
            _ => {
                let cut = match self.branches {
                    Branches::Whole => None,
                    Branches::Cut => branches::forward(model, tensors, false),
                    Branches::SideBySide => branches::forward(model, tensors, true),
                };
                let (forward, cut) = match cut {
                    Some((forward, cut)) => (forward, Some(cut)),
                    None => (model.forward(tensors), None),
                };
                let loss = forward.total_loss(&self.weighting.weights());
                (
                    mtl_eval::to_host(Tensor::cat(forward.losses, 0))?,
                    Some((loss, cut)),
                )
            }
        };
        let Global {
            terms,
            grad_norms,
            weight,
            rows,
        } = self.global(terms, grad_norms, local_rows, mass);
        let total = weighted(
            &terms.iter().map(|&t| f64::from(t)).collect::<Vec<_>>(),
            self.weighting.reported(),
        );
        if !total.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                terms: self.loss_names.iter().cloned().zip(terms).collect(),
            });
        }
        let (row_grad, grads) = match loss {
            Some((loss, cut)) => {
                let (mut trunk, rest) = match cut {
                    Some(cut) => branches::backward(cut, loss),
                    None => (Some(loss.backward()), Vec::new()),
                };
                // take the rows' gradient before the module's gradients are collected (a batch
                // whose rows feed nothing has no gradient to apply)
                let row_grad = match (gathered, &mut trunk) {
                    (Some((leaf, _)), Some(trunk)) => leaf.grad_remove(trunk),
                    _ => None,
                };
                (
                    row_grad,
                    branches::params(trunk.into_iter().chain(rest).collect(), model),
                )
            }
            None => (None, GradientsParams::new()),
        };
        Ok(Passes {
            terms,
            total,
            grad_norms,
            weight,
            rows,
            row_grad,
            grads,
        })
    }

    /// The step's loss terms, task gradient norms and rows over every rank (each rank's
    /// weighted by its `mass`: its rows, or their total sample weight), and this rank's
    /// weight in the sums (its share of the mass). One process's are its own, untouched.
    fn global(&self, terms: Vec<f32>, grad_norms: Option<Vec<f64>>, rows: usize, mass: f64) -> Global {
        if !self.group.is_distributed() {
            return Global {
                terms,
                grad_norms,
                weight: 1.0,
                rows: rows as u64,
            };
        }
        let norms = grad_norms.as_deref().unwrap_or(&[]);
        let mut buf: Vec<f64> = terms.iter().map(|&t| f64::from(t) * mass).collect();
        buf.extend(norms.iter().map(|g| g * mass));
        buf.extend([mass, rows as f64]);
        self.group.sum_f64(&mut buf);
        let all_rows = buf.pop().unwrap_or(0.0);
        let all = buf.pop().unwrap_or(0.0);
        // a global batch that weighs nothing (every weight 0) takes no step
        let all = if all > 0.0 { all } else { 1.0 };
        let (terms_sum, norms_sum) = buf.split_at(terms.len());
        Global {
            terms: terms_sum.iter().map(|t| (t / all) as f32).collect(),
            grad_norms: grad_norms.map(|_| norms_sum.iter().map(|g| g / all).collect()),
            weight: (mass / all) as f32,
            rows: all_rows as u64,
        }
    }

    /// The row-wise Adam step on the table rows the step gathered (`rows`), with their
    /// gradient `grad` (none when they fed no loss). Over several ranks every rank applies
    /// the same step: the rows and gradients (weighted by `weight`) of all ranks, merged,
    /// each row brought up to date first as one process's gather does.
    fn step_table(
        &mut self,
        rows: Gathered,
        local_ids: Vec<i32>,
        grad: Option<Tensor<2>>,
        weight: f32,
    ) -> Result<(), TrainError> {
        let Some(table) = self.table.as_mut() else {
            return Ok(());
        };
        if !self.group.is_distributed() {
            table.step_alone(&rows, grad, self.lr);
            return Ok(());
        }
        let (ids, local) = match grad {
            Some(grad) => {
                let mut g = mtl_eval::to_host(grad.flatten(0, 1))?;
                g.iter_mut().for_each(|x| *x *= weight);
                (local_ids, g)
            }
            None => (Vec::new(), Vec::new()),
        };
        let dim = table.adam.dim();
        let (ids, merged) = merge_rows(&self.group.gather_i32(&ids), &self.group.gather_f32(&local), dim);
        if ids.is_empty() {
            return Ok(());
        }
        let n = ids.len();
        let (_, rows) = table.adam.gather(ids);
        let grad = Tensor::from_data(TensorData::new(merged, [n, dim]), table.adam.device());
        table.adam.step(&rows, grad, self.lr);
        Ok(())
    }

    /// Each task term's gradient norm on the embedding table the model holds (the batch's
    /// rows when row-sparse), one forward and backward pass per task; BatchNorm's running
    /// statistics are left as the step's own pass leaves them.
    fn task_grad_norms<M: MultiTaskModel>(
        &self,
        model: &M,
        tensors: &BatchTensors,
    ) -> Result<Vec<f64>, TrainError> {
        let mut norms = Vec::new();
        for i in self.weighting.task_terms() {
            let loss = with_running_stats_frozen(|| model.forward(tensors).losses.swap_remove(i));
            let grads = loss.backward();
            let norm = match model.input_layer().embedding.weight.grad(&grads) {
                Some(g) => mtl_eval::to_host(g.square().sum().reshape([1]))?[0],
                None => 0.0,
            };
            norms.push(f64::from(norm).sqrt());
        }
        Ok(norms)
    }

    /// The learned loss weighting's state, to checkpoint (`None` for fixed weights).
    pub fn weighting_state(&self) -> Option<WeightingState> {
        self.weighting.learned().then(|| self.weighting.state.clone())
    }

    /// The learned weights by task term and, for GradNorm, the weighted gradient norms of the
    /// last update (both empty for fixed weights).
    pub fn weight_report(&self) -> WeightReport {
        let weights = self.weighting.report(&self.loss_names);
        let grad_norms = weights
            .iter()
            .zip(&self.weighting.state.grad_norms)
            .map(|((name, _), g)| (name.clone(), *g))
            .collect();
        WeightReport { weights, grad_norms }
    }

    /// `model` holding the whole table, and the weight-averaged model when the run keeps one
    /// (for evaluation, checkpoints' `average.bpk` and the saved model). `for_good`: the
    /// row-sparse table's rows are brought up to date in place (evaluation, the end); else on
    /// copies, the training state left exactly as it was (a checkpoint alone: a run stopped and
    /// resumed anywhere then trains as the uninterrupted one, strided catch-up included).
    pub fn whole<M: Module>(&mut self, model: M, for_good: bool) -> (M, Option<M>) {
        let Some(table) = &mut self.table else {
            let averaged = self.average.as_ref().map(|a| a.apply(&model));
            return (model, averaged);
        };
        let (values, average) = match for_good {
            true => (table.adam.table(), table.adam.average()),
            false => table.adam.snapshot(),
        };
        let model = table.set(model, values);
        let averaged = self.average.as_ref().map(|avg| {
            let averaged = avg.apply(&model);
            match average {
                Some(values) => table.set(averaged, values),
                None => averaged,
            }
        });
        (model, averaged)
    }

    /// `model` holding a one-row placeholder in place of the table, so that the table is
    /// held once while training.
    pub fn without_table<M: Module>(&self, model: M) -> M {
        match &self.table {
            Some(table) => table.set(model, table.placeholder()),
            None => model,
        }
    }

    /// Writes the optimisers' state into the checkpoint folder `dir`.
    pub fn save(&mut self, dir: &Path) -> Result<(), TrainError> {
        self.dense.save(dir.join("optim.bpk")).map_err(record_err(dir))?;
        if let Some(table) = &mut self.table {
            table.adam.save(&dir.join(SPARSE_MOMENTS))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a trial whose step `i` costs `cost(i, pipelined, previous step pipelined)` seconds,
    /// of which its gather takes `gather(i, pipelined)`; the way it picks and its steps' ways.
    fn run_trial(
        cost: &dyn Fn(usize, bool, bool) -> f64,
        gather: &dyn Fn(usize, bool) -> f64,
    ) -> (Pipeline, Vec<bool>) {
        let mut p = Pipeline::trial();
        let mut ways: Vec<bool> = Vec::new();
        while let Pipeline::Trial { .. } = p {
            let (i, on, before) = (ways.len(), p.on(), ways.last().copied().unwrap_or(true));
            p = p.record(cost(i, on, before), gather(i, on));
            ways.push(on);
        }
        (p, ways)
    }

    #[test]
    fn a_pipelining_trial_keeps_the_faster_way() {
        // gathers that take nothing: the whole trial is timed
        let trial = |cost: &dyn Fn(usize, bool, bool) -> f64| {
            let (p, ways) = run_trial(cost, &|_, _| 0.0);
            // blocks of 10, pipelined first: 50 steps each way
            assert_eq!(ways.len(), 100);
            assert_eq!(ways.iter().filter(|&&on| on).count(), 50);
            assert!(ways[..10].iter().all(|&on| on) && ways[10..20].iter().all(|&on| !on));
            assert!(ways[90..].iter().all(|&on| !on));
            p
        };
        // warm-up steps are slow and must not count
        let plain = |pipelined: f64, sequential: f64| {
            move |i: usize, on: bool, _: bool| match (i < Pipeline::WARM, on) {
                (true, _) => 9.0,
                (false, true) => pipelined,
                (false, false) => sequential,
            }
        };
        assert_eq!(trial(&plain(1.0, 2.0)), Pipeline::On);
        assert_eq!(trial(&plain(2.0, 1.0)), Pipeline::Off);
        // a cold start (steps 5× slower at first, 1 + 4 e^(−i/30)) weighs on both ways alike:
        // the way 10 % faster wins either way round (timing 30 steps of one way, then 30 of the
        // other, picks the second in both cases)
        let cold = |faster: bool| {
            move |i: usize, on: bool, _: bool| {
                (1.0 + 4.0 * (-(i as f64) / 30.0).exp()) * if on == faster { 1.0 } else { 1.1 }
            }
        };
        assert_eq!(trial(&cold(true)), Pipeline::On);
        assert_eq!(trial(&cold(false)), Pipeline::Off);
        // a pipelined step after a sequential one replays its own rows (slow), a sequential one
        // after a pipelined one finds them prepared (fast): those steps are not timed
        let switching = |_: usize, on: bool, before: bool| match (on, before) {
            (true, false) => 5.0,
            (false, true) => 0.1,
            (true, true) => 1.0,
            (false, false) => 1.2,
        };
        assert_eq!(trial(&switching), Pipeline::On);
        // a fixed way stays
        assert_eq!(Pipeline::On.record(5.0, 5.0), Pipeline::On);
        assert!(!Pipeline::Off.record(5.0, 5.0).on());
    }

    #[test]
    fn a_trial_whose_gathers_weigh_on_the_sequential_steps_ends_after_the_warm_up() {
        // the warm-up's sequential steps (10..20) take 1 s, their gathers `share` of it; the
        // timed blocks would find the sequential way faster
        let cost = |i: usize, on: bool, _: bool| match (i < Pipeline::WARM, on) {
            (true, _) => 1.0,
            (false, true) => 2.0,
            (false, false) => 1.0,
        };
        let sequential_gathers = |share: f64| move |_: usize, on: bool| if on { 0.0 } else { share };
        let (p, ways) = run_trial(&cost, &sequential_gathers(0.11));
        assert_eq!((p, ways.len()), (Pipeline::On, Pipeline::WARM));
        // just below the share: the trial goes on and times both ways
        let (p, ways) = run_trial(&cost, &sequential_gathers(0.09));
        assert_eq!((p, ways.len()), (Pipeline::Off, 100));
        // the gathers of pipelined steps, and of a block's first step, do not count
        let (p, ways) = run_trial(&cost, &|i, on| if on || i == Pipeline::BLOCK { 5.0 } else { 0.0 });
        assert_eq!((p, ways.len()), (Pipeline::Off, 100));
    }
}
