//! The training job: a new run from a config, or a resumed one from its directory; its data
//! read, its model built and fitted, and its model, calibration, metrics and pictures written.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use mtl_data::{BadRowPolicy, fit_state, read_encoded};
use mtl_eval::gates::{dead_experts, gate_report};
use mtl_eval::metrics::evaluate_weighted;
use mtl_eval::{Calibration, CalibrationMethod, TaskMetrics, backend_device, predict_all};
use mtl_features::{EncodedData, Encoder, FeatureState, Schema, ValidSchema, atomic_write};
use mtl_layers::{ModelPlan, MultiTaskModel, WithModel};

use crate::config::{DataConfig, DataFiles, RunConfig, TrainSettings};
use crate::error::{io_err, record_err};
use crate::fit::checkpoint::{read_checkpoint, save_atomic};
use crate::fit::collective::Group;
use crate::fit::events::{EventFile, SharedEventFile};
use crate::fit::loader::{StreamSpec, TrainRows, count_file_rows, label_means};
use crate::fit::shards::Shards;
use crate::fit::state::{DataFile, FitOptions, TrainState};
use crate::fit::{fit, optimizer};
use crate::jobs::model_dir::{RunLock, load_dir_config, mark_finished, save_dir_config};
use crate::jobs::{TableReport, TrainOptions, TrainSummary, curve, memory, peak_rss_mb};
use crate::{Registry, TrainError, crash_point};

/// A checkpoint to resume: its state, and its model and optimiser files.
type Checkpoint = (TrainState, PathBuf, PathBuf);

/// What a run starts from once its config is settled.
struct Setup<R: Registry> {
    config: RunConfig<R>,
    schema: ValidSchema,
    plan: ModelPlan,
    features: FeatureState,
    start: Option<Checkpoint>,
    /// Held for the whole job (by the leader: other ranks write nothing).
    lock: Option<RunLock>,
    /// A finished run trained further: its `config.toml` as it was before this invocation
    /// saved the new epochs, put back if the job fails before its first checkpoint.
    restore_config: Option<Vec<u8>>,
    /// A new run set up by this process: whether it created the directory (what it wrote
    /// is removed if the job fails before its first checkpoint).
    new_dir: Option<bool>,
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
    let group = &options.group;
    let setup = if group.is_leader() {
        let setup = match resume {
            true => resumed_run::<R>(out_dir, options, true),
            false => new_run(config, out_dir, options),
        };
        // the other ranks wait for the leader's directory, and learn whether it was made
        group.leader_ok(setup.is_ok());
        setup?
    } else if group.leader_ok(false) {
        match resume {
            true => resumed_run::<R>(out_dir, options, false)?,
            false => follow_new_run(config, out_dir, options)?,
        }
    } else {
        return Err(TrainError::LeaderFailed {
            rank: group.rank(),
            dir: out_dir.display().to_string(),
        });
    };
    let mut setup = setup;
    let restore = setup.restore_config.take();
    let new_dir = setup.new_dir;
    let events = open_events(&setup.config.train, out_dir, options);
    // every rank learns whether the leader opened its events: a follower going on alone would
    // wait in the first collective for a leader that has stopped
    if group.is_distributed() && !group.leader_ok(events.is_ok()) && !group.is_leader() {
        return Err(TrainError::LeaderFailed {
            rank: group.rank(),
            dir: out_dir.display().to_string(),
        });
    }
    let result = events.and_then(|events| {
        let result = train_from(setup, out_dir, options, events.clone());
        // a new run that fails before its first checkpoint leaves no events behind
        if let (Err(_), Some(_), Some(events)) = (&result, new_dir, events)
            && !checkpointed(out_dir)
        {
            events
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .discard();
        }
        result
    });
    if let (Err(_), Some(created)) = (&result, new_dir) {
        discard_failed_new_run(out_dir, created);
    }
    // a failed extension that never reached a checkpoint leaves the run as it was: finished,
    // with the config that says so
    if let (Err(_), Some(old)) = (&result, restore)
        && read_checkpoint(out_dir).is_ok_and(|(state, _, _)| state.finished)
    {
        let _ = atomic_write(&out_dir.join("config.toml"), &old);
    }
    result
}

/// The leader's TensorBoard event file, opened before the first step: in `--tensorboard DIR`
/// (`options.tensorboard`), else with `[train] tensorboard` in `<out_dir>/tensorboard`.
fn open_events(
    settings: &TrainSettings,
    out_dir: &Path,
    options: &TrainOptions,
) -> Result<Option<SharedEventFile>, TrainError> {
    let dir =
        (options.tensorboard.clone()).or_else(|| settings.tensorboard.then(|| out_dir.join("tensorboard")));
    match dir {
        Some(dir) if options.group.is_leader() => {
            let file = EventFile::create(&dir).map_err(io_err(&dir))?;
            options.announce(&format!("TensorBoard events: {}", file.path().display()));
            Ok(Some(std::sync::Arc::new(std::sync::Mutex::new(file))))
        }
        _ => Ok(None),
    }
}

