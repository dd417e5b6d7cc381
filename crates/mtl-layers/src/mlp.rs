//! The MLP block, matching torch-rechub's `MLP` so configs translate one to one:
//! per hidden dim `Linear → BatchNorm (optional) → activation → Dropout`, then an optional
//! final `Linear` to one output.

use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Activation after each hidden layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// max(0, x).
    #[default]
    Relu,
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// tanh(x).
    Tanh,
    /// Softmax over the features of each row.
    Softmax,
    /// x.
    Identity,
}

impl Activation {
    /// Applies the activation to `[batch, features]`.
    pub fn forward(self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Relu => activation::relu(x),
            Self::Sigmoid => activation::sigmoid(x),
            Self::Tanh => activation::tanh(x),
            Self::Softmax => softmax_rows(x),
            Self::Identity => x,
        }
    }
}

/// Softmax over the features of each row. Training (an autodiff device) uses burn's fused
/// op; inference computes the same formula — the row's max subtracted, `exp`, divided by the
/// row's sum — from ops burn's ONNX exporter lowers (it has no lowering for softmax).
///
/// # Shapes
/// - input, output: `[batch, features]`
pub fn softmax_rows(x: Tensor<2>) -> Tensor<2> {
    if x.device().is_autodiff() {
        return activation::softmax(x, 1);
    }
    let (max, _) = x.clone().max_dim_with_indices(1);
    let e = (x - max).exp();
    e.clone() / e.sum_dim(1)
}

/// The widest layer a config may ask for (a guard against typos such as `dims = [2560000]`
/// that would allocate gigabytes before the first step).
pub const MAX_WIDTH: usize = 65_536;

fn default_true() -> bool {
    true
}

/// Configuration of an MLP (the TOML form: `dims`, `activation`, `dropout`, `batch_norm`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpSpec {
    /// Hidden layer widths.
    pub dims: Vec<usize>,
    /// Activation after each hidden layer.
    #[serde(default)]
    pub activation: Activation,
    /// Dropout probability after each hidden layer.
    #[serde(default)]
    pub dropout: f64,
    /// BatchNorm after each hidden Linear (torch-rechub always has it).
    #[serde(default = "default_true")]
    pub batch_norm: bool,
}

impl MlpSpec {
    /// Hidden layers `dims` with torch-rechub's defaults (ReLU, no dropout, BatchNorm).
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Self {
            dims: dims.into(),
            activation: Activation::Relu,
            dropout: 0.0,
            batch_norm: true,
        }
    }

    /// The same spec with another activation.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// The same spec with or without BatchNorm.
    pub fn with_batch_norm(mut self, batch_norm: bool) -> Self {
        self.batch_norm = batch_norm;
        self
    }

    /// Checks the values a TOML file can get wrong: every width at least 1 (and at most
    /// [`MAX_WIDTH`]), dropout a probability below 1. `key` names the spec in the message,
    /// e.g. `model.ctr_tower`.
    pub fn check(&self, key: &str) -> Result<(), ModelError> {
        for (i, &dim) in self.dims.iter().enumerate() {
            if dim == 0 || dim > MAX_WIDTH {
                return Err(ModelError::Invalid {
                    key: format!("{key}.dims[{i}]"),
                    message: format!("= {dim}: a layer width must be between 1 and {MAX_WIDTH}"),
                });
            }
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(ModelError::Invalid {
                key: format!("{key}.dropout"),
                message: format!(
                    "= {}: a dropout probability must be at least 0 and below 1",
                    self.dropout
                ),
            });
        }
        Ok(())
    }

    /// Output width: the last hidden dim, or 1 with an output layer.
    pub fn output_dim(&self, input_dim: usize, output_layer: bool) -> usize {
        if output_layer {
            1
        } else {
            self.dims.last().copied().unwrap_or(input_dim)
        }
    }

    /// Builds the MLP on `device`.
    pub fn init(&self, input_dim: usize, output_layer: bool, device: &Device) -> Mlp {
        let mut blocks = Vec::with_capacity(self.dims.len());
        let mut width = input_dim;
        for &dim in &self.dims {
            blocks.push(MlpBlock {
                linear: LinearConfig::new(width, dim).init(device),
                norm: self.batch_norm.then(|| BatchNormConfig::new(dim).init(device)),
                dropout: DropoutConfig::new(self.dropout).init(),
                activation: self.activation,
            });
            width = dim;
        }
        Mlp {
            blocks,
            output: output_layer.then(|| LinearConfig::new(width, 1).init(device)),
        }
    }
}

/// One hidden layer: Linear → BatchNorm? → activation → Dropout.
#[derive(Module, Debug)]
pub struct MlpBlock {
    /// The affine map.
    pub linear: Linear,
    /// Optional batch normalisation.
    pub norm: Option<BatchNorm>,
    /// Dropout (active only while training).
    pub dropout: Dropout,
    /// The activation.
    #[module(skip)]
    pub activation: Activation,
}

