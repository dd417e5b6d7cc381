//! # mtl-esmm — the Entire Space Multi-task Model
//!
//! Ma et al., *Entire Space Multi-Task Model: An Effective Approach for Estimating Post-Click
//! Conversion Rate*, SIGIR 2018. Two towers over shared embeddings:
//!
//! ```text
//! pCTR   = σ(a)            a = CTR tower(x)
//! pCVR   = σ(b)            b = CVR tower(x)
//! pCTCVR = pCTR × pCVR
//! L      = BCE(click, pCTR) + BCE(click ∧ conversion, pCTCVR)     over every impression
//! ```
//!
//! The CVR tower has no loss of its own: it learns through pCTCVR over the entire impression
//! space, which removes the sample-selection bias of training CVR on clicked rows only.
//! The CTCVR term is computed in log space, `log pCTCVR = log σ(a) + log σ(b)` and
//! `log(1 − pCTCVR) = log(σ(−a) + σ(a)·σ(−b))`, so a conversion probability near 0 or 1 never
//! produces NaN or infinity.
//!
//! [`chain`] generalises it to N steps (impression → click → cart → purchase …).
//!
//! Input: `concat` of all fields (torch-rechub 0.9.0) or `sum_by_group = ["user", "item"]`
//! (the original ESMM: user fields summed, item fields summed, the two sums concatenated).
//!
//! ## Parameter counts (equal to torch-rechub's on the peer data: 20 fields, 320,150 ids)
//! | config | total | embeddings | towers |
//! |---|---|---|---|
//! | embed 16, towers [16, 8], concat (320 inputs) | 5,133,058 | 5,122,400 | 2 × 5,329 |
//! | embed 16, towers [256, 128, 64], concat | 5,370,978 | 5,122,400 | 2 × 124,289 |
//!
//! ```
//! use burn::tensor::Device;
//! use mtl_esmm::EsmmConfig;
//! use mtl_features::{Encoder, Schema, StateFitter};
//! use mtl_layers::{MlpSpec, ModelBuilder};
//!
//! let schema = Schema::from_toml_str(r#"
//!     [[sparse]]
//!     name = "user"
//!     vocab_size = 100
//!     [[sparse]]
//!     name = "item"
//!     vocab_size = 50
//!     [[labels]]
//!     name = "click"
//!     kind = "binary"
//!     [[labels]]
//!     name = "purchase"
//!     kind = "binary"
//! "#, "inline").unwrap();
//! let encoder = Encoder::new(&schema, &StateFitter::new(&schema).finish());
//! let config = EsmmConfig::new(MlpSpec::new([16, 8]), MlpSpec::new([16, 8]));
//! let model = config.init(&schema, encoder.layout(), &Device::flex()).unwrap();
//! assert_eq!(model.input.output_dim(), 32);
//! ```

pub mod chain;
pub mod escm2;

pub use chain::{EsmmChain, EsmmChainConfig};
pub use escm2::{Escm2, Escm2Config, Escm2Variant};

use burn::module::Module;
use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::{Device, Tensor};
use mtl_features::{
    BatchTensors, FieldPooling, InputLayer, InputSpec, LabelKind, LabelRule, TableLayout, ValidSchema,
};
use mtl_layers::head::{bce_rows, bce_rows_from_log_probs, log_add_exp};
use mtl_layers::tasks::embedded_fields;
use mtl_layers::{
    Branching, Forward, ModelBuilder, ModelError, ModelPlan, MultiTaskModel, OutputSpec, Tower, TowerSpec,
    Trunk, resolve_label, trainable_params,
};
use serde::{Deserialize, Serialize};

pub(crate) fn default_click() -> String {
    "click".into()
}
pub(crate) fn default_conversion() -> String {
    "purchase".into()
}

/// ESMM configuration (the `[model]` section of a config with `type = "esmm"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsmmConfig {
    /// The CTR tower (`mlp`, `deepfm` or `dcn`; a final Linear to one logit is added).
    pub ctr_tower: TowerSpec,
    /// The CVR tower (may differ from the CTR tower, in kind too).
    pub cvr_tower: TowerSpec,
    /// How field embeddings become the towers' input.
    #[serde(default)]
    pub pooling: FieldPooling,
    /// The click label's name in the schema.
    #[serde(default = "default_click")]
    pub click_label: String,
    /// The conversion label's name in the schema (1 only on clicked rows).
    #[serde(default = "default_conversion")]
    pub conversion_label: String,
}

