//! The row-wise Adam's settings and the constants of one step, shared by the host table and
//! the device table.

/// The row-wise Adam's settings: burn's `Adam` formulation (its ε is scaled by
/// `sqrt(1 − β₂ᵗ)`), with L2 weight decay in the gradient or, `decoupled`, AdamW's decay in
/// the update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowAdamConfig {
    /// First moment's decay β₁.
    pub beta_1: f32,
    /// Second moment's decay β₂.
    pub beta_2: f32,
    /// ε (burn's default is 1e-5).
    pub epsilon: f32,
    /// Weight decay of the table's rows.
    pub weight_decay: f32,
    /// AdamW's decoupled decay instead of L2 in the gradient.
    pub decoupled: bool,
    /// Gradient-norm clipping threshold over a step's rows (burn's `clip_by_norm`).
    pub clip_norm: Option<f32>,
}

impl Default for RowAdamConfig {
    /// burn's Adam defaults: β 0.9 and 0.999, ε 1e-5, no decay, no clipping.
    fn default() -> Self {
        Self {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-5,
            weight_decay: 0.0,
            decoupled: false,
            clip_norm: None,
        }
    }
}

/// The constants of step `t`: betas, bias-corrected factor and epsilon (burn's Adam's
/// formulation), and the weight decay split into the gradient's part (L2, Adam) and the
/// update's (decoupled, AdamW).
#[derive(Clone, Copy)]
pub(crate) struct StepConstants {
    pub(crate) b1: f32,
    pub(crate) b2: f32,
    pub(crate) factor: f32,
    pub(crate) eps: f32,
    pub(crate) wd_grad: f32,
    pub(crate) wd_update: f32,
}

impl RowAdamConfig {
    /// The constants of step `t` (1-based).
    pub(crate) fn at(&self, t: usize) -> StepConstants {
        let t = t as i32;
        let (b1, b2) = (self.beta_1, self.beta_2);
        let bc2 = (1.0 - b2.powi(t)).sqrt();
        let wd = self.weight_decay;
        StepConstants {
            b1,
            b2,
            factor: bc2 / (1.0 - b1.powi(t)),
            eps: self.epsilon * bc2,
            // L2 weight decay goes into the gradient, decoupled (AdamW) into the update
            wd_grad: if self.decoupled { 0.0 } else { wd },
            wd_update: if self.decoupled { wd } else { 0.0 },
        }
    }
}

/// The weight average's decay at step `t` (1-based): `min(decay, (1 + t) / (10 + t))`, so
/// that the first steps' values, far from trained, leave the average quickly (TensorFlow's
/// `ExponentialMovingAverage` with `num_updates`).
pub fn average_keep(decay: f32, t: usize) -> f32 {
    let t = t as f64;
    (decay as f64).min((1.0 + t) / (10.0 + t)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_constants_follow_burns_adam_by_hand() {
        let c = RowAdamConfig {
            weight_decay: 0.01,
            ..RowAdamConfig::default()
        };
        // t = 2: bc2 = sqrt(1 − 0.999²) = sqrt(0.001999), factor = bc2 / (1 − 0.81); in f32,
        // 1 − 0.999² cancels to ~5e-5 relative error, so the bounds are relative
        let s = c.at(2);
        let bc2 = 0.001_999f64.sqrt();
        let close = |got: f32, want: f64| ((f64::from(got) - want) / want).abs() < 1e-4;
        assert!(close(s.factor, bc2 / 0.19), "{}", s.factor);
        assert!(close(s.eps, 1e-5 * bc2), "{}", s.eps);
        assert_eq!((s.wd_grad, s.wd_update), (0.01, 0.0));
        let d = RowAdamConfig { decoupled: true, ..c }.at(2);
        assert_eq!((d.wd_grad, d.wd_update), (0.0, 0.01));
    }

    #[test]
    fn the_average_keeps_less_early_on() {
        // (1 + 1) / (10 + 1) = 0.1818… below 0.99; at t = 10_000 the decay itself
        assert!((average_keep(0.99, 1) - 2.0 / 11.0).abs() < 1e-7);
        assert_eq!(average_keep(0.99, 10_000), 0.99);
    }
}
