//! ESCM² — Entire Space Counterfactual Multi-task Model (Wang et al., SIGIR 2022): ESMM with a
//! counterfactual regulariser on its CVR tower, so that pCVR is an unbiased estimate of the
//! conversion rate over *all* impressions, not only a factor of pCTCVR. With the click
//! indicator `o`, the propensity `ô = max(pCTR, clip)` (held constant: no gradient) and the
//! conversion error `e = BCE(conversion, pCVR)` of each row:
//!
//! ```text
//! IPS:  L_cvr = λ · mean_i( o_i e_i / ô_i )
//! DR:   L_cvr = λ · mean_i( ê_i + o_i (e_i − ê_i) / ô_i ),   ê = softplus(imputation tower)
//!       L_imp = λ · mean_i( o_i (e_i − ê_i)² / ô_i )          (trains the imputation of e)
//! L = BCE(click, pCTR) + BCE(click ∧ conversion, pCTCVR) + L_cvr (+ L_imp)
//! ```
//!
//! The means run over every impression of the batch (the entire space); an unclicked row adds
//! nothing to IPS and its imputed error to DR. PaddleRec's `escm2` keys: `counterfact_mode`
//! is `variant`, `counterfactual_w` is `counterfactual_weight` (its `global_w` on the CTCVR
//! term is `[train] loss_weights`).

use burn::module::Module;
use burn::tensor::activation::{log_sigmoid, softplus};
use burn::tensor::{Device, Tensor};
use mtl_features::{BatchTensors, FieldPooling, InputLayer, TableLayout, ValidSchema};
use mtl_layers::tasks::embedded_fields;
use mtl_layers::{Forward, ModelBuilder, ModelError, ModelPlan, MultiTaskModel, Tower, TowerSpec};
use serde::{Deserialize, Serialize};

use crate::{Esmm, EsmmConfig, default_click, default_conversion};

/// Which counterfactual regulariser ESCM² adds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Escm2Variant {
    /// Inverse propensity scoring.
    #[default]
    Ips,
    /// Doubly robust: IPS with an imputation tower estimating the error on every row.
    Dr,
}

fn default_weight() -> f64 {
    0.1
}

fn default_clip() -> f64 {
    0.05
}

/// ESCM² configuration (`type = "escm2"`): ESMM's keys and the regulariser's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Escm2Config {
    /// The CTR tower (its pCTR is the propensity).
    pub ctr_tower: TowerSpec,
    /// The CVR tower.
    pub cvr_tower: TowerSpec,
    /// `ips` (default) or `dr`.
    #[serde(default)]
    pub variant: Escm2Variant,
    /// The regulariser's weight λ (0 … 10; default 0.1).
    #[serde(default = "default_weight")]
    pub counterfactual_weight: f64,
    /// The least propensity a row is divided by (0 < clip ≤ 1; default 0.05: at most 20×).
    #[serde(default = "default_clip")]
    pub propensity_clip: f64,
    /// DR's imputation tower (default: the CVR tower's spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imputation_tower: Option<TowerSpec>,
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

impl Escm2Config {
    /// The ESMM under the regulariser.
    fn esmm(&self) -> EsmmConfig {
        EsmmConfig {
            ctr_tower: self.ctr_tower.clone(),
            cvr_tower: self.cvr_tower.clone(),
            pooling: self.pooling.clone(),
            click_label: self.click_label.clone(),
            conversion_label: self.conversion_label.clone(),
        }
    }

    /// The imputation tower's spec (DR only).
    fn imputation(&self) -> Option<&TowerSpec> {
        (self.variant == Escm2Variant::Dr).then(|| self.imputation_tower.as_ref().unwrap_or(&self.cvr_tower))
    }

    /// The regulariser's own keys.
    fn check(&self, schema: &ValidSchema) -> Result<(), ModelError> {
        let bad = |key: &str, message: String| ModelError::Invalid {
            key: format!("model.{key}"),
            message,
        };
        let w = self.counterfactual_weight;
        if !(w.is_finite() && (0.0..=10.0).contains(&w)) {
            return Err(bad(
                "counterfactual_weight",
                format!("= {w}: must be between 0 and 10"),
            ));
        }
        let c = self.propensity_clip;
        if !(c.is_finite() && c > 0.0 && c <= 1.0) {
            return Err(bad(
                "propensity_clip",
                format!("= {c}: must be above 0 and at most 1"),
            ));
        }
        match (&self.imputation_tower, self.variant) {
            (Some(_), Escm2Variant::Ips) => Err(bad(
                "imputation_tower",
                "is read by `variant = \"dr\"` only; this config is `ips`".into(),
            )),
            (Some(t), Escm2Variant::Dr) => t.check("model.imputation_tower", embedded_fields(schema)),
            (None, _) => Ok(()),
        }
    }
}

impl ModelBuilder for Escm2Config {
    type Model = Escm2;
    const ABOUT: &'static str =
        "ESCM²: ESMM with a counterfactual (IPS or doubly robust) regulariser on pCVR over the entire space";

    fn plan(&self, schema: &ValidSchema) -> Result<ModelPlan, ModelError> {
        let mut plan = self.esmm().plan(schema)?;
        self.check(schema)?;
        plan.loss_names
            .extend(self.regulariser_names().iter().map(|n| n.to_string()));
        Ok(plan)
    }

