//! The one contract every multi-task model implements and the trainer drives.
//!
//! It sits here, in `mtl-layers`, because it needs only the batch type (from `mtl-features`)
//! and the heads; the model crates implement it and the trainer consumes it, so every arrow
//! still points down.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use mtl_features::{BatchTensors, InputLayer, LabelKind, LabelRule, TableLayout, ValidSchema};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ModelError;

/// What one model output predicts and how it is evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    /// Output name (`ctr`, `cvr`, `ctcvr`, or the task name).
    pub name: String,
    /// Binary (a probability) or regression (a value).
    pub kind: LabelKind,
    /// The target is the product of these label columns (`click AND purchase` for CTCVR).
    pub target: Vec<usize>,
    /// Evaluate only on rows where this label is 1 (CVR: clicked rows), if set.
    pub rows_where: Option<usize>,
}

impl OutputSpec {
    /// An output evaluated against one label over all rows.
    pub fn simple(name: &str, kind: LabelKind, label: usize) -> Self {
        Self {
            name: name.to_string(),
            kind,
            target: vec![label],
            rows_where: None,
        }
    }
}

/// What a model config promises before the model is built: checked against the schema and
/// the training settings before any data is read, so that a wrong key fails in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPlan {
    /// The outputs, in prediction order.
    pub outputs: Vec<OutputSpec>,
    /// The loss terms, in [`Forward::losses`] order.
    pub loss_names: Vec<String>,
    /// Rules every labelled row must follow (ESMM: a conversion only after a click).
    pub label_rules: Vec<LabelRule>,
}

/// A training forward pass: predictions and the loss terms.
#[derive(Debug, Clone)]
pub struct Forward {
    /// One `[batch]` tensor per output, in [`MultiTaskModel::outputs`] order.
    pub predictions: Vec<Tensor<1>>,
    /// One `[1]` tensor per loss term, in [`MultiTaskModel::loss_names`] order.
    pub losses: Vec<Tensor<1>>,
}

impl Forward {
    /// `Σ wᵢ · lossᵢ` (weights default to 1 when `weights` is empty).
    ///
    /// # Shapes
    /// - output: `[1]`
    pub fn total_loss(&self, weights: &[f32]) -> Tensor<1> {
        self.losses
            .iter()
            .enumerate()
            .map(|(i, l)| l.clone().mul_scalar(weights.get(i).copied().unwrap_or(1.0)))
            .reduce(|a, b| a + b)
            .expect("a model has at least one loss term")
    }
}

/// One gate's (or attention's) weights on a batch, for the gate-utilisation report.
#[derive(Debug, Clone)]
pub struct GateWeights {
    /// The gate, e.g. `click`, `level1.shared`, `purchase<-click`.
    pub name: String,
    /// What each column weighs: the experts (or vectors) the gate mixes.
    pub experts: Vec<String>,
    /// `[batch, experts]`, each row a distribution.
    pub weights: Tensor<2>,
}

/// What a model's trunk — the part every task shares — hands its branches.
#[derive(Debug, Clone)]
pub struct Trunk {
    /// The shared vector each branch reads, `[batch, width]` (the pooled embeddings).
    pub input: Tensor<2>,
    /// Stacked vectors some branches (or the head) also read, `[batch, n, dim]` (ESMM and
    /// AITM: the field embeddings a DeepFM tower takes), if any.
    pub stack: Option<Tensor<3>>,
}

impl Trunk {
    /// The input layer's output on `batch` and its field embeddings (every model that
    /// branches has this trunk).
    pub fn of_input(layer: &InputLayer, batch: &BatchTensors) -> Self {
        let (input, stack) = layer.forward_with_fields(batch); // [batch, input_dim]
        Self { input, stack }
    }

    /// A copy of both tensors cut from the graph that made them, each a leaf that takes
    /// its own gradient (a branch's pass then builds a graph of its own).
    pub fn detached(&self) -> Self {
        Self {
            input: self.input.clone().detach().require_grad(),
            stack: self.stack.clone().map(|s| s.detach().require_grad()),
        }
    }
}

/// A forward pass cut where it branches: `forward(batch) = head([branch₀(t), …, branchₙ₋₁(t)],
/// t, batch)` with `t = trunk(batch)`, each branch reading only the trunk's output and its own
/// parameters. The trainer can then run each branch's forward and backward pass on a graph of
/// its own, side by side on a CPU with several threads.
pub trait Branching: Sync {
    /// The part every branch shares (every model that branches: the input layer).
    fn trunk(&self, batch: &BatchTensors) -> Trunk;

    /// How many branches there are.
    fn branch_count(&self) -> usize;

    /// About how many multiply-adds a row costs the lightest branch's forward pass (for an
    /// MLP, its weights): whether the branches are worth a thread each.
    fn branch_work(&self) -> usize;

