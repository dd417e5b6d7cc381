//! `mtl`: train, evaluate and predict with multi-task recommendation models.
//!
//! With no arguments it runs a built-in demo: it generates a small synthetic click/conversion
//! data set in a temporary directory, trains ESMM and MMOE briefly, and prints each task's
//! metrics and where the artifacts are.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use mtl_data::BadRowPolicy;
use mtl_models::Models;
use mtl_synth::{CcpSpec, ChainSpec, StepRate, SynthError, generate_ccp, generate_chain};

/// A run config whose model is any registered type.
type RunConfig = mtl_trainer::RunConfig<Models>;
use mtl_trainer::{DataConfig, Group, Overrides, Registry, TrainOptions, TrainSettings};

/// Multi-task recommendation models (ESMM, MMOE, OMoE, Shared-Bottom) on burn.
#[derive(Debug, Parser)]
#[command(name = "mtl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log details (-v info, -vv debug) to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// CPU threads for the flex/ndarray backends (default: all cores, or RAYON_NUM_THREADS;
    /// under an MPI launcher, the cores shared out among the host's ranks).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Hide progress bars.
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model from a config (or continue one with --resume).
    Train(TrainArgs),
    /// Evaluate a trained model on a labelled CSV file: per-task metrics.
    Eval(EvalArgs),
    /// Write one prediction column per task output for a CSV file.
    Predict(PredictArgs),
    /// Export a trained model to another format (ONNX), with its encoder state beside it.
    Export(ExportArgs),
    /// Serve a trained model over HTTP: POST /v1/predict, GET /health, /v1/model, /metrics.
    Serve(ServeArgs),
    /// Generate synthetic data, train ESMM and MMOE briefly, print metrics (the default).
    Demo(DemoArgs),
    /// List the model types a config's `[model] type` can name, each with an example table.
    Models,
    /// Write synthetic data sets with a known ground truth (CSV files and a schema).
    #[command(subcommand)]
    GenData(GenData),
    /// Feature schemas: `infer` writes a starting schema from data files.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Convert a CSV file to Parquet (columns typed from their cells: integers, floats, text;
    /// empty cells null), in one file or shards of --rows-per-file rows.
    Convert(ConvertArgs),
    /// Run configs: `show` prints one as training reads it (bases merged, --set applied,
    /// every default filled in).
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the config as `mtl train` would read it, every default filled in.
    Show {
        /// Run config TOML.
        #[arg(long)]
        config: PathBuf,
        /// Set any key: `--set train.lr=0.01` (repeatable; a TOML value, else a string).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        set: Vec<String>,
    },
}

/// `mtl convert`'s options.
#[derive(Debug, Args)]
struct ConvertArgs {
    /// The CSV file.
    input: PathBuf,
    /// The Parquet file (with --rows-per-file: its name gets -00000, -00001, …).
    #[arg(long)]
    out: PathBuf,
    /// snappy, zstd or none.
    #[arg(long, default_value = "zstd")]
    codec: String,
    /// Rows per row group.
    #[arg(long, default_value_t = 131_072)]
    row_group: usize,
    /// Rows per file (default: one file).
    #[arg(long)]
    rows_per_file: Option<u64>,
    /// Rows read to decide each column's type.
    #[arg(long, default_value_t = 100_000)]
    infer_rows: usize,
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// Guess a schema from CSV files (same header): 0/1 columns named like labels → labels,
    /// integers or text with few distinct values → sparse (fitted vocabulary), many → hashed,
    /// numbers → dense (standardised), a distinct value per row → left out. Edit, then train.
    Infer {
        /// The CSV files (read in order, up to --rows rows in all).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write the schema here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Rows to read, at most.
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
        /// The most distinct values of a column given a fitted vocabulary.
        #[arg(long, default_value_t = 100_000)]
        max_categories: usize,
    },
}

/// The options the click/conversion and chain generators share.
#[derive(Debug, Args)]
struct SynthArgs {
    /// Rows in total (split 80/10/10 into train/val/test).
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Random seed (same seed, same bytes).
    #[arg(long, default_value_t = 2022)]
    seed: u64,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Small vocabularies (10 … 1,000) instead of the peer's (10 … 100,000).
    #[arg(long)]
    small: bool,
    /// Number of dense fields.
    #[arg(long, default_value_t = 0)]
    dense: usize,
}

