//! The run configuration: a TOML file with `schema`, `[data]`, `[model]` and `[train]`,
//! every table deserialised with unknown keys rejected.

use std::path::{Path, PathBuf};

use mtl_data::BadRowPolicy;
use mtl_features::{LabelKind, ValidSchema};
use mtl_layers::{ModelPlan, OutputSpec};
use serde::{Deserialize, Serialize};

use crate::calibration::CalibrationMethod;
use crate::weighting::LossWeighting;
use crate::{Registry, TrainError};

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
    /// Keep a cache of the encoded rows next to each CSV (`<file>.mtl.arrow`, Arrow IPC).
    #[serde(default = "default_true")]
    pub cache: bool,
    /// Stream the training files each epoch instead of holding their encoded rows: files in an
    /// order shuffled per epoch, rows shuffled within blocks of `shuffle_buffer` rows (the
    /// only rows held). For data larger than memory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub streaming: bool,
    /// Rows per shuffle block when streaming.
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
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

    fn resolve(&self, base: &Path) -> Self {
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
            let mut matches: Vec<PathBuf> = glob::glob(&text)
                .map_err(|e| bad(format!("`{text}` is not a valid pattern: {e}")))?
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect();
            if matches.is_empty() {
                return Err(bad(format!("the pattern `{text}` matches no file")));
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

/// What the row-sparse Adam does with the table rows a step does not touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UntouchedRows {
    /// Move them as dense Adam does (torch-rechub's semantics): a row's momentum keeps acting
    /// after its last use and weight decay acts every step. Applied lazily: when a row is next
    /// used, the steps it missed are replayed exactly (zero gradient, each step's learning
    /// rate), and every row is brought up to date before evaluations and checkpoints. The
    /// table equals `embedding = "dense"`'s, at row-sparse cost. The host table's default.
    CatchUp,
    /// Leave them and their moments as they are (TensorFlow's LazyAdam,
    /// `torch.optim.SparseAdam`); the device table's only mode.
    Frozen,
}

impl UntouchedRows {
    /// The TOML spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::CatchUp => "catch-up",
            Self::Frozen => "frozen",
        }
    }
}

/// Where the row-sparse embedding table and its Adam moments live while training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TablePlace {
    /// Host memory, one row's value and moments side by side, updated by a SIMD loop; each
    /// step uploads the batch's rows and reads their gradient back (the CPU backends' choice).
    #[default]
    Host,
    /// Tensors on the training device: gather, row-wise Adam and the scatter of the touched
    /// rows all run there (for GPU backends: no per-step transfer of rows or gradients).
    Device,
}

/// `[train] early_stopping`: absent (on, with [`EarlyStopping::default`], whenever there is
/// validation data), `false` (off), `true` (the default settings) or a table.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum EarlyStoppingSetting {
    /// Not given: resolved when the run starts ([`EarlyStoppingSetting::resolve`]).
    #[default]
    Auto,
    /// `early_stopping = false`.
    Off,
    /// On, with these settings.
    On(EarlyStopping),
}

/// The TOML forms of [`EarlyStoppingSetting`].
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum EarlyStoppingToml {
    Flag(bool),
    Table(EarlyStopping),
}

impl Serialize for EarlyStoppingSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            // never written: a run's saved config holds the resolved setting
            Self::Auto | Self::Off => EarlyStoppingToml::Flag(false).serialize(s),
            Self::On(es) => EarlyStoppingToml::Table(es.clone()).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for EarlyStoppingSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(d)?;
        match value {
            toml::Value::Boolean(true) => Ok(Self::On(EarlyStopping::default())),
            toml::Value::Boolean(false) => Ok(Self::Off),
            toml::Value::Table(_) => EarlyStopping::deserialize(value)
                .map(Self::On)
                .map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "expected `false`, `true` or a table like {{ metric = \"loss\", patience = 2 }}, found {}",
                other.type_str()
            ))),
        }
    }
}

impl EarlyStoppingSetting {
    /// The setting a run uses: `Auto` is on (validation loss, patience 2) with validation data
    /// and off without.
    pub fn resolve(&self, has_valid: bool) -> Self {
        match self {
            Self::Auto if has_valid => Self::On(EarlyStopping::default()),
            Self::Auto => Self::Off,
            other => other.clone(),
        }
    }

    /// The active settings, if early stopping is on.
    pub fn active(&self) -> Option<&EarlyStopping> {
        match self {
            Self::On(es) => Some(es),
            _ => None,
        }
    }

    /// One line on the choice, printed when a run starts.
    pub fn describe(&self) -> String {
        match self {
            Self::On(es) => format!(
                "early stopping on `{}` ({} is better), patience {} evaluations; the best evaluation's model is kept (`early_stopping = false` turns it off)",
                es.metric,
                if es.higher_is_better() { "higher" } else { "lower" },
                es.patience
            ),
            _ => "early stopping off: the model after the last step is kept".into(),
        }
    }
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

fn is_auto(setting: &EarlyStoppingSetting) -> bool {
    *setting == EarlyStoppingSetting::Auto
}

impl Default for EarlyStopping {
    /// The validation loss, patience 2.
    fn default() -> Self {
        Self {
            metric: "loss".into(),
            patience: default_patience(),
        }
    }
}

/// Which way a monitored metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Higher is better (AUC).
    Higher,
    /// Lower is better (losses and errors).
    Lower,
}

