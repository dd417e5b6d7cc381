//! Per-task metrics over a whole evaluation set (never averaged per batch).
//!
//! Binary tasks: exact ROC AUC (ties get the average rank, so a tie counts ½), log loss, mean
//! prediction and observed rate. Regression tasks: MSE and MAE. A binary task whose rows hold
//! one class only reports that instead of an AUC.

use mtl_features::{EncodedData, LabelKind};
use mtl_layers::OutputSpec;
use serde::{Deserialize, Serialize};

/// Exact ROC AUC by the rank-sum (Mann–Whitney) formula with average ranks for ties.
/// `None` when `labels` hold only one class.
pub fn auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len());
    let n = scores.len();
    let positives = labels.iter().filter(|&&y| y > 0.5).count();
    let negatives = n - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // ranks i+1 ..= j+1 share their average
        let avg = (i + j + 2) as f64 / 2.0;
        rank_sum += avg * order[i..=j].iter().filter(|&&k| labels[k] > 0.5).count() as f64;
        i = j + 1;
    }
    let p = positives as f64;
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64))
}

/// Mean binary cross-entropy of probabilities, clamped to [1e-7, 1 − 1e-7].
pub fn log_loss(probs: &[f32], labels: &[f32]) -> f64 {
    let eps = 1e-7;
    let sum: f64 = probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = f64::from(p).clamp(eps, 1.0 - eps);
            -(f64::from(y) * p.ln() + (1.0 - f64::from(y)) * (1.0 - p).ln())
        })
        .sum();
    sum / probs.len().max(1) as f64
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
    assert!(scores.len() == labels.len() && labels.len() == groups.len());
    let mut members: std::collections::BTreeMap<u32, Vec<usize>> = std::collections::BTreeMap::new();
    for (r, &g) in groups.iter().enumerate() {
        members.entry(g).or_default().push(r);
    }
    let (mut weighted, mut rows, mut counted, mut skipped) = (0.0, 0, 0, 0);
    for rows_of_group in members.values() {
        let s: Vec<f32> = rows_of_group.iter().map(|&r| scores[r]).collect();
        let y: Vec<f32> = rows_of_group.iter().map(|&r| labels[r]).collect();
        match auc(&s, &y) {
            Some(a) => {
                weighted += a * s.len() as f64;
                rows += s.len();
                counted += 1;
            }
            None => skipped += 1,
        }
    }
    (counted > 0).then(|| Gauc {
        value: weighted / rows as f64,
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
    let n = scores.len();
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
        let k = rows.len() as f64;
        let mean_prediction = rows.iter().map(|&r| f64::from(scores[r])).sum::<f64>() / k;
        let observed_rate = rows.iter().map(|&r| f64::from(targets[r])).sum::<f64>() / k;
        ece += k / n as f64 * (mean_prediction - observed_rate).abs();
        out.push(ReliabilityBin {
            rows: rows.len(),
            mean_prediction,
            observed_rate,
        });
    }
    (out, ece)
}

/// The predictions and targets of one output on the rows its metrics use (`rows_where`).
pub fn rows_of(spec: &OutputSpec, pred: &[f32], data: &EncodedData) -> (Vec<f32>, Vec<f32>) {
    let mut scores = Vec::with_capacity(data.rows);
    let mut targets = Vec::with_capacity(data.rows);
    for (r, &score) in pred.iter().enumerate().take(data.rows) {
        let label = |i: usize| data.labels[r * data.n_labels + i];
        if let Some(w) = spec.rows_where
            && label(w) < 0.5
        {
            continue;
        }
        scores.push(score);
        targets.push(spec.target.iter().map(|&i| label(i)).product::<f32>());
    }
    (scores, targets)
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
    outputs
        .iter()
        .zip(predictions)
        .map(|(spec, pred)| {
            let (scores, targets) = rows_of(spec, pred, data);
            let grouped = groups.and_then(|g| {
                let ids: Vec<u32> = (0..data.rows)
                    .filter(|&r| {
                        spec.rows_where
                            .is_none_or(|w| data.labels[r * data.n_labels + w] >= 0.5)
                    })
                    .map(|r| g[r])
                    .collect();
                gauc(&scores, &targets, &ids)
            });
            let rows_from = spec.rows_where.map_or_else(
                || "all rows".to_string(),
                |w| format!("rows with {} = 1", label_names[w]),
            );
            let n = scores.len().max(1) as f64;
            let (binary, regression) = match spec.kind {
                LabelKind::Binary => {
                    let auc = auc(&scores, &targets);
                    let positives = targets.iter().filter(|&&y| y > 0.5).count();
                    let auc_note = auc.is_none().then(|| {
                        if scores.is_empty() {
                            "no rows".to_string()
                        } else if positives == 0 {
                            "n/a (no positives)".to_string()
                        } else {
                            "n/a (no negatives)".to_string()
                        }
                    });
                    let (reliability, ece) = reliability(&scores, &targets);
                    (
                        Some(BinaryMetrics {
                            auc,
                            auc_note,
                            ece,
                            reliability,
                            log_loss: log_loss(&scores, &targets),
                            mean_prediction: scores.iter().map(|&p| f64::from(p)).sum::<f64>() / n,
                            observed_rate: positives as f64 / n,
                            gauc: grouped,
                        }),
                        None,
                    )
                }
                LabelKind::Regression => {
                    let (mut se, mut ae) = (0.0, 0.0);
                    for (&p, &y) in scores.iter().zip(&targets) {
                        let d = f64::from(p) - f64::from(y);
                        se += d * d;
                        ae += d.abs();
                    }
                    (
                        None,
                        Some(RegressionMetrics {
                            mse: se / n,
                            mae: ae / n,
                        }),
                    )
                }
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
