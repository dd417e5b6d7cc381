//! # mtl-trainer
//!
//! Trains any [`MultiTaskModel`](mtl_layers::MultiTaskModel) and runs whole jobs on model
//! directories: seeded
//! shuffling, Adam/AdamW (burn's optimisers, with weight decay and gradient-norm clipping),
//! fixed per-task loss weights, validation every epoch or every N steps, early stopping on a
//! chosen metric in the right direction, atomic checkpoints with optimiser state and data
//! position, exact resume, per-task metrics over whole evaluation sets, and model
//! directories with config, fitted features, weights, `metrics.json` and a training curve.
//!
//! ## Why not burn-train's `Learner`
//! burn's optimisers, gradient clipping, records and burnpack files are used as they are.
//! The loop itself is written here because what this project needs does not fit the
//! `Learner`: (1) metrics must be exact over the whole evaluation set per task, with CVR AUC
//! on clicked rows only — burn-train's AUROC is a per-batch `Adaptor` metric, one per output
//! type; (2) resume must restore the data position inside an epoch, not just the epoch;
//! (3) row-sparse embedding updates need a custom optimiser step for the embedding table
//! beside burn's optimiser for the dense layers ([`fit::step::Stepper`]); (4) `TrainStep` for the
//! model types would have to live in the model crates (orphan rule), pulling training code
//! down the stack.

//!
//! ## Layout
//! One job a module, imports running one way — `error`, `crash` ← [`config`] ← [`fit`] ←
//! [`jobs`]:
//! - [`config`]: the run config, a file per table (run, data, train, early stopping, loss
//!   weighting), every value checked before the first step;
//! - [`fit`]: the loop — its shared state in [`fit::state`], then loader, schedule, steps,
//!   loss weighting, evaluation, early stopping and checkpoints; over several ranks (MPI, the
//!   `mpi` feature, or threads of one process) through [`fit::collective`], each rank on its
//!   share of every batch;
//! - [`jobs`]: train (fresh or resumed), evaluate, predict; the model directory and its lock.
//!
//! The optimisers burn lacks are `mtl-optim`'s; metrics, calibration, gate reports and
//! inference on a model directory are `mtl-eval`'s; the model registry is `mtl-layers`'.

mod crash;
mod error;

pub mod config;
pub mod fit;
pub mod jobs;

pub use config::{
    DEFAULT_EMBEDDING_WEIGHT_DECAY, DataConfig, DataFiles, Direction, EarlyStopping, EarlyStoppingSetting,
    EmbeddingUpdate, LossWeighting, MetricsConfig, OptimizerKind, Overrides, RunConfig, TablePlace,
    TrainSettings, UntouchedRows,
};
pub use crash::{PAUSE_AT, crash_point};
pub use error::TrainError;
pub use fit::collective::Group;
pub use fit::state::{DataFile, EvalRecord, TrainState};
pub use fit::weighting::{Weighting, WeightingState};
pub use jobs::{
    Counting, Predictions, TableReport, TrainOptions, TrainSummary, eval_file, eval_file_grouped, eval_input,
    predict_file, predict_input, train,
};
pub use mtl_layers::registry::{Registry, WithModel, example_model, parse_model};
