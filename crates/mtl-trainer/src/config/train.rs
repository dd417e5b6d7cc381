//! `[train]`: the optimiser, the schedule, the embedding table's update, weighting,
//! calibration and the backend; every value checked against its allowed range.

use mtl_eval::CalibrationMethod;
use serde::{Deserialize, Serialize};

use crate::config::data::default_true;
use crate::config::early_stopping::EarlyStoppingSetting;
use crate::config::early_stopping::is_auto;
use crate::config::loss_weighting::LossWeighting;

/// Optimiser choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam with L2 weight decay added to the gradient (PyTorch's `Adam(weight_decay=…)`).
    #[default]
    Adam,
    /// AdamW with decoupled weight decay.
    AdamW,
}

/// How the embedding table is updated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingUpdate {
    /// Only the rows a batch uses, with a row-wise Adam (fast; vocabulary-size independent).
    #[default]
    Sparse,
    /// burn's dense gradient and optimiser over the whole table (torch-rechub's semantics).
    Dense,
}

/// What the row-sparse Adam does with the table rows a step does not touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UntouchedRows {
    /// Move them as dense Adam does (torch-rechub's semantics): a row's momentum keeps acting
    /// after its last use and weight decay acts every step. Applied lazily: when a row is next
    /// used, the steps it missed are replayed exactly (zero gradient, each step's learning
    /// rate), and every row is brought up to date before evaluations and checkpoints. The
    /// table equals `embedding = "dense"`'s; a row back after `n` steps costs `n` steps' work.
    CatchUp,
    /// As `catch-up`, with the missed steps beyond the first 4 replayed in closed-form strides
    /// of doubling length (`mtl_optim::replay`): within 2e-3 of the exact replay, at a cost
    /// that grows as `log²` of the gap. The host table's default.
    FastCatchUp,
    /// Leave them and their moments as they are (TensorFlow's LazyAdam,
    /// `torch.optim.SparseAdam`); the device table's only mode.
    Frozen,
}

impl UntouchedRows {
    /// The TOML spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::CatchUp => "catch-up",
            Self::FastCatchUp => "fast-catch-up",
            Self::Frozen => "frozen",
        }
    }

    /// How the host table replays missed steps; `None` when frozen.
    pub fn replay(self) -> Option<mtl_optim::CatchUpReplay> {
        match self {
            Self::CatchUp => Some(mtl_optim::CatchUpReplay::Exact),
            Self::FastCatchUp => Some(mtl_optim::CatchUpReplay::Strided),
            Self::Frozen => None,
        }
    }
}

/// Where the row-sparse embedding table and its Adam moments live while training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TablePlace {
    /// Host memory, one row's value and moments side by side, updated by a SIMD loop; each
    /// step uploads the batch's rows and reads their gradient back (the CPU backends' choice).
    #[default]
    Host,
    /// Tensors on the training device: gather, row-wise Adam and the scatter of the touched
    /// rows all run there (for GPU backends: no per-step transfer of rows or gradients).
    Device,
}

