//! One step's row-wise Adam update of the host table's rows ([`RowStep`]), and the part of a
//! step's update that may wait ([`Deferred`]).
//!
//! A pipelined step ([`crate::SparseAdam::prepare_beside`]) must update at once only the rows
//! the next batch gathers; its other rows' update can wait for the second thread of the next
//! step, which takes it before anything else it does there. A row's update is the same
//! arithmetic whenever it runs (the step's constants, learning rate, clip factor and average
//! keep are kept with it), so the floats do not depend on when; until then the row's
//! up-to-date step reads [`DEFERRED`], so that whatever reads it first takes the update.

use burn::tensor::TensorData;

use crate::replay::{Missed, adam_element, average_element};
use crate::row_adam::StepConstants;

/// A row's up-to-date step (catch-up's bookkeeping) while its update waits in a [`Deferred`].
pub(crate) const DEFERRED: u64 = u64::MAX;

/// What one step's update of a row needs besides the row and its gradient.
#[derive(Clone, Copy)]
pub(crate) struct StepScalars {
    /// The step's Adam constants.
    pub(crate) c: StepConstants,
    /// The gradient's clip factor (over all of the step's rows).
    pub(crate) coef: f32,
    pub(crate) lr: f32,
    /// The weight average's keep at this step.
    pub(crate) keep: f32,
    /// The step (1-based).
    pub(crate) time: u64,
}

impl StepScalars {
    /// The step's constants as a replayed step keeps them ([`Missed`]).
    #[inline(always)]
    fn constants(&self) -> Missed {
        Missed {
            factor: self.c.factor,
            eps: self.c.eps,
            lr: self.lr,
            keep: self.keep,
        }
    }
}

/// The row-wise Adam update of some of a step's rows as one loop, compiled for the widest SIMD
/// the CPU has (pulp's runtime dispatch: AVX-512, AVX2 or SSE2). Element for element the same
/// IEEE operations as a scalar loop, so the results do not depend on the CPU.
pub(crate) struct RowStep<'a> {
    /// The table: per row value, first moment, second moment (`3 × dim` floats).
    pub(crate) floats: &'a mut [f32],
    /// The step's rows, and their gradient (`[ids, dim]`).
    pub(crate) ids: &'a [i32],
    pub(crate) g: &'a [f32],
    /// The positions in `ids` to update; every one when `None`.
    pub(crate) only: Option<&'a [u32]>,
    pub(crate) dim: usize,
    pub(crate) s: StepScalars,
    /// With `catch-up`: each row's up-to-date step (the step's rows were brought up to date
    /// by the gather; they are up to date with this step after it).
    pub(crate) catch_up: Option<&'a mut [u64]>,
    /// With a weight average: every row's average (`[rows, dim]`).
    pub(crate) average: Option<&'a mut [f32]>,
}

impl pulp::WithSimd for RowStep<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(mut self, _simd: S) {
        let d = self.dim;
        match self.only {
            None => {
                for (p, &id) in self.ids.iter().enumerate() {
                    self.row(id, p * d);
                }
            }
            Some(only) => {
                for &p in only {
                    self.row(self.ids[p as usize], p as usize * d);
                }
            }
        }
    }
}

impl RowStep<'_> {
    /// The update of row `id`, whose gradient starts at `at` in `g`.
    #[inline(always)]
    fn row(&mut self, id: i32, at: usize) {
        let (d, s) = (self.dim, self.s);
        let (k, at_step) = (s.c.betas(), s.constants());
        let base = id as usize * 3 * d;
        let (w, moments) = self.floats[base..base + 3 * d].split_at_mut(d);
        let (m, v) = moments.split_at_mut(d);
        if let Some(last) = self.catch_up.as_mut() {
            let last = &mut last[id as usize];
            debug_assert!(
                *last == DEFERRED || *last + 1 == s.time,
                "row {id} was not gathered"
            );
            *last = s.time;
        }
        let g = &self.g[at..at + d];
        match self.average.as_mut() {
            // the average's update in the same loop, element by element: the same floats as
            // a loop of its own after the step, without reading the new values back
            Some(a) => {
                let a = &mut a[id as usize * d..(id as usize + 1) * d];
                for ((((w, m), v), &g), a) in w.iter_mut().zip(m).zip(v).zip(g).zip(a) {
                    adam_element(w, m, v, g * s.coef, &at_step, k);
                    average_element(a, *w, s.keep);
                }
            }
            None => {
                for (((w, m), v), &g) in w.iter_mut().zip(m).zip(v).zip(g) {
                    adam_element(w, m, v, g * s.coef, &at_step, k);
                }
            }
        }
    }
}

