//! `cargo xtask`: data generation, benchmarks, quality checks and validation for mtl.
//!
//! Heavy work runs in the release `mtl` binary (built first); xtask itself only orchestrates
//! and summarises, so it compiles in seconds and never builds burn in the debug profile.

mod stats;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

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
    /// samples/s, peak RSS and per-task AUC for ESMM and MMOE (example and large configs).
    Bench {
        /// A small run (100k rows, short micro-benchmarks) that finishes in minutes.
        #[arg(long)]
        quick: bool,
        /// Rows of generated data (default 1,000,000; 100,000 with --quick).
        #[arg(long)]
        rows: Option<usize>,
        /// CPU threads for mtl.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Skip the criterion micro-benchmarks.
        #[arg(long)]
        no_micro: bool,
        /// Embedding updates: sparse (row-wise) or dense.
        #[arg(long, default_value = "sparse")]
        embedding: String,
    },
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
    },
    /// What CI runs: cargo fmt --check, the tests, clippy.
    Validate,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::GenData { args } => {
            let mtl = build_mtl()?;
            run(Command::new(mtl).arg("gen-data").args(args))
        }
        Task::Bench {
            quick,
            rows,
            threads,
            no_micro,
            embedding,
        } => bench(quick, rows, threads, no_micro, &embedding),
        Task::Quality { quick, threads } => quality(quick, threads),
        Task::Validate => validate(),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
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
    eprintln!("== building the release mtl binary");
    run(cargo().args(["build", "--release", "-p", "mtl-cli"]))?;
    Ok(target_dir().join("release").join("mtl"))
}

/// Generates (or reuses) click/conversion data and returns its directory.
fn ccp_data(mtl: &Path, rows: usize, seed: u64) -> Result<PathBuf> {
    let dir = work_dir(&format!("data/ccp-{rows}-{seed}"));
    if !dir.join("synth_ccp_schema.toml").exists() {
        run(Command::new(mtl)
            .args([
                "gen-data",
                "ccp",
                "--rows",
                &rows.to_string(),
                "--seed",
                &seed.to_string(),
                "--out",
            ])
            .arg(&dir))?;
    } else {
        eprintln!("== reusing {}", dir.display());
    }
    Ok(dir)
}

const ESMM: [(&str, &str); 2] = [("example", "[16, 8]"), ("large", "[256, 128, 64]")];
const MMOE: [(&str, &str, &str); 2] = [("example", "[16]", "[8]"), ("large", "[256, 128]", "[64]")];

fn model_toml(model: &str, size: &str) -> String {
    if model == "esmm" {
        let dims = ESMM
            .iter()
            .find(|e| e.0 == size)
            .map(|e| e.1)
            .unwrap_or("[16, 8]");
        format!("type = \"esmm\"\nctr_tower = {{ dims = {dims} }}\ncvr_tower = {{ dims = {dims} }}\n")
    } else {
        let (_, e, t) = MMOE.iter().find(|e| e.0 == size).copied().unwrap_or(MMOE[0]);
        format!(
            "type = \"mmoe\"\nn_experts = 8\nexpert = {{ dims = {e} }}\ntower = {{ dims = {t} }}\ntasks = [{{ label = \"click\" }}, {{ label = \"purchase\" }}]\n"
        )
    }
}

fn run_config(
    schema: &Path,
    train: &Path,
    valid: Option<&Path>,
    test: &Path,
    model: &str,
    extra: &str,
) -> String {
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let valid = valid.map(|v| format!("valid = {}\n", q(v))).unwrap_or_default();
    format!(
        "schema = {}\n[data]\ntrain = {}\n{valid}test = {}\n[model]\n{model}\n[train]\nlr = 1e-3\nweight_decay = 1e-4\nseed = 2022\n{extra}",
        q(schema),
        q(train),
        q(test)
    )
}

/// Trains one job in a child `mtl` process and returns its metrics.json and wall seconds.
fn train_job(mtl: &Path, name: &str, config: &str, threads: usize, dir: &Path) -> Result<(Value, f64)> {
    std::fs::create_dir_all(dir)?;
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, config)?;
    let out = dir.join(name);
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    eprintln!("== {name}");
    let started = Instant::now();
    run(Command::new(mtl)
        .args(["--quiet", "--threads", &threads.to_string(), "train", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&out))?;
    let secs = started.elapsed().as_secs_f64();
    let metrics: Value = serde_json::from_slice(&std::fs::read(out.join("metrics.json"))?)?;
    Ok((metrics, secs))
}

fn test_auc(metrics: &Value, output: &str) -> Option<f64> {
    metrics["test"].as_array()?.iter().find(|m| m["name"] == output)?["binary"]["auc"].as_f64()
}

