//! Tasks of a per-task model (MMOE, OMoE, Shared-Bottom, PLE, AITM): their config, their
//! resolution against the schema, their towers, and their heads and losses.

use burn::tensor::{Device, Tensor};
use mtl_features::{
    BatchTensors, FieldPooling, InputLayer, InputSpec, LabelKind, LabelRule, TableLayout, ValidSchema,
};
use serde::{Deserialize, Serialize};

use crate::head::{logit_clamped, predict, task_loss_rows};
use crate::tower::{Tower, TowerSpec};
use crate::{Forward, MlpSpec, ModelError, ModelPlan, OutputSpec, resolve_label};

/// One task: an output name and the label it learns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// The label's name in the schema.
    pub label: String,
    /// Output name (defaults to the label's name).
    #[serde(default)]
    pub name: Option<String>,
    /// This task's tower, overriding the model's `tower`.
    #[serde(default)]
    pub tower: Option<TowerSpec>,
}

impl TaskConfig {
    /// A task learning `label`, named after it.
    pub fn new(label: &str) -> Self {
        Self {
            label: label.to_string(),
            name: None,
            tower: None,
        }
    }
}

/// Resolved task: output spec and tower spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    /// Output name.
    pub name: String,
    /// Label column.
    pub label: usize,
    /// Binary or regression.
    pub kind: LabelKind,
}

/// Resolves the tasks against the schema: labels that exist, each used once, distinct
/// non-empty names, per-task towers checked.
pub fn resolve_tasks(schema: &ValidSchema, tasks: &[TaskConfig]) -> Result<Vec<TaskSpec>, ModelError> {
    if tasks.is_empty() {
        return Err(ModelError::Invalid {
            key: "model.tasks".into(),
            message: "at least one task is required".into(),
        });
    }
    let mut resolved: Vec<TaskSpec> = Vec::with_capacity(tasks.len());
    for (i, t) in tasks.iter().enumerate() {
        let label = resolve_label(schema, &format!("model.tasks[{i}].label"), &t.label)?;
        let name = t.name.clone().unwrap_or_else(|| t.label.clone());
        if let Some(tower) = &t.tower {
            tower.check(&format!("model.tasks[{i}].tower"), embedded_fields(schema))?;
        }
        if let Some(j) = resolved.iter().position(|r| r.label == label) {
            return Err(ModelError::Invalid {
                key: format!("model.tasks[{i}].label"),
                message: format!(
                    "= \"{}\" is also the label of model.tasks[{j}]; each task needs its own label",
                    t.label
                ),
            });
        }
        if name.is_empty() || resolved.iter().any(|r| r.name == name) {
            return Err(ModelError::Invalid {
                key: format!("model.tasks[{i}].name"),
                message: format!("= \"{name}\": task names must be distinct and not empty"),
            });
        }
        resolved.push(TaskSpec {
            name,
            label,
            kind: schema.schema.labels[label].kind,
        });
    }
    Ok(resolved)
}

/// What a per-task model over `tasks` outputs: one prediction and one loss term per task.
pub fn task_plan(tasks: &[TaskSpec]) -> ModelPlan {
    ModelPlan {
        outputs: outputs(tasks),
        loss_names: loss_names(tasks),
        label_rules: Vec::new(),
    }
}

/// The loss-term names of a per-task model: one per task, named after it.
pub fn loss_names(tasks: &[TaskSpec]) -> Vec<String> {
    tasks.iter().map(|t| t.name.clone()).collect()
}

/// Per task, the head on its tower's output: a probability for a binary task, the value for
/// a regression task.
///
/// # Shapes
/// - `logits`: one `[batch]` per task
/// - output: one `[batch]` per task
pub fn task_predictions(tasks: &[TaskSpec], logits: Vec<Tensor<1>>) -> Vec<Tensor<1>> {
    tasks
        .iter()
        .zip(logits)
        .map(|(t, l)| predict(l, t.kind))
        .collect()
}

/// One output per task, against its label over all rows.
pub fn outputs(tasks: &[TaskSpec]) -> Vec<OutputSpec> {
    tasks
        .iter()
        .map(|t| OutputSpec::simple(&t.name, t.kind, t.label))
        .collect()
}

/// Per task: head on the tower's output, loss against the label (each row counted by its
/// sample weight).
///
/// # Shapes
/// - `logits`: one `[batch]` per task
/// - output: one `[batch]` prediction and one `[1]` loss per task
pub fn task_forward(tasks: &[TaskSpec], logits: Vec<Tensor<1>>, batch: &BatchTensors) -> Forward {
    let mut predictions = Vec::with_capacity(tasks.len());
    let mut losses = Vec::with_capacity(tasks.len());
    for (task, logit) in tasks.iter().zip(logits) {
        losses.push(batch.mean_rows(task_loss_rows(logit.clone(), batch.label(task.label), task.kind)));
        predictions.push(predict(logit, task.kind));
    }
    Forward { predictions, losses }
}

/// One tower per task over inputs of width `input_dim`: a task's own `tower`, else `default`;
/// each ends in one output.
pub fn task_towers(
    tasks: &[TaskConfig],
    default: &TowerSpec,
    input_dim: usize,
    device: &Device,
) -> Vec<Tower> {
    tasks
        .iter()
        .map(|t| t.tower.as_ref().unwrap_or(default).init(input_dim, device))
        .collect()
}

/// The nearest a binary prior may come to 0 or 1 (a label that never or always fires still
/// starts at a finite logit, ±9.2).
pub const PRIOR_CLAMP: f64 = 1e-4;

