//! The training loop: seeded shuffling, Adam/AdamW steps, evaluation, early stopping,
//! atomic checkpoints with optimiser state and data position, and exact resume.

use std::path::PathBuf;
use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, ModuleOptimizer, decay::WeightDecayConfig};
use burn::tensor::{Device, Tensor};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mtl_features::{BatchTensors, EncodedData, TableLayout};
use mtl_layers::MultiTaskModel;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::checkpoint::live_checkpoint_dir;
pub use crate::checkpoint::{SPARSE_MOMENTS, checkpoint_dir, read_checkpoint, save_atomic, write_checkpoint};
use crate::config::{EmbeddingUpdate, OptimizerKind, TrainSettings};
pub use crate::early_stopping::improves;
use crate::early_stopping::monitored;
use crate::metrics::{TaskMetrics, evaluate};
use crate::sparse::SparseAdam;
use crate::{TrainError, crash_point};

/// One evaluation of the model on the validation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Epoch (1-based) the evaluation happened in or after.
    pub epoch: usize,
    /// Optimiser steps so far.
    pub step: usize,
    /// Mean training loss (weighted sum of terms) since the previous evaluation.
    pub train_loss: f64,
    /// Mean of each training loss term since the previous evaluation.
    pub train_losses: Vec<(String, f64)>,
    /// Validation loss (weighted sum of terms), if there is validation data.
    pub valid_loss: Option<f64>,
    /// Per-output validation metrics.
    pub valid: Vec<TaskMetrics>,
    /// Rows trained on since the previous evaluation.
    pub train_rows: u64,
    /// Seconds spent training since the previous evaluation (evaluation and checkpoints excluded).
    pub train_secs: f64,
    /// Training throughput since the previous evaluation.
    pub samples_per_sec: f64,
    /// Of `train_secs`, the seconds spent building batches (data the loop waited for).
    #[serde(default)]
    pub data_secs: f64,
}

/// Where training stands: saved in every checkpoint so `--resume` continues exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Current epoch (0-based).
    pub epoch: usize,
    /// Next batch within the current epoch.
    pub batch_in_epoch: usize,
    /// Optimiser steps taken.
    pub global_step: usize,
    /// Every evaluation so far.
    pub history: Vec<EvalRecord>,
    /// Best monitored value and the step it was reached at.
    pub best: Option<(f64, usize)>,
    /// Evaluations since the best one.
    pub since_best: usize,
    /// Whether the run is complete: trained, and its model and metrics written.
    pub finished: bool,
    /// Whether the training loop ran to its end (all epochs, or early stopping); the run is
    /// `finished` once the final model and metrics are written after it.
    #[serde(default)]
    pub trained: bool,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Running sums since the last evaluation: (rows, weighted loss · rows, per-term loss · rows).
    pub pending: (u64, f64, Vec<f64>),
    /// Seconds spent training since the last evaluation.
    pub pending_secs: f64,
    /// Steps of the row-sparse embedding optimiser.
    #[serde(default)]
    pub sparse_time: usize,
    /// Seconds spent building batches (the loop waiting on data) since the last evaluation.
    #[serde(default)]
    pub pending_data_secs: f64,
}

/// Options of one `fit` call that are not model settings.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Folder for `checkpoint/` and `best.bpk`.
    pub out_dir: PathBuf,
    /// Show progress bars on stderr.
    pub progress: bool,
    /// Label names (for metric descriptions).
    pub label_names: Vec<String>,
}

/// The result of a fit.
pub struct FitOutcome<M> {
    /// The model after the last step (on the training device).
    pub model: M,
    /// The state at the end.
    pub state: TrainState,
}

/// Builds the configured optimiser.
pub fn optimizer(settings: &TrainSettings) -> ModuleOptimizer {
    let clip = settings.grad_clip_norm.map(GradientClippingConfig::Norm);
    match settings.optimizer {
        OptimizerKind::Adam => AdamConfig::new()
            .with_weight_decay(
                (settings.weight_decay > 0.0).then(|| WeightDecayConfig::new(settings.weight_decay as f32)),
            )
            .with_grad_clipping(clip)
            .init(),
        OptimizerKind::AdamW => AdamWConfig::new()
            .with_weight_decay(settings.weight_decay as f32)
            .with_grad_clipping(clip)
            .init(),
    }
}