/// The metrics early stopping can watch, per kind of output, with their direction.
const BINARY_METRICS: [(&str, Direction); 2] = [("auc", Direction::Higher), ("logloss", Direction::Lower)];
const REGRESSION_METRICS: [(&str, Direction); 2] = [("mse", Direction::Lower), ("mae", Direction::Lower)];

impl EarlyStopping {
    /// The direction of the watched metric, once it is known to be one early stopping can use
    /// ([`RunConfig::check_plan`] rejects every other name before training starts).
    pub fn direction(&self) -> Direction {
        let name = self.metric.rsplit('.').next().unwrap_or("");
        BINARY_METRICS
            .iter()
            .chain(&REGRESSION_METRICS)
            .find(|(m, _)| *m == name)
            .map_or(Direction::Lower, |(_, d)| *d)
    }

    /// Whether a higher value is better: AUC yes; loss, log loss, MSE, MAE no.
    pub fn higher_is_better(&self) -> bool {
        self.direction() == Direction::Higher
    }

    /// Checks the metric against the model's outputs: `loss`, or `<output>.<metric>` with a
    /// metric its kind has (`auc`, `logloss` for binary outputs; `mse`, `mae` for regression).
    fn check(&self, outputs: &[OutputSpec]) -> Result<(), String> {
        if self.patience == 0 {
            return Err("`train.early_stopping.patience` = 0: must be at least 1 evaluation".into());
        }
        if self.metric == "loss" {
            return Ok(());
        }
        let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
        let bad = |why: String| {
            Err(format!(
                "`train.early_stopping.metric` = \"{}\": {why}; use `loss` or `<output>.<metric>` \
                 (outputs: {}; binary metrics: auc, logloss; regression metrics: mse, mae)",
                self.metric,
                names.join(", ")
            ))
        };
        let Some((output, metric)) = self.metric.split_once('.') else {
            return bad("no output named".into());
        };
        let Some(spec) = outputs.iter().find(|o| o.name == output) else {
            return bad(format!("the model has no output `{output}`"));
        };
        let allowed: &[(&str, Direction)] = match spec.kind {
            LabelKind::Binary => &BINARY_METRICS,
            LabelKind::Regression => &REGRESSION_METRICS,
        };
        if !allowed.iter().any(|(m, _)| *m == metric) {
            return bad(format!(
                "`{metric}` is not a metric early stopping can watch on the {} output `{output}`",
                match spec.kind {
                    LabelKind::Binary => "binary",
                    LabelKind::Regression => "regression",
                }
            ));
        }
        Ok(())
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
    /// How the loss terms are weighted: `{ kind = "fixed" }` (`loss_weights`, the default),
    /// `{ kind = "uncertainty" }` or `{ kind = "gradnorm", alpha = 1.5 }` (learned; see
    /// [`crate::weighting`]).
    #[serde(default)]
    pub loss_weighting: LossWeighting,
    /// Evaluate on the validation set every N steps (default: at the end of each epoch).
    #[serde(default)]
    pub eval_every_steps: Option<usize>,
    /// Write a checkpoint every N steps (default: at the end of each epoch).
    #[serde(default)]
    pub checkpoint_every_steps: Option<usize>,
    /// Post-hoc calibration of the binary outputs, fitted on the validation set after
    /// training: `none` (default), `platt` or `isotonic` (see [`crate::calibration`]).
    #[serde(default)]
    pub calibration: CalibrationMethod,
    /// Stop on a validation metric that stops improving, keeping the best model: on by default
    /// with validation data (validation loss, patience 2); `false` turns it off.
    #[serde(default, skip_serializing_if = "is_auto")]
    pub early_stopping: EarlyStoppingSetting,
    /// Stop after this many steps in total (a checkpoint is written; `--resume` continues).
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// `flex` (default), `ndarray`, `wgpu` or `cuda`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Embedding updates: `sparse` (default) or `dense`.
    #[serde(default)]
    pub embedding: EmbeddingUpdate,
    /// Where the row-sparse table lives: `host` (default) or `device`.
    #[serde(default)]
    pub embedding_table: TablePlace,
    /// Adam's ε, for the dense parameters and the row-sparse table alike (burn's 1e-5 by
    /// default; PyTorch's is 1e-8).
    #[serde(default = "default_adam_epsilon")]
    pub adam_epsilon: f64,
    /// Rows a row-sparse step does not touch: `catch-up` (the host table's default: as dense
    /// Adam moves them) or `frozen` (the device table's only mode). Resolved and saved when a
    /// run starts ([`TrainSettings::resolve_untouched_rows`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untouched_rows: Option<UntouchedRows>,
    /// Decay of the weight average the run evaluates and saves (an exponential moving average
    /// of every parameter and table row, updated after each step; 0 turns it off, the model
    /// is then the last step's). Resolved and saved when a run starts
    /// ([`TrainSettings::resolve_ema_decay`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_decay: Option<f64>,
    /// Weight decay of the row-sparse embedding table (L2 for Adam, decoupled for AdamW); the
    /// dense layers keep `weight_decay`. Left out, a new row-sparse run takes the larger of
    /// `weight_decay` and [`DEFAULT_EMBEDDING_WEIGHT_DECAY`] (ids seen a few times each are
    /// what a second epoch memorises), `embedding = "dense"` and a run saved before the setting
    /// existed `weight_decay`. Resolved and saved when a run starts
    /// ([`TrainSettings::resolve_embedding_weight_decay`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_weight_decay: Option<f64>,
    /// Start the model's outputs at the training labels' base rates before the first step
    /// ([`MultiTaskModel::with_label_priors`](mtl_layers::MultiTaskModel::with_label_priors):
    /// for ESMM the CTR tower's output bias at logit(click rate) and the CVR tower's at
    /// logit(conversions per click), its output weights at zero). `false` keeps the random
    /// start (torch-rechub's).
    #[serde(default = "default_true")]
    pub label_priors: bool,
}

/// The weight average's decay of a new run that can keep one.
pub const DEFAULT_EMA_DECAY: f64 = 0.99;

/// The least weight decay of a new run's row-sparse embedding table (see
/// [`TrainSettings::embedding_weight_decay`]): at PyTorch's `Adam(weight_decay=1e-4)`, ESMM's
/// validation AUCs fall over 4 epochs; at 1e-3 on the table they hold (README *Quality*).
pub const DEFAULT_EMBEDDING_WEIGHT_DECAY: f64 = 1e-3;

fn default_adam_epsilon() -> f64 {
    1e-5
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

impl TrainSettings {
    /// `untouched_rows` as given, or else for a new run `catch-up` on the host table and
    /// `frozen` on the device table; a run saved before the setting existed trained `frozen`
    /// (`fresh` false).
    pub fn resolve_untouched_rows(&mut self, fresh: bool) {
        if self.untouched_rows.is_none() && self.embedding == EmbeddingUpdate::Sparse {
            self.untouched_rows = Some(match (fresh, self.embedding_table) {
                (true, TablePlace::Host) => UntouchedRows::CatchUp,
                _ => UntouchedRows::Frozen,
            });
        }
    }

    /// `ema_decay` as given, or else for a new run [`DEFAULT_EMA_DECAY`] where the table can
    /// keep an average (dense updates, or the host table with `catch-up`; call after
    /// [`TrainSettings::resolve_untouched_rows`]) and 0 (off) elsewhere; a run saved before the
    /// setting existed had none (`fresh` false).
    pub fn resolve_ema_decay(&mut self, fresh: bool) {
        if self.ema_decay.is_none() {
            let able = self.embedding == EmbeddingUpdate::Dense
                || (self.embedding_table == TablePlace::Host && self.untouched() == UntouchedRows::CatchUp);
            self.ema_decay = Some(if fresh && able { DEFAULT_EMA_DECAY } else { 0.0 });
        }
    }

    /// `embedding_weight_decay` as given, or else for a new row-sparse run the larger of
    /// `weight_decay` and [`DEFAULT_EMBEDDING_WEIGHT_DECAY`], and `weight_decay` with dense
    /// updates (one optimiser, one decay) or for a run saved before the setting existed
    /// (`fresh` false).
    pub fn resolve_embedding_weight_decay(&mut self, fresh: bool) {
        if self.embedding_weight_decay.is_none() {
            self.embedding_weight_decay = Some(match (fresh, self.embedding) {
                (true, EmbeddingUpdate::Sparse) => self.weight_decay.max(DEFAULT_EMBEDDING_WEIGHT_DECAY),
                _ => self.weight_decay,
            });
        }
    }

    /// The line a new run prints when its row-sparse table's decay differs from the dense
    /// layers' (`None` when they are the same).
    pub fn describe_embedding_decay(&self) -> Option<String> {
        let table = self.embedding_decay();
        (self.embedding == EmbeddingUpdate::Sparse && table != self.weight_decay).then(|| {
            format!(
                "weight decay: {table} on the embedding table, {} on the dense layers (`train.embedding_weight_decay`)",
                self.weight_decay
            )
        })
    }

    /// The row-sparse table's weight decay: the resolved `embedding_weight_decay`, or
    /// `weight_decay` while unresolved.
    pub fn embedding_decay(&self) -> f64 {
        self.embedding_weight_decay.unwrap_or(self.weight_decay)
    }

    /// The weight average's decay, when there is one.
    pub fn average_decay(&self) -> Option<f32> {
        self.ema_decay.filter(|&d| d > 0.0).map(|d| d as f32)
    }

    /// The resolved `untouched_rows` (`frozen` while unresolved).
    pub fn untouched(&self) -> UntouchedRows {
        self.untouched_rows.unwrap_or(UntouchedRows::Frozen)
    }
}

impl Default for TrainSettings {
    fn default() -> Self {
        toml::from_str("").expect("every training setting has a default")
    }
}

/// A whole run configuration, its `[model]` one of the model types of registry `R`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(bound(serialize = ""))]
pub struct RunConfig<R: Registry> {
    /// The feature schema TOML (relative paths are relative to this config file).
    pub schema: PathBuf,
    /// The data files.
    pub data: DataConfig,
    /// The model (`type` and its keys).
    pub model: R::Config,
    /// Training settings.
    #[serde(default)]
    pub train: TrainSettings,
}

/// `p` relative to `base` when it is relative, made absolute (against the working directory)
/// so that a saved run can be resumed from anywhere.
fn resolve(base: &Path, p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    std::path::absolute(&joined).unwrap_or(joined)
}

/// The largest shuffle block a streaming config may ask for.
pub const MAX_SHUFFLE_BUFFER: usize = 1 << 30;

/// The largest batch a config may ask for.
pub const MAX_BATCH: usize = 1 << 22;
/// The most epochs a config may ask for.
pub const MAX_EPOCHS: usize = 100_000;

/// `[data]`, `[train]` and `schema`: everything but `[model]`, read first.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sections {
    schema: PathBuf,
    data: DataConfig,
    #[serde(default)]
    train: TrainSettings,
}

impl<R: Registry> RunConfig<R> {
    /// Reads a config; relative paths inside are resolved against the file's folder and
    /// stored absolute.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TrainError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Self::from_toml_str(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Resolves relative paths against `base` and makes every path absolute.
    pub fn resolve_paths(&mut self, base: &Path) {
        self.schema = resolve(base, &self.schema);
        self.data.train = self.data.train.resolve(base);
        self.data.valid = self.data.valid.as_ref().map(|f| f.resolve(base));
        self.data.test = self.data.test.as_ref().map(|f| f.resolve(base));
    }