impl SynthArgs {
    /// The generator's field layout.
    fn spec(&self) -> CcpSpec {
        let mut spec = if self.small {
            CcpSpec::small(self.rows, self.seed)
        } else {
            CcpSpec::new(self.rows, self.seed)
        };
        spec.dense = self.dense;
        spec
    }
}

#[derive(Debug, Subcommand)]
enum GenData {
    /// Click/conversion data shaped like Ali-CCP, with the true p_click and p_cvr per row.
    Ccp(SynthArgs),
    /// A conversion chain (impression → step 1 → … → step N), with the true probability of
    /// every step given the previous one on every row.
    Chain {
        /// The steps in funnel order, each `name:rate` (rate among rows where the previous
        /// step happened).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "click:0.1,cart:0.3,purchase:0.3"
        )]
        steps: Vec<String>,
        /// Rows, seed, output and fields.
        #[command(flatten)]
        data: SynthArgs,
    },
    /// Clicks driven by whether the target item's category is among the user's earlier
    /// categories (DIN's case: `hist_cat` pooled by target attention queried by `cat`).
    Interest(GenOut),
    /// The MMoE paper's synthetic regression pair with task correlation P.
    MmoeSynthetic {
        /// Correlation P between the two tasks.
        #[arg(long, default_value_t = 0.5)]
        correlation: f64,
        /// Rows, seed and output.
        #[command(flatten)]
        out: GenOut,
    },
}

/// The rows, seed and folder of a generator with fixed fields.
#[derive(Debug, Args)]
struct GenOut {
    /// Rows in total.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Random seed.
    #[arg(long, default_value_t = 2018)]
    seed: u64,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Clone, Args)]
struct TrainArgs {
    /// Run config TOML (schema, data, model, train).
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    config: Option<PathBuf>,
    /// Continue the interrupted run in this model directory from its last checkpoint.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Training CSV (overrides `data.train`).
    #[arg(long, conflicts_with = "resume")]
    data: Option<PathBuf>,
    /// Validation CSV (overrides `data.valid`).
    #[arg(long, conflicts_with = "resume")]
    valid: Option<PathBuf>,
    /// Epochs (overrides `train.epochs`; with --resume, more epochs than a finished run had
    /// train it further).
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size (overrides `train.batch_size`).
    #[arg(long, conflicts_with = "resume")]
    batch_size: Option<usize>,
    /// Learning rate (overrides `train.lr`).
    #[arg(long, conflicts_with = "resume")]
    lr: Option<f64>,
    /// Seed (overrides `train.seed`).
    #[arg(long, conflicts_with = "resume")]
    seed: Option<u64>,
    /// Stop after this many steps in total, leaving a checkpoint to --resume from (this
    /// invocation only: the limit is not saved with the run).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Backend: flex (default), ndarray, wgpu or cuda.
    #[arg(long, conflicts_with = "resume")]
    backend: Option<String>,
    /// Model directory to create.
    #[arg(long, default_value = "out/model", conflicts_with = "resume")]
    out: PathBuf,
    /// When stderr is not a terminal (a log file, CI, nohup): seconds between progress lines,
    /// which stand in for the bar (default 30).
    #[arg(long, value_name = "SECS")]
    log_every: Option<f64>,
    /// Set any key of the config: `--set train.lr=0.01 --set data.shuffle_buffer=100000`
    /// (repeatable; a TOML value, else a string), checked like the file.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", conflicts_with = "resume")]
    set: Vec<String>,
    /// Write every evaluation's scalars (losses, metrics, loss weights, learning rate) as
    /// TensorBoard event files in DIR (`[train] tensorboard = true`: in `<out>/tensorboard`).
    #[arg(long, value_name = "DIR")]
    tensorboard: Option<PathBuf>,
    /// Train as N data-parallel ranks, each a thread of this process with its share of
    /// --threads: the same computation as `mpirun -np N` (no MPI needed; one machine).
    #[arg(long, value_name = "N")]
    ranks: Option<usize>,
}

