//! # mtl-eval
//!
//! Scoring trained multi-task models, apart from training them: the metrics ([`metrics`]:
//! AUC, log loss, reliability and ECE, per output with CVR-style outputs scored on their own
//! rows), post-hoc calibration ([`calibration`]: Platt, isotonic, `calibration.json`), the
//! gate-utilisation report ([`gates`]), predicting a whole set ([`predict`]), and a trained
//! model directory opened for inference ([`model_dir`]). The trainer reports with these;
//! `mtl-serve` scores with them without linking the trainer.

pub mod calibration;
mod error;
pub mod gates;
pub mod metrics;
pub mod model_dir;
pub mod predict;

pub use calibration::{Calibration, CalibrationMethod, Calibrator};
pub use error::{EvalError, io_err, record_err};
pub use metrics::{TaskMetrics, auc};
pub use model_dir::{ModelDir, backend_device};
pub use predict::{Losses, Predictions, predict_all, predict_rows, to_host};