    /// Parses config TOML; `file` names the source in errors. Every error names the line
    /// and the key (inside `[model]` too: that table is read on its own once its `type` is
    /// known, so its errors keep their own lines).
    pub fn from_toml_str(text: &str, file: &str) -> Result<Self, TrainError> {
        let at = |e: toml::de::Error| TrainError::Config {
            file: file.to_string(),
            message: mtl_features::toml_error_line(text, &e),
        };
        let at_span = |span: std::ops::Range<usize>, message: String| TrainError::Config {
            file: file.to_string(),
            message: mtl_features::toml_span_line(text, span, &message),
        };
        let doc = toml::de::DeTable::parse(text).map_err(at)?;
        let doc_span = doc.span();
        let mut table = doc.into_inner();
        let model = table.remove("model");
        let sections =
            Sections::deserialize(toml::de::Deserializer::from(toml::Spanned::new(doc_span, table)))
                .map_err(at)?;
        let Some(model) = model else {
            return Err(TrainError::Config {
                file: file.to_string(),
                message: format!(
                    "no [model] table: add one with `type` = one of {}",
                    R::KINDS.join(", ")
                ),
            });
        };
        let model_span = model.span();
        let toml::de::DeValue::Table(mut model_table) = model.into_inner() else {
            return Err(at_span(
                model_span,
                "`model` must be a table such as [model]".into(),
            ));
        };
        let kind = match model_table.remove("type") {
            Some(kind) => match kind.get_ref().as_str() {
                Some(k) if R::KINDS.contains(&k) => k.to_string(),
                _ => {
                    return Err(at_span(
                        kind.span(),
                        format!(
                            "unknown model `type` {}: expected one of {}",
                            toml_text(text, kind.span()),
                            R::KINDS.join(", ")
                        ),
                    ));
                }
            },
            None => {
                return Err(at_span(
                    model_span,
                    format!("[model] has no `type`: expected one of {}", R::KINDS.join(", ")),
                ));
            }
        };
        let model = R::parse(
            &kind,
            toml::de::ValueDeserializer::from(toml::Spanned::new(
                model_span,
                toml::de::DeValue::Table(model_table),
            )),
        )
        .map_err(at)?;
        let config = Self {
            schema: sections.schema,
            data: sections.data,
            model,
            train: sections.train,
        };
        config.check(file)?;
        Ok(config)
    }

