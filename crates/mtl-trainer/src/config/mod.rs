//! The run configuration: a TOML file with `schema`, `[data]`, `[model]` and `[train]`,
//! every table deserialised with unknown keys rejected. One file per table: `data.rs`,
//! `train.rs` (with `early_stopping.rs` and `loss_weighting.rs`); the whole run here, and
//! every item re-exported here (its one path outside this folder).

use std::path::{Path, PathBuf};

use mtl_features::ValidSchema;
use mtl_layers::{ModelError, ModelPlan};
use serde::{Deserialize, Serialize};

use mtl_eval::CalibrationMethod;

use crate::{Registry, TrainError};

mod compose;
mod data;
mod early_stopping;
mod loss_weighting;
mod train;

use data::resolve;
pub use data::{DataConfig, DataFiles, MAX_SHUFFLE_BUFFER, with_weight_column};
pub use early_stopping::{Direction, EarlyStopping, EarlyStoppingSetting};
pub use loss_weighting::LossWeighting;
pub use train::{
    DEFAULT_EMA_DECAY, DEFAULT_EMBEDDING_WEIGHT_DECAY, EmbeddingUpdate, OptimizerKind, TablePlace,
    TrainSettings, UntouchedRows,
};
pub use train::{MAX_BATCH, MAX_EPOCHS};

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
    /// Extra metrics of the validation evaluations.
    #[serde(default, skip_serializing_if = "MetricsConfig::is_default")]
    pub metrics: MetricsConfig,
}

/// Extra metrics (`[metrics]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// GAUC over the validation rows grouped by this column (a user id): each binary
    /// output's AUC within each group, averaged weighted by rows over the groups with both
    /// classes, in every evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
}

impl MetricsConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Values given on the command line (`mtl train --data … --lr …`) to put over a config
/// file's ([`RunConfig::apply`]); `None` keeps the file's value. Paths are used as given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `data.train`: one training file.
    pub train: Option<PathBuf>,
    /// `data.valid`: one validation file.
    pub valid: Option<PathBuf>,
    /// `train.epochs`.
    pub epochs: Option<usize>,
    /// `train.batch_size`.
    pub batch_size: Option<usize>,
    /// `train.lr`.
    pub lr: Option<f64>,
    /// `train.seed`.
    pub seed: Option<u64>,
    /// `train.max_steps`.
    pub max_steps: Option<usize>,
    /// `train.backend`.
    pub backend: Option<String>,
}

/// `[data]`, `[train]` and `schema`: everything but `[model]`, read first.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sections {
    schema: PathBuf,
    data: DataConfig,
    #[serde(default)]
    train: TrainSettings,
    #[serde(default)]
    metrics: MetricsConfig,
}

