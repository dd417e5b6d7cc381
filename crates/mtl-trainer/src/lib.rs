//! # mtl-trainer
//!
//! Trains, evaluates and serves any [`MultiTaskModel`](mtl_layers::MultiTaskModel): seeded
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
//! beside burn's optimiser for the dense layers ([`step::Stepper`]); (4) `TrainStep` for the
//! model types would have to live in the model crates (orphan rule), pulling training code
//! down the stack.

mod average;
pub mod calibration;
pub mod checkpoint;
pub mod config;
pub mod curve;
pub mod device_table;
pub mod early_stopping;
pub mod evaluation;
pub mod fit;
pub mod gates;
pub mod loader;
pub mod metrics;
pub mod registry;
pub mod run;
pub mod schedule;
pub mod sparse;
pub mod step;
pub mod weighting;

pub use config::{
    DEFAULT_EMBEDDING_WEIGHT_DECAY, DataConfig, DataFiles, Direction, EarlyStopping, EarlyStoppingSetting,
    EmbeddingUpdate, OptimizerKind, RunConfig, TablePlace, TrainSettings, UntouchedRows,
};
pub use registry::{Registry, WithModel, example_model, parse_model};

/// What the [`registry!`] macro refers to, re-exported so that a crate using it needs no
/// dependencies of its own for it.
#[doc(hidden)]
pub mod __private {
    pub use burn::tensor::Device;
    pub use mtl_features;
    pub use mtl_layers;
    pub use serde;
    pub use toml;
}
pub use calibration::{Calibration, CalibrationMethod, Calibrator};
pub use fit::{EvalRecord, TrainState};
pub use metrics::{TaskMetrics, auc};
pub use run::{ModelDir, TrainOptions, TrainSummary, eval_file, predict_file, train};
pub use weighting::{LossWeighting, Weighting, WeightingState};

use thiserror::Error;

/// Errors of training, evaluation and prediction; each names the file or key involved.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A bad run configuration.
    #[error("{file}: {message}")]
    Config {
        /// The config file.
        file: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Weights or optimiser state could not be saved or loaded.
    #[error("{path}: {message}")]
    Record {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
    /// A model directory lacks a file.
    #[error("{dir} is not a trained model directory: {missing} is missing")]
    NotAModelDir {
        /// The directory.
        dir: String,
        /// The missing file.
        missing: String,
    },
    /// Another process is training in the directory.
    #[error(
        "{dir} is in use: another mtl process is training there (it holds {dir}/.lock); wait for it or choose another --out"
    )]
    Busy {
        /// The directory.
        dir: String,
    },
    /// `--resume` on a directory without a checkpoint.
    #[error("{dir}: no checkpoint to resume from")]
    NoCheckpoint {
        /// The directory.
        dir: String,
    },
    /// The loss became NaN or infinite.
    #[error(
        "training loss is not finite at step {step}: {terms:?} (lower the learning rate or clip gradients)"
    )]
    NonFinite {
        /// The step.
        step: usize,
        /// Each loss term's value.
        terms: Vec<(String, f32)>,
    },
    /// The compute backend failed (a device error while reading results).
    #[error("backend error: {0}")]
    Backend(String),
    /// A data error.
    #[error(transparent)]
    Data(#[from] mtl_data::DataError),
    /// A feature error.
    #[error(transparent)]
    Feature(#[from] mtl_features::FeatureError),
    /// A model configuration error.
    #[error(transparent)]
    Model(#[from] mtl_layers::ModelError),
}

/// An I/O error on `path`, for `map_err`.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn record_err(path: &std::path::Path) -> impl FnOnce(burn::store::RecordError) -> TrainError + '_ {
    move |e| TrainError::Record {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The environment variable that pauses a process at a named point, for the crash test:
/// `MTL_PAUSE_AT=step:5` pauses at the fifth time the `step` point is passed.
pub const PAUSE_AT: &str = "MTL_PAUSE_AT";

/// A point where the crash test may kill training: when [`PAUSE_AT`] names `name` (and this
/// is its n-th pass, for `name:n`), prints `mtl: paused at NAME` to stderr and waits forever,
/// so that the test can `kill -9` the process at exactly this point. Without the variable it
/// costs one lookup per process.
pub fn crash_point(name: &str) {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static TARGET: std::sync::OnceLock<Option<(String, usize)>> = std::sync::OnceLock::new();
    static PASSES: AtomicUsize = AtomicUsize::new(0);
    static LOCK: Mutex<()> = Mutex::new(());
    let target = TARGET.get_or_init(|| {
        let spec = std::env::var(PAUSE_AT).ok()?;
        let (point, n) = match spec.rsplit_once(':') {
            Some((p, n)) => (p.to_string(), n.parse().ok()?),
            None => (spec, 1),
        };
        Some((point, n))
    });
    let Some((point, n)) = target else { return };
    if point != name {
        return;
    }
    let _guard = LOCK.lock();
    if PASSES.fetch_add(1, Ordering::SeqCst) + 1 == *n {
        use std::io::Write;
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "mtl: paused at {name}");
        let _ = err.flush();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
