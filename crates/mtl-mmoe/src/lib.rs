//! # mtl-mmoe — Multi-gate Mixture-of-Experts, its baselines, PLE and AITM
//!
//! The per-task models, built from the shared blocks of `mtl-layers` (experts evaluated
//! together, softmax gates, task towers and heads): MMOE, OMoE and Shared-Bottom below, PLE/CGC
//! in [`PleConfig`], AITM in [`AitmConfig`], DBMTL in [`DbmtlConfig`] and PEPNet in [`PepnetConfig`] (each its own
//! file).
//!
//! Ma et al., *Modeling Task Relationships in Multi-task Learning with Multi-gate
//! Mixture-of-Experts*, KDD 2018, with the two baselines of its experiments built from the
//! same blocks:
//!
//! ```text
//! MMOE:          f_k(x) = experts,  g^t(x) = softmax(W_gt x),  y_t = h_t( Σ_k g^t_k(x) f_k(x) )
//! OMoE:          one gate g shared by every task:               y_t = h_t( Σ_k g_k(x) f_k(x) )
//! Shared-Bottom: one shared MLP f:                              y_t = h_t( f(x) )
//! ```
//!
//! Each task has its own tower `h_t` (an MLP ending in one output) and head: sigmoid for a
//! binary label, identity for a regression label; binary and regression tasks mix freely.
//! Gates mirror torch-rechub (`Linear → BatchNorm → softmax`; BatchNorm optional), and the
//! gate weights of a batch are available through [`Mmoe::forward_with_gates`]. The experts run
//! together ([`Experts`]: their first layers as one Linear, later ones as one batched matmul),
//! the same function and parameters as separate expert MLPs.
//!
//! ## Parameter counts (equal to torch-rechub's on the peer data: 20 fields, 320,150 ids, embed 16)
//! | config | total | embeddings | experts | gates | towers |
//! |---|---|---|---|---|---|
//! | 8 experts [16], towers [8], 2 tasks | 5,169,234 | 5,122,400 | 8 × 5,168 | 2 × 2,584 | 2 × 161 |
//! | 8 experts [256, 128], towers [64], 2 tasks | 6,071,186 | 5,122,400 | 8 × 115,840 | 2 × 2,584 | 2 × 8,385 |
//!
//! ```
//! use burn::tensor::Device;
//! use mtl_features::{Encoder, Schema, StateFitter};
//! use mtl_layers::{MlpSpec, ModelBuilder};
//! use mtl_mmoe::{MmoeConfig, TaskConfig};
//!
//! let schema = Schema::from_toml_str(r#"
//!     [[sparse]]
//!     name = "user"
//!     vocab_size = 100
//!     [[labels]]
//!     name = "click"
//!     kind = "binary"
//!     [[labels]]
//!     name = "dwell"
//!     kind = "regression"
//! "#, "inline").unwrap();
//! let encoder = Encoder::new(&schema, &StateFitter::new(&schema).finish());
//! let config = MmoeConfig::new(4, MlpSpec::new([16]), MlpSpec::new([8]),
//!     vec![TaskConfig::new("click"), TaskConfig::new("dwell")]);
//! let model = config.init(&schema, encoder.layout(), &Device::flex()).unwrap();
//! assert_eq!(model.experts.len(), 4);
//! assert_eq!(model.gates.len(), 2);
//! ```

mod aitm;
mod dbmtl;
mod pepnet;
mod ple;

use burn::module::Module;
use burn::tensor::{Device, Tensor};

