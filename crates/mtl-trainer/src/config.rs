//! The run configuration: a TOML file with `schema`, `[data]`, `[model]` and `[train]`,
//! every table deserialised with unknown keys rejected.

use std::path::{Path, PathBuf};

use mtl_data::BadRowPolicy;
use mtl_esmm::EsmmConfig;
use mtl_mmoe::{Gating, MmoeConfig, SharedBottomConfig};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Which model to build, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ModelConfig {
    /// Entire Space Multi-task Model.
    Esmm(EsmmConfig),
    /// Multi-gate Mixture-of-Experts.
    Mmoe(MmoeConfig),
    /// One-gate Mixture-of-Experts (MMOE's `gating = "shared"`).
    Omoe(MmoeConfig),
    /// Shared bottom MLP under per-task towers.
    SharedBottom(SharedBottomConfig),
}

impl ModelConfig {
    /// The `type` name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Esmm(_) => "esmm",
            Self::Mmoe(_) => "mmoe",
            Self::Omoe(_) => "omoe",
            Self::SharedBottom(_) => "shared_bottom",
        }
    }

    /// The MMOE config with OMoE's single gate applied, for `type = "omoe"`.
    pub fn omoe(config: &MmoeConfig) -> MmoeConfig {
        MmoeConfig {
            gating: Gating::Shared,
            ..config.clone()
        }
    }
}

/// Where the data is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training CSV.
    pub train: PathBuf,
    /// Validation CSV (metrics every epoch, early stopping).
    #[serde(default)]
    pub valid: Option<PathBuf>,
    /// Test CSV (metrics once at the end).
    #[serde(default)]
    pub test: Option<PathBuf>,
    /// `fail` (default) or `skip` for rows that cannot be encoded.
    #[serde(default = "default_policy")]
    pub bad_rows: String,
    /// Keep a cache of the encoded rows next to each CSV (`<file>.mtl.arrow`, Arrow IPC).
    #[serde(default = "default_true")]
    pub cache: bool,
}

fn default_true() -> bool {
    true
}

fn default_policy() -> String {
    "fail".into()
}

impl DataConfig {
    /// The bad-row policy.
    pub fn policy(&self) -> Result<BadRowPolicy, TrainError> {
        self.bad_rows.parse().map_err(|message| TrainError::Config {
            file: "config".into(),
            message: format!("`data.bad_rows`: {message}"),
        })
    }
}

/// Optimiser choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam with L2 weight decay added to the gradient (PyTorch's `Adam(weight_decay=…)`).
    #[default]
    Adam,
    /// AdamW with decoupled weight decay.
    AdamW,
}

/// How the embedding table is updated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingUpdate {
    /// Only the rows a batch uses, with a row-wise Adam (fast; vocabulary-size independent).
    #[default]
    Sparse,
    /// burn's dense gradient and optimiser over the whole table (torch-rechub's semantics).
    Dense,
}

/// Early stopping on a validation metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// `loss` (validation loss) or `<output>.<metric>`, e.g. `ctr.auc`, `dwell.mse`.
    pub metric: String,
    /// Evaluations without improvement before stopping.
    #[serde(default = "default_patience")]
    pub patience: usize,
}

fn default_patience() -> usize {
    2
}

impl EarlyStopping {
    /// Whether a higher value is better: AUC yes; loss, log loss, MSE, MAE no.
    pub fn higher_is_better(&self) -> bool {
        self.metric.ends_with(".auc")
    }
}

/// Training settings (`[train]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    /// Passes over the training data.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Rows per step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// `adam` or `adamw`.
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// Learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Weight decay (L2 for Adam, decoupled for AdamW).
    #[serde(default)]
    pub weight_decay: f64,
    /// Seed of initialisation and shuffling (same seed → same metrics).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Clip the global gradient norm to this value.
    #[serde(default)]
    pub grad_clip_norm: Option<f32>,
    /// Fixed weight per loss term (ESMM: `[ctr, ctcvr]`; MMOE: one per task); default 1.
    #[serde(default)]
    pub loss_weights: Vec<f32>,
    /// Evaluate on the validation set every N steps (default: at the end of each epoch).
    #[serde(default)]
    pub eval_every_steps: Option<usize>,
    /// Write a checkpoint every N steps (default: at the end of each epoch).
    #[serde(default)]
    pub checkpoint_every_steps: Option<usize>,
    /// Stop on a validation metric that stops improving; the best model is kept.
    #[serde(default)]
    pub early_stopping: Option<EarlyStopping>,
    /// Stop after this many steps in total (a checkpoint is written; `--resume` continues).
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// `flex` (default), `ndarray`, `wgpu` or `cuda`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Embedding updates: `sparse` (default) or `dense`.
    #[serde(default)]
    pub embedding: EmbeddingUpdate,
}

