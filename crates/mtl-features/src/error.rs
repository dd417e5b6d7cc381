//! Typed errors of the feature layer.

use thiserror::Error;

/// Everything that can go wrong while reading a schema, fitting or encoding features.
#[derive(Debug, Error)]
pub enum FeatureError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An output path that must not be written over.
    #[error("{path}: {message}")]
    Output {
        /// The path.
        path: String,
        /// Why not.
        message: String,
    },
    /// The schema TOML does not parse (unknown key, wrong type, missing key).
    #[error("{file}: {message}")]
    SchemaParse {
        /// The schema file (or `<inline>`).
        file: String,
        /// The parser's message, naming the key and its line.
        message: String,
    },
    /// The schema parsed but is inconsistent.
    #[error("{file}: `{key}`: {message}")]
    SchemaInvalid {
        /// The schema file (or `<inline>`).
        file: String,
        /// The offending key, e.g. `sparse[3].shared_with`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A saved feature state does not parse or does not match the schema.
    #[error("{file}: feature state: {message}")]
    State {
        /// The state file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A backend name that mtl does not know.
    #[error("unknown backend `{name}` (expected one of: flex, ndarray, wgpu, cuda)")]
    UnknownBackend {
        /// The name given.
        name: String,
    },
    /// A known backend that this build lacks.
    #[error(
        "backend `{name}` is not compiled into this build (compiled: {compiled}); rebuild with `--features {name}`"
    )]
    BackendNotCompiled {
        /// The backend asked for.
        name: String,
        /// The backends this build has.
        compiled: String,
    },
    /// A compiled backend that could not start (no GPU adapter, no driver).
    #[error("backend `{name}` is not usable on this machine: {reason}")]
    BackendUnavailable {
        /// The backend asked for.
        name: String,
        /// Why it failed.
        reason: String,
    },
}
