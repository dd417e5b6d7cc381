//! DIN's local activation unit (Zhou et al., *Deep Interest Network*, KDD 2018) as a pooling of
//! sequence fields: each present id's weight comes from an MLP over the query (the target
//! item), the id's embedding, their difference and their product; the pooled vector is the
//! weighted sum. DIN leaves the weights raw (no softmax, so the sum keeps the intensity of the
//! interest); `softmax = true` normalises them over the present ids.
//!
//! ```text
//! wᵢ = MLP([q, kᵢ, q − kᵢ, q ⊙ kᵢ]) · maskᵢ          (softmax over the present ids, optionally)
//! v  = Σᵢ wᵢ kᵢ
//! ```

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

/// A padded position's score before the softmax: far below any real score.
const MASKED_SCORE: f32 = -1e9;

/// The first layer `W [q, k, q − k, q ⊙ k] + c` at every position, computed by blocks of `W`
/// as `(W_q + W_d) q + (W_k − W_d) k + W_p (q ⊙ k) + c` — the same sums, without repeating
/// `q` along the sequence (an op burn's ONNX exporter cannot lower).
///
/// # Shapes
/// - query: `[batch, width]`; keys: `[batch, len, width]`; output: `[batch · len, out]`
fn first_layer(layer: &Linear, query: Tensor<2>, keys: Tensor<3>) -> Tensor<2> {
    let [b, len, d] = keys.dims();
    let w = layer.weight.val(); // [4 · width, out]
    let out = w.dims()[1];
    let block = |i: usize| w.clone().slice([i * d..(i + 1) * d, 0..out]);
    let (w_q, w_k, w_d, w_p) = (block(0), block(1), block(2), block(3));
    let from_q = query.clone().matmul(w_q + w_d.clone()).reshape([b, 1, out]);
    let from_k = keys
        .clone()
        .reshape([b * len, d])
        .matmul(w_k - w_d)
        .reshape([b, len, out]);
    let product = (query.reshape([b, 1, d]) * keys)
        .reshape([b * len, d])
        .matmul(w_p);
    let mut h = (from_k + from_q).reshape([b * len, out]) + product;
    if let Some(bias) = &layer.bias {
        h = h + bias.val().reshape([1, out]);
    }
    h
}

/// The attention unit of one sequence field.
#[derive(Module, Debug)]
pub struct TargetAttention {
    /// The MLP's hidden layers (ReLU), the first over `4 · width` inputs.
    pub hidden: Vec<Linear>,
    /// The score: one output.
    pub output: Linear,
    /// Softmax over the present ids (else DIN's raw weights).
    #[module(skip)]
    pub softmax: bool,
}

impl TargetAttention {
    /// A unit for keys `width` wide with hidden layers `dims`.
    pub fn new(width: usize, dims: &[usize], softmax: bool, device: &Device) -> Self {
        let mut hidden = Vec::with_capacity(dims.len());
        let mut w = 4 * width;
        for &d in dims {
            hidden.push(LinearConfig::new(w, d).init(device));
            w = d;
        }
        Self {
            hidden,
            output: LinearConfig::new(w, 1).init(device),
            softmax,
        }
    }

    /// Each position's weight (zero at padding; a distribution over the present ids with
    /// `softmax`).
    ///
    /// # Shapes
    /// - query: `[batch, width]`; keys: `[batch, len, width]`; mask: `[batch, len]` (0/1)
    /// - output: `[batch, len]`
    pub fn weights(&self, query: Tensor<2>, keys: Tensor<3>, mask: Tensor<2>) -> Tensor<2> {
        let [b, len, _] = keys.dims();
        let score = match self.hidden.split_first() {
            Some((first, rest)) => {
                let mut h = relu(first_layer(first, query, keys));
                for layer in rest {
                    h = relu(layer.forward(h));
                }
                self.output.forward(h)
            }
            None => first_layer(&self.output, query, keys),
        };
        let score = score.reshape([b, len]);
        if !self.softmax {
            return score * mask;
        }
        // softmax from ops burn's ONNX exporter lowers: padded positions pushed far below
        let score = score + (mask - 1.0).mul_scalar(-MASKED_SCORE);
        let (max, _) = score.clone().max_dim_with_indices(1);
        let e = (score - max).exp();
        e.clone() / e.sum_dim(1)
    }

    /// The pooled vector `Σᵢ wᵢ kᵢ`.
    ///
    /// # Shapes
    /// - query: `[batch, width]`; keys: `[batch, len, width]` (zero at padding); mask:
    ///   `[batch, len]`
    /// - output: `[batch, width]`
    pub fn forward(&self, query: Tensor<2>, keys: Tensor<3>, mask: Tensor<2>) -> Tensor<2> {
        let [b, _, width] = keys.dims();
        let w = self.weights(query, keys.clone(), mask);
        (w.unsqueeze_dim::<3>(2) * keys).sum_dim(1).reshape([b, width])
    }
}