/// Whether the run in `out_dir` has a checkpoint (the one being replaced counts).
fn checkpointed(out_dir: &Path) -> bool {
    ["checkpoint", "checkpoint.old"]
        .iter()
        .any(|c| out_dir.join(c).exists())
}

/// The job once its run is settled: the data read and checked against the checkpoint's, the
/// model built and fitted, its artifacts written.
fn train_from<R: Registry>(
    setup: Setup<R>,
    out_dir: &Path,
    options: &TrainOptions,
    events: Option<SharedEventFile>,
) -> Result<TrainSummary, TrainError> {
    let Setup {
        config,
        schema,
        plan,
        features,
        start,
        lock,
        ..
    } = setup;
    let data = data_files(&config.data.train.files("data.train")?)?;
    if let Some((state, _, _)) = &start {
        same_data(&state.data, &data)?;
    }
    // sample weights are read as one more label column (prediction never reads them)
    let (schema, weight_label) = config.data.with_weight(schema)?;
    let encoder = (Encoder::new(&schema, &features))
        .with_label_rules(plan.label_rules)
        .with_weight_label(weight_label);
    check_table_size(&encoder, &schema, &config.train, out_dir, &options.group)?;
    let mut inputs = Inputs::read(&config, &encoder, options)?;
    if inputs.train.is_some() {
        warn_one_class(&schema, inputs.train_rows(), &options.group)?;
    }
    let reads = std::mem::take(&mut inputs.reads);
    let valid_groups = inputs.valid_groups.take();
    let device = backend_device(&config.train.backend)?;
    // ranks that are threads of this process seed and draw their model in turn (`run`)
    let random_turn = options.group.random_turn();
    device.seed(config.train.seed);
    let ad = device.clone().autodiff();
    let summary = R::with_model(
        &config.model,
        &schema,
        encoder.layout(),
        &ad,
        TrainJob {
            config: &config,
            schema: &schema,
            encoder: &encoder,
            train: inputs.train_rows(),
            valid: inputs.valid.as_ref(),
            test: inputs.test.as_ref(),
            device: &ad,
            out_dir,
            start,
            options,
            reads,
            rss_by_rank: Vec::new(),
            data,
            valid_groups,
            events,
            random_turn,
        },
    );
    drop(lock);
    summary
}

/// Settles a resumed run: its directory's config with this invocation's epochs and step
/// limit, its schema, features and checkpoint (none when it was killed before its first).
/// The leader (`lead`) locks the directory and saves a changed config; the other ranks of a
/// job read what it holds.
fn resumed_run<R: Registry>(
    out_dir: &Path,
    options: &TrainOptions,
    lead: bool,
) -> Result<Setup<R>, TrainError> {
    if !out_dir.is_dir() {
        return Err(TrainError::NotAModelDir {
            dir: out_dir.display().to_string(),
            missing: "the directory itself".into(),
        });
    }
    let lock = lead.then(|| RunLock::acquire(out_dir)).transpose()?;
    let mut config = load_dir_config::<R>(out_dir)?;
    let saved = out_dir.join("config.toml").display().to_string();
    check_random_stream(&config, &options.group, &saved)?;
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
        continue_state(
            state,
            options.epochs.is_some() && config.train.epochs > state.epoch,
            out_dir,
        )?;
    }
    let mut restore_config = None;
    if config.train.epochs != saved_epochs && lead {
        let path = out_dir.join("config.toml");
        restore_config = Some(std::fs::read(&path).map_err(io_err(&path))?);
        save_dir_config(out_dir, &config)?;
    }
    let plan = R::plan(&config.model, &schema)?;
    config.check_plan(&plan, "config")?;
    Ok(Setup {
        config,
        schema,
        plan,
        features,
        start,
        lock,
        restore_config,
        new_dir: None,
    })
}

/// A finished run's state is refused unless `extend` (more epochs asked for), which reopens
/// it: early stopping starts counting afresh.
fn continue_state(state: &mut TrainState, extend: bool, out_dir: &Path) -> Result<(), TrainError> {
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
        state.finished = false;
        state.trained = false;
        state.stopped_early = false;
        state.since_best = 0;
    }
    Ok(())
}

/// The first dropout of the model's config above 0 (its key and value), if any: the one thing
/// a model draws at random in its training forward pass.
fn model_dropout<R: Registry>(config: &RunConfig<R>) -> Option<(String, f64)> {
    fn dropout(value: &toml::Value, at: &str) -> Option<(String, f64)> {
        let table = value.as_table()?;
        table.iter().find_map(|(key, v)| {
            let path = format!("{at}.{key}");
            let p = v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
            match p {
                Some(p) if key.contains("dropout") && p > 0.0 => Some((path, p)),
                _ => dropout(v, &path).or_else(|| {
                    let items = v.as_array()?.iter().enumerate();
                    items
                        .filter_map(|(i, item)| dropout(item, &format!("{path}[{i}]")))
                        .next()
                }),
            }
        })
    }
    let model = toml::Value::try_from(&config.model).ok()?;
    dropout(&model, "model")
}