    /// Checks values that parse but cannot work: every message names the key, the value and
    /// what is allowed.
    pub fn check(&self, file: &str) -> Result<(), TrainError> {
        self.train.check().map_err(|message| TrainError::Config {
            file: file.to_string(),
            message,
        })?;
        let bad = |message: String| TrainError::Config {
            file: file.to_string(),
            message,
        };
        if !(1..=MAX_SHUFFLE_BUFFER).contains(&self.data.shuffle_buffer) {
            return Err(bad(format!(
                "`data.shuffle_buffer` = {}: must be between 1 and {MAX_SHUFFLE_BUFFER} rows",
                self.data.shuffle_buffer
            )));
        }
        if self.train.early_stopping.active().is_some() && self.data.valid.is_none() {
            return Err(bad("`train.early_stopping` needs `data.valid`".into()));
        }
        if self.train.calibration != CalibrationMethod::None && self.data.valid.is_none() {
            return Err(bad(
                "`train.calibration` is fitted on the validation set: it needs `data.valid`".into(),
            ));
        }
        self.data.policy().map_err(|_| {
            bad(format!(
                "`data.bad_rows` = \"{}\": expected fail or skip",
                self.data.bad_rows
            ))
        })?;
        Ok(())
    }

    /// Reads and validates the schema; an entry with `names` patterns is expanded against the
    /// header of the first training file. Also returns the text a run keeps as its
    /// `schema.toml`: the file as written, or with patterns the expanded fields, so that resume,
    /// eval and serving need no header.
    pub fn load_schema(&self) -> Result<(ValidSchema, String), TrainError> {
        let path = &self.schema;
        let text = std::fs::read_to_string(path).map_err(|source| mtl_features::FeatureError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let file = path.display().to_string();
        let schema = mtl_features::Schema::parse(&text, &file)?;
        let expanded = schema.has_patterns();
        let schema = match expanded {
            true => {
                let first = self.data.train.files("data.train")?.into_iter().next();
                let first = first.ok_or_else(|| TrainError::Config {
                    file: "data.train".into(),
                    message: "no training file to read the header from".into(),
                })?;
                let header = mtl_data::read_header(&first)?;
                schema.expand(
                    &header,
                    &format!("{file} (patterns over the header of {})", first.display()),
                )?
            }
            false => schema,
        };
        let schema = schema.validate(&file)?;
        let saved = match expanded {
            true => {
                let fields = toml::to_string(&schema.schema).map_err(|e| TrainError::Config {
                    file: file.clone(),
                    message: format!("writing the expanded schema: {e}"),
                })?;
                format!(
                    "# {file} with its `names` patterns expanded over the training data's header\n{fields}"
                )
            }
            false => text,
        };
        Ok((schema, saved))
    }

    /// Reads the schema and checks the model config and every setting that depends on it,
    /// before any data is read; errors name `file` (the config) or the schema file. Returns
    /// the schema, the plan and the schema text a run keeps ([`RunConfig::load_schema`]).
    pub fn check_model(&self, file: &str) -> Result<(ValidSchema, ModelPlan, String), TrainError> {
        let (schema, saved) = self.load_schema()?;
        let plan = R::plan(&self.model, &schema).map_err(|e| TrainError::Config {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        self.check_plan(&plan, file)?;
        if matches!(self.train.loss_weighting, LossWeighting::Gradnorm { .. })
            && schema.n_sparse() + schema.n_sequence() == 0
        {
            return Err(TrainError::Config {
                file: file.to_string(),
                message: "`train.loss_weighting` = gradnorm balances the tasks' gradient norms on the shared embedding table; this schema has no sparse or sequence field".into(),
            });
        }
        Ok((schema, plan, saved))
    }

    /// Checks the settings that depend on the model against its plan (the number of loss
    /// weights, the early-stopping metric): before any data is read.
    pub fn check_plan(&self, plan: &ModelPlan, file: &str) -> Result<(), TrainError> {
        let bad = |message: String| TrainError::Config {
            file: file.to_string(),
            message,
        };
        let weights = &self.train.loss_weights;
        if !weights.is_empty() && weights.len() != plan.loss_names.len() {
            return Err(bad(format!(
                "`train.loss_weights` has {} values; the {} model has {} loss terms ({}), one weight each",
                weights.len(),
                R::kind(&self.model),
                plan.loss_names.len(),
                plan.loss_names.join(", ")
            )));
        }
        if let Some(es) = self.train.early_stopping.active() {
            es.check(&plan.outputs).map_err(bad)?;
        }
        Ok(())
    }
}

/// The source text of a span, for quoting a value in a message.
fn toml_text(text: &str, span: std::ops::Range<usize>) -> &str {
    text.get(span).unwrap_or("?")
}

impl TrainSettings {
    /// Checks every value against its allowed range; the message names key, value and range.
    pub fn check(&self) -> Result<(), String> {
        let range =
            |key: &str, value: String, allowed: &str| Err(format!("`train.{key}` = {value}: {allowed}"));
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            return range(
                "batch_size",
                self.batch_size.to_string(),
                &format!("must be between 1 and {MAX_BATCH}"),
            );
        }
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return range(
                "epochs",
                self.epochs.to_string(),
                &format!("must be between 1 and {MAX_EPOCHS}"),
            );
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 10.0) {
            return range(
                "lr",
                self.lr.to_string(),
                "must be a number above 0 and at most 10",
            );
        }
        if !(self.adam_epsilon.is_finite() && self.adam_epsilon > 0.0 && self.adam_epsilon <= 1.0) {
            return range(
                "adam_epsilon",
                self.adam_epsilon.to_string(),
                "must be above 0 and at most 1",
            );
        }
        if !(self.weight_decay.is_finite() && (0.0..=1.0).contains(&self.weight_decay)) {
            return range(
                "weight_decay",
                self.weight_decay.to_string(),
                "must be between 0 and 1",
            );
        }
        if let Some(decay) = self.embedding_weight_decay {
            if !(decay.is_finite() && (0.0..=1.0).contains(&decay)) {
                return range(
                    "embedding_weight_decay",
                    decay.to_string(),
                    "must be between 0 and 1",
                );
            }
            if self.embedding == EmbeddingUpdate::Dense && decay != self.weight_decay {
                return range(
                    "embedding_weight_decay",
                    decay.to_string(),
                    &format!(
                        "applies to the row-sparse table; with `embedding = \"dense\"` the table is one of the model's parameters and takes `weight_decay` = {} (leave it out, or use `embedding = \"sparse\"`)",
                        self.weight_decay
                    ),
                );
            }
        }
        if self.embedding_table == TablePlace::Device && self.embedding == EmbeddingUpdate::Dense {
            return range(
                "embedding_table",
                "\"device\"".into(),
                "places the row-sparse table; with `embedding = \"dense\"` there is none (leave it out)",
            );
        }
        match (self.untouched_rows, self.embedding, self.embedding_table) {
            (Some(_), EmbeddingUpdate::Dense, _) => {
                return range(
                    "untouched_rows",
                    format!("{:?}", self.untouched_rows.map(|u| u.name()).unwrap_or_default()),
                    "applies to row-sparse updates; with `embedding = \"dense\"` every row is updated every step (leave it out)",
                );
            }
            (Some(UntouchedRows::CatchUp), _, TablePlace::Device) => {
                return range(
                    "untouched_rows",
                    "\"catch-up\"".into(),
                    "needs the host table; `embedding_table = \"device\"` keeps untouched rows frozen (use `embedding_table = \"host\"` or `untouched_rows = \"frozen\"`)",
                );
            }
            _ => {}
        }
        if let Some(decay) = self.ema_decay {
            if !(decay.is_finite() && (0.0..1.0).contains(&decay)) {
                return range(
                    "ema_decay",
                    decay.to_string(),
                    "must be at least 0 and below 1 (0 turns the weight average off)",
                );
            }
            let table_keeps_none = self.embedding == EmbeddingUpdate::Sparse
                && (self.embedding_table == TablePlace::Device
                    || self.untouched_rows == Some(UntouchedRows::Frozen));
            if decay > 0.0 && table_keeps_none {
                return range(
                    "ema_decay",
                    decay.to_string(),
                    "needs the host table with `untouched_rows = \"catch-up\"` (or `embedding = \"dense\"`): a frozen or device table keeps no per-row steps to average over (set `ema_decay = 0`)",
                );
            }
        }
        if let Some(clip) = self.grad_clip_norm
            && !(clip.is_finite() && clip > 0.0)
        {
            return range(
                "grad_clip_norm",
                clip.to_string(),
                "must be a number above 0 (leave it out for no clipping)",
            );
        }
        for (i, w) in self.loss_weights.iter().enumerate() {
            if !(w.is_finite() && *w >= 0.0) {
                return range(
                    &format!("loss_weights[{i}]"),
                    w.to_string(),
                    "must be a number at least 0",
                );
            }
        }
        self.loss_weighting.check()?;
        if self.loss_weighting.learned() && !self.loss_weights.is_empty() {
            return Err(
                "`train.loss_weights` are fixed weights; with a learned `train.loss_weighting` leave them out (the weights start at 1 and are learned)".into(),
            );
        }
        if !self.loss_weights.is_empty() && self.loss_weights.iter().all(|w| *w == 0.0) {
            return Err(
                "`train.loss_weights`: at least one weight must be above 0 (all 0 trains nothing)".into(),
            );
        }
        for (key, value) in [
            ("eval_every_steps", self.eval_every_steps),
            ("checkpoint_every_steps", self.checkpoint_every_steps),
            ("max_steps", self.max_steps),
        ] {
            if value == Some(0) {
                return range(
                    key,
                    "0".into(),
                    "must be at least 1 (leave it out for the default)",
                );
            }
        }
        if let Err(e) = self.backend.parse::<mtl_features::BackendKind>() {
            return Err(format!("`train.backend` = \"{}\": {e}", self.backend));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::registry! {
        /// The models these tests read.
        enum TestModel in Test {
            "esmm" => Esmm(mtl_esmm::EsmmConfig),
            "mmoe" => Mmoe(mtl_mmoe::MmoeConfig),
            "shared_bottom" => SharedBottom(mtl_mmoe::SharedBottomConfig),
        }
    }

    type RunConfig = super::RunConfig<Test>;

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
        assert_eq!(Test::kind(&c.model), "mmoe");
        assert_eq!(c.train.batch_size, 1024);
        assert_eq!(c.train.epochs, 2);
        assert!(c.train.early_stopping.active().unwrap().higher_is_better());
        assert_eq!(TrainSettings::default().lr, 1e-3);
    }

    #[test]
    fn early_stopping_is_on_by_default_with_validation_data() {
        let with = |line: &str| {
            let text = GOOD.replace("early_stopping = { metric = \"click.auc\" }", line);
            RunConfig::from_toml_str(&text, "c.toml").map(|c| c.train.early_stopping)
        };
        let auto = with("").unwrap();
        assert_eq!(auto, EarlyStoppingSetting::Auto);
        let on = auto.resolve(true);
        assert_eq!(on.active(), Some(&EarlyStopping::default()));
        assert_eq!(
            (
                on.active().unwrap().metric.as_str(),
                on.active().unwrap().patience
            ),
            ("loss", 2)
        );
        assert!(on.describe().contains("`early_stopping = false` turns it off"));
        assert_eq!(auto.resolve(false), EarlyStoppingSetting::Off);
        assert_eq!(
            with("early_stopping = false").unwrap().resolve(true),
            EarlyStoppingSetting::Off
        );
        assert_eq!(
            with("early_stopping = true").unwrap(),
            EarlyStoppingSetting::On(EarlyStopping::default())
        );
        let err = with("early_stopping = 3").unwrap_err().to_string();
        assert!(
            err.contains("early_stopping") && err.contains("expected `false`, `true` or a table"),
            "{err}"
        );
        let err = with("early_stopping = { metric = \"loss\", patient = 3 }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("patient"), "{err}");
        // the saved form reads back as the same setting
        for setting in [EarlyStoppingSetting::Off, on.clone()] {
            let settings = TrainSettings {
                early_stopping: setting.clone(),
                ..TrainSettings::default()
            };
            let text = toml::to_string(&settings).unwrap();
            let back: TrainSettings = toml::from_str(&text).unwrap();
            assert_eq!(back.early_stopping, setting, "{text}");
        }
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
    fn the_embedding_table_decays_at_least_at_the_default_in_new_row_sparse_runs() {
        let resolved = |extra: &str, fresh: bool| {
            let mut t: TrainSettings = toml::from_str(extra).unwrap();
            t.resolve_embedding_weight_decay(fresh);
            (t.embedding_decay(), t.describe_embedding_decay().is_some())
        };
        let floor = DEFAULT_EMBEDDING_WEIGHT_DECAY;
        assert_eq!(resolved("", true), (floor, true));
        assert_eq!(resolved("weight_decay = 1e-4", true), (floor, true));
        // a larger weight decay is kept for the table too
        assert_eq!(resolved("weight_decay = 0.01", true), (0.01, false));
        // dense updates: one optimiser, one decay
        assert_eq!(
            resolved("weight_decay = 1e-4\nembedding = \"dense\"", true),
            (1e-4, false)
        );
        // a run saved before the setting existed resumes as it trained
        assert_eq!(resolved("weight_decay = 1e-4", false), (1e-4, false));
        // given values stay, also below the default
        assert_eq!(resolved("embedding_weight_decay = 1e-5", true), (1e-5, true));
        assert_eq!(resolved("embedding_weight_decay = 1e-5", false), (1e-5, true));
        // unresolved (settings built in code), the table takes `weight_decay`
        let plain = TrainSettings {
            weight_decay: 0.2,
            ..TrainSettings::default()
        };
        assert_eq!(plain.embedding_decay(), 0.2);
    }

    #[test]
    fn an_embedding_decay_out_of_range_or_beside_dense_updates_is_refused() {
        for (extra, says) in [
            ("embedding_weight_decay = -1e-3", "must be between 0 and 1"),
            ("embedding_weight_decay = 2.0", "must be between 0 and 1"),
            ("embedding_weight_decay = nan", "must be between 0 and 1"),
            (
                "embedding = \"dense\"\nembedding_weight_decay = 1e-3",
                "takes `weight_decay` = 0",
            ),
        ] {
            let t: TrainSettings = toml::from_str(extra).unwrap();
            let err = t.check().unwrap_err();
            assert!(
                err.contains("`train.embedding_weight_decay`") && err.contains(says),
                "{extra}: {err}"
            );
        }
        // dense updates with the same decay as the dense layers are fine
        let same: TrainSettings =
            toml::from_str("embedding = \"dense\"\nweight_decay = 1e-3\nembedding_weight_decay = 1e-3")
                .unwrap();
        assert_eq!(same.check(), Ok(()));
    }

    #[test]
    fn the_weight_average_is_on_for_new_runs_whose_table_can_keep_one() {
        let resolved = |extra: &str, fresh: bool| {
            let mut t: TrainSettings = toml::from_str(extra).unwrap();
            t.resolve_untouched_rows(fresh);
            t.resolve_ema_decay(fresh);
            t.average_decay()
        };
        let on = Some(DEFAULT_EMA_DECAY as f32);
        assert_eq!(resolved("", true), on);
        assert_eq!(resolved("embedding = \"dense\"", true), on);
        // a frozen or device table keeps no per-row steps to average over
        assert_eq!(resolved("untouched_rows = \"frozen\"", true), None);
        assert_eq!(resolved("embedding_table = \"device\"", true), None);
        // a run saved before the setting existed resumes without one
        assert_eq!(resolved("", false), None);
        // given values stay: 0 is off
        assert_eq!(resolved("ema_decay = 0.0", true), None);
        assert_eq!(resolved("ema_decay = 0.5", false), Some(0.5));
    }

    #[test]
    fn label_priors_are_on_unless_turned_off() {
        assert!(TrainSettings::default().label_priors);
        let off: TrainSettings = toml::from_str("label_priors = false").unwrap();
        assert!(!off.label_priors);
        let err = RunConfig::from_toml_str(&GOOD.replace("[train]", "[train]\nlabel_priors = 1"), "c.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.toml") && err.contains("label_priors"), "{err}");
    }

    #[test]
    fn impossible_values_are_named_with_key_value_and_range() {
        for (line, key, value) in [
            ("batch_size = 0", "train.batch_size", "= 0"),
            ("epochs = 0", "train.epochs", "= 0"),
            ("lr = -0.1", "train.lr", "= -0.1"),
            ("weight_decay = -0.0001", "train.weight_decay", "= -0.0001"),
            ("grad_clip_norm = -1.0", "train.grad_clip_norm", "= -1"),
            ("loss_weights = [1.0, -2.0]", "train.loss_weights[1]", "= -2"),
            ("loss_weights = [0.0, 0.0]", "train.loss_weights", "at least one"),
            ("eval_every_steps = 0", "train.eval_every_steps", "= 0"),
            (
                "checkpoint_every_steps = 0",
                "train.checkpoint_every_steps",
                "= 0",
            ),
            ("max_steps = 0", "train.max_steps", "= 0"),
            ("adam_epsilon = 0.0", "train.adam_epsilon", "= 0"),
            ("ema_decay = 1.0", "train.ema_decay", "= 1"),
            ("ema_decay = -0.5", "train.ema_decay", "= -0.5"),
            (
                "untouched_rows = \"frozen\"\nema_decay = 0.99",
                "train.ema_decay",
                "catch-up",
            ),
            (
                "embedding_table = \"device\"\nema_decay = 0.9",
                "train.ema_decay",
                "device table",
            ),
            (
                "embedding = \"dense\"\nuntouched_rows = \"frozen\"",
                "train.untouched_rows",
                "dense",
            ),
            (
                "embedding_table = \"device\"\nuntouched_rows = \"catch-up\"",
                "train.untouched_rows",
                "host table",
            ),
            (
                "loss_weighting = { kind = \"gradnorm\", alpha = 20.0 }",
                "train.loss_weighting.alpha",
                "= 20",
            ),
            (
                "loss_weighting = { kind = \"uncertainty\", lr = 2.0 }",
                "train.loss_weighting.lr",
                "= 2",
            ),
            (
                "loss_weighting = { kind = \"uncertainty\" }\nloss_weights = [1.0, 2.0]",
                "train.loss_weights",
                "learned",
            ),
            (
                "loss_weighting = { kind = \"sometimes\" }",
                "loss_weighting",
                "sometimes",
            ),
            ("backend = \"tpu\"", "train.backend", "tpu"),
            (
                "embedding = \"dense\"\nembedding_table = \"device\"",
                "train.embedding_table",
                "row-sparse",
            ),
        ] {
            let text = GOOD.replace("epochs = 2\n", &format!("epochs = 2\n{line}\n"));
            let text = if line.starts_with("epochs") {
                GOOD.replace("epochs = 2", line)
            } else {
                text
            };
            let err = RunConfig::from_toml_str(&text, "c.toml").unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(value), "{line}: {err}");
        }
        let text = GOOD.replace("valid = \"v.csv\"\n", "");
        let err = RunConfig::from_toml_str(&text, "c.toml").unwrap_err().to_string();
        assert!(err.contains("data.valid"), "{err}");
    }

    fn schema() -> ValidSchema {
        mtl_features::Schema::from_toml_str(
            "[[sparse]]\nname = \"u\"\nvocab_size = 4\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n\
             [[labels]]\nname = \"purchase\"\nkind = \"binary\"\n[[labels]]\nname = \"dwell\"\nkind = \"regression\"\n",
            "s.toml",
        )
        .unwrap()
    }

    #[test]
    fn settings_that_depend_on_the_model_are_checked_against_its_plan() {
        let s = schema();
        let check = |text: &str| {
            let c = RunConfig::from_toml_str(text, "c.toml")?;
            let plan = Test::plan(&c.model, &s)?;
            c.check_plan(&plan, "c.toml")
        };
        assert!(check(GOOD).is_ok());
        for (from, to, expect) in [
            (
                "epochs = 2",
                "epochs = 2\nloss_weights = [1.0]",
                "has 1 values; the mmoe model has 2 loss terms",
            ),
            ("click.auc", "auc", "no output named"),
            ("click.auc", "ctr.auc", "no output `ctr`"),
            (
                "click.auc",
                "click.mean_prediction",
                "`mean_prediction` is not a metric",
            ),
            ("click.auc", "click.mse", "`mse` is not a metric"),
            (
                "metric = \"click.auc\"",
                "metric = \"click.auc\", patience = 0",
                "patience",
            ),
        ] {
            let err = check(&GOOD.replace(from, to)).unwrap_err().to_string();
            assert!(err.contains(expect), "{to}: {err}");
        }
        // the direction is explicit per metric
        for (metric, higher) in [("click.auc", true), ("click.logloss", false), ("loss", false)] {
            let es = EarlyStopping {
                metric: metric.into(),
                patience: 1,
            };
            assert_eq!(es.higher_is_better(), higher, "{metric}");
        }
        let dwell = GOOD.replace("{ label = \"purchase\" }", "{ label = \"dwell\" }");
        for (metric, ok) in [("dwell.mse", true), ("dwell.mae", true), ("dwell.auc", false)] {
            let text = dwell.replace("click.auc", metric);
            assert_eq!(check(&text).is_ok(), ok, "{metric}");
        }
    }

    #[test]
    fn model_errors_point_at_their_own_line_in_plain_words() {
        // line 10 is `tower = ...`; the error must say line 10, not the [model] header's
        let text = GOOD.replace("tower = { dims = [8] }", "tower = { dims = \"eight\" }");
        let err = RunConfig::from_toml_str(&text, "c.toml").unwrap_err().to_string();
        assert!(err.contains("line 10"), "{err}");
        assert!(err.contains("dims = \"eight\""), "{err}");
        let text = GOOD.replace("tower = { dims = [8] }", "tower = 8");
        let err = RunConfig::from_toml_str(&text, "c.toml").unwrap_err().to_string();
        assert!(
            err.contains("line 10") && err.contains("expected a table"),
            "{err}"
        );
        assert!(!err.contains("struct"), "no Rust type names: {err}");
        let text = GOOD.replace("n_experts = 4", "n_experts = -4");
        let err = RunConfig::from_toml_str(&text, "c.toml").unwrap_err().to_string();
        assert!(
            err.contains("line 8") && err.contains("non-negative integer"),
            "{err}"
        );
        assert!(!err.contains("usize"), "{err}");
        let text = GOOD.replace("type = \"mmoe\"\n", "");
        let err = RunConfig::from_toml_str(&text, "c.toml").unwrap_err().to_string();
        assert!(err.contains("no `type`") && err.contains("esmm"), "{err}");
    }
}
