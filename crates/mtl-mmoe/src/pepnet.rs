//! PEPNet — Parameter and Embedding Personalized Network (Chang et al., KDD 2023), as
//! TorchEasyRec's `tzrec/models/pepnet.py` builds it. Gate neural units scale the shared
//! input (EPNet, from domain fields) and every hidden layer of each task's network (PPNet,
//! from user/item/author fields); the gates read the input with its gradient stopped:
//!
//! ```text
//! x      = input(batch)                                   every field pooled, dense appended
//! G(z)   = γ · σ(W₂ relu(W₁ z + b₁) + b₂)                 a gate neural unit, in (0, γ)
//! x'     = G_ep([e_domain, sg(x)]) ⊙ x                    EPNet (x' = x without it)
//! a⁰_t   = x',  aʲ_t = act(BN(Wʲ_t aʲ⁻¹_t + bʲ_t)) ⊙ Gʲ_t([e_uia, sg(x')])     PPNet, per task t
//! ŷ_t    = head(tower_t(a^L_t))                           sigmoid for a binary task
//! ```
//!
//! `e_domain` and `e_uia` are the embeddings (and values) of the fields `epnet.gate_fields`
//! and `ppnet.gate_fields` name; `sg` stops the gradient. Each gate's output layer starts at
//! zero, so every gate starts at `γ/2` — the identity at the paper's `γ = 2` — and the network
//! starts as the one without personalisation. PPNet's layers have BatchNorm, as every mtl MLP
//! (`batch_norm = false` is TorchEasyRec's layer: without it, on 1M generated rows at the
//! example widths, click AUC fell from 0.82 to 0.73 — the towers never left the start); with
//! `batch_norm = false` the parameter count equals TorchEasyRec's for the same widths
//! (`crates/mtl-mmoe/tests/pepnet.rs` counts both).

use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Device, Int, Tensor, TensorData};
use mtl_features::{BatchTensors, FieldPooling, InputLayer, TableLayout, ValidSchema};
use mtl_layers::task_towers;
use mtl_layers::tasks::{
    TaskConfig, TaskSpec, task_forward, task_predictions, tasks_and_input, tower_logits, towers_at_priors,
    towers_plan,
};
use mtl_layers::{
    Activation, Forward, MlpBlock, MlpSpec, ModelBuilder, ModelError, ModelPlan, MultiTaskModel, Tower,
    TowerSpec,
};
use serde::{Deserialize, Serialize};

fn default_gamma() -> f64 {
    2.0
}

/// EPNet: a gate over the whole input from domain fields (`[model.epnet]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpnetSpec {
    /// The fields (sparse, sequence or dense, by name) the gate reads beside the input.
    pub gate_fields: Vec<String>,
    /// The gate's hidden width (TorchEasyRec's `epnet_hidden_unit`; default: the input width).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<usize>,
    /// The gate's scale `γ`: its output lies in `(0, γ)` (default 2).
    #[serde(default = "default_gamma")]
    pub gamma: f64,
}

/// PPNet: per task, hidden layers each scaled by a gate from user/item/author fields
/// (`[model.ppnet]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpnetSpec {
    /// The fields (sparse, sequence or dense, by name) the gates read beside the input.
    pub gate_fields: Vec<String>,
    /// Hidden widths of each task's gated layers (TorchEasyRec's `ppnet_hidden_units`).
    pub dims: Vec<usize>,
    /// Activation after each hidden layer.
    #[serde(default)]
    pub activation: Activation,
    /// Dropout after each gated layer.
    #[serde(default)]
    pub dropout: f64,
    /// BatchNorm after each layer's Linear, as in every mtl MLP (TorchEasyRec's PPNet has none:
    /// `false` is its layer, parameter for parameter).
    #[serde(default = "default_true")]
    pub batch_norm: bool,
    /// The gates' scale `γ` (default 2).
    #[serde(default = "default_gamma")]
    pub gamma: f64,
}

fn default_true() -> bool {
    true
}

impl PpnetSpec {
    /// The layers before their gates, as an MLP spec.
    fn mlp(&self) -> MlpSpec {
        MlpSpec {
            dims: self.dims.clone(),
            activation: self.activation,
            dropout: self.dropout,
            batch_norm: self.batch_norm,
        }
    }
}

