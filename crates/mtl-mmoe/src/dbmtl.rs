//! DBMTL — Deep Bayesian Multi-Target Learning (Alibaba), as EasyRec and TorchEasyRec
//! configure it: a shared bottom, one MLP per task, and a Bayesian relation between the tasks
//! in their order, so that what the model makes of the click informs the conversion. Task
//! `t`'s relation layer reads its own MLP's output and task `t − 1`'s relation output:
//!
//! ```text
//! h   = bottom(x)                      (optional; x itself without one)
//! z_t = mlp_t(h)
//! r_1 = rel_1(z_1),   r_t = rel_t([z_t, r_{t−1}])   for t > 1
//! ŷ_t = head(w_t · r_t + b_t)          sigmoid for a binary task, identity for a regression one
//! ```
//!
//! EasyRec's `relation_tower_names` may name any earlier tasks; here each task relates to the
//! one before it (the funnel order of the tasks), the configuration of its click → buy
//! example. Per task: `tower` is EasyRec's `dnn`, `relation` its `relation_dnn`.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use mtl_features::{BatchTensors, FieldPooling, InputLayer, InputSpec, TableLayout, ValidSchema};
use mtl_layers::head::output_at_prior;
use mtl_layers::tasks::{
    TaskConfig, TaskSpec, resolve_tasks, task_forward, task_plan, task_predictions, task_prior,
    tasks_and_input,
};
use mtl_layers::{Forward, Mlp, MlpSpec, ModelBuilder, ModelError, ModelPlan, MultiTaskModel};
use serde::{Deserialize, Serialize};

/// DBMTL configuration (`type = "dbmtl"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbmtlConfig {
    /// The shared bottom MLP's hidden layers (EasyRec's `bottom_dnn`); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bottom: Option<MlpSpec>,
    /// Each task's own MLP (EasyRec's task tower `dnn`).
    pub tower: MlpSpec,
    /// Each task's relation MLP (EasyRec's `relation_dnn`), over its own MLP's output and the
    /// previous task's relation output.
    pub relation: MlpSpec,
    /// The tasks, in the order their relations chain (each its own label; a task's own `tower`
    /// is not taken: every task has `tower` and `relation`).
    pub tasks: Vec<TaskConfig>,
    /// How field embeddings become the bottom's input.
    #[serde(default)]
    pub pooling: FieldPooling,
}

impl ModelBuilder for DbmtlConfig {
    type Model = Dbmtl;
    const ABOUT: &'static str =
        "DBMTL: per-task MLPs under a Bayesian relation chain (task t's relation layer reads task t−1's)";

    /// Checks the config against `schema` and says what the model outputs, without building it.
    fn plan(&self, schema: &ValidSchema) -> Result<ModelPlan, ModelError> {
        if let Some(bottom) = &self.bottom {
            bottom.check("model.bottom")?;
        }
        self.tower.check("model.tower")?;
        self.relation.check("model.relation")?;
        if let Some(i) = self.tasks.iter().position(|t| t.tower.is_some()) {
            return Err(ModelError::Invalid {
                key: format!("model.tasks[{i}].tower"),
                message: "DBMTL gives every task `model.tower` and `model.relation`; a task's own tower is not read".into(),
            });
        }
        InputSpec::new(schema, &self.pooling)?;
        Ok(task_plan(&resolve_tasks(schema, &self.tasks)?))
    }

    /// Builds the model.
    fn init(&self, schema: &ValidSchema, layout: &TableLayout, device: &Device) -> Result<Dbmtl, ModelError> {
        let plan = self.plan(schema)?;
        let (tasks, input) = tasks_and_input(schema, &self.pooling, &self.tasks, layout, device)?;
        let x = input.output_dim();
        let h = self.bottom.as_ref().map_or(x, |b| b.output_dim(x, false));
        let z = self.tower.output_dim(h, false);
        let (mut towers, mut relations, mut heads) = (Vec::new(), Vec::new(), Vec::new());
        let mut previous = 0;
        for _ in &tasks {
            towers.push(self.tower.init(h, false, device));
            relations.push(self.relation.init(z + previous, false, device));
            previous = self.relation.output_dim(z + previous, false);
            heads.push(LinearConfig::new(previous, 1).init(device));
        }
        Ok(Dbmtl {
            bottom: self.bottom.as_ref().map(|b| b.init(x, false, device)),
            input,
            towers,
            relations,
            heads,
            tasks,
            plan,
        })
    }
}

/// DBMTL: a shared bottom, per-task MLPs and relation layers chained in task order.
#[derive(Module, Debug)]
pub struct Dbmtl {
    /// Shared embeddings and pooling.
    pub input: InputLayer,
    /// The shared bottom MLP, if configured.
    pub bottom: Option<Mlp>,
    /// Each task's own MLP `mlp_t`.
    pub towers: Vec<Mlp>,
    /// Each task's relation MLP `rel_t`.
    pub relations: Vec<Mlp>,
    /// Each task's output layer (one logit or value).
    pub heads: Vec<Linear>,
    /// The tasks, in relation order.
    #[module(skip)]
    pub tasks: Vec<TaskSpec>,
    /// What the config promised: outputs, loss terms, label rules.
    #[module(skip)]
    pub plan: ModelPlan,
}

impl Dbmtl {
    /// Each task's relation output `r_t` and its logit (or value).
    ///
    /// # Shapes
    /// - relations: one `[batch, relation width]` per task
    /// - logits: one `[batch]` per task
    pub fn forward_relations(&self, batch: &BatchTensors) -> (Vec<Tensor<2>>, Vec<Tensor<1>>) {
        let x = self.input.forward(batch); // [batch, input_dim]
        let b = x.dims()[0];
        let h = match &self.bottom {
            Some(bottom) => bottom.forward(x),
            None => x,
        };
        let mut relations: Vec<Tensor<2>> = Vec::with_capacity(self.tasks.len());
        for (tower, relation) in self.towers.iter().zip(&self.relations) {
            let z = tower.forward(h.clone());
            let input = match relations.last() {
                Some(previous) => Tensor::cat(vec![z, previous.clone()], 1),
                None => z,
            };
            relations.push(relation.forward(input));
        }
        let logits = (self.heads.iter().zip(&relations))
            .map(|(head, r)| head.forward(r.clone()).reshape([b]))
            .collect();
        (relations, logits)
    }
}

impl MultiTaskModel for Dbmtl {
    fn plan(&self) -> &ModelPlan {
        &self.plan
    }

    fn predict(&self, batch: &BatchTensors) -> Vec<Tensor<1>> {
        task_predictions(&self.tasks, self.forward_relations(batch).1)
    }

    fn input_layer(&self) -> &InputLayer {
        &self.input
    }

    fn forward(&self, batch: &BatchTensors) -> Forward {
        task_forward(&self.tasks, self.forward_relations(batch).1, batch)
    }

    const USES_LABEL_PRIORS: bool = true;

    /// Each task's output starts at its label's base rate (its mean, for a regression task).
    fn with_label_priors(self, label_means: &[f64]) -> Self {
        let heads = (self.tasks.iter().zip(self.heads))
            .map(|(task, head)| match task_prior(task, label_means) {
                Some(bias) => output_at_prior(head, bias, false),
                None => head,
            })
            .collect();
        Self { heads, ..self }
    }
}
