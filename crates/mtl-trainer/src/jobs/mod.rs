//! Whole jobs on model directories: train (fresh or resumed), evaluate, predict.
//!
//! A model directory holds `config.toml` (the run config, absolute paths), `schema.toml`,
//! `features.json` (fitted state), `model.bpk` (the best model under early stopping, else the
//! last), `metrics.json`, `curve.svg` and `checkpoint/` (last weights, optimiser, position).
//! Reading one for inference is [`mtl_eval::ModelDir`]'s; writing and locking one is
//! `model_dir.rs`'s. One file per job; every public item re-exported here (its one path).

use std::path::PathBuf;

use mtl_eval::TaskMetrics;
use mtl_eval::gates::GateReport;
use mtl_eval::metrics::metrics_block;
use serde::{Deserialize, Serialize};

use crate::fit::collective::Group;
use crate::fit::state::{EvalRecord, TableCounts};

mod curve;
mod eval;
mod memory;
mod model_dir;
mod predict;
mod train;

pub use eval::{Counting, eval_file, eval_file_grouped, eval_input};
pub use model_dir::{RunLock, open_for_inference};
pub use predict::{INPUT_LINE_COLUMN, Predictions, predict_file, predict_input};
pub use train::train;

/// Options of a training job.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Show progress bars and per-evaluation lines on stderr.
    pub progress: bool,
    /// With progress on and stderr not a terminal (a log file, CI): a progress line this
    /// often instead of the bar (every 30 s when `None`).
    pub log_every: Option<std::time::Duration>,
    /// On resume: train to this many epochs in all (more than a finished run had extends it).
    pub epochs: Option<usize>,
    /// On resume: stop after this many steps in total, leaving a checkpoint. A limit applies
    /// to one invocation only and is never saved with the run.
    pub max_steps: Option<usize>,
    /// The ranks training the model (one process by default): each trains on its share of
    /// every batch, rank 0 writes the directory.
    pub group: Group,
    /// Set from outside (Ctrl-C in Python): the run stops after the step under way with a
    /// checkpoint, unfinished, to be continued with `--resume` (one process only).
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// TensorBoard event files go to this folder (whatever `[train] tensorboard` says).
    pub tensorboard: Option<std::path::PathBuf>,
}

impl TrainOptions {
    /// Logs `line` and, with progress on, prints it on stderr: a run's choices and what it
    /// read, for the log and the person watching alike.
    pub(crate) fn announce(&self, line: &str) {
        tracing::info!("{line}");
        if self.progress {
            eprintln!("{line}");
        }
    }
}

/// What a training job produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Model type.
    pub model: String,
    /// The model directory.
    pub out_dir: PathBuf,
    /// Backend trained on.
    pub backend: String,
    /// Rows in the training file.
    pub train_rows: usize,
    /// Steps taken in total.
    pub steps: usize,
    /// Whether all epochs ran (or early stopping ended the run).
    pub finished: bool,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Mean training throughput over all evaluations (samples/s).
    pub samples_per_sec: f64,
    /// Validation metrics at the last evaluation.
    pub valid: Vec<TaskMetrics>,
    /// Test metrics of the saved model, if a test file was given (calibrated, with
    /// `train.calibration`).
    pub test: Vec<TaskMetrics>,
    /// With `train.calibration`: the test metrics before calibration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_uncalibrated: Option<Vec<TaskMetrics>>,
    /// Every evaluation.
    pub history: Vec<EvalRecord>,
    /// Data read reports (rows, skipped rows).
    pub reads: Vec<String>,
    /// Inference throughput of the final model on the encoded test rows (samples/s: batches of
    /// 4096 built from memory, forward, predictions copied out; median of three passes after
    /// a warm-up for test sets up to a million rows).
    pub inference_samples_per_sec: Option<f64>,
    /// Peak resident memory of this process so far (MB; Linux only).
    pub peak_rss_mb: Option<f64>,
    /// Fraction of training time spent building batches.
    pub data_wait_fraction: f64,
    /// Gate utilisation of the final model on the validation set (mixtures and AITM).
    #[serde(default)]
    pub gates: Vec<GateReport>,
    /// Experts under 1 % of every gate's weight on the validation set.
    #[serde(default)]
    pub dead_experts: Vec<String>,
    /// Over several ranks: each rank's peak resident memory at the end of training (MB).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peak_rss_mb_per_rank: Vec<f64>,
    /// Over several ranks: the fraction of rank 0's training time spent in collectives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm_fraction: Option<f64>,
    /// With the row-sparse host table: what its steps did, per step (rank 0's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_table: Option<TableReport>,
}

