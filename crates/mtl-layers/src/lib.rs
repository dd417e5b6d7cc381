//! # mtl-layers
//!
//! The building blocks every model reuses: [`Mlp`] (torch-rechub's MLP block), prediction
//! heads and losses computed from logits ([`head`]), and the [`MultiTaskModel`] contract the
//! trainer drives.

pub mod contract;
pub mod error;
pub mod head;
pub mod mlp;
pub mod params;

pub use contract::{Forward, GateWeights, ModelBuilder, ModelPlan, MultiTaskModel, OutputSpec};
pub use error::{ModelError, resolve_label};
pub use mlp::{Activation, Mlp, MlpBlock, MlpSpec};
pub use params::trainable_params;
