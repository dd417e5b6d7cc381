//! Per-task metrics over a whole evaluation set (never averaged per batch).
//!
//! Binary tasks: exact ROC AUC (ties get the average rank, so a tie counts ½), log loss, mean
//! prediction and observed rate. Regression tasks: MSE and MAE. A binary task whose rows hold
//! one class only reports that instead of an AUC.

use mtl_features::{EncodedData, LabelKind};
use mtl_layers::OutputSpec;
use serde::{Deserialize, Serialize};

/// Exact ROC AUC: the share of (positive, negative) pairs ordered correctly, a tie counting ½
/// (the Mann–Whitney statistic with average ranks for ties). `None` when `labels` hold only
/// one class.
pub fn auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
    pair_auc(scores, labels, None)
}

/// ROC AUC with each row counted by its sample weight: the weighted share of (positive,
/// negative) pairs ordered correctly, a tie counting ½ — the area under the weighted ROC curve
/// (scikit-learn's `roc_auc_score` with `sample_weight`). `None` when either class weighs
/// nothing.
pub fn weighted_auc(scores: &[f32], labels: &[f32], weights: &[f32]) -> Option<f64> {
    assert_eq!(labels.len(), weights.len());
    pair_auc(scores, labels, Some(weights))
}

/// [`auc`] and [`weighted_auc`]: over runs of tied scores in ascending order, each positive
/// beats the negative weight below it and half the tie's. Without weights every sum is a
/// whole or half number, exact in `f64`.
fn pair_auc(scores: &[f32], labels: &[f32], weights: Option<&[f32]>) -> Option<f64> {
    assert_eq!(scores.len(), labels.len());
    let n = scores.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut pairs, mut below, mut positive) = (0.0f64, 0.0f64, 0.0f64);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let (mut pos, mut neg) = (0.0, 0.0);
        for &k in &order[i..=j] {
            let w = weight_of(weights, k);
            if labels[k] > 0.5 { pos += w } else { neg += w }
        }
        pairs += pos * (below + neg / 2.0);
        below += neg;
        positive += pos;
        i = j + 1;
    }
    (positive > 0.0 && below > 0.0).then(|| pairs / (positive * below))
}

/// Mean binary cross-entropy of probabilities, clamped to [1e-7, 1 − 1e-7].
pub fn log_loss(probs: &[f32], labels: &[f32]) -> f64 {
    weighted_log_loss(probs, labels, None)
}

/// [`log_loss`] with each row counted by its weight, `Σ wᵢ lᵢ / Σ wᵢ` (the plain mean without
/// weights).
pub fn weighted_log_loss(probs: &[f32], labels: &[f32], weights: Option<&[f32]>) -> f64 {
    let eps = 1e-7;
    let (mut sum, mut total) = (0.0f64, 0.0f64);
    for (i, (&p, &y)) in probs.iter().zip(labels).enumerate() {
        let w = weight_of(weights, i);
        let p = f64::from(p).clamp(eps, 1.0 - eps);
        sum += w * -(f64::from(y) * p.ln() + (1.0 - f64::from(y)) * (1.0 - p).ln());
        total += w;
    }
    sum / positive_or_one(total)
}

/// Row `i`'s weight: its sample weight, or 1.
fn weight_of(weights: Option<&[f32]>, i: usize) -> f64 {
    weights.map_or(1.0, |w| f64::from(w[i]))
}

/// `total`, or 1 when there is nothing to divide by (no rows, or rows weighing nothing).
fn positive_or_one(total: f64) -> f64 {
    if total > 0.0 { total } else { 1.0 }
}

/// Metrics of one binary output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    /// ROC AUC, absent when only one class is present.
    pub auc: Option<f64>,
    /// Why there is no AUC.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub auc_note: Option<String>,
    /// Log loss.
    pub log_loss: f64,
    /// Mean predicted probability.
    pub mean_prediction: f64,
    /// Observed positive rate.
    pub observed_rate: f64,
    /// Expected calibration error over [`RELIABILITY_BINS`] bins of equal row count:
    /// `Σ_b (n_b / n) |mean prediction_b − observed rate_b|`.
    #[serde(default)]
    pub ece: f64,
    /// The reliability diagram's bins, lowest predictions first.
    #[serde(default)]
    pub reliability: Vec<ReliabilityBin>,
    /// Group AUC, when the rows' groups were given ([`gauc`]).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gauc: Option<Gauc>,
}

