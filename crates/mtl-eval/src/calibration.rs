//! Post-hoc calibration of binary outputs (`[train] calibration = "platt" | "isotonic"`):
//! fitted on the validation predictions after training, per binary output on the rows its
//! metric uses (CVR: clicked rows), saved as `calibration.json` beside the model and applied by
//! `eval`, `predict` and `serve`.
//!
//! ```text
//! platt     p' = σ(a · logit(p) + b)              a, b by Newton's method on the log loss
//! isotonic  p' = the non-decreasing fit of y on p (pool adjacent violators), interpolated
//!           linearly between the fitted blocks' mean predictions, flat beyond them
//! ```

use std::path::Path;

use mtl_features::{EncodedData, LabelKind};
use mtl_layers::OutputSpec;
use serde::{Deserialize, Serialize};

use crate::EvalError;
use crate::error::io_err;
use crate::metrics::rows_of;

/// File name of a model directory's calibration.
pub const CALIBRATION_FILE: &str = "calibration.json";

/// Which post-hoc calibration to fit (`[train] calibration`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CalibrationMethod {
    /// None (the default).
    #[default]
    None,
    /// Platt scaling: a logistic regression on the logit of the prediction.
    Platt,
    /// Isotonic regression.
    Isotonic,
}

/// One output's fitted map from predicted to calibrated probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Calibrator {
    /// `σ(a · logit(p) + b)`.
    Platt {
        /// Slope on the logit.
        a: f64,
        /// Intercept.
        b: f64,
    },
    /// Linear interpolation through `(x[i], y[i])`, `x` increasing, `y` non-decreasing.
    Isotonic {
        /// Mean prediction of each fitted block.
        x: Vec<f64>,
        /// Observed rate of each fitted block.
        y: Vec<f64>,
    },
}

fn logit(p: f64) -> f64 {
    mtl_layers::head::logit_clamped(p, 1e-7)
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Calibrator {
    /// Platt scaling fitted on predictions `p` and labels `y` (Newton's method, at most 100
    /// iterations, with a small ridge so that separable data stays finite).
    pub fn fit_platt(p: &[f32], y: &[f32]) -> Self {
        let z: Vec<f64> = p.iter().map(|&p| logit(f64::from(p))).collect();
        let (mut a, mut b) = (1.0, 0.0);
        for _ in 0..100 {
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-6, 0.0, 1e-6);
            for (&z, &y) in z.iter().zip(y) {
                let q = sigmoid(a * z + b);
                let r = q - f64::from(y);
                let w = q * (1.0 - q);
                ga += r * z;
                gb += r;
                haa += w * z * z;
                hab += w * z;
                hbb += w;
            }
            let det = haa * hbb - hab * hab;
            if det.abs() < 1e-300 {
                break;
            }
            let da = (hbb * ga - hab * gb) / det;
            let db = (haa * gb - hab * ga) / det;
            a -= da;
            b -= db;
            if da.abs() < 1e-10 && db.abs() < 1e-10 {
                break;
            }
        }
        Self::Platt { a, b }
    }

    /// Isotonic regression of `y` on `p` by pooling adjacent violators.
    pub fn fit_isotonic(p: &[f32], y: &[f32]) -> Self {
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
        // blocks of (sum of p, sum of y, count), merged while a block's rate is below the last
        let mut blocks: Vec<(f64, f64, f64)> = Vec::new();
        for i in order {
            blocks.push((f64::from(p[i]), f64::from(y[i]), 1.0));
            while blocks.len() > 1 {
                let (last, before) = (blocks[blocks.len() - 1], blocks[blocks.len() - 2]);
                if before.1 / before.2 < last.1 / last.2 {
                    break;
                }
                blocks.pop();
                let n = blocks.len();
                blocks[n - 1] = (before.0 + last.0, before.1 + last.1, before.2 + last.2);
            }
        }
        Self::Isotonic {
            x: blocks.iter().map(|b| b.0 / b.2).collect(),
            y: blocks.iter().map(|b| b.1 / b.2).collect(),
        }
    }

    /// The calibrated probability of prediction `p`.
    pub fn apply(&self, p: f32) -> f32 {
        match self {
            Self::Platt { a, b } => sigmoid(a * logit(f64::from(p)) + b) as f32,
            Self::Isotonic { x, y } => {
                let p = f64::from(p);
                if x.is_empty() {
                    return p as f32;
                }
                let k = x.partition_point(|&v| v < p);
                let v = if k == 0 {
                    y[0]
                } else if k == x.len() {
                    y[x.len() - 1]
                } else {
                    let t = (p - x[k - 1]) / (x[k] - x[k - 1]).max(1e-300);
                    y[k - 1] + t * (y[k] - y[k - 1])
                };
                v as f32
            }
        }
    }
}