    /// Branch `i`'s output from the trunk's (ESMM: a tower's logit; AITM: a task's bottom;
    /// MMOE: a group's experts, experts first), in whatever layout its head reads.
    ///
    /// # Shapes
    /// - output: `[batch, width]` (ESMM, AITM) or `[n_g · batch, width]` (MMOE)
    fn branch(&self, i: usize, trunk: &Trunk) -> Tensor<2>;

    /// The predictions and loss terms from every branch's output, in branch order, and the
    /// trunk's (for what reads it past the branches, e.g. a DeepFM tower the field embeddings).
    fn head(&self, outputs: Vec<Tensor<2>>, trunk: &Trunk, batch: &BatchTensors) -> Forward;

    /// Whether one pass over the whole graph gives the cut passes' gradients bit for bit:
    /// true (the default) where the trunk's output reaches the head only through the
    /// branches and `forward` is [`Branching::forward_branched`]; false where the head reads
    /// it too (MMOE's and PLE's gates: its gradient's terms then meet in another order), for
    /// which a trainer that cuts the passes on several threads
    /// cuts them on one as well, so that the floats do not depend on the number of threads.
    fn one_pass_is_exact(&self) -> bool {
        true
    }

    /// The whole forward pass, one branch after another: the function [`MultiTaskModel::forward`]
    /// computes (ESMM and AITM: the same operations; MMOE and PLE run theirs in their own
    /// order, whose floats may differ in the last bits: [`Branching::one_pass_is_exact`]).
    fn forward_branched(&self, batch: &BatchTensors) -> Forward {
        let trunk = self.trunk(batch);
        let outputs = (0..self.branch_count()).map(|i| self.branch(i, &trunk)).collect();
        self.head(outputs, &trunk, batch)
    }
}

/// A model that predicts several tasks from one encoded batch.
pub trait MultiTaskModel: Module + Clone + std::fmt::Debug + Sync {
    /// The plan its config made when the model was built ([`ModelBuilder::plan`]): the model
    /// keeps it, and the outputs and loss terms are read from it.
    fn plan(&self) -> &ModelPlan;

    /// The outputs, in the order [`MultiTaskModel::predict`] returns them.
    fn outputs(&self) -> Vec<OutputSpec> {
        self.plan().outputs.clone()
    }

    /// Names of the loss terms, in the order [`Forward::losses`] holds them.
    fn loss_names(&self) -> Vec<String> {
        self.plan().loss_names.clone()
    }

    /// Predictions (probability or value) per output.
    ///
    /// # Shapes
    /// - output: one `[batch]` tensor per output
    fn predict(&self, batch: &BatchTensors) -> Vec<Tensor<1>>;

    /// Predictions and loss terms against the batch's labels.
    fn forward(&self, batch: &BatchTensors) -> Forward;

    /// The shared embedding/input layer.
    fn input_layer(&self) -> &InputLayer;

    /// The weights of every gate (mixtures of experts) or attention (information transfer)
    /// on a batch; none for a model without gates.
    ///
    /// # Shapes
    /// - each: `[batch, experts]`
    fn gates(&self, batch: &BatchTensors) -> Vec<GateWeights> {
        let _ = batch;
        Vec::new()
    }

    /// The forward pass cut at its branches ([`Branching`]), for a model whose forward pass
    /// is the function of [`Branching::forward_branched`] (and whose cut passes give one
    /// pass's floats, or say they do not: [`Branching::one_pass_is_exact`]); none (the
    /// default) for one that does not branch.
    fn branching(&self) -> Option<&dyn Branching> {
        None
    }

    /// Whether [`MultiTaskModel::with_label_priors`] uses the labels' means (the trainer reads
    /// them only for such a model).
    const USES_LABEL_PRIORS: bool = false;

    /// The model started at its labels' base rates, before the first step: `label_means[i]`
    /// is label column `i`'s mean over the training rows. A model whose outputs have a
    /// natural prior sets their biases to it (every registered model: see
    /// [`crate::tasks::towers_at_priors`]); the default keeps the random start.
    fn with_label_priors(self, label_means: &[f64]) -> Self {
        let _ = label_means;
        self
    }
}

/// A model's configuration (the `[model]` table of a run config, less its `type`): all a
/// registry needs to read, check, describe and build the model. A new model implements it
/// for its config type and takes one line in the registry (`mtl-models`).
pub trait ModelBuilder: Clone + std::fmt::Debug + PartialEq + Serialize + DeserializeOwned {
    /// The model it builds.
    type Model: MultiTaskModel + 'static;

    /// One line on what the model is, for `mtl models`.
    const ABOUT: &'static str;

    /// Checks the config against `schema` and says what the model outputs, without building
    /// it (so that a wrong key fails before any data is read).
    fn plan(&self, schema: &ValidSchema) -> Result<ModelPlan, ModelError>;

    /// Builds the model for `schema` with the embedding `layout`.
    fn init(
        &self,
        schema: &ValidSchema,
        layout: &TableLayout,
        device: &Device,
    ) -> Result<Self::Model, ModelError>;
}
