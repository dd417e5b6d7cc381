//! PLE — Progressive Layered Extraction (Tang et al., *Progressive Layered Extraction (PLE): A
//! Novel Multi-Task Learning (MTL) Model for Personalized Recommendations*, RecSys 2020).
//!
//! ```text
//! level l (a CGC layer), tasks t = 1…T, inputs x_t (task paths) and x_s (shared path):
//!   E_t = specific experts of t on x_t        E_s = shared experts on x_s
//!   x_t ← Σ_k g_t,k(x_t) · [E_t ; E_s]_k       g_t = softmax gate of task t over its own and the shared experts
//!   x_s ← Σ_k g_s,k(x_s) · [E_1 ; … ; E_T ; E_s]_k   (every level but the last: the shared gate sees all experts)
//! level 1: x_t = x_s = the input embedding;   y_t = h_t(x_t after the last level)
//! ```
//!
//! Keys translate torch-rechub's `PLE(n_level, n_expert_specific, n_expert_shared,
//! expert_params, tower_params_list)` one to one (`tower` for every task, or `tasks[i].tower`);
//! CGC (Customized Gate Control) is PLE with `n_level = 1`. Gates are `Linear → BatchNorm →
//! softmax` as torch-rechub builds them, so parameter counts are equal (tested). PLE with one
//! level, no specific experts and K shared experts is MMOE with K experts (tested).

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use mtl_features::{BatchTensors, FieldPooling, InputLayer, TableLayout, ValidSchema};
use mtl_layers::{
    Branching, Forward, GateWeights, Mlp, MlpSpec, ModelBuilder, ModelError, ModelPlan, MultiTaskModel,
    Trunk, trainable_params,
};
use serde::{Deserialize, Serialize};

use mtl_layers::tasks::tower_logits;
use mtl_layers::tasks::{
    TaskConfig, TaskSpec, task_forward, task_predictions, task_towers, tasks_and_input, towers_plan,
};
use mtl_layers::{Experts, MAX_EXPERTS, Tower, TowerSpec, softmax_gate};

fn default_true() -> bool {
    true
}

/// The most extraction levels a config may ask for.
pub const MAX_LEVELS: usize = 16;

/// PLE configuration (`type = "ple"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PleConfig {
    /// Extraction levels (1 = CGC).
    pub n_level: usize,
    /// Experts of each task's own, per level.
    pub n_expert_specific: usize,
    /// Experts shared by every task, per level.
    pub n_expert_shared: usize,
    /// Every expert's hidden layers (`expert_params`).
    pub expert: MlpSpec,
    /// Each task's tower (`mlp`, `deepfm` or `dcn`; a final Linear to one output is added); a
    /// task's own `tower` overrides it (`tower_params_list`).
    pub tower: TowerSpec,
    /// The tasks.
    pub tasks: Vec<TaskConfig>,
    /// BatchNorm inside each gate (torch-rechub has it).
    #[serde(default = "default_true")]
    pub gate_batch_norm: bool,
    /// How field embeddings become the experts' input.
    #[serde(default)]
    pub pooling: FieldPooling,
}

impl ModelBuilder for PleConfig {
    type Model = Ple;
    const ABOUT: &'static str = "Progressive Layered Extraction: task-specific and shared experts in n_level CGC layers (n_level = 1 is CGC)";

