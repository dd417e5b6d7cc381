//! Row-sparse embedding training: each step gathers only the table rows the batch uses,
//! differentiates through those, and updates only those rows with a row-wise (lazy) Adam.
//!
//! Semantics (like TensorFlow's LazyAdam or `torch.optim.SparseAdam`): rows a step does not
//! touch keep their values and their moments bit for bit; the bias correction uses the global
//! step count; weight decay (L2 for Adam, decoupled for AdamW) and gradient-norm clipping apply
//! to the touched rows only. With weight decay 0 and every row touched in every step the
//! result equals burn's dense Adam. Dense layers keep burn's optimiser.
//!
//! The table lives on the plain (non-autodiff) device; while training, the model's own
//! embedding parameter is a one-row placeholder (the table is held once), and it is set to the
//! table before evaluation, checkpoints and the end of training.

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::IndexingUpdateOp;
use burn::tensor::{Device, Int, Tensor, TensorData};
use mtl_layers::MultiTaskModel;

use crate::config::{OptimizerKind, TrainSettings};
use crate::{TrainError, record_err};

/// The saved moments of the row-wise optimiser.
#[derive(Module, Debug)]
pub struct SparseMoments {
    /// First moment `[rows, dim]`.
    pub m: Param<Tensor<2>>,
    /// Second moment `[rows, dim]`.
    pub v: Param<Tensor<2>>,
}

/// The embedding table and its row-wise Adam state.
pub struct SparseAdam {
    table: Option<Tensor<2>>,
    m: Option<Tensor<2>>,
    v: Option<Tensor<2>>,
    /// Steps taken (drives the bias correction).
    pub time: usize,
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    decoupled: bool,
    clip_norm: Option<f32>,
    device: Device,
}

impl SparseAdam {
    /// Takes the table out of `model` (onto the plain device) with zero moments.
    pub fn new<M: MultiTaskModel>(model: &M, settings: &TrainSettings, device: &Device) -> Self {
        let plain = device.clone().without_autodiff();
        let table = model
            .input_layer()
            .embedding
            .weight
            .val()
            .inner()
            .to_device(&plain);
        let zeros = Tensor::zeros(table.dims(), &plain);
        Self {
            m: Some(zeros.clone()),
            v: Some(zeros),
            table: Some(table),
            time: 0,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-5,
            weight_decay: settings.weight_decay as f32,
            decoupled: settings.optimizer == OptimizerKind::AdamW,
            clip_norm: settings.grad_clip_norm,
            device: plain,
        }
    }

    /// The batch's rows as an autodiff leaf, and their ids as a tensor.
    ///
    /// # Shapes
    /// - output: `[unique, dim]` leaf, `[unique]` ids
    pub fn gather(&self, unique: Vec<i32>) -> (Tensor<2>, Tensor<1, Int>) {
        let n = unique.len();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(unique, [n]), &self.device);
        let rows = self
            .table
            .as_ref()
            .expect("table present")
            .clone()
            .select(0, ids.clone());
        (rows.autodiff().require_grad(), ids)
    }

    /// One row-wise Adam step on the rows `ids`, whose current values are `rows` and whose
    /// gradient is `grad` (both `[unique, dim]`, plain device).
    pub fn step(&mut self, ids: Tensor<1, Int>, rows: Tensor<2>, grad: Tensor<2>, lr: f64) {
        self.time += 1;
        let t = self.time as i32;
        let mut g = grad;
        if let Some(threshold) = self.clip_norm {
            // as burn's clip_by_norm: coef = min(1, threshold / (‖g‖ + tiny))
            let norm = g.clone().square().sum().sqrt();
            let coef = norm
                .add_scalar(f32::MIN_POSITIVE)
                .recip()
                .mul_scalar(threshold)
                .clamp_max(1.0);
            g = g * coef.unsqueeze();
        }
        if self.weight_decay > 0.0 && !self.decoupled {
            g = g + rows.clone().mul_scalar(self.weight_decay);
        }
        let m = self.m.take().expect("moments present");
        let v = self.v.take().expect("moments present");
        let table = self.table.take().expect("table present");
        let m_rows = m.clone().select(0, ids.clone()).mul_scalar(self.beta_1)
            + g.clone().mul_scalar(1.0 - self.beta_1);
        let v_rows = v.clone().select(0, ids.clone()).mul_scalar(self.beta_2)
            + g.square().mul_scalar(1.0 - self.beta_2);
        let bc2 = (1.0 - self.beta_2.powi(t)).sqrt();
        let factor = bc2 / (1.0 - self.beta_1.powi(t));
        let update = m_rows.clone().mul_scalar(factor) / v_rows.clone().sqrt().add_scalar(self.epsilon * bc2);
        let new_rows = if self.decoupled && self.weight_decay > 0.0 {
            rows.clone() - (update + rows.mul_scalar(self.weight_decay)).mul_scalar(lr)
        } else {
            rows - update.mul_scalar(lr)
        };
        self.m = Some(m.select_assign(0, ids.clone(), m_rows, IndexingUpdateOp::Assign));
        self.v = Some(v.select_assign(0, ids.clone(), v_rows, IndexingUpdateOp::Assign));
        self.table = Some(table.select_assign(0, ids, new_rows, IndexingUpdateOp::Assign));
    }

    /// The first and second moments `[rows, dim]` (plain device).
    pub fn moments(&self) -> (Tensor<2>, Tensor<2>) {
        (
            self.m.as_ref().expect("moments present").clone(),
            self.v.as_ref().expect("moments present").clone(),
        )
    }

    /// The current table `[rows, dim]` (plain device).
    pub fn table(&self) -> Tensor<2> {
        self.table.as_ref().expect("table present").clone()
    }

    /// Writes the current table into the model's embedding parameter (same parameter id).
    pub fn sync_into<M: MultiTaskModel>(&self, model: &mut M) {
        let weight = &mut model.input_layer_mut().embedding.weight;
        let id = weight.id;
        let device = weight.val().device();
        *weight = Param::initialized(id, self.table().to_device(&device.without_autodiff()));
    }

    /// Replaces the model's embedding parameter with a one-row placeholder (same id), so the
    /// table is held once while training; [`SparseAdam::sync_into`] puts the table back.
    pub fn release_from<M: MultiTaskModel>(&self, model: &mut M) {
        let weight = &mut model.input_layer_mut().embedding.weight;
        let id = weight.id;
        let dim = self.table.as_ref().expect("table present").dims()[1];
        *weight = Param::initialized(id, Tensor::zeros([1, dim], &self.device));
    }

    /// Saves the moments next to a checkpoint.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let moments = SparseMoments {
            m: Param::from_tensor(self.m.as_ref().expect("moments present").clone()),
            v: Param::from_tensor(self.v.as_ref().expect("moments present").clone()),
        };
        moments.save_file(path).map_err(record_err(path))
    }

    /// Restores moments saved by [`SparseAdam::save`] and the step count.
    pub fn load(&mut self, path: &Path, time: usize) -> Result<(), TrainError> {
        let template = SparseMoments {
            m: Param::from_tensor(self.m.take().expect("moments present")),
            v: Param::from_tensor(self.v.take().expect("moments present")),
        };
        let loaded = template.try_load_file(path).map_err(record_err(path))?;
        self.m = Some(loaded.m.val().inner());
        self.v = Some(loaded.v.val().inner());
        self.time = time;
        Ok(())
    }
}
