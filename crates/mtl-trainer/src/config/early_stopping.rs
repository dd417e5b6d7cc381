//! `[train] early_stopping`: whether and on which validation metric a run stops early.

use mtl_features::LabelKind;
use mtl_layers::OutputSpec;
use serde::{Deserialize, Serialize};

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

pub(crate) fn is_auto(setting: &EarlyStoppingSetting) -> bool {
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
const BINARY_METRICS: [(&str, Direction); 3] = [
    ("auc", Direction::Higher),
    ("logloss", Direction::Lower),
    ("gauc", Direction::Higher),
];
const REGRESSION_METRICS: [(&str, Direction); 2] = [("mse", Direction::Lower), ("mae", Direction::Lower)];

impl EarlyStopping {
    /// The direction of the watched metric, once it is known to be one early stopping can use
    /// ([`RunConfig::check_plan`](crate::RunConfig::check_plan) rejects every other name before training starts).
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
    pub(crate) fn check(&self, outputs: &[OutputSpec]) -> Result<(), String> {
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
                 (outputs: {}; binary metrics: auc, logloss, gauc with `[metrics] group_by`; regression metrics: mse, mae)",
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
