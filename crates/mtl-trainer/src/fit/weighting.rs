//! How the loss terms are weighted (`[train] loss_weighting`): fixed, learned from each task's
//! uncertainty, or balanced by gradient norms.
//!
//! ```text
//! fixed        L = Σ_i w_i L_i                          (w = `loss_weights`, default 1)
//! uncertainty  L = Σ_i exp(−s_i) L_i + s_i              (Kendall et al., CVPR 2018; s_i = log σ_i²)
//! gradnorm     L = Σ_i w_i L_i,  and after each step    (Chen et al., ICML 2018)
//!              G_i = w_i ‖∇_W L_i‖,  r_i = (L_i/L_i(0)) / mean_j (L_j/L_j(0))
//!              L_grad = Σ_i |G_i − mean(G)·r_i^α|   → one Adam step on w, then Σ w = T
//! metabalance  L = L_main + Σ_aux w_i L_i,  and after each step  (He et al., WWW 2022)
//!              m_i ← β m_i + (1 − β) ‖∇_W L_i‖,  w_i = r · m_main / m_i + (1 − r)
//! ```
//!
//! Only the terms named after a model output are *task* terms and get learned weights; any
//! other term (AITM's calibrator, a penalty) keeps weight 1. The learned rules are small
//! enough to run on the host: the uncertainty gradient is `∂L/∂s_i = 1 − exp(−s_i) L_i`, and
//! GradNorm's is `sign(G_i − target_i) · ‖∇_W L_i‖` with the target held constant, as in the
//! paper. `W` is the shared embedding table — the layer every model shares (for ESMM, its last
//! shared layer); its per-task gradient norms take one extra forward and backward pass per task
//! on the step's batch (burn keeps no graph after a backward), so GradNorm's and MetaBalance's
//! steps cost about `1 + tasks` plain steps when they measure every step (`every = 1`).
//! MetaBalance's main task is the first task term (ESMM's `ctr`, the first of `tasks`).

use serde::{Deserialize, Serialize};

use crate::config::LossWeighting;

/// What an evaluation records of a learned weighting: each task term's weight and, for
/// GradNorm, its weighted gradient norm at the last update (both empty for fixed weights).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightReport {
    /// `(term, weight)`.
    pub weights: Vec<(String, f64)>,
    /// `(term, w_i ‖∇_W L_i‖)`.
    pub grad_norms: Vec<(String, f64)>,
}

/// Adam's first and second moments for a few host scalars.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ScalarAdam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: u64,
}

impl ScalarAdam {
    fn step(&mut self, x: &mut [f64], grad: &[f64], lr: f64) {
        let (b1, b2, eps) = (0.9, 0.999, 1e-8);
        self.m.resize(x.len(), 0.0);
        self.v.resize(x.len(), 0.0);
        self.t += 1;
        let t = self.t as i32;
        for i in 0..x.len() {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * grad[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * grad[i] * grad[i];
            let m_hat = self.m[i] / (1.0 - b1.powi(t));
            let v_hat = self.v[i] / (1.0 - b2.powi(t));
            x[i] -= lr * m_hat / (v_hat.sqrt() + eps);
        }
    }
}

/// The learned weighting's state: saved with every checkpoint so that a resumed run continues
/// with the same weights and moments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WeightingState {
    /// Uncertainty: the log-variances `s_i`; GradNorm, MetaBalance: the weights `w_i` (task
    /// terms only).
    pub values: Vec<f64>,
    /// GradNorm: each task term's loss at the first update.
    pub initial_losses: Vec<f64>,
    /// GradNorm, MetaBalance: the weighted gradient norms `w_i ‖∇_W L_i‖` at the last update.
    pub grad_norms: Vec<f64>,
    /// MetaBalance: the moving averages of the unweighted gradient norms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub averages: Vec<f64>,
    adam: ScalarAdam,
}

/// The loss weighting of one run: the rule, which terms are tasks, and the learned state.
#[derive(Debug, Clone)]
pub struct Weighting {
    rule: LossWeighting,
    fixed: Vec<f32>,
    /// Per loss term: its index among the task terms, if it is one.
    task_of_term: Vec<Option<usize>>,
    /// The learned state (empty for fixed weights).
    pub state: WeightingState,
}

