//! A step's forward and backward passes cut at the model's branches ([`Branching`]).
//!
//! Forward: the trunk's pass once; each branch's on a detached copy of the trunk's output, so
//! on a graph of its own — side by side on rayon's threads where that keeps the floats and
//! pays (a CPU backend, several threads, nothing drawn at random, branches worth a thread:
//! [`worth_side_by_side`]) — and the head's on detached copies of
//! the branches' outputs (and one more of the trunk's). Backward runs the other way, by the
//! chain rule: the head's graph gives each branch output its gradient `g`; each branch's
//! graph, seeded with `Σ out ⊙ g`, gives its parameters and its copy of the trunk's output
//! theirs; the copies' gradients (the branches' in branch order, then the head's), summed and
//! seeded the same way into the trunk's graph, give the trunk's parameters and the gathered
//! table rows theirs. The seeds' backward passes multiply by 1 and the branches' gradients are
//! summed in the order one pass's backward sums them, so each gradient is the one a single
//! pass computes, bit for bit where the trunk's output reaches the head only through the
//! branches (tested: ESMM's two towers, a three-task AITM's bottoms; a model with a DeepFM
//! tower, which also reads the field embeddings the input is made of, does not cut). Where the
//! head reads the trunk's output too (MMOE's gates beside its groups of experts) the sum's
//! terms meet in another order than in one pass, so such a model is cut on one thread as
//! well ([`Branches::of`]): the same floats on any number of threads.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Gradients, Tensor};
use mtl_features::BatchTensors;
use mtl_layers::{Branching, Forward, MultiTaskModel, Trunk};
use rayon::prelude::*;

/// The least [`Branching::branch_work`] (multiply-adds a row, the lightest branch's) for which
/// a step with several threads runs a model's branches side by side: below it the handing
/// over of the branches between threads costs more than their passes side by side save.
pub const SIDE_BY_SIDE_WORK: usize = 32_768;

/// Whether a step of `model` on a CPU with several threads runs its branches side by side
/// (a model that branches, each branch worth a thread: [`SIDE_BY_SIDE_WORK`]; see
/// [`Branches::of`]).
pub fn worth_side_by_side<M: MultiTaskModel>(model: &M) -> bool {
    model
        .branching()
        .is_some_and(|b| b.branch_work() >= SIDE_BY_SIDE_WORK)
}

/// How a step takes its forward and backward passes through a model's branches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Branches {
    /// One pass over the whole graph.
    #[default]
    Whole,
    /// Cut at the branches, one branch after another.
    Cut,
    /// Cut at the branches, side by side on rayon's threads.
    SideBySide,
}

impl Branches {
    /// The passes of a step of `model`: side by side where the device is a CPU, rayon has
    /// several threads, nothing is drawn at random (`draws_at_random`: dropout, whose draws
    /// from the one stream would come in no fixed order) and the branches are worth it
    /// ([`worth_side_by_side`]); with one thread, cut one branch after another where one
    /// pass would not give the cut's floats ([`mtl_layers::Branching::one_pass_is_exact`]),
    /// so that a model trains to the same floats on any number of threads.
    pub fn of<M: MultiTaskModel>(model: &M, host: bool, draws_at_random: bool) -> Self {
        let exact = model.branching().is_none_or(|b| b.one_pass_is_exact());
        match host && !draws_at_random && worth_side_by_side(model) {
            false => Self::Whole,
            true if rayon::current_num_threads() > 1 => Self::SideBySide,
            true if exact => Self::Whole,
            true => Self::Cut,
        }
    }
}

/// A forward pass cut at the branches, kept for its backward pass ([`backward`]).
pub struct Cut {
    /// The trunk's output, in the trunk's graph.
    trunk: Trunk,
    /// Each branch's copy of it (leaves of the branch's graph).
    inputs: Vec<Trunk>,
    /// Each branch's output, in the branch's graph.
    outputs: Vec<Tensor<2>>,
    /// The head's copies of the outputs (leaves of the head's graph).
    leaves: Vec<Tensor<2>>,
    /// The head's copy of the trunk's output (leaves of the head's graph).
    head_input: Trunk,
    /// Whether the branches' passes run side by side.
    side_by_side: bool,
}

/// The forward pass through `model`'s trunk, branches (side by side when `side_by_side`) and
/// head: the head's predictions and loss terms, and the cut its backward pass needs; none for
/// a model that does not branch.
pub fn forward<M: MultiTaskModel>(
    model: &M,
    batch: &BatchTensors,
    side_by_side: bool,
) -> Option<(Forward, Cut)> {
    let (forward, cut) = forward_cut(model.branching()?, batch, side_by_side);
    if side_by_side {
        // burn keeps a running statistic's (BatchNorm's) update under the thread that made
        // it and averages the threads' updates when it next settles them: settle this step's
        // now, each made by one thread, so that the next step (on whichever threads) starts
        // from them as one thread's would
        drop(model.valid());
    }
    Some((forward, cut))
}

