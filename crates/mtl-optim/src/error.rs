//! The optimisers' error type.

use thiserror::Error;

/// Errors of saving and restoring optimiser state; each names the file involved.
#[derive(Debug, Error)]
pub enum OptimError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Saved state does not fit the table it is loaded into.
    #[error("{path}: {message}")]
    Record {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A large buffer could not be allocated.
    #[error(
        "not enough memory for {what} ({gib:.1} GiB): lower vocab_size / hash_buckets or \
         embed_dim, or give the process more memory"
    )]
    Memory {
        /// The buffer.
        what: String,
        /// Its size in GiB.
        gib: f64,
    },
    /// The compute backend failed while reading values back.
    #[error("backend error: {0}")]
    Backend(String),
}

/// An I/O error on `path`, for `map_err`.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> OptimError + '_ {
    move |source| OptimError::Io {
        path: path.display().to_string(),
        source,
    }
}