    /// Checks the config against `schema` and says what the model outputs.
    fn plan(&self, schema: &ValidSchema) -> Result<ModelPlan, ModelError> {
        let invalid = |key: &str, message: String| ModelError::Invalid {
            key: format!("model.{key}"),
            message,
        };
        if !(1..=MAX_LEVELS).contains(&self.n_level) {
            return Err(invalid(
                "n_level",
                format!("= {}: must be between 1 and {MAX_LEVELS}", self.n_level),
            ));
        }
        for (key, n) in [
            ("n_expert_specific", self.n_expert_specific),
            ("n_expert_shared", self.n_expert_shared),
        ] {
            if n > MAX_EXPERTS {
                return Err(invalid(key, format!("= {n}: must be at most {MAX_EXPERTS}")));
            }
        }
        if self.n_expert_specific + self.n_expert_shared == 0 {
            return Err(invalid(
                "n_expert_shared",
                "a level needs at least one expert: n_expert_specific + n_expert_shared ≥ 1".into(),
            ));
        }
        if self.expert.dims.is_empty() {
            return Err(invalid(
                "expert.dims",
                "an expert needs at least one layer".into(),
            ));
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
    fn init(&self, schema: &ValidSchema, layout: &TableLayout, device: &Device) -> Result<Ple, ModelError> {
        let plan = self.plan(schema)?;
        let (tasks, input) = tasks_and_input(schema, &self.pooling, &self.tasks, layout, device)?;
        let n_tasks = tasks.len();
        let expert_width = self.expert.output_dim(0, false);
        let gate = |n: usize, width: usize| softmax_gate(n, self.gate_batch_norm).init(width, false, device);
        let levels = (0..self.n_level)
            .map(|level| {
                let width = if level == 0 {
                    input.output_dim()
                } else {
                    expert_width
                };
                let own = self.n_expert_specific + self.n_expert_shared;
                ExtractionLayer {
                    specific: (0..n_tasks)
                        .filter(|_| self.n_expert_specific > 0)
                        .map(|_| Experts::new(self.n_expert_specific, &self.expert, width, device))
                        .collect(),
                    shared: (self.n_expert_shared > 0)
                        .then(|| Experts::new(self.n_expert_shared, &self.expert, width, device)),
                    gates: (0..n_tasks).map(|_| gate(own, width)).collect(),
                    shared_gate: (level + 1 < self.n_level)
                        .then(|| gate(n_tasks * self.n_expert_specific + self.n_expert_shared, width)),
                }
            })
            .collect();
        Ok(Ple {
            levels,
            towers: task_towers(&self.tasks, &self.tower, expert_width, device),
            input,
            tasks,
            plan,
        })
    }
}

/// One extraction level (a CGC layer).
#[derive(Module, Debug)]
pub struct ExtractionLayer {
    /// Per task, its own experts (empty when `n_expert_specific` is 0).
    pub specific: Vec<Experts>,
    /// The shared experts, if any.
    pub shared: Option<Experts>,
    /// Per task, a softmax gate over its own and the shared experts.
    pub gates: Vec<Mlp>,
    /// Every level but the last: a softmax gate over all experts, for the shared path.
    pub shared_gate: Option<Mlp>,
}

/// `Σ_k g_k · E_k`: experts `[batch, k, d]` mixed by gate weights `[batch, k]` into `[batch, d]`.
fn mix(experts: Tensor<3>, gate: Tensor<2>) -> Tensor<2> {
    let [b, _, d] = experts.dims();
    (experts * gate.unsqueeze_dim(2)).sum_dim(1).reshape([b, d])
}

impl ExtractionLayer {
    /// The level's outputs and its gate weights.
    ///
    /// # Shapes
    /// - `inputs`: one `[batch, in]` per task, then the shared path's `[batch, in]`
    /// - output: one `[batch, expert_dim]` per task (then the shared path's, except on the
    ///   last level); gate weights `[batch, experts the gate sees]` per task (then shared)
    pub fn forward(&self, inputs: &[Tensor<2>]) -> (Vec<Tensor<2>>, Vec<Tensor<2>>) {
        let (specific, shared) = self.experts(inputs, false);
        self.mix_paths(inputs, specific, shared)
    }

    /// [`ExtractionLayer::forward`] when every path's input is the same (the first level's:
    /// the input embedding), with all the level's experts evaluated as one mixture
    /// ([`Experts::forward_together`]).
    ///
    /// # Shapes
    /// - as [`ExtractionLayer::forward`]
    pub fn forward_one_input(&self, inputs: &[Tensor<2>]) -> (Vec<Tensor<2>>, Vec<Tensor<2>>) {
        let (specific, shared) = self.experts(inputs, true);
        self.mix_paths(inputs, specific, shared)
    }

    /// Every task's own experts on its path and the shared experts on the shared path; with
    /// `together`, all on the first input as one mixture.
    ///
    /// # Shapes
    /// - output: one `[batch, n_spec, d]` per task (none without specific experts), and the
    ///   shared experts' `[batch, n_shared, d]`
    fn experts(&self, inputs: &[Tensor<2>], together: bool) -> (Vec<Tensor<3>>, Option<Tensor<3>>) {
        if together {
            let groups: Vec<&Experts> = self.specific.iter().chain(self.shared.as_ref()).collect();
            let mut out = Experts::forward_together(&groups, inputs[0].clone());
            let shared = self.shared.as_ref().and_then(|_| out.pop());
            return (out, shared);
        }
        let specific = (self.specific.iter().zip(inputs))
            .map(|(e, x)| e.forward(x.clone()))
            .collect();
        let shared_in = &inputs[self.gates.len()];
        (
            specific,
            self.shared.as_ref().map(|e| e.forward(shared_in.clone())),
        )
    }

    /// Each path's gate mixing its experts.
    ///
    /// # Shapes
    /// - as [`ExtractionLayer::forward`]
    fn mix_paths(
        &self,
        inputs: &[Tensor<2>],
        specific: Vec<Tensor<3>>,
        shared: Option<Tensor<3>>,
    ) -> (Vec<Tensor<2>>, Vec<Tensor<2>>) {
        let n_tasks = self.gates.len();
        let shared_in = &inputs[n_tasks];
        let mut outputs = Vec::with_capacity(n_tasks + 1);
        let mut gates = Vec::with_capacity(n_tasks + 1);
        for (t, gate) in self.gates.iter().enumerate() {
            let experts: Vec<Tensor<3>> = specific
                .get(t)
                .cloned()
                .into_iter()
                .chain(shared.clone())
                .collect();
            let g = gate.forward(inputs[t].clone());
            outputs.push(mix(Tensor::cat(experts, 1), g.clone()));
            gates.push(g);
        }
        if let Some(gate) = &self.shared_gate {
            let experts: Vec<Tensor<3>> = specific.into_iter().chain(shared).collect();
            let g = gate.forward(shared_in.clone());
            outputs.push(mix(Tensor::cat(experts, 1), g.clone()));
            gates.push(g);
        }
        (outputs, gates)
    }
}

/// Progressive Layered Extraction.
#[derive(Module, Debug)]
pub struct Ple {
    /// Shared embeddings and pooling.
    pub input: InputLayer,
    /// The extraction levels, first to last.
    pub levels: Vec<ExtractionLayer>,
    /// Task towers `h_t`, each ending in one output.
    pub towers: Vec<Tower>,
    /// The tasks.
    #[module(skip)]
    pub tasks: Vec<TaskSpec>,
    /// What the config promised: outputs, loss terms, label rules.
    #[module(skip)]
    pub plan: ModelPlan,
}

impl Ple {
    /// Per-task logits (or values) and every level's gate weights.
    ///
    /// # Shapes
    /// - logits: one `[batch]` per task
    /// - gates: per level, `[batch, experts]` per task (then the shared gate's)
    pub fn forward_with_gates(&self, batch: &BatchTensors) -> (Vec<Tensor<1>>, Vec<Vec<Tensor<2>>>) {
        let trunk = self.trunk(batch);
        // the first level's paths are all the input: its experts run as one mixture
        let (specific, shared) = self.levels[0].experts(std::slice::from_ref(&trunk.input), true);
        self.after_first_experts(&trunk, specific, shared)
    }

    /// The first level's groups of experts, in order: each task's own, then the shared ones.
    fn first_groups(&self) -> Vec<&Experts> {
        let first = &self.levels[0];
        first.specific.iter().chain(first.shared.as_ref()).collect()
    }

    /// The logits and every level's gate weights from the first level's experts' outputs
    /// and the input layer's (which the first level's gates read).
    ///
    /// # Shapes
    /// - `specific`: one `[batch, n_spec, d]` per task (none without specific experts);
    ///   `shared`: `[batch, n_shared, d]`; output as [`Ple::forward_with_gates`]
    fn after_first_experts(
        &self,
        trunk: &Trunk,
        specific: Vec<Tensor<3>>,
        shared: Option<Tensor<3>>,
    ) -> (Vec<Tensor<1>>, Vec<Vec<Tensor<2>>>) {
        let inputs = vec![trunk.input.clone(); self.tasks.len() + 1];
        let (mut paths, first) = self.levels[0].mix_paths(&inputs, specific, shared);
        let mut gates = Vec::with_capacity(self.levels.len());
        gates.push(first);
        for level in &self.levels[1..] {
            let (out, g) = level.forward(&paths);
            paths = out;
            gates.push(g);
        }
        (tower_logits(&self.towers, paths, trunk.stack.as_ref()), gates)
    }
}

/// Cut at the first level's groups of experts (each task's own, the shared ones); the gates,
/// the later levels and the towers are the head.
impl Branching for Ple {
    fn trunk(&self, batch: &BatchTensors) -> Trunk {
        Trunk::of_input(&self.input, batch)
    }

    fn branch_count(&self) -> usize {
        self.first_groups().len()
    }

    fn branch_work(&self) -> usize {
        self.first_groups()
            .into_iter()
            .map(trainable_params)
            .min()
            .unwrap_or(0)
    }

    /// Group `i`'s experts' outputs, experts first ([`Experts::forward_flat`]).
    ///
    /// # Shapes
    /// - output: `[n_g · batch, expert_dim]`
    fn branch(&self, i: usize, trunk: &Trunk) -> Tensor<2> {
        self.first_groups()[i].forward_flat(trunk.input.clone())
    }

    /// The first level's gates read the input layer's output in the head.
    fn one_pass_is_exact(&self) -> bool {
        false
    }

    fn head(&self, outputs: Vec<Tensor<2>>, trunk: &Trunk, batch: &BatchTensors) -> Forward {
        let [b, _] = trunk.input.dims();
        let mut groups: Vec<Tensor<3>> = outputs.into_iter().map(|o| Experts::unflatten(o, b)).collect();
        let shared = self.levels[0].shared.as_ref().and_then(|_| groups.pop());
        let (logits, _) = self.after_first_experts(trunk, groups, shared);
        task_forward(&self.tasks, logits, batch)
    }
}

impl MultiTaskModel for Ple {
    fn plan(&self) -> &ModelPlan {
        &self.plan
    }

    fn predict(&self, batch: &BatchTensors) -> Vec<Tensor<1>> {
        let (logits, _) = self.forward_with_gates(batch);
        task_predictions(&self.tasks, logits)
    }

    fn forward(&self, batch: &BatchTensors) -> Forward {
        let (logits, _) = self.forward_with_gates(batch);
        task_forward(&self.tasks, logits, batch)
    }

    /// Cut at the first level's groups where there are several, unless a tower reads the
    /// field embeddings (DeepFM): their gradient's terms would meet in another order than in
    /// one pass. (Its one pass runs narrow groups' first products as one: the same function.)
    fn branching(&self) -> Option<&dyn Branching> {
        let cut = self.first_groups().len() > 1 && !self.towers.iter().any(|t| t.fm);
        cut.then_some(self as &dyn Branching)
    }

    fn input_layer(&self) -> &InputLayer {
        &self.input
    }

    fn gates(&self, batch: &BatchTensors) -> Vec<GateWeights> {
        let (_, levels) = self.forward_with_gates(batch);
        let mut out = Vec::new();
        for (l, (level, gates)) in self.levels.iter().zip(levels).enumerate() {
            let n_spec = level.specific.first().map_or(0, Experts::len);
            let n_shared = level.shared.as_ref().map_or(0, Experts::len);
            let specific = |t: &TaskSpec| -> Vec<String> {
                (0..n_spec)
                    .map(|k| format!("level{}.{}.expert{k}", l + 1, t.name))
                    .collect()
            };
            let shared: Vec<String> = (0..n_shared)
                .map(|k| format!("level{}.shared.expert{k}", l + 1))
                .collect();
            for (g, weights) in gates.into_iter().enumerate() {
                let (name, experts) = match self.tasks.get(g) {
                    Some(t) => (
                        format!("level{}.{}", l + 1, t.name),
                        specific(t).into_iter().chain(shared.iter().cloned()).collect(),
                    ),
                    None => (
                        format!("level{}.shared", l + 1),
                        self.tasks
                            .iter()
                            .flat_map(specific)
                            .chain(shared.iter().cloned())
                            .collect(),
                    ),
                };
                out.push(GateWeights {
                    name,
                    experts,
                    weights,
                });
            }
        }
        out
    }

    const USES_LABEL_PRIORS: bool = true;

    /// Each task's output starts at its label's base rate (its mean, for a regression task).
    fn with_label_priors(self, label_means: &[f64]) -> Self {
        let towers = mtl_layers::towers_at_priors(&self.tasks, self.towers, label_means);
        Self { towers, ..self }
    }
}
