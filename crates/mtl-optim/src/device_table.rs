//! The row-sparse embedding table kept on the training device (`embedding_table = "device"`):
//! the table and its two Adam moments are `[rows, dim]` tensors there; a step gathers the
//! batch's rows with `select`, applies the same row-wise (lazy) Adam as [`SparseAdam`] with
//! tensor ops, and writes the touched rows back with `select_assign` — no rows or gradients
//! cross to the host. Untouched rows and their moments are left as they are.
//!
//! [`SparseAdam`]: crate::SparseAdam

use std::path::Path;

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::OptimError;
use crate::moments::{read_moments, write_moments};
use crate::row_adam::RowAdamConfig;

/// The table, its moments and the row-wise Adam settings, on one device.
pub struct DeviceAdam {
    table: Tensor<2>,
    m: Tensor<2>,
    v: Tensor<2>,
    /// Steps taken (drives the bias correction).
    pub time: usize,
    config: RowAdamConfig,
    device: Device,
}

impl DeviceAdam {
    /// Takes `table` (`[rows, dim]`) onto the plain training device, with zero moments.
    pub fn new(table: Tensor<2>, config: RowAdamConfig, device: &Device) -> Self {
        let plain = device.clone().without_autodiff();
        let table = table.to_device(&plain);
        Self {
            m: Tensor::zeros(table.dims(), &plain),
            v: Tensor::zeros(table.dims(), &plain),
            table,
            time: 0,
            config,
            device: plain,
        }
    }

    /// Width of a row.
    pub fn dim(&self) -> usize {
        self.table.dims()[1]
    }

    /// The plain device the table lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The rows `ids` as an autodiff leaf, and the ids as a device tensor.
    ///
    /// # Shapes
    /// - output: `[ids, dim]` leaf, `[ids]`
    pub fn gather(&self, ids: Vec<i32>) -> (Tensor<2>, Tensor<1, Int>) {
        let n = ids.len();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &self.device);
        let rows = self.table.clone().select(0, idx.clone());
        (rows.autodiff().require_grad(), idx)
    }

    /// One row-wise Adam step on the rows `idx` (distinct) with their gradient `grad`.
    pub fn step(&mut self, idx: &Tensor<1, Int>, grad: Tensor<2>, lr: f64) {
        self.time += 1;
        let c = self.config.at(self.time);
        let lr = lr as f32;
        let grad = match self.config.clip_norm {
            Some(threshold) => {
                let norm = grad.clone().square().sum().sqrt().add_scalar(f32::MIN_POSITIVE);
                let coef = norm.recip().mul_scalar(threshold).clamp_max(1.0);
                grad * coef.unsqueeze::<2>()
            }
            None => grad,
        };
        let w = self.table.clone().select(0, idx.clone());
        let m = self.m.clone().select(0, idx.clone());
        let v = self.v.clone().select(0, idx.clone());
        let (b1, b2, wd_grad, wd_update) = (c.b1, c.b2, c.wd_grad, c.wd_update);
        let g = if wd_grad != 0.0 {
            grad + w.clone().mul_scalar(wd_grad)
        } else {
            grad
        };
        let m = m.mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1);
        let v = v.mul_scalar(b2) + g.clone().mul(g).mul_scalar(1.0 - b2);
        let update = m.clone().mul_scalar(c.factor) / v.clone().sqrt().add_scalar(c.eps);
        let step = if wd_update != 0.0 {
            update + w.clone().mul_scalar(wd_update)
        } else {
            update
        };
        let w = w - step.mul_scalar(lr);
        // the tensors are taken out, not cloned, so that a backend can write the rows in place
        // (a second reference makes it copy the whole table every step)
        let device = self.device.clone();
        let assign = |all: &mut Tensor<2>, rows: Tensor<2>| {
            let whole = std::mem::replace(all, Tensor::zeros([1, 1], &device));
            *all = whole.select_assign(0, idx.clone(), rows, IndexingUpdateOp::Assign);
        };
        assign(&mut self.table, w);
        assign(&mut self.m, m);
        assign(&mut self.v, v);
    }

    /// The current table `[rows, dim]`.
    pub fn table(&self) -> Tensor<2> {
        self.table.clone()
    }

    /// The first and second moments `[rows, dim]`.
    pub fn moments(&self) -> (Tensor<2>, Tensor<2>) {
        (self.m.clone(), self.v.clone())
    }

    /// Saves the moments in [`SparseAdam`](crate::SparseAdam)'s format (either table
    /// place resumes from either).
    pub fn save(&self, path: &Path) -> Result<(), OptimError> {
        let [rows, dim] = self.table.dims();
        let host = |t: &Tensor<2>| -> Result<Vec<f32>, OptimError> {
            t.clone()
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| OptimError::Backend(format!("reading the embedding moments: {e:?}")))
        };
        let (m, v) = (host(&self.m)?, host(&self.v)?);
        write_moments(path, rows, dim, |part, r| {
            let all = if part == 1 { &m } else { &v };
            &all[r * dim..(r + 1) * dim]
        })
    }

    /// Restores moments saved by either table place, and the step count.
    pub fn load(&mut self, path: &Path, time: usize) -> Result<(), OptimError> {
        let [rows, dim] = self.table.dims();
        let (mut m, mut v) = (vec![0f32; rows * dim], vec![0f32; rows * dim]);
        read_moments(path, rows, dim, |part, r, values| {
            let all = if part == 1 { &mut m } else { &mut v };
            all[r * dim..(r + 1) * dim].copy_from_slice(values);
        })?;
        self.m = Tensor::from_data(TensorData::new(m, [rows, dim]), &self.device);
        self.v = Tensor::from_data(TensorData::new(v, [rows, dim]), &self.device);
        self.time = time;
        Ok(())
    }
}