/// Training settings (`[train]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    /// Passes over the training data.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Rows per step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// `adam` or `adamw`.
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// Learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Weight decay (L2 for Adam, decoupled for AdamW).
    #[serde(default)]
    pub weight_decay: f64,
    /// Seed of initialisation and shuffling (same seed → same metrics).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Clip the global gradient norm to this value.
    #[serde(default)]
    pub grad_clip_norm: Option<f32>,
    /// Fixed weight per loss term (ESMM: `[ctr, ctcvr]`; MMOE: one per task); default 1.
    #[serde(default)]
    pub loss_weights: Vec<f32>,
    /// How the loss terms are weighted: `{ kind = "fixed" }` (`loss_weights`, the default),
    /// `{ kind = "uncertainty" }`, `{ kind = "gradnorm", alpha = 1.5 }` or `{ kind =
    /// "metabalance", relax_factor = 0.7 }` (learned; see [`crate::fit::weighting`]).
    #[serde(default)]
    pub loss_weighting: LossWeighting,
    /// Evaluate on the validation set every N steps (default: at the end of each epoch).
    #[serde(default)]
    pub eval_every_steps: Option<usize>,
    /// Write a checkpoint every N steps (default: at the end of each epoch).
    #[serde(default)]
    pub checkpoint_every_steps: Option<usize>,
    /// Post-hoc calibration of the binary outputs, fitted on the validation set after
    /// training: `none` (default), `platt` or `isotonic` (see [`mtl_eval::calibration`]).
    #[serde(default)]
    pub calibration: CalibrationMethod,
    /// Stop on a validation metric that stops improving, keeping the best model: on by default
    /// with validation data (validation loss, patience 2); `false` turns it off.
    #[serde(default, skip_serializing_if = "is_auto")]
    pub early_stopping: EarlyStoppingSetting,
    /// Stop after this many steps in total (a checkpoint is written; `--resume` continues).
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// `flex` (default), `ndarray`, `wgpu` or `cuda`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Embedding updates: `sparse` (default) or `dense`.
    #[serde(default)]
    pub embedding: EmbeddingUpdate,
    /// Where the row-sparse table lives: `host` (default) or `device`.
    #[serde(default)]
    pub embedding_table: TablePlace,
    /// Adam's ε, for the dense parameters and the row-sparse table alike (burn's 1e-5 by
    /// default; PyTorch's is 1e-8).
    #[serde(default = "default_adam_epsilon")]
    pub adam_epsilon: f64,
    /// Rows a row-sparse step does not touch: `fast-catch-up` (the host table's default: as
    /// dense Adam moves them, long gaps in closed-form strides), `catch-up` (every missed step
    /// replayed: dense Adam's table) or `frozen` (the device table's only mode). Resolved and saved when a
    /// run starts ([`TrainSettings::resolve_untouched_rows`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untouched_rows: Option<UntouchedRows>,
    /// Bring the next batch's table rows up to date on a second thread while a step's forward
    /// and backward passes run (the host table catching up, one process; the same floats as
    /// without). Left out: with more than one thread, pipelined where the gathers of the first
    /// sequential steps take a tenth of them or more (their catch-up is what moves), else the
    /// first 100 steps try both ways and the rest take the faster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<bool>,
    /// Decay of the weight average the run evaluates and saves (an exponential moving average
    /// of every parameter and table row, updated after each step; 0 turns it off, the model
    /// is then the last step's). Resolved and saved when a run starts
    /// ([`TrainSettings::resolve_ema_decay`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_decay: Option<f64>,
    /// Weight decay of the row-sparse embedding table (L2 for Adam, decoupled for AdamW); the
    /// dense layers keep `weight_decay`. Left out, a new row-sparse run takes the larger of
    /// `weight_decay` and [`DEFAULT_EMBEDDING_WEIGHT_DECAY`] (ids seen a few times each are
    /// what a second epoch memorises), `embedding = "dense"` and a run saved before the setting
    /// existed `weight_decay`. Resolved and saved when a run starts
    /// ([`TrainSettings::resolve_embedding_weight_decay`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_weight_decay: Option<f64>,
    /// Start the model's outputs at the training labels' base rates before the first step
    /// ([`MultiTaskModel::with_label_priors`](mtl_layers::MultiTaskModel::with_label_priors):
    /// for ESMM the CTR tower's output bias at logit(click rate) and the CVR tower's at
    /// logit(conversions per click), its output weights at zero; each task tower of the other
    /// models at its label's rate or mean, each chain step at its conditional rate). `false`
    /// keeps the random start (torch-rechub's).
    #[serde(default = "default_true")]
    pub label_priors: bool,
    /// Write every evaluation's scalars (losses, each output's validation metrics, loss
    /// weights, learning rate, throughput) as TensorBoard event files under
    /// `<model dir>/tensorboard` (`mtl train --tensorboard DIR` writes them to DIR instead).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tensorboard: bool,
}

/// The weight average's decay of a new run that can keep one.
pub const DEFAULT_EMA_DECAY: f64 = 0.99;

