//! The experts of a mixture, evaluated together instead of one MLP at a time.
//!
//! ```text
//! layer 1:   H = act(BN(x W₁ + b₁))         W₁: [in, n·d₁]   — every expert's first Linear side by side
//! layer l:   H_k = act(BN(H_k W_lk + b_lk))  W_l: [n, d, d']  — one batched matmul over the experts
//! ```
//!
//! (Captured for ONNX, the later layers run each expert's product on its own, batch first:
//! [`with_experts_batch_first`].)
//!
//! This is the same function as `n` separate torch-rechub MLPs (`Linear → BatchNorm →
//! activation → Dropout` per layer) with the same parameter count: every output column of the
//! fused first Linear has its own weights, and BatchNorm normalises each feature on its own, so
//! stacking features changes nothing; [`Experts::expert`] takes expert `k` back out as an
//! [`Mlp`] (tested to give the same outputs). It replaces 8 small matrix products and their
//! element-wise ops per layer by one larger product, which is what the small configurations
//! (experts of width 16) spend their time on.

use crate::mlp::{batch_norm_over, running_affine};
use crate::{Activation, Mlp, MlpBlock, MlpSpec};
use burn::module::{Module, Param, RunningState};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Initializer, Linear};
use burn::tensor::{Device, Tensor};

/// The most experts a config may ask for.
pub const MAX_EXPERTS: usize = 1024;

/// The widest first layer of expert groups [`Experts::forward_together`] runs as one product.
/// Measured on PLE (`cargo xtask bench --models ple`, 1M rows, 2 threads, 2 seeds): the
/// example's three groups of 16-wide experts (80 columns in all) trained 13 % faster as one
/// product; the large configuration's (5 × 256 = 1280 columns) 5 % slower, its inference 15 %
/// slower — so wide groups keep their own products.
pub const FUSED_WIDTH: usize = 256;