/// The row order of `epoch`: a permutation seeded by (seed, epoch), so a resumed run replays it.
pub fn epoch_order(rows: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows).collect();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
    order.shuffle(&mut rng);
    order
}

/// Reads a `[n]` tensor back to the host; a backend failure is an error, never an empty list.
pub fn to_host(t: Tensor<1>) -> Result<Vec<f32>, TrainError> {
    let n = t.dims()[0];
    let values = t
        .try_into_data()
        .map_err(|e| TrainError::Backend(format!("reading results from the device: {e:?}")))?
        .try_to_vec::<f32>()
        .map_err(|e| TrainError::Backend(format!("reading results from the device: {e:?}")))?;
    if values.len() != n {
        return Err(TrainError::Backend(format!(
            "expected {n} values from the device, got {}",
            values.len()
        )));
    }
    Ok(values)
}

/// One column of predictions per output, and the mean loss terms when asked for.
pub type Predictions = (Vec<Vec<f32>>, Option<Vec<f64>>);

/// Predictions of every output for every row of `data`, in batches, with the model in
/// evaluation mode on the plain device. Also returns the mean loss terms when `with_loss`.
pub fn predict_all<M: MultiTaskModel>(
    model: &M,
    data: &EncodedData,
    layout: &TableLayout,
    device: &Device,
    batch_size: usize,
    with_loss: bool,
) -> Result<Predictions, TrainError> {
    let n_out = model.outputs().len();
    let mut preds = vec![Vec::with_capacity(data.rows); n_out];
    let mut loss_sums: Vec<f64> = Vec::new();
    let mut start = 0;
    while start < data.rows {
        let end = (start + batch_size).min(data.rows);
        let idx: Vec<usize> = (start..end).collect();
        let batch = data.batch(&idx, layout, device);
        let outputs = if with_loss {
            let f = model.forward(&batch);
            let terms = to_host(Tensor::cat(f.losses, 0))?;
            loss_sums.resize(terms.len(), 0.0);
            for (s, t) in loss_sums.iter_mut().zip(terms) {
                *s += f64::from(t) * (end - start) as f64;
            }
            f.predictions
        } else {
            model.predict(&batch)
        };
        for (p, o) in preds.iter_mut().zip(outputs) {
            p.extend(to_host(o)?);
        }
        start = end;
    }
    let losses = with_loss.then(|| loss_sums.iter().map(|s| s / data.rows.max(1) as f64).collect());
    Ok((preds, losses))
}

fn weighted(terms: &[f64], weights: &[f32]) -> f64 {
    terms
        .iter()
        .enumerate()
        .map(|(i, t)| t * f64::from(weights.get(i).copied().unwrap_or(1.0)))
        .sum()
}

/// What the schedule asks for after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Due {
    /// Evaluate on the validation set (every N steps and at the last epoch's end, or at
    /// every epoch's end).
    eval: bool,
    /// Write a checkpoint (every N steps and at every epoch's end, or at every epoch's end).
    checkpoint: bool,
    /// This invocation's step limit is reached.
    limit: bool,
}

/// The schedule after global step `step` (1-based), `epoch` being the epoch count once the
/// step's epoch end (if `at_epoch_end`) is counted.
fn due(settings: &TrainSettings, step: usize, at_epoch_end: bool, epoch: usize) -> Due {
    Due {
        eval: match settings.eval_every_steps {
            Some(n) => step.is_multiple_of(n) || (at_epoch_end && epoch == settings.epochs),
            None => at_epoch_end,
        },
        checkpoint: match settings.checkpoint_every_steps {
            Some(n) => step.is_multiple_of(n) || at_epoch_end,
            None => at_epoch_end,
        },
        limit: settings.max_steps.is_some_and(|m| step >= m),
    }
}