/// PEPNet configuration (`type = "pepnet"`): EPNet, PPNet (at least one), the task towers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PepnetConfig {
    /// The embedding personalisation gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epnet: Option<EpnetSpec>,
    /// The parameter personalisation layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppnet: Option<PpnetSpec>,
    /// Each task's tower after PPNet (TorchEasyRec's task tower `mlp`; `dims = []` is one Linear).
    pub tower: TowerSpec,
    /// The tasks (a task's own `tower` overrides `tower`).
    pub tasks: Vec<TaskConfig>,
    /// How field embeddings become the input.
    #[serde(default)]
    pub pooling: FieldPooling,
}

/// Where a gate field's values sit in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GateSource {
    /// Id field `f` (sparse, then sequence, pooled).
    Id(usize),
    /// Dense column `d`.
    Dense(usize),
}

/// The fields `names` resolved against `schema` (each once), and their total width.
fn gate_sources(
    schema: &ValidSchema,
    names: &[String],
    key: &str,
) -> Result<(Vec<GateSource>, usize), ModelError> {
    let invalid = |message: String| ModelError::Invalid {
        key: key.into(),
        message,
    };
    if names.is_empty() {
        return Err(invalid("is empty: name the fields the gate reads".into()));
    }
    let ids = schema.id_fields();
    let (mut sources, mut width) = (Vec::new(), 0);
    for (i, name) in names.iter().enumerate() {
        let source = if let Some(f) = ids.iter().position(|f| f.name == name) {
            width += schema.dims[f];
            GateSource::Id(f)
        } else if let Some(d) = schema.schema.dense.iter().position(|f| &f.name == name) {
            width += 1;
            GateSource::Dense(d)
        } else {
            return Err(invalid(format!(
                "[{i}] = \"{name}\" is not a sparse, sequence or dense field of the schema"
            )));
        };
        if sources.contains(&source) {
            return Err(invalid(format!("[{i}] = \"{name}\" is named twice")));
        }
        sources.push(source);
    }
    Ok((sources, width))
}

fn check_gamma(gamma: f64, key: &str) -> Result<(), ModelError> {
    if gamma.is_finite() && gamma > 0.0 {
        return Ok(());
    }
    Err(ModelError::Invalid {
        key: key.into(),
        message: format!("= {gamma}: the gate scale must be a positive number (the paper's is 2)"),
    })
}

impl PepnetConfig {
    /// Every value checked against `schema`: the gate fields, widths, scales.
    fn check(&self, schema: &ValidSchema) -> Result<(), ModelError> {
        if self.epnet.is_none() && self.ppnet.is_none() {
            return Err(ModelError::Invalid {
                key: "model".into(),
                message: "PEPNet needs `epnet`, `ppnet` or both (without them it is a shared-input tower model: use `shared_bottom`)".into(),
            });
        }
        if let Some(ep) = &self.epnet {
            gate_sources(schema, &ep.gate_fields, "model.epnet.gate_fields")?;
            check_gamma(ep.gamma, "model.epnet.gamma")?;
            if let Some(h) = ep.hidden {
                MlpSpec::new([h]).check("model.epnet.hidden")?;
            }
        }
        if let Some(pp) = &self.ppnet {
            gate_sources(schema, &pp.gate_fields, "model.ppnet.gate_fields")?;
            check_gamma(pp.gamma, "model.ppnet.gamma")?;
            pp.mlp().check("model.ppnet")?;
            if pp.dims.is_empty() {
                return Err(ModelError::Invalid {
                    key: "model.ppnet.dims".into(),
                    message: "is empty: PPNet needs at least one gated layer".into(),
                });
            }
        }
        Ok(())
    }
}

impl ModelBuilder for PepnetConfig {
    type Model = Pepnet;
    const ABOUT: &'static str = "PEPNet: EPNet gates the input from domain fields, PPNet gates each task's layers from user/item fields";

    /// Checks the config against `schema` and says what the model outputs, without building it.
    fn plan(&self, schema: &ValidSchema) -> Result<ModelPlan, ModelError> {
        self.check(schema)?;
        towers_plan(schema, &self.pooling, &self.tasks, &[], &self.tower)
    }