/// The calibrators of a model's binary outputs, by output name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// `(output, calibrator)`, in output order.
    pub outputs: Vec<(String, Calibrator)>,
    /// `(output, why)`: outputs whose map was not fitted or was refused, left uncalibrated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<(String, String)>,
}

/// Why a map fitted on `targets` is refused for its output, if it is: fewer than two rows, or
/// one class only (every map would then send all scores to one value), or a Platt slope that
/// is not positive (it would reverse or erase the ranking). Isotonic maps are non-decreasing
/// by construction.
pub fn refusal(targets: &[f32], fitted: &Calibrator) -> Option<String> {
    let positives = targets.iter().filter(|&&y| y > 0.5).count();
    if targets.len() < 2 {
        return Some(format!(
            "{} validation row(s): too few to fit a map",
            targets.len()
        ));
    }
    if positives == 0 || positives == targets.len() {
        let class = if positives == 0 { 0 } else { 1 };
        return Some(format!(
            "all {} validation rows have label {class}: a map fitted on one class sends every score to one value",
            targets.len()
        ));
    }
    match fitted {
        Calibrator::Platt { a, .. } if a.is_nan() || *a <= 0.0 => Some(format!(
            "Platt's slope came out {a:.4}, not positive: the map would reverse or erase the ranking"
        )),
        _ => None,
    }
}

impl Calibration {
    /// Fits `method` for every binary output on its evaluation rows of `data` (`predictions`
    /// one column per output); `None` for [`CalibrationMethod::None`]. An output whose map is
    /// refused ([`refusal`]) stays uncalibrated and is listed in [`Calibration::refused`].
    pub fn fit(
        method: CalibrationMethod,
        specs: &[OutputSpec],
        predictions: &[Vec<f32>],
        data: &EncodedData,
    ) -> Option<Self> {
        let fit = match method {
            CalibrationMethod::None => return None,
            CalibrationMethod::Platt => Calibrator::fit_platt,
            CalibrationMethod::Isotonic => Calibrator::fit_isotonic,
        };
        let mut calibration = Self::default();
        for (spec, pred) in specs.iter().zip(predictions) {
            if spec.kind != LabelKind::Binary {
                continue;
            }
            let (scores, targets) = rows_of(spec, pred, data);
            let fitted = fit(&scores, &targets);
            match refusal(&targets, &fitted) {
                Some(why) => calibration.refused.push((spec.name.clone(), why)),
                None => calibration.outputs.push((spec.name.clone(), fitted)),
            }
        }
        Some(calibration)
    }

    /// Replaces the predictions of every calibrated output (`names` are the columns' outputs).
    pub fn apply(&self, names: &[String], predictions: &mut [Vec<f32>]) {
        for (name, column) in names.iter().zip(predictions) {
            if let Some((_, c)) = self.outputs.iter().find(|(n, _)| n == name) {
                for p in column.iter_mut() {
                    *p = c.apply(*p);
                }
            }
        }
    }

    /// Reads `calibration.json` of a model directory, if there is one.
    pub fn load(dir: &Path) -> Result<Option<Self>, EvalError> {
        let path = dir.join(CALIBRATION_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| EvalError::Config {
                file: path.display().to_string(),
                message: e.to_string(),
            })
    }

