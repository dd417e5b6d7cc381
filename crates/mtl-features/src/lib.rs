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

pub mod attention;
pub mod backend;
pub mod batch;
pub mod embedding;
pub mod error;
pub mod expr;
pub mod pending;
pub mod schema;
pub mod state;

pub use backend::BackendKind;
pub use batch::{BatchTensors, EncodedData, HostBatch, SequenceTensors};
pub use embedding::{FieldPooling, InputLayer, InputSpec};
pub use error::FeatureError;
pub use schema::{
    AttentionKind, AttentionPooling, DenseField, LabelField, LabelKind, PoolingSpec, Schema, SequenceField,
    SequencePooling, SparseField, ValidSchema, VocabSpec,
};
pub use state::{
    CellError, DenseStats, Encoder, FeatureState, LabelRule, StateFitter, TableLayout, canonical_id, shown,
};

use std::io::Write;

/// Formats a TOML error as one line: `line L, column C: message (in `source line`)`; the
/// message names the key, in the file's words rather than Rust's.
pub fn toml_error_line(text: &str, err: &toml::de::Error) -> String {
    let message = plain_message(err.message());
    match err.span() {
        Some(span) => toml_span_line(text, span, &message),
        None => message,
    }
}

/// `message` placed at `span` of `text`: `line L, column C: message (in `source line`)`.
pub fn toml_span_line(text: &str, span: std::ops::Range<usize>, message: &str) -> String {
    let start = span.start.min(text.len());
    let before = text.get(..start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let source = text.lines().nth(line - 1).unwrap_or("").trim();
    let source: String = if source.chars().count() > 80 {
        source.chars().take(80).collect::<String>() + "…"
    } else {
        source.to_string()
    };
    format!("line {line}, column {column}: {message} (in `{source}`)")
}

/// A serde message in a config author's words: `expected struct MlpSpec` → `expected a
/// table`, `expected usize` → `expected a non-negative integer`, and so on.
pub fn plain_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("expected ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "expected ".len()..];
        let word_end = |s: &str| {
            s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(s.len())
        };
        let (replacement, consumed) = if let Some(t) = after.strip_prefix("struct ") {
            ("expected a table", "struct ".len() + word_end(t))
        } else if let Some(t) = after.strip_prefix("enum ") {
            ("expected one of the allowed values", "enum ".len() + word_end(t))
        } else {
            let w = word_end(after);
            match &after[..w] {
                "usize" | "u64" | "u32" | "u16" | "u8" => ("expected a non-negative integer", w),
                "i64" | "i32" => ("expected an integer", w),
                "f64" | "f32" => ("expected a number", w),
                "bool" => ("expected true or false", w),
                _ => ("expected ", 0),
            }
        };
        out.push_str(replacement);
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a temp file in the same folder, synced, then renamed,
/// so a crash never leaves a half-written file at `path`. See [`atomic_write_with`] for what
/// `path` may be.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), FeatureError> {
    atomic_write_with(path, |w| w.write_all(bytes))
}

/// Checks that `path` is a new path or a regular file: a rename over a symlink, a device, a
/// FIFO or a folder would replace it (as root, even `/dev/full`), so those are refused with
/// a message saying what the path is.
pub fn check_output_path(path: &Path) -> Result<(), FeatureError> {
    let what = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(FeatureError::Io {
                path: path.display().to_string(),
                source,
            });
        }
        Ok(meta) => {
            let t = meta.file_type();
            if t.is_file() {
                return Ok(());
            } else if t.is_symlink() {
                "a symbolic link (give the path it points to, or a new path)"
            } else if t.is_dir() {
                "a folder"
            } else {
                "not a regular file (a device, FIFO or socket)"
            }
        }
    };
    Err(FeatureError::Output {
        path: path.display().to_string(),
        message: format!("refusing to replace it: it is {what}"),
    })
}

/// The files a trained model directory always holds (what marks a folder as one).
const MODEL_DIR_MARKS: [&str; 3] = ["config.toml", "schema.toml", "features.json"];

/// The files a model directory may hold besides its marks: an output never takes one of these
/// names there, even before the run writes it.
const MODEL_DIR_FILES: [&str; 6] = [
    "model.bpk",
    "metrics.json",
    "calibration.json",
    "curve.svg",
    "best.bpk",
    ".lock",
];

/// Every check of an output before it is written: [`check_output_path`] (not a link, a
/// folder or a device), then [`check_output_not_input`].
pub fn check_output(out: &Path, inputs: &[&Path]) -> Result<(), FeatureError> {
    check_output_path(out)?;
    check_output_not_input(out, inputs)
}