/// The least weight decay of a new run's row-sparse embedding table (see
/// [`TrainSettings::embedding_weight_decay`]): at PyTorch's `Adam(weight_decay=1e-4)`, ESMM's
/// validation AUCs fall over 4 epochs; at 1e-3 on the table they hold (docs/quality.md).
pub const DEFAULT_EMBEDDING_WEIGHT_DECAY: f64 = 1e-3;

fn default_adam_epsilon() -> f64 {
    1e-5
}
fn default_epochs() -> usize {
    1
}
fn default_batch() -> usize {
    1024
}
fn default_lr() -> f64 {
    1e-3
}
fn default_seed() -> u64 {
    2022
}
fn default_backend() -> String {
    "flex".into()
}

/// The largest batch a config may ask for.
pub const MAX_BATCH: usize = 1 << 22;
/// The most epochs a config may ask for.
pub const MAX_EPOCHS: usize = 100_000;

impl TrainSettings {
    /// `untouched_rows` as given, or else for a new run `fast-catch-up` on the host table and
    /// `frozen` on the device table; a run saved before the setting existed trained `frozen`
    /// (`fresh` false).
    pub fn resolve_untouched_rows(&mut self, fresh: bool) {
        if self.untouched_rows.is_none() && self.embedding == EmbeddingUpdate::Sparse {
            self.untouched_rows = Some(match (fresh, self.embedding_table) {
                (true, TablePlace::Host) => UntouchedRows::FastCatchUp,
                _ => UntouchedRows::Frozen,
            });
        }
    }

    /// `ema_decay` as given, or else for a new run [`DEFAULT_EMA_DECAY`] where the table can
    /// keep an average (dense updates, or the host table catching up; call after
    /// [`TrainSettings::resolve_untouched_rows`]) and 0 (off) elsewhere; a run saved before the
    /// setting existed had none (`fresh` false).
    pub fn resolve_ema_decay(&mut self, fresh: bool) {
        if self.ema_decay.is_none() {
            let able = self.embedding == EmbeddingUpdate::Dense
                || (self.embedding_table == TablePlace::Host && self.untouched().replay().is_some());
            self.ema_decay = Some(if fresh && able { DEFAULT_EMA_DECAY } else { 0.0 });
        }
    }

    /// `embedding_weight_decay` as given, or else for a new row-sparse run the larger of
    /// `weight_decay` and [`DEFAULT_EMBEDDING_WEIGHT_DECAY`], and `weight_decay` with dense
    /// updates (one optimiser, one decay) or for a run saved before the setting existed
    /// (`fresh` false).
    pub fn resolve_embedding_weight_decay(&mut self, fresh: bool) {
        if self.embedding_weight_decay.is_none() {
            self.embedding_weight_decay = Some(match (fresh, self.embedding) {
                (true, EmbeddingUpdate::Sparse) => self.weight_decay.max(DEFAULT_EMBEDDING_WEIGHT_DECAY),
                _ => self.weight_decay,
            });
        }
    }

    /// The line a new run prints when its row-sparse table's decay differs from the dense
    /// layers' (`None` when they are the same).
    pub fn describe_embedding_decay(&self) -> Option<String> {
        let table = self.embedding_decay();
        (self.embedding == EmbeddingUpdate::Sparse && table != self.weight_decay).then(|| {
            format!(
                "weight decay: {table} on the embedding table, {} on the dense layers (`train.embedding_weight_decay`)",
                self.weight_decay
            )
        })
    }

    /// The row-sparse table's weight decay: the resolved `embedding_weight_decay`, or
    /// `weight_decay` while unresolved.
    pub fn embedding_decay(&self) -> f64 {
        self.embedding_weight_decay.unwrap_or(self.weight_decay)
    }

    /// The weight average's decay, when there is one.
    pub fn average_decay(&self) -> Option<f32> {
        self.ema_decay.filter(|&d| d > 0.0).map(|d| d as f32)
    }

    /// The resolved `untouched_rows` (`frozen` while unresolved).
    pub fn untouched(&self) -> UntouchedRows {
        self.untouched_rows.unwrap_or(UntouchedRows::Frozen)
    }

