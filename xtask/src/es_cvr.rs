//! `cargo xtask es-cvr`: ESMM's entire-space CVR against torch-rechub's on the same files —
//! the measurement of the model-quality issue. For each generator seed, `xtask/peer/gen_data.py`
//! writes 1M rows with the true `p_cvr` of every row; for each training seed both sides train
//! ESMM (example and/or large, 1 epoch, batch 1024, Adam lr 1e-3, weight decay 1e-4, as the
//! bench) and are scored on the test rows: CVR AUC on clicked rows and the Spearman correlation
//! of pCVR with the true `p_cvr` over all rows (the peer's `es_cvr_spearman`, computed the same
//! way here for mtl). Reported per side as mean ± sd over every (generator, training) seed
//! pair, with the difference of means ± 2 standard errors. With `--epochs N` (N > 1) both sides
//! train N epochs and report their validation AUCs after each, to compare how fast each
//! degrades when trained longer.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{Value, json};

use crate::stats::{mean_sd, read_two_columns, spearman};
use crate::{
    build_mtl, model_toml, output_auc, peer, predict_csv, root, run_config, test_auc, train_job, work_dir,
};

/// Options of `cargo xtask es-cvr`.
#[derive(Debug, Args)]
pub struct EsCvrArgs {
    /// Training seeds per data set (`--first-seed`, the next, …).
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// The first training seed.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Generator seeds of the data sets (not the bench's 2022).
    #[arg(long, value_delimiter = ',', default_value = "11,12,13")]
    gen_seeds: Vec<u64>,
    /// ESMM configurations: example, large.
    #[arg(long, value_delimiter = ',', default_value = "example,large")]
    configs: Vec<String>,
    /// Rows per data set.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Training epochs on both sides. More than one also reports the validation AUCs after
    /// every epoch (mtl with its validation file and `early_stopping = false`, so that both
    /// sides train every epoch), to compare how each degrades when trained longer.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// CPU threads, for mtl and the peer alike.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Extra `[train]` lines for mtl (e.g. `embedding = "dense"`), to try a change.
    #[arg(long, default_value = "")]
    mtl_train: String,
    /// mtl's `weight_decay` (the peer's stays 1e-4), to try a stronger decay everywhere.
    #[arg(long, default_value_t = 1e-4)]
    mtl_weight_decay: f64,
    /// Skip torch-rechub (mtl only).
    #[arg(long)]
    no_peer: bool,
    /// Take torch-rechub's figures from an earlier run's `results.json` (same generator and
    /// training seeds) instead of training it again; a pair it lacks is an error.
    #[arg(long, conflicts_with = "no_peer")]
    peer_results: Option<PathBuf>,
    /// Python with torch and torch-rechub [default: .venv-peer/bin/python].
    #[arg(long)]
    peer_python: Option<PathBuf>,
    /// A name for this run's folder (default es-cvr).
    #[arg(long)]
    tag: Option<String>,
}