impl<R: Registry> RunConfig<R> {
    /// Reads a config; relative paths inside are resolved against the file's folder and
    /// stored absolute.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TrainError> {
        Self::from_file_with(path, &[])
    }

    /// [`RunConfig::from_file`] composed: the file's `base` configs under it and `sets`
    /// (`section.key=value`, as `--set` gives them) over it (see the `compose` module). A
    /// composed config's errors name the key; their line is the composed text's.
    pub fn from_file_with(path: impl AsRef<Path>, sets: &[String]) -> Result<Self, TrainError> {
        let path = path.as_ref();
        let (text, file) = match compose::composed_text(path, sets)? {
            Some(text) => (text, format!("{} (with its base and --set)", path.display())),
            None => {
                let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                (text, path.display().to_string())
            }
        };
        let mut config = Self::from_toml_str(&text, &file)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// A config given as a TOML table (a Python dict, say) instead of a file: relative paths
    /// and its `base` are taken against `dir`, `sets` go over it as in
    /// [`RunConfig::from_file_with`]; `origin` names it in errors.
    pub fn from_table_with(
        table: toml::Table,
        origin: &str,
        dir: &Path,
        sets: &[String],
    ) -> Result<Self, TrainError> {
        let text = compose::table_text(table, origin, dir, sets)?;
        let mut config = Self::from_toml_str(&text, origin)?;
        config.resolve_paths(dir);
        Ok(config)
    }

    /// Settles the choices a new run on `ranks` ranks makes when the config leaves them open
    /// (early stopping with a validation set, untouched rows, the weight average, the
    /// table's decay, the shards), as the run saves them.
    pub fn resolve_for_new_run(&mut self, ranks: usize) {
        self.train.early_stopping = self.train.early_stopping.resolve(self.data.valid.is_some());
        self.train.resolve_untouched_rows(true);
        self.train.resolve_ema_decay(true);
        self.train.resolve_embedding_weight_decay(true);
        self.data.shards.get_or_insert(ranks);
    }

    /// Puts the values given on the command line over the file's (`None` keeps the file's);
    /// check the config again afterwards.
    pub fn apply(&mut self, o: Overrides) {
        if let Some(train) = o.train {
            self.data.train = train.into();
        }
        if let Some(valid) = o.valid {
            self.data.valid = Some(valid.into());
        }
        let t = &mut self.train;
        t.epochs = o.epochs.unwrap_or(t.epochs);
        t.batch_size = o.batch_size.unwrap_or(t.batch_size);
        t.lr = o.lr.unwrap_or(t.lr);
        t.seed = o.seed.unwrap_or(t.seed);
        t.max_steps = o.max_steps.or(t.max_steps);
        if let Some(backend) = o.backend {
            t.backend = backend;
        }
    }

    /// [`RunConfig::apply`], then the whole config checked again, against its schema and
    /// model too ([`RunConfig::check`], [`RunConfig::check_model`]; `file` names it), as a new
    /// run needs before any data is read.
    pub fn apply_checked(&mut self, o: Overrides, file: &str) -> Result<(), TrainError> {
        self.apply(o);
        self.check(file)?;
        self.check_model(file)?;
        Ok(())
    }

    /// Resolves relative paths against `base` and makes every path absolute.
    pub fn resolve_paths(&mut self, base: &Path) {
        self.schema = resolve(base, &self.schema);
        self.data.train = self.data.train.resolve(base);
        self.data.valid = self.data.valid.as_ref().map(|f| f.resolve(base));
        self.data.test = self.data.test.as_ref().map(|f| f.resolve(base));
        self.data.cache_dir = self.data.cache_dir.as_ref().map(|d| resolve(base, d));
    }

    /// Parses config TOML; `file` names the source in errors. Every error names the line
    /// and the key (inside `[model]` too: that table is read on its own once its `type` is
    /// known, so its errors keep their own lines).
    pub fn from_toml_str(text: &str, file: &str) -> Result<Self, TrainError> {
        let at = |e: toml::de::Error| TrainError::Config {
            file: file.to_string(),
            message: mtl_features::toml_error_line(text, &e),
        };
        let doc = toml::de::DeTable::parse(text).map_err(at)?;
        let doc_span = doc.span();
        let mut table = doc.into_inner();
        let model = table.remove("model");
        let sections =
            Sections::deserialize(toml::de::Deserializer::from(toml::Spanned::new(doc_span, table)))
                .map_err(at)?;
        let model = mtl_layers::registry::read_model_table::<R>(text, file, model).map_err(|e| match e {
            ModelError::Config { file, message } => TrainError::Config { file, message },
            other => other.into(),
        })?;
        let config = Self {
            schema: sections.schema,
            data: sections.data,
            model,
            train: sections.train,
            metrics: sections.metrics,
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
        if let Some(shards) = self.data.shards
            && !(1..=self.train.batch_size).contains(&shards)
        {
            return Err(bad(format!(
                "`data.shards` = {shards}: must be between 1 and `train.batch_size` ({}), so \
                 that every batch takes a row of every shard",
                self.train.batch_size
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
        let rule = &self.train.loss_weighting;
        if rule.uses_grad_norms() && schema.n_sparse() + schema.n_sequence() == 0 {
            let kind = if matches!(rule, LossWeighting::Gradnorm { .. }) {
                "gradnorm"
            } else {
                "metabalance"
            };
            return Err(TrainError::Config {
                file: file.to_string(),
                message: format!(
                    "`train.loss_weighting` = {kind} balances the tasks' gradient norms on the shared embedding table; this schema has no sparse or sequence field"
                ),
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
            if es.metric.ends_with(".gauc") && self.metrics.group_by.is_none() {
                return Err(bad(format!(
                    "`train.early_stopping.metric` = \"{}\" needs `[metrics] group_by` (the column whose groups GAUC averages over)",
                    es.metric
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mtl_layers::registry! {
        /// The models these tests read.
        enum TestModel in Test {
            "esmm" => Esmm(mtl_esmm::EsmmConfig) from include_str!("../../../../configs/esmm-example.toml"),
            "mmoe" => Mmoe(mtl_mmoe::MmoeConfig) from include_str!("../../../../configs/mmoe-example.toml"),
            "shared_bottom" => SharedBottom(mtl_mmoe::SharedBottomConfig) from include_str!("../../../../configs/shared-bottom-example.toml"),
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
    fn a_config_named_by_a_relative_path_has_its_paths_taken_once_with_or_without_sets() {
        // `mtl train --config configs/x.toml --set …`, run from the folder above `configs`
        let dir = tempfile::tempdir_in(".").unwrap();
        let folder = Path::new(dir.path().file_name().unwrap());
        std::fs::write(dir.path().join("base.toml"), "[train]\nlr = 0.5\n").unwrap();
        std::fs::write(dir.path().join("run.toml"), GOOD).unwrap();
        std::fs::write(dir.path().join("child.toml"), "base = \"run.toml\"\n").unwrap();
        let want = std::path::absolute(folder).unwrap();
        for (file, sets) in [
            ("run.toml", vec![]),
            ("run.toml", vec!["train.lr=0.01".to_string()]),
            ("child.toml", vec![]),
        ] {
            let c = RunConfig::from_file_with(folder.join(file), &sets).unwrap();
            let absolute = |p: &Path| std::path::absolute(p).unwrap();
            assert_eq!(absolute(&c.schema), want.join("s.toml"), "{file} {sets:?}");
            let train = c.data.train.entries();
            assert_eq!(absolute(&train[0]), want.join("t.csv"), "{file} {sets:?}");
        }
    }

    #[test]
    fn overrides_replace_what_they_name_and_keep_the_rest() {
        let mut c = RunConfig::from_toml_str(GOOD, "c.toml").unwrap();
        let file = c.clone();
        c.apply(Overrides::default());
        assert_eq!(c, file);
        c.apply(Overrides {
            valid: Some("/d/v2.csv".into()),
            lr: Some(0.01),
            max_steps: Some(7),
            backend: Some("ndarray".into()),
            ..Overrides::default()
        });
        assert_eq!(c.data.valid, Some(PathBuf::from("/d/v2.csv").into()));
        assert_eq!((c.train.lr, c.train.max_steps), (0.01, Some(7)));
        assert_eq!(c.train.backend, "ndarray");
        // what was not named is the file's
        assert_eq!(c.data.train, file.data.train);
        assert_eq!(
            (c.train.epochs, c.train.batch_size, c.train.seed),
            (2, 1024, file.train.seed)
        );
    }

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
    fn new_host_table_runs_catch_up_in_strides_and_saved_runs_keep_their_mode() {
        let resolved = |extra: &str, fresh: bool| {
            let mut t: TrainSettings = toml::from_str(extra).unwrap();
            t.resolve_untouched_rows(fresh);
            t.untouched_rows
        };
        assert_eq!(resolved("", true), Some(UntouchedRows::FastCatchUp));
        assert_eq!(
            resolved("embedding_table = \"device\"", true),
            Some(UntouchedRows::Frozen)
        );
        // a run saved with the exact replay resumes with it; one saved before the setting frozen
        assert_eq!(
            resolved("untouched_rows = \"catch-up\"", false),
            Some(UntouchedRows::CatchUp)
        );
        assert_eq!(resolved("", false), Some(UntouchedRows::Frozen));
        assert_eq!(
            UntouchedRows::FastCatchUp.replay(),
            Some(mtl_optim::CatchUpReplay::Strided)
        );
        assert_eq!(
            UntouchedRows::CatchUp.replay(),
            Some(mtl_optim::CatchUpReplay::Exact)
        );
        assert_eq!(UntouchedRows::Frozen.replay(), None);
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
                "embedding_table = \"device\"\nuntouched_rows = \"fast-catch-up\"",
                "train.untouched_rows",
                "\"fast-catch-up\": needs the host table",
            ),
            (
                "untouched_rows = \"frozen\"\nema_decay = 0.0\npipeline = true",
                "train.pipeline",
                "catching up",
            ),
            (
                "embedding = \"dense\"\npipeline = true",
                "train.pipeline",
                "row-sparse",
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