/// Group AUC (GAUC): the AUC within each group of rows (a user, a request), averaged with each
/// group weighted by its rows, over the groups that hold both classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gauc {
    /// The row-weighted mean of the groups' AUCs.
    pub value: f64,
    /// Groups counted (with both classes).
    pub groups: usize,
    /// Rows of those groups.
    pub rows: usize,
    /// Groups left out: one class only.
    pub skipped_groups: usize,
}

/// GAUC of `scores` against 0/1 `labels`, rows grouped by `groups` (any ids, one per row);
/// `None` when no group holds both classes.
pub fn gauc(scores: &[f32], labels: &[f32], groups: &[u32]) -> Option<Gauc> {
    weighted_gauc(scores, labels, groups, None)
}

/// [`gauc`] with sample weights: each group's [`weighted_auc`], the groups weighted by their
/// rows' total weight (by their rows without weights).
pub fn weighted_gauc(
    scores: &[f32],
    labels: &[f32],
    groups: &[u32],
    weights: Option<&[f32]>,
) -> Option<Gauc> {
    assert!(scores.len() == labels.len() && labels.len() == groups.len());
    let mut members: std::collections::BTreeMap<u32, Vec<usize>> = std::collections::BTreeMap::new();
    for (r, &g) in groups.iter().enumerate() {
        members.entry(g).or_default().push(r);
    }
    let (mut weighted, mut mass, mut rows, mut counted, mut skipped) = (0.0, 0.0, 0, 0, 0);
    for rows_of_group in members.values() {
        let s: Vec<f32> = rows_of_group.iter().map(|&r| scores[r]).collect();
        let y: Vec<f32> = rows_of_group.iter().map(|&r| labels[r]).collect();
        let w: Option<Vec<f32>> = weights.map(|w| rows_of_group.iter().map(|&r| w[r]).collect());
        let group_mass = (0..s.len()).map(|i| weight_of(w.as_deref(), i)).sum::<f64>();
        match pair_auc(&s, &y, w.as_deref()) {
            Some(a) => {
                weighted += a * group_mass;
                mass += group_mass;
                rows += s.len();
                counted += 1;
            }
            None => skipped += 1,
        }
    }
    (counted > 0).then(|| Gauc {
        value: weighted / mass,
        groups: counted,
        rows,
        skipped_groups: skipped,
    })
}

/// Bins of the reliability diagram, at most (equal row counts, so a rare event's bins are not
/// all in the first tenth of the probability range; tied predictions share a bin).
pub const RELIABILITY_BINS: usize = 10;

/// One bin of a reliability diagram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// Rows in the bin.
    pub rows: usize,
    /// Mean predicted probability.
    pub mean_prediction: f64,
    /// Observed positive rate.
    pub observed_rate: f64,
}

/// The reliability bins (equal row counts, by prediction) and the expected calibration error.
pub fn reliability(scores: &[f32], targets: &[f32]) -> (Vec<ReliabilityBin>, f64) {
    weighted_reliability(scores, targets, None)
}