/// Refuses dropout when the ranks are threads of one process: their masks would be drawn from
/// the process's one random stream in whatever order the threads reach it, so no two runs
/// would be the same (processes, `mpirun`, each have their own).
fn check_random_stream<R: Registry>(
    config: &RunConfig<R>,
    group: &Group,
    file: &str,
) -> Result<(), TrainError> {
    if !group.threads_of_one_process() {
        return Ok(());
    }
    match model_dropout(config) {
        Some((key, p)) => Err(TrainError::Config {
            file: file.into(),
            message: format!(
                "`{key}` = {p}: ranks that are threads of one process (--ranks) share its random \
                 stream, so their dropout masks would differ from run to run; train with dropout \
                 on ranks that are processes (mpirun) or in one process"
            ),
        }),
        None => Ok(()),
    }
}

/// The files a new run writes into its directory before its first checkpoint.
const RUN_FILES: [&str; 5] = [
    "schema.toml",
    "features.json",
    "config.toml",
    "model.bpk",
    "metrics.json",
];

/// A new run's config resolved (the choices saved with it) and checked against its schema
/// and model: the config, schema, model plan and the schema's text.
fn settle_new<R: Registry>(
    config: Option<&RunConfig<R>>,
    options: &TrainOptions,
) -> Result<(RunConfig<R>, ValidSchema, ModelPlan, String), TrainError> {
    let config = config.ok_or_else(|| TrainError::Config {
        file: "<none>".into(),
        message: "a config is required unless resuming".into(),
    })?;
    let mut config = config.clone();
    config.resolve_paths(Path::new(""));
    // saved resolved, so a resumed run keeps the choice made here
    config.resolve_for_new_run(options.group.size());
    let shards = config.data.shards.unwrap_or(1);
    if shards > config.train.batch_size {
        return Err(TrainError::Config {
            file: "config".into(),
            message: format!(
                "`data.shards` = {shards} (the ranks, when unset) is more than `train.batch_size` \
                 = {}: every batch takes a row of every shard",
                config.train.batch_size
            ),
        });
    }
    if shards > 1 {
        options.announce(&format!(
            "the training rows are split into {shards} shards (`data.shards`): each of the {} \
             rank(s) reads {}",
            options.group.size(),
            match shards.is_multiple_of(options.group.size()) {
                true => "only its own",
                false => "all of them (the ranks do not divide the shards)",
            }
        ));
    }
    options.announce(&config.train.early_stopping.describe());
    check_random_stream(&config, &options.group, "config")?;
    let (schema, plan, schema_text) = config.check_model("config")?;
    // a schema without id fields has no table to decay
    if let Some(line) = config
        .train
        .describe_embedding_decay()
        .filter(|_| !schema.dims.is_empty())
    {
        options.announce(&line);
    }
    Ok((config, schema, plan, schema_text))
}

/// A new run on a rank other than the leader, once the leader has made its directory: the
/// same config, and the features the leader fitted (read, so every rank encodes alike).
fn follow_new_run<R: Registry>(
    config: Option<&RunConfig<R>>,
    out_dir: &Path,
    options: &TrainOptions,
) -> Result<Setup<R>, TrainError> {
    let (config, schema, plan, _) = settle_new(config, options)?;
    let features = FeatureState::load(out_dir.join("features.json"), &schema)?;
    Ok(Setup {
        config,
        schema,
        plan,
        features,
        start: None,
        lock: None,
        restore_config: None,
        new_dir: None,
    })
}

/// Settles a new run: the config resolved and checked against schema and model, the
/// directory created and locked (refused when it holds a run), the features fitted, and the
/// schema, features and config saved.
fn new_run<R: Registry>(
    config: Option<&RunConfig<R>>,
    out_dir: &Path,
    options: &TrainOptions,
) -> Result<Setup<R>, TrainError> {
    let (config, schema, plan, schema_text) = settle_new(config, options)?;
    let created = !out_dir.exists();
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let lock = Some(RunLock::acquire(out_dir)?);
    if out_dir.join("checkpoint").exists() || out_dir.join("checkpoint.old").exists() {
        return Err(TrainError::Config {
            file: out_dir.display().to_string(),
            message: "already holds a training run; use --resume to continue it or choose another --out"
                .into(),
        });
    }
    // a run writes these: a folder already holding one (a run killed before its first
    // checkpoint, or the user's own schema or config) is never overwritten
    if let Some(file) = RUN_FILES.iter().find(|f| out_dir.join(f).exists()) {
        return Err(TrainError::Config {
            file: out_dir.display().to_string(),
            message: format!(
                "already holds {file}: a new run writes its own there; choose another --out \
                 (or `--resume` a run killed before its first checkpoint)"
            ),
        });
    }
    if options.progress {
        eprintln!("fitting features on {}", config.data.train.shown());
    }
    let fitted = || -> Result<FeatureState, TrainError> {
        let files = config.data.train.files("data.train")?;
        let features = fit_state(&files, &schema, config.data.policy()?)?;
        atomic_write(&out_dir.join("schema.toml"), schema_text.as_bytes())?;
        features.save(out_dir.join("features.json"))?;
        save_dir_config(out_dir, &config)?;
        Ok(features)
    };
    let features = fitted().inspect_err(|_| discard_failed_new_run(out_dir, created))?;
    Ok(Setup {
        config,
        schema,
        plan,
        features,
        start: None,
        lock,
        restore_config: None,
        new_dir: Some(created),
    })
}

