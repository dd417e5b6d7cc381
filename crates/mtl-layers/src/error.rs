//! Errors raised while building a model from its configuration.

use mtl_features::FeatureError;
use thiserror::Error;

/// A model configuration that does not fit the schema.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A config key names a label the schema lacks.
    #[error("`{key}`: no label named `{name}` in the schema (labels: {available})")]
    UnknownLabel {
        /// The config key, e.g. `model.click_label`.
        key: String,
        /// The name given.
        name: String,
        /// The schema's labels.
        available: String,
    },
    /// A config value that cannot work.
    #[error("`{key}`: {message}")]
    Invalid {
        /// The config key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A `[model]` table that does not parse (or a config file without one).
    #[error("{file}: {message}")]
    Config {
        /// The file, or what stands for it.
        file: String,
        /// What is wrong, naming the line and the key.
        message: String,
    },
    /// The input layer could not be built.
    #[error(transparent)]
    Feature(#[from] FeatureError),
}

/// Resolves a label name to its column index, or names the key and the labels available.
pub fn resolve_label(schema: &mtl_features::ValidSchema, key: &str, name: &str) -> Result<usize, ModelError> {
    schema.label_index(name).ok_or_else(|| ModelError::UnknownLabel {
        key: key.to_string(),
        name: name.to_string(),
        available: schema.label_names().join(", "),
    })
}