#[derive(Debug, Args)]
struct EvalArgs {
    /// Trained model directory.
    #[arg(long)]
    model: PathBuf,
    /// Labelled CSV file.
    #[arg(long)]
    data: PathBuf,
    /// Also write the metrics as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Backend: flex (default), ndarray, wgpu or cuda.
    #[arg(long, default_value = "flex")]
    backend: String,
    /// Bad rows: fail (default) or skip.
    #[arg(long, default_value = "fail")]
    bad_rows: BadRowPolicy,
    /// Use the model of a run that has not finished (killed before its calibration or
    /// metrics were written, or being trained further); refused otherwise.
    #[arg(long)]
    allow_unfinished: bool,
    /// Also report GAUC: each binary output's AUC within the rows of each value of this
    /// column (a user id), averaged weighted by rows over the groups with both classes.
    #[arg(long, value_name = "COLUMN")]
    group_by: Option<String>,
    /// Count every row by its sample weight in this column (finite, at least 0) in every
    /// metric, as `[data] weight` does in training.
    #[arg(long, value_name = "COLUMN")]
    weight: Option<String>,
}

#[derive(Debug, Args)]
struct PredictArgs {
    /// Trained model directory.
    #[arg(long)]
    model: PathBuf,
    /// CSV file (labels not needed).
    #[arg(long)]
    data: PathBuf,
    /// Output CSV (a new path or a regular file).
    #[arg(long)]
    out: PathBuf,
    /// Copy this input column into the output (after `input_line` when bad rows are skipped).
    #[arg(long)]
    id_column: Option<String>,
    /// Backend: flex (default), ndarray, wgpu or cuda.
    #[arg(long, default_value = "flex")]
    backend: String,
    /// Bad rows: fail (default) or skip; skipping adds an `input_line` column first, the
    /// input line of each predicted row.
    #[arg(long, default_value = "fail")]
    bad_rows: BadRowPolicy,
    /// Use the model of a run that has not finished (killed before its calibration or
    /// metrics were written, or being trained further); refused otherwise.
    #[arg(long)]
    allow_unfinished: bool,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// Trained model directory.
    #[arg(long)]
    model: PathBuf,
    /// Format: onnx.
    #[arg(long, default_value = "onnx")]
    format: String,
    /// Output file (its inputs, outputs and encoder state go to the same name + `.json`).
    #[arg(long)]
    out: PathBuf,
    /// A fixed batch size (rows per call). Default: a symbolic batch axis (what differs
    /// between the model captured at two batch sizes), else — with a warning saying why — a
    /// fixed batch of 1024.
    #[arg(long)]
    batch: Option<usize>,
    /// Use the model of a run that has not finished (killed before its calibration or
    /// metrics were written, or being trained further); refused otherwise.
    #[arg(long)]
    allow_unfinished: bool,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Trained model directory.
    #[arg(long)]
    model: PathBuf,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Backend: flex (default), ndarray, wgpu or cuda.
    #[arg(long, default_value = "flex")]
    backend: String,
    /// Largest request body, in bytes (larger: 413).
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// Most rows in one request (more: 413).
    #[arg(long, default_value_t = 10_000)]
    max_rows: usize,
    /// Requests waiting for the model at once (more: 429).
    #[arg(long, default_value_t = 1024)]
    queue: usize,
    /// Most rows the model scores in one batch of requests.
    #[arg(long, default_value_t = 4096)]
    max_batch_rows: usize,
    /// How long a batch waits for requests still being read, in milliseconds.
    #[arg(long, default_value_t = 2)]
    max_wait_ms: u64,
    /// How long a request's body may take to arrive, in milliseconds (slower: 408).
    #[arg(long, default_value_t = 30_000)]
    body_timeout_ms: u64,
    /// Use the model of a run that has not finished (killed before its calibration or
    /// metrics were written, or being trained further); refused otherwise.
    #[arg(long)]
    allow_unfinished: bool,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Rows of synthetic data to generate.
    #[arg(long, default_value_t = 200_000)]
    rows: usize,
    /// Epochs per model.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Backend: flex (default), ndarray, wgpu or cuda.
    #[arg(long, default_value = "flex")]
    backend: String,
    /// Where to put data and models (default: a new temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// mimalloc keeps freed memory for reuse: with glibc's allocator every batch's large tensors
/// were fresh mappings, and their page faults took ~15 % of an MMOE-large inference pass.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each said once: a library error that already quotes
/// its source (`file: No such file…`) is not followed by the source again.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if line.contains(&cause) {
            continue;
        }
        if !line.is_empty() {
            line += ": ";
        }
        line += &cause;
    }
    line
}

