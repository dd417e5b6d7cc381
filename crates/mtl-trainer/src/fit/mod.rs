//! The training loop, put together from its parts: batches from [`loader`], steps from
//! [`step`] (with [`weighting`]), the [`schedule`], evaluation and early stopping from
//! [`evaluation`] and [`early_stopping`], checkpoints from [`checkpoint`]. The state they
//! share — what a checkpoint saves so that `--resume` continues exactly — is [`state`]'s;
//! each part imports only parts before it in this order (no circle): `collective`, `weighting` ←
//! `state` ← `schedule`, `early_stopping`, `checkpoint`, `loader` ← `step` ← `evaluation` ← this
//! module. Over several ranks ([`collective`]) every rank runs this loop on its share of each
//! global batch; the step sums their gradients, so the ranks train one model.

use std::time::{Duration, Instant};

use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamConfig, AdamWConfig, ModuleOptimizer, decay::WeightDecayConfig};
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mtl_features::{EncodedData, TableLayout};
use mtl_layers::MultiTaskModel;

use crate::config::{OptimizerKind, TrainSettings};
use crate::error::record_err;
use crate::{TrainError, crash_point};

pub mod branches;
pub mod checkpoint;
pub mod collective;
pub mod early_stopping;
pub mod evaluation;
pub mod events;
pub mod loader;
pub mod schedule;
pub mod shards;
pub mod state;
pub mod step;
pub mod weighting;

use checkpoint::{AVERAGE_MODEL, SPARSE_MOMENTS, live_checkpoint_dir, write_checkpoint};
use collective::Group;
use evaluation::Evaluator;
use loader::{Feed, LoaderPlan, TrainRows, spawn};
use schedule::{Due, due};
use state::{FitOptions, StepLosses, TrainState};
use step::Stepper;

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
            .with_epsilon(settings.adam_epsilon as f32)
            .init(),
        OptimizerKind::AdamW => AdamWConfig::new()
            .with_weight_decay(settings.weight_decay as f32)
            .with_grad_clipping(clip)
            .with_epsilon(settings.adam_epsilon as f32)
            .init(),
    }
}

/// The progress bar of the current epoch, at the state's position in it.
fn progress_bar(
    options: &FitOptions,
    rows: usize,
    state: &TrainState,
    settings: &TrainSettings,
) -> ProgressBar {
    let (show, total, epoch, epochs) = (options.progress, rows as u64, state.epoch, settings.epochs);
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
    pb.set_position((state.batch_in_epoch * settings.batch_size).min(rows) as u64);
    pb
}

/// Progress lines for a stderr that is not a terminal (a log file, CI), where the bar is not
/// drawn: one every [`FitOptions::log_every`] (30 s unless set), from the bar's own counts.
struct LineLog {
    every: Duration,
    last: Instant,
}

impl LineLog {
    /// Lines when progress is on and stderr is not a terminal.
    fn new(options: &FitOptions) -> Option<Self> {
        use std::io::IsTerminal;
        (options.progress && !std::io::stderr().is_terminal()).then(|| Self {
            every: options.log_every.unwrap_or(Duration::from_secs(30)),
            last: Instant::now(),
        })
    }
}

/// Counts a step's rows and loss on the bar, and writes a progress line when one is due.
fn show_step(pb: &ProgressBar, lines: &mut Option<LineLog>, losses: &StepLosses) {
    pb.inc(losses.rows);
    pb.set_message(format!("loss {:.4}", losses.total));
    if let Some(log) = lines.as_mut().filter(|l| l.last.elapsed() >= l.every) {
        log.last = Instant::now();
        eprintln!("{}", progress_line(pb));
    }
}

/// `epoch 1/2: 40960/800000 rows (5 %), 41234 rows/s, eta 19s, loss 0.1234`: whole numbers.
fn progress_line(pb: &ProgressBar) -> String {
    let (pos, len) = (pb.position(), pb.length().unwrap_or(0));
    format!(
        "{}: {pos}/{len} rows ({} %), {} rows/s, eta {}s, {}",
        pb.prefix(),
        (pos * 100).checked_div(len).unwrap_or(0),
        pb.per_sec().round() as u64,
        pb.eta().as_secs(),
        pb.message()
    )
}