impl EsmmConfig {
    /// Towers as given, concat input, labels `click` and `purchase`.
    pub fn new(ctr_tower: impl Into<TowerSpec>, cvr_tower: impl Into<TowerSpec>) -> Self {
        Self {
            ctr_tower: ctr_tower.into(),
            cvr_tower: cvr_tower.into(),
            pooling: FieldPooling::Concat,
            click_label: default_click(),
            conversion_label: default_conversion(),
        }
    }

    /// The label columns, checked: both in the schema, both binary, not the same label.
    fn labels(&self, schema: &ValidSchema) -> Result<EsmmLabels, ModelError> {
        let click = resolve_label(schema, "model.click_label", &self.click_label)?;
        let conversion = resolve_label(schema, "model.conversion_label", &self.conversion_label)?;
        for (key, idx) in [
            ("model.click_label", click),
            ("model.conversion_label", conversion),
        ] {
            if schema.schema.labels[idx].kind != LabelKind::Binary {
                return Err(ModelError::Invalid {
                    key: key.into(),
                    message: format!(
                        "ESMM needs a binary label, `{}` is regression",
                        schema.schema.labels[idx].name
                    ),
                });
            }
        }
        if click == conversion {
            return Err(ModelError::Invalid {
                key: "model.conversion_label".into(),
                message: format!(
                    "= \"{}\" is also `model.click_label`; ESMM needs two different labels",
                    self.conversion_label
                ),
            });
        }
        Ok(EsmmLabels { click, conversion })
    }
}

impl ModelBuilder for EsmmConfig {
    type Model = Esmm;
    const ABOUT: &'static str =
        "Entire Space Multi-task Model: pCTCVR = pCTR × pCVR, trained on every impression";

    /// Checks the config against `schema` (towers, pooling, labels) and says what the model
    /// outputs and which rule its training rows must follow, without building it.
    fn plan(&self, schema: &ValidSchema) -> Result<ModelPlan, ModelError> {
        self.ctr_tower.check("model.ctr_tower", embedded_fields(schema))?;
        self.cvr_tower.check("model.cvr_tower", embedded_fields(schema))?;
        InputSpec::new(schema, &self.pooling)?;
        let labels = self.labels(schema)?;
        Ok(ModelPlan {
            outputs: labels.outputs(),
            loss_names: LOSS_NAMES.iter().map(|n| n.to_string()).collect(),
            label_rules: vec![LabelRule {
                label: labels.conversion,
                requires: labels.click,
                needed_by: "ESMM (a conversion is post-click)".into(),
            }],
        })
    }

    /// Builds the model for `schema` with the embedding `layout`.
    fn init(&self, schema: &ValidSchema, layout: &TableLayout, device: &Device) -> Result<Esmm, ModelError> {
        let plan = self.plan(schema)?;
        let labels = self.labels(schema)?;
        let input = InputLayer::for_schema(schema, &self.pooling, layout, device)?;
        let width = input.output_dim();
        Ok(Esmm {
            ctr_tower: self.ctr_tower.init(width, device),
            cvr_tower: self.cvr_tower.init(width, device),
            input,
            labels,
            plan,
        })
    }
}

/// Label columns ESMM trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EsmmLabels {
    /// Click column.
    pub click: usize,
    /// Conversion column.
    pub conversion: usize,
}

/// The ESMM model.
#[derive(Module, Debug)]
pub struct Esmm {
    /// Shared embeddings and pooling.
    pub input: InputLayer,
    /// CTR tower, ending in one logit.
    pub ctr_tower: Tower,
    /// CVR tower, ending in one logit.
    pub cvr_tower: Tower,
    /// Label columns.
    #[module(skip)]
    pub labels: EsmmLabels,
    /// What the config promised: outputs, loss terms, label rules.
    #[module(skip)]
    pub plan: ModelPlan,
}