/// The thread count to use: `asked`, at most the machine's cores (a larger pool only adds
/// threads that wait: 100,000 of them never finished starting).
fn thread_count(asked: usize) -> Result<usize> {
    if asked == 0 {
        bail!("--threads 0: give at least 1 (leave it out to use every core)");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if asked > cores {
        eprintln!("warning: --threads {asked} is more than the {cores} cores here; using {cores}");
        return Ok(cores);
    }
    Ok(asked)
}

/// Under an MPI launcher that says how many ranks share this host (OpenMPI's
/// `OMPI_COMM_WORLD_LOCAL_SIZE`, MPICH's `MPI_LOCALNRANKS`) and no thread count was asked for:
/// the host's cores shared out among them, so N ranks do not each start a pool of every core.
fn threads_per_local_rank() -> Option<usize> {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return None;
    }
    let local = mtl_trainer::fit::collective::launcher_local_ranks()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (local > 1).then(|| (cores / local).max(1))
}

/// On SIGINT, SIGTERM or SIGHUP: removes the outputs being written (temp files, staging
/// folders, see `mtl_features::pending`), says so, and exits as the signal would have
/// (128 + its number). A thread waits for the signal, so the removal is ordinary code.
fn remove_pending_on_signal() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        eprintln!("warning: cannot watch for Ctrl-C: an interrupted command may leave a temp file");
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            for path in mtl_features::pending::remove_all() {
                eprintln!("mtl: interrupted: removed the unfinished {}", path.display());
            }
            signal_hook::low_level::exit(128 + signal);
        }
    });
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads.or_else(threads_per_local_rank) {
        rayon::ThreadPoolBuilder::new()
            .num_threads(thread_count(n)?)
            .build_global()
            .context("setting the thread count")?;
    }
    let progress = !cli.quiet;
    // `serve` stops gracefully on a signal by itself; every other command removes what it
    // had half written
    if !matches!(cli.command, Some(Command::Serve(_))) {
        remove_pending_on_signal();
    }
    match cli.command.unwrap_or(Command::Demo(DemoArgs {
        rows: 200_000,
        epochs: 2,
        backend: "flex".into(),
        dir: None,
    })) {
        Command::Train(args) => match args.ranks {
            Some(n) if n != 1 => train_in_threads(args, progress, n),
            _ => train(args, progress, &ranks()),
        },
        Command::Eval(args) => eval(args),
        Command::Predict(args) => predict(args),
        Command::Serve(args) => serve(args),
        Command::Export(args) => export(args),
        Command::Demo(args) => demo(args, progress),
        Command::Models => {
            print!("{}", models_text());
            Ok(())
        }
        Command::GenData(what) => gen_data(what),
        Command::Convert(a) => convert(&a),
        Command::Config(ConfigCommand::Show { config: path, set }) => {
            let mut config = RunConfig::from_file_with(&path, &set).context("reading the config")?;
            config.check_model(&path.display().to_string())?;
            config.resolve_for_new_run(1);
            print!(
                "{}",
                toml::to_string_pretty(&config).context("writing the config")?
            );
            Ok(())
        }
        Command::Schema(SchemaCommand::Infer {
            files,
            out,
            rows,
            max_categories,
        }) => schema_infer(&files, out.as_deref(), rows, max_categories),
    }
}

/// A generator's error as the command line names it: a setting becomes its flag
/// (`--rows 5: …`, `--steps: …`).
fn flagged(e: SynthError) -> anyhow::Error {
    match e {
        SynthError::Invalid {
            setting,
            value,
            message,
        } => {
            let flag = setting.replace('_', "-");
            match value {
                Some(v) => anyhow::anyhow!("--{flag} {v}: {message}"),
                None => anyhow::anyhow!("--{flag}: {message}"),
            }
        }
        other => other.into(),
    }
}