/// Removes what a new run wrote when it failed before its first checkpoint (a run with one
/// is kept, to resume): its files, a half-written checkpoint, and the directory when the run
/// created it and nothing else is there. So the same command, mended, runs again.
fn discard_failed_new_run(out_dir: &Path, created: bool) {
    if checkpointed(out_dir) {
        return;
    }
    for file in RUN_FILES
        .iter()
        .chain(&["curve.svg", "calibration.json", "best.bpk"])
    {
        let _ = std::fs::remove_file(out_dir.join(file));
    }
    let _ = std::fs::remove_dir_all(out_dir.join("checkpoint.tmp"));
    if created {
        let _ = std::fs::remove_file(out_dir.join(".lock"));
        // only when empty: anything else there is not this run's
        let _ = std::fs::remove_dir(out_dir);
    }
}

/// The training files' identities: path, size, content hash.
fn data_files(files: &[PathBuf]) -> Result<Vec<DataFile>, TrainError> {
    files
        .iter()
        .map(|path| {
            let bytes = std::fs::metadata(path).map_err(io_err(path))?.len();
            let hash = mtl_data::cache::content_hash(path).map_err(io_err(path))?;
            Ok(DataFile {
                path: path.display().to_string(),
                bytes,
                hash: format!("{hash:016x}"),
            })
        })
        .collect()
}

/// Refuses to resume on training files other than the checkpoint's (`saved`; a checkpoint of
/// an older mtl has none, and is not checked): the data position counts rows of those files.
fn same_data(saved: &[DataFile], now: &[DataFile]) -> Result<(), TrainError> {
    if saved.is_empty() || saved == now {
        return Ok(());
    }
    let changed = |file: &str, detail: String| TrainError::Config {
        file: file.to_string(),
        message: format!(
            "changed since the run's checkpoint ({detail}); its position in the epoch counts \
             rows of the data it read: restore that data to resume, or train a new run"
        ),
    };
    for (was, is) in saved.iter().zip(now) {
        if was.path != is.path {
            return Err(changed(
                "data.train",
                format!("the run read {}, now {}", was.path, is.path),
            ));
        }
        if was.bytes != is.bytes {
            return Err(changed(
                &is.path,
                format!("{} bytes then, {} now", was.bytes, is.bytes),
            ));
        }
        if was.hash != is.hash {
            return Err(changed(&is.path, "the same size, other contents".into()));
        }
    }
    Err(changed(
        "data.train",
        format!("{} training file(s) then, {} now", saved.len(), now.len()),
    ))
}

/// Warns of a binary label with one class only in the training rows (held in memory): its
/// outputs can only learn to predict that class.
fn warn_one_class(schema: &ValidSchema, rows: TrainRows<'_>, group: &Group) -> Result<(), TrainError> {
    let means = label_means(rows, group, None)?;
    for (label, mean) in schema.schema.labels.iter().zip(means) {
        if label.kind != mtl_features::LabelKind::Binary {
            continue;
        }
        let class = match mean {
            0.0 => "no positive (1)",
            1.0 => "no negative (0)",
            m if m.is_nan() => "no value",
            _ => continue,
        };
        tracing::warn!(
            "label `{}` has {class} in the {} training rows: its outputs can only learn one class",
            label.name,
            rows.rows()
        );
    }
    Ok(())
}

