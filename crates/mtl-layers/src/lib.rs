//! # mtl-layers
//!
//! The building blocks every model reuses: [`Mlp`] (torch-rechub's MLP block), the
//! [`Experts`] of a mixture evaluated together and its [`softmax_gate`], the tasks of a
//! per-task model with their pluggable towers ([`tower`]: MLP, DeepFM, DCN-V2), heads and
//! losses ([`tasks`], [`head`]), and the
//! [`MultiTaskModel`] / [`ModelBuilder`] contract the trainer and the server drive, with the
//! [`Registry`] of model types (the [`registry!`] macro) that names them in run configs.

pub mod contract;
pub mod error;
pub mod experts;
pub mod head;
pub mod mlp;
pub mod params;
pub mod registry;
pub mod tasks;
pub mod tower;

pub use contract::{
    Branching, Forward, GateWeights, ModelBuilder, ModelPlan, MultiTaskModel, OutputSpec, Trunk,
};
pub use error::{ModelError, resolve_label};
pub use experts::{ExpertLayer, Experts, MAX_EXPERTS, softmax_gate, with_experts_batch_first};
pub use mlp::{Activation, Mlp, MlpBlock, MlpSpec, softmax_rows, with_running_stats_frozen};
pub use params::trainable_params;
pub use registry::{Registry, WithModel, example_model, model_section, parse_model};
pub use tasks::{TaskConfig, TaskSpec, output_prior, task_towers, towers_at_priors};
pub use tower::{Tower, TowerKind, TowerSpec};

/// What the [`registry!`] macro refers to, re-exported so that a crate using it needs no
/// dependencies of its own for it.
#[doc(hidden)]
pub mod __private {
    pub use burn::tensor::Device;
    pub use mtl_features;
    pub use serde;
    pub use toml;
}
