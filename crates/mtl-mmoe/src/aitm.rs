//! AITM — Adaptive Information Transfer Multi-task (Xi et al., *Modeling the Sequential
//! Dependence among Audience Multi-step Conversions with Multi-task Learning in Targeted
//! Display Advertising*, KDD 2021).
//!
//! ```text
//! tasks t = 1…T in funnel order (impression → click → … → purchase), x = the input embedding
//! q_t = bottom_t(x)
//! z_1 = q_1;   z_t = AIT(q_t, info_t(z_{t−1}))          t ≥ 2
//! AIT(u, p): w = softmax_j(⟨Q v_j, K v_j⟩ / √d) over v ∈ {u, p};   z = Σ_j w_j · V v_j
//! ŷ_t = σ(tower_t(z_t))
//! L = Σ_t BCE(y_t, ŷ_t) + α · mean(max(ŷ_t − ŷ_{t−1}, 0))   (the behavioural-expectation calibrator)
//! ```
//!
//! The chain's order is the order of `tasks`; a later step may only happen where the earlier
//! one did (a label rule checked on every row), and its AUC is also reported on the rows where
//! the earlier step happened (`<task>_given_<previous>`). torch-rechub 0.9.0 ships the
//! transfer and trains without the calibrator (`calibrator_alpha = 0` is its behaviour); the
//! default is the paper's α = 0.6. Parameter counts equal torch-rechub's (tested).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use mtl_features::{BatchTensors, FieldPooling, InputLayer, InputSpec, LabelKind, TableLayout, ValidSchema};
use mtl_layers::{
    Branching, Forward, GateWeights, Mlp, MlpSpec, ModelBuilder, ModelError, ModelPlan, MultiTaskModel,
    OutputSpec, Trunk, trainable_params,
};
use serde::{Deserialize, Serialize};

use mtl_layers::tasks::embedded_fields;
use mtl_layers::tasks::{
    TaskConfig, TaskSpec, funnel_rules, funnel_steps, loss_names, outputs, task_forward, task_predictions,
    task_towers, tasks_and_input, tower_logits,
};
use mtl_layers::{Tower, TowerSpec};

fn default_alpha() -> f64 {
    0.6
}

/// AITM configuration (`type = "aitm"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AitmConfig {
    /// Each task's bottom MLP over the shared input (`bottom_params`).
    pub bottom: MlpSpec,
    /// Each task's tower (`mlp`, `deepfm` or `dcn`; a final Linear to one logit is added); a
    /// task's own `tower` overrides it (`tower_params_list`).
    pub tower: TowerSpec,
    /// The binary tasks in funnel order, e.g. click then purchase.
    pub tasks: Vec<TaskConfig>,
    /// Weight α of the behavioural-expectation calibrator (0 turns it off).
    #[serde(default = "default_alpha")]
    pub calibrator_alpha: f64,
    /// How field embeddings become the bottoms' input.
    #[serde(default)]
    pub pooling: FieldPooling,
}

/// The calibrator's loss-term name.
const CALIBRATOR: &str = "calibrator";

/// Every task over all rows, then each later task on the rows where the step before it
/// happened.
fn chain_outputs(tasks: &[TaskSpec]) -> Vec<OutputSpec> {
    let mut specs = outputs(tasks);
    for w in tasks.windows(2) {
        specs.push(OutputSpec {
            name: format!("{}_given_{}", w[1].name, w[0].name),
            kind: LabelKind::Binary,
            target: vec![w[1].label],
            rows_where: Some(w[0].label),
        });
    }
    specs
}

impl ModelBuilder for AitmConfig {
    type Model = Aitm;
    const ABOUT: &'static str = "Adaptive Information Transfer Multi-task: a funnel of binary steps, each tower attending to the previous step's";

    /// Checks the config against `schema` and says what the model outputs: every task over
    /// all rows, and each later one also on the rows where the step before it happened.
    fn plan(&self, schema: &ValidSchema) -> Result<ModelPlan, ModelError> {
        if self.bottom.dims.is_empty() {
            return Err(ModelError::Invalid {
                key: "model.bottom.dims".into(),
                message: "the bottom needs at least one layer (its width is the transfer's)".into(),
            });
        }
        self.bottom.check("model.bottom")?;
        self.tower.check("model.tower", embedded_fields(schema))?;
        if !(self.calibrator_alpha.is_finite() && (0.0..=100.0).contains(&self.calibrator_alpha)) {
            return Err(ModelError::Invalid {
                key: "model.calibrator_alpha".into(),
                message: format!("= {}: must be between 0 and 100", self.calibrator_alpha),
            });
        }
        InputSpec::new(schema, &self.pooling)?;
        // no upper limit beyond the schema's labels (torch-rechub has none)
        let tasks = funnel_steps(schema, &self.tasks, "AITM", usize::MAX)?;
        let mut losses = loss_names(&tasks);
        if self.calibrator_alpha > 0.0 {
            losses.push(CALIBRATOR.into());
        }
        Ok(ModelPlan {
            outputs: chain_outputs(&tasks),
            loss_names: losses,
            label_rules: funnel_rules(&tasks, "AITM"),
        })
    }