fn gen_data(what: GenData) -> Result<()> {
    match what {
        GenData::Ccp(data) => {
            let out = &data.out;
            let files = generate_ccp(&data.spec(), out, "synth_ccp")
                .map_err(flagged)
                .with_context(|| format!("writing to {}", out.display()))?;
            println!(
                "wrote {} rows to {} (click rate {:.4}, conversion rate among clicks {:.4}); schema {}",
                data.rows,
                out.display(),
                files.click_rate,
                files.cvr_rate,
                files.schema.display()
            );
        }
        GenData::Chain { steps, data } => {
            let out = &data.out;
            let steps = steps
                .iter()
                .map(|s| s.parse::<StepRate>().map_err(|e| anyhow::anyhow!("--steps: {e}")))
                .collect::<Result<Vec<_>>>()?;
            let spec = ChainSpec {
                fields: data.spec(),
                steps,
            };
            let files = generate_chain(&spec, out, "synth_chain")
                .map_err(flagged)
                .with_context(|| format!("writing to {}", out.display()))?;
            let rates: Vec<String> = spec
                .steps
                .iter()
                .zip(&files.rates)
                .map(|(s, r)| format!("{} {r:.4}", s.name))
                .collect();
            println!(
                "wrote {} rows to {} (rates given the previous step: {}); schema {}",
                data.rows,
                out.display(),
                rates.join(", "),
                files.schema.display()
            );
        }
        GenData::Interest(GenOut { rows, seed, out }) => {
            let spec = mtl_synth::InterestSpec::new(rows, seed);
            let [_, _, _, schema] = mtl_synth::generate_interest(&spec, &out, "interest")
                .map_err(flagged)
                .with_context(|| format!("writing to {}", out.display()))?;
            println!(
                "wrote {rows} rows to {}; schema {}",
                out.display(),
                schema.display()
            );
        }
        GenData::MmoeSynthetic {
            correlation,
            out: GenOut { rows, seed, out },
        } => {
            let spec = mtl_synth::MmoeSynthSpec::new(rows, seed, correlation);
            let [_, _, _, schema] = mtl_synth::generate_mmoe_synthetic(&spec, &out, "mmoe_synth")
                .map_err(flagged)
                .with_context(|| format!("writing to {}", out.display()))?;
            println!(
                "wrote {rows} rows (correlation {correlation}) to {}; schema {}",
                out.display(),
                schema.display()
            );
        }
    }
    Ok(())
}

