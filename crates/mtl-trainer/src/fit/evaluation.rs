//! Evaluation during training: one [`EvalRecord`] per
//! evaluation (training loss and throughput since the last one, validation loss and metrics),
//! and early stopping's bookkeeping with the best model kept as `best.bpk`.

use std::time::Instant;

use burn::tensor::Device;
use mtl_eval::metrics::evaluate;
use mtl_eval::predict_all;
use mtl_features::{EncodedData, TableLayout};
use mtl_layers::{MultiTaskModel, OutputSpec};

use crate::TrainError;
use crate::config::TrainSettings;
use crate::fit::checkpoint::save_atomic;
use crate::fit::early_stopping::{improves, monitored};
use crate::fit::state::{EvalRecord, FitOptions, TrainState};
use crate::fit::step::weighted;
use crate::fit::weighting::WeightReport;

/// What an evaluation during training needs besides the model and the state.
pub(crate) struct Evaluator<'a> {
    pub valid: Option<&'a EncodedData>,
    pub layout: &'a TableLayout,
    /// The plain (non-autodiff) device.
    pub device: Device,
    pub settings: &'a TrainSettings,
    pub options: &'a FitOptions,
    pub outputs: Vec<OutputSpec>,
    pub loss_names: Vec<String>,
}

impl Evaluator<'_> {
    /// Evaluates `model` (with the learned loss weights and GradNorm's gradient norms now, to
    /// record), appends the record to `state.history`, resets the running sums,
    /// and updates early stopping (saving `best.bpk` on an improvement). `clock` has run
    /// since the last evaluation; it is restarted. Returns whether training should stop.
    pub fn run<M: MultiTaskModel>(
        &self,
        model: &M,
        state: &mut TrainState,
        clock: &mut Instant,
        weights: WeightReport,
    ) -> Result<bool, TrainError> {
        let secs = state.pending_secs + clock.elapsed().as_secs_f64();
        let (rows, loss_sum, terms) = std::mem::take(&mut state.pending);
        let train_losses: Vec<(String, f64)> = self
            .loss_names
            .iter()
            .cloned()
            .zip(terms.iter().map(|t| t / rows.max(1) as f64))
            .collect();
        let (valid_loss, valid_metrics) = match self.valid {
            Some(v) => {
                let batch = self.settings.batch_size.max(4096);
                let (preds, losses) = predict_all(&model.valid(), v, self.layout, &self.device, batch, true)?;
                let loss = losses.map(|l| weighted(&l, &self.settings.loss_weights));
                (
                    loss,
                    evaluate(&self.outputs, &preds, v, &self.options.label_names),
                )
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
            comm_secs: state.pending_comm.0,
            reduced_bytes: state.pending_comm.1,
            gathered_bytes: std::mem::take(&mut state.pending_comm).2,
            loss_weights: weights.weights,
            grad_norms: weights.grad_norms,
        };
        tracing::info!(step = record.step, train_loss = record.train_loss, "evaluation");
        if self.options.progress {
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
        state.pending = (0, 0.0, vec![0.0; self.loss_names.len()]);
        state.pending_secs = 0.0;
        let stop = self.early_stopping(model, &record, state)?;
        state.history.push(record);
        *clock = Instant::now();
        Ok(stop)
    }

    /// Early stopping's update for `record`: whether to stop.
    fn early_stopping<M: MultiTaskModel>(
        &self,
        model: &M,
        record: &EvalRecord,
        state: &mut TrainState,
    ) -> Result<bool, TrainError> {
        let Some(es) = self.settings.early_stopping.active() else {
            return Ok(false);
        };
        let Some(value) = monitored(record, &es.metric) else {
            // the metric was checked against the outputs before training; it can still be
            // undefined here (an AUC on a validation set with one class)
            tracing::warn!(metric = %es.metric, "monitored metric not available at this evaluation");
            return Ok(false);
        };
        if improves(es, value, state.best.map(|b| b.0)) {
            state.best = Some((value, state.global_step));
            state.since_best = 0;
            // every rank evaluates the same model on the same rows; the leader keeps it
            if self.options.group.is_leader() {
                save_atomic(model, &self.options.out_dir.join("best.bpk"))?;
            }
            Ok(false)
        } else {
            state.since_best += 1;
            Ok(state.since_best >= es.patience)
        }
    }
}