thread_local! {
    static BATCH_FIRST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the experts' later layers computed batch first, one product per expert
/// ([`ExpertLayer::forward_batch_first`]): the same function in the form burn's ONNX exporter
/// can lower (it has no axis swap). Elsewhere the batched product stays: on MMOE large
/// inference it is ~10 % faster (`mtl predict`, 1M rows, 13.5–14.1 s against 15.1–15.6 s).
pub fn with_experts_batch_first<R>(f: impl FnOnce() -> R) -> R {
    crate::mlp::with_flag(&BATCH_FIRST, f)
}

/// A mixture's softmax gate over `n` experts, as torch-rechub builds it: `Linear →
/// BatchNorm (optional) → softmax`; `init(input_dim, false, device)` builds it.
pub fn softmax_gate(n: usize, batch_norm: bool) -> MlpSpec {
    MlpSpec::new([n])
        .with_activation(Activation::Softmax)
        .with_batch_norm(batch_norm)
}

/// burn's (and PyTorch's) Linear initialisation: uniform in ±1/√fan_in, weights and bias.
fn linear_init() -> Initializer {
    Initializer::KaimingUniform {
        gain: 1.0 / 3f64.sqrt(),
        fan_out_only: false,
    }
}

/// A hidden layer after the first, for every expert at once.
#[derive(Module, Debug)]
pub struct ExpertLayer {
    /// Per-expert weights `[n, in, out]`.
    pub weight: Param<Tensor<3>>,
    /// Per-expert biases `[n, 1, out]`.
    pub bias: Param<Tensor<3>>,
    /// BatchNorm over the `n · out` features (expert-major), if the spec has it.
    pub norm: Option<BatchNorm>,
    /// Dropout (active only while training).
    pub dropout: Dropout,
    /// The activation.
    #[module(skip)]
    pub activation: Activation,
}

impl ExpertLayer {
    /// # Shapes
    /// - input: `[n, batch, in]`
    /// - output: `[n, batch, out]`
    pub fn forward(&self, h: Tensor<3>) -> Tensor<3> {
        let Some((scale, shift)) = self.norm.as_ref().and_then(|n| running_affine(n, &h.device())) else {
            return self.after_product(h.matmul(self.weight.val()) + self.bias.val());
        };
        // inference: BatchNorm folded into the weights and biases, as in `MlpBlock::forward`
        let [n, _, out] = self.bias.dims();
        let (scale, shift) = (scale.reshape([n, 1, out]), shift.reshape([n, 1, out]));
        let weight = self.weight.val() * scale.clone();
        let bias = self.bias.val() * scale + shift;
        self.activate(h.matmul(weight) + bias)
    }

    /// The layer after its product: BatchNorm over the experts' features (if any),
    /// activation, dropout.
    ///
    /// # Shapes
    /// - input, output: `[n, batch, out]`
    pub fn after_product(&self, mut y: Tensor<3>) -> Tensor<3> {
        if let Some(norm) = &self.norm {
            y = batch_norm_over(norm, y, 1);
        }
        self.activate(y)
    }

    /// The activation and dropout.
    ///
    /// # Shapes
    /// - input, output: `[n, batch, out]`
    fn activate(&self, y: Tensor<3>) -> Tensor<3> {
        let [n, b, out] = y.dims();
        let y = self
            .activation
            .forward(y.reshape([n * b, out]))
            .reshape([n, b, out]);
        self.dropout.forward(y)
    }

    /// The same layer with each expert's product on its own and the batch first: no axis
    /// swap, which burn's ONNX exporter cannot lower (see [`with_experts_batch_first`]).
    ///
    /// # Shapes
    /// - input: `[batch, n, in]`
    /// - output: `[batch, n, out]`
    pub fn forward_batch_first(&self, h: Tensor<3>) -> Tensor<3> {
        let [b, n, d_in] = h.dims();
        let d_out = self.weight.dims()[2];
        let parts = (0..n)
            .map(|k| {
                let x = h.clone().slice([0..b, k..k + 1, 0..d_in]).reshape([b, d_in]);
                let w = self.weight.val().slice([k..k + 1, 0..d_in, 0..d_out]);
                let bias = self.bias.val().slice([k..k + 1, 0..1, 0..d_out]);
                (x.matmul(w.reshape([d_in, d_out])) + bias.reshape([1, d_out])).reshape([b, 1, d_out])
            })
            .collect();
        let mut y = Tensor::cat(parts, 1);
        if let Some(norm) = &self.norm {
            y = batch_norm_over(norm, y, 0);
        }
        let y = self
            .activation
            .forward(y.reshape([b * n, d_out]))
            .reshape([b, n, d_out]);
        self.dropout.forward(y)
    }
}

/// `n` expert MLPs over the same input, evaluated together.
#[derive(Module, Debug)]
pub struct Experts {
    /// First hidden layer of every expert, side by side: `[in] → [n · d₁]`.
    pub first: MlpBlock,
    /// The later hidden layers, each for all experts at once.
    pub layers: Vec<ExpertLayer>,
    /// Number of experts.
    #[module(skip)]
    pub n: usize,
}

impl Experts {
    /// `n` experts with hidden layers `spec` (at least one) over inputs of width `input_dim`.
    pub fn new(n: usize, spec: &MlpSpec, input_dim: usize, device: &Device) -> Self {
        let first_dim = spec.dims[0];
        let norm = |features: usize| {
            spec.batch_norm
                .then(|| BatchNormConfig::new(features).init(device))
        };
        // one MLP layer of width n · d₁, built as every MLP layer is
        let first = MlpSpec {
            dims: vec![n * first_dim],
            ..spec.clone()
        }
        .init(input_dim, false, device)
        .blocks
        .pop()
        .expect("a one-layer spec has one block");
        let layers = spec
            .dims
            .windows(2)
            .map(|w| {
                let (d_in, d_out) = (w[0], w[1]);
                ExpertLayer {
                    weight: linear_init().init_with([n, d_in, d_out], Some(d_in), Some(d_out), device),
                    bias: linear_init().init_with([n, 1, d_out], Some(d_in), Some(d_out), device),
                    norm: norm(n * d_out),
                    dropout: DropoutConfig::new(spec.dropout).init(),
                    activation: spec.activation,
                }
            })
            .collect();
        Self { first, layers, n }
    }

    /// Number of experts.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are no experts (never, for a built model).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Every expert's output.
    ///
    /// # Shapes
    /// - input: `[batch, in]`
    /// - output: `[batch, n, out]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<3> {
        let h = self.first_layer(x);
        if self.layers.is_empty() {
            return h;
        }
        if BATCH_FIRST.get() {
            // captured for ONNX: batch first throughout (what burn's exporter can express)
            return self
                .layers
                .iter()
                .fold(h, |h, layer| layer.forward_batch_first(h));
        }
        self.later_layers(h.swap_dims(0, 1)).swap_dims(0, 1)
    }

    /// The first layer's output, every expert's side by side.
    ///
    /// # Shapes
    /// - input: `[batch, in]`
    /// - output: `[batch, n, d₁]`
    fn first_layer(&self, x: Tensor<2>) -> Tensor<3> {
        let b = x.dims()[0];
        let h = self.first.forward(x); // [batch, n · d₁]
        let d1 = h.dims()[1] / self.n;
        h.reshape([b, self.n, d1])
    }

    /// The later layers over the first's output, experts first.
    ///
    /// # Shapes
    /// - input: `[n, batch, d₁]`
    /// - output: `[n, batch, out]`
    fn later_layers(&self, h: Tensor<3>) -> Tensor<3> {
        self.layers.iter().fold(h, |h, layer| layer.forward(h))
    }

    /// Every expert's output, experts first and flat (the layout the later layers' batched
    /// products leave, so no copy); the same values as [`Experts::forward`].
    ///
    /// # Shapes
    /// - input: `[batch, in]`
    /// - output: `[n · batch, out]`, expert `k`'s rows `k · batch .. (k + 1) · batch`
    pub fn forward_flat(&self, x: Tensor<2>) -> Tensor<2> {
        let h = self.later_layers(self.first_layer(x).swap_dims(0, 1)); // [n, batch, out]
        let [n, b, out] = h.dims();
        h.reshape([n * b, out])
    }

    /// Several groups' experts as one mixture: each group's outputs in group order.
    ///
    /// # Shapes
    /// - input: `[batch, in]`
    /// - output: `[batch, Σ n_g, out]`
    pub fn forward_groups(groups: &[&Experts], x: Tensor<2>) -> Tensor<3> {
        if let [one] = groups {
            return one.forward(x);
        }
        if BATCH_FIRST.get() {
            let outputs = groups.iter().map(|g| g.forward(x.clone())).collect();
            return Tensor::cat(outputs, 1);
        }
        let b = x.dims()[0];
        let flat = groups.iter().map(|g| g.forward_flat(x.clone())).collect();
        Self::unflatten(Tensor::cat(flat, 0), b)
    }

    /// [`Experts::forward_flat`]'s layout (of one group or several, concatenated) as
    /// [`Experts::forward`]'s: a view, no copy.
    ///
    /// # Shapes
    /// - input: `[n · batch, out]`
    /// - output: `[batch, n, out]`
    pub fn unflatten(flat: Tensor<2>, batch: usize) -> Tensor<3> {
        let [rows, out] = flat.dims();
        flat.reshape([rows / batch, batch, out]).swap_dims(0, 1)
    }

    /// Several groups of experts over the same input (PLE's first level: each task's own
    /// experts and the shared ones): their first layers' products as one (the weights side by
    /// side) when together at most [`FUSED_WIDTH`] wide, each group's BatchNorm, activation,
    /// dropout and later layers on its own features. The same function as each group's
    /// [`Experts::forward`]; the parameters stay the groups' own.
    ///
    /// # Shapes
    /// - input: `[batch, in]`
    /// - output: one `[batch, n_g, out]` per group
    pub fn forward_together(groups: &[&Experts], x: Tensor<2>) -> Vec<Tensor<3>> {
        let width: usize = groups.iter().map(|g| g.first.linear.weight.dims()[1]).sum();
        if groups.len() < 2 || width > FUSED_WIDTH || BATCH_FIRST.get() {
            return groups.iter().map(|g| g.forward(x.clone())).collect();
        }
        let b = x.dims()[0];
        let weights = groups.iter().map(|g| g.first.linear.weight.val()).collect();
        let biases: Option<Vec<Tensor<1>>> = (groups.iter())
            .map(|g| g.first.linear.bias.as_ref().map(|b| b.val()))
            .collect();
        let mut y = x.matmul(Tensor::cat(weights, 1)); // [batch, Σ n_g · d₁]
        if let Some(biases) = biases {
            y = y + Tensor::cat(biases, 0).unsqueeze_dim(0);
        }
        let mut start = 0;
        let mut hs: Vec<Tensor<3>> = Vec::with_capacity(groups.len());
        for g in groups {
            let width = g.first.linear.weight.dims()[1];
            let h = g
                .first
                .after_linear(y.clone().slice([0..b, start..start + width]));
            hs.push(h.reshape([b, g.n, width / g.n]).swap_dims(0, 1)); // [n_g, batch, d₁]
            start += width;
        }
        (groups.iter().zip(hs))
            .map(|(g, h)| g.later_layers(h).swap_dims(0, 1))
            .collect()
    }

    /// Expert `k` on its own, as the MLP it is part of (weights and statistics copied out).
    pub fn expert(&self, k: usize) -> Mlp {
        assert!(k < self.n, "expert {k} of {}", self.n);
        let d1 = self.first.linear.weight.dims()[1] / self.n;
        let cols = k * d1..(k + 1) * d1;
        let linear = &self.first.linear;
        let first = MlpBlock {
            linear: Linear {
                weight: leaf(
                    linear
                        .weight
                        .val()
                        .slice([0..linear.weight.dims()[0], cols.clone()]),
                ),
                bias: linear.bias.as_ref().map(|b| leaf(b.val().slice([cols.clone()]))),
            },
            norm: self.first.norm.as_ref().map(|n| norm_slice(n, cols.clone())),
            dropout: self.first.dropout.clone(),
            activation: self.first.activation,
        };
        let mut blocks = vec![first];
        for layer in &self.layers {
            let [_, d_in, d_out] = layer.weight.dims();
            blocks.push(MlpBlock {
                linear: Linear {
                    weight: leaf(
                        layer
                            .weight
                            .val()
                            .slice([k..k + 1, 0..d_in, 0..d_out])
                            .reshape([d_in, d_out]),
                    ),
                    bias: Some(leaf(
                        layer
                            .bias
                            .val()
                            .slice([k..k + 1, 0..1, 0..d_out])
                            .reshape([d_out]),
                    )),
                },
                norm: layer
                    .norm
                    .as_ref()
                    .map(|n| norm_slice(n, k * d_out..(k + 1) * d_out)),
                dropout: layer.dropout.clone(),
                activation: layer.activation,
            });
        }
        Mlp { blocks, output: None }
    }
}

/// The BatchNorm of the features `range` of `norm`.
fn norm_slice(norm: &BatchNorm, range: std::ops::Range<usize>) -> BatchNorm {
    let part = |t: Tensor<1>| t.slice([range.clone()]);
    BatchNorm {
        gamma: leaf(part(norm.gamma.val())),
        beta: leaf(part(norm.beta.val())),
        training: norm.training.clone(),
        running_mean: RunningState::new(part(norm.running_mean.value())),
        running_var: RunningState::new(part(norm.running_var.value())),
        momentum: norm.momentum,
        epsilon: norm.epsilon,
    }
}

/// A copy of `t` as a new parameter (a leaf, cut from the graph it came from).
fn leaf<const D: usize>(t: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(t.detach())
}
