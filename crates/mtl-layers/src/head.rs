//! Prediction heads and per-task losses, computed from logits so that a saturated sigmoid
//! never produces NaN.

use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::{log_sigmoid, sigmoid};
use mtl_features::LabelKind;

/// Turns a tower's raw output into the task's prediction: sigmoid for binary, identity for
/// regression.
///
/// # Shapes
/// - logit: `[batch]`; output: `[batch]`
pub fn predict(logit: Tensor<1>, kind: LabelKind) -> Tensor<1> {
    match kind {
        LabelKind::Binary => sigmoid(logit),
        LabelKind::Regression => logit,
    }
}

/// Binary cross-entropy of `label ∈ {0,1}` against `σ(logit)` per row, from the logit:
/// `−[y·log σ(x) + (1−y)·log σ(−x)]`.
///
/// # Shapes
/// - logit, label, output: `[batch]`
pub fn bce_rows(logit: Tensor<1>, label: Tensor<1>) -> Tensor<1> {
    bce_rows_from_log_probs(log_sigmoid(logit.clone()), log_sigmoid(logit.neg()), label)
}

/// Binary cross-entropy per row from `log p` and `log(1 − p)` given separately (both finite).
///
/// # Shapes
/// - log_p, log_not_p, label, output: `[batch]`
pub fn bce_rows_from_log_probs(log_p: Tensor<1>, log_not_p: Tensor<1>, label: Tensor<1>) -> Tensor<1> {
    let not_label = label.clone().neg().add_scalar(1.0);
    (label * log_p + not_label * log_not_p).neg()
}

/// Mean binary cross-entropy of the rows ([`bce_rows`]'s mean).
///
/// # Shapes
/// - logit, label: `[batch]`; output: `[1]`
pub fn bce_with_logits(logit: Tensor<1>, label: Tensor<1>) -> Tensor<1> {
    bce_rows(logit, label).mean()
}

/// Mean squared error.
///
/// # Shapes
/// - prediction, label: `[batch]`; output: `[1]`
pub fn mse(prediction: Tensor<1>, label: Tensor<1>) -> Tensor<1> {
    (prediction - label).square().mean()
}

/// The loss of one task per row from its logit: BCE for binary, squared error for regression.
///
/// # Shapes
/// - logit, label, output: `[batch]`
pub fn task_loss_rows(logit: Tensor<1>, label: Tensor<1>, kind: LabelKind) -> Tensor<1> {
    match kind {
        LabelKind::Binary => bce_rows(logit, label),
        LabelKind::Regression => (logit - label).square(),
    }
}

/// `log(e^a + e^b)` element-wise, stable for large magnitudes.
///
/// # Shapes
/// - a, b, output: `[batch]`
pub fn log_add_exp(a: Tensor<1>, b: Tensor<1>) -> Tensor<1> {
    let m = a.clone().max_pair(b.clone()).detach();
    m.clone() + ((a - m.clone()).exp() + (b - m).exp()).log()
}

/// An output layer starting at a prior: its bias set to `bias` (a logit for a sigmoid head)
/// and, when `zero_weights`, its weights set to zero, so that it starts at `bias` on every
/// row. Parameter ids are kept; both stay trainable.
pub fn output_at_prior(mut linear: Linear, bias: f64, zero_weights: bool) -> Linear {
    linear.bias =
        (linear.bias).map(|b| b.map(|t| t.zeros_like().add_scalar(bias).detach().set_require_grad(true)));
    if zero_weights {
        linear.weight = (linear.weight).map(|t| t.zeros_like().detach().set_require_grad(true));
    }
    linear
}

/// `ln(p / (1 − p))` with `p` clamped to `[eps, 1 − eps]`, so that 0 and 1 give finite logits.
pub fn logit_clamped(p: f64, eps: f64) -> f64 {
    let p = p.clamp(eps, 1.0 - eps);
    (p / (1.0 - p)).ln()
}

#[cfg(test)]
mod tests {
    use super::logit_clamped;

    #[test]
    fn logit_inverts_the_sigmoid_and_clamps_the_ends() {
        assert!((logit_clamped(0.25, 1e-4) - (1.0f64 / 3.0).ln()).abs() < 1e-12);
        assert!((logit_clamped(0.5, 1e-4)).abs() < 1e-12);
        let floor = (1e-4f64 / (1.0 - 1e-4)).ln();
        assert!((logit_clamped(0.0, 1e-4) - floor).abs() < 1e-12);
        assert!((logit_clamped(1.0, 1e-4) + floor).abs() < 1e-12);
    }
}