pub use aitm::{Aitm, AitmConfig, InfoTransfer};
pub use dbmtl::{Dbmtl, DbmtlConfig};
use mtl_features::{BatchTensors, FieldPooling, InputLayer, TableLayout, ValidSchema};
pub use mtl_layers::experts::{ExpertLayer, Experts, MAX_EXPERTS};
pub use mtl_layers::tasks::{TaskConfig, TaskSpec};
use mtl_layers::tasks::{task_forward, task_predictions, tasks_and_input, tower_logits, towers_plan};
use mtl_layers::{
    Branching, Forward, GateWeights, Mlp, MlpSpec, ModelBuilder, ModelError, ModelPlan, MultiTaskModel,
    Trunk, trainable_params,
};
use mtl_layers::{Tower, TowerSpec, softmax_gate, task_towers};
pub use pepnet::{EpnetSpec, GateNu, Pepnet, PepnetConfig, PpnetSpec};
pub use ple::{ExtractionLayer, MAX_LEVELS, Ple, PleConfig};
use serde::{Deserialize, Serialize};

fn default_true() -> bool {
    true
}

/// How many gates a mixture of experts has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gating {
    /// One gate per task (MMOE).
    #[default]
    PerTask,
    /// One gate shared by all tasks (OMoE).
    Shared,
}

/// MMOE / OMoE configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmoeConfig {
    /// Number of experts.
    pub n_experts: usize,
    /// Each expert's hidden layers (no output layer).
    pub expert: MlpSpec,
    /// Each task's tower (`mlp`, `deepfm` or `dcn`; a final Linear to one output is added).
    pub tower: TowerSpec,
    /// The tasks.
    pub tasks: Vec<TaskConfig>,
    /// BatchNorm inside each gate (torch-rechub has it).
    #[serde(default = "default_true")]
    pub gate_batch_norm: bool,
    /// Per-task gates (MMOE) or one shared gate (OMoE).
    #[serde(default)]
    pub gating: Gating,
    /// How field embeddings become the experts' input.
    #[serde(default)]
    pub pooling: FieldPooling,
    /// How many equal groups the experts are evaluated in (dividing `n_experts`; default 1):
    /// the same function and parameter count, each group's products and element-wise work on
    /// its own, so that a trainer on a CPU with several threads can run the groups side by
    /// side ([`Branching`]). Worth it for wide experts (`configs/mmoe-large.toml` sets 2).
    #[serde(default = "one_group")]
    pub expert_groups: usize,
}

fn one_group() -> usize {
    1
}

impl MmoeConfig {
    /// An MMOE with per-task gates (with BatchNorm) over concatenated fields.
    pub fn new(
        n_experts: usize,
        expert: MlpSpec,
        tower: impl Into<TowerSpec>,
        tasks: Vec<TaskConfig>,
    ) -> Self {
        Self {
            n_experts,
            expert,
            tower: tower.into(),
            tasks,
            gate_batch_norm: true,
            gating: Gating::PerTask,
            pooling: FieldPooling::Concat,
            expert_groups: 1,
        }
    }

    /// The same config with one shared gate (OMoE).
    pub fn one_gate(mut self) -> Self {
        self.gating = Gating::Shared;
        self
    }
}

impl ModelBuilder for MmoeConfig {
    type Model = Mmoe;
    const ABOUT: &'static str =
        "Multi-gate Mixture-of-Experts: shared experts, one softmax gate and one tower per task";

    /// Checks the config against `schema` (experts, towers, tasks, pooling) and says what the
    /// model outputs, without building it.
    fn plan(&self, schema: &ValidSchema) -> Result<ModelPlan, ModelError> {
        if self.n_experts == 0 || self.n_experts > MAX_EXPERTS {
            return Err(ModelError::Invalid {
                key: "model.n_experts".into(),
                message: format!("= {}: must be between 1 and {MAX_EXPERTS}", self.n_experts),
            });
        }
        let groups = self.expert_groups;
        if groups == 0 || groups > self.n_experts || !self.n_experts.is_multiple_of(groups) {
            return Err(ModelError::Invalid {
                key: "model.expert_groups".into(),
                message: format!(
                    "= {groups}: must divide model.n_experts = {} into equal groups",
                    self.n_experts
                ),
            });
        }
        if self.expert.dims.is_empty() {
            return Err(ModelError::Invalid {
                key: "model.expert.dims".into(),
                message: "an expert needs at least one layer".into(),
            });
        }
        towers_plan(
            schema,
            &self.pooling,
            &self.tasks,
            &[(&self.expert, "model.expert")],
            &self.tower,
        )
    }