/// The output a task starts at for a label mean `mean`: `logit(mean)` for a binary task (the
/// rate clamped to `[PRIOR_CLAMP, 1 − PRIOR_CLAMP]`), the mean itself for a regression task;
/// none for a mean that is not finite (or, binary, not a rate).
pub fn output_prior(kind: LabelKind, mean: f64) -> Option<f64> {
    match kind {
        LabelKind::Binary => {
            (mean.is_finite() && (0.0..=1.0).contains(&mean)).then(|| logit_clamped(mean, PRIOR_CLAMP))
        }
        LabelKind::Regression => mean.is_finite().then_some(mean),
    }
}

/// Per-task towers started at their labels' base rates ([`output_prior`] of
/// `label_means[task.label]`): each output bias set, the weights kept, so a task's first
/// predictions are its base rate moved by what its random weights make of the input.
pub fn towers_at_priors(tasks: &[TaskSpec], towers: Vec<Tower>, label_means: &[f64]) -> Vec<Tower> {
    tasks
        .iter()
        .zip(towers)
        .map(|(task, tower)| match task_prior(task, label_means) {
            Some(bias) => tower.with_output_prior(bias, false),
            None => tower,
        })
        .collect()
}

/// Task `task`'s starting output: [`output_prior`] of its label's mean in `label_means`.
pub fn task_prior(task: &TaskSpec, label_means: &[f64]) -> Option<f64> {
    let mean = label_means.get(task.label).copied();
    mean.and_then(|m| output_prior(task.kind, m))
}

/// The embedded (sparse and sequence) fields of `schema` that a `deepfm` tower can interact:
/// all of them when they share one `embed_dim`, none otherwise (the FM term pairs vectors of
/// one width).
pub fn embedded_fields(schema: &ValidSchema) -> usize {
    let one_width = schema.dims.windows(2).all(|w| w[0] == w[1]);
    if one_width {
        schema.n_sparse() + schema.n_sequence()
    } else {
        0
    }
}

/// Each tower's output over the same input, one `[batch]` per tower.
///
/// # Shapes
/// - `inputs`: one `[batch, width]` per tower; `fields`: `[batch, fields, dim]`
/// - output: one `[batch]` per tower
pub fn tower_logits(towers: &[Tower], inputs: Vec<Tensor<2>>, fields: Option<&Tensor<3>>) -> Vec<Tensor<1>> {
    towers
        .iter()
        .zip(inputs)
        .map(|(tower, x)| {
            let [b, _] = x.dims();
            tower.forward(x, fields).reshape([b])
        })
        .collect()
}

/// The plan of a model whose tasks each have a tower over a shared body: every MLP spec of the
/// body checked (each with the key that names it in messages), the default `tower` (key
/// `model.tower`) and each task's own, the pooling checked against the schema, the tasks
/// resolved.
pub fn towers_plan(
    schema: &ValidSchema,
    pooling: &FieldPooling,
    tasks: &[TaskConfig],
    body: &[(&MlpSpec, &str)],
    tower: &TowerSpec,
) -> Result<ModelPlan, ModelError> {
    for (spec, key) in body {
        spec.check(key)?;
    }
    tower.check("model.tower", embedded_fields(schema))?;
    InputSpec::new(schema, pooling)?;
    Ok(task_plan(&resolve_tasks(schema, tasks)?))
}

/// The resolved tasks and the input layer of such a model, once its plan has passed.
pub fn tasks_and_input(
    schema: &ValidSchema,
    pooling: &FieldPooling,
    tasks: &[TaskConfig],
    layout: &TableLayout,
    device: &Device,
) -> Result<(Vec<TaskSpec>, InputLayer), ModelError> {
    Ok((
        resolve_tasks(schema, tasks)?,
        InputLayer::for_schema(schema, pooling, layout, device)?,
    ))
}

/// The steps of a funnel model (AITM, the ESMM chain), resolved and checked: between 2 and
/// `max_steps` of them, all binary labels. `model` names the model in messages.
pub fn funnel_steps(
    schema: &ValidSchema,
    tasks: &[TaskConfig],
    model: &str,
    max_steps: usize,
) -> Result<Vec<TaskSpec>, ModelError> {
    let steps = resolve_tasks(schema, tasks)?;
    if !(2..=max_steps).contains(&steps.len()) {
        let allowed = match max_steps {
            usize::MAX => "at least 2".to_string(),
            max => format!("2 to {max}"),
        };
        return Err(ModelError::Invalid {
            key: "model.tasks".into(),
            message: format!(
                "{} steps given; {model} needs {allowed} steps in funnel order (one step is a single-task model)",
                steps.len()
            ),
        });
    }
    if let Some((i, s)) = steps
        .iter()
        .enumerate()
        .find(|(_, s)| s.kind != LabelKind::Binary)
    {
        return Err(ModelError::Invalid {
            key: format!("model.tasks[{i}].label"),
            message: format!("{model}'s steps are binary; `{}` is regression", s.name),
        });
    }
    Ok(steps)
}

/// A funnel's label rules: each step only on rows where the one before it happened.
pub fn funnel_rules(steps: &[TaskSpec], model: &str) -> Vec<LabelRule> {
    steps
        .windows(2)
        .map(|w| LabelRule {
            label: w[1].label,
            requires: w[0].label,
            needed_by: format!("{model} (each step only after the one before it)"),
        })
        .collect()
}
