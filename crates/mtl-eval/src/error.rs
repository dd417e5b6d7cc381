//! Scoring's error type.

use thiserror::Error;

/// Errors of scoring and of opening a model directory; each names the file involved.
#[derive(Debug, Error)]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file that does not hold what it should (a bad `calibration.json`).
    #[error("{file}: {message}")]
    Config {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// Weights could not be loaded.
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
    /// The compute backend failed (a device error while reading results).
    #[error("backend error: {0}")]
    Backend(String),
    /// A feature error.
    #[error(transparent)]
    Feature(#[from] mtl_features::FeatureError),
    /// A model configuration error.
    #[error(transparent)]
    Model(#[from] mtl_layers::ModelError),
}

/// An I/O error on `path`, for `map_err`.
pub fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A weights (burnpack) file that could not be loaded, for `map_err`.
pub fn record_err(path: &std::path::Path) -> impl FnOnce(burn::store::RecordError) -> EvalError + '_ {
    move |e| EvalError::Record {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}