impl Weighting {
    /// The weighting of terms `loss_names`, of which those in `outputs` are task terms;
    /// `fixed` are `train.loss_weights`; `state` a checkpoint's, when resuming.
    pub fn new(
        rule: &LossWeighting,
        fixed: &[f32],
        loss_names: &[String],
        outputs: &[String],
        state: Option<WeightingState>,
    ) -> Self {
        let mut n = 0;
        let task_of_term = loss_names
            .iter()
            .map(|name| {
                outputs.contains(name).then(|| {
                    n += 1;
                    n - 1
                })
            })
            .collect();
        let start = match rule {
            LossWeighting::Fixed => Vec::new(),
            LossWeighting::Uncertainty { .. } => vec![0.0; n],
            LossWeighting::Gradnorm { .. } | LossWeighting::Metabalance { .. } => vec![1.0; n],
        };
        let state = state.unwrap_or(WeightingState {
            values: start,
            ..WeightingState::default()
        });
        Self {
            rule: rule.clone(),
            fixed: fixed.to_vec(),
            task_of_term,
            state,
        }
    }

    /// The weights of the reported training loss: the fixed ones, or none (the plain sum of
    /// the terms, as the validation loss) when the weights are learned and move.
    pub fn reported(&self) -> &[f32] {
        &self.fixed
    }

    /// Whether the weights are learned.
    pub fn learned(&self) -> bool {
        self.rule.learned()
    }

    /// The weight of every loss term now.
    pub fn weights(&self) -> Vec<f32> {
        match &self.rule {
            LossWeighting::Fixed => self.fixed.clone(),
            rule => self
                .task_of_term
                .iter()
                .map(|task| match (task, rule) {
                    (None, _) => 1.0,
                    (Some(t), LossWeighting::Uncertainty { .. }) => (-self.state.values[*t]).exp() as f32,
                    (Some(t), _) => self.state.values[*t] as f32,
                })
                .collect(),
        }
    }

    /// Whether step `step` (1-based) needs each task term's gradient norm on the table.
    pub fn wants_grad_norms(&self, step: usize) -> bool {
        match self.rule {
            LossWeighting::Gradnorm { every, .. } | LossWeighting::Metabalance { every, .. } => {
                (step - 1).is_multiple_of(every)
            }
            _ => false,
        }
    }

    /// The indices of the task terms among the loss terms.
    pub fn task_terms(&self) -> Vec<usize> {
        (0..self.task_of_term.len())
            .filter(|&i| self.task_of_term[i].is_some())
            .collect()
    }

    /// Updates the learned weights after a step with loss terms `terms`; `grad_norms` are the
    /// task terms' unweighted gradient norms `‖∇_W L_i‖` when [`Weighting::wants_grad_norms`].
    pub fn update(&mut self, terms: &[f32], grad_norms: Option<&[f64]>) {
        let losses: Vec<f64> = self.task_terms().iter().map(|&i| f64::from(terms[i])).collect();
        match self.rule {
            LossWeighting::Fixed => {}
            LossWeighting::Uncertainty { lr } => {
                let s = &mut self.state.values;
                let grad: Vec<f64> = s.iter().zip(&losses).map(|(s, l)| 1.0 - (-s).exp() * l).collect();
                self.state.adam.step(s, &grad, lr);
            }
            LossWeighting::Gradnorm { alpha, lr, .. } => {
                let Some(norms) = grad_norms else { return };
                let n = losses.len() as f64;
                if self.state.initial_losses.is_empty() {
                    self.state.initial_losses = losses.iter().map(|l| l.max(1e-12)).collect();
                }
                let ratios: Vec<f64> = losses
                    .iter()
                    .zip(&self.state.initial_losses)
                    .map(|(l, l0)| l / l0)
                    .collect();
                let mean_ratio = ratios.iter().sum::<f64>() / n;
                let w = &mut self.state.values;
                let weighted: Vec<f64> = w.iter().zip(norms).map(|(w, g)| w * g).collect();
                let mean_norm = weighted.iter().sum::<f64>() / n;
                let grad: Vec<f64> = (0..w.len())
                    .map(|i| {
                        let target = mean_norm * (ratios[i] / mean_ratio.max(1e-12)).powf(alpha);
                        (weighted[i] - target).signum() * norms[i]
                    })
                    .collect();
                self.state.adam.step(w, &grad, lr);
                for x in w.iter_mut() {
                    *x = x.max(1e-3);
                }
                let sum: f64 = w.iter().sum();
                for x in w.iter_mut() {
                    *x *= n / sum;
                }
                self.state.grad_norms = weighted;
            }
            LossWeighting::Metabalance {
                relax_factor, beta, ..
            } => {
                let Some(norms) = grad_norms else { return };
                self.metabalance(norms, relax_factor, beta);
            }
        }
    }

