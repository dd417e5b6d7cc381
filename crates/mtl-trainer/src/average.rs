//! The weight average (`[train] ema_decay`): an exponential moving average of the dense
//! parameters, updated after every step, that evaluations, checkpoints' `average.bpk` and the
//! saved model use in place of the last step's values. Only trained parameters are averaged:
//! the row-sparse table keeps its own average row by row
//! ([`crate::sparse::SparseAdam::average`]), and buffers such as BatchNorm's running
//! statistics are the live model's.
//!
//! After step `t` every parameter's average moves as `a ← k·a + (1 − k)·w`, with
//! `k = min(decay, (1 + t)/(10 + t))` ([`crate::sparse::average_keep`]) so that the first
//! steps, far from trained, leave it quickly; it starts at the initial values.

use std::any::Any;
use std::collections::{HashMap, HashSet};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

use crate::sparse::average_keep;

/// The average of every float parameter but one (the row-sparse table, averaged by its own
/// optimiser), on the plain device.
pub(crate) struct Average {
    decay: f32,
    /// The row-sparse table's parameter, left out.
    skip: Option<ParamId>,
    /// Each parameter's average: a plain `Tensor<D>` of the parameter's shape.
    values: HashMap<ParamId, Box<dyn Any + Send>>,
    /// The parameters averaged: those the live model trains.
    trained: HashSet<ParamId>,
}

impl Average {
    /// An average of the parameters `live` trains (those that require a gradient) but
    /// `skip`, starting at `start`'s values (the initial ones, or a checkpoint's saved average).
    pub(crate) fn new<M: Module>(decay: f32, live: &M, start: &M, skip: Option<ParamId>) -> Self {
        let mut trained = Trained(HashSet::new());
        live.visit(&mut trained);
        let mut average = Self {
            decay,
            skip,
            values: HashMap::new(),
            trained: trained.0,
        };
        start.visit(&mut Update {
            average: &mut average,
            keep: 0.0,
        });
        average
    }

    /// Folds in `model`'s values after step `t` (1-based).
    pub(crate) fn update<M: Module>(&mut self, model: &M, t: usize) {
        let keep = average_keep(self.decay, t);
        model.visit(&mut Update { average: self, keep });
    }

    /// `model` with its averaged parameters in place of its own (the left-out one kept).
    pub(crate) fn apply<M: Module>(&self, model: M) -> M {
        model.map(&mut Apply { average: self })
    }
}

/// The ids of the parameters that require a gradient.
struct Trained(HashSet<ParamId>);

impl ModuleVisitor for Trained {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if param.is_require_grad() {
            self.0.insert(param.id);
        }
    }
}

/// Folds a model's parameters into the average with weight `1 − keep` (a trained parameter
/// not yet averaged starts at its value).
struct Update<'a> {
    average: &'a mut Average,
    keep: f32,
}

impl ModuleVisitor for Update<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if Some(param.id) == self.average.skip || !self.average.trained.contains(&param.id) {
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
    fn buffers_are_not_averaged() {
        let device = Device::flex().autodiff();
        let norm = burn::nn::BatchNormConfig::new(2).init(&device);
        let average = Average::new(0.5, &norm, &norm, None);
        // gamma and beta are trained; the running mean and variance are buffers
        assert_eq!(average.values.len(), 2);
        assert!(average.values.contains_key(&norm.gamma.id) && average.values.contains_key(&norm.beta.id));
    }

    #[test]
    fn the_average_follows_the_formula_and_leaves_the_skipped_parameter() {
        let device = Device::flex().autodiff();
        let start = LinearConfig::new(2, 1).init(&device);
        let skip = start.bias.as_ref().map(|b| b.id);
        let mut average = Average::new(0.5, &start, &start, skip);
        let w0 = weights(&start);
        // three "steps" setting the weight to 1, 2, 3
        let mut expected = w0.iter().map(|&w| f64::from(w)).collect::<Vec<_>>();
        let mut live = start.clone();
        for t in 1..=3usize {
            let value = t as f32;
            live = live.map(&mut crate::average::tests::SetAll(value));
            average.update(&live, t);
            let keep = (0.5f64).min((1.0 + t as f64) / (10.0 + t as f64));
            for e in expected.iter_mut() {
                *e = *e * keep + f64::from(value) * (1.0 - keep);
            }
        }
        let averaged = average.apply(live.clone());
        for (got, want) in weights(&averaged).iter().zip(&expected) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
        }
        // the skipped bias is the live model's, not an average
        let bias = |l: &Linear| -> Vec<f32> { l.bias.as_ref().unwrap().val().into_data().try_to_vec::<f32>().unwrap() };
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
