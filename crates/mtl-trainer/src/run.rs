//! Whole jobs on model directories: train (fresh or resumed), evaluate, predict.
//!
//! A model directory holds `config.toml` (the run config, absolute paths), `schema.toml`,
//! `features.json` (fitted state), `model.bpk` (the best model under early stopping, else the
//! last), `metrics.json`, `curve.svg` and `checkpoint/` (last weights, optimiser, position).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use mtl_data::{BadRowPolicy, ReadReport, fit_state, read_encoded, read_tagged};
use mtl_features::{
    BackendKind, EncodedData, Encoder, FeatureState, Schema, ValidSchema, atomic_write, atomic_write_with,
};
use mtl_layers::MultiTaskModel;
use serde::{Deserialize, Serialize};

use crate::calibration::{Calibration, CalibrationMethod};
use crate::config::{DataFiles, RunConfig};
use crate::fit::{
    FitOptions, TrainState, checkpoint_dir, fit, optimizer, predict_all, read_checkpoint, save_atomic,
};
use crate::metrics::{TaskMetrics, evaluate};
use crate::registry::{Registry, WithModel};
use crate::{TrainError, crash_point, io_err, record_err};

/// Options of a training job.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Show progress bars and per-evaluation lines on stderr.
    pub progress: bool,
    /// On resume: train to this many epochs in all (more than a finished run had extends it).
    pub epochs: Option<usize>,
    /// On resume: stop after this many steps in total, leaving a checkpoint. A limit applies
    /// to one invocation only and is never saved with the run.
    pub max_steps: Option<usize>,
}

impl TrainOptions {
    /// Logs `line` and, with progress on, prints it on stderr: a run's choices and what it
    /// read, for the log and the person watching alike.
    fn announce(&self, line: &str) {
        tracing::info!("{line}");
        if self.progress {
            eprintln!("{line}");
        }
    }
}

/// Holds `DIR/.lock` while a process trains in `DIR`, so that a second `mtl train` on the
/// same directory stops with an error instead of mixing two runs' files. The OS releases
/// the lock when the process ends, however it ends.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock of `dir` (which must exist), or says that another process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(TrainError::Busy {
                dir: dir.display().to_string(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
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
    pub history: Vec<crate::fit::EvalRecord>,
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
    pub gates: Vec<crate::gates::GateReport>,
    /// Experts under 1 % of every gate's weight on the validation set.
    #[serde(default)]
    pub dead_experts: Vec<String>,
}

/// Peak resident set size of this process in MB (`VmHWM`), where the OS reports it.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The device of backend `name` (`flex`, `ndarray`, `wgpu`, `cuda`), probed; a backend missing
/// from the build or unusable here is an error naming it.
pub fn backend_device(name: &str) -> Result<Device, TrainError> {
    let kind: BackendKind = name.parse()?;
    Ok(kind.probe()?)
}

fn read(
    path: &Path,
    encoder: &Encoder,
    policy: BadRowPolicy,
    cache: bool,
    reads: &mut Vec<String>,
) -> Result<EncodedData, TrainError> {
    let started = Instant::now();
    let (data, report, cached) = if cache {
        mtl_data::cache::read_encoded_cached(path, encoder, policy, true)?
    } else {
        let (d, r, _) = read_encoded(path, encoder, policy, true, None)?;
        (d, r, false)
    };
    let secs = started.elapsed().as_secs_f64();
    let line = format!(
        "{report} in {secs:.2} s ({:.0} rows/s{})",
        data.rows as f64 / secs.max(1e-9),
        if cached { ", from the encoded cache" } else { "" }
    );
    tracing::info!(%line, "read");
    reads.push(line);
    Ok(data)
}

