//! `cargo xtask`: data generation, benchmarks, quality checks and validation for mtl.
//!
//! Heavy work runs in the release `mtl` binary (built first); xtask itself only orchestrates
//! and summarises, so it compiles in seconds and never builds burn in the debug profile.

mod attention_quality;
mod bench;
mod chain_quality;
mod es_cvr;
mod gpu;
mod onnx_check;
mod peer;
mod priors;
mod quality;
mod read_bench;
mod scale;
mod serve_load;
mod stats;
mod stream_bench;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::Value;

/// mtl project automation.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Generate synthetic data (delegates to `mtl gen-data`; see `mtl gen-data --help`).
    GenData {
        /// `ccp` or `mmoe-synthetic`, then that generator's flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Criterion micro-benchmarks and an end-to-end run: train samples/s, inference
    /// samples/s, peak RSS and per-task AUC for ESMM and MMOE (example and large configs);
    /// with `--peer`, torch-rechub on the same files in the same run, and the ratios.
    Bench(Box<bench::BenchArgs>),
    /// Checks that the models are right, not just fast: ESMM's entire-space pCVR against the
    /// truth next to a clicked-rows-only CVR model; MMOE vs OMoE vs Shared-Bottom as task
    /// correlation falls.
    Quality {
        /// Smaller data sets.
        #[arg(long)]
        quick: bool,
        /// CPU threads for mtl.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Training seeds: every section trains each of its models once per seed and reports
        /// means ± standard errors.
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// Sections to run: `cvr` (ESMM vs clicked-rows CVR, calibration), `mmoe` (the MMoE
        /// paper's ordering), `chain` (the conversion chain), `attention` (DIN's target
        /// attention vs mean pooling).
        #[arg(long, value_delimiter = ',', default_value = "cvr,mmoe,chain,attention")]
        sections: Vec<String>,
    },
    /// Load test of `mtl serve` on loopback: latency and rows/s at concurrency 1, 16 and 64
    /// for ESMM example and MMOE large, a storm of malformed requests among good ones, peak
    /// RSS and a clean SIGTERM.
    ServeLoad(serve_load::LoadArgs),
    /// The prepared GPU run (needs an NVIDIA GPU): parity on wgpu and CUDA, then the ESMM and
    /// MMOE benches on CUDA, wgpu and the CPU, at GPU batch sizes too, torch-rechub on CUDA
    /// beside them; one results file.
    Gpu(gpu::GpuArgs),
    /// ONNX export checked against onnxruntime (installed into .venv-onnx by this task): the
    /// exported graphs' scores vs `mtl predict`'s on the same file, within 1e-5.
    OnnxCheck {
        /// Smaller data.
        #[arg(long)]
        quick: bool,
    },
    /// ESMM's entire-space CVR against torch-rechub's over generator and training seeds (CVR
    /// AUC on clicked rows, Spearman of pCVR with the true p_cvr on all rows).
    EsCvr(es_cvr::EsCvrArgs),
    /// The same rows read as CSV, Parquet (zstd, snappy) and from the encoded cache: rows/s
    /// to encoded rows and peak RSS.
    ReadBench(read_bench::ReadBenchArgs),
    /// Training past memory: 50M generated rows as Parquet shards, streamed; speed, peak RSS
    /// and AUC against in-memory training on a subset.
    StreamBench(stream_bench::StreamBenchArgs),
    /// Per-field embedding widths: the same rows with uniform and mixed widths (speed, table
    /// size, AUC).
    WidthsBench(read_bench::WidthsBenchArgs),
    /// Data-parallel training over MPI measured: ESMM and MMOE large as 1 process × 1 and × 2
    /// threads and as N ranks × 1 thread (samples/s, AUCs over seeds, RSS per rank, time and
    /// bytes in collectives), and the speed-up expected at 8 and 64 ranks. Needs `mpirun`.
    Scale(scale::ScaleArgs),
    /// Label priors measured: each output's test ECE, AUC and mean prediction after one epoch
    /// with and without `label_priors`, for MMOE, PLE, AITM and the chain, over seeds.
    Priors(priors::PriorsArgs),
    /// What CI runs: cargo fmt --check, the tests (the MPI tests too), clippy.
    Validate,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::GenData { args } => {
            let mtl = build_mtl()?;
            run(Command::new(mtl).arg("gen-data").args(args))
        }
        Task::Bench(args) => bench::bench(&args),
        Task::Quality {
            quick,
            threads,
            seeds,
            sections,
        } => quality::quality(quick, threads, seeds, &sections),
        Task::ServeLoad(args) => serve_load::serve_load(&args),
        Task::Gpu(args) => gpu::gpu(&args),
        Task::OnnxCheck { quick } => onnx_check::onnx_check(quick),
        Task::Priors(args) => priors::priors(&args),
        Task::EsCvr(args) => es_cvr::es_cvr(&args),
        Task::ReadBench(args) => read_bench::read_bench(&args),
        Task::StreamBench(args) => stream_bench::stream_bench(&args),
        Task::WidthsBench(args) => read_bench::widths_bench(&args),
        Task::Scale(args) => scale::scale(&args),
        Task::Validate => validate(),
    }
}