/// Refuses an embedding table over [`mtl_features::schema::MAX_TABLE_FLOATS`] floats, or one
/// whose training footprint (with Adam's moments, the average, …) exceeds the memory this
/// process may still use.
fn check_table_size(
    encoder: &Encoder,
    schema: &ValidSchema,
    settings: &TrainSettings,
    out_dir: &Path,
    group: &Group,
) -> Result<(), TrainError> {
    let (rows, width) = (encoder.layout().total_rows, schema.table_width());
    let floats = rows.saturating_mul(width);
    let file = out_dir.join("schema.toml").display().to_string();
    if floats > mtl_features::schema::MAX_TABLE_FLOATS {
        return Err(TrainError::Config {
            file,
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
    let room = memory::room(memory::local_ranks(group));
    memory::check_footprint(rows, width, settings, room, &file)
}

/// A run's data: the training rows held encoded or streamed, validation and test rows, and
/// what was read (one line each, for `metrics.json`).
struct Inputs {
    train: Option<EncodedData>,
    /// Each validation row's group, with `[metrics] group_by`.
    valid_groups: Option<Vec<u32>>,
    /// How the training rows in memory are split, when in shards (`train` holds this rank's).
    shards: Option<Shards>,
    stream: Option<StreamSpec>,
    valid: Option<EncodedData>,
    test: Option<EncodedData>,
    reads: Vec<String>,
}

impl Inputs {
    /// Reads a run's data; with streaming, the training rows are counted now and read each
    /// epoch.
    fn read<R: Registry>(
        config: &RunConfig<R>,
        encoder: &Encoder,
        options: &TrainOptions,
    ) -> Result<Self, TrainError> {
        let policy = config.data.policy()?;
        let mut reads = Vec::new();
        let mut read_all = |files: &DataFiles, key: &str| -> Result<EncodedData, TrainError> {
            let mut all: Option<EncodedData> = None;
            for path in files.files(key)? {
                let data = read(&path, encoder, policy, &config.data, &mut reads)?;
                match &mut all {
                    Some(all) => all
                        .try_append(&data)
                        .map_err(|_| mtl_data::memory_error(&path.display().to_string(), all, data.rows))?,
                    None => all = Some(data),
                }
            }
            Ok(all.expect("a file list is never empty"))
        };
        let mut stream_note = None;
        let mut shards = None;
        let mut held_reads = Vec::new();
        let (train, stream) = if config.data.streaming {
            let (spec, note) = stream_spec(config, encoder, policy, options)?;
            stream_note = Some(note);
            (None, Some(spec))
        } else if config.data.shards.unwrap_or(1) > 1 {
            let files = config.data.train.files("data.train")?;
            let count = config.data.shards.unwrap_or(1);
            let (data, split) = read_held(
                &files,
                encoder,
                policy,
                &config.data,
                count,
                options,
                &mut held_reads,
            )?;
            shards = Some(split);
            (Some(data), None)
        } else {
            (Some(read_all(&config.data.train, "data.train")?), None)
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
        reads.splice(0..0, held_reads);
        if let Some(note) = stream_note {
            reads.insert(0, note);
        }
        let valid_groups = match (&config.metrics.group_by, &config.data.valid) {
            (Some(column), Some(files)) => {
                Some(group_ids(&files.files("data.valid")?, column, encoder, policy)?)
            }
            _ => None,
        };
        Ok(Self {
            train,
            valid_groups,
            shards,
            stream,
            valid,
            test,
            reads,
        })
    }

    /// The training rows as the loop takes them.
    fn train_rows(&self) -> TrainRows<'_> {
        match (&self.train, &self.stream) {
            (Some(data), _) if self.shards.is_some() => {
                TrainRows::Sharded(data, self.shards.expect("checked"))
            }
            (Some(data), _) => TrainRows::Memory(data),
            (None, Some(spec)) => TrainRows::Stream(spec),
            (None, None) => unreachable!("one of the two is built by Inputs::read"),
        }
    }
}

/// The streamed training files, their rows counted (an empty set is an error), and the line
/// that says so.
fn stream_spec<R: Registry>(
    config: &RunConfig<R>,
    encoder: &Encoder,
    policy: BadRowPolicy,
    options: &TrainOptions,
) -> Result<(StreamSpec, String), TrainError> {
    let files = config.data.train.files("data.train")?;
    let started = Instant::now();
    let file_rows = count_file_rows(&files, encoder, policy, true)?;
    let rows = file_rows.iter().sum();
    let message = format!(
        "streaming {} training file(s): {rows} rows (counted in {:.1} s), shuffled in blocks of {} rows",
        files.len(),
        started.elapsed().as_secs_f64(),
        config.data.shuffle_buffer
    );
    options.announce(&message);
    if rows == 0 {
        return Err(TrainError::Data(mtl_data::DataError::Empty {
            file: config.data.train.shown(),
        }));
    }
    let spec = StreamSpec {
        files,
        encoder: encoder.clone(),
        policy,
        rows,
        buffer_rows: config.data.shuffle_buffer,
        shards: config.data.shards.unwrap_or(1),
        file_rows,
    };
    Ok((spec, message))
}

/// Each row's group in the validation `files` (the text of `column`, numbered in order of
/// first appearance), read as the validation rows are (the same rows kept).
fn group_ids(
    files: &[PathBuf],
    column: &str,
    encoder: &Encoder,
    policy: BadRowPolicy,
) -> Result<Vec<u32>, TrainError> {
    let mut ids = std::collections::HashMap::new();
    let mut groups = Vec::new();
    for path in files {
        let by = Some((column, "metrics.group_by"));
        let (_, _, tags) = mtl_data::read_tagged_by(path, encoder, policy, true, by, false)?;
        for g in tags.ids {
            let next = ids.len() as u32;
            groups.push(*ids.entry(g).or_insert(next));
        }
    }
    Ok(groups)
}

/// The training rows this rank reads when they are in `count` shards ([`Shards`]): those
/// of the shards it holds alone (a contiguous range of the files' rows: whole files through
/// their caches, the ends of the range read alone, the rows before passed over), else all.
fn read_held(
    files: &[PathBuf],
    encoder: &Encoder,
    policy: BadRowPolicy,
    place: &DataConfig,
    count: usize,
    options: &TrainOptions,
    reads: &mut Vec<String>,
) -> Result<(EncodedData, Shards), TrainError> {
    let file_rows = count_file_rows(files, encoder, policy, false)?;
    let shards = Shards {
        rows: file_rows.iter().sum(),
        count,
    };
    let (rank, ranks) = (options.group.rank(), options.group.size());
    let held = shards.held(rank, ranks).unwrap_or(0..count);
    let range = shards.rows_of_shards(&held);
    let mut data = mtl_data::empty_encoded(encoder.schema());
    let mut before = 0;
    for (path, &n) in files.iter().zip(&file_rows) {
        let (lo, hi) = (range.start.max(before), range.end.min(before + n));
        if lo < hi && (lo, hi) == (before, before + n) {
            let whole = read(path, encoder, policy, place, reads)?;
            data.try_append(&whole)
                .map_err(|_| mtl_data::memory_error(&path.display().to_string(), &data, whole.rows))?;
        } else if lo < hi {
            let mut source = mtl_data::Source::open(path, encoder.schema(), true)?;
            source.skip_rows(lo - before, encoder, policy)?;
            let mut report = mtl_data::ReadReport::default();
            source.read_chunk(encoder, policy, hi - lo, &mut data, &mut report, None)?;
            reads.push(format!(
                "{}: rows {}..{} of {n} (this rank's shards)",
                path.display(),
                lo - before,
                hi - before
            ));
        }
        before += n;
    }
    options.announce(&format!(
        "rank {rank} of {ranks}: training rows {}..{} of {} (shards {}..{} of {count})",
        range.start, range.end, shards.rows, held.start, held.end
    ));
    Ok((data, shards))
}

/// Reads one data file encoded (through its cache when `place.cache`, where `place` says),
/// adding its read report to `reads`.
fn read(
    path: &Path,
    encoder: &Encoder,
    policy: BadRowPolicy,
    place: &DataConfig,
    reads: &mut Vec<String>,
) -> Result<EncodedData, TrainError> {
    let started = Instant::now();
    let (data, report, cached) = if place.cache {
        mtl_data::cache::read_encoded_cached(path, encoder, policy, true, place.cache_dir.as_deref())?
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

/// Test sets up to this many rows are predicted three more times to time inference.
const INFERENCE_TIMING_ROWS: usize = 1_000_000;

/// Everything the model-typed part of a training job needs.
struct TrainJob<'a, R: Registry> {
    config: &'a RunConfig<R>,
    schema: &'a ValidSchema,
    encoder: &'a Encoder,
    train: TrainRows<'a>,
    valid: Option<&'a EncodedData>,
    test: Option<&'a EncodedData>,
    device: &'a Device,
    out_dir: &'a Path,
    /// On resume: the checkpoint's state and its model and optimiser files.
    start: Option<Checkpoint>,
    options: &'a TrainOptions,
    reads: Vec<String>,
    /// Over several ranks: each rank's peak RSS at the end of training (MB).
    rss_by_rank: Vec<f64>,
    /// The training files as they are now (kept in every checkpoint).
    data: Vec<DataFile>,
    /// Each validation row's group, with `[metrics] group_by`.
    valid_groups: Option<Vec<u32>>,
    /// The leader's TensorBoard event file, if asked for.
    events: Option<SharedEventFile>,
    /// This rank's turn at the process's random stream, when the ranks are its threads
    /// ([`Group::random_turn`]): held until the model's parameters are drawn.
    random_turn: Option<std::sync::MutexGuard<'static, ()>>,
}

impl<R: Registry> WithModel for TrainJob<'_, R> {
    type Out = TrainSummary;
    type Error = TrainError;

    fn run<M: MultiTaskModel + 'static>(mut self, model: M) -> Result<TrainSummary, TrainError> {
        let settings = &self.config.train;
        // burn draws a parameter when it is first read: a new run draws all of them now, in
        // the modules' order (the same on every rank, ranks that are threads in their turn)
        let turn = self.random_turn.take();
        if self.start.is_none() {
            model.visit(&mut DrawParams);
        }
        drop(turn);
        let (model, optim, mut state) = self.starting_point(model)?;
        state.data = self.data.clone();
        let options = FitOptions {
            out_dir: self.out_dir.to_path_buf(),
            progress: self.options.progress,
            log_every: self.options.log_every,
            label_names: self.schema.label_names(),
            valid_groups: self.valid_groups.clone(),
            weight_label: self.encoder.weight_label(),
            group: self.options.group.clone(),
            stop: self.options.stop.clone(),
            tensorboard: self.events.clone(),
            draws_at_random: model_dropout(self.config).is_some(),
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
        let group = &self.options.group;
        let rss = match group.is_distributed() {
            true => group.gather_f32(&[peak_rss_mb().unwrap_or(0.0) as f32]).concat(),
            false => Vec::new(),
        };
        self.rss_by_rank = rss.into_iter().map(f64::from).collect();
        if !group.is_leader() {
            // the leader writes the model, calibration and reports
            return Ok(self.summary(&state, None, Vec::new(), Vec::new()));
        }
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
            Some(v) if state.trained => self.calibrate(&final_model, v, &plain)?,
            _ => None,
        };
        let test = match self.test {
            Some(t) if state.trained => Some(self.test(&final_model, t, &plain, calibration.as_ref())?),
            _ => None,
        };
        let gates = match self.valid {
            Some(v) if state.trained => gate_report(&final_model, v, self.encoder.layout(), &plain)?,
            _ => Vec::new(),
        };
        // the run is finished once its model and metrics are on disk: marked last
        state.finished = state.trained;
        let reads = std::mem::take(&mut self.reads);
        let summary = self.summary(&state, test, gates, reads);
        self.write_reports(&summary, &state)?;
        if state.finished {
            crash_point("metrics-written");
            mark_finished(self.out_dir, &state)?;
        }
        Ok(summary)
    }
}

/// Reads every parameter of a model once, so that burn draws the lazily initialised ones.
struct DrawParams;

impl burn::module::ModuleVisitor for DrawParams {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::tensor::Tensor<D>>) {
        let _ = param.val();
    }

    fn visit_int<const D: usize>(
        &mut self,
        param: &burn::module::Param<burn::tensor::Tensor<D, burn::tensor::Int>>,
    ) {
        let _ = param.val();
    }

    fn visit_bool<const D: usize>(
        &mut self,
        param: &burn::module::Param<burn::tensor::Tensor<D, burn::tensor::Bool>>,
    ) {
        let _ = param.val();
    }
}

/// The test set's metrics (calibrated, and before calibration when there is one) and the
/// inference throughput measured on it.
struct TestResult {
    metrics: Vec<TaskMetrics>,
    uncalibrated: Option<Vec<TaskMetrics>>,
    samples_per_sec: f64,
}

impl<R: Registry> TrainJob<'_, R> {
    /// The model, optimiser and state the fit starts from: a checkpoint's on resume; else the
    /// fresh model, started at its labels' base rates when it uses them.
    fn starting_point<M: MultiTaskModel>(
        &self,
        model: M,
    ) -> Result<(M, burn::optim::ModuleOptimizer, TrainState), TrainError> {
        let settings = &self.config.train;
        let optim = optimizer(settings);
        match &self.start {
            Some((state, model_path, optim_path)) => {
                let model = model.try_load_file(model_path).map_err(record_err(model_path))?;
                let optim = optim.load(optim_path).map_err(record_err(optim_path))?;
                Ok((model, optim, state.clone()))
            }
            // a new run of a model that starts at its labels' base rates reads them first
            None if settings.label_priors && M::USES_LABEL_PRIORS => {
                let weight = self.encoder.weight_label();
                let means = label_means(self.train, &self.options.group, weight)?;
                let names = self.schema.label_names();
                let shown: Vec<String> = (names.iter().zip(&means).enumerate())
                    .filter(|(l, _)| Some(*l) != weight)
                    .map(|(_, (name, m))| format!("{name} {m:.4}"))
                    .collect();
                let weighted = weight.map_or(String::new(), |l| format!(", weighted by {}", names[l]));
                let message = format!(
                    "outputs start at the training labels' means (label_priors{weighted}): {}",
                    shown.join(", ")
                );
                self.options.announce(&message);
                Ok((model.with_label_priors(&means), optim, TrainState::default()))
            }
            None => Ok((model, optim, TrainState::default())),
        }
    }

    /// Fits and saves the configured calibration on the validation set (`None` when the run
    /// has none or the fit gives none).
    fn calibrate<M: MultiTaskModel>(
        &self,
        model: &M,
        valid: &EncodedData,
        plain: &Device,
    ) -> Result<Option<Calibration>, TrainError> {
        let method = self.config.train.calibration;
        if method == CalibrationMethod::None {
            return Ok(None);
        }
        let (preds, _) = predict_all(model, valid, self.encoder.layout(), plain, 4096, false)?;
        let fitted = Calibration::fit(method, &model.outputs(), &preds, valid);
        if let Some(c) = &fitted {
            for (output, why) in &c.refused {
                tracing::warn!(%output, %why, "calibration refused");
                self.options
                    .announce(&format!("warning: {output} is left uncalibrated: {why}"));
            }
            c.save(self.out_dir)?;
        }
        Ok(fitted)
    }

    /// Scores the saved model on the test set, timing inference as torch-rechub's bench does:
    /// the median of three passes after a warm-up (the evaluated pass), unless the test set is
    /// large enough to time in one.
    fn test<M: MultiTaskModel>(
        &self,
        model: &M,
        test: &EncodedData,
        plain: &Device,
        calibration: Option<&Calibration>,
    ) -> Result<TestResult, TrainError> {
        let layout = self.encoder.layout();
        let started = Instant::now();
        let (preds, _) = predict_all(model, test, layout, plain, 4096, false)?;
        let mut secs = started.elapsed().as_secs_f64();
        if test.rows <= INFERENCE_TIMING_ROWS {
            let mut times = Vec::with_capacity(3);
            for _ in 0..3 {
                let started = Instant::now();
                predict_all(model, test, layout, plain, 4096, false)?;
                times.push(started.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            secs = times[1];
        }
        let specs = model.outputs();
        let labels = self.schema.label_names();
        let weight = (self.encoder.weight_label()).map(|l| (l, labels[l].as_str()));
        let evaluate = |preds: &[Vec<f32>]| evaluate_weighted(&specs, preds, test, &labels, None, weight);
        let (metrics, uncalibrated) = match calibration {
            Some(c) => {
                let before = evaluate(&preds);
                let mut preds = preds;
                let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
                c.apply(&names, &mut preds);
                (evaluate(&preds), Some(before))
            }
            None => (evaluate(&preds), None),
        };
        Ok(TestResult {
            metrics,
            uncalibrated,
            samples_per_sec: test.rows as f64 / secs.max(1e-9),
        })
    }

    /// The job's summary: throughput over every evaluation plus the steps since the last one
    /// (an interrupted run has no evaluation at all), the last validation and the test
    /// metrics, the gate report and the dead experts in it, and what was read.
    fn summary(
        &self,
        state: &TrainState,
        test: Option<TestResult>,
        gates: Vec<mtl_eval::gates::GateReport>,
        reads: Vec<String>,
    ) -> TrainSummary {
        let total_rows: f64 =
            state.history.iter().map(|e| e.train_rows as f64).sum::<f64>() + state.pending.0 as f64;
        let total_secs: f64 = state.history.iter().map(|e| e.train_secs).sum::<f64>() + state.pending_secs;
        let data_secs: f64 = state.history.iter().map(|e| e.data_secs).sum::<f64>() + state.pending_data_secs;
        let dead_experts = dead_experts(&gates);
        if !dead_experts.is_empty() {
            tracing::warn!(?dead_experts, "experts under 1 % of every gate's weight");
        }
        let (test, test_uncalibrated, inference) = match test {
            Some(t) => (t.metrics, t.uncalibrated, Some(t.samples_per_sec)),
            None => (Vec::new(), None, None),
        };
        TrainSummary {
            model: R::kind(&self.config.model).to_string(),
            out_dir: self.out_dir.to_path_buf(),
            backend: self.config.train.backend.clone(),
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
            reads,
            inference_samples_per_sec: inference,
            peak_rss_mb: peak_rss_mb(),
            data_wait_fraction: data_secs / total_secs.max(1e-9),
            peak_rss_mb_per_rank: self.rss_by_rank.clone(),
            comm_fraction: self.options.group.is_distributed().then(|| {
                let comm: f64 = state.history.iter().map(|e| e.comm_secs).sum::<f64>() + state.pending_comm.0;
                comm / total_secs.max(1e-9)
            }),
            gates,
            dead_experts,
            embedding_table: TableReport::of(&state.table_traffic),
        }
    }

    /// Writes `metrics.json`, `curve.svg` and the saved model's reliability diagram (on the
    /// test set, else the validation set).
    fn write_reports(&self, summary: &TrainSummary, state: &TrainState) -> Result<(), TrainError> {
        let json = serde_json::to_vec_pretty(summary).expect("summary serialises");
        atomic_write(&self.out_dir.join("metrics.json"), &json)?;
        atomic_write(
            &self.out_dir.join("curve.svg"),
            curve::render_svg(&state.history, state.best.map(|(_, step)| step)).as_bytes(),
        )?;
        let (shown, on) = match (summary.test.is_empty(), summary.valid.is_empty()) {
            (false, _) => (&summary.test, "(test)"),
            (true, false) => (&summary.valid, "(validation)"),
            (true, true) => (&summary.test, ""),
        };
        if !shown.is_empty() {
            atomic_write(
                &self.out_dir.join("reliability.svg"),
                curve::render_reliability(shown, on).as_bytes(),
            )?;
        }
        Ok(())
    }
}
