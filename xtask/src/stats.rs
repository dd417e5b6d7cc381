//! Small statistics for the quality report: Spearman correlation and AUC against soft labels.

use std::path::Path;

use anyhow::{Context, Result};

/// Ranks with ties given their average rank (1-based).
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        for &k in &order[i..=j] {
            r[k] = (i + j + 2) as f64 / 2.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (Pearson correlation of average ranks).
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// AUC of `scores` when row i is positive with probability `p[i]`: the expected AUC over
/// labels drawn from the true probabilities (pairs i ≠ j weighted p_i·(1 − p_j), ties ½).
pub fn soft_auc(scores: &[f64], p: &[f64]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let total_neg: f64 = p.iter().map(|q| 1.0 - q).sum();
    let (mut num, mut den, mut neg_below) = (0.0, 0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let group = &order[i..=j];
        let neg_group: f64 = group.iter().map(|&k| 1.0 - p[k]).sum();
        for &k in group {
            let own_neg = 1.0 - p[k];
            num += p[k] * (neg_below + 0.5 * (neg_group - own_neg));
            den += p[k] * (total_neg - own_neg);
        }
        neg_below += neg_group;
        i = j + 1;
    }
    (den > 0.0).then(|| num / den)
}

/// Copies the header and the rows whose first column is `1` (clicked rows).
pub fn filter_clicked(from: &Path, to: &Path) -> Result<()> {
    let text = std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let mut out = String::with_capacity(text.len() / 8);
    let mut lines = text.lines();
    out += lines.next().unwrap_or("");
    out.push('\n');
    for line in lines.filter(|l| l.starts_with("1,")) {
        out += line;
        out.push('\n');
    }
    std::fs::write(to, out).with_context(|| format!("writing {}", to.display()))
}

/// Two numeric columns of a CSV file.
pub fn read_two_columns(path: &Path, a: &str, b: &str) -> Result<(Vec<f64>, Vec<f64>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let find = |n: &str| {
        header
            .iter()
            .position(|h| *h == n)
            .with_context(|| format!("{}: no column {n}", path.display()))
    };
    let (ia, ib) = (find(a)?, find(b)?);
    let (mut xa, mut xb) = (Vec::new(), Vec::new());
    for (k, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        let parse = |i: usize| -> Result<f64> {
            cells
                .get(i)
                .and_then(|c| c.parse().ok())
                .with_context(|| format!("{}:{}: bad number", path.display(), k + 2))
        };
        xa.push(parse(ia)?);
        xb.push(parse(ib)?);
    }
    Ok((xa, xb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_hand_cases() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        // ranks a = (1, 2, 3, 4), b = (2, 1, 4, 3): 1 − 6·Σd²/(n(n²−1)) = 1 − 6·4/60 = 0.6
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[2.0, 1.0, 4.0, 3.0]).unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), None);
    }

    #[test]
    fn soft_auc_reduces_to_auc_on_hard_labels_and_counts_ties() {
        // hard labels: the usual AUC (textbook case 0.75)
        let auc = soft_auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]).unwrap();
        assert!((auc - 0.75).abs() < 1e-12);
        // two rows, p = (0.9, 0.2), scores ordered with p: pairs (0 pos, 1 neg) w = 0.9·0.8 won,
        // (1 pos, 0 neg) w = 0.2·0.1 lost → 0.72 / 0.74
        let auc = soft_auc(&[0.9, 0.1], &[0.9, 0.2]).unwrap();
        assert!((auc - 0.72 / 0.74).abs() < 1e-12);
        // all tied → ½
        assert!((soft_auc(&[0.5, 0.5, 0.5], &[0.3, 0.6, 0.1]).unwrap() - 0.5).abs() < 1e-12);
    }
}
