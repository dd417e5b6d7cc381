//! `cargo xtask priors`: what starting every output at its label's base rate (`[train]
//! label_priors`, on by default) does after one epoch, per model: each output's test ECE, AUC
//! and mean prediction against the observed rate, with and without, over training seeds, on
//! generated data (click/conversion data for MMOE, PLE and AITM; the conversion chain for the
//! chain). Writes `target/xtask/priors/results.md`.

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

use crate::chain_quality::chain_data_seeded;
use crate::stats::mean_sd;
use crate::{build_mtl, ccp_data_with, model_toml, run_config, test_metric, train_job, work_dir};

/// `cargo xtask priors` options.
#[derive(Debug, Args)]
pub struct PriorsArgs {
    /// Rows of each generated data set (80 % train, 10 % test).
    #[arg(long, default_value_t = 200_000)]
    rows: usize,
    /// Training seeds (1, 2, …).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Data-generator seeds: every model trains on one data set per seed.
    #[arg(long, value_delimiter = ',', default_value = "7,8")]
    data_seeds: Vec<u64>,
    /// CPU threads for mtl.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// Runs every model with and without priors and prints the table.
pub fn priors(args: &PriorsArgs) -> Result<()> {
    let mtl = build_mtl()?;
    let dir = work_dir("priors");
    let mut md = format!(
        "`cargo xtask priors --rows {} --seeds {} --data-seeds {}`: one epoch of each `configs/*-example.toml`, test metrics, mean ± sd over {} runs (training seeds 1–{} on each data set)\n\n| model | output | ECE without | ECE with | AUC without | AUC with | mean prediction without / with (observed) |\n|---|---|---|---|---|---|---|\n",
        args.rows,
        args.seeds,
        args.data_seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
        args.seeds as usize * args.data_seeds.len(),
        args.seeds
    );
    for (name, config) in [
        ("mmoe", "mmoe"),
        ("ple", "ple"),
        ("aitm", "aitm"),
        ("chain", "esmm-chain"),
    ] {
        let model = model_toml(config, "example")?;
        let mut runs: [Vec<Value>; 2] = [Vec::new(), Vec::new()];
        for &data_seed in &args.data_seeds {
            let (data, stem) = match name {
                "chain" => (chain_data_seeded(&mtl, args.rows, data_seed)?, "synth_chain"),
                _ => {
                    let set = format!("ccp-small-{}-{data_seed}", args.rows);
                    (
                        ccp_data_with(&mtl, &set, args.rows, data_seed, &["--small"])?,
                        "synth_ccp",
                    )
                }
            };
            let file = |part: &str| data.join(format!("{stem}_{part}"));
            for (k, priors) in [false, true].into_iter().enumerate() {
                for seed in 1..=args.seeds {
                    let extra = format!("epochs = 1\nbatch_size = 1024\nlabel_priors = {priors}\n");
                    let (schema, train, test) = (file("schema.toml"), file("train.csv"), file("test.csv"));
                    let text = run_config(&schema, &train, None, &test, &model, seed, &extra);
                    let job = format!("{name}-{data_seed}-{priors}-{seed}");
                    runs[k].push(train_job(&mtl, &job, &text, args.threads, &dir)?.0);
                }
            }
        }
        md += &rows_of(name, &runs)?;
    }
    std::fs::write(dir.join("results.md"), &md)?;
    println!("{md}");
    Ok(())
}

/// One table row per output of model `name`: `runs[0]` without priors, `runs[1]` with.
fn rows_of(name: &str, runs: &[Vec<Value>; 2]) -> Result<String> {
    let outputs: Vec<String> = runs[0][0]["test"]
        .as_array()
        .context("metrics.json: no test metrics")?
        .iter()
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect();
    let mut md = String::new();
    for output in &outputs {
        let stat = |k: usize, metric: &str, digits: usize| -> String {
            let values: Vec<f64> = runs[k]
                .iter()
                .filter_map(|m| test_metric(m, output, metric))
                .collect();
            mean_sd(&values).map_or("–".into(), |(m, sd)| format!("{m:.digits$} ± {sd:.digits$}"))
        };
        let observed: Vec<f64> = runs[0]
            .iter()
            .filter_map(|m| test_metric(m, output, "observed_rate"))
            .collect();
        let observed = mean_sd(&observed).map_or(f64::NAN, |(m, _)| m);
        md += &format!(
            "| {name} | {output} | {} | {} | {} | {} | {} / {} ({observed:.4}) |\n",
            stat(0, "ece", 4),
            stat(1, "ece", 4),
            stat(0, "auc", 4),
            stat(1, "auc", 4),
            stat(0, "mean_prediction", 4),
            stat(1, "mean_prediction", 4),
        );
    }
    Ok(md)
}