/// [`forward`] through a model's branches.
fn forward_cut(model: &dyn Branching, batch: &BatchTensors, side_by_side: bool) -> (Forward, Cut) {
    let trunk = model.trunk(batch);
    let inputs: Vec<Trunk> = (0..model.branch_count()).map(|_| trunk.detached()).collect();
    let run = |(i, input): (usize, &Trunk)| model.branch(i, input);
    let outputs: Vec<Tensor<2>> = match side_by_side {
        true => inputs.par_iter().enumerate().map(run).collect(),
        false => inputs.iter().enumerate().map(run).collect(),
    };
    let leaves: Vec<Tensor<2>> = outputs
        .iter()
        .map(|o| o.clone().detach().require_grad())
        .collect();
    let head_input = trunk.detached();
    let forward = model.head(leaves.clone(), &head_input, batch);
    let cut = Cut {
        trunk,
        inputs,
        outputs,
        leaves,
        head_input,
        side_by_side,
    };
    (forward, cut)
}

/// One branch's backward pass: its graph's gradients and those of its copy of the trunk's
/// output (`[batch, width]` and `[batch, n, dim]`).
type BranchGrads = (Gradients, Option<Tensor<2>>, Option<Tensor<3>>);

/// The backward pass of `loss` (the head's total, from [`forward`]'s loss terms): the trunk
/// graph's gradients (none where nothing the trunk gives feeds the loss), then each branch's
/// and the head's.
pub fn backward(cut: Cut, loss: Tensor<1>) -> (Option<Gradients>, Vec<Gradients>) {
    let Cut {
        trunk,
        inputs,
        outputs,
        leaves,
        head_input,
        side_by_side,
    } = cut;
    let mut head = loss.backward();
    let seeds: Vec<Option<Tensor<2>>> = leaves.iter().map(|l| l.grad_remove(&mut head)).collect();
    let run = |((output, input), seed): ((Tensor<2>, Trunk), Option<Tensor<2>>)| -> Option<BranchGrads> {
        let mut grads = (output * seed?.autodiff()).sum().backward();
        let input_grad = input.input.grad_remove(&mut grads);
        let stack_grad = input.stack.as_ref().and_then(|s| s.grad_remove(&mut grads));
        Some((grads, input_grad, stack_grad))
    };
    let jobs = outputs.into_iter().zip(inputs).zip(seeds);
    let branches: Vec<Option<BranchGrads>> = match side_by_side {
        true => jobs.collect::<Vec<_>>().into_par_iter().map(run).collect(),
        false => jobs.map(run).collect(),
    };
    let (mut input_grad, mut stack_grad) = (None, None);
    let mut graphs = Vec::with_capacity(branches.len() + 1);
    // in branch order, as one pass's backward accumulates a tensor's gradients from its
    // consumers (in the order they were made), so that three or more branches sum alike
    for (grads, input, stack) in branches.into_iter().flatten() {
        input_grad = add(input_grad, input);
        stack_grad = add(stack_grad, stack);
        graphs.push(grads);
    }
    input_grad = add(input_grad, head_input.input.grad_remove(&mut head));
    stack_grad = add(
        stack_grad,
        head_input.stack.as_ref().and_then(|s| s.grad_remove(&mut head)),
    );
    graphs.push(head);
    let seed = [
        input_grad.map(|g| (trunk.input * g.autodiff()).sum()),
        stack_grad.and_then(|g| trunk.stack.map(|s| (s * g.autodiff()).sum())),
    ];
    let trunk = seed
        .into_iter()
        .flatten()
        .reduce(|a, b| a + b)
        .map(|s| s.backward());
    (trunk, graphs)
}

/// `a + b`, either of which may be missing.
fn add<const D: usize>(a: Option<Tensor<D>>, b: Option<Tensor<D>>) -> Option<Tensor<D>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

/// `model`'s parameter gradients from the graphs of a cut pass (a parameter in several
/// graphs gets their sum, in the graphs' order).
pub fn params<M: Module>(graphs: Vec<Gradients>, model: &M) -> GradientsParams {
    let mut graphs = graphs.into_iter().map(|g| GradientsParams::from_grads(g, model));
    let mut into = graphs.next().unwrap_or_default();
    for mut from in graphs {
        model.visit(&mut Merge {
            into: &mut into,
            from: &mut from,
        });
    }
    into
}

/// Adds every gradient `from` holds to `into`'s.
struct Merge<'a> {
    into: &'a mut GradientsParams,
    from: &'a mut GradientsParams,
}

impl ModuleVisitor for Merge<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.from.remove::<D>(param.id) {
            let sum = match self.into.remove::<D>(param.id) {
                Some(earlier) => earlier + g,
                None => g,
            };
            self.into.register::<D>(param.id, sum);
        }
    }
}