/// Trains from a config into `out_dir` (created), or continues the run in `out_dir` when
/// `resume` is set (the config is then read from the directory; `options.epochs` beyond a
/// finished run's epochs trains it further).
///
/// Every setting is checked against the schema and the model before any data is read. The
/// directory is locked while training. A run is marked finished only after its model and
/// metrics are written, so a kill at any moment leaves a run that `resume` continues (or
/// completes) or a finished one with its model.
pub fn train<R: Registry>(
    config: Option<&RunConfig<R>>,
    out_dir: &Path,
    resume: bool,
    options: &TrainOptions,
) -> Result<TrainSummary, TrainError> {
    let (config, schema, plan, state, start, _lock) = if resume {
        if !out_dir.is_dir() {
            return Err(TrainError::NotAModelDir {
                dir: out_dir.display().to_string(),
                missing: "the directory itself".into(),
            });
        }
        let lock = RunLock::acquire(out_dir)?;
        let mut config = load_dir_config::<R>(out_dir)?;
        let schema = Schema::from_file(out_dir.join("schema.toml"))?;
        let features = FeatureState::load(out_dir.join("features.json"), &schema)?;
        // a run killed before its first checkpoint starts over: its directory has all it needs
        let mut start = match read_checkpoint(out_dir) {
            Ok(checkpoint) => Some(checkpoint),
            Err(TrainError::NoCheckpoint { .. }) => None,
            Err(e) => return Err(e),
        };
        let saved_epochs = config.train.epochs;
        let done = start.as_ref().map_or(0, |(state, _, _)| state.epoch);
        if let Some(epochs) = options.epochs {
            if epochs < done {
                return Err(TrainError::Config {
                    file: out_dir.display().to_string(),
                    message: format!("--epochs {epochs}: the run has already trained {done} epochs"),
                });
            }
            config.train.epochs = epochs;
        }
        config.train.max_steps = options.max_steps;
        // a run saved before early stopping became the default trained without it
        config.train.early_stopping = config.train.early_stopping.resolve(false);
        config.train.resolve_untouched_rows(false);
        config.train.resolve_ema_decay(false);
        config.train.resolve_embedding_weight_decay(false);
        config.check(&out_dir.join("config.toml").display().to_string())?;
        if let Some((state, _, _)) = start.as_mut() {
            let extend = options.epochs.is_some() && config.train.epochs > state.epoch;
            if state.finished && !extend {
                return Err(TrainError::Config {
                    file: out_dir.display().to_string(),
                    message: format!(
                        "this run already finished after {} epochs{}; `--resume {} --epochs N` with N > {} trains it further",
                        state.epoch,
                        if state.stopped_early {
                            " (stopped early)"
                        } else {
                            ""
                        },
                        out_dir.display(),
                        state.epoch
                    ),
                });
            }
            if extend {
                // more epochs: early stopping starts counting afresh
                state.finished = false;
                state.trained = false;
                state.stopped_early = false;
                state.since_best = 0;
            }
        }
        if config.train.epochs != saved_epochs {
            save_dir_config(out_dir, &config)?;
        }
        let plan = R::plan(&config.model, &schema)?;
        config.check_plan(&plan, "config")?;
        (config, schema, plan, features, start, lock)
    } else {
        let config = config.ok_or_else(|| TrainError::Config {
            file: "<none>".into(),
            message: "a config is required unless resuming".into(),
        })?;
        let mut config = config.clone();
        config.resolve_paths(Path::new(""));
        // saved resolved, so a resumed run keeps the choice made here
        config.train.early_stopping = config.train.early_stopping.resolve(config.data.valid.is_some());
        config.train.resolve_untouched_rows(true);
        config.train.resolve_ema_decay(true);
        config.train.resolve_embedding_weight_decay(true);
        options.announce(&config.train.early_stopping.describe());
        let (schema, plan, schema_text) = config.check_model("config")?;
        // a schema without id fields has no table to decay
        if let Some(line) = config
            .train
            .describe_embedding_decay()
            .filter(|_| !schema.dims.is_empty())
        {
            options.announce(&line);
        }
        std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
        let lock = RunLock::acquire(out_dir)?;
        if out_dir.join("checkpoint").exists() || out_dir.join("checkpoint.old").exists() {
            return Err(TrainError::Config {
                file: out_dir.display().to_string(),
                message: "already holds a training run; use --resume to continue it or choose another --out"
                    .into(),
            });
        }
        if options.progress {
            eprintln!("fitting features on {}", config.data.train.shown());
        }
        let features = fit_state(
            &config.data.train.files("data.train")?,
            &schema,
            config.data.policy()?,
        )?;
        atomic_write(&out_dir.join("schema.toml"), schema_text.as_bytes())?;
        features.save(out_dir.join("features.json"))?;
        save_dir_config(out_dir, &config)?;
        (config, schema, plan, features, None, lock)
    };
    let encoder = Encoder::new(&schema, &state).with_label_rules(plan.label_rules);
    let floats = encoder.layout().total_rows.saturating_mul(schema.table_width());
    if floats > mtl_features::schema::MAX_TABLE_FLOATS {
        return Err(TrainError::Config {
            file: out_dir.join("schema.toml").display().to_string(),
            message: format!(
                "the embedding table would hold {} rows × width {} = {floats} floats ({:.1} GiB), \
                 more than {} (16 GiB): lower vocab_size / hash_buckets or embed_dim",
                encoder.layout().total_rows,
                schema.table_width(),
                floats as f64 * 4.0 / f64::from(1u32 << 30),
                mtl_features::schema::MAX_TABLE_FLOATS
            ),
        });
    }
    let policy = config.data.policy()?;
    let mut reads = Vec::new();
    let mut read_all = |files: &DataFiles, key: &str| -> Result<EncodedData, TrainError> {
        let mut all: Option<EncodedData> = None;
        for path in files.files(key)? {
            let data = read(&path, &encoder, policy, config.data.cache, &mut reads)?;
            match &mut all {
                Some(all) => all.append(&data),
                None => all = Some(data),
            }
        }
        Ok(all.expect("a file list is never empty"))
    };
    // streaming: the rows are counted now and read each epoch; otherwise held encoded
    let mut stream_note = None;
    let (train_data, stream) = if config.data.streaming {
        let files = config.data.train.files("data.train")?;
        let started = std::time::Instant::now();
        let rows = crate::loader::count_rows(&files, &encoder, policy)?;
        let message = format!(
            "streaming {} training file(s): {rows} rows (counted in {:.1} s), shuffled in blocks of {} rows",
            files.len(),
            started.elapsed().as_secs_f64(),
            config.data.shuffle_buffer
        );
        options.announce(&message);
        stream_note = Some(message);
        if rows == 0 {
            return Err(TrainError::Data(mtl_data::DataError::Empty {
                file: config.data.train.shown(),
            }));
        }
        let spec = crate::loader::StreamSpec {
            files,
            encoder: encoder.clone(),
            policy,
            rows,
            buffer_rows: config.data.shuffle_buffer,
        };
        (None, Some(spec))
    } else {
        (Some(read_all(&config.data.train, "data.train")?), None)
    };
    let train_rows = match (&train_data, &stream) {
        (Some(data), _) => crate::loader::TrainRows::Memory(data),
        (None, Some(spec)) => crate::loader::TrainRows::Stream(spec),
        (None, None) => unreachable!("one of the two is built above"),
    };
    let valid = config
        .data
        .valid
        .as_ref()
        .map(|f| read_all(f, "data.valid"))
        .transpose()?;
    let test = config
        .data
        .test
        .as_ref()
        .map(|f| read_all(f, "data.test"))
        .transpose()?;
    if let Some(note) = stream_note {
        reads.insert(0, note);
    }
    let device = backend_device(&config.train.backend)?;
    device.seed(config.train.seed);
    let ad = device.clone().autodiff();
    R::with_model(
        &config.model,
        &schema,
        encoder.layout(),
        &ad,
        TrainJob {
            config: &config,
            schema: &schema,
            encoder: &encoder,
            train: train_rows,
            valid: valid.as_ref(),
            test: test.as_ref(),
            device: &ad,
            out_dir,
            start,
            options,
            reads,
        },
    )
}