/// [`reliability`] with sample weights: the bins hold equal row counts, their means and the
/// ECE's shares are weighted.
pub fn weighted_reliability(
    scores: &[f32],
    targets: &[f32],
    weights: Option<&[f32]>,
) -> (Vec<ReliabilityBin>, f64) {
    let n = scores.len();
    let total = positive_or_one((0..n).map(|i| weight_of(weights, i)).sum());
    if n == 0 {
        return (Vec::new(), 0.0);
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let bins = RELIABILITY_BINS.min(n);
    let mut out = Vec::with_capacity(bins);
    let mut ece = 0.0;
    let mut start = 0;
    for b in 0..bins {
        // a bin ends at its share of the rows, moved past any run of equal predictions (tied
        // rows share a bin, so a constant prediction is one bin)
        let mut end = ((b + 1) * n / bins).max(start);
        while end < n && end > 0 && scores[order[end]] == scores[order[end - 1]] {
            end += 1;
        }
        if end == start {
            continue;
        }
        let rows = &order[start..end];
        start = end;
        let k: f64 = rows.iter().map(|&r| weight_of(weights, r)).sum();
        let mean = |x: &[f32]| {
            rows.iter()
                .map(|&r| weight_of(weights, r) * f64::from(x[r]))
                .sum::<f64>()
                / positive_or_one(k)
        };
        let (mean_prediction, observed_rate) = (mean(scores), mean(targets));
        ece += k / total * (mean_prediction - observed_rate).abs();
        out.push(ReliabilityBin {
            rows: rows.len(),
            mean_prediction,
            observed_rate,
        });
    }
    (out, ece)
}

/// The rows an output's metrics use: every row, or those where its `rows_where` label is 1.
pub fn evaluated_rows(spec: &OutputSpec, data: &EncodedData) -> Vec<usize> {
    (0..data.rows)
        .filter(|&r| {
            spec.rows_where
                .is_none_or(|w| data.labels[r * data.n_labels + w] >= 0.5)
        })
        .collect()
}

/// The predictions and targets of one output on the rows `rows` of `data`.
fn scores_and_targets(
    spec: &OutputSpec,
    pred: &[f32],
    data: &EncodedData,
    rows: &[usize],
) -> (Vec<f32>, Vec<f32>) {
    let target = |r: usize| {
        spec.target
            .iter()
            .map(|&i| data.labels[r * data.n_labels + i])
            .product::<f32>()
    };
    (
        rows.iter().map(|&r| pred[r]).collect(),
        rows.iter().map(|&r| target(r)).collect(),
    )
}

/// The predictions and targets of one output on the rows its metrics use ([`evaluated_rows`]).
pub fn rows_of(spec: &OutputSpec, pred: &[f32], data: &EncodedData) -> (Vec<f32>, Vec<f32>) {
    scores_and_targets(spec, pred, data, &evaluated_rows(spec, data))
}

/// Metrics of one regression output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    /// Mean squared error.
    pub mse: f64,
    /// Mean absolute error.
    pub mae: f64,
}

/// Metrics of one output over its evaluation rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMetrics {
    /// Output name.
    pub name: String,
    /// Rows evaluated (CVR: clicked rows only).
    pub rows: usize,
    /// Which rows: `all` or `<label> = 1`.
    pub rows_from: String,
    /// Binary metrics, for a binary output.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub binary: Option<BinaryMetrics>,
    /// Regression metrics, for a regression output.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub regression: Option<RegressionMetrics>,
}

impl TaskMetrics {
    /// A named metric: `auc`, `logloss`, `gauc`, `ece`, `mse`, `mae`, `mean_prediction`,
    /// `observed_rate`.
    pub fn get(&self, metric: &str) -> Option<f64> {
        match (metric, &self.binary, &self.regression) {
            ("auc", Some(b), _) => b.auc,
            ("logloss" | "log_loss", Some(b), _) => Some(b.log_loss),
            ("mean_prediction", Some(b), _) => Some(b.mean_prediction),
            ("observed_rate", Some(b), _) => Some(b.observed_rate),
            ("ece", Some(b), _) => Some(b.ece),
            ("gauc", Some(b), _) => b.gauc.as_ref().map(|g| g.value),
            ("mse", _, Some(r)) => Some(r.mse),
            ("mae", _, Some(r)) => Some(r.mae),
            _ => None,
        }
    }

    /// The headline metric: AUC for binary, MSE for regression.
    pub fn main_metric(&self) -> (&'static str, Option<f64>) {
        if self.binary.is_some() {
            ("auc", self.get("auc"))
        } else {
            ("mse", self.get("mse"))
        }
    }

    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let body = match (&self.binary, &self.regression) {
            (Some(b), _) => {
                format!(
                    "auc {}  logloss {:.5}  mean pred {:.4}  observed {:.4}  ece {:.4}",
                    b.auc
                        .map_or_else(|| b.auc_note.clone().unwrap_or_default(), |a| format!("{a:.4}")),
                    b.log_loss,
                    b.mean_prediction,
                    b.observed_rate,
                    b.ece
                ) + &b.gauc.as_ref().map_or_else(String::new, |g| {
                    format!("  gauc {:.4} ({} groups)", g.value, g.groups)
                })
            }
            (_, Some(r)) => format!("mse {:.5}  mae {:.5}", r.mse, r.mae),
            _ => String::new(),
        };
        format!(
            "{:<8} {body}  ({} rows, {})",
            self.name, self.rows, self.rows_from
        )
    }
}

