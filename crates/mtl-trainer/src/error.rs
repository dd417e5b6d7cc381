//! The trainer's error type: every error names the file, key or step involved.

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
    /// Rank 0 of a distributed job could not set up the run (its own error says why); the
    /// other ranks stop with this, none of them left waiting.
    #[error("rank {rank}: rank 0 could not set up the run in {dir} (its error says why)")]
    LeaderFailed {
        /// The rank that stopped.
        rank: usize,
        /// The run's directory.
        dir: String,
    },
    /// A data error.
    #[error(transparent)]
    Data(#[from] mtl_data::DataError),
    /// A feature error.
    #[error(transparent)]
    Feature(#[from] mtl_features::FeatureError),
    /// A model configuration error.
    #[error(transparent)]
    Model(#[from] mtl_layers::ModelError),
    /// Optimiser state could not be saved or restored.
    #[error(transparent)]
    Optim(#[from] mtl_optim::OptimError),
    /// Scoring or a model directory failed.
    #[error(transparent)]
    Eval(#[from] mtl_eval::EvalError),
}

/// An I/O error on `path`, for `map_err`.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A record (burnpack) error on `path`, for `map_err`.
pub(crate) fn record_err(path: &std::path::Path) -> impl FnOnce(burn::store::RecordError) -> TrainError + '_ {
    move |e| TrainError::Record {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}