    /// The embedding table's row-wise Adam: burn's betas with the run's ε, the table's weight
    /// decay ([`TrainSettings::embedding_decay`]), the run's optimiser kind and clipping.
    pub fn row_adam(&self) -> mtl_optim::RowAdamConfig {
        mtl_optim::RowAdamConfig {
            epsilon: self.adam_epsilon as f32,
            weight_decay: self.embedding_decay() as f32,
            decoupled: self.optimizer == OptimizerKind::AdamW,
            clip_norm: self.grad_clip_norm,
            ..mtl_optim::RowAdamConfig::default()
        }
    }

    /// The host table's set-up: [`TrainSettings::row_adam`], catch-up as resolved, and the
    /// weight average.
    pub fn sparse_adam(&self) -> mtl_optim::SparseAdamConfig {
        mtl_optim::SparseAdamConfig {
            adam: self.row_adam(),
            catch_up: self.untouched().replay(),
            average_decay: self.average_decay(),
        }
    }
}

impl Default for TrainSettings {
    fn default() -> Self {
        toml::from_str("").expect("every training setting has a default")
    }
}

impl TrainSettings {
    /// Checks every value against its allowed range; the message names key, value and range.
    /// The first value wrong, in this order, is reported: the optimiser's numbers, the
    /// embedding table's update, gradients and loss weights, the schedule and backend.
    pub fn check(&self) -> Result<(), String> {
        self.check_optimiser()?;
        self.check_table()?;
        self.check_losses()?;
        self.check_schedule()
    }