    /// Builds the model.
    fn init(&self, schema: &ValidSchema, layout: &TableLayout, device: &Device) -> Result<Mmoe, ModelError> {
        let plan = self.plan(schema)?;
        let (tasks, input) = tasks_and_input(schema, &self.pooling, &self.tasks, layout, device)?;
        let width = input.output_dim();
        let expert_width = self.expert.output_dim(width, false);
        let gate = softmax_gate(self.n_experts, self.gate_batch_norm);
        let n_gates = match self.gating {
            Gating::PerTask => tasks.len(),
            Gating::Shared => 1,
        };
        let group = self.n_experts / self.expert_groups;
        let mut groups = (0..self.expert_groups).map(|_| Experts::new(group, &self.expert, width, device));
        Ok(Mmoe {
            experts: groups.next().expect("at least one group (checked)"),
            expert_groups: groups.collect(),
            gates: (0..n_gates).map(|_| gate.init(width, false, device)).collect(),
            towers: task_towers(&self.tasks, &self.tower, expert_width, device),
            input,
            tasks,
            plan,
        })
    }
}

/// One-gate Mixture-of-Experts: an MMOE config whose tasks share one gate (`type = "omoe"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OmoeConfig(pub MmoeConfig);

impl OmoeConfig {
    /// The MMOE config with the single gate applied.
    pub fn mmoe(&self) -> MmoeConfig {
        self.0.clone().one_gate()
    }
}

impl ModelBuilder for OmoeConfig {
    type Model = Mmoe;
    const ABOUT: &'static str = "One-gate Mixture-of-Experts: MMOE with one gate shared by every task";

    fn plan(&self, schema: &ValidSchema) -> Result<ModelPlan, ModelError> {
        self.mmoe().plan(schema)
    }

    fn init(&self, schema: &ValidSchema, layout: &TableLayout, device: &Device) -> Result<Mmoe, ModelError> {
        self.mmoe().init(schema, layout, device)
    }
}

impl ModelBuilder for SharedBottomConfig {
    type Model = SharedBottom;
    const ABOUT: &'static str = "Shared-Bottom: one shared MLP under one tower per task";

    /// Checks the config against `schema` (bottom, towers, tasks, pooling) and says what the
    /// model outputs, without building it.
    fn plan(&self, schema: &ValidSchema) -> Result<ModelPlan, ModelError> {
        towers_plan(
            schema,
            &self.pooling,
            &self.tasks,
            &[(&self.bottom, "model.bottom")],
            &self.tower,
        )
    }

    /// Builds the model.
    fn init(
        &self,
        schema: &ValidSchema,
        layout: &TableLayout,
        device: &Device,
    ) -> Result<SharedBottom, ModelError> {
        let plan = self.plan(schema)?;
        let (tasks, input) = tasks_and_input(schema, &self.pooling, &self.tasks, layout, device)?;
        let width = input.output_dim();
        let bottom_width = self.bottom.output_dim(width, false);
        Ok(SharedBottom {
            bottom: self.bottom.init(width, false, device),
            towers: task_towers(&self.tasks, &self.tower, bottom_width, device),
            input,
            tasks,
            plan,
        })
    }
}

/// Multi-gate (or one-gate) Mixture-of-Experts.
#[derive(Module, Debug)]
pub struct Mmoe {
    /// Shared embeddings and pooling.
    pub input: InputLayer,
    /// Expert MLPs `f_k`, evaluated together: all of them, or the first group's where the
    /// config asks for several groups.
    pub experts: Experts,
    /// The later groups of experts, in order (empty for one group; kept apart from `experts`
    /// so that a one-group model's weights are named as they always were).
    pub expert_groups: Vec<Experts>,
    /// Gates: one per task (MMOE) or one shared (OMoE); each ends in a softmax over experts.
    pub gates: Vec<Mlp>,
    /// Task towers `h_t`, each ending in one output.
    pub towers: Vec<Tower>,
    /// The tasks.
    #[module(skip)]
    pub tasks: Vec<TaskSpec>,
    /// What the config promised: outputs, loss terms, label rules.
    #[module(skip)]
    pub plan: ModelPlan,
}