fn default_epochs() -> usize {
    1
}
fn default_batch() -> usize {
    1024
}
fn default_lr() -> f64 {
    1e-3
}
fn default_seed() -> u64 {
    2022
}
fn default_backend() -> String {
    "flex".into()
}

impl Default for TrainSettings {
    fn default() -> Self {
        toml::from_str("").expect("every training setting has a default")
    }
}

/// A whole run configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The feature schema TOML (relative paths are relative to this config file).
    pub schema: PathBuf,
    /// The data files.
    pub data: DataConfig,
    /// The model.
    pub model: ModelConfig,
    /// Training settings.
    #[serde(default)]
    pub train: TrainSettings,
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl RunConfig {
    /// Reads a config; relative paths inside are resolved against the file's folder.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TrainError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Self::from_toml_str(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.schema = resolve(base, &config.schema);
        config.data.train = resolve(base, &config.data.train);
        config.data.valid = config.data.valid.as_deref().map(|p| resolve(base, p));
        config.data.test = config.data.test.as_deref().map(|p| resolve(base, p));
        Ok(config)
    }

    /// Parses config TOML; `file` names the source in errors.
    pub fn from_toml_str(text: &str, file: &str) -> Result<Self, TrainError> {
        let config: Self = toml::from_str(text).map_err(|e| TrainError::Config {
            file: file.to_string(),
            message: mtl_features::toml_error_line(text, &e),
        })?;
        config.check(file)?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn check(&self, file: &str) -> Result<(), TrainError> {
        let bad = |message: String| TrainError::Config {
            file: file.to_string(),
            message,
        };
        let t = &self.train;
        if t.batch_size == 0 {
            return Err(bad("`train.batch_size` must be at least 1".into()));
        }
        if t.epochs == 0 {
            return Err(bad("`train.epochs` must be at least 1".into()));
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return Err(bad("`train.lr` must be a positive number".into()));
        }
        if t.early_stopping.is_some() && self.data.valid.is_none() {
            return Err(bad("`train.early_stopping` needs `data.valid`".into()));
        }
        if let Some(es) = &t.early_stopping
            && es.metric != "loss"
            && !es.metric.contains('.')
        {
            return Err(bad(format!(
                "`train.early_stopping.metric` = \"{}\": use `loss` or `<output>.<metric>` such as `ctr.auc`",
                es.metric
            )));
        }
        self.data.policy().map_err(|_| {
            bad(format!(
                "`data.bad_rows` = \"{}\": expected fail or skip",
                self.data.bad_rows
            ))
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
schema = "s.toml"
[data]
train = "t.csv"
valid = "v.csv"
[model]
type = "mmoe"
n_experts = 4
expert = { dims = [16] }
tower = { dims = [8] }
tasks = [{ label = "click" }, { label = "purchase" }]
[train]
epochs = 2
early_stopping = { metric = "click.auc" }
"#;

    #[test]
    fn parses_and_defaults() {
        let c = RunConfig::from_toml_str(GOOD, "c.toml").unwrap();
        assert_eq!(c.model.kind(), "mmoe");
        assert_eq!(c.train.batch_size, 1024);
        assert_eq!(c.train.epochs, 2);
        assert!(c.train.early_stopping.as_ref().unwrap().higher_is_better());
        assert_eq!(TrainSettings::default().lr, 1e-3);
    }

    #[test]
    fn unknown_keys_are_named_at_every_level() {
        for (from, to, key) in [
            ("epochs = 2", "epoch = 2", "epoch"),
            ("n_experts = 4", "n_experts = 4\nexperts = 3", "experts"),
            (
                "valid = \"v.csv\"",
                "valid = \"v.csv\"\nvalidation = 1",
                "validation",
            ),
            ("type = \"mmoe\"", "type = \"mmo\"", "mmo"),
            (
                "expert = { dims = [16] }",
                "expert = { dims = [16], act = \"relu\" }",
                "act",
            ),
        ] {
            let text = GOOD.replace(from, to);
            let err = RunConfig::from_toml_str(&text, "c.toml").unwrap_err().to_string();
            assert!(err.contains("c.toml") && err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn impossible_values_are_named() {
        let text = GOOD.replace("epochs = 2", "epochs = 2\nbatch_size = 0");
        assert!(
            RunConfig::from_toml_str(&text, "c.toml")
                .unwrap_err()
                .to_string()
                .contains("batch_size")
        );
        let text = GOOD.replace("valid = \"v.csv\"\n", "");
        assert!(
            RunConfig::from_toml_str(&text, "c.toml")
                .unwrap_err()
                .to_string()
                .contains("data.valid")
        );
        let text = GOOD.replace("click.auc", "auc");
        assert!(
            RunConfig::from_toml_str(&text, "c.toml")
                .unwrap_err()
                .to_string()
                .contains("early_stopping.metric")
        );
    }
}