fn progress_bar(show: bool, total: u64, epoch: usize, epochs: usize) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(total),
        if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} rows {per_sec} eta {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(format!("epoch {}/{}", epoch + 1, epochs));
    pb
}

/// Trains `model` (on an autodiff device) from `state`, evaluating on `valid`.
#[allow(clippy::too_many_arguments)]
pub fn fit<M: MultiTaskModel>(
    mut model: M,
    mut optim: ModuleOptimizer,
    train: &EncodedData,
    valid: Option<&EncodedData>,
    layout: &TableLayout,
    settings: &TrainSettings,
    device: &Device,
    options: &FitOptions,
    mut state: TrainState,
) -> Result<FitOutcome<M>, TrainError> {
    let plain = device.clone().without_autodiff();
    let bs = settings.batch_size;
    let batches = train.rows.div_ceil(bs);
    let loss_names = model.loss_names();
    let outputs = model.outputs();
    if state.pending.2.is_empty() {
        state.pending.2 = vec![0.0; loss_names.len()];
    }
    let mut sparse = match settings.embedding {
        EmbeddingUpdate::Dense => None,
        // a schema without id fields has no table to update
        EmbeddingUpdate::Sparse if layout.total_rows > 0 => {
            let mut sp = SparseAdam::new(&mut model, settings, device);
            // a resumed row-sparse run needs its moments (a run that was dense until now has
            // none: `sparse_time` 0); zero moments in their place would be silently wrong
            if state.global_step > 0 && state.sparse_time > 0 {
                let moments = live_checkpoint_dir(&options.out_dir).join(SPARSE_MOMENTS);
                if !moments.exists() {
                    return Err(TrainError::Record {
                        path: moments.display().to_string(),
                        message: "missing: the checkpoint has no moments of the row-sparse \
                                  optimiser (written by an older mtl, or incomplete)"
                            .into(),
                    });
                }
                sp.load(&moments, state.sparse_time)?;
            }
            Some(sp)
        }
        EmbeddingUpdate::Sparse => None,
    };
    // burn initialises parameters lazily; a large table's random initialisation (seconds at
    // tens of millions of rows) happens here, before the training clock starts
    let _ = model.input_layer().embedding.weight.val();
    let mut clock = Instant::now();
    // a resumed run may have nothing left: trained already, or at its step limit
    let nothing_left = state.trained || settings.max_steps.is_some_and(|m| state.global_step >= m);

    let evaluate_now = |model: &M, state: &mut TrainState, clock: &mut Instant| -> Result<bool, TrainError> {
        let secs = state.pending_secs + clock.elapsed().as_secs_f64();
        let (rows, loss_sum, terms) = std::mem::take(&mut state.pending);
        let train_losses: Vec<(String, f64)> = loss_names
            .iter()
            .cloned()
            .zip(terms.iter().map(|t| t / rows.max(1) as f64))
            .collect();
        let (valid_loss, valid_metrics) = match valid {
            Some(v) => {
                let eval_model = model.valid();
                let (preds, losses) = predict_all(&eval_model, v, layout, &plain, bs.max(4096), true)?;
                let loss = losses.map(|l| weighted(&l, &settings.loss_weights));
                (loss, evaluate(&outputs, &preds, v, &options.label_names))
            }
            None => (None, Vec::new()),
        };
        let record = EvalRecord {
            epoch: state.epoch + usize::from(state.batch_in_epoch > 0),
            step: state.global_step,
            train_loss: loss_sum / rows.max(1) as f64,
            train_losses,
            valid_loss,
            valid: valid_metrics,
            train_rows: rows,
            train_secs: secs,
            samples_per_sec: rows as f64 / secs.max(1e-9),
            data_secs: std::mem::take(&mut state.pending_data_secs),
        };
        tracing::info!(step = record.step, train_loss = record.train_loss, "evaluation");
        if options.progress {
            eprintln!(
                "  step {:>6}  train loss {:.5}  valid loss {}  ({:.0} samples/s)",
                record.step,
                record.train_loss,
                record.valid_loss.map_or("-".into(), |l| format!("{l:.5}")),
                record.samples_per_sec
            );
            for m in &record.valid {
                eprintln!("    {}", m.summary());
            }
        }
        state.pending = (0, 0.0, vec![0.0; loss_names.len()]);
        state.pending_secs = 0.0;
        let mut stop = false;
        if let Some(es) = &settings.early_stopping {
            match monitored(&record, &es.metric) {
                Some(value) => {
                    let better = improves(es, value, state.best.map(|b| b.0));
                    if better {
                        state.best = Some((value, state.global_step));
                        state.since_best = 0;
                        save_atomic(model, &options.out_dir.join("best.bpk"))?;
                    } else {
                        state.since_best += 1;
                        stop = state.since_best >= es.patience;
                    }
                }
                None => {
                    // the metric was checked against the outputs before training; it can still
                    // be undefined here (an AUC on a validation set with one class)
                    tracing::warn!(metric = %es.metric, "monitored metric not available at this evaluation");
                }
            }
        }
        state.history.push(record);
        *clock = Instant::now();
        Ok(stop)
    };

    while !nothing_left && state.epoch < settings.epochs {
        let order = epoch_order(train.rows, settings.seed, state.epoch);
        let pb = progress_bar(options.progress, train.rows as u64, state.epoch, settings.epochs);
        pb.set_position((state.batch_in_epoch * bs).min(train.rows) as u64);
        let first = state.batch_in_epoch;
        let row_sparse = sparse.is_some();
        let (trained, stop_training) = std::thread::scope(|scope| -> Result<(M, bool), TrainError> {
            let mut model = model;
            // a helper thread assembles the epoch's batches, up to two ahead of the step
            // that needs them; only the gather from the live table stays on this thread
            let (tx, rx) = std::sync::mpsc::sync_channel::<(BatchTensors, Vec<i32>)>(2);
            let order = &order;
            scope.spawn(move || {
                for bi in first..batches {
                    let idx = &order[bi * bs..((bi + 1) * bs).min(train.rows)];
                    let item = if row_sparse {
                        train.batch_unique(idx, layout, device)
                    } else {
                        (train.batch(idx, layout, device), Vec::new())
                    };
                    if tx.send(item).is_err() {
                        break;
                    }
                }
            });
            while state.batch_in_epoch < batches {
                let bi = state.batch_in_epoch;
                let batch_rows = ((bi + 1) * bs).min(train.rows) - bi * bs;
                let data_clock = Instant::now();
                let (mut batch, unique) = rx
                    .recv()
                    .expect("the batch thread sends every batch of the epoch");
                let gathered = sparse.as_ref().map(|sp| {
                    let (leaf, ids) = sp.gather(unique);
                    batch.gathered = Some(leaf.clone());
                    (leaf, ids)
                });
                state.pending_data_secs += data_clock.elapsed().as_secs_f64();
                let forward = model.forward(&batch);
                let loss = forward.total_loss(&settings.loss_weights);
                let terms = to_host(Tensor::cat(forward.losses.clone(), 0))?;
                let total = weighted(
                    &terms.iter().map(|&t| f64::from(t)).collect::<Vec<_>>(),
                    &settings.loss_weights,
                );
                if !total.is_finite() {
                    return Err(TrainError::NonFinite {
                        step: state.global_step + 1,
                        terms: loss_names.iter().cloned().zip(terms).collect(),
                    });
                }
                let mut grads = loss.backward();
                if let (Some(sp), Some((leaf, ids))) = (sparse.as_mut(), gathered) {
                    // take the rows' gradient before the module's gradients are collected
                    // (a batch whose rows feed nothing has no gradient to apply)
                    if let Some(grad) = leaf.grad_remove(&mut grads) {
                        sp.step(&ids, grad, settings.lr);
                        state.sparse_time = sp.time;
                    }
                }
                let grads = GradientsParams::from_grads(grads, &model);
                model = optim.step(settings.lr, model, grads);
                state.global_step += 1;
                state.batch_in_epoch += 1;
                let rows = batch_rows as u64;
                state.pending.0 += rows;
                state.pending.1 += total * rows as f64;
                for (s, t) in state.pending.2.iter_mut().zip(&terms) {
                    *s += f64::from(*t) * rows as f64;
                }
                pb.inc(rows);
                pb.set_message(format!("loss {total:.4}"));
                let step = state.global_step;
                let at_epoch_end = state.batch_in_epoch == batches;
                if at_epoch_end {
                    state.epoch += 1;
                    state.batch_in_epoch = 0;
                }
                let Due {
                    eval: eval_due,
                    checkpoint: checkpoint_due,
                    limit: limit_hit,
                } = due(settings, step, at_epoch_end, state.epoch);
                let mut stop = false;
                if let Some(sp) = &sparse
                    && (eval_due || checkpoint_due || limit_hit || state.epoch >= settings.epochs)
                {
                    // evaluation and checkpoints read the model's own table
                    sp.sync_into(&mut model);
                }
                if eval_due {
                    pb.suspend(|| -> Result<(), TrainError> {
                        stop = evaluate_now(&model, &mut state, &mut clock)?;
                        Ok(())
                    })?;
                }
                if stop {
                    state.trained = true;
                    state.stopped_early = true;
                } else if state.epoch >= settings.epochs {
                    state.trained = true;
                }
                crash_point("step");
                if checkpoint_due || limit_hit || state.trained {
                    state.pending_secs += clock.elapsed().as_secs_f64();
                    clock = Instant::now();
                    write_checkpoint(&options.out_dir, &model, &optim, sparse.as_ref(), &state)?;
                }
                if let Some(sp) = &sparse
                    && !(state.trained || limit_hit)
                {
                    sp.release_from(&mut model);
                }
                if state.trained || limit_hit {
                    return Ok((model, true));
                }
                if at_epoch_end {
                    break;
                }
            }
            Ok((model, false))
        })?;
        model = trained;
        pb.finish_and_clear();
        if stop_training {
            break;
        }
    }
    if let Some(sp) = &sparse {
        sp.sync_into(&mut model);
    }
    Ok(FitOutcome { model, state })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_evaluates_checkpoints_and_stops_when_asked() {
        // 2 epochs of 10 steps; evaluate every 5, checkpoint every 4, stop at 7
        let s = TrainSettings {
            epochs: 2,
            eval_every_steps: Some(5),
            checkpoint_every_steps: Some(4),
            max_steps: Some(7),
            ..TrainSettings::default()
        };
        let at = |step: usize| {
            let end = step.is_multiple_of(10);
            due(&s, step, end, step / 10)
        };
        let evals: Vec<usize> = (1..=20).filter(|&k| at(k).eval).collect();
        assert_eq!(evals, [5, 10, 15, 20]);
        let checkpoints: Vec<usize> = (1..=20).filter(|&k| at(k).checkpoint).collect();
        assert_eq!(checkpoints, [4, 8, 10, 12, 16, 20]);
        assert!(!at(6).limit && at(7).limit && at(8).limit);
        // without step settings: both at every epoch's end, no limit
        let plain = TrainSettings {
            epochs: 2,
            ..TrainSettings::default()
        };
        let ends: Vec<usize> = (1..=20)
            .filter(|&k| {
                let d = due(&plain, k, k.is_multiple_of(10), k / 10);
                assert_eq!(d.eval, d.checkpoint);
                assert!(!d.limit);
                d.eval
            })
            .collect();
        assert_eq!(ends, [10, 20]);
        // evaluating every 3 steps still evaluates at the last epoch's end, not the first's
        let three = TrainSettings {
            epochs: 2,
            eval_every_steps: Some(3),
            ..TrainSettings::default()
        };
        assert!(!due(&three, 10, true, 1).eval);
        assert!(due(&three, 20, true, 2).eval);
    }
}
