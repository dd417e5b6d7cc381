//! Evaluating a model directory on a data file.

use std::path::Path;

use mtl_data::{BadRowPolicy, ReadReport, read_encoded};
use mtl_eval::TaskMetrics;

use crate::jobs::model_dir::open_for_inference;
use crate::{Registry, TrainError};

/// Evaluates a model directory on a CSV file (its rows must follow the model's label rules,
/// as training rows do); the model of an unfinished run only when `allow_unfinished`.
pub fn eval_file<R: Registry>(
    dir: &Path,
    data: &Path,
    backend: &str,
    policy: BadRowPolicy,
    allow_unfinished: bool,
) -> Result<(Vec<TaskMetrics>, ReadReport), TrainError> {
    let model = open_for_inference::<R>(dir, allow_unfinished)?;
    let plan = R::plan(&model.model, &model.schema)?;
    let encoder = model.encoder.clone().with_label_rules(plan.label_rules);
    let (encoded, report, _) = read_encoded(data, &encoder, policy, true, None)?;
    Ok((model.evaluate(&encoded, backend)?, report))
}