    fn init(&self, schema: &ValidSchema, layout: &TableLayout, device: &Device) -> Result<Escm2, ModelError> {
        let plan = self.plan(schema)?;
        let esmm = self.esmm().init(schema, layout, device)?;
        let width = esmm.input.output_dim();
        Ok(Escm2 {
            imputation: self.imputation().map(|t| t.init(width, device)),
            esmm,
            weight: self.counterfactual_weight,
            clip: self.propensity_clip,
            plan,
        })
    }
}

impl Escm2Config {
    /// The loss terms the regulariser adds.
    fn regulariser_names(&self) -> &'static [&'static str] {
        match self.variant {
            Escm2Variant::Ips => &["cvr_ips"],
            Escm2Variant::Dr => &["cvr_dr", "imputation"],
        }
    }
}

/// ESCM²: an ESMM and, for DR, an imputation tower.
#[derive(Module, Debug)]
pub struct Escm2 {
    /// The ESMM whose CVR tower is regularised.
    pub esmm: Esmm,
    /// DR's imputation tower (its softplus is the imputed error ê), none for IPS.
    pub imputation: Option<Tower>,
    /// λ.
    #[module(skip)]
    pub weight: f64,
    /// The least propensity.
    #[module(skip)]
    pub clip: f64,
    /// What the config promised: outputs, loss terms, label rules.
    #[module(skip)]
    pub plan: ModelPlan,
}

/// Each row's conversion error `e = BCE(conversion, σ(cvr_logit))`.
///
/// # Shapes
/// - `cvr_logit`, `conversion`: `[batch]`; output: `[batch]`
pub fn conversion_error(cvr_logit: Tensor<1>, conversion: Tensor<1>) -> Tensor<1> {
    let not = conversion.clone().neg().add_scalar(1.0);
    (conversion * log_sigmoid(cvr_logit.clone()) + not * log_sigmoid(cvr_logit.neg())).neg()
}

/// The inverse propensity of each row, `1 / max(pCTR, clip)`, held constant.
///
/// # Shapes
/// - `pctr`: `[batch]`; output: `[batch]`
pub fn inverse_propensity(pctr: Tensor<1>, clip: f64) -> Tensor<1> {
    pctr.detach().clamp_min(clip).recip()
}

/// IPS per row, `λ · o · e / ô` (the loss term is its mean over every row).
///
/// # Shapes
/// - every input, output: `[batch]`
pub fn ips_rows(error: Tensor<1>, click: Tensor<1>, inverse_propensity: Tensor<1>, weight: f64) -> Tensor<1> {
    (click * error * inverse_propensity).mul_scalar(weight)
}

/// DR per row, `[λ · (ê + o (e − ê) / ô), λ · o (e − ê)² / ô]` (the loss terms are their means).
///
/// # Shapes
/// - every input: `[batch]`; output: two `[batch]`
pub fn dr_rows(
    error: Tensor<1>,
    imputed: Tensor<1>,
    click: Tensor<1>,
    inverse_propensity: Tensor<1>,
    weight: f64,
) -> [Tensor<1>; 2] {
    let observed = click * inverse_propensity;
    let residual = error - imputed.clone();
    let dr = (imputed + observed.clone() * residual.clone()).mul_scalar(weight);
    let imputation = (observed * residual.square()).mul_scalar(weight);
    [dr, imputation]
}

impl MultiTaskModel for Escm2 {
    fn plan(&self) -> &ModelPlan {
        &self.plan
    }

    fn predict(&self, batch: &BatchTensors) -> Vec<Tensor<1>> {
        self.esmm.predict(batch)
    }

    fn input_layer(&self) -> &InputLayer {
        &self.esmm.input
    }

    fn forward(&self, batch: &BatchTensors) -> Forward {
        let (x, fields) = self.esmm.input.forward_with_fields(batch);
        let p = self.esmm.predictions_from(x.clone(), fields.as_ref());
        let mut losses = self.esmm.losses(&p, batch).to_vec();
        let labels = self.esmm.labels;
        let click = batch.label(labels.click);
        let error = conversion_error(p.cvr_logit.clone(), batch.label(labels.conversion));
        let inverse = inverse_propensity(p.pctr.clone(), self.clip);
        match &self.imputation {
            None => losses.push(batch.mean_rows(ips_rows(error, click, inverse, self.weight))),
            Some(tower) => {
                let imputed = softplus(tower.forward(x, fields.as_ref()).reshape([batch.rows]), 1.0);
                let terms = dr_rows(error, imputed, click, inverse, self.weight);
                losses.extend(terms.map(|rows| batch.mean_rows(rows)));
            }
        }
        Forward {
            predictions: vec![p.pctr, p.pcvr, p.pctcvr],
            losses,
        }
    }

    const USES_LABEL_PRIORS: bool = true;

    /// ESMM's priors (pCTR at the click rate, pCVR at the conversions per click).
    fn with_label_priors(self, label_means: &[f64]) -> Self {
        Self {
            esmm: self.esmm.with_label_priors(label_means),
            ..self
        }
    }
}