/// Writes the run's `config.toml`: the schema as the copy beside it, data paths absolute,
/// and no `max_steps` (a limit belongs to one invocation), so that `--resume` works from
/// any directory and `mtl train --config DIR/config.toml` runs the same job again.
fn save_dir_config<R: Registry>(out_dir: &Path, config: &RunConfig<R>) -> Result<(), TrainError> {
    let mut saved = config.clone();
    saved.schema = PathBuf::from("schema.toml");
    saved.train.max_steps = None;
    let text = toml::to_string_pretty(&saved).map_err(|e| TrainError::Config {
        file: "config".into(),
        message: e.to_string(),
    })?;
    atomic_write(&out_dir.join("config.toml"), text.as_bytes())?;
    Ok(())
}

struct TrainJob<'a, R: Registry> {
    config: &'a RunConfig<R>,
    schema: &'a ValidSchema,
    encoder: &'a Encoder,
    train: crate::loader::TrainRows<'a>,
    valid: Option<&'a EncodedData>,
    test: Option<&'a EncodedData>,
    device: &'a Device,
    out_dir: &'a Path,
    /// On resume: the checkpoint's state and its model and optimiser files.
    start: Option<(TrainState, PathBuf, PathBuf)>,
    options: &'a TrainOptions,
    reads: Vec<String>,
}