impl MlpBlock {
    /// # Shapes
    /// - input: `[batch, in]`
    /// - output: `[batch, out]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let Some((scale, shift)) = self.norm.as_ref().and_then(|n| running_affine(n, &x.device())) else {
            return self.after_linear(self.linear.forward(x));
        };
        // BatchNorm by its running statistics is `y · scale + shift`: folded into the
        // Linear's weights and bias, one pass over the activations instead of three
        let weight = self.linear.weight.val() * scale.clone().unsqueeze_dim(0);
        let bias = match &self.linear.bias {
            Some(bias) => bias.val() * scale + shift,
            None => shift,
        };
        self.activate(x.matmul(weight) + bias.unsqueeze_dim(0))
    }

    /// The block after its Linear: BatchNorm (if any), activation, dropout.
    ///
    /// # Shapes
    /// - input, output: `[batch, out]`
    pub fn after_linear(&self, mut x: Tensor<2>) -> Tensor<2> {
        if let Some(norm) = &self.norm {
            x = batch_norm_rows(norm, x);
        }
        self.activate(x)
    }

    /// The activation and dropout.
    ///
    /// # Shapes
    /// - input, output: `[batch, out]`
    fn activate(&self, y: Tensor<2>) -> Tensor<2> {
        self.dropout.forward(self.activation.forward(y))
    }
}

/// A stack of [`MlpBlock`]s with an optional final Linear to one output.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Hidden layers.
    pub blocks: Vec<MlpBlock>,
    /// Final Linear to one output (a logit), if any.
    pub output: Option<Linear>,
}

impl Mlp {
    /// # Shapes
    /// - input: `[batch, in]`
    /// - output: `[batch, last dim]`, or `[batch, 1]` with an output layer
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = self.blocks.iter().fold(x, |x, block| block.forward(x));
        match &self.output {
            Some(linear) => linear.forward(x),
            None => x,
        }
    }
}

thread_local! {
    static RUNNING_STATS_FROZEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every BatchNorm of this crate still normalising by the batch's statistics
/// (training mode) but leaving its running statistics as they are: for extra forward passes
/// over a batch already counted (the trainer's per-task gradient norms).
pub fn with_running_stats_frozen<R>(f: impl FnOnce() -> R) -> R {
    with_flag(&RUNNING_STATS_FROZEN, f)
}

/// Runs `f` with this thread's `flag` set, then puts it back as it was.
pub(crate) fn with_flag<R>(
    flag: &'static std::thread::LocalKey<std::cell::Cell<bool>>,
    f: impl FnOnce() -> R,
) -> R {
    let before = flag.replace(true);
    let out = f();
    flag.set(before);
    out
}

/// burn's [`BatchNorm`] on `[batch, features]`, computed along dim 0.
///
/// Same parameters, running statistics (momentum, biased batch variance) and results as
/// `norm.forward(x)`, but burn's version transposes the activations to `[features, batch]`
/// for each statistic, forward and backward; on flex those copies took ~23 % of a training
/// step of the large configs (perf, ESMM large). Here the statistics are row reductions and
/// the output is one scale and shift per feature.
///
/// # Shapes
/// - input: `[batch, features]`
/// - output: `[batch, features]`
pub fn batch_norm_rows(norm: &BatchNorm, x: Tensor<2>) -> Tensor<2> {
    batch_norm_over(norm, x, 0)
}

/// burn's [`BatchNorm`] with the batch along dim `batch_dim` and every other dim a feature:
/// statistics are taken over `batch_dim` alone, and `norm`'s parameters and running statistics
/// (length = the product of the other dims) are laid out in the row-major order of those dims.
/// `batch_norm_over(norm, x, 0)` on `[batch, features]` is [`batch_norm_rows`]; on
/// `[experts, batch, features]` with `batch_dim` 1 it normalises every expert's every feature
/// on its own, as `experts` separate BatchNorms would.
///
/// # Shapes
/// - input: any `[…, batch, …]`
/// - output: the same
pub fn batch_norm_over<const D: usize>(norm: &BatchNorm, x: Tensor<D>, batch_dim: usize) -> Tensor<D> {
    let mut stats = x.dims();
    stats[batch_dim] = 1;
    let features: usize = stats.iter().product();
    if let Some((scale, shift)) = running_affine(norm, &x.device()) {
        return x * scale.reshape(stats) + shift.reshape(stats);
    }
    let gamma = norm.gamma.val().reshape(stats);
    let beta = norm.beta.val().reshape(stats);
    let mean = x.clone().mean_dim(batch_dim);
    let centered = x - mean.clone();
    let variance = centered.clone().square().mean_dim(batch_dim);
    let scale = gamma * (variance.clone() + norm.epsilon).sqrt().recip();
    let running = |state: &burn::module::RunningState<Tensor<1>>, batch: Tensor<D>| {
        let old = state.value_sync().to_device(&batch.device());
        let batch = batch.detach().reshape([features]);
        state.update(
            old.mul_scalar(1.0 - norm.momentum)
                .add(batch.mul_scalar(norm.momentum))
                .detach(),
        );
    };
    if !RUNNING_STATS_FROZEN.get() {
        running(&norm.running_mean, mean);
        running(&norm.running_var, variance);
    }
    centered * scale + beta
}

/// BatchNorm by its running statistics (inference) as one scale and shift per feature,
/// `BN(y) = y · scale + shift`; `None` while it normalises by the batch's statistics
/// (training on an autodiff device).
///
/// # Shapes
/// - output: `[features]` each
pub(crate) fn running_affine(norm: &BatchNorm, device: &Device) -> Option<(Tensor<1>, Tensor<1>)> {
    if device.is_autodiff() && norm.training.is_enabled() {
        return None;
    }
    let mean = norm.running_mean.value().to_device(device);
    let variance = norm.running_var.value().to_device(device);
    // a division, not `recip()`: burn's ONNX exporter lowers `Div` and has no `Recip`
    let scale = norm.gamma.val() / (variance + norm.epsilon).sqrt();
    let shift = norm.beta.val() - mean * scale.clone();
    Some((scale, shift))
}
