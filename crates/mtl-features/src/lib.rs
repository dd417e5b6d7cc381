//! # mtl-features
//!
//! The bottom layer of mtl: the feature schema (TOML), fitting and encoding (vocabularies,
//! hashing, standardisation), encoded data and batch tensors, the shared embedding/input layer,
//! and the one way every crate picks its compute device ([`BackendKind`]).
//!
//! Reading files lives one layer up in `mtl-data`, so that model crates never link CSV code.
//!
//! ```
//! use mtl_features::{BackendKind, Schema};
//! let schema = Schema::from_toml_str(
//!     "[[sparse]]\nname = \"user\"\nvocab_size = 100\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n",
//!     "inline.toml",
//! ).unwrap();
//! assert_eq!(schema.n_sparse(), 1);
//! let _device = BackendKind::Flex.device().unwrap();
//! ```

pub mod backend;
pub mod batch;
pub mod embedding;
pub mod error;
pub mod schema;
pub mod state;

pub use backend::BackendKind;
pub use batch::{BatchTensors, EncodedData, SequenceTensors};
pub use embedding::{FieldPooling, InputLayer, InputSpec};
pub use error::FeatureError;
pub use schema::{
    DenseField, LabelField, LabelKind, Schema, SequenceField, SequencePooling, SparseField, ValidSchema,
    VocabSpec,
};
pub use state::{CellError, DenseStats, Encoder, FeatureState, StateFitter, TableLayout};

use std::io::Write;

/// Formats a TOML error as one line: `line L, column C: message` (the message names the key).
pub fn toml_error_line(text: &str, err: &toml::de::Error) -> String {
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let source = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line}, column {column}: {} (in `{source}`)", err.message())
        }
        None => err.message().to_string(),
    }
}
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temp file in the same folder, synced, then renamed,
/// so a crash never leaves a half-written file at `path`.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), FeatureError> {
    atomic_write_with(path, |w| w.write_all(bytes))
}

/// Like [`atomic_write`], with the contents streamed by `write` into a buffered temp file, so
/// a large file never has to be held in memory whole.
pub fn atomic_write_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), FeatureError> {
    let io = |source| FeatureError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp);
    write(&mut out).map_err(io)?;
    let tmp = out.into_inner().map_err(|e| io(e.into_error()))?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}
