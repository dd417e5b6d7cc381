//! Evaluating a model directory on a data file.

use std::path::Path;

use mtl_data::{BadRowPolicy, Input, ReadReport, read_input};
use mtl_eval::TaskMetrics;

use crate::config::with_weight_column;
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
    eval_file_grouped::<R>(dir, data, backend, policy, allow_unfinished, Counting::default())
}

/// How an evaluation counts the rows: grouped by a column for GAUC, weighted by a column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counting<'a> {
    /// The column whose groups (a user, a request) each binary output's GAUC averages over.
    pub group_by: Option<&'a str>,
    /// The column of sample weights every metric counts each row by (as `[data] weight` in
    /// training).
    pub weight: Option<&'a str>,
}

/// [`eval_file`], with the rows counted as `counting` says: each binary output's GAUC over the
/// groups of `group_by`, every metric weighted by `weight`.
pub fn eval_file_grouped<R: Registry>(
    dir: &Path,
    data: &Path,
    backend: &str,
    policy: BadRowPolicy,
    allow_unfinished: bool,
    counting: Counting<'_>,
) -> Result<(Vec<TaskMetrics>, ReadReport), TrainError> {
    let input = Input::File(data.to_path_buf());
    eval_input::<R>(dir, &input, backend, policy, allow_unfinished, counting)
}

/// [`eval_file_grouped`] for any [`Input`]: a file, or Arrow batches held in memory.
pub fn eval_input<R: Registry>(
    dir: &Path,
    data: &Input,
    backend: &str,
    policy: BadRowPolicy,
    allow_unfinished: bool,
    counting: Counting<'_>,
) -> Result<(Vec<TaskMetrics>, ReadReport), TrainError> {
    let model = open_for_inference::<R>(dir, allow_unfinished)?;
    let plan = R::plan(&model.model, &model.schema)?;
    let (schema, weight_label) = with_weight_column(model.schema.clone(), counting.weight, "--weight")?;
    let encoder = (model.encoder.clone())
        .with_labels(schema.schema.labels.clone())
        .with_label_rules(plan.label_rules)
        .with_weight_label(weight_label);
    let by = counting.group_by.map(|c| (c, "--group-by"));
    let (encoded, report, tags) = read_input(data, &encoder, policy, true, by, false)?;
    // each distinct text of the group column a number
    let groups: Option<Vec<u32>> = counting.group_by.map(|_| {
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
        model.evaluate_weighted(
            &encoded,
            backend,
            groups.as_deref(),
            weight_label.zip(counting.weight),
        )?,
        report,
    ))
}