fn root() -> PathBuf {
    // at run time (`cargo xtask` sets it): a binary reused through a shared target directory
    // was built in another clone
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn work_dir(name: &str) -> PathBuf {
    target_dir().join("xtask").join(name)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Builds the release `mtl` binary (flex only) and returns its path.
fn build_mtl() -> Result<PathBuf> {
    build_mtl_with("")
}

/// Builds the release `mtl` binary with the cargo `features` of `mtl-cli` (e.g. `wgpu,cuda`).
fn build_mtl_with(features: &str) -> Result<PathBuf> {
    eprintln!(
        "== building the release mtl binary{}",
        if features.is_empty() {
            String::new()
        } else {
            format!(" with {features}")
        }
    );
    let mut c = cargo();
    c.args(["build", "--release", "-p", "mtl-cli"]);
    if !features.is_empty() {
        c.args(["--features", features]);
    }
    run(&mut c)?;
    Ok(target_dir().join("release").join("mtl"))
}

/// Generates (or reuses) click/conversion data and returns its directory.
fn ccp_data(mtl: &Path, rows: usize, seed: u64) -> Result<PathBuf> {
    ccp_data_with(mtl, &format!("ccp-{rows}-{seed}"), rows, seed, &[])
}

/// Generates (or reuses) click/conversion data under `data/<name>` with extra `mtl gen-data
/// ccp` flags (e.g. `--small --dense 3`) and returns its directory.
fn ccp_data_with(mtl: &Path, name: &str, rows: usize, seed: u64, extra: &[&str]) -> Result<PathBuf> {
    let dir = work_dir(&format!("data/{name}"));
    if !dir.join("synth_ccp_schema.toml").exists() {
        run(Command::new(mtl)
            .args([
                "gen-data",
                "ccp",
                "--rows",
                &rows.to_string(),
                "--seed",
                &seed.to_string(),
            ])
            .args(extra)
            .arg("--out")
            .arg(&dir))?;
    } else {
        eprintln!("== reusing {}", dir.display());
    }
    Ok(dir)
}

/// The `[model]` table (with its `type`) of `configs/{model}-{size}.toml`, size `example` or
/// `large`: the example configs are the one home of every model table the benches train.
fn model_toml(model: &str, size: &str) -> Result<String> {
    let path = root().join("configs").join(format!("{model}-{size}.toml"));
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let table = config
        .get("model")
        .and_then(toml::Value::as_table)
        .with_context(|| format!("{}: no [model] table", path.display()))?;
    // one `key = value` line per key, nested tables inline, to go under `[model]`
    Ok(table
        .iter()
        .map(|(key, value)| format!("{key} = {value}\n"))
        .collect())
}

/// What every section runs with: the `mtl` binary, the output folder, the data size, the
/// threads and the training seeds.
#[derive(Debug, Clone, Copy)]
pub struct Section<'a> {
    /// The release `mtl` binary.
    pub mtl: &'a Path,
    /// Where the runs go.
    pub dir: &'a Path,
    /// Smaller data sets.
    pub quick: bool,
    /// CPU threads for mtl.
    pub threads: usize,
    /// Training seeds per model.
    pub seeds: u64,
}

fn run_config(
    schema: &Path,
    train: &Path,
    valid: Option<&Path>,
    test: &Path,
    model: &str,
    seed: u64,
    extra: &str,
) -> String {
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let valid = valid.map(|v| format!("valid = {}\n", q(v))).unwrap_or_default();
    format!(
        "schema = {}\n[data]\ntrain = {}\n{valid}test = {}\n[model]\n{model}\n[train]\nlr = 1e-3\nweight_decay = 1e-4\nseed = {seed}\n{extra}",
        q(schema),
        q(train),
        q(test)
    )
}

/// Runs `mtl predict` of `model_dir` on `data` into `out`, carrying `id_column` along.
fn predict_csv(
    mtl: &Path,
    model_dir: &Path,
    data: &Path,
    out: &Path,
    threads: usize,
    id_column: Option<&str>,
) -> Result<()> {
    let mut cmd = Command::new(mtl);
    cmd.args(["--quiet", "--threads", &threads.to_string(), "predict", "--model"])
        .arg(model_dir)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out);
    if let Some(column) = id_column {
        cmd.args(["--id-column", column]);
    }
    run(&mut cmd)
}

