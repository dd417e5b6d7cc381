//! ESMM over a conversion chain of N steps (impression → click → cart → purchase …), the
//! generalisation the ESMM paper sketches: one tower per step estimates that step given the
//! previous one, and every step is trained on its joint label over the entire space.
//!
//! ```text
//! a_k      = tower_k(x)                              k = 1…N
//! p_k|k−1  = σ(a_k)                                  (step k given step k−1; p_1|0 = pCTR)
//! P_k      = Π_{i≤k} σ(a_i)                          (step k over all impressions)
//! L        = Σ_k BCE(y_1 ∧ … ∧ y_k, P_k)            over every impression
//! ```
//!
//! In log space, as ESMM's two-step loss: `log P_k = Σ_{i≤k} log σ(a_i)` and
//! `log(1 − P_k) = log[(1 − P_{k−1}) + P_{k−1}·σ(−a_k)]`, so no probability near 0 or 1 makes
//! NaN or infinity; step 1's term is BCE with logits. With two steps every tensor is computed
//! as [`Esmm`](crate::Esmm) computes it, so the same weights give the same outputs and losses
//! (tested).
//!
//! Outputs, in order: step 1 over all rows; then per later step `k`, `<k>_given_<k−1>` (its
//! tower, reported on rows where step k−1 happened) and `<k>` (P_k over all rows).

use burn::module::Module;
use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::{Device, Tensor};
use mtl_features::{BatchTensors, FieldPooling, InputLayer, InputSpec, LabelKind, TableLayout, ValidSchema};
use mtl_layers::head::{bce_rows, bce_rows_from_log_probs, log_add_exp};
use mtl_layers::tasks::{
    TaskConfig, TaskSpec, embedded_fields, funnel_rules, funnel_steps, loss_names, output_prior, task_towers,
};
use mtl_layers::{
    Forward, ModelBuilder, ModelError, ModelPlan, MultiTaskModel, OutputSpec, Tower, TowerSpec,
};
use serde::{Deserialize, Serialize};

/// The most steps a chain may have.
pub const MAX_STEPS: usize = 16;

/// Chain-ESMM configuration (`type = "esmm_chain"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsmmChainConfig {
    /// Every step's tower unless the step names its own (a final Linear to one logit is
    /// added).
    pub tower: TowerSpec,
    /// The binary steps in funnel order (`label`, optional `name` and `tower`).
    pub tasks: Vec<TaskConfig>,
    /// How field embeddings become the towers' input.
    #[serde(default)]
    pub pooling: FieldPooling,
}

impl EsmmChainConfig {
    /// A chain over `labels` in order, every step with `tower`, concat input.
    pub fn new(tower: impl Into<TowerSpec>, labels: &[&str]) -> Self {
        Self {
            tower: tower.into(),
            tasks: labels.iter().map(|l| TaskConfig::new(l)).collect(),
            pooling: FieldPooling::Concat,
        }
    }

    /// The steps, checked: 2 to [`MAX_STEPS`], distinct binary labels.
    fn steps(&self, schema: &ValidSchema) -> Result<Vec<TaskSpec>, ModelError> {
        funnel_steps(schema, &self.tasks, "an ESMM chain", MAX_STEPS)
    }
}

impl ModelBuilder for EsmmChainConfig {
    type Model = EsmmChain;
    const ABOUT: &'static str = "ESMM over an N-step conversion chain: P(step k) = Π p(step i | step i−1), every step trained over all impressions";

    /// Checks the config against `schema` and says what the model outputs, which losses it has
    /// and that each step may only happen after the previous one.
    fn plan(&self, schema: &ValidSchema) -> Result<ModelPlan, ModelError> {
        self.tower.check("model.tower", embedded_fields(schema))?;
        InputSpec::new(schema, &self.pooling)?;
        let steps = self.steps(schema)?;
        Ok(ModelPlan {
            outputs: chain_outputs(&steps),
            loss_names: loss_names(&steps),
            label_rules: funnel_rules(&steps, "ESMM chain"),
        })
    }

    /// Builds the model.
    fn init(
        &self,
        schema: &ValidSchema,
        layout: &TableLayout,
        device: &Device,
    ) -> Result<EsmmChain, ModelError> {
        let plan = self.plan(schema)?;
        let steps = self.steps(schema)?;
        let input = InputLayer::for_schema(schema, &self.pooling, layout, device)?;
        Ok(EsmmChain {
            towers: task_towers(&self.tasks, &self.tower, input.output_dim(), device),
            input,
            steps,
            plan,
        })
    }
}

/// Step 1; then per later step its conditional (on rows where the previous step happened) and
/// its probability over all rows.
fn chain_outputs(steps: &[TaskSpec]) -> Vec<OutputSpec> {
    let mut out = vec![OutputSpec::simple(
        &steps[0].name,
        LabelKind::Binary,
        steps[0].label,
    )];
    for (k, w) in steps.windows(2).enumerate() {
        out.push(OutputSpec {
            name: format!("{}_given_{}", w[1].name, w[0].name),
            kind: LabelKind::Binary,
            target: vec![w[1].label],
            rows_where: Some(w[0].label),
        });
        out.push(OutputSpec {
            name: w[1].name.clone(),
            kind: LabelKind::Binary,
            target: steps[..k + 2].iter().map(|s| s.label).collect(),
            rows_where: None,
        });
    }
    out
}