impl<R: Registry> WithModel for TrainJob<'_, R> {
    type Out = TrainSummary;

    fn run<M: MultiTaskModel + 'static>(self, model: M) -> Result<TrainSummary, TrainError> {
        let settings = &self.config.train;
        let mut optim = optimizer(settings);
        let (model, state) = match self.start {
            Some((state, model_path, optim_path)) => {
                let model = model
                    .try_load_file(&model_path)
                    .map_err(record_err(&model_path))?;
                optim = optim.load(&optim_path).map_err(record_err(&optim_path))?;
                (model, state)
            }
            // a new run of a model that starts at its labels' base rates reads them first
            None if settings.label_priors && M::USES_LABEL_PRIORS => {
                let means = crate::loader::label_means(self.train)?;
                let shown: Vec<String> = self
                    .schema
                    .label_names()
                    .iter()
                    .zip(&means)
                    .map(|(name, m)| format!("{name} {m:.4}"))
                    .collect();
                let message = format!(
                    "outputs start at the training labels' means (label_priors): {}",
                    shown.join(", ")
                );
                self.options.announce(&message);
                (model.with_label_priors(&means), TrainState::default())
            }
            None => (model, TrainState::default()),
        };
        let options = FitOptions {
            out_dir: self.out_dir.to_path_buf(),
            progress: self.options.progress,
            label_names: self.schema.label_names(),
        };
        let outcome = fit(
            model,
            optim,
            self.train,
            self.valid,
            self.encoder.layout(),
            settings,
            self.device,
            &options,
            state,
        )?;
        let mut state = outcome.state;
        crash_point("trained");
        let best = self.out_dir.join("best.bpk");
        let final_model = if settings.early_stopping.active().is_some() && best.exists() {
            outcome
                .model
                .valid()
                .try_load_file(&best)
                .map_err(record_err(&best))?
        } else {
            outcome.model.valid()
        };
        if state.trained {
            save_atomic(&final_model, &self.out_dir.join("model.bpk"))?;
            crash_point("model-saved");
        }
        let plain = self.device.clone().without_autodiff();
        let calibration = match self.valid {
            Some(v) if state.trained && settings.calibration != CalibrationMethod::None => {
                let (preds, _) = predict_all(&final_model, v, self.encoder.layout(), &plain, 4096, false)?;
                let fitted = Calibration::fit(settings.calibration, &final_model.outputs(), &preds, v);
                if let Some(c) = &fitted {
                    c.save(self.out_dir)?;
                }
                fitted
            }
            _ => None,
        };
        let mut inference = None;
        let mut test_uncalibrated = None;
        let test = match self.test {
            Some(t) if state.trained => {
                let layout = self.encoder.layout();
                let started = Instant::now();
                let (preds, _) = predict_all(&final_model, t, layout, &plain, 4096, false)?;
                let mut secs = started.elapsed().as_secs_f64();
                // as torch-rechub's bench times it: the median of three passes after a warm-up
                // (the evaluated pass), unless the test set is large enough to time in one
                if t.rows <= INFERENCE_TIMING_ROWS {
                    let mut times = Vec::with_capacity(3);
                    for _ in 0..3 {
                        let started = Instant::now();
                        predict_all(&final_model, t, layout, &plain, 4096, false)?;
                        times.push(started.elapsed().as_secs_f64());
                    }
                    times.sort_by(f64::total_cmp);
                    secs = times[1];
                }
                inference = Some(t.rows as f64 / secs.max(1e-9));
                let specs = final_model.outputs();
                let labels = self.schema.label_names();
                match &calibration {
                    Some(c) => {
                        test_uncalibrated = Some(evaluate(&specs, &preds, t, &labels));
                        let mut preds = preds;
                        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
                        c.apply(&names, &mut preds);
                        evaluate(&specs, &preds, t, &labels)
                    }
                    None => evaluate(&specs, &preds, t, &labels),
                }
            }
            _ => Vec::new(),
        };
        // evaluations so far, plus the steps since the last one (an interrupted run has no
        // evaluation at all)
        let total_rows: f64 =
            state.history.iter().map(|e| e.train_rows as f64).sum::<f64>() + state.pending.0 as f64;
        let total_secs: f64 = state.history.iter().map(|e| e.train_secs).sum::<f64>() + state.pending_secs;
        let data_secs: f64 = state.history.iter().map(|e| e.data_secs).sum::<f64>() + state.pending_data_secs;
        let gates = match self.valid {
            Some(v) if state.trained => {
                crate::gates::gate_report(&final_model, v, self.encoder.layout(), &plain)?
            }
            _ => Vec::new(),
        };
        let dead_experts = crate::gates::dead_experts(&gates);
        if !dead_experts.is_empty() {
            tracing::warn!(?dead_experts, "experts under 1 % of every gate's weight");
        }
        // the run is finished once its model and metrics are on disk: marked last
        state.finished = state.trained;
        let summary = TrainSummary {
            model: R::kind(&self.config.model).to_string(),
            out_dir: self.out_dir.to_path_buf(),
            backend: settings.backend.clone(),
            train_rows: self.train.rows(),
            steps: state.global_step,
            finished: state.finished,
            stopped_early: state.stopped_early,
            samples_per_sec: if total_secs > 0.0 {
                total_rows / total_secs
            } else {
                0.0
            },
            valid: state.history.last().map(|h| h.valid.clone()).unwrap_or_default(),
            test,
            test_uncalibrated,
            history: state.history.clone(),
            reads: self.reads,
            inference_samples_per_sec: inference,
            peak_rss_mb: peak_rss_mb(),
            data_wait_fraction: data_secs / total_secs.max(1e-9),
            gates,
            dead_experts,
        };
        let json = serde_json::to_vec_pretty(&summary).expect("summary serialises");
        atomic_write(&self.out_dir.join("metrics.json"), &json)?;
        atomic_write(
            &self.out_dir.join("curve.svg"),
            crate::curve::render_svg(&state.history).as_bytes(),
        )?;
        // the reliability diagram of the saved model: on the test set, else the validation set
        let (shown, on) = match (summary.test.is_empty(), summary.valid.is_empty()) {
            (false, _) => (&summary.test, "(test)"),
            (true, false) => (&summary.valid, "(validation)"),
            (true, true) => (&summary.test, ""),
        };
        if !shown.is_empty() {
            atomic_write(
                &self.out_dir.join("reliability.svg"),
                crate::curve::render_reliability(shown, on).as_bytes(),
            )?;
        }
        if state.finished {
            crash_point("metrics-written");
            mark_finished(self.out_dir, &state)?;
        }
        Ok(summary)
    }
}

