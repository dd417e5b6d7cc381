//! Evaluating a model directory on a data file.

use std::path::Path;

use mtl_data::{BadRowPolicy, Input, ReadReport, read_input};
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
    eval_file_grouped::<R>(dir, data, backend, policy, allow_unfinished, None)
}

/// [`eval_file`], with each binary output's GAUC over the rows grouped by the column
/// `group_by` (a user, a request) when given.
pub fn eval_file_grouped<R: Registry>(
    dir: &Path,
    data: &Path,
    backend: &str,
    policy: BadRowPolicy,
    allow_unfinished: bool,
    group_by: Option<&str>,
) -> Result<(Vec<TaskMetrics>, ReadReport), TrainError> {
    let input = Input::File(data.to_path_buf());
    eval_input::<R>(dir, &input, backend, policy, allow_unfinished, group_by)
}

/// [`eval_file_grouped`] for any [`Input`]: a file, or Arrow batches held in memory.
pub fn eval_input<R: Registry>(
    dir: &Path,
    data: &Input,
    backend: &str,
    policy: BadRowPolicy,
    allow_unfinished: bool,
    group_by: Option<&str>,
) -> Result<(Vec<TaskMetrics>, ReadReport), TrainError> {
    let model = open_for_inference::<R>(dir, allow_unfinished)?;
    let plan = R::plan(&model.model, &model.schema)?;
    let encoder = model.encoder.clone().with_label_rules(plan.label_rules);
    let by = group_by.map(|c| (c, "--group-by"));
    let (encoded, report, tags) = read_input(data, &encoder, policy, true, by, false)?;
    // each distinct text of the group column a number
    let groups: Option<Vec<u32>> = group_by.map(|_| {
        let mut ids = std::collections::HashMap::new();
        tags.ids
            .iter()
            .map(|g| {
                let next = ids.len() as u32;
                *ids.entry(g.as_str()).or_insert(next)
            })
            .collect()
    });
    Ok((
        model.evaluate_grouped(&encoded, backend, groups.as_deref())?,
        report,
    ))
}