/// The model a fit hands back: the whole table in (its catch-up counted in `state`), and the
/// weight average's values when the run keeps one.
fn finished<M: MultiTaskModel>(stepper: &mut Stepper, model: M, state: &mut TrainState) -> M {
    let (model, averaged) = stepper.whole(model, true);
    count_table_traffic(stepper, state);
    averaged.unwrap_or(model)
}

/// One optimiser step on `batch`, counted in `state` (an epoch has `batches` batches) with the
/// optimisers' own counters and the time and bytes of `group`'s collectives.
fn take_step<M: MultiTaskModel>(
    stepper: &mut Stepper,
    group: &Group,
    model: M,
    batch: loader::Batch,
    next_rows: Option<&[i32]>,
    state: &mut TrainState,
    batches: usize,
) -> Result<(M, StepLosses), TrainError> {
    let (model, losses) = stepper.step(model, batch, state.global_step + 1, next_rows)?;
    if stepper.row_sparse() {
        state.sparse_time = stepper.sparse_time();
    }
    count_table_traffic(stepper, state);
    state.weighting = stepper.weighting_state();
    state.count_step(losses.rows, &losses, batches);
    let traffic = group.take_traffic();
    state.pending_comm.0 += traffic.secs;
    state.pending_comm.1 += traffic.reduced as f64;
    state.pending_comm.2 += traffic.gathered as f64;
    Ok((model, losses))
}

/// Adds what the host table did since the last count to `state`'s run-long counts.
fn count_table_traffic(stepper: &mut Stepper, state: &mut TrainState) {
    if let Some(t) = stepper.take_table_traffic() {
        state.table_traffic.add(t);
    }
}

/// Sets up the stepper of a fit from `state`: a resumed row-sparse run takes its table's
/// moments from the checkpoint (a run that was dense until now has none: `sparse_time` 0), and
/// a resumed run that keeps a weight average takes the average; zero moments or a fresh
/// average in their place would be silently wrong, so a missing average is an error.
fn stepper_for<M: MultiTaskModel>(
    model: M,
    optim: ModuleOptimizer,
    layout: &TableLayout,
    settings: &TrainSettings,
    device: &Device,
    options: &FitOptions,
    state: &TrainState,
) -> Result<(M, Stepper), TrainError> {
    let moments = live_checkpoint_dir(&options.out_dir).join(SPARSE_MOMENTS);
    let resume =
        (state.global_step > 0 && state.sparse_time > 0).then_some((moments.as_path(), state.sparse_time));
    let averaged = match state.global_step > 0 && settings.average_decay().is_some() {
        true => {
            let path = live_checkpoint_dir(&options.out_dir).join(AVERAGE_MODEL);
            if !path.exists() {
                return Err(TrainError::Record {
                    path: path.display().to_string(),
                    message: "missing: the checkpoint has no weight average (`ema_decay`)".into(),
                });
            }
            // into `valid()`, whose running statistics are its own: loading into a clone would
            // write the average into the live model's
            Some(model.valid().try_load_file(&path).map_err(record_err(&path))?)
        }
        false => None,
    };
    let (model, stepper) = Stepper::new(
        model,
        optim,
        settings,
        layout,
        device,
        resume,
        state.weighting.clone(),
        averaged.as_ref(),
    )?;
    let host = mtl_features::BackendKind::is_host_device(&device.clone().without_autodiff());
    let threads = rayon::current_num_threads() > 1 && host;
    let passes = branches::Branches::of(&model, host, options.draws_at_random);
    let beside = threads && mtl_layers::trainable_params(&model) >= step::OPTIMISERS_BESIDE_PARAMS;
    Ok((
        model,
        stepper
            .with_group(options.group.clone())
            .with_branches(passes)
            .with_optimisers_beside(beside),
    ))
}