fn load_dir_config<R: Registry>(dir: &Path) -> Result<RunConfig<R>, TrainError> {
    let path = dir.join("config.toml");
    if !dir.is_dir() {
        return Err(TrainError::NotAModelDir {
            dir: dir.display().to_string(),
            missing: "the directory itself".into(),
        });
    }
    if !path.is_file() {
        return Err(TrainError::NotAModelDir {
            dir: dir.display().to_string(),
            missing: "config.toml".into(),
        });
    }
    RunConfig::from_file(&path)
}

/// Records in the checkpoint that the run is finished (after its model and metrics).
fn mark_finished(out_dir: &Path, state: &TrainState) -> Result<(), TrainError> {
    let json = serde_json::to_vec_pretty(state).expect("state serialises");
    atomic_write(&checkpoint_dir(out_dir).join("state.json"), &json)?;
    Ok(())
}

/// Test sets up to this many rows are predicted three more times to time inference.
const INFERENCE_TIMING_ROWS: usize = 1_000_000;

/// A trained model directory, loaded for inference.
pub struct ModelDir<R: Registry> {
    /// The directory.
    pub dir: PathBuf,
    /// Its run config.
    pub config: RunConfig<R>,
    /// Its schema.
    pub schema: ValidSchema,
    /// Its encoder (fitted state).
    pub encoder: Encoder,
    /// Its post-hoc calibration (`calibration.json`), applied to every prediction.
    pub calibration: Option<Calibration>,
}