/// Runs the comparison and writes `target/xtask/<tag>/results.{json,md}`.
pub fn es_cvr(a: &EsCvrArgs) -> Result<()> {
    for c in &a.configs {
        if c != "example" && c != "large" {
            anyhow::bail!("--configs: unknown configuration `{c}` (example, large)");
        }
    }
    let trains_peer = !a.no_peer && a.peer_results.is_none();
    let p = peer::Peer::locate(&root(), a.peer_python.clone(), None, trains_peer)?;
    let mtl = build_mtl()?;
    let dir = work_dir(a.tag.as_deref().unwrap_or("es-cvr"));
    std::fs::create_dir_all(&dir)?;
    let earlier = a.peer_results.as_deref().map(read_results).transpose()?;
    let mut runs = Vec::new();
    for &generator in &a.gen_seeds {
        let prefix = p.gen_data(
            a.rows,
            generator,
            &work_dir(&format!("data/peer-{}-{generator}", a.rows)),
        )?;
        let file = |s: &str| PathBuf::from(format!("{}_{s}", prefix.display()));
        let (schema, train, valid, test) = (
            file("schema.toml"),
            file("train.csv"),
            file("val.csv"),
            file("test.csv"),
        );
        let by_epoch = a.epochs > 1;
        for config in &a.configs {
            for seed in a.first_seed..a.first_seed + a.seeds {
                let name = format!("esmm-{config}-g{generator}-s{seed}");
                let text = with_weight_decay(
                    run_config(
                        &schema,
                        &train,
                        by_epoch.then_some(valid.as_path()),
                        &test,
                        &model_toml("esmm", config)?,
                        seed,
                        &format!(
                            "epochs = {}\nbatch_size = 1024\n{}{}\n",
                            a.epochs,
                            if by_epoch { "early_stopping = false\n" } else { "" },
                            a.mtl_train
                        ),
                    ),
                    a.mtl_weight_decay,
                );
                let (metrics, _) = train_job(&mtl, &name, &text, a.threads, &dir)?;
                let pred = dir.join(format!("{name}-pred.csv"));
                predict_csv(&mtl, &dir.join(&name), &test, &pred, a.threads, Some("p_cvr"))?;
                let (truth, pcvr) = read_two_columns(&pred, "p_cvr", "cvr")?;
                let mut row = json!({ "config": config, "gen_seed": generator, "seed": seed,
                    "mtl": { "cvr_auc_clicked": test_auc(&metrics, "cvr"), "es_cvr_spearman": spearman(&pcvr, &truth),
                             "mean_pcvr": pcvr.iter().sum::<f64>() / pcvr.len().max(1) as f64 } });
                if by_epoch {
                    row["mtl"]["val_by_epoch"] = validation_by_epoch(&metrics);
                }
                if let Some(earlier) = &earlier {
                    row["peer"] = earlier_peer(earlier, config, generator, seed)?;
                } else if !a.no_peer {
                    let line = p.bench_job(
                        &prefix,
                        "ESMM",
                        config,
                        peer::JobOptions {
                            threads: a.threads,
                            seed,
                            batch: 1024,
                            device: "cpu",
                            epochs: a.epochs,
                            avx2: false,
                        },
                        &dir.join("peer-logs"),
                    )?;
                    row["peer"] = json!({ "cvr_auc_clicked": line["auc_cvr_clicked"], "es_cvr_spearman": line["es_cvr_spearman"], "mean_pcvr": line["mean_pcvr"], "val_by_epoch": line["val_by_epoch"] });
                }
                runs.push(row);
                std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&runs)?)?;
            }
        }
    }
    let mut md = table(&runs, a);
    if a.epochs > 1 {
        md += &epoch_table(&runs, a);
    }
    std::fs::write(dir.join("results.md"), &md)?;
    println!("{md}");
    Ok(())
}

/// The runs of an earlier `es-cvr` (its `results.json`, for `--peer-results`).
fn read_results(path: &Path) -> Result<Vec<Value>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not an es-cvr results.json", path.display()))
}

/// torch-rechub's figures for one configuration and pair of seeds, from an earlier run.
fn earlier_peer(earlier: &[Value], config: &str, generator: u64, seed: u64) -> Result<Value> {
    let found = earlier.iter().find(|r| {
        r["config"] == config && r["gen_seed"] == generator && r["seed"] == seed && r["peer"].is_object()
    });
    found.map(|r| r["peer"].clone()).with_context(|| {
        format!(
            "--peer-results: no torch-rechub figures for {config} at generator seed {generator}, training seed {seed}"
        )
    })
}

/// `config` (a [`run_config`] text, which sets the bench's `weight_decay = 1e-4`) with
/// `weight_decay` instead.
fn with_weight_decay(config: String, weight_decay: f64) -> String {
    let bench = "\nweight_decay = 1e-4\n";
    debug_assert!(
        config.contains(bench),
        "run_config no longer sets weight_decay = 1e-4"
    );
    config.replacen(bench, &format!("\nweight_decay = {weight_decay:e}\n"), 1)
}