    /// Builds the model.
    fn init(&self, schema: &ValidSchema, layout: &TableLayout, device: &Device) -> Result<Aitm, ModelError> {
        let plan = self.plan(schema)?;
        let (tasks, input) = tasks_and_input(schema, &self.pooling, &self.tasks, layout, device)?;
        let width = input.output_dim();
        let d = self.bottom.output_dim(width, false);
        let transfers = tasks.len() - 1;
        Ok(Aitm {
            bottoms: tasks
                .iter()
                .map(|_| self.bottom.init(width, false, device))
                .collect(),
            towers: task_towers(&self.tasks, &self.tower, d, device),
            // torch-rechub's info layer: its default MLP block (ReLU, BatchNorm) of width d
            info: (0..transfers)
                .map(|_| MlpSpec::new([d]).init(d, false, device))
                .collect(),
            transfer: (0..transfers).map(|_| InfoTransfer::new(d, device)).collect(),
            input,
            tasks,
            alpha: self.calibrator_alpha,
            plan,
        })
    }
}

/// The attention that mixes a step's own vector with what the previous step passes on.
#[derive(Module, Debug)]
pub struct InfoTransfer {
    /// Query map `Q` (no bias).
    pub query: Linear,
    /// Key map `K` (no bias).
    pub key: Linear,
    /// Value map `V` (no bias).
    pub value: Linear,
}

impl InfoTransfer {
    /// A transfer over vectors of width `d`.
    pub fn new(d: usize, device: &Device) -> Self {
        let linear = || LinearConfig::new(d, d).with_bias(false).init(device);
        Self {
            query: linear(),
            key: linear(),
            value: linear(),
        }
    }

    /// The mixed vector and the attention weights `[own, transferred]`.
    ///
    /// # Shapes
    /// - `own`, `transferred`: `[batch, d]`
    /// - output: `[batch, d]`, weights `[batch, 2]` (rows sum to 1)
    pub fn forward(&self, own: Tensor<2>, transferred: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let [b, d] = own.dims();
        let v: Tensor<3> = Tensor::cat(vec![own.unsqueeze_dim(1), transferred.unsqueeze_dim(1)], 1); // [b, 2, d]
        let flat = v.reshape([b * 2, d]);
        let q = self.query.forward(flat.clone()).reshape([b, 2, d]);
        let k = self.key.forward(flat.clone()).reshape([b, 2, d]);
        let values = self.value.forward(flat).reshape([b, 2, d]);
        let scores = (q * k).sum_dim(2).reshape([b, 2]).div_scalar((d as f32).sqrt());
        let w = mtl_layers::softmax_rows(scores); // [b, 2]
        let mixed = (values * w.clone().unsqueeze_dim(2)).sum_dim(1).reshape([b, d]);
        (mixed, w)
    }
}

/// Adaptive Information Transfer Multi-task.
#[derive(Module, Debug)]
pub struct Aitm {
    /// Shared embeddings and pooling.
    pub input: InputLayer,
    /// Per task, its bottom MLP.
    pub bottoms: Vec<Mlp>,
    /// Per task after the first, the layer that shapes what the previous step passes on.
    pub info: Vec<Mlp>,
    /// Per task after the first, the attention that mixes it in.
    pub transfer: Vec<InfoTransfer>,
    /// Task towers, each ending in one logit.
    pub towers: Vec<Tower>,
    /// The tasks, in funnel order.
    #[module(skip)]
    pub tasks: Vec<TaskSpec>,
    /// The calibrator's weight α.
    #[module(skip)]
    pub alpha: f64,
    /// What the config promised: outputs, loss terms, label rules.
    #[module(skip)]
    pub plan: ModelPlan,
}

impl Aitm {
    /// Per-task logits and each transfer's attention weights `[own, transferred]`.
    ///
    /// # Shapes
    /// - logits: one `[batch]` per task
    /// - attention: one `[batch, 2]` per task after the first
    pub fn forward_with_attention(&self, batch: &BatchTensors) -> (Vec<Tensor<1>>, Vec<Tensor<2>>) {
        let trunk = self.trunk(batch);
        let q = (0..self.branch_count()).map(|t| self.branch(t, &trunk)).collect();
        self.transferred_logits(q, trunk.stack.as_ref())
    }

