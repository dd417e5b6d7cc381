//! `[data]`: where the training, validation and test rows are, and how they are read.

use std::path::{Path, PathBuf};

use mtl_data::BadRowPolicy;
use mtl_features::{LabelField, LabelKind, ValidSchema};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Where the data is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training CSV file(s).
    pub train: DataFiles,
    /// Validation CSV file(s) (metrics every epoch, early stopping).
    #[serde(default)]
    pub valid: Option<DataFiles>,
    /// Test CSV file(s) (metrics once at the end).
    #[serde(default)]
    pub test: Option<DataFiles>,
    /// `fail` (default) or `skip` for rows that cannot be encoded.
    #[serde(default = "default_policy")]
    pub bad_rows: String,
    /// Keep a cache of the encoded rows of each data file (`<file>.mtl.arrow`, Arrow IPC):
    /// beside the file, or in the user's cache folder when the data folder cannot be written.
    #[serde(default = "default_true")]
    pub cache: bool,
    /// Keep the caches in this folder instead (relative to the config's folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Stream the training files each epoch instead of holding their encoded rows: files in an
    /// order shuffled per epoch, rows shuffled within blocks of `shuffle_buffer` rows (the
    /// only rows held). For data larger than memory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub streaming: bool,
    /// Rows per shuffle block when streaming.
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
    /// Shards the training rows are split into, in order (each shuffled on its own; every
    /// batch takes its part of each): the ranks of an MPI job that divide them each read only
    /// their own shards' rows. Unset: the ranks a new run starts on (1 in one process: all
    /// rows in one shuffled order). Saved with the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    /// A column of sample weights (finite, at least 0): every loss term and every metric
    /// (AUC, GAUC, log loss, ECE, mean prediction, observed rate, MSE, MAE) counts each row
    /// by its weight. Prediction and serving do not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<String>,
}

fn default_shuffle_buffer() -> usize {
    1_000_000
}

/// One or more data files: a path, or a list of paths; any of them may be a glob pattern
/// (`data/train/*.csv`, `part-[0-9]*.csv`). Files are read in the order given, a pattern's
/// matches sorted by name, and their rows appended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum DataFiles {
    /// One path or pattern.
    One(PathBuf),
    /// Several, in order.
    Many(Vec<PathBuf>),
}