    /// MetaBalance after a measurement of the task terms' gradient norms `norms` on the
    /// table: their moving averages `m_i ← β m_i + (1 − β) ‖∇_W L_i‖` (the first measurement
    /// starts them), then each auxiliary task's weight `r · m_main / m_i + (1 − r)` (the main
    /// task, the first, keeps 1). A weight on a task term scales that task's gradient on
    /// every shared parameter by it, which is MetaBalance's update; it scales the task's own
    /// tower's gradient too, which Adam's per-parameter normalisation all but undoes.
    fn metabalance(&mut self, norms: &[f64], relax_factor: f64, beta: f64) {
        let averages = &mut self.state.averages;
        if averages.is_empty() {
            averages.extend_from_slice(norms);
        } else {
            for (m, g) in averages.iter_mut().zip(norms) {
                *m = beta * *m + (1.0 - beta) * g;
            }
        }
        let main = averages[0];
        let w = &mut self.state.values;
        for (i, x) in w.iter_mut().enumerate().skip(1) {
            *x = relax_factor * main / averages[i].max(1e-12) + (1.0 - relax_factor);
        }
        self.state.grad_norms = w.iter().zip(norms).map(|(w, g)| w * g).collect();
    }

    /// Per task term: its name and current weight, for the evaluation record (empty for fixed
    /// weights).
    pub fn report(&self, loss_names: &[String]) -> Vec<(String, f64)> {
        if !self.rule.learned() {
            return Vec::new();
        }
        let weights = self.weights();
        self.task_terms()
            .into_iter()
            .map(|i| (loss_names[i].clone(), f64::from(weights[i])))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn uncertainty_weights_settle_at_the_inverse_loss() {
        let rule = LossWeighting::Uncertainty { lr: 0.05 };
        let mut w = Weighting::new(&rule, &[], &names(&["a", "b"]), &names(&["a", "b"]), None);
        assert_eq!(w.weights(), [1.0, 1.0]);
        // ∂/∂s [e^{−s} L + s] = 0 at s = log L, i.e. weight 1/L
        for _ in 0..3000 {
            w.update(&[4.0, 0.25], None);
        }
        let weights = w.weights();
        assert!((weights[0] - 0.25).abs() < 0.01, "{weights:?}");
        assert!((weights[1] - 4.0).abs() < 0.1, "{weights:?}");
    }

    #[test]
    fn only_terms_named_after_outputs_are_weighted() {
        let rule = LossWeighting::Uncertainty { lr: 0.1 };
        let mut w = Weighting::new(
            &rule,
            &[],
            &names(&["click", "purchase", "calibrator"]),
            &names(&["click", "purchase", "purchase_given_click"]),
            None,
        );
        assert_eq!(w.task_terms(), [0, 1]);
        w.update(&[3.0, 3.0, 0.0], None);
        let weights = w.weights();
        assert!(
            weights[0] < 1.0 && weights[1] < 1.0 && weights[2] == 1.0,
            "{weights:?}"
        );
        assert_eq!(w.report(&names(&["click", "purchase", "calibrator"])).len(), 2);
    }

    #[test]
    fn gradnorm_moves_weight_to_the_task_with_the_smaller_gradient() {
        let rule = LossWeighting::Gradnorm {
            alpha: 0.0,
            lr: 0.01,
            every: 1,
        };
        let mut w = Weighting::new(&rule, &[], &names(&["a", "b"]), &names(&["a", "b"]), None);
        // ‖∇L_a‖ = 10, ‖∇L_b‖ = 1: with α = 0 the balance is w_a·10 = w_b·1 and Σw = 2
        for _ in 0..2000 {
            w.update(&[1.0, 1.0], Some(&[10.0, 1.0]));
        }
        let weights = w.weights();
        assert!((weights[0] - 2.0 / 11.0).abs() < 0.03, "{weights:?}");
        assert!((weights.iter().sum::<f32>() - 2.0).abs() < 1e-4);
        let g = &w.state.grad_norms;
        assert!((g[0] / g[1] - 1.0).abs() < 0.2, "{g:?}");
        // every = 3: steps 1, 4, 7 … want the norms
        let every = LossWeighting::Gradnorm {
            alpha: 1.5,
            lr: 0.01,
            every: 3,
        };
        let w = Weighting::new(&every, &[], &names(&["a"]), &names(&["a"]), None);
        let wanted: Vec<usize> = (1..=7).filter(|&s| w.wants_grad_norms(s)).collect();
        assert_eq!(wanted, [1, 4, 7]);
    }

    #[test]
    fn metabalance_scales_the_auxiliary_tasks_toward_the_main_ones_average_norm() {
        let rule = LossWeighting::Metabalance {
            relax_factor: 0.7,
            beta: 0.9,
            every: 1,
        };
        let terms = names(&["main", "aux", "calibrator"]);
        let mut w = Weighting::new(&rule, &[], &terms, &names(&["main", "aux"]), None);
        // the first measurement starts the averages: m = (2, 0.5), w_aux = 0.7 · 2 / 0.5 + 0.3
        w.update(&[1.0, 1.0, 1.0], Some(&[2.0, 0.5]));
        let weights = w.weights();
        assert_eq!(weights[0], 1.0);
        assert!((weights[1] - 3.1).abs() < 1e-6, "{weights:?}");
        assert_eq!(weights[2], 1.0, "a term that is no task keeps 1");
        // then m = (0.9 · 2 + 0.1 · 1, 0.9 · 0.5 + 0.1 · 1) = (1.9, 0.55): w_aux = 0.7 · 1.9 / 0.55 + 0.3
        w.update(&[1.0, 1.0, 1.0], Some(&[1.0, 1.0]));
        let want = 0.7 * 1.9 / 0.55 + 0.3;
        assert!(
            (f64::from(w.weights()[1]) - want).abs() < 1e-5,
            "{:?}",
            w.weights()
        );
        // the weighted norms of the last measurement: (1 · 1, w_aux · 1)
        assert!((w.state.grad_norms[1] - want).abs() < 1e-12 && w.state.grad_norms[0] == 1.0);
        // relax factor 0 leaves every weight at 1; no measurement, no change
        let off = LossWeighting::Metabalance {
            relax_factor: 0.0,
            beta: 0.9,
            every: 2,
        };
        let mut w = Weighting::new(&off, &[], &terms, &names(&["main", "aux"]), None);
        w.update(&[1.0, 1.0, 1.0], Some(&[2.0, 0.5]));
        w.update(&[1.0, 1.0, 1.0], None);
        assert_eq!(w.weights(), [1.0, 1.0, 1.0]);
        let wanted: Vec<usize> = (1..=5).filter(|&s| w.wants_grad_norms(s)).collect();
        assert_eq!(wanted, [1, 3, 5]);
    }

    #[test]
    fn gradnorm_alpha_favours_the_task_that_trains_slower() {
        let rule = LossWeighting::Gradnorm {
            alpha: 1.0,
            lr: 0.01,
            every: 1,
        };
        let mut w = Weighting::new(&rule, &[], &names(&["a", "b"]), &names(&["a", "b"]), None);
        w.update(&[1.0, 1.0], Some(&[1.0, 1.0])); // the initial losses
        // task a's loss has halved, b's has not: b gets the larger share of the gradient
        for _ in 0..2000 {
            w.update(&[0.5, 1.0], Some(&[1.0, 1.0]));
        }
        let weights = w.weights();
        // ratios 0.5, 1 → r = 2/3, 4/3; balance w_i ∝ r_i: w = 2/3, 4/3
        assert!(
            (weights[0] - 2.0 / 3.0).abs() < 0.03 && (weights[1] - 4.0 / 3.0).abs() < 0.03,
            "{weights:?}"
        );
    }

    #[test]
    fn config_values_are_checked() {
        let bad = [
            (LossWeighting::Uncertainty { lr: 0.0 }, "lr` = 0"),
            (
                LossWeighting::Gradnorm {
                    alpha: -1.0,
                    lr: 0.01,
                    every: 1,
                },
                "alpha` = -1",
            ),
            (
                LossWeighting::Gradnorm {
                    alpha: 1.5,
                    lr: 0.01,
                    every: 0,
                },
                "every` = 0",
            ),
            (
                LossWeighting::Metabalance {
                    relax_factor: 1.5,
                    beta: 0.9,
                    every: 1,
                },
                "relax_factor` = 1.5",
            ),
            (
                LossWeighting::Metabalance {
                    relax_factor: 0.5,
                    beta: 1.0,
                    every: 1,
                },
                "beta` = 1",
            ),
            (
                LossWeighting::Metabalance {
                    relax_factor: 0.5,
                    beta: 0.5,
                    every: 0,
                },
                "every` = 0",
            ),
        ];
        for (rule, needle) in bad {
            assert!(rule.check().unwrap_err().contains(needle));
        }
        let parsed: LossWeighting = toml::from_str("kind = \"gradnorm\"\nalpha = 0.5\n").unwrap();
        assert_eq!(
            parsed,
            LossWeighting::Gradnorm {
                alpha: 0.5,
                lr: 0.01,
                every: 1
            }
        );
        let parsed: LossWeighting = toml::from_str("kind = \"metabalance\"\n").unwrap();
        assert_eq!(
            parsed,
            LossWeighting::Metabalance {
                relax_factor: 0.7,
                beta: 0.9,
                every: 1
            }
        );
        assert!(toml::from_str::<LossWeighting>("kind = \"uncertainty\"\nalpha = 1.0\n").is_err());
        assert!(toml::from_str::<LossWeighting>("kind = \"learned\"\n").is_err());
    }
}
