//! The state the loop's parts share: where training stands ([`TrainState`], saved in every
//! checkpoint), one evaluation's record ([`EvalRecord`]), a step's losses ([`StepLosses`]) and
//! the options of one fit ([`FitOptions`]). Of the parts it imports only
//! [`weighting`](crate::fit::weighting)'s saved state and [`collective`](crate::fit::collective)'s
//! group.

use std::path::PathBuf;

use mtl_eval::TaskMetrics;
use serde::{Deserialize, Serialize};

use crate::fit::collective::Group;
use crate::fit::weighting::WeightingState;

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
    /// Over several ranks: of `train_secs`, the seconds this rank spent in collectives (the
    /// transfer, and waiting for the slowest rank).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub comm_secs: f64,
    /// Over several ranks: the bytes this rank summed with the others (the dense gradients'
    /// fused buffer, the losses) since the previous evaluation.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reduced_bytes: f64,
    /// Over several ranks: the bytes this rank contributed to gathers (the row-sparse table's
    /// row ids and gradients) since the previous evaluation.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gathered_bytes: f64,
    /// Learned loss weighting: each task term's weight at this evaluation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loss_weights: Vec<(String, f64)>,
    /// GradNorm: each task term's weighted gradient norm `w_i ‖∇_W L_i‖` at its last update.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grad_norms: Vec<(String, f64)>,
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
    /// The learned loss weighting's state (weights, moments), if the weights are learned.
    #[serde(default)]
    pub weighting: Option<WeightingState>,
    /// The training files as the run first read them, so that a resume on changed data is
    /// refused (the data position would point at other rows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<DataFile>,
    /// Over several ranks: collectives' seconds, reduced and gathered bytes since the last
    /// evaluation.
    #[serde(default, skip_serializing_if = "is_zero_traffic")]
    pub pending_comm: (f64, f64, f64),
    /// The row-sparse host table's traffic over the whole run (this rank's).
    #[serde(default)]
    pub table_traffic: TableCounts,
}

/// The row-sparse host table's traffic ([`mtl_optim::TableTraffic`]) summed over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCounts {
    /// Row-wise steps taken.
    pub steps: u64,
    /// Row updates by those steps.
    pub rows_updated: u64,
    /// Rows brought up to date before a step used them.
    pub rows_caught_up: u64,
    /// The steps those rows had missed, summed.
    pub missed_steps: u64,
    /// Rows brought up to date where the whole table was read (evaluations, the end).
    #[serde(default)]
    pub rows_caught_up_whole: u64,
    /// The steps those rows had missed, summed.
    #[serde(default)]
    pub missed_steps_whole: u64,
}

impl TableCounts {
    /// Adds one stretch of steps' traffic.
    pub fn add(&mut self, t: mtl_optim::TableTraffic) {
        self.steps += t.steps;
        self.rows_updated += t.rows_updated;
        self.rows_caught_up += t.rows_caught_up;
        self.missed_steps += t.missed_steps;
        self.rows_caught_up_whole += t.rows_caught_up_whole;
        self.missed_steps_whole += t.missed_steps_whole;
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn is_zero_traffic(t: &(f64, f64, f64)) -> bool {
    *t == (0.0, 0.0, 0.0)
}

/// A training file as a run read it: its path, size and content hash (XXH3-64, hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// The file.
    pub path: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its contents' hash.
    pub hash: String,
}

/// Options of one `fit` call that are not model settings (by default: no folder, quiet, one
/// process, nothing drawn at random).
#[derive(Debug, Clone, Default)]
pub struct FitOptions {
    /// Folder for `checkpoint/` and `best.bpk`.
    pub out_dir: PathBuf,
    /// Show progress bars on stderr.
    pub progress: bool,
    /// With progress on and stderr not a terminal (a log file, CI): a progress line this
    /// often instead of the bar (every 30 s when `None`).
    pub log_every: Option<std::time::Duration>,
    /// Label names (for metric descriptions).
    pub label_names: Vec<String>,
    /// Each validation row's group (`[metrics] group_by`), for GAUC in every evaluation.
    pub valid_groups: Option<Vec<u32>>,
    /// The label column of sample weights (`[data] weight`), if any: in every loss and metric.
    pub weight_label: Option<usize>,
    /// The ranks training the model: every rank runs the loop, the leader writes the files.
    pub group: Group,
    /// Set from outside (Ctrl-C in Python): the run stops after the step under way, leaving a
    /// checkpoint to resume, as at a step limit. One process only: ranks would stop apart.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// The TensorBoard event file the leader appends each evaluation's scalars to
    /// ([`crate::fit::events`]), if any.
    pub tensorboard: Option<crate::fit::events::SharedEventFile>,
    /// Whether the model's training forward pass draws at random (dropout): its branches then
    /// take their passes one after another, so that the draws keep their order.
    pub draws_at_random: bool,
}

impl FitOptions {
    /// The sample weights' label column and column name, if any.
    pub fn weight(&self) -> Option<(usize, &str)> {
        (self.weight_label).map(|l| (l, self.label_names[l].as_str()))
    }

    /// Whether a stop was asked from outside ([`FitOptions::stop`]).
    pub(crate) fn stop_asked(&self) -> bool {
        (self.stop.as_ref()).is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// The losses of one step, read back to the host.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLosses {
    /// The sum of the terms weighted by the fixed weights (with learned weights, the plain
    /// sum, comparable across steps and with the validation loss).
    pub total: f64,
    /// Each loss term, in the model's `loss_names` order.
    pub terms: Vec<f32>,
    /// The step's rows (over every rank: the global batch).
    pub rows: u64,
}

impl TrainState {
    /// Counts a step over `rows` rows with `losses`, in an epoch of `batches` batches.
    pub(crate) fn count_step(&mut self, rows: u64, losses: &StepLosses, batches: usize) {
        self.global_step += 1;
        self.batch_in_epoch += 1;
        if self.batch_in_epoch == batches {
            self.epoch += 1;
            self.batch_in_epoch = 0;
        }
        self.pending.0 += rows;
        self.pending.1 += losses.total * rows as f64;
        for (s, t) in self.pending.2.iter_mut().zip(&losses.terms) {
            *s += f64::from(*t) * rows as f64;
        }
    }
}
