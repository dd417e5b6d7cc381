//! # mtl-layers
//!
//! The building blocks every model reuses: [`Mlp`] (torch-rechub's MLP block), the
//! [`Experts`] of a mixture evaluated together and its [`softmax_gate`], the tasks of a
//! per-task model with their pluggable towers ([`tower`]: MLP, DeepFM, DCN-V2), heads and
//! losses ([`tasks`], [`head`]), and the
//! [`MultiTaskModel`] / [`ModelBuilder`] contract the trainer and the registry drive.

pub mod contract;
pub mod error;
pub mod experts;
pub mod head;
pub mod mlp;
pub mod params;
pub mod tasks;
pub mod tower;

pub use contract::{Forward, GateWeights, ModelBuilder, ModelPlan, MultiTaskModel, OutputSpec};
pub use error::{ModelError, resolve_label};
pub use experts::{ExpertLayer, Experts, MAX_EXPERTS, softmax_gate};
pub use mlp::{Activation, Mlp, MlpBlock, MlpSpec, softmax_rows, with_running_stats_frozen};
pub use params::trainable_params;
pub use tasks::{TaskConfig, TaskSpec, task_towers};
pub use tower::{Tower, TowerKind, TowerSpec};