fn test_metric(metrics: &Value, output: &str, name: &str) -> Option<f64> {
    let m = metrics["test"].as_array()?.iter().find(|m| m["name"] == output)?;
    m["binary"][name]
        .as_f64()
        .or_else(|| m["regression"][name].as_f64())
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

fn bench(quick: bool, rows: Option<usize>, threads: usize, no_micro: bool, embedding: &str) -> Result<()> {
    let rows = rows.unwrap_or(if quick { 100_000 } else { 1_000_000 });
    let mtl = build_mtl()?;
    let data = ccp_data(&mtl, rows, 2022)?;
    let dir = work_dir("bench");
    let mut results = Vec::new();
    for model in ["esmm", "mmoe"] {
        for size in ["example", "large"] {
            let name = format!("{model}-{size}");
            let config = run_config(
                &data.join("synth_ccp_schema.toml"),
                &data.join("synth_ccp_train.csv"),
                None,
                &data.join("synth_ccp_test.csv"),
                &model_toml(model, size),
                &format!("epochs = 1\nbatch_size = 1024\nembedding = \"{embedding}\"\n"),
            );
            let (m, secs) = train_job(&mtl, &name, &config, threads, &dir)?;
            let (first, second, third) = if model == "esmm" {
                ("ctr", "cvr", "ctcvr")
            } else {
                ("click", "purchase", "")
            };
            results.push(json!({
                "job": name,
                "rows_train": m["train_rows"],
                "threads": threads,
                "embedding": embedding,
                "train_samples_per_sec": m["samples_per_sec"],
                "inference_samples_per_sec": m["inference_samples_per_sec"],
                "peak_rss_mb": m["peak_rss_mb"],
                "data_wait_fraction": m["data_wait_fraction"],
                "auc": { first: test_auc(&m, first), second: test_auc(&m, second), third: test_auc(&m, third) },
                "wall_secs": secs,
            }));
        }
    }
    let mut md = format!(
        "Data: `mtl gen-data ccp --rows {rows} --seed 2022` (80 % train, 10 % test), 1 epoch, batch 1024, {threads} threads, embedding updates {embedding}.\n\n| job | train samples/s | inference samples/s | peak RSS | AUC (test) | batch building | wall |\n|---|---|---|---|---|---|---|\n"
    );
    for r in &results {
        let auc = r["auc"].as_object().map(|o| {
            o.iter()
                .filter(|(k, v)| !k.is_empty() && !v.is_null())
                .map(|(k, v)| format!("{k} {:.4}", v.as_f64().unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(", ")
        });
        md += &format!(
            "| {} | {} | {} | {} MB | {} | {:.1} % | {:.0} s |\n",
            r["job"].as_str().unwrap_or(""),
            fmt(r["train_samples_per_sec"].as_f64(), 0),
            fmt(r["inference_samples_per_sec"].as_f64(), 0),
            fmt(r["peak_rss_mb"].as_f64(), 0),
            auc.unwrap_or_default(),
            100.0 * r["data_wait_fraction"].as_f64().unwrap_or(0.0),
            r["wall_secs"].as_f64().unwrap_or(0.0)
        );
    }
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&results)?)?;
    std::fs::write(dir.join("results.md"), &md)?;
    println!("{md}");
    println!("wrote {} and results.md", dir.join("results.json").display());
    if !no_micro {
        eprintln!("== criterion micro-benchmarks");
        let mut c = cargo();
        c.args(["bench", "-p", "mtl-trainer", "--bench", "micro", "--"]);
        if quick {
            c.args(["--warm-up-time", "1", "--measurement-time", "2"]);
        }
        run(&mut c)?;
    }
    Ok(())
}

fn quality(quick: bool, threads: usize) -> Result<()> {
    let mtl = build_mtl()?;
    let dir = work_dir("quality");
    std::fs::create_dir_all(&dir)?;
    let mut report = json!({});

    // (1) ESMM's pCVR over the entire space vs a CVR model trained on clicked rows only
    let rows = if quick { 200_000 } else { 1_000_000 };
    let data = ccp_data(&mtl, rows, 2022)?;
    let schema = data.join("synth_ccp_schema.toml");
    let (train, valid, test) = (
        data.join("synth_ccp_train.csv"),
        data.join("synth_ccp_val.csv"),
        data.join("synth_ccp_test.csv"),
    );
    let clicked = dir.join("clicked_train.csv");
    stats::filter_clicked(&train, &clicked)?;
    let esmm = run_config(
        &schema,
        &train,
        Some(&valid),
        &test,
        &model_toml("esmm", "example"),
        "epochs = 2\n",
    );
    let naive_model = "type = \"shared_bottom\"\nbottom = { dims = [16, 8] }\ntower = { dims = [] }\ntasks = [{ label = \"purchase\", name = \"cvr\" }]\n";
    let naive = run_config(
        &schema,
        &clicked,
        Some(&valid),
        &test,
        naive_model,
        "epochs = 2\n",
    );
    let mut cvr_rows = Vec::new();
    for (name, config, column) in [("esmm", esmm, "cvr"), ("naive-cvr", naive, "cvr")] {
        train_job(&mtl, name, &config, threads, &dir)?;
        let pred = dir.join(format!("{name}-pred.csv"));
        run(Command::new(&mtl)
            .args(["--quiet", "--threads", &threads.to_string(), "predict", "--model"])
            .arg(dir.join(name))
            .arg("--data")
            .arg(&test)
            .arg("--out")
            .arg(&pred)
            .args(["--id-column", "p_cvr"]))?;
        let (truth, scores) = stats::read_two_columns(&pred, "p_cvr", column)?;
        let spearman = stats::spearman(&scores, &truth);
        let soft_auc = stats::soft_auc(&scores, &truth);
        cvr_rows.push(json!({ "model": name, "rows": truth.len(), "spearman_vs_true_p_cvr": spearman, "auc_vs_true_p_cvr": soft_auc }));
    }
    report["cvr_entire_space"] = json!(cvr_rows);

    // (2) MMOE, OMoE, Shared-Bottom as the task correlation falls
    let rows = if quick { 30_000 } else { 100_000 };
    let mut moe_rows = Vec::new();
    for corr in [1.0, 0.9, 0.5] {
        let data = work_dir(&format!("data/mmoe-{rows}-{corr}"));
        if !data.join("mmoe_synth_schema.toml").exists() {
            run(Command::new(&mtl)
                .args([
                    "gen-data",
                    "mmoe-synthetic",
                    "--rows",
                    &rows.to_string(),
                    "--correlation",
                    &corr.to_string(),
                    "--out",
                ])
                .arg(&data))?;
        }
        let tasks = "tasks = [{ label = \"y1\" }, { label = \"y2\" }]\n";
        let models = [
            (
                "mmoe",
                format!(
                    "type = \"mmoe\"\nn_experts = 8\nexpert = {{ dims = [16] }}\ntower = {{ dims = [8] }}\n{tasks}"
                ),
            ),
            (
                "omoe",
                format!(
                    "type = \"omoe\"\nn_experts = 8\nexpert = {{ dims = [16] }}\ntower = {{ dims = [8] }}\n{tasks}"
                ),
            ),
            (
                "shared_bottom",
                format!(
                    "type = \"shared_bottom\"\nbottom = {{ dims = [113] }}\ntower = {{ dims = [8] }}\n{tasks}"
                ),
            ),
        ];
        for (name, model) in models {
            let config = run_config(
                &data.join("mmoe_synth_schema.toml"),
                &data.join("mmoe_synth_train.csv"),
                Some(&data.join("mmoe_synth_val.csv")),
                &data.join("mmoe_synth_test.csv"),
                &model,
                "epochs = 5\nbatch_size = 256\n",
            );
            let (m, _) = train_job(&mtl, &format!("{name}-corr{corr}"), &config, threads, &dir)?;
            let (a, b) = (test_metric(&m, "y1", "mse"), test_metric(&m, "y2", "mse"));
            moe_rows.push(
                json!({ "correlation": corr, "model": name, "test_mse_y1": a, "test_mse_y2": b,
                "test_mse_mean": a.zip(b).map(|(a, b)| (a + b) / 2.0) }),
            );
        }
    }
    report["mmoe_synthetic"] = json!(moe_rows);

    let mut md = String::from(
        "| CVR model | rows | Spearman vs true p_cvr | AUC vs true p_cvr |\n|---|---|---|---|\n",
    );
    for r in &cvr_rows {
        md += &format!(
            "| {} | {} | {} | {} |\n",
            r["model"].as_str().unwrap_or(""),
            r["rows"],
            fmt(r["spearman_vs_true_p_cvr"].as_f64(), 4),
            fmt(r["auc_vs_true_p_cvr"].as_f64(), 4)
        );
    }
    md += "\n| correlation | MMOE test MSE | OMoE test MSE | Shared-Bottom test MSE |\n|---|---|---|---|\n";
    for corr in [1.0, 0.9, 0.5] {
        let get = |name: &str| {
            moe_rows
                .iter()
                .find(|r| r["model"] == name && r["correlation"].as_f64() == Some(corr))
                .and_then(|r| r["test_mse_mean"].as_f64())
        };
        md += &format!(
            "| {corr} | {} | {} | {} |\n",
            fmt(get("mmoe"), 4),
            fmt(get("omoe"), 4),
            fmt(get("shared_bottom"), 4)
        );
    }
    std::fs::write(dir.join("quality.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(dir.join("quality.md"), &md)?;
    println!("{md}");
    println!("wrote {}", dir.join("quality.json").display());
    Ok(())
}

fn validate() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "test",
        "--workspace",
        "--features",
        "mtl-features/ndarray,mtl-features/wgpu",
    ]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    println!("validate: fmt, tests and clippy passed");
    Ok(())
}