    /// Per-task logits and each transfer's attention weights from the bottoms' outputs `q`:
    /// `z_1 = q_1`, `z_t = AIT(q_t, info_t(z_{t−1}))`, then the towers.
    ///
    /// # Shapes
    /// - `q`: one `[batch, d]` per task; `fields`: `[batch, fields, dim]`
    /// - logits: one `[batch]` per task; attention: one `[batch, 2]` per task after the first
    fn transferred_logits(
        &self,
        q: Vec<Tensor<2>>,
        fields: Option<&Tensor<3>>,
    ) -> (Vec<Tensor<1>>, Vec<Tensor<2>>) {
        let mut z: Vec<Tensor<2>> = Vec::with_capacity(q.len());
        let mut attention = Vec::with_capacity(self.transfer.len());
        for (t, q) in q.into_iter().enumerate() {
            if t == 0 {
                z.push(q);
                continue;
            }
            let passed = self.info[t - 1].forward(z[t - 1].clone());
            let (mixed, w) = self.transfer[t - 1].forward(q, passed);
            z.push(mixed);
            attention.push(w);
        }
        (tower_logits(&self.towers, z, fields), attention)
    }

    /// The predictions (each task's, then each step's given the previous) and loss terms
    /// (each task's, then the calibrator's when α > 0) from the tasks' logits.
    fn forward_from_logits(&self, logits: Vec<Tensor<1>>, batch: &BatchTensors) -> Forward {
        let mut f = task_forward(&self.tasks, logits, batch);
        if self.alpha > 0.0 {
            f.losses.push(self.calibrator(&f.predictions, batch));
        }
        let conditional: Vec<Tensor<1>> = f.predictions[1..].to_vec();
        f.predictions.extend(conditional);
        f
    }

    /// `α · mean(max(p_t − p_{t−1}, 0))` summed over the chain (rows counted by their sample
    /// weights): zero when every step's probability is at most the previous step's.
    ///
    /// # Shapes
    /// - `probs`: one `[batch]` per task
    /// - output: `[1]`
    pub fn calibrator(&self, probs: &[Tensor<1>], batch: &BatchTensors) -> Tensor<1> {
        probs
            .windows(2)
            .map(|w| batch.mean_rows(relu(w[1].clone() - w[0].clone())))
            .reduce(|a, b| a + b)
            .expect("a chain of two or more tasks")
            .mul_scalar(self.alpha)
    }
}

impl MultiTaskModel for Aitm {
    fn plan(&self) -> &ModelPlan {
        &self.plan
    }

    fn predict(&self, batch: &BatchTensors) -> Vec<Tensor<1>> {
        let (logits, _) = self.forward_with_attention(batch);
        let probs = task_predictions(&self.tasks, logits);
        let conditional: Vec<Tensor<1>> = probs[1..].to_vec();
        probs.into_iter().chain(conditional).collect()
    }

    fn forward(&self, batch: &BatchTensors) -> Forward {
        self.forward_branched(batch)
    }

    /// Cut at its bottoms unless a tower reads the field embeddings (DeepFM): their gradient's
    /// terms would meet in another order than in one pass.
    fn branching(&self) -> Option<&dyn Branching> {
        (!self.towers.iter().any(|t| t.fm)).then_some(self as &dyn Branching)
    }

    fn input_layer(&self) -> &InputLayer {
        &self.input
    }

    fn gates(&self, batch: &BatchTensors) -> Vec<GateWeights> {
        let (_, attention) = self.forward_with_attention(batch);
        attention
            .into_iter()
            .zip(self.tasks.windows(2))
            .map(|(weights, w)| GateWeights {
                name: format!("{}<-{}", w[1].name, w[0].name),
                experts: vec!["own".into(), "transferred".into()],
                weights,
            })
            .collect()
    }

    const USES_LABEL_PRIORS: bool = true;

    /// Each task's output starts at its label's base rate (its mean, for a regression task).
    fn with_label_priors(self, label_means: &[f64]) -> Self {
        let towers = mtl_layers::towers_at_priors(&self.tasks, self.towers, label_means);
        Self { towers, ..self }
    }
}

/// AITM cut at its bottoms: the input layer, then each task's bottom MLP (branch `t`), then the
/// transfers, the towers and the losses (the head).
impl Branching for Aitm {
    fn trunk(&self, batch: &BatchTensors) -> Trunk {
        Trunk::of_input(&self.input, batch)
    }

    fn branch_count(&self) -> usize {
        self.bottoms.len()
    }

    fn branch_work(&self) -> usize {
        self.bottoms.iter().map(trainable_params).min().unwrap_or(0)
    }

    fn branch(&self, i: usize, trunk: &Trunk) -> Tensor<2> {
        self.bottoms[i].forward(trunk.input.clone()) // [batch, d]
    }

    fn head(&self, outputs: Vec<Tensor<2>>, trunk: &Trunk, batch: &BatchTensors) -> Forward {
        let (logits, _) = self.transferred_logits(outputs, trunk.stack.as_ref());
        self.forward_from_logits(logits, batch)
    }
}