/// ESMM's three predictions.
#[derive(Debug, Clone)]
pub struct EsmmPredictions {
    /// CTR logit `a`, `[batch]`.
    pub ctr_logit: Tensor<1>,
    /// CVR logit `b`, `[batch]`.
    pub cvr_logit: Tensor<1>,
    /// pCTR = σ(a), `[batch]`.
    pub pctr: Tensor<1>,
    /// pCVR = σ(b), `[batch]`.
    pub pcvr: Tensor<1>,
    /// pCTCVR = pCTR × pCVR, `[batch]`.
    pub pctcvr: Tensor<1>,
}

impl EsmmPredictions {
    /// pCTR = σ(a), pCVR = σ(b), pCTCVR = pCTR × pCVR from the towers' logits `a` and `b`.
    ///
    /// # Shapes
    /// - `ctr_logit`, `cvr_logit` and every output: `[batch]`
    pub fn from_logits(ctr_logit: Tensor<1>, cvr_logit: Tensor<1>) -> Self {
        let pctr = sigmoid(ctr_logit.clone());
        let pcvr = sigmoid(cvr_logit.clone());
        let pctcvr = pctr.clone() * pcvr.clone();
        Self {
            ctr_logit,
            cvr_logit,
            pctr,
            pcvr,
            pctcvr,
        }
    }
}

impl Esmm {
    /// The towers' logits and the three probabilities.
    ///
    /// # Shapes
    /// - every output: `[batch]`
    pub fn forward_predictions(&self, batch: &BatchTensors) -> EsmmPredictions {
        let (x, fields) = self.input.forward_with_fields(batch); // [batch, input_dim]
        self.predictions_from(x, fields.as_ref())
    }

    /// [`Esmm::forward_predictions`] from the input layer's output `x` and field embeddings.
    ///
    /// # Shapes
    /// - `x`: `[batch, input_dim]`; `fields`: `[batch, fields, dim]`; every output: `[batch]`
    pub fn predictions_from(&self, x: Tensor<2>, fields: Option<&Tensor<3>>) -> EsmmPredictions {
        let b = x.dims()[0];
        let trunk = Trunk {
            input: x,
            stack: fields.cloned(),
        };
        let [ctr_logit, cvr_logit] = [0, 1].map(|i| self.branch(i, &trunk).reshape([b]));
        EsmmPredictions::from_logits(ctr_logit, cvr_logit)
    }

    /// The two loss terms, `[BCE(click, pCTR), BCE(click ∧ conversion, pCTCVR)]`, each `[1]`
    /// (means over the rows, each counted by its sample weight).
    pub fn losses(&self, p: &EsmmPredictions, batch: &BatchTensors) -> [Tensor<1>; 2] {
        let click = batch.label(self.labels.click);
        let ctcvr_label = click.clone() * batch.label(self.labels.conversion);
        let (a, b) = (p.ctr_logit.clone(), p.cvr_logit.clone());
        let log_ctr = log_sigmoid(a.clone());
        let log_ctcvr = log_ctr.clone() + log_sigmoid(b.clone());
        // 1 − σ(a)σ(b) = σ(−a) + σ(a)σ(−b)
        let log_not_ctcvr = log_add_exp(log_sigmoid(a.clone().neg()), log_ctr + log_sigmoid(b.neg()));
        [
            batch.mean_rows(bce_rows(a, click)),
            batch.mean_rows(bce_rows_from_log_probs(log_ctcvr, log_not_ctcvr, ctcvr_label)),
        ]
    }
}

/// ESMM's loss terms.
const LOSS_NAMES: [&str; 2] = ["ctr", "ctcvr"];

impl EsmmLabels {
    /// The base rates the towers start at, from the labels' means over the training rows:
    /// P(click), and P(conversion | click) = mean(conversion) / mean(click) (a conversion is
    /// post-click, a rule the data is checked against). None when a mean is missing or not a
    /// rate, or no row is clicked.
    pub fn priors(self, label_means: &[f64]) -> Option<(f64, f64)> {
        let click = *label_means.get(self.click)?;
        let conversion = *label_means.get(self.conversion)?;
        let rate = |p: f64| p.is_finite() && (0.0..=1.0).contains(&p);
        (rate(click) && rate(conversion) && click > 0.0).then(|| (click, (conversion / click).min(1.0)))
    }