impl<'de> Deserialize<'de> for DataFiles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Files;
        impl<'de> serde::de::Visitor<'de> for Files {
            type Value = DataFiles;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a path, a glob pattern, or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DataFiles, E> {
                Ok(DataFiles::One(PathBuf::from(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<DataFiles, A::Error> {
                let mut paths = Vec::new();
                while let Some(p) = seq.next_element::<PathBuf>()? {
                    paths.push(p);
                }
                if paths.is_empty() {
                    return Err(serde::de::Error::custom("an empty list of files"));
                }
                Ok(DataFiles::Many(paths))
            }
        }
        d.deserialize_any(Files)
    }
}

impl From<PathBuf> for DataFiles {
    fn from(path: PathBuf) -> Self {
        Self::One(path)
    }
}

impl DataFiles {
    /// The paths and patterns as written.
    pub fn entries(&self) -> &[PathBuf] {
        match self {
            Self::One(p) => std::slice::from_ref(p),
            Self::Many(v) => v,
        }
    }

    pub(crate) fn resolve(&self, base: &Path) -> Self {
        match self {
            Self::One(p) => Self::One(resolve(base, p)),
            Self::Many(v) => Self::Many(v.iter().map(|p| resolve(base, p)).collect()),
        }
    }

    /// The files to read, patterns expanded (sorted by name); a pattern that matches no
    /// file, or a bad pattern, is an error naming `key` and the pattern.
    pub fn files(&self, key: &str) -> Result<Vec<PathBuf>, TrainError> {
        let mut out = Vec::new();
        for entry in self.entries() {
            let text = entry.to_string_lossy();
            if !text.contains(['*', '?', '[']) {
                out.push(entry.clone());
                continue;
            }
            let bad = |message: String| TrainError::Config {
                file: key.to_string(),
                message,
            };
            // mtl's own files beside the data (encoded caches, outputs being written) are never
            // data, so `data/*` keeps working after a run cached its files there
            let mut matches: Vec<PathBuf> = glob::glob(&text)
                .map_err(|e| bad(format!("`{text}` is not a valid pattern: {e}")))?
                .filter_map(Result::ok)
                .filter(|p| p.is_file() && !mtl_data::cache::is_own_file(p))
                .collect();
            if matches.is_empty() {
                return Err(bad(format!(
                    "the pattern `{text}` matches no file (mtl's encoded caches and temporary files are not data)"
                )));
            }
            matches.sort();
            out.extend(matches);
        }
        Ok(out)
    }

    /// The entries as a message shows them.
    pub fn shown(&self) -> String {
        self.entries()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub(crate) fn default_true() -> bool {
    true
}

fn default_policy() -> String {
    "fail".into()
}

impl DataConfig {
    /// The schema the training files are read with and the weight column's label index
    /// ([`with_weight_column`] of `weight`).
    pub fn with_weight(&self, schema: ValidSchema) -> Result<(ValidSchema, Option<usize>), TrainError> {
        with_weight_column(schema, self.weight.as_deref(), "data.weight")
    }

    /// The bad-row policy.
    pub fn policy(&self) -> Result<BadRowPolicy, TrainError> {
        self.bad_rows.parse().map_err(|message| TrainError::Config {
            file: "config".into(),
            message: format!("`data.bad_rows`: {message}"),
        })
    }
}

/// `schema` and, with `column`, that column read as one more label column after the schema's
/// own (regression-like, checked by the encoder to be finite and at least 0: sample weights);
/// and that column's index. The column may not be one the schema reads already; `key` names
/// the setting in messages (`data.weight`, `--weight`).
pub fn with_weight_column(
    mut schema: ValidSchema,
    column: Option<&str>,
    key: &str,
) -> Result<(ValidSchema, Option<usize>), TrainError> {
    let Some(column) = column else {
        return Ok((schema, None));
    };
    let bad = |message: String| TrainError::Config {
        file: "config".into(),
        message: format!("`{key}` = {column:?}: {message}"),
    };
    if column.trim().is_empty() {
        return Err(bad("name the column of sample weights".into()));
    }
    let s = &schema.schema;
    let read = (s.sparse.iter().map(|f| ("sparse field", &f.name, f.column())))
        .chain(s.sequence.iter().map(|f| ("sequence field", &f.name, f.column())))
        .chain(s.dense.iter().map(|f| ("dense field", &f.name, f.column())))
        .chain(s.labels.iter().map(|f| ("label", &f.name, f.column())));
    for (kind, name, col) in read {
        if col == column || name == column {
            return Err(bad(format!(
                "the schema reads this column already (the {kind} `{name}`); sample weights are a column of their own"
            )));
        }
    }
    schema
        .schema
        .labels
        .push(LabelField::new(column, LabelKind::Regression));
    let label = schema.n_labels() - 1;
    Ok((schema, Some(label)))
}

/// The largest shuffle block a streaming config may ask for.
pub const MAX_SHUFFLE_BUFFER: usize = 1 << 30;

/// `p` relative to `base` when it is relative, made absolute (against the working directory)
/// so that a saved run can be resumed from anywhere.
pub(crate) fn resolve(base: &Path, p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    std::path::absolute(&joined).unwrap_or(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_never_matches_caches_or_files_being_written() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "a.csv",
            "a.csv.mtl.arrow",
            ".mtl-x1y2",
            "b.parquet.partial",
            "c.parquet",
        ] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let all = DataFiles::One(dir.path().join("*"));
        let names: Vec<String> = all
            .files("data.train")
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.csv", "c.parquet"]);
        let caches = DataFiles::One(dir.path().join("*.arrow"));
        let err = caches.files("data.train").unwrap_err().to_string();
        assert!(
            err.contains("data.train") && err.contains("matches no file"),
            "{err}"
        );
    }
}