/// Trains `model` (on an autodiff device) from `state` on `train` (rows in memory, or a
/// [`loader::StreamSpec`]), evaluating on `valid`.
#[allow(clippy::too_many_arguments)]
pub fn fit<'t, M: MultiTaskModel>(
    model: M,
    optim: ModuleOptimizer,
    train: impl Into<TrainRows<'t>>,
    valid: Option<&EncodedData>,
    layout: &TableLayout,
    settings: &TrainSettings,
    device: &Device,
    options: &FitOptions,
    mut state: TrainState,
) -> Result<FitOutcome<M>, TrainError> {
    let eval = Evaluator::new(&model, valid, layout, device, settings, options);
    if state.pending.2.is_empty() {
        state.pending.2 = vec![0.0; eval.loss_names.len()];
    }
    let (model, mut stepper) = stepper_for(model, optim, layout, settings, device, options, &state)?;
    // a resumed run may have nothing left: trained already, or at its step limit
    if state.trained || settings.max_steps.is_some_and(|m| state.global_step >= m) {
        let model = finished(&mut stepper, model, &mut state);
        return Ok(FitOutcome { model, state });
    }
    let share = (options.group.rank(), options.group.size());
    let train: TrainRows<'t> = train.into();
    let mut plan = LoaderPlan::from_state(settings, &state, stepper.row_sparse(), share, train.shards());
    plan.weight_label = options.weight_label;
    let batches = train.shards().batches(settings.batch_size);
    let model = std::thread::scope(|scope| -> Result<M, TrainError> {
        let mut feed = Feed::new(spawn(scope, train, layout, device, plan));
        let mut model = model;
        let mut clock = Instant::now();
        let (mut bar, mut lines): (Option<ProgressBar>, _) = (None, LineLog::new(options));
        loop {
            let data_clock = Instant::now();
            let Some(batch) = feed.take(stepper.pipelines()) else {
                // the loader ran out: nothing was left of the run
                return Ok(finished(&mut stepper, model, &mut state));
            };
            let batch = batch?;
            state.pending_data_secs += data_clock.elapsed().as_secs_f64();
            let pb = bar.get_or_insert_with(|| progress_bar(options, train.rows(), &state, settings));
            let step_clock = Instant::now();
            let (stepped, losses) = take_step(
                &mut stepper,
                &options.group,
                model,
                batch,
                feed.next_rows(),
                &mut state,
                batches,
            )?;
            stepper.timed(step_clock.elapsed().as_secs_f64());
            model = stepped;
            show_step(pb, &mut lines, &losses);
            let at_epoch_end = state.batch_in_epoch == 0;
            let now: Due = due(settings, state.global_step, at_epoch_end, state.epoch);
            let (eval_due, checkpoint, limit) = (now.eval, now.checkpoint, now.limit || options.stop_asked());
            // evaluation, checkpoints and the end read the model's whole table, and its weight
            // average when the run keeps one (built once for all three); a checkpoint alone
            // leaves the training state as it is
            let ends = state.epoch >= settings.epochs;
            let mut averaged = None;
            if eval_due || ends || checkpoint || limit {
                (model, averaged) = stepper.whole(model, eval_due || ends);
                count_table_traffic(&mut stepper, &mut state);
            }
            if eval_due {
                // the weight average, when kept, is the model evaluated (and kept as the best)
                let evaluated = averaged.as_ref().unwrap_or(&model);
                let report = stepper.weight_report();
                if pb.suspend(|| eval.run(evaluated, &mut state, &mut clock, report))? {
                    state.stopped_early = true;
                }
            }
            state.trained = state.stopped_early || state.epoch >= settings.epochs;
            crash_point("step");
            if checkpoint || limit || state.trained {
                state.pending_secs += clock.elapsed().as_secs_f64();
                clock = Instant::now();
                // the leader writes the checkpoint; the position in it is every rank's
                let (out, avg) = (&options.out_dir, averaged.as_ref());
                if options.group.is_leader() {
                    write_checkpoint(out, &model, avg, &state, |dir| stepper.save(dir))?;
                }
            }
            if state.trained || limit {
                pb.finish_and_clear();
                return Ok(averaged.unwrap_or(model));
            }
            model = stepper.without_table(model);
            if at_epoch_end {
                pb.finish_and_clear();
                bar = None;
            }
        }
    })?;
    Ok(FitOutcome { model, state })
}
