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

/// Mean and sample standard deviation (0 for one value); `None` for no values.
pub fn mean_sd(v: &[f64]) -> Option<(f64, f64)> {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (!v.is_empty()).then_some((mean, sd))
}

/// Mean and standard error of the mean (`sd / √n`); `None` for no values.
pub fn mean_se(v: &[f64]) -> Option<(f64, f64)> {
    mean_sd(v).map(|(m, sd)| (m, sd / (v.len() as f64).sqrt()))
}

/// `mean ± se` of `xs` with `digits` decimals, or `–` for none.
pub fn mean_se_text(xs: &[f64], digits: usize) -> String {
    mean_se(xs).map_or("–".into(), |(m, se)| format!("{m:.digits$} ± {se:.digits$}"))
}

/// Copies the rows of a CSV whose column `column` is `1` (the header too): the rows where a
/// funnel step happened, e.g. the clicked rows.
pub fn filter_where(from: &Path, to: &Path, column: &str) -> Result<()> {
    let text = std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let mut out = String::with_capacity(text.len() / 8);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let at = header
        .split(',')
        .position(|h| h == column)
        .with_context(|| format!("{}: no column {column}", from.display()))?;
    out += header;
    out.push('\n');
    for line in lines.filter(|l| l.split(',').nth(at) == Some("1")) {
        out += line;
        out.push('\n');
    }
    std::fs::write(to, out).with_context(|| format!("writing {}", to.display()))
}

/// Numeric columns of a CSV file, by name, in the order asked.
pub fn read_columns(path: &Path, names: &[&str]) -> Result<Vec<Vec<f64>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let at = names
        .iter()
        .map(|n| {
            header
                .iter()
                .position(|h| h == n)
                .with_context(|| format!("{}: no column {n}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut columns = vec![Vec::new(); names.len()];
    for (k, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        for (column, &i) in columns.iter_mut().zip(&at) {
            let value = cells
                .get(i)
                .and_then(|c| c.parse().ok())
                .with_context(|| format!("{}:{}: bad number", path.display(), k + 2))?;
            column.push(value);
        }
    }
    Ok(columns)
}

/// Two numeric columns of a CSV file.
pub fn read_two_columns(path: &Path, a: &str, b: &str) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut columns = read_columns(path, &[a, b])?.into_iter();
    Ok((
        columns.next().unwrap_or_default(),
        columns.next().unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_sd_and_se_by_hand() {
        // 2, 4, 6: mean 4, sd √((4 + 0 + 4)/2) = 2, se 2/√3
        let (m, sd) = mean_sd(&[2.0, 4.0, 6.0]).unwrap();
        assert_eq!((m, sd), (4.0, 2.0));
        let (_, se) = mean_se(&[2.0, 4.0, 6.0]).unwrap();
        assert!((se - 2.0 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(mean_sd(&[]), None);
        assert_eq!(mean_sd(&[5.0]), Some((5.0, 0.0)));
    }

    #[test]
    fn filter_and_read_columns_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
        std::fs::write(&from, "click,cart,x\n1,0,0.5\n0,0,1.5\n1,1,2.5\n").unwrap();
        filter_where(&from, &to, "cart").unwrap();
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "click,cart,x\n1,1,2.5\n");
        filter_where(&from, &to, "click").unwrap();
        let cols = read_columns(&to, &["x", "click"]).unwrap();
        assert_eq!(cols, vec![vec![0.5, 2.5], vec![1.0, 1.0]]);
        assert!(
            filter_where(&from, &to, "buy")
                .unwrap_err()
                .to_string()
                .contains("no column buy")
        );
    }

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