    /// Writes `calibration.json` into a model directory (atomically).
    pub fn save(&self, dir: &Path) -> Result<(), EvalError> {
        let json = serde_json::to_vec_pretty(self).expect("calibration serialises");
        mtl_features::atomic_write(&dir.join(CALIBRATION_FILE), &json)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isotonic_pools_violators_by_hand() {
        // p sorted: 0.1 (y 1), 0.2 (y 0), 0.3 (y 0), 0.4 (y 1): the first three pool to 1/3
        let c = Calibrator::fit_isotonic(&[0.3, 0.1, 0.4, 0.2], &[0.0, 1.0, 1.0, 0.0]);
        let Calibrator::Isotonic { x, y } = &c else {
            panic!()
        };
        assert_eq!(y.len(), 2);
        assert!((y[0] - 1.0 / 3.0).abs() < 1e-12 && (y[1] - 1.0).abs() < 1e-12);
        assert!((x[0] - 0.2).abs() < 1e-6 && (x[1] - 0.4).abs() < 1e-6);
        // flat beyond the ends, linear between block means
        assert!((c.apply(0.0) - 1.0 / 3.0).abs() < 1e-6);
        assert!((c.apply(0.9) - 1.0).abs() < 1e-6);
        assert!((c.apply(0.3) - (1.0 / 3.0 + 0.5 * (2.0 / 3.0)) as f32).abs() < 1e-5);
    }

    #[test]
    fn maps_that_would_reverse_or_flatten_the_ranking_are_refused() {
        // scores that rank backwards: Platt's slope comes out negative
        let p: Vec<f32> = (0..200).map(|i| 0.05 + 0.9 * i as f32 / 200.0).collect();
        let y: Vec<f32> = (0..200).map(|i| f32::from(i < 100)).collect();
        let platt = Calibrator::fit_platt(&p, &y);
        let Calibrator::Platt { a, .. } = platt else {
            panic!()
        };
        assert!(a < 0.0, "slope {a}");
        assert!(refusal(&y, &platt).unwrap().contains("not positive"));
        // isotonic on the same scores is non-decreasing (flat here), never reversing
        let iso = Calibrator::fit_isotonic(&p, &y);
        assert!(refusal(&y, &iso).is_none());
        let mapped: Vec<f32> = p.iter().map(|&s| iso.apply(s)).collect();
        assert!(mapped.windows(2).all(|w| w[0] <= w[1]), "{mapped:?}");
        // one class, or one row: refused for either method
        let ones = vec![1.0f32; 50];
        for c in [
            Calibrator::fit_platt(&p[..50], &ones),
            Calibrator::fit_isotonic(&p[..50], &ones),
        ] {
            assert!(refusal(&ones, &c).unwrap().contains("label 1"));
        }
        assert!(
            refusal(&[0.0], &Calibrator::fit_isotonic(&[0.3], &[0.0]))
                .unwrap()
                .contains("too few")
        );
        // a well-ranked output is kept
        let good: Vec<f32> = (0..200).map(|i| f32::from(i >= 100)).collect();
        assert!(refusal(&good, &Calibrator::fit_platt(&p, &good)).is_none());
    }

    #[test]
    fn isotonic_maps_are_non_decreasing_on_any_data() {
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..50 {
            let n = 1 + (next() * 300.0) as usize;
            let p: Vec<f32> = (0..n).map(|_| next() as f32).collect();
            let y: Vec<f32> = (0..n).map(|_| f32::from(next() < 0.3)).collect();
            let c = Calibrator::fit_isotonic(&p, &y);
            let mut grid: Vec<f32> = (0..=100).map(|i| i as f32 / 100.0).collect();
            grid.extend(&p);
            grid.sort_by(f32::total_cmp);
            let mapped: Vec<f32> = grid.iter().map(|&s| c.apply(s)).collect();
            assert!(mapped.windows(2).all(|w| w[0] <= w[1] + 1e-7));
        }
    }

    #[test]
    fn platt_recovers_a_known_distortion() {
        // true probability q, prediction p = σ(2·logit(q) + 1): Platt must find a = ½, b = −½
        let n = 20_000;
        let (mut p, mut y) = (Vec::new(), Vec::new());
        let mut state = 12345u64;
        for i in 0..n {
            let q = 0.02 + 0.96 * (i as f64 + 0.5) / n as f64;
            p.push(sigmoid(2.0 * logit(q) + 1.0) as f32);
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            y.push(f32::from(u < q));
        }
        let Calibrator::Platt { a, b } = Calibrator::fit_platt(&p, &y) else {
            panic!()
        };
        assert!((a - 0.5).abs() < 0.03 && (b + 0.5).abs() < 0.05, "a {a} b {b}");
        // an already calibrated prediction stays (nearly) put
        let q: Vec<f32> = p
            .iter()
            .map(|&p| sigmoid(0.5 * logit(f64::from(p)) - 0.5) as f32)
            .collect();
        let Calibrator::Platt { a, b } = Calibrator::fit_platt(&q, &y) else {
            panic!()
        };
        assert!((a - 1.0).abs() < 0.05 && b.abs() < 0.05, "a {a} b {b}");
    }
}