impl Mmoe {
    /// Every group of experts, in order (`experts` first).
    pub fn groups(&self) -> impl Iterator<Item = &Experts> {
        std::iter::once(&self.experts).chain(&self.expert_groups)
    }

    /// How many experts there are, in all groups.
    pub fn n_experts(&self) -> usize {
        self.groups().map(Experts::len).sum()
    }

    /// Tower outputs (logits or values) and each task's gate weights.
    ///
    /// # Shapes
    /// - logits: one `[batch]` per task
    /// - gates: one `[batch, n_experts]` per task (rows are non-negative and sum to 1)
    pub fn forward_with_gates(&self, batch: &BatchTensors) -> (Vec<Tensor<1>>, Vec<Tensor<2>>) {
        let trunk = self.trunk(batch);
        let groups: Vec<&Experts> = self.groups().collect();
        let experts = Experts::forward_groups(&groups, trunk.input.clone()); // [batch, n_experts, expert_dim]
        self.mixed(experts, &trunk)
    }

    /// The towers' outputs and the gates' weights from every expert's output and the input
    /// layer's: `y_t = h_t( Σ_k g^t_k(x) f_k(x) )`.
    ///
    /// # Shapes
    /// - `experts`: `[batch, n_experts, expert_dim]`; `trunk.input`: `[batch, input_dim]`
    /// - logits: one `[batch]` per task; gates: one `[batch, n_experts]` per task
    fn mixed(&self, experts: Tensor<3>, trunk: &Trunk) -> (Vec<Tensor<1>>, Vec<Tensor<2>>) {
        let [b, _, e] = experts.dims();
        let x = &trunk.input;
        let gate_weights: Vec<Tensor<2>> = self.gates.iter().map(|g| g.forward(x.clone())).collect();
        let mut mixed = Vec::with_capacity(self.tasks.len());
        let mut gates = Vec::with_capacity(self.tasks.len());
        for t in 0..self.towers.len() {
            let g = gate_weights[t.min(gate_weights.len() - 1)].clone(); // [batch, n_experts]
            let m = (experts.clone() * g.clone().unsqueeze_dim(2)).sum_dim(1); // [batch, 1, expert_dim]
            mixed.push(m.reshape([b, e]));
            gates.push(g);
        }
        (tower_logits(&self.towers, mixed, trunk.stack.as_ref()), gates)
    }
}

impl Branching for Mmoe {
    fn trunk(&self, batch: &BatchTensors) -> Trunk {
        Trunk::of_input(&self.input, batch)
    }

    fn branch_count(&self) -> usize {
        1 + self.expert_groups.len()
    }

    fn branch_work(&self) -> usize {
        self.groups().map(trainable_params).min().unwrap_or(0)
    }

    /// Group `i`'s experts' outputs, experts first ([`Experts::forward_flat`]).
    ///
    /// # Shapes
    /// - output: `[n_g · batch, expert_dim]`
    fn branch(&self, i: usize, trunk: &Trunk) -> Tensor<2> {
        let group = self.groups().nth(i).expect("a branch per group");
        group.forward_flat(trunk.input.clone())
    }

    /// The gates read the input layer's output in the head.
    fn one_pass_is_exact(&self) -> bool {
        false
    }

    fn head(&self, outputs: Vec<Tensor<2>>, trunk: &Trunk, batch: &BatchTensors) -> Forward {
        let [b, _] = trunk.input.dims();
        let experts = Experts::unflatten(Tensor::cat(outputs, 0), b); // [batch, n_experts, expert_dim]
        let (logits, _) = self.mixed(experts, trunk);
        task_forward(&self.tasks, logits, batch)
    }
}