/// The row-sparse host table's work per step over a run: rows updated and rows brought up to
/// date (what a step's time beside the dense passes is made of).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TableReport {
    /// Rows a step updated (the batch's distinct rows), on average.
    pub rows_updated_per_step: f64,
    /// Rows brought up to date per step: the batch's rows that had missed steps.
    pub rows_caught_up_per_step: f64,
    /// The steps such a row had missed, on average.
    pub missed_steps_per_row: f64,
    /// Rows brought up to date, apart from those, where the whole table was read (evaluations,
    /// the end), over the run. The rows a pipelined step brought up to date ahead of such a
    /// read are counted per step instead, so `rows_caught_up_per_step × steps` plus this is
    /// what does not depend on pipelining.
    pub rows_caught_up_whole: u64,
}

impl TableReport {
    /// The report of a run's counts (`None` before its first row-wise step).
    pub fn of(c: &TableCounts) -> Option<Self> {
        (c.steps > 0).then(|| Self {
            rows_updated_per_step: c.rows_updated as f64 / c.steps as f64,
            rows_caught_up_per_step: c.rows_caught_up as f64 / c.steps as f64,
            missed_steps_per_row: c.missed_steps as f64 / c.rows_caught_up.max(1) as f64,
            rows_caught_up_whole: c.rows_caught_up_whole,
        })
    }
}

/// Peak resident set size of this process in MB (`VmHWM`), where the OS reports it.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

impl std::fmt::Display for TrainSummary {
    /// What `mtl train` prints when a job ends: what was read, the run in one line, the
    /// validation and test metrics, the gate report, batch-building share, inference speed,
    /// peak memory and where the artifacts are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.reads {
            writeln!(f, "read {r}")?;
        }
        let ending = if self.stopped_early {
            ", stopped early"
        } else if !self.finished {
            ", interrupted: continue with --resume"
        } else {
            ""
        };
        writeln!(
            f,
            "{}: {} steps on {} ({} training rows, {:.0} samples/s){ending}",
            self.model, self.steps, self.backend, self.train_rows, self.samples_per_sec
        )?;
        f.write_str(&metrics_block("validation (last evaluation):", &self.valid))?;
        match &self.test_uncalibrated {
            Some(before) => {
                f.write_str(&metrics_block("test (saved model, before calibration):", before))?;
                f.write_str(&metrics_block(
                    "test (saved model, calibrated on the validation set):",
                    &self.test,
                ))?;
            }
            None => f.write_str(&metrics_block("test (saved model):", &self.test))?,
        }
        if !self.gates.is_empty() {
            writeln!(
                f,
                "gate utilisation (saved model, validation rows: mean weight per expert):"
            )?;
            for g in &self.gates {
                writeln!(f, "  {}", g.summary())?;
            }
        }
        if !self.dead_experts.is_empty() {
            writeln!(
                f,
                "warning: {} get under 1 % of every gate's weight (dead experts: fewer would do)",
                self.dead_experts.join(", ")
            )?;
        }
        writeln!(
            f,
            "time spent building batches: {:.1} % of training",
            100.0 * self.data_wait_fraction
        )?;
        if let Some(t) = self.embedding_table {
            write!(
                f,
                "embedding table per step: {:.0} rows updated",
                t.rows_updated_per_step
            )?;
            match t.rows_caught_up_per_step > 0.0 {
                true => writeln!(
                    f,
                    ", {:.0} brought up to date ({:.1} missed steps each)",
                    t.rows_caught_up_per_step, t.missed_steps_per_row
                )?,
                false => writeln!(f)?,
            }
        }
        if let Some(i) = self.inference_samples_per_sec {
            writeln!(f, "inference on the test file: {i:.0} samples/s")?;
        }
        if let Some(rss) = self.peak_rss_mb {
            writeln!(f, "peak RSS: {rss:.0} MB")?;
        }
        if let Some(comm) = self.comm_fraction {
            let ranks: Vec<String> = self
                .peak_rss_mb_per_rank
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect();
            writeln!(
                f,
                "{} ranks: {:.1} % of rank 0's training time in collectives; peak RSS by rank: {} MB",
                ranks.len(),
                100.0 * comm,
                ranks.join(", ")
            )?;
        }
        writeln!(f, "artifacts: {}", self.out_dir.display())
    }
}