    /// ESMM's outputs: CTR and CTCVR over all rows, CVR on clicked rows.
    fn outputs(self) -> Vec<OutputSpec> {
        let EsmmLabels { click, conversion } = self;
        vec![
            OutputSpec::simple("ctr", LabelKind::Binary, click),
            OutputSpec {
                name: "cvr".into(),
                kind: LabelKind::Binary,
                target: vec![conversion],
                rows_where: Some(click),
            },
            OutputSpec {
                name: "ctcvr".into(),
                kind: LabelKind::Binary,
                target: vec![click, conversion],
                rows_where: None,
            },
        ]
    }
}

impl MultiTaskModel for Esmm {
    fn plan(&self) -> &ModelPlan {
        &self.plan
    }

    fn predict(&self, batch: &BatchTensors) -> Vec<Tensor<1>> {
        let p = self.forward_predictions(batch);
        vec![p.pctr, p.pcvr, p.pctcvr]
    }

    fn input_layer(&self) -> &InputLayer {
        &self.input
    }

    fn forward(&self, batch: &BatchTensors) -> Forward {
        self.forward_branched(batch)
    }

    /// Cut at its towers unless a tower reads the field embeddings (DeepFM): their gradient's
    /// terms would meet in another order than in one pass.
    fn branching(&self) -> Option<&dyn Branching> {
        (!self.ctr_tower.fm && !self.cvr_tower.fm).then_some(self as &dyn Branching)
    }

    const USES_LABEL_PRIORS: bool = true;

    /// pCTR starts at the click rate and pCVR at the conversions per click, on every row.
    fn with_label_priors(self, label_means: &[f64]) -> Self {
        let Some((ctr, cvr)) = self.labels.priors(label_means) else {
            return self;
        };
        Self {
            ctr_tower: self.ctr_tower.with_output_prior(logit(ctr), false),
            cvr_tower: self.cvr_tower.with_output_prior(logit(cvr), true),
            ..self
        }
    }
}

/// ESMM cut at its towers: the input layer, then the CTR tower (branch 0) and the CVR tower
/// (branch 1), each on the pooled embeddings (and the field embeddings, for a DeepFM tower).
impl Branching for Esmm {
    fn trunk(&self, batch: &BatchTensors) -> Trunk {
        Trunk::of_input(&self.input, batch)
    }

    fn branch_count(&self) -> usize {
        2
    }

    fn branch_work(&self) -> usize {
        trainable_params(&self.ctr_tower).min(trainable_params(&self.cvr_tower))
    }

    fn branch(&self, i: usize, trunk: &Trunk) -> Tensor<2> {
        let tower = [&self.ctr_tower, &self.cvr_tower][i];
        tower.forward(trunk.input.clone(), trunk.stack.as_ref()) // [batch, 1]
    }

    fn head(&self, outputs: Vec<Tensor<2>>, _trunk: &Trunk, batch: &BatchTensors) -> Forward {
        let b = batch.rows;
        let [ctr_logit, cvr_logit]: [Tensor<1>; 2] = outputs
            .into_iter()
            .map(|logit| logit.reshape([b]))
            .collect::<Vec<_>>()
            .try_into()
            .expect("ESMM has two branches, the towers");
        let p = EsmmPredictions::from_logits(ctr_logit, cvr_logit);
        let losses = self.losses(&p, batch).to_vec();
        Forward {
            predictions: vec![p.pctr, p.pcvr, p.pctcvr],
            losses,
        }
    }
}

/// The nearest a prior may come to 0 or 1 (a label that never or always fires still starts
/// at a finite logit, ±9.2).
const PRIOR_CLAMP: f64 = 1e-4;

/// `ln(p / (1 − p))`, `p` clamped to `[PRIOR_CLAMP, 1 − PRIOR_CLAMP]`.
fn logit(p: f64) -> f64 {
    mtl_layers::head::logit_clamped(p, PRIOR_CLAMP)
}