/// Evaluates each output's predictions (one value per row of `data`) against its target.
pub fn evaluate(
    outputs: &[OutputSpec],
    predictions: &[Vec<f32>],
    data: &EncodedData,
    label_names: &[String],
) -> Vec<TaskMetrics> {
    evaluate_grouped(outputs, predictions, data, label_names, None)
}

/// [`evaluate`], with each binary output's [`gauc`] over `groups` (one id per row of `data`)
/// when given; an output evaluated on some rows (CVR on clicked rows) groups those rows.
pub fn evaluate_grouped(
    outputs: &[OutputSpec],
    predictions: &[Vec<f32>],
    data: &EncodedData,
    label_names: &[String],
    groups: Option<&[u32]>,
) -> Vec<TaskMetrics> {
    evaluate_weighted(outputs, predictions, data, label_names, groups, None)
}

/// [`evaluate_grouped`], each row counted by its sample weight — label column `weight.0` of
/// `data` (`[data] weight`, the column `weight.1`) — in every metric: AUC ([`weighted_auc`]),
/// GAUC, log loss, ECE, mean prediction, observed rate, MSE and MAE. Row counts stay counts of
/// rows; each output's `rows_from` says what weighs them.
pub fn evaluate_weighted(
    outputs: &[OutputSpec],
    predictions: &[Vec<f32>],
    data: &EncodedData,
    label_names: &[String],
    groups: Option<&[u32]>,
    weight: Option<(usize, &str)>,
) -> Vec<TaskMetrics> {
    let weight_label = weight.map(|(label, _)| label);
    outputs
        .iter()
        .zip(predictions)
        .map(|(spec, pred)| {
            let kept = evaluated_rows(spec, data);
            let (scores, targets) = scores_and_targets(spec, pred, data, &kept);
            let weights: Option<Vec<f32>> =
                weight_label.map(|l| kept.iter().map(|&r| data.labels[r * data.n_labels + l]).collect());
            let weights = weights.as_deref();
            let grouped = groups.and_then(|g| {
                let ids: Vec<u32> = kept.iter().map(|&r| g[r]).collect();
                weighted_gauc(&scores, &targets, &ids, weights)
            });
            let mut rows_from = spec.rows_where.map_or_else(
                || "all rows".to_string(),
                |w| format!("rows with {} = 1", label_names[w]),
            );
            if let Some((_, column)) = weight {
                rows_from += &format!(", weighted by {column}");
            }
            let (binary, regression) = match spec.kind {
                LabelKind::Binary => (Some(binary_metrics(&scores, &targets, weights, grouped)), None),
                LabelKind::Regression => (None, Some(regression_metrics(&scores, &targets, weights))),
            };
            TaskMetrics {
                name: spec.name.clone(),
                rows: scores.len(),
                rows_from,
                binary,
                regression,
            }
        })
        .collect()
}

/// The metrics of a binary output's rows, each counted by its weight (1 without weights).
fn binary_metrics(
    scores: &[f32],
    targets: &[f32],
    weights: Option<&[f32]>,
    gauc: Option<Gauc>,
) -> BinaryMetrics {
    let auc = pair_auc(scores, targets, weights);
    let (mut total, mut predicted, mut positive) = (0.0f64, 0.0f64, 0.0f64);
    for (i, (&p, &y)) in scores.iter().zip(targets).enumerate() {
        let w = weight_of(weights, i);
        total += w;
        predicted += w * f64::from(p);
        positive += w * f64::from(u8::from(y > 0.5));
    }
    let auc_note = auc.is_none().then(|| {
        if scores.is_empty() {
            "no rows".to_string()
        } else if positive == 0.0 {
            "n/a (no positives)".to_string()
        } else if positive == total {
            "n/a (no negatives)".to_string()
        } else {
            "n/a (a class of zero weight)".to_string()
        }
    });
    let (reliability, ece) = weighted_reliability(scores, targets, weights);
    let total = positive_or_one(total);
    BinaryMetrics {
        auc,
        auc_note,
        ece,
        reliability,
        log_loss: weighted_log_loss(scores, targets, weights),
        mean_prediction: predicted / total,
        observed_rate: positive / total,
        gauc,
    }
}