/// mtl's validation AUCs after each epoch, from `metrics.json`'s history, in the peer's keys.
fn validation_by_epoch(metrics: &Value) -> Value {
    let auc = |eval: &Value, output: &str| output_auc(&eval["valid"], output);
    let epochs: Vec<Value> = metrics["history"]
        .as_array()
        .map(|h| h.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|e| json!({ "auc_ctr": auc(e, "ctr"), "auc_cvr_clicked": auc(e, "cvr"), "auc_ctcvr": auc(e, "ctcvr") }))
        .collect();
    Value::Array(epochs)
}

/// `mean ± sd` to 4 places, or `–` with no values.
fn mean_sd_cell(v: &[f64]) -> String {
    mean_sd(v).map_or("–".into(), |(m, sd)| format!("{m:.4} ± {sd:.4}"))
}

/// Validation AUCs by epoch, mean ± sd over the pairs, both sides.
fn epoch_table(runs: &[Value], a: &EsCvrArgs) -> String {
    let mut md = format!(
        "\nValidation AUC after each epoch ({} epochs, mtl with `early_stopping = false`), mean ± sd over all pairs:\n\n| config | epoch | CTR mtl | CTR torch-rechub | CVR (clicked) mtl | CVR (clicked) torch-rechub | CTCVR mtl | CTCVR torch-rechub |\n|---|---|---|---|---|---|---|---|\n",
        a.epochs
    );
    for config in &a.configs {
        for e in 0..a.epochs {
            let cell = |side: &str, key: &str| {
                let v: Vec<f64> = runs
                    .iter()
                    .filter(|r| r["config"] == config.as_str())
                    .filter_map(|r| r[side]["val_by_epoch"][e][key].as_f64())
                    .collect();
                mean_sd_cell(&v)
            };
            md += &format!("| {config} | {} |", e + 1);
            for key in ["auc_ctr", "auc_cvr_clicked", "auc_ctcvr"] {
                md += &format!(" {} | {} |", cell("mtl", key), cell("peer", key));
            }
            md += "\n";
        }
    }
    md
}

fn table(runs: &[Value], a: &EsCvrArgs) -> String {
    let mut md = format!(
        "ESMM on `xtask/peer/gen_data.py --rows {} --seed G` for G in {:?}, training seeds {}–{} on both sides, {} epoch{}; test rows; mean ± sd over all pairs, and mtl − torch-rechub ± 2 standard errors:\n\n| config | metric | mtl | torch-rechub | difference |\n|---|---|---|---|---|\n",
        a.rows,
        a.gen_seeds,
        a.first_seed,
        a.first_seed + a.seeds - 1,
        a.epochs,
        if a.epochs == 1 { "" } else { "s" }
    );
    for config in &a.configs {
        for metric in ["cvr_auc_clicked", "es_cvr_spearman"] {
            let side = |s: &str| -> Vec<f64> {
                runs.iter()
                    .filter(|r| r["config"] == config.as_str())
                    .filter_map(|r| r[s][metric].as_f64())
                    .collect()
            };
            let (m, p) = (side("mtl"), side("peer"));
            let diff = match (mean_sd(&m), mean_sd(&p)) {
                (Some((mm, ms)), Some((pm, ps))) => {
                    let se = (ms * ms / m.len() as f64 + ps * ps / p.len() as f64).sqrt();
                    format!("{:+.4} ± {:.4}", mm - pm, 2.0 * se)
                }
                _ => "–".into(),
            };
            md += &format!(
                "| {config} | {metric} | {} | {} | {diff} |\n",
                mean_sd_cell(&m),
                mean_sd_cell(&p)
            );
        }
    }
    md
}