impl<R: Registry> ModelDir<R> {
    /// Opens a model directory; errors name what is missing.
    pub fn open(dir: &Path) -> Result<Self, TrainError> {
        if !dir.is_dir() {
            return Err(TrainError::NotAModelDir {
                dir: dir.display().to_string(),
                missing: "the directory itself".into(),
            });
        }
        for file in ["config.toml", "schema.toml", "features.json", "model.bpk"] {
            if !dir.join(file).exists() {
                return Err(TrainError::NotAModelDir {
                    dir: dir.display().to_string(),
                    missing: file.to_string(),
                });
            }
        }
        let config = load_dir_config(dir)?;
        let schema = Schema::from_file(dir.join("schema.toml"))?;
        let state = FeatureState::load(dir.join("features.json"), &schema)?;
        let encoder = Encoder::new(&schema, &state);
        let calibration = Calibration::load(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            schema,
            encoder,
            calibration,
        })
    }

    /// Predictions for every row of `data` on `backend`: one column per output.
    pub fn predict(
        &self,
        data: &EncodedData,
        backend: &str,
        batch_size: usize,
    ) -> Result<(Vec<String>, Vec<Vec<f32>>), TrainError> {
        let (specs, preds) = self.predict_outputs(data, backend, batch_size)?;
        Ok((specs.into_iter().map(|o| o.name).collect(), preds))
    }

    /// Predictions with the specs of the outputs they belong to.
    fn predict_outputs(
        &self,
        data: &EncodedData,
        backend: &str,
        batch_size: usize,
    ) -> Result<(Vec<mtl_layers::OutputSpec>, Vec<Vec<f32>>), TrainError> {
        struct Predict<'a> {
            dir: &'a Path,
            data: &'a EncodedData,
            encoder: &'a Encoder,
            device: Device,
            batch_size: usize,
        }
        impl WithModel for Predict<'_> {
            type Out = (Vec<mtl_layers::OutputSpec>, Vec<Vec<f32>>);
            fn run<M: MultiTaskModel + 'static>(self, model: M) -> Result<Self::Out, TrainError> {
                let path = self.dir.join("model.bpk");
                let model = model.try_load_file(&path).map_err(record_err(&path))?;
                let specs = model.outputs();
                let (preds, _) = predict_all(
                    &model,
                    self.data,
                    self.encoder.layout(),
                    &self.device,
                    self.batch_size,
                    false,
                )?;
                Ok((specs, preds))
            }
        }
        let device = backend_device(backend)?;
        let (specs, mut preds) = R::with_model(
            &self.config.model,
            &self.schema,
            self.encoder.layout(),
            &device,
            Predict {
                dir: &self.dir,
                data,
                encoder: &self.encoder,
                device: device.clone(),
                batch_size,
            },
        )?;
        if let Some(c) = &self.calibration {
            let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
            c.apply(&names, &mut preds);
        }
        Ok((specs, preds))
    }

    /// Per-output metrics of the model on `data` (labels required).
    pub fn evaluate(&self, data: &EncodedData, backend: &str) -> Result<Vec<TaskMetrics>, TrainError> {
        let (specs, preds) = self.predict_outputs(data, backend, 4096)?;
        Ok(evaluate(&specs, &preds, data, &self.schema.label_names()))
    }
}