    /// Builds the model.
    fn init(
        &self,
        schema: &ValidSchema,
        layout: &TableLayout,
        device: &Device,
    ) -> Result<Pepnet, ModelError> {
        let plan = self.plan(schema)?;
        let (tasks, input) = tasks_and_input(schema, &self.pooling, &self.tasks, layout, device)?;
        let x = input.output_dim();
        let epnet = match &self.epnet {
            Some(ep) => {
                let (sources, width) = gate_sources(schema, &ep.gate_fields, "model.epnet.gate_fields")?;
                let gate = GateNu::new(width + x, ep.hidden.unwrap_or(x), x, ep.gamma, device);
                Some(Epnet { gate, sources })
            }
            None => None,
        };
        let mut tower_input = x;
        let ppnet = match &self.ppnet {
            Some(pp) => {
                let (sources, width) = gate_sources(schema, &pp.gate_fields, "model.ppnet.gate_fields")?;
                let nets = tasks
                    .iter()
                    .map(|_| PpnetTask::new(pp, x, width, device))
                    .collect();
                tower_input = *pp.dims.last().expect("checked: PPNet has layers");
                Some(Ppnet { nets, sources })
            }
            None => None,
        };
        Ok(Pepnet {
            towers: task_towers(&self.tasks, &self.tower, tower_input, device),
            input,
            epnet,
            ppnet,
            tasks,
            plan,
        })
    }
}

/// A gate neural unit: `γ · σ(W₂ relu(W₁ z + b₁) + b₂)`, its output layer started at zero.
#[derive(Module, Debug)]
pub struct GateNu {
    /// `W₁, b₁`.
    pub hidden: Linear,
    /// `W₂, b₂`.
    pub output: Linear,
    /// The scale `γ`.
    #[module(skip)]
    pub gamma: f64,
}

impl GateNu {
    fn new(input: usize, hidden: usize, output: usize, gamma: f64, device: &Device) -> Self {
        Self {
            hidden: LinearConfig::new(input, hidden).init(device),
            output: (LinearConfig::new(hidden, output))
                .with_initializer(Initializer::Zeros)
                .init(device),
            gamma,
        }
    }

    /// The gate's values, each in `(0, γ)`.
    ///
    /// # Shapes
    /// - z: `[batch, input]`; output: `[batch, output]`
    pub fn forward(&self, z: Tensor<2>) -> Tensor<2> {
        sigmoid(self.output.forward(relu(self.hidden.forward(z)))).mul_scalar(self.gamma)
    }
}

/// EPNet: one gate over the input.
#[derive(Module, Debug)]
pub struct Epnet {
    /// `G_ep`.
    pub gate: GateNu,
    /// The gate fields.
    #[module(skip)]
    sources: Vec<GateSource>,
}

/// One task's PPNet layers, each followed by its gate.
#[derive(Module, Debug)]
pub struct PpnetTask {
    /// `act(BN(Wʲ_t a + bʲ_t))` with its dropout (dropout's mask commutes with the gate's
    /// product, so the block's own dropout is TorchEasyRec's dropout after the gate).
    pub blocks: Vec<MlpBlock>,
    /// `Gʲ_t`.
    pub gates: Vec<GateNu>,
}

impl PpnetTask {
    fn new(spec: &PpnetSpec, input: usize, gate_width: usize, device: &Device) -> Self {
        let blocks = spec.mlp().init(input, false, device).blocks;
        let gates = (spec.dims.iter())
            .map(|&dim| GateNu::new(gate_width + input, dim, dim, spec.gamma, device))
            .collect();
        Self { blocks, gates }
    }

    /// `a^L_t` from `a⁰ = x'` and the values of its gates `Gʲ_t([e_uia, sg(x')])`.
    ///
    /// # Shapes
    /// - x: `[batch, input]`; gates: `[batch, dims[j]]` per layer; output: `[batch, dims[L−1]]`
    pub fn forward(&self, x: Tensor<2>, gates: Vec<Tensor<2>>) -> Tensor<2> {
        (self.blocks.iter().zip(gates)).fold(x, |a, (block, gate)| block.forward(a) * gate)
    }
}

