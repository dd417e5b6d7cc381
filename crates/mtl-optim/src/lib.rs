//! # mtl-optim
//!
//! Optimisers burn lacks, as burn-optim lays out its own: each beside its small config.
//! - [`SparseAdam`] ([`host_table`]): the row-sparse embedding table in host memory with a
//!   row-wise (lazy) Adam — a step updates only the rows its batch used; untouched rows catch
//!   up exactly (dense Adam's result), in closed-form strides ([`replay`]), or stay frozen
//!   (LazyAdam); set up by [`SparseAdamConfig`].
//! - [`DeviceAdam`] ([`device_table`]): the same row-wise Adam on a table kept on the training
//!   device.
//! - [`Average`] ([`average`]): an exponential moving average of a module's parameters.
//!
//! The row-wise Adam's constants ([`RowAdamConfig`]) follow burn's `Adam` (ε scaled by the
//! bias correction, L2 decay in the gradient or AdamW's decoupled decay), so that a table
//! whose every row is touched every step equals burn's dense Adam. Moments are saved in one
//! format ([`moments`]) that either table place reads.
//!
//! Nothing here knows the run config: the trainer builds each config from its settings.

pub mod average;
pub mod device_table;
mod error;
pub mod host_table;
mod lazy_file;
pub mod moments;
pub mod replay;
mod row_adam;
mod row_step;

pub use average::Average;
pub use device_table::DeviceAdam;
pub use error::OptimError;
pub use host_table::{CatchUpReplay, SparseAdam, SparseAdamConfig, TableTraffic};
pub use row_adam::{RowAdamConfig, average_keep};