/// MSE and MAE of a regression output's rows, each counted by its weight.
fn regression_metrics(scores: &[f32], targets: &[f32], weights: Option<&[f32]>) -> RegressionMetrics {
    let (mut se, mut ae, mut total) = (0.0, 0.0, 0.0);
    for (i, (&p, &y)) in scores.iter().zip(targets).enumerate() {
        let (w, d) = (weight_of(weights, i), f64::from(p) - f64::from(y));
        se += w * d * d;
        ae += w * d.abs();
        total += w;
    }
    let total = positive_or_one(total);
    RegressionMetrics {
        mse: se / total,
        mae: ae / total,
    }
}

/// `title` on a line, then each output's one-line summary indented by two spaces; nothing for
/// no metrics. What `mtl eval` and a training summary print.
pub fn metrics_block(title: &str, metrics: &[TaskMetrics]) -> String {
    if metrics.is_empty() {
        return String::new();
    }
    let mut text = format!("{title}\n");
    for m in metrics {
        text += &format!("  {}\n", m.summary());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauc_by_hand() {
        // group 7: positive 0.9 above both negatives (0.1, 0.8): AUC 1; group 3: positive 0.3
        // below its negative 0.6: AUC 0; group 5: positives only, left out; group 9: a tie
        // between its positive and negative, AUC ½
        let scores = [0.9, 0.3, 0.1, 0.5, 0.6, 0.8, 0.7, 0.4, 0.4];
        let labels = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0];
        let groups = [7, 3, 7, 5, 3, 7, 5, 9, 9];
        let g = gauc(&scores, &labels, &groups).unwrap();
        // (3 × 1 + 2 × 0 + 2 × ½) / 7
        assert!((g.value - 4.0 / 7.0).abs() < 1e-12, "{g:?}");
        assert_eq!((g.groups, g.rows, g.skipped_groups), (3, 7, 1));
        assert_eq!(
            gauc(&[0.2, 0.3], &[1.0, 1.0], &[1, 2]),
            None,
            "no group with both classes"
        );
        // one group is the plain AUC
        let one = gauc(&scores, &labels, &[0; 9]).unwrap();
        assert_eq!(Some(one.value), auc(&scores, &labels));
    }

    /// scikit-learn 1.9.1's values, computed once:
    /// `roc_auc_score(y, s, sample_weight=w)`, `log_loss(y, s, sample_weight=w)`, and the
    /// same without weights; `mean_squared_error` / `mean_absolute_error` with weights.
    #[test]
    fn weighted_metrics_equal_scikit_learns() {
        let s = [0.1, 0.4, 0.35, 0.8, 0.65, 0.35, 0.9, 0.2];
        let y = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0];
        let w = [1.0, 2.0, 0.5, 1.5, 3.0, 1.0, 0.25, 2.0];
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        close(weighted_auc(&s, &y, &w).unwrap(), 0.504_201_680_672_268_9);
        close(weighted_log_loss(&s, &y, Some(&w)), 0.783_298_079_625_031_6);
        close(weighted_auc(&s, &y, &[1.0; 8]).unwrap(), 0.656_25);
        close(auc(&s, &y).unwrap(), 0.656_25);
        close(log_loss(&s, &y), 0.635_569_410_489_970_4);
        let r = regression_metrics(
            &[1.0, 2.5, 0.0, 4.0],
            &[1.5, 2.0, 1.0, 3.0],
            Some(&[2.0, 1.0, 0.5, 0.5]),
        );
        close(r.mse, 0.4375);
        close(r.mae, 0.625);
        // a weight of 2 is the row twice; a weight of 0 is the row left out
        let twice = weighted_auc(&[0.3, 0.6, 0.5], &[1.0, 0.0, 0.0], &[2.0, 1.0, 1.0]);
        let dup = auc(&[0.3, 0.3, 0.6, 0.5], &[1.0, 1.0, 0.0, 0.0]);
        assert_eq!(twice, dup);
        let out = weighted_auc(
            &[0.3, 0.6, 0.5, 0.9],
            &[1.0, 0.0, 0.0, 1.0],
            &[1.0, 1.0, 1.0, 0.0],
        );
        assert_eq!(out, Some(0.0));
        assert_eq!(weighted_auc(&[0.3, 0.6], &[1.0, 0.0], &[1.0, 0.0]), None);
    }

    #[test]
    fn weighted_gauc_weights_groups_by_their_weight_and_the_rest_by_weight() {
        // group 1: (0.9 pos w 1, 0.2 neg w 3) AUC 1, weight 4; group 2: (0.1 pos w 1, 0.5 neg
        // w 1) AUC 0, weight 2 → 4/6; group 3 (one class) skipped
        let scores = [0.9, 0.2, 0.1, 0.5, 0.7];
        let labels = [1.0, 0.0, 1.0, 0.0, 1.0];
        let groups = [1, 1, 2, 2, 3];
        let weights = [1.0, 3.0, 1.0, 1.0, 5.0];
        let g = weighted_gauc(&scores, &labels, &groups, Some(&weights)).unwrap();
        assert!((g.value - 4.0 / 6.0).abs() < 1e-12, "{g:?}");
        assert_eq!((g.groups, g.rows, g.skipped_groups), (2, 4, 1));
        // the binary block: weighted mean prediction, observed rate and ECE
        let m = binary_metrics(&scores, &labels, Some(&weights), None);
        let total = 11.0;
        assert!((m.mean_prediction - (0.9 + 0.6 + 0.1 + 0.5 + 3.5) / total).abs() < 1e-6);
        assert!((m.observed_rate - 7.0 / total).abs() < 1e-12);
        let (bins, ece) = weighted_reliability(&scores, &labels, Some(&weights));
        // five rows, five bins of one row each: ECE = Σ wᵢ |pᵢ − yᵢ| / Σ w
        assert_eq!(bins.len(), 5);
        let want = (0.1 + 3.0 * 0.2 + 0.9 + 0.5 + 5.0 * 0.3) / total;
        assert!((ece - want).abs() < 1e-6, "{ece} vs {want}");
    }

    #[test]
    fn ece_and_reliability_bins_by_hand() {
        // 20 rows, predictions 0.05 ×10 and 0.6 ×10; observed 1 of 10 and 3 of 10: two
        // halves of ten equal-count bins, ECE = ½·|0.05 − 0.1| + ½·|0.6 − 0.3| = 0.175
        let scores: Vec<f32> = [0.05f32; 10].into_iter().chain([0.6f32; 10]).collect();
        let mut targets = vec![0f32; 20];
        targets[0] = 1.0;
        targets[10] = 1.0;
        targets[11] = 1.0;
        targets[12] = 1.0;
        let (bins, ece) = reliability(&scores, &targets);
        assert_eq!(bins.len(), 2, "tied predictions share a bin");
        assert!(bins.iter().all(|b| b.rows == 10));
        assert!((ece - 0.175).abs() < 1e-6, "{ece}");
        let observed: f64 = bins.iter().map(|b| b.observed_rate * b.rows as f64).sum();
        assert!((observed - 4.0).abs() < 1e-9);
        // a perfectly calibrated constant has ECE 0
        let (_, zero) = reliability(&[0.25; 8], &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        assert!(zero.abs() < 1e-9, "{zero}");
        // distinct predictions: ten bins of equal count
        let scores: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
        let targets: Vec<f32> = (0..100).map(|i| f32::from(i % 2 == 0)).collect();
        let (bins, _) = reliability(&scores, &targets);
        assert_eq!(bins.iter().map(|b| b.rows).collect::<Vec<_>>(), [10; 10]);
    }

    #[test]
    fn auc_hand_cases() {
        // perfect, reversed, and the textbook 4-point case
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]), Some(0.75));
        assert_eq!(auc(&[0.1, 0.2, 0.3], &[0.0, 1.0, 1.0]), Some(1.0));
        assert_eq!(auc(&[0.3, 0.2, 0.1], &[0.0, 1.0, 1.0]), Some(0.0));
        // ties: all scores equal → ½
        assert_eq!(auc(&[0.5; 4], &[0.0, 1.0, 0.0, 1.0]), Some(0.5));
        // one tied pair of 2 pos × 2 neg = 4 pairs: (p1 > n1) (p1 > n2) (p2 = n2 tie) (p2 > n1)
        // scores: n1 = 0.1, n2 = 0.5, p1 = 0.9, p2 = 0.5 → (1 + 1 + ½ + 1) / 4 = 0.875
        assert_eq!(auc(&[0.1, 0.5, 0.9, 0.5], &[0.0, 0.0, 1.0, 1.0]), Some(0.875));
        assert_eq!(auc(&[0.1, 0.2], &[1.0, 1.0]), None);
        assert_eq!(auc(&[], &[]), None);
    }

    #[test]
    fn auc_equals_pair_count_on_random_data() {
        let mut s = 12345u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as f32 / (1u64 << 31) as f32
        };
        let scores: Vec<f32> = (0..300).map(|_| (next() * 20.0).floor() / 20.0).collect();
        let labels: Vec<f32> = (0..300).map(|_| if next() < 0.3 { 1.0 } else { 0.0 }).collect();
        let (mut wins, mut pairs) = (0.0, 0.0);
        for i in 0..300 {
            for j in 0..300 {
                if labels[i] > 0.5 && labels[j] < 0.5 {
                    pairs += 1.0;
                    wins += if scores[i] > scores[j] {
                        1.0
                    } else if scores[i] == scores[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        assert!((auc(&scores, &labels).unwrap() - wins / pairs).abs() < 1e-12);
    }

    #[test]
    fn cvr_is_evaluated_on_clicked_rows_only() {
        // rows: (click, buy): cvr predictions rank buyers first among clicked rows, but an
        // unclicked row with a high score would spoil an all-rows AUC
        let data = EncodedData {
            rows: 5,
            n_sparse: 0,
            seq_max_len: vec![],
            n_dense: 0,
            n_labels: 2,
            labels: vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0],
            ..Default::default()
        };
        let cvr = OutputSpec {
            name: "cvr".into(),
            kind: LabelKind::Binary,
            target: vec![1],
            rows_where: Some(0),
        };
        let ctcvr = OutputSpec {
            name: "ctcvr".into(),
            kind: LabelKind::Binary,
            target: vec![0, 1],
            rows_where: None,
        };
        let preds = vec![0.9, 0.2, 0.99, 0.8, 0.1];
        let names = vec!["click".to_string(), "purchase".to_string()];
        let m = evaluate(&[cvr, ctcvr], &[preds.clone(), preds], &data, &names);
        assert_eq!(m[0].rows, 3);
        assert_eq!(m[0].rows_from, "rows with click = 1");
        assert_eq!(m[0].get("auc"), Some(1.0));
        // all rows: positives are rows 0, 3; negatives 1, 2, 4 → pairs won: 0.9 > {0.2, 0.1}, 0.8 > {0.2, 0.1} → 4/6
        assert!((m[1].get("auc").unwrap() - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(m[1].rows, 5);
    }

    #[test]
    fn single_class_and_regression() {
        let data = EncodedData {
            rows: 2,
            n_labels: 1,
            labels: vec![0.0, 0.0],
            ..Default::default()
        };
        let spec = OutputSpec::simple("ctr", LabelKind::Binary, 0);
        let m = evaluate(&[spec], &[vec![0.2, 0.4]], &data, &["click".into()]);
        let b = m[0].binary.as_ref().unwrap();
        assert_eq!(b.auc, None);
        assert_eq!(b.auc_note.as_deref(), Some("n/a (no positives)"));
        assert!(m[0].summary().contains("no positives"));
        assert!((b.log_loss - (-(0.8f64).ln() - (0.6f64).ln()) / 2.0).abs() < 1e-6);
        let data = EncodedData {
            rows: 2,
            n_labels: 1,
            labels: vec![1.0, 3.0],
            ..Default::default()
        };
        let spec = OutputSpec::simple("dwell", LabelKind::Regression, 0);
        let m = evaluate(&[spec], &[vec![2.0, 2.0]], &data, &["dwell".into()]);
        assert_eq!(m[0].get("mse"), Some(1.0));
        assert_eq!(m[0].get("mae"), Some(1.0));
    }
}
