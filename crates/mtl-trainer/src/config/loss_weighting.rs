//! `[train] loss_weighting`: how the loss terms are weighted (the rules themselves are
//! [`crate::fit::weighting`]'s).

use serde::{Deserialize, Serialize};

fn default_alpha() -> f64 {
    1.5
}

fn default_weight_lr() -> f64 {
    0.01
}

fn default_every() -> usize {
    1
}

/// The rule for weighting the loss terms (`[train] loss_weighting = { kind = … }`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LossWeighting {
    /// `train.loss_weights` (default 1 each).
    #[default]
    Fixed,
    /// A learned log-variance `s_i` per task term.
    Uncertainty {
        /// Adam learning rate of the log-variances.
        #[serde(default = "default_weight_lr")]
        lr: f64,
    },
    /// Weights balancing the tasks' gradient norms on the shared embedding table.
    Gradnorm {
        /// How strongly slower-training tasks are favoured (the paper's α; 0 equalises norms).
        #[serde(default = "default_alpha")]
        alpha: f64,
        /// Adam learning rate of the weights.
        #[serde(default = "default_weight_lr")]
        lr: f64,
        /// Update the weights every N steps (each update costs one extra pass per task).
        #[serde(default = "default_every")]
        every: usize,
    },
}

impl LossWeighting {
    /// Checks the values a config can get wrong; the message names the key and the range.
    pub fn check(&self) -> Result<(), String> {
        let (lr, alpha, every) = match self {
            Self::Fixed => return Ok(()),
            Self::Uncertainty { lr } => (*lr, None, None),
            Self::Gradnorm { alpha, lr, every } => (*lr, Some(*alpha), Some(*every)),
        };
        if !(lr.is_finite() && lr > 0.0 && lr <= 1.0) {
            return Err(format!(
                "`train.loss_weighting.lr` = {lr}: must be above 0 and at most 1"
            ));
        }
        if let Some(alpha) = alpha
            && !(alpha.is_finite() && (0.0..=10.0).contains(&alpha))
        {
            return Err(format!(
                "`train.loss_weighting.alpha` = {alpha}: must be between 0 and 10"
            ));
        }
        if every == Some(0) {
            return Err("`train.loss_weighting.every` = 0: must be at least 1".into());
        }
        Ok(())
    }

    /// Whether the weights are learned (then the per-term weights come from [`Weighting`](crate::Weighting)).
    pub fn learned(&self) -> bool {
        !matches!(self, Self::Fixed)
    }
}