/// How a pipelined step's rows divide ([`split_rows`]): by position in the step's ids.
pub(crate) struct Split {
    /// The rows the next batch uses: updated when the step ends.
    pub(crate) now: Vec<u32>,
    /// The others: their update may wait ([`Deferred`]).
    pub(crate) later: Vec<u32>,
    /// How many ids the step has.
    pub(crate) rows: usize,
}

/// The ids of `next` (distinct) that are not in `current` (distinct), sorted (the rows a
/// pipelined step brings up to date ahead), and how `current`'s rows divide by whether `next`
/// uses them: one sort, of `next`, and a search in it for each of `current`'s ids.
pub(crate) fn split_rows(next: &[i32], current: &[i32]) -> (Vec<i32>, Split) {
    let mut next = next.to_vec();
    next.sort_unstable();
    let mut shared = vec![false; next.len()];
    let (mut now, mut later) = (Vec::new(), Vec::new());
    for (p, id) in current.iter().enumerate() {
        match next.binary_search(id) {
            Ok(i) => {
                shared[i] = true;
                now.push(p as u32);
            }
            Err(_) => later.push(p as u32),
        }
    }
    let ahead = next
        .iter()
        .zip(&shared)
        .filter(|&(_, &shared)| !shared)
        .map(|(&id, _)| id)
        .collect();
    let rows = current.len();
    (ahead, Split { now, later, rows })
}

/// A step's rows whose update waits (their up-to-date step reads [`DEFERRED`]): the step's
/// ids and gradient, the positions that wait, and the step's scalars.
pub(crate) struct Deferred {
    pub(crate) ids: Vec<i32>,
    pub(crate) g: TensorData,
    pub(crate) later: Vec<u32>,
    pub(crate) s: StepScalars,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rows_average_updated_in_the_steps_loop_is_the_average_after_the_step() {
        // rows 19 wide (a vector's width and a remainder), two of three updated: the update
        // with the average gives the table the floats of the update without it, and each
        // updated row's average `keep · a + (1 − keep) · w` of its new values, by hand
        let (dim, rows) = (19, 3);
        let mut x = 0.37f32;
        let mut next = || {
            x = (x * 9.73 + 0.11).fract();
            x - 0.5
        };
        let floats: Vec<f32> = (0..rows * 3 * dim)
            .map(|i| next() * if i % (3 * dim) >= 2 * dim { 1e-3 } else { 0.1 })
            .map(f32::abs)
            .collect();
        let average: Vec<f32> = (0..rows * dim).map(|_| next() * 0.1).collect();
        let (ids, g): (Vec<i32>, Vec<f32>) = (vec![2, 0], (0..2 * dim).map(|_| next() * 0.01).collect());
        let config = crate::RowAdamConfig {
            weight_decay: 0.01,
            ..Default::default()
        };
        let s = StepScalars {
            c: config.at(3),
            coef: 0.7,
            lr: 0.01,
            keep: 0.9,
            time: 3,
        };
        let run = |average: Option<&mut [f32]>| {
            let mut floats = floats.clone();
            pulp::Arch::new().dispatch(RowStep {
                floats: &mut floats,
                ids: &ids,
                g: &g,
                only: None,
                dim,
                s,
                catch_up: None,
                average,
            });
            floats
        };
        let mut averaged = average.clone();
        let (with, without) = (run(Some(&mut averaged)), run(None));
        assert_eq!(with, without);
        assert_ne!(with, floats);
        let mut by_hand = average.clone();
        for &id in &ids {
            let id = id as usize;
            for i in 0..dim {
                let w = without[id * 3 * dim + i];
                by_hand[id * dim + i] = by_hand[id * dim + i] * 0.9 + w * (1.0 - 0.9);
            }
        }
        assert_eq!(averaged, by_hand);
        assert_eq!(
            averaged[dim..2 * dim],
            average[dim..2 * dim],
            "row 1 was not updated"
        );
        assert_ne!(averaged[..dim], average[..dim]);
    }

    #[test]
    fn a_steps_rows_divide_by_whether_the_next_batch_uses_them() {
        let (ahead, split) = split_rows(&[9, 2, 5, 7], &[7, 1, 2, 8]);
        assert_eq!(ahead, vec![5, 9]);
        assert_eq!(split_rows(&[3], &[]).0, vec![3]);
        // 7 and 2 (positions 0 and 2) come back next step; 1 and 8 do not
        assert_eq!((split.now, split.later, split.rows), (vec![0, 2], vec![1, 3], 4));
    }
}