/// Trains one job in a child `mtl` process and returns its metrics.json and wall seconds.
fn train_job(mtl: &Path, name: &str, config: &str, threads: usize, dir: &Path) -> Result<(Value, f64)> {
    train_job_as(Command::new(mtl), name, config, threads, &[], dir)
}

/// [`train_job`] run by `mtl`, the command that starts the binary (`mtl` itself, or `mpirun …
/// mtl`).
fn train_job_as(
    mut mtl: Command,
    name: &str,
    config: &str,
    threads: usize,
    train_args: &[&str],
    dir: &Path,
) -> Result<(Value, f64)> {
    std::fs::create_dir_all(dir)?;
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, config)?;
    let out = dir.join(name);
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    eprintln!("== {name}");
    let started = Instant::now();
    run(mtl
        .args(["--quiet", "--threads", &threads.to_string(), "train", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .args(train_args))?;
    let secs = started.elapsed().as_secs_f64();
    let metrics: Value = serde_json::from_slice(&std::fs::read(out.join("metrics.json"))?)?;
    Ok((metrics, secs))
}

fn test_auc(metrics: &Value, output: &str) -> Option<f64> {
    output_auc(&metrics["test"], output)
}

/// The AUC of `output` in a list of per-output metrics (`metrics.json`'s `test`, or an
/// evaluation's `valid`).
fn output_auc(list: &Value, output: &str) -> Option<f64> {
    list.as_array()?.iter().find(|m| m["name"] == output)?["binary"]["auc"].as_f64()
}

fn test_metric(metrics: &Value, output: &str, name: &str) -> Option<f64> {
    let m = metrics["test"].as_array()?.iter().find(|m| m["name"] == output)?;
    m["binary"][name]
        .as_f64()
        .or_else(|| m["regression"][name].as_f64())
}

fn validate() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "test",
        "--workspace",
        "--features",
        "mtl-features/ndarray,mtl-features/wgpu",
    ]))?;
    run(cargo()
        .args([
            "test",
            "--workspace",
            "--features",
            "mtl-features/ndarray,mtl-features/wgpu,mtl-cli/mpi",
            "--test",
            "mpi",
        ])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        "mtl-cli/mpi",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("validate: fmt, tests (MPI's too) and clippy passed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_model_tables_are_the_example_configs() {
        // every size the benches train, for every model that has it: the table spliced under
        // `[model]` of a bench's run config reads back as the config file's own table
        let mut checked = 0;
        for model in ["esmm", "mmoe", "ple", "aitm"] {
            for size in ["example", "large"] {
                let path = root().join("configs").join(format!("{model}-{size}.toml"));
                let file: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                let text = run_config(
                    Path::new("s"),
                    Path::new("t"),
                    None,
                    Path::new("u"),
                    &model_toml(model, size).unwrap(),
                    1,
                    "",
                );
                let bench: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));
                assert_eq!(bench["model"], file["model"], "{}", path.display());
                checked += 1;
            }
        }
        assert_eq!(checked, 8);
        assert!(model_toml("esmm", "huge").is_err());
    }
}
