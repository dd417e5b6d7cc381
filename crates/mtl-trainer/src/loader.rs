//! Batch loading: the rows of each epoch in a seeded order, assembled into batches on a helper
//! thread a few batches ahead of the step that needs them.

use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::Scope;

use burn::tensor::Device;
use mtl_features::{EncodedData, TableLayout};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::step::Batch;

/// Batches built ahead of the step that needs them.
const AHEAD: usize = 2;

/// The row order of `epoch`: a permutation seeded by (seed, epoch), so a resumed run replays it.
pub fn epoch_order(rows: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows).collect();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
    order.shuffle(&mut rng);
    order
}

/// Where the batches of a run start and what they carry.
#[derive(Debug, Clone, Copy)]
pub struct LoaderPlan {
    /// Rows per batch.
    pub batch_size: usize,
    /// Epochs in the run.
    pub epochs: usize,
    /// Shuffling seed.
    pub seed: u64,
    /// The first batch: (epoch, batch within it), both 0-based.
    pub from: (usize, usize),
    /// Build batches for row-sparse training (ids local to each batch's distinct rows).
    pub row_sparse: bool,
}

/// Starts a thread in `scope` that sends every remaining batch of the run in order; it ends
/// when the run's batches are all sent or the receiver is dropped.
pub fn spawn<'scope, 'env: 'scope>(
    scope: &'scope Scope<'scope, 'env>,
    data: &'env EncodedData,
    layout: &'env TableLayout,
    device: &'env Device,
    plan: LoaderPlan,
) -> Receiver<Batch> {
    let (tx, rx) = sync_channel::<Batch>(AHEAD);
    scope.spawn(move || {
        let bs = plan.batch_size;
        let batches = data.rows.div_ceil(bs);
        for epoch in plan.from.0..plan.epochs {
            let order = epoch_order(data.rows, plan.seed, epoch);
            let first = if epoch == plan.from.0 { plan.from.1 } else { 0 };
            for bi in first..batches {
                let idx = &order[bi * bs..((bi + 1) * bs).min(data.rows)];
                let batch = if plan.row_sparse {
                    let (tensors, table_rows) = data.batch_unique(idx, layout, device);
                    Batch { tensors, table_rows }
                } else {
                    Batch {
                        tensors: data.batch(idx, layout, device),
                        table_rows: Vec::new(),
                    }
                };
                if tx.send(batch).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_loader_sends_the_rest_of_the_run_in_the_same_order() {
        // 10 rows, batches of 4 (3 per epoch), 2 epochs; each batch's first label is its row
        let data = EncodedData {
            rows: 10,
            n_labels: 1,
            labels: (0..10).map(|r| r as f32).collect(),
            ..Default::default()
        };
        let layout = TableLayout {
            rows: Vec::new(),
            offset: Vec::new(),
            total_rows: 0,
        };
        let device = Device::flex();
        let rows = |from: (usize, usize)| -> Vec<Vec<f32>> {
            let plan = LoaderPlan {
                batch_size: 4,
                epochs: 2,
                seed: 7,
                from,
                row_sparse: false,
            };
            std::thread::scope(|s| {
                spawn(s, &data, &layout, &device, plan)
                    .iter()
                    .map(|b| b.tensors.labels.into_data().try_to_vec::<f32>().unwrap())
                    .collect()
            })
        };
        let all = rows((0, 0));
        assert_eq!(all.len(), 6);
        assert_eq!(all.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2, 4, 4, 2]);
        let expected: Vec<f32> = epoch_order(10, 7, 1).iter().map(|&r| r as f32).collect();
        assert_eq!(all[3..].concat(), expected);
        assert_ne!(all[..3].concat(), expected, "each epoch has its own order");
        assert_eq!(rows((0, 2)), all[2..]);
        assert_eq!(rows((1, 1)), all[4..]);
        // dropping the receiver early ends the thread (the scope would hang otherwise)
        std::thread::scope(|s| {
            let rx = spawn(
                s,
                &data,
                &layout,
                &device,
                LoaderPlan {
                    batch_size: 1,
                    epochs: 100,
                    seed: 0,
                    from: (0, 0),
                    row_sparse: false,
                },
            );
            assert!(rx.recv().is_ok());
        });
    }
}
