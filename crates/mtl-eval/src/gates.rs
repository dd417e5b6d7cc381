//! The gate-utilisation report: how a trained mixture spreads its weight over its experts.
//!
//! For every gate a model exposes ([`MultiTaskModel::gates`]: MMOE's and OMoE's gates, PLE's
//! per-level gates, AITM's attention over its own and the transferred vector), over a whole
//! data set: the mean weight per expert and the mean entropy of the gate's distribution
//! (`−Σ w log w`; `ln n` for a uniform gate over `n` experts, 0 for one that always picks one).
//! An expert that gets under 1 % of the weight of every gate that sees it is dead: it costs
//! compute and carries nothing.

use burn::tensor::Device;
use mtl_features::{EncodedData, TableLayout};
use mtl_layers::MultiTaskModel;
use serde::{Deserialize, Serialize};

use crate::EvalError;
use crate::predict::to_host;

/// Below this mean weight in every gate that sees it, an expert is reported dead.
pub const DEAD_EXPERT_WEIGHT: f64 = 0.01;

/// One gate over a data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    /// The gate (a task, `shared`, `level2.click`, `purchase<-click`).
    pub gate: String,
    /// The experts (or vectors) it weighs.
    pub experts: Vec<String>,
    /// Mean weight per expert over the rows (sums to 1).
    pub mean_weight: Vec<f64>,
    /// Mean entropy of the gate's distribution, in nats.
    pub entropy: f64,
    /// Rows it was measured on.
    pub rows: usize,
}

/// Every gate of `model` over all rows of `data` (evaluation mode, batches of 4096).
pub fn gate_report<M: MultiTaskModel>(
    model: &M,
    data: &EncodedData,
    layout: &TableLayout,
    device: &Device,
) -> Result<Vec<GateReport>, EvalError> {
    let mut reports: Vec<GateReport> = Vec::new();
    let mut start = 0;
    while start < data.rows {
        let end = (start + 4096).min(data.rows);
        let idx: Vec<usize> = (start..end).collect();
        let batch = data.batch(&idx, layout, device);
        for (g, gate) in model.gates(&batch).into_iter().enumerate() {
            let n = gate.experts.len();
            let w = to_host(gate.weights.reshape([(end - start) * n]))?;
            if reports.len() <= g {
                reports.push(GateReport {
                    gate: gate.name,
                    experts: gate.experts,
                    mean_weight: vec![0.0; n],
                    entropy: 0.0,
                    rows: 0,
                });
            }
            let r = &mut reports[g];
            for row in w.chunks_exact(n) {
                for (sum, x) in r.mean_weight.iter_mut().zip(row) {
                    *sum += f64::from(*x);
                }
                r.entropy -= row
                    .iter()
                    .filter(|x| **x > 0.0)
                    .map(|x| f64::from(*x) * f64::from(*x).ln())
                    .sum::<f64>();
            }
            r.rows += end - start;
        }
        start = end;
    }
    for r in &mut reports {
        let rows = r.rows.max(1) as f64;
        r.mean_weight.iter_mut().for_each(|w| *w /= rows);
        r.entropy /= rows;
    }
    Ok(reports)
}

/// The experts that get under [`DEAD_EXPERT_WEIGHT`] of every gate that sees them (attention
/// over vectors is not a mixture of experts and is left out).
pub fn dead_experts(reports: &[GateReport]) -> Vec<String> {
    let mut seen: Vec<(&str, bool)> = Vec::new();
    for r in reports.iter().filter(|r| !r.gate.contains("<-")) {
        for (expert, w) in r.experts.iter().zip(&r.mean_weight) {
            let alive = *w >= DEAD_EXPERT_WEIGHT;
            match seen.iter_mut().find(|(e, _)| *e == expert.as_str()) {
                Some((_, a)) => *a |= alive,
                None => seen.push((expert, alive)),
            }
        }
    }
    seen.into_iter()
        .filter(|(_, alive)| !alive)
        .map(|(e, _)| e.to_string())
        .collect()
}

impl GateReport {
    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let weights: Vec<String> = self
            .experts
            .iter()
            .zip(&self.mean_weight)
            .map(|(e, w)| format!("{e} {w:.3}"))
            .collect();
        format!(
            "{:<12} {}  entropy {:.3} (uniform {:.3})",
            self.gate,
            weights.join("  "),
            self.entropy,
            (self.experts.len() as f64).ln()
        )
    }
}
