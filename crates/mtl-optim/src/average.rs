//! The weight average (the trainer's `[train] ema_decay`): an exponential moving average of the dense
//! parameters, updated after every step, that evaluations, checkpoints' `average.bpk` and the
//! saved model use in place of the last step's values. BatchNorm's running statistics are
//! averaged with the weights (so that they describe the averaged network's activations, as far
//! as an average can: measured, taking the live model's statistics instead lost 0.07 of ESMM's
//! entire-space Spearman); the row-sparse table keeps its own average row by row
//! ([`crate::SparseAdam::average`]).
//!
//! The model is read and the averaged model built through `valid()`, which folds BatchNorm's
//! pending running-statistic update in and gives the averaged model running statistics of its
//! own: a clone would share them with the live model, and writing the average into them would
//! change the model being trained.
//!
//! After step `t` every parameter's average moves as `a ← k·a + (1 − k)·w`, with
//! `k = min(decay, (1 + t)/(10 + t))` ([`crate::average_keep`]) so that the first
//! steps, far from trained, leave it quickly; it starts at the initial values.

use std::any::Any;
use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

use crate::row_adam::average_keep;

/// The average of every float parameter but one (the row-sparse table, averaged by its own
/// optimiser), on the plain device.
pub struct Average {
    decay: f32,
    /// The row-sparse table's parameter, left out.
    skip: Option<ParamId>,
    /// Each parameter's average: a plain `Tensor<D>` of the parameter's shape.
    values: HashMap<ParamId, Box<dyn Any + Send>>,
}

impl Average {
    /// An average of every float parameter and buffer but `skip`, starting at `start`'s
    /// values (the initial ones, or a checkpoint's saved average).
    pub fn new<M: Module>(decay: f32, start: &M, skip: Option<ParamId>) -> Self {
        let mut average = Self {
            decay,
            skip,
            values: HashMap::new(),
        };
        start.valid().visit(&mut Update {
            average: &mut average,
            keep: 0.0,
        });
        average
    }

    /// Folds in `model`'s values after step `t` (1-based).
    pub fn update<M: Module>(&mut self, model: &M, t: usize) {
        let keep = average_keep(self.decay, t);
        model.valid().visit(&mut Update { average: self, keep });
    }

    /// `model` (in evaluation mode, sharing nothing with `model`'s running statistics) with
    /// the averaged parameters in place of its own (the left-out one kept).
    pub fn apply<M: Module>(&self, model: &M) -> M {
        model.valid().map(&mut Apply { average: self })
    }
}

/// Folds a model's parameters into the average with weight `1 − keep` (a parameter not yet
/// averaged starts at its value).
struct Update<'a> {
    average: &'a mut Average,
    keep: f32,
}

impl ModuleVisitor for Update<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if Some(param.id) == self.average.skip {
            return;
        }
        let w = param.val().inner();
        let keep = self.keep;
        match self
            .average
            .values
            .get_mut(&param.id)
            .and_then(|a| a.downcast_mut::<Tensor<D>>())
        {
            Some(a) => *a = a.clone().mul_scalar(keep).add(w.mul_scalar(1.0 - keep)),
            None => {
                self.average.values.insert(param.id, Box::new(w));
            }
        }
    }
}

/// Puts each averaged parameter in place of the model's.
struct Apply<'a> {
    average: &'a Average,
}

impl ModuleMapper for Apply<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self
            .average
            .values
            .get(&param.id)
            .and_then(|a| a.downcast_ref::<Tensor<D>>())
        {
            Some(a) => Param::initialized(param.id, a.clone()),
            None => param,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{Device, TensorData};

    fn weights(l: &Linear) -> Vec<f32> {
        l.weight.val().into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn running_statistics_are_averaged_without_touching_the_live_models() {
        let device = Device::flex().autodiff();
        let norm = burn::nn::BatchNormConfig::new(2).init(&device);
        // gamma, beta, running mean and running variance
        let mut average = Average::new(0.5, &norm, None);
        assert_eq!(average.values.len(), 4);
        // a training-mode pass moves the running mean (momentum 0.1) from 0 towards the batch
        // mean 2: to 0.2, pending until read through `valid()`
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 1.0, 3.0, 3.0], [2, 2]), &device);
        let _ = norm.forward(x);
        average.update(&norm, 1);
        let keep = (0.5f64).min(2.0 / 11.0);
        let want = 0.2 * (1.0 - keep);
        let mean = |n: &burn::nn::BatchNorm| -> Vec<f32> {
            n.running_mean.value().into_data().try_to_vec::<f32>().unwrap()
        };
        let averaged = average.apply(&norm);
        for got in mean(&averaged) {
            assert!((f64::from(got) - want).abs() < 1e-6, "{got} vs {want}");
        }
        // the live model's running mean is its own, not the average
        for got in mean(&norm.valid()) {
            assert!((got - 0.2).abs() < 1e-6, "{got}");
        }
    }

    #[test]
    fn the_average_follows_the_formula_and_leaves_the_skipped_parameter() {
        let device = Device::flex().autodiff();
        let start = LinearConfig::new(2, 1).init(&device);
        let skip = start.bias.as_ref().map(|b| b.id);
        let mut average = Average::new(0.5, &start, skip);
        let w0 = weights(&start);
        // three "steps" setting the weight to 1, 2, 3
        let mut expected = w0.iter().map(|&w| f64::from(w)).collect::<Vec<_>>();
        let mut live = start.clone();
        for t in 1..=3usize {
            let value = t as f32;
            live = live.map(&mut SetAll(value));
            average.update(&live, t);
            let keep = (0.5f64).min((1.0 + t as f64) / (10.0 + t as f64));
            for e in expected.iter_mut() {
                *e = *e * keep + f64::from(value) * (1.0 - keep);
            }
        }
        let averaged = average.apply(&live);
        for (got, want) in weights(&averaged).iter().zip(&expected) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
        }
        // the skipped bias is the live model's, not an average
        let bias = |l: &Linear| -> Vec<f32> {
            l.bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        assert_eq!(bias(&averaged), bias(&live));
        assert_eq!(bias(&live), vec![3.0]);
    }

    /// Sets every float parameter to one value.
    pub(super) struct SetAll(pub f32);

    impl ModuleMapper for SetAll {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let value = param.val().inner();
            let shape = value.shape();
            let n = shape.num_elements();
            let filled = Tensor::<D>::from_data(TensorData::new(vec![self.0; n], shape), &value.device());
            Param::initialized(param.id, filled)
        }
    }
}