impl MultiTaskModel for Mmoe {
    fn plan(&self) -> &ModelPlan {
        &self.plan
    }

    fn predict(&self, batch: &BatchTensors) -> Vec<Tensor<1>> {
        let (logits, _) = self.forward_with_gates(batch);
        task_predictions(&self.tasks, logits)
    }
    fn input_layer(&self) -> &InputLayer {
        &self.input
    }

    fn forward(&self, batch: &BatchTensors) -> Forward {
        let (logits, _) = self.forward_with_gates(batch);
        task_forward(&self.tasks, logits, batch)
    }

    /// Cut at its groups of experts where there are several, unless a tower reads the field
    /// embeddings (DeepFM): their gradient's terms would meet in another order than in one
    /// pass.
    fn branching(&self) -> Option<&dyn Branching> {
        let cut = !self.expert_groups.is_empty() && !self.towers.iter().any(|t| t.fm);
        cut.then_some(self as &dyn Branching)
    }

    fn gates(&self, batch: &BatchTensors) -> Vec<GateWeights> {
        let (_, gates) = self.forward_with_gates(batch);
        let experts: Vec<String> = (0..self.n_experts()).map(|k| format!("expert{k}")).collect();
        let shared = self.gates.len() == 1 && self.tasks.len() > 1;
        gates
            .into_iter()
            .zip(&self.tasks)
            .take(self.gates.len())
            .map(|(weights, task)| GateWeights {
                name: if shared {
                    "shared".into()
                } else {
                    task.name.clone()
                },
                experts: experts.clone(),
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

/// Shared-Bottom configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedBottomConfig {
    /// The shared bottom MLP's hidden layers.
    pub bottom: MlpSpec,
    /// Each task's tower (`mlp`, `deepfm` or `dcn`; a final Linear to one output is added).
    pub tower: TowerSpec,
    /// The tasks.
    pub tasks: Vec<TaskConfig>,
    /// How field embeddings become the bottom's input.
    #[serde(default)]
    pub pooling: FieldPooling,
}

/// One shared MLP under per-task towers.
#[derive(Module, Debug)]
pub struct SharedBottom {
    /// Shared embeddings and pooling.
    pub input: InputLayer,
    /// The shared MLP `f`.
    pub bottom: Mlp,
    /// Task towers `h_t`.
    pub towers: Vec<Tower>,
    /// The tasks.
    #[module(skip)]
    pub tasks: Vec<TaskSpec>,
    /// What the config promised: outputs, loss terms, label rules.
    #[module(skip)]
    pub plan: ModelPlan,
}

impl SharedBottom {
    /// Tower outputs (logits or values).
    ///
    /// # Shapes
    /// - output: one `[batch]` per task
    pub fn logits(&self, batch: &BatchTensors) -> Vec<Tensor<1>> {
        let (x, fields) = self.input.forward_with_fields(batch);
        let shared = self.bottom.forward(x); // [batch, bottom_dim]
        tower_logits(&self.towers, vec![shared; self.towers.len()], fields.as_ref())
    }
}

impl MultiTaskModel for SharedBottom {
    fn plan(&self) -> &ModelPlan {
        &self.plan
    }

    fn predict(&self, batch: &BatchTensors) -> Vec<Tensor<1>> {
        task_predictions(&self.tasks, self.logits(batch))
    }
    fn input_layer(&self) -> &InputLayer {
        &self.input
    }

    fn forward(&self, batch: &BatchTensors) -> Forward {
        task_forward(&self.tasks, self.logits(batch), batch)
    }

    const USES_LABEL_PRIORS: bool = true;

    /// Each task's output starts at its label's base rate (its mean, for a regression task).
    fn with_label_priors(self, label_means: &[f64]) -> Self {
        let towers = mtl_layers::towers_at_priors(&self.tasks, self.towers, label_means);
        Self { towers, ..self }
    }
}