impl Ppnet {
    /// Every task's gate values, layer by layer. All the gates read the same input, so their
    /// hidden layers run as one product (their weights side by side), each gate's output layer
    /// on its own columns: the same values as each [`GateNu::forward`].
    ///
    /// # Shapes
    /// - gate_input: `[batch, gate width + input]`; output: per task, `[batch, dims[j]]` per layer
    pub fn gate_values(&self, gate_input: Tensor<2>) -> Vec<Vec<Tensor<2>>> {
        let gates: Vec<&GateNu> = self.nets.iter().flat_map(|net| &net.gates).collect();
        let weights = gates.iter().map(|g| g.hidden.weight.val()).collect();
        let mut hidden = gate_input.matmul(Tensor::cat(weights, 1)); // [batch, Σ hidden]
        let biases: Option<Vec<Tensor<1>>> = (gates.iter())
            .map(|g| g.hidden.bias.as_ref().map(|b| b.val()))
            .collect();
        if let Some(biases) = biases {
            hidden = hidden + Tensor::cat(biases, 0).unsqueeze_dim(0);
        }
        let hidden = relu(hidden);
        let b = hidden.dims()[0];
        let mut at = 0;
        (self.nets.iter())
            .map(|net| {
                (net.gates.iter())
                    .map(|g| {
                        let width = g.hidden.weight.dims()[1];
                        let h = hidden.clone().slice([0..b, at..at + width]);
                        at += width;
                        sigmoid(g.output.forward(h)).mul_scalar(g.gamma)
                    })
                    .collect()
            })
            .collect()
    }
}

/// PPNet: each task's gated layers.
#[derive(Module, Debug)]
pub struct Ppnet {
    /// One per task.
    pub nets: Vec<PpnetTask>,
    /// The gate fields.
    #[module(skip)]
    sources: Vec<GateSource>,
}

/// PEPNet: the input, EPNet, PPNet, a tower per task.
#[derive(Module, Debug)]
pub struct Pepnet {
    /// Shared embeddings and pooling.
    pub input: InputLayer,
    /// The embedding personalisation gate, if configured.
    pub epnet: Option<Epnet>,
    /// The parameter personalisation layers, if configured.
    pub ppnet: Option<Ppnet>,
    /// Each task's tower, ending in one output.
    pub towers: Vec<Tower>,
    /// The tasks.
    #[module(skip)]
    pub tasks: Vec<TaskSpec>,
    /// What the config promised: outputs, loss terms, label rules.
    #[module(skip)]
    pub plan: ModelPlan,
}

impl Pepnet {
    /// The gate fields' values side by side, read from the per-field embeddings (`fields`, when
    /// every id field has one width) or looked up again.
    ///
    /// # Shapes
    /// - fields: `[batch, id fields, dim]`; output: `[batch, gate width]`
    fn gate_fields(
        &self,
        sources: &[GateSource],
        batch: &BatchTensors,
        fields: Option<&Tensor<3>>,
    ) -> Tensor<2> {
        let b = batch.rows;
        let vectors = match fields {
            Some(_) => Vec::new(),
            None if sources.iter().any(|s| matches!(s, GateSource::Id(_))) => self.input.field_vectors(batch),
            None => Vec::new(),
        };
        let parts = sources.iter().map(|&source| match (source, fields) {
            (GateSource::Id(f), Some(fields)) => {
                let d = fields.dims()[2];
                let index =
                    Tensor::<1, Int>::from_data(TensorData::new(vec![f as i32], [1]), &fields.device());
                fields.clone().select(1, index).reshape([b, d])
            }
            (GateSource::Id(f), None) => vectors[f].clone(),
            (GateSource::Dense(d), _) => {
                let dense = batch
                    .dense
                    .clone()
                    .expect("a dense gate field means dense columns");
                dense.slice([0..b, d..d + 1])
            }
        });
        Tensor::cat(parts.collect(), 1)
    }

    /// Each task's logit (or value).
    ///
    /// # Shapes
    /// - output: one `[batch]` per task
    pub fn logits(&self, batch: &BatchTensors) -> Vec<Tensor<1>> {
        let (x, fields) = self.input.forward_with_fields(batch); // [batch, input]
        let x = match &self.epnet {
            Some(ep) => {
                let domain = self.gate_fields(&ep.sources, batch, fields.as_ref());
                ep.gate.forward(Tensor::cat(vec![domain, x.clone().detach()], 1)) * x
            }
            None => x,
        };
        let inputs = match &self.ppnet {
            Some(pp) => {
                let uia = self.gate_fields(&pp.sources, batch, fields.as_ref());
                let gate_input = Tensor::cat(vec![uia, x.clone().detach()], 1);
                (pp.nets.iter().zip(pp.gate_values(gate_input)))
                    .map(|(net, gates)| net.forward(x.clone(), gates))
                    .collect()
            }
            None => vec![x; self.tasks.len()],
        };
        tower_logits(&self.towers, inputs, fields.as_ref())
    }
}

impl MultiTaskModel for Pepnet {
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
        let towers = towers_at_priors(&self.tasks, self.towers, label_means);
        Self { towers, ..self }
    }
}