/// Evaluates a model directory on a CSV file (its rows must follow the model's label rules,
/// as training rows do).
pub fn eval_file<R: Registry>(
    dir: &Path,
    data: &Path,
    backend: &str,
    policy: BadRowPolicy,
) -> Result<(Vec<TaskMetrics>, ReadReport), TrainError> {
    let model = ModelDir::<R>::open(dir)?;
    let plan = R::plan(&model.config.model, &model.schema)?;
    let encoder = model.encoder.clone().with_label_rules(plan.label_rules);
    let (encoded, report, _) = read_encoded(data, &encoder, policy, true, None)?;
    Ok((model.evaluate(&encoded, backend)?, report))
}

/// The column of input line numbers that `predict` writes when bad rows are skipped.
pub const INPUT_LINE_COLUMN: &str = "input_line";

/// Writes predictions for a CSV file: a header, then one row per kept input row with the id
/// column (if asked) and one column per output. When bad rows are skipped, the first column
/// is the input line of each row (`input_line`), so that no prediction can be matched to the
/// wrong row. Written atomically, with the `csv` writer (ids holding commas are quoted).
pub fn predict_file<R: Registry>(
    dir: &Path,
    data: &Path,
    out: &Path,
    id_column: Option<&str>,
    backend: &str,
    policy: BadRowPolicy,
) -> Result<(usize, ReadReport, Vec<String>), TrainError> {
    mtl_features::check_output_path(out)?;
    let model = ModelDir::<R>::open(dir)?;
    let started = Instant::now();
    let keep_lines = policy == BadRowPolicy::Skip;
    let (encoded, report, tags) = read_tagged(data, &model.encoder, policy, false, id_column, keep_lines)?;
    let (names, preds) = model.predict(&encoded, backend, 4096)?;
    let mut header: Vec<String> = Vec::with_capacity(names.len() + 2);
    if keep_lines {
        header.push(INPUT_LINE_COLUMN.to_string());
    }
    header.extend(id_column.map(str::to_string));
    header.extend(names.iter().cloned());
    atomic_write_with(out, |w| {
        let mut csv = csv::Writer::from_writer(w);
        csv.write_record(&header)?;
        let mut row: Vec<String> = Vec::with_capacity(header.len());
        for r in 0..encoded.rows {
            row.clear();
            if keep_lines {
                row.push(tags.lines[r].to_string());
            }
            if id_column.is_some() {
                row.push(tags.ids[r].clone());
            }
            row.extend(preds.iter().map(|p| p[r].to_string()));
            csv.write_record(&row)?;
        }
        csv.flush()
    })?;
    tracing::info!(
        rows = encoded.rows,
        secs = started.elapsed().as_secs_f64(),
        "predicted"
    );
    Ok((encoded.rows, report, names))
}
