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

fn default_relax_factor() -> f64 {
    0.7
}

fn default_beta() -> f64 {
    0.9
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
    /// MetaBalance: each auxiliary task's gradient on the shared embedding table scaled toward
    /// the main task's (the first task's) magnitude.
    Metabalance {
        /// How far toward the main task's magnitude (the paper's r: 0 leaves the gradients as
        /// they are, 1 matches them).
        #[serde(default = "default_relax_factor")]
        relax_factor: f64,
        /// Moving average of the gradient norms (the paper's β).
        #[serde(default = "default_beta")]
        beta: f64,
        /// Measure the norms every N steps (each costs one extra pass per task).
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
            Self::Metabalance {
                relax_factor,
                beta,
                every,
            } => return check_metabalance(*relax_factor, *beta, *every),
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

    /// Whether the rule measures the tasks' gradient norms on the shared table (every `every`
    /// steps).
    pub fn uses_grad_norms(&self) -> bool {
        matches!(self, Self::Gradnorm { .. } | Self::Metabalance { .. })
    }

    /// Whether the weights are learned (then the per-term weights come from [`Weighting`](crate::Weighting)).
    pub fn learned(&self) -> bool {
        !matches!(self, Self::Fixed)
    }
}

/// MetaBalance's values: the relax factor in [0, 1], β in [0, 1), `every` at least 1.
fn check_metabalance(relax_factor: f64, beta: f64, every: usize) -> Result<(), String> {
    if !(relax_factor.is_finite() && (0.0..=1.0).contains(&relax_factor)) {
        return Err(format!(
            "`train.loss_weighting.relax_factor` = {relax_factor}: must be between 0 and 1"
        ));
    }
    if !(beta.is_finite() && (0.0..1.0).contains(&beta)) {
        return Err(format!(
            "`train.loss_weighting.beta` = {beta}: must be at least 0 and below 1"
        ));
    }
    if every == 0 {
        return Err("`train.loss_weighting.every` = 0: must be at least 1".into());
    }
    Ok(())
}