    /// Batch, epochs, learning rate, ε and weight decay.
    fn check_optimiser(&self) -> Result<(), String> {
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            return out_of_range(
                "batch_size",
                self.batch_size.to_string(),
                &format!("must be between 1 and {MAX_BATCH}"),
            );
        }
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return out_of_range(
                "epochs",
                self.epochs.to_string(),
                &format!("must be between 1 and {MAX_EPOCHS}"),
            );
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 10.0) {
            return out_of_range(
                "lr",
                self.lr.to_string(),
                "must be a number above 0 and at most 10",
            );
        }
        if !(self.adam_epsilon.is_finite() && self.adam_epsilon > 0.0 && self.adam_epsilon <= 1.0) {
            return out_of_range(
                "adam_epsilon",
                self.adam_epsilon.to_string(),
                "must be above 0 and at most 1",
            );
        }
        if !(self.weight_decay.is_finite() && (0.0..=1.0).contains(&self.weight_decay)) {
            return out_of_range(
                "weight_decay",
                self.weight_decay.to_string(),
                "must be between 0 and 1",
            );
        }
        Ok(())
    }

    /// The row-sparse table's decay, place, untouched rows and weight average, each only
    /// where the table's update has them.
    fn check_table(&self) -> Result<(), String> {
        if let Some(decay) = self.embedding_weight_decay {
            if !(decay.is_finite() && (0.0..=1.0).contains(&decay)) {
                return out_of_range(
                    "embedding_weight_decay",
                    decay.to_string(),
                    "must be between 0 and 1",
                );
            }
            if self.embedding == EmbeddingUpdate::Dense && decay != self.weight_decay {
                return out_of_range(
                    "embedding_weight_decay",
                    decay.to_string(),
                    &format!(
                        "applies to the row-sparse table; with `embedding = \"dense\"` the table is one of the model's parameters and takes `weight_decay` = {} (leave it out, or use `embedding = \"sparse\"`)",
                        self.weight_decay
                    ),
                );
            }
        }
        if self.embedding_table == TablePlace::Device && self.embedding == EmbeddingUpdate::Dense {
            return out_of_range(
                "embedding_table",
                "\"device\"".into(),
                "places the row-sparse table; with `embedding = \"dense\"` there is none (leave it out)",
            );
        }
        match (self.untouched_rows, self.embedding, self.embedding_table) {
            (Some(_), EmbeddingUpdate::Dense, _) => {
                return out_of_range(
                    "untouched_rows",
                    format!("{:?}", self.untouched_rows.map(|u| u.name()).unwrap_or_default()),
                    "applies to row-sparse updates; with `embedding = \"dense\"` every row is updated every step (leave it out)",
                );
            }
            (Some(u @ (UntouchedRows::CatchUp | UntouchedRows::FastCatchUp)), _, TablePlace::Device) => {
                return out_of_range(
                    "untouched_rows",
                    format!("{:?}", u.name()),
                    "needs the host table; `embedding_table = \"device\"` keeps untouched rows frozen (use `embedding_table = \"host\"` or `untouched_rows = \"frozen\"`)",
                );
            }
            _ => {}
        }
        if let Some(decay) = self.ema_decay {
            if !(decay.is_finite() && (0.0..1.0).contains(&decay)) {
                return out_of_range(
                    "ema_decay",
                    decay.to_string(),
                    "must be at least 0 and below 1 (0 turns the weight average off)",
                );
            }
            let table_keeps_none = self.embedding == EmbeddingUpdate::Sparse
                && (self.embedding_table == TablePlace::Device
                    || self.untouched_rows == Some(UntouchedRows::Frozen));
            if decay > 0.0 && table_keeps_none {
                return out_of_range(
                    "ema_decay",
                    decay.to_string(),
                    "needs the host table with `untouched_rows = \"fast-catch-up\"` or `\"catch-up\"` (or `embedding = \"dense\"`): a frozen or device table keeps no per-row steps to average over (set `ema_decay = 0`)",
                );
            }
        }
        let catches_up = self.embedding == EmbeddingUpdate::Sparse
            && self.embedding_table == TablePlace::Host
            && self.untouched_rows != Some(UntouchedRows::Frozen);
        if self.pipeline == Some(true) && !catches_up {
            return out_of_range(
                "pipeline",
                "true".into(),
                "brings rows up to date ahead, so it needs the row-sparse host table catching up (`untouched_rows = \"fast-catch-up\"` or `\"catch-up\"`); leave it out",
            );
        }
        Ok(())
    }

    /// Gradient clipping and the loss weights (fixed or learned, not both; not all zero).
    fn check_losses(&self) -> Result<(), String> {
        if let Some(clip) = self.grad_clip_norm
            && !(clip.is_finite() && clip > 0.0)
        {
            return out_of_range(
                "grad_clip_norm",
                clip.to_string(),
                "must be a number above 0 (leave it out for no clipping)",
            );
        }
        for (i, w) in self.loss_weights.iter().enumerate() {
            if !(w.is_finite() && *w >= 0.0) {
                return out_of_range(
                    &format!("loss_weights[{i}]"),
                    w.to_string(),
                    "must be a number at least 0",
                );
            }
        }
        self.loss_weighting.check()?;
        if self.loss_weighting.learned() && !self.loss_weights.is_empty() {
            return Err(
                "`train.loss_weights` are fixed weights; with a learned `train.loss_weighting` leave them out (the weights start at 1 and are learned)".into(),
            );
        }
        if !self.loss_weights.is_empty() && self.loss_weights.iter().all(|w| *w == 0.0) {
            return Err(
                "`train.loss_weights`: at least one weight must be above 0 (all 0 trains nothing)".into(),
            );
        }
        Ok(())
    }

    /// Step counts (never 0) and the backend's name.
    fn check_schedule(&self) -> Result<(), String> {
        for (key, value) in [
            ("eval_every_steps", self.eval_every_steps),
            ("checkpoint_every_steps", self.checkpoint_every_steps),
            ("max_steps", self.max_steps),
        ] {
            if value == Some(0) {
                return out_of_range(
                    key,
                    "0".into(),
                    "must be at least 1 (leave it out for the default)",
                );
            }
        }
        if let Err(e) = self.backend.parse::<mtl_features::BackendKind>() {
            return Err(format!("`train.backend` = \"{}\": {e}", self.backend));
        }
        Ok(())
    }
}

/// A value out of its allowed range, as `check` reports it: `train.KEY = VALUE: ALLOWED`.
fn out_of_range(key: &str, value: String, allowed: &str) -> Result<(), String> {
    Err(format!("`train.{key}` = {value}: {allowed}"))
}
