//! Evaluation during training: one [`EvalRecord`] per
//! evaluation (training loss and throughput since the last one, validation loss and metrics),
//! and early stopping's bookkeeping with the best model kept as `best.bpk`. Over several ranks
//! each predicts its share of the validation batches and the metrics are computed, alike on
//! every rank, over all of them.

use std::time::Instant;

use burn::tensor::Device;
use mtl_eval::metrics::evaluate_weighted;
use mtl_eval::{Losses, Predictions, predict_rows};
use mtl_features::{EncodedData, TableLayout};
use mtl_layers::{MultiTaskModel, OutputSpec};

use crate::TrainError;
use crate::config::TrainSettings;
use crate::error::io_err;
use crate::fit::checkpoint::save_atomic;
use crate::fit::early_stopping::{improves, monitored};
use crate::fit::events::evaluation_scalars;
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

impl<'a> Evaluator<'a> {
    /// The evaluations of a fit of `model` on `valid` (rows laid out by `layout`; `device` the
    /// autodiff training device, whose plain device the evaluations run on).
    pub fn new<M: MultiTaskModel>(
        model: &M,
        valid: Option<&'a EncodedData>,
        layout: &'a TableLayout,
        device: &Device,
        settings: &'a TrainSettings,
        options: &'a FitOptions,
    ) -> Self {
        Self {
            valid,
            layout,
            device: device.clone().without_autodiff(),
            settings,
            options,
            outputs: model.outputs(),
            loss_names: model.loss_names(),
        }
    }

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
                let (preds, losses) = self.predict(model, v)?;
                let loss = losses.map(|l| weighted(&l, &self.settings.loss_weights));
                (
                    loss,
                    evaluate_weighted(
                        &self.outputs,
                        &preds,
                        v,
                        &self.options.label_names,
                        self.options.valid_groups.as_deref(),
                        self.options.weight(),
                    ),
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
        if let Some(events) = &self.options.tensorboard {
            let mut file = events.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let scalars = evaluation_scalars(&record, self.settings.lr);
            file.scalars(record.step as u64, &scalars)
                .map_err(|e| io_err(file.path())(e))?;
        }
        state.history.push(record);
        *clock = Instant::now();
        Ok(stop)
    }

    /// Every output's predictions for every row of `valid`, and the mean loss terms. Over
    /// several ranks each predicts its share of the batches — the batches one process
    /// predicts, so the predictions are bit for bit its own — and the shares are gathered in
    /// rank order (every rank then holds all of them), the loss terms summed by rows.
    fn predict<M: MultiTaskModel>(&self, model: &M, valid: &EncodedData) -> Result<Predictions, TrainError> {
        let batch = self.settings.batch_size.max(4096);
        let group = &self.options.group;
        let batches = group.share(valid.rows.div_ceil(batch));
        let rows = (batches.start * batch).min(valid.rows)..(batches.end * batch).min(valid.rows);
        let model = model.valid();
        let weight = self.options.weight_label;
        let mode = weight.map_or(Losses::Mean, Losses::Weighted);
        // the rows' share of the loss: their number, or their total sample weight
        let mass = |rows: std::ops::Range<usize>| match weight {
            Some(l) => rows
                .map(|r| f64::from(valid.labels[r * valid.n_labels + l]))
                .sum(),
            None => rows.len() as f64,
        };
        let (local, all) = (mass(rows.clone()), mass(0..valid.rows));
        let (preds, losses) = predict_rows(&model, valid, rows, self.layout, &self.device, batch, mode)?;
        if !group.is_distributed() {
            return Ok((preds, losses));
        }
        let mut sums: Vec<f64> = losses.unwrap_or_default();
        sums.resize(self.loss_names.len(), 0.0);
        sums.iter_mut().for_each(|l| *l *= local);
        group.sum_f64(&mut sums);
        let all = if all > 0.0 { all } else { 1.0 };
        let losses = sums.iter().map(|l| l / all).collect();
        let preds = preds.iter().map(|p| group.gather_f32(p).concat()).collect();
        // the traffic counted is training's: an evaluation's is left out, as its time is
        let _ = group.take_traffic();
        Ok((preds, Some(losses)))
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