/// The chain model.
#[derive(Module, Debug)]
pub struct EsmmChain {
    /// Shared embeddings and pooling.
    pub input: InputLayer,
    /// One tower per step, each ending in one logit.
    pub towers: Vec<Tower>,
    /// The steps in funnel order.
    #[module(skip)]
    pub steps: Vec<TaskSpec>,
    /// What the config promised: outputs, loss terms, label rules.
    #[module(skip)]
    pub plan: ModelPlan,
}

/// The chain's logits and probabilities.
#[derive(Debug, Clone)]
pub struct ChainPredictions {
    /// Per step, the logit `a_k`, `[batch]`.
    pub logits: Vec<Tensor<1>>,
    /// Per step, `p_k|k−1 = σ(a_k)`, `[batch]`.
    pub conditional: Vec<Tensor<1>>,
    /// Per step, `P_k = P_{k−1} · σ(a_k)`, `[batch]`.
    pub joint: Vec<Tensor<1>>,
}

impl EsmmChain {
    /// Every step's logit, conditional and joint probability.
    ///
    /// # Shapes
    /// - every tensor: `[batch]`
    pub fn forward_predictions(&self, batch: &BatchTensors) -> ChainPredictions {
        let b = batch.rows;
        let (x, fields) = self.input.forward_with_fields(batch); // [batch, input_dim]
        let logits: Vec<Tensor<1>> = self
            .towers
            .iter()
            .map(|t| t.forward(x.clone(), fields.as_ref()).reshape([b]))
            .collect();
        let conditional: Vec<Tensor<1>> = logits.iter().map(|a| sigmoid(a.clone())).collect();
        let mut joint: Vec<Tensor<1>> = vec![conditional[0].clone()];
        for p in &conditional[1..] {
            let previous = joint.last().expect("step 1").clone();
            joint.push(previous * p.clone());
        }
        ChainPredictions {
            logits,
            conditional,
            joint,
        }
    }

    /// The predictions in [`EsmmChain::outputs`] order.
    fn ordered(&self, p: &ChainPredictions) -> Vec<Tensor<1>> {
        let mut out = vec![p.conditional[0].clone()];
        for k in 1..self.steps.len() {
            out.push(p.conditional[k].clone());
            out.push(p.joint[k].clone());
        }
        out
    }

    /// One loss term per step, each `[1]`: BCE of the step's joint label against `P_k`.
    pub fn losses(&self, p: &ChainPredictions, batch: &BatchTensors) -> Vec<Tensor<1>> {
        let mut label = batch.label(self.steps[0].label);
        let a1 = p.logits[0].clone();
        let mut losses = vec![batch.mean_rows(bce_rows(a1.clone(), label.clone()))];
        let mut log_p = log_sigmoid(a1.clone());
        let mut log_not_p = log_sigmoid(a1.neg());
        for (step, a) in self.steps.iter().zip(&p.logits).skip(1) {
            label = label * batch.label(step.label);
            // 1 − P_{k−1}σ(a) = (1 − P_{k−1}) + P_{k−1}σ(−a)
            log_not_p = log_add_exp(log_not_p, log_p.clone() + log_sigmoid(a.clone().neg()));
            log_p = log_p + log_sigmoid(a.clone());
            losses.push(batch.mean_rows(bce_rows_from_log_probs(
                log_p.clone(),
                log_not_p.clone(),
                label.clone(),
            )));
        }
        losses
    }
}

impl MultiTaskModel for EsmmChain {
    fn plan(&self) -> &ModelPlan {
        &self.plan
    }

    fn predict(&self, batch: &BatchTensors) -> Vec<Tensor<1>> {
        self.ordered(&self.forward_predictions(batch))
    }

    fn input_layer(&self) -> &InputLayer {
        &self.input
    }

    fn forward(&self, batch: &BatchTensors) -> Forward {
        let p = self.forward_predictions(batch);
        Forward {
            losses: self.losses(&p, batch),
            predictions: self.ordered(&p),
        }
    }

    const USES_LABEL_PRIORS: bool = true;

    /// Step k's tower starts at the step's conditional rate, mean(label k) / mean(label k−1)
    /// (the first step at its own rate), so that P_k starts at label k's rate on every row;
    /// as ESMM's CVR tower, a later step's output weights start at zero (it learns only
    /// through the product).
    fn with_label_priors(self, label_means: &[f64]) -> Self {
        let means: Option<Vec<f64>> = (self.steps.iter())
            .map(|s| label_means.get(s.label).copied())
            .collect();
        let Some(means) = means else {
            return self;
        };
        let rate = |k: usize| match k {
            0 => Some(means[0]),
            _ => (means[k - 1] > 0.0).then(|| (means[k] / means[k - 1]).min(1.0)),
        };
        let towers = (self.towers.into_iter().enumerate())
            .map(
                |(k, tower)| match rate(k).and_then(|p| output_prior(LabelKind::Binary, p)) {
                    Some(bias) => tower.with_output_prior(bias, k > 0),
                    None => tower,
                },
            )
            .collect();
        Self { towers, ..self }
    }
}