/// Refuses an output `out` that would replace something the user has: one of `inputs` (the
/// same file after resolving links, hard links included) or a file of a model directory (a
/// folder holding `config.toml`, `schema.toml` and `features.json`): any file it holds, or a
/// name its runs write. A new file of another name there (scores beside the model) is fine.
/// The error names the output and what it is.
pub fn check_output_not_input(out: &Path, inputs: &[&Path]) -> Result<(), FeatureError> {
    let refuse = |what: String| FeatureError::Output {
        path: out.display().to_string(),
        message: format!("refusing to write there: it is {what}; choose another output"),
    };
    for input in inputs {
        if same_file(out, input) {
            return Err(refuse(format!("the input {}", input.display())));
        }
    }
    let out = resolved(out);
    let (Some(dir), Some(name)) = (out.parent(), out.file_name()) else {
        return Ok(());
    };
    let model_dir = MODEL_DIR_MARKS.iter().all(|f| dir.join(f).is_file());
    let taken = out.exists() || MODEL_DIR_MARKS.iter().chain(&MODEL_DIR_FILES).any(|f| name == *f);
    if model_dir && taken {
        return Err(refuse(format!("a file of the model directory {}", dir.display())));
    }
    Ok(())
}

/// `path` made absolute with its links resolved: the file's own path when it exists, else its
/// resolved folder joined with its name.
fn resolved(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    let name = path.file_name().map(PathBuf::from).unwrap_or_default();
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match parent.canonicalize() {
        Ok(dir) => dir.join(name),
        Err(_) => std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
    }
}

/// Whether `a` and `b` are one file: the same resolved path, or (both existing) the same
/// device and inode.
fn same_file(a: &Path, b: &Path) -> bool {
    if resolved(a) == resolved(b) {
        return true;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    false
}

/// Like [`atomic_write`], with the contents streamed by `write` into a buffered temp file, so
/// a large file never has to be held in memory whole.
///
/// `path` must be a new path or a regular file ([`check_output_path`]). A new file gets the
/// usual permissions (0666 less the umask), a replaced one keeps its own.
pub fn atomic_write_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), FeatureError> {
    check_output_path(path)?;
    let io = |source| FeatureError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let existing = std::fs::metadata(path).ok().map(|m| m.permissions());
    let mut builder = tempfile::Builder::new();
    builder.prefix(".mtl-");
    // a new file: read-write for all less the umask, as `File::create` makes it
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let tmp = builder.tempfile_in(dir).map_err(io)?;
    let _pending = pending::register(tmp.path());
    let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp);
    write(&mut out).map_err(io)?;
    let tmp = out.into_inner().map_err(|e| io(e.into_error()))?;
    if let Some(permissions) = existing {
        tmp.as_file().set_permissions(permissions).map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod output_tests {
    use super::*;

    #[test]
    fn an_output_that_is_an_input_or_a_model_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let input = d.join("data.csv");
        std::fs::write(&input, "a\n1\n").unwrap();
        let refused = |out: &Path| {
            check_output_not_input(out, &[&input])
                .expect_err(&format!("{} accepted", out.display()))
                .to_string()
        };
        // the same file by another spelling, a symbolic link and a hard link
        assert!(refused(&d.join(".").join("data.csv")).contains("the input"));
        std::os::unix::fs::symlink(&input, d.join("link.csv")).unwrap();
        assert!(refused(&d.join("link.csv")).contains("the input"));
        std::fs::hard_link(&input, d.join("hard.csv")).unwrap();
        assert!(refused(&d.join("hard.csv")).contains("the input"));
        // any file of a model directory, existing or new
        let model = d.join("model");
        std::fs::create_dir(&model).unwrap();
        for f in MODEL_DIR_MARKS {
            std::fs::write(model.join(f), "x").unwrap();
        }
        let message = refused(&model.join("config.toml"));
        assert!(message.contains("a file of the model directory"), "{message}");
        assert!(
            refused(&model.join("metrics.json")).contains("model directory"),
            "a name it writes"
        );
        std::fs::write(model.join("notes.txt"), "mine").unwrap();
        assert!(
            refused(&model.join("notes.txt")).contains("model directory"),
            "a file it holds"
        );
        // a new file of another name, a new file elsewhere and a folder that is not a model
        // directory are fine
        assert!(check_output_not_input(&model.join("scores.csv"), &[&input]).is_ok());
        assert!(check_output_not_input(&d.join("scores.csv"), &[&input]).is_ok());
        std::fs::remove_file(model.join("features.json")).unwrap();
        assert!(check_output_not_input(&model.join("scores.csv"), &[&input]).is_ok());
        assert!(check_output_not_input(&d.join("no/such/dir/x.csv"), &[&input]).is_ok());
    }
}