/// `mtl convert`: a CSV file to Parquet.
fn convert(a: &ConvertArgs) -> Result<()> {
    use mtl_data::parquet::{Codec, csv_to_parquet};
    let codec: Codec = a
        .codec
        .parse()
        .map_err(|e| anyhow::anyhow!("--codec {}: {e}", a.codec))?;
    if a.rows_per_file == Some(0) || a.row_group == 0 {
        anyhow::bail!("--rows-per-file and --row-group must be at least 1");
    }
    let start = std::time::Instant::now();
    let done = csv_to_parquet(
        &a.input,
        &a.out,
        codec,
        a.row_group,
        a.rows_per_file,
        a.infer_rows,
    )
    .with_context(|| format!("converting {}", a.input.display()))?;
    eprintln!(
        "wrote {} rows to {} file(s) ({}{}) in {:.1} s",
        done.rows,
        done.files.len(),
        done.files[0].display(),
        if done.files.len() > 1 { ", …" } else { "" },
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `mtl schema infer`: the starting schema, checked to parse, to a file or stdout.
fn schema_infer(files: &[PathBuf], out: Option<&Path>, rows: usize, max_categories: usize) -> Result<()> {
    if rows == 0 {
        anyhow::bail!("--rows 0: at least one row is needed to guess from");
    }
    if max_categories == 0 {
        anyhow::bail!(
            "--max-categories 0: give at least 1 (a fitted vocabulary of no values sends every value to one id)"
        );
    }
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let options = mtl_data::infer::InferOptions {
        sample_rows: rows,
        max_categories,
    };
    let inferred = mtl_data::infer::infer_schema(&paths, options)?;
    let (text, labels, read) = (&inferred.text, inferred.labels, inferred.rows);
    match out {
        Some(path) => {
            mtl_features::check_output(path, &paths)?;
            mtl_features::atomic_write(path, text.as_bytes())?;
            eprintln!(
                "wrote {} ({} columns from {read} rows; {labels} labels found)",
                path.display(),
                inferred.columns
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// A path given on the command line, made absolute against the working directory (it is
/// saved with the run, which may be resumed from elsewhere).
fn absolute(path: PathBuf) -> Result<PathBuf> {
    std::path::absolute(&path).with_context(|| format!("resolving {}", path.display()))
}

/// The ranks of this job: MPI's when started by an MPI launcher (`mpirun`, `srun`) in a build
/// with the `mpi` feature, else this process alone.
fn ranks() -> Group {
    #[cfg(feature = "mpi")]
    {
        const LAUNCHED: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"];
        if LAUNCHED.iter().any(|v| std::env::var_os(v).is_some())
            && let Some(mpi) = mtl_trainer::fit::collective::mpi::MpiGroup::init()
        {
            return Group::new(mpi);
        }
    }
    Group::default()
}

/// `mtl train --ranks N`: N ranks as threads of this process, the threads of its pool shared
/// out among them.
fn train_in_threads(args: TrainArgs, progress: bool, n: usize) -> Result<()> {
    if n == 0 {
        bail!("--ranks 0: give at least 1 (1 is one process without ranks)");
    }
    if ranks().is_distributed() {
        bail!("--ranks {n} under an MPI launcher: its ranks are processes already; leave --ranks out");
    }
    let threads = rayon::current_num_threads();
    if n > threads {
        eprintln!(
            "warning: --ranks {n} on {threads} thread(s): the ranks take turns on the cores (give \
             --threads {n} or more, at most the cores, for a core a rank)"
        );
    }
    let results = mtl_trainer::fit::collective::threads::run_ranks(n, (threads / n).max(1), |group| {
        train(args.clone(), progress, &group)
    })
    .context("starting the ranks' threads")?;
    results.into_iter().collect()
}

fn train(args: TrainArgs, progress: bool, group: &Group) -> Result<()> {
    let result = train_on(args, progress, group);
    match result {
        // a failing rank of a job ends every rank: the others may wait on it in a collective
        Err(e) if group.is_distributed() => {
            let leader_failed = matches!(
                e.downcast_ref::<mtl_trainer::TrainError>(),
                Some(mtl_trainer::TrainError::LeaderFailed { .. })
            );
            if leader_failed && group.threads_of_one_process() {
                // rank 0 says why, and ends the process
                return Err(e);
            }
            eprintln!("error: rank {}: {}", group.rank(), error_line(&e));
            if leader_failed {
                // rank 0 failed before training, saying why; no rank waits on another
                std::process::exit(1);
            }
            group.abort(1)
        }
        other => other,
    }
}

fn train_on(args: TrainArgs, progress: bool, group: &Group) -> Result<()> {
    let log_every = match args.log_every {
        Some(secs) if !(secs.is_finite() && secs >= 0.0) => {
            bail!("--log-every {secs}: give the seconds between progress lines, 0 or more")
        }
        secs => secs.map(std::time::Duration::from_secs_f64),
    };
    let options = TrainOptions {
        progress: progress && group.is_leader(),
        log_every,
        epochs: args.resume.as_ref().and(args.epochs),
        max_steps: args.resume.as_ref().and(args.max_steps),
        group: group.clone(),
        // Ctrl-C ends the process (removing what it had half written); the last checkpoint stays
        stop: None,
        tensorboard: args.tensorboard.clone(),
    };
    let summary = if let Some(dir) = &args.resume {
        mtl_trainer::train::<Models>(None, dir, true, &options)
            .with_context(|| format!("resuming {}", dir.display()))?
    } else {
        let path = args
            .config
            .as_ref()
            .expect("clap requires --config without --resume");
        let mut config = RunConfig::from_file_with(path, &args.set).context("reading the config")?;
        let overrides = Overrides {
            train: args.data.map(absolute).transpose()?,
            valid: args.valid.map(absolute).transpose()?,
            epochs: args.epochs,
            batch_size: args.batch_size,
            lr: args.lr,
            seed: args.seed,
            max_steps: args.max_steps,
            backend: args.backend,
        };
        config.apply_checked(overrides, &path.display().to_string())?;
        mtl_trainer::train(Some(&config), &args.out, false, &options).context("training")?
    };
    if group.is_leader() {
        print!("{summary}");
    }
    Ok(())
}

/// `mtl models`: every registered type, what it is, its keys (read back from its example
/// with every default filled in, so the list cannot drift from the config type) and the
/// `[model]` table of its example config under `configs/`.
fn models_text() -> String {
    let mut text = String::new();
    for kind in Models::KINDS {
        let (about, example) = Models::about(kind).expect("a registered kind has its text");
        let keys = mtl_trainer::example_model::<Models>(kind)
            .and_then(Result::ok)
            .and_then(|model| toml::Table::try_from(&model).ok())
            .map(|table| {
                table
                    .keys()
                    .filter(|k| *k != "type")
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        text += &format!("{kind}: {about}\n  keys: {keys}\n\n    [model]\n");
        for line in mtl_layers::model_section(example).trim_end().lines() {
            text += &format!("    {line}\n");
        }
        text += "\n";
    }
    text
}

fn eval(args: EvalArgs) -> Result<()> {
    if let Some(out) = &args.out {
        mtl_features::check_output(out, &[&args.data])?;
    }
    let (metrics, report) = mtl_trainer::eval_file_grouped::<Models>(
        &args.model,
        &args.data,
        &args.backend,
        args.bad_rows,
        args.allow_unfinished,
        mtl_trainer::Counting {
            group_by: args.group_by.as_deref(),
            weight: args.weight.as_deref(),
        },
    )
    .with_context(|| format!("evaluating {}", args.model.display()))?;
    println!("read {report}");
    print!("{}", mtl_eval::metrics::metrics_block("metrics:", &metrics));
    if let Some(out) = args.out {
        let json = serde_json::to_vec_pretty(&metrics)?;
        mtl_features::atomic_write(&out, &json)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

fn export(args: ExportArgs) -> Result<()> {
    if args.format != "onnx" {
        anyhow::bail!("--format {}: the one export format is `onnx`", args.format);
    }
    #[cfg(feature = "onnx")]
    {
        let done =
            mtl_serve::onnx::export_onnx::<Models>(&args.model, &args.out, args.batch, args.allow_unfinished)
                .with_context(|| format!("exporting {}", args.model.display()))?;
        if let Some(why) = &done.symbolic_failed {
            eprintln!(
                "warning: the batch axis cannot be symbolic for this model ({why}); fixed at {} rows",
                done.batch.unwrap_or(0)
            );
        }
        println!(
            "wrote {} ({} bytes, batch {}): inputs {}, outputs {}; encoder state in {}.json",
            args.out.display(),
            done.bytes,
            done.batch
                .map_or("symbolic".into(), |n| format!("fixed at {n} rows")),
            done.inputs.join(","),
            done.outputs.join(","),
            args.out.display()
        );
        Ok(())
    }
    #[cfg(not(feature = "onnx"))]
    {
        anyhow::bail!(
            "this mtl was built without ONNX export: build it with `cargo build --release -p mtl-cli --features onnx`"
        )
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let options = mtl_serve::ServeOptions {
        model_dir: args.model.clone(),
        addr: args.addr,
        backend: args.backend,
        limits: mtl_serve::Limits {
            max_body_bytes: args.max_body_bytes,
            max_rows: args.max_rows,
            queue: args.queue,
            body_timeout: std::time::Duration::from_millis(args.body_timeout_ms),
        },
        batching: mtl_serve::Batching {
            max_rows: args.max_batch_rows,
            max_wait: std::time::Duration::from_millis(args.max_wait_ms),
        },
        allow_unfinished: args.allow_unfinished,
    };
    use std::io::Write;
    // a supervisor may have closed its end of stdout: a lost line must not end the server
    mtl_serve::serve::<Models>(options, |s| {
        let mut out = std::io::stdout();
        // a supervisor or test reads the address from this line
        let _ = writeln!(
            out,
            "listening on http://{} (model {}, outputs {})",
            s.addr,
            s.model_id,
            s.outputs.join(",")
        );
        let _ = out.flush();
    })
    .with_context(|| format!("serving {}", args.model.display()))?;
    let _ = writeln!(std::io::stdout(), "stopped");
    Ok(())
}

fn predict(args: PredictArgs) -> Result<()> {
    let (rows, report, names) = mtl_trainer::predict_file::<Models>(
        &args.model,
        &args.data,
        &args.out,
        args.id_column.as_deref(),
        &args.backend,
        args.bad_rows,
        args.allow_unfinished,
    )
    .with_context(|| format!("predicting with {}", args.model.display()))?;
    println!("read {report}");
    println!(
        "wrote {rows} rows of {} to {}{}",
        names.join(","),
        args.out.display(),
        if report.skipped > 0 || args.bad_rows == BadRowPolicy::Skip {
            format!(
                " (first column `{}`: the input line of each row)",
                mtl_trainer::jobs::INPUT_LINE_COLUMN
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

fn demo(args: DemoArgs, progress: bool) -> Result<()> {
    if !(1000..=mtl_synth::MAX_ROWS).contains(&args.rows) {
        bail!(
            "--rows {}: must be between 1000 and {}",
            args.rows,
            mtl_synth::MAX_ROWS
        );
    }
    if !(1..=mtl_trainer::config::MAX_EPOCHS).contains(&args.epochs) {
        bail!(
            "--epochs {}: must be between 1 and {}",
            args.epochs,
            mtl_trainer::config::MAX_EPOCHS
        );
    }
    let dir = match args.dir {
        Some(d) => d,
        None => tempfile::Builder::new().prefix("mtl-demo-").tempdir()?.keep(),
    };
    println!(
        "generating {} rows of synthetic click/conversion data in {}",
        args.rows,
        dir.display()
    );
    let files = generate_ccp(&CcpSpec::small(args.rows, 2022), &dir.join("data"), "synth")
        .map_err(flagged)
        .with_context(|| format!("writing data to {}", dir.display()))?;
    println!(
        "click rate {:.3}, conversion rate among clicks {:.3}",
        files.click_rate, files.cvr_rate
    );
    let data = DataConfig {
        train: files.train.clone().into(),
        valid: Some(files.val.clone().into()),
        test: Some(files.test.clone().into()),
        bad_rows: "fail".into(),
        cache: true,
        cache_dir: None,
        streaming: false,
        shuffle_buffer: 1_000_000,
        shards: None,
        weight: None,
    };
    let train = TrainSettings {
        epochs: args.epochs,
        batch_size: 1024,
        lr: 2e-3,
        weight_decay: 1e-6,
        backend: args.backend.clone(),
        ..TrainSettings::default()
    };
    // the example configs' model tables (configs/esmm-example.toml, configs/mmoe-example.toml)
    for kind in ["esmm", "mmoe"] {
        let model = mtl_trainer::example_model::<Models>(kind).expect("a registered kind")?;
        let out = dir.join(Models::kind(&model));
        let config = RunConfig {
            schema: files.schema.clone(),
            data: data.clone(),
            model,
            train: train.clone(),
            metrics: Default::default(),
        };
        println!();
        let options = TrainOptions {
            progress,
            ..TrainOptions::default()
        };
        let summary = mtl_trainer::train(Some(&config), &out, false, &options)
            .with_context(|| format!("training {}", Models::kind(&config.model)))?;
        print!("{summary}");
    }
    println!(
        "\nnext: mtl eval --model {} --data {}",
        dir.join("esmm").display(),
        files.test.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn every_registered_model_is_listed_with_an_example_that_parses() {
        use mtl_trainer::Registry;
        let text = super::models_text();
        for kind in super::Models::KINDS {
            assert!(
                text.contains(&format!("type = \"{kind}\"")),
                "{kind} missing from:\n{text}"
            );
            let parsed = mtl_trainer::example_model::<super::Models>(kind)
                .unwrap()
                .unwrap();
            assert_eq!(super::Models::kind(&parsed), *kind);
        }
        // keys come from the config types: ESMM's include its defaulted ones
        let esmm = text.lines().find(|l| l.starts_with("esmm:")).unwrap();
        let keys = text.lines().skip_while(|l| *l != esmm).nth(1).unwrap();
        for key in [
            "ctr_tower",
            "cvr_tower",
            "pooling",
            "click_label",
            "conversion_label",
        ] {
            assert!(keys.contains(key), "{key} not in `{keys}`");
        }
    }
}
