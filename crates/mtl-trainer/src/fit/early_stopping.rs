//! Early stopping: the watched value of an evaluation and whether it improves on the best, in
//! the metric's explicit direction ([`Direction`], checked against the model's outputs before
//! the first step).

use crate::config::{Direction, EarlyStopping};
use crate::fit::state::EvalRecord;

/// The value early stopping watches in an evaluation.
pub(crate) fn monitored(record: &EvalRecord, metric: &str) -> Option<f64> {
    if metric == "loss" {
        return record.valid_loss;
    }
    let (output, name) = metric.split_once('.')?;
    record.valid.iter().find(|m| m.name == output)?.get(name)
}

/// Whether `value` improves on `best` in the metric's direction (AUC up; loss, MSE down).
pub fn improves(es: &EarlyStopping, value: f64, best: Option<f64>) -> bool {
    match (best, es.direction()) {
        (None, _) => true,
        (Some(best), Direction::Higher) => value > best,
        (Some(best), Direction::Lower) => value < best,
    }
}
