//! `cargo xtask quality`: model quality on data with a known truth, over several training
//! seeds (mean ± standard error), written to `target/xtask/quality/quality.{json,md}`.
//!
//! 1. ESMM's and ESCM²'s (IPS, DR) entire-space pCVR against a CVR model with the same tower
//!    trained on clicked rows only, all scored on every test impression against the
//!    generator's true `p_cvr`, over two generated data sets; with ESMM's expected calibration
//!    error per output before and after Platt scaling.
//! 2. The MMoE paper's synthetic experiment: MMOE, OMoE and Shared-Bottom as the task
//!    correlation falls (1.0, 0.9, 0.5), each seed a fresh data set and training seed.
//! 3. The conversion chain ([`crate::chain_quality`]).
//! 4. DIN's target attention against mean pooling ([`crate::attention_quality`]).

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use serde_json::{Value, json};

use crate::stats::{self, mean_se};
use crate::{
    Section, attention_quality, build_mtl, ccp_data, chain_quality, model_toml, predict_csv, run, run_config,
    test_metric, train_job, work_dir,
};

/// The sections, in the order they run.
const SECTIONS: [&str; 4] = ["cvr", "mmoe", "chain", "attention"];

/// `mean ± se` of the numbers at `key` of `rows` that pass `keep`.
fn cell(rows: &[Value], keep: impl Fn(&Value) -> bool, key: &str, digits: usize) -> String {
    let xs: Vec<f64> = rows
        .iter()
        .filter(|r| keep(r))
        .filter_map(|r| r[key].as_f64())
        .collect();
    stats::mean_se_text(&xs, digits)
}

/// Runs the chosen sections (`cvr`, `mmoe`, `chain`, `attention`); writes `quality.{json,md}`, or
/// `quality-<sections>.{json,md}` for a subset.
pub fn quality(quick: bool, threads: usize, seeds: u64, sections: &[String]) -> Result<()> {
    for s in sections {
        if !SECTIONS.contains(&s.as_str()) {
            anyhow::bail!(
                "--sections: unknown section `{s}` (sections: {})",
                SECTIONS.join(", ")
            );
        }
    }
    let mtl = build_mtl()?;
    let dir = work_dir("quality");
    std::fs::create_dir_all(&dir)?;
    let section = Section {
        mtl: &mtl,
        dir: &dir,
        quick,
        threads,
        seeds,
    };
    let mut report = json!({ "seeds": seeds });
    let mut md = String::new();
    let has = |name: &str| sections.iter().any(|s| s == name);
    if has("cvr") {
        let (cvr, cvr_md) = entire_space_cvr(&section)?;
        report["cvr_entire_space"] = cvr;
        md += &cvr_md;
    }
    if has("mmoe") {
        let (moe, moe_md) = mmoe_ordering(&section)?;
        report["mmoe_synthetic"] = moe;
        md += &format!("\n{moe_md}");
    }
    if has("chain") {
        let (chain, chain_md) = chain_quality::chain_quality(&section)?;
        report["chain"] = chain;
        md += &format!(
            "\nConversion chain (impression → click → cart → purchase), per step: AUC of the step given the previous one on the test rows where the previous step happened, and Spearman ρ of that conditional with its true probability over all test rows (mean ± s.e.):\n\n{chain_md}"
        );
    }
    if has("attention") {
        let (attention, attention_md) = attention_quality::attention_quality(&section)?;
        report["attention"] = attention;
        md += &format!("\n{attention_md}");
    }
    let stem = if sections.len() == SECTIONS.len() {
        "quality".to_string()
    } else {
        format!("quality-{}", sections.join("-"))
    };
    std::fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_vec_pretty(&report)?,
    )?;
    std::fs::write(dir.join(format!("{stem}.md")), &md)?;
    println!("{md}");
    println!("wrote {}", dir.join(format!("{stem}.json")).display());
    Ok(())
}

/// The generator seeds of the entire-space section: each a data set of its own.
const CVR_DATA_SEEDS: [u64; 2] = [2022, 2023];

/// Section 1: ESMM and ESCM² (IPS, DR) vs the clicked-rows CVR model over two generated data
/// sets, and ESMM's calibration.
fn entire_space_cvr(section: &Section<'_>) -> Result<(Value, String)> {
    let (mtl, dir, quick) = (section.mtl, section.dir, section.quick);
    let (threads, seeds) = (section.threads, section.seeds);
    let rows = if quick { 200_000 } else { 1_000_000 };
    let mut runs = Vec::new();
    let mut truth_means = Vec::new();
    for data_seed in CVR_DATA_SEEDS {
        let data = ccp_data(mtl, rows, data_seed)?;
        let file = |part: &str| data.join(format!("synth_ccp_{part}"));
        let (train, valid, test) = (file("train.csv"), file("val.csv"), file("test.csv"));
        let clicked = dir.join(format!("clicked_train-{data_seed}.csv"));
        let clicked_valid = dir.join(format!("clicked_valid-{data_seed}.csv"));
        stats::filter_where(&train, &clicked, "click")?;
        stats::filter_where(&valid, &clicked_valid, "click")?;
        let escm2 = model_toml("escm2", "example")?;
        let models = [
            ("esmm", model_toml("esmm", "example")?, &train, &valid),
            ("escm2-ips", escm2.clone(), &train, &valid),
            (
                "escm2-dr",
                escm2.replace("variant = \"ips\"", "variant = \"dr\""),
                &train,
                &valid,
            ),
            ("naive-cvr", NAIVE_CVR.to_string(), &clicked, &clicked_valid),
        ];
        for seed in 1..=seeds {
            for (name, model, train, valid) in &models {
                let extra = match *name {
                    "esmm" => "epochs = 2\ncalibration = \"platt\"\n",
                    _ => "epochs = 2\n",
                };
                let schema = file("schema.toml");
                let config = run_config(&schema, train, Some(valid), &test, model, seed, extra);
                let job = format!("{name}-data{data_seed}-seed{seed}");
                let mut row = cvr_run(mtl, dir, &job, &config, &test, threads)?;
                row["model"] = json!(name);
                row["seed"] = json!(seed);
                row["data_seed"] = json!(data_seed);
                runs.push(row);
            }
        }
        let (truth, _) = stats::read_two_columns(&test, "p_cvr", "p_click")?;
        truth_means.push(truth.iter().sum::<f64>() / truth.len().max(1) as f64);
    }
    let truth_mean = truth_means.iter().sum::<f64>() / truth_means.len() as f64;
    let md = entire_space_report(&runs, rows, seeds, truth_mean);
    Ok((json!(runs), md))
}

/// The CVR model trained on clicked rows only (the sample-selection-biased baseline).
const NAIVE_CVR: &str = "type = \"shared_bottom\"\nbottom = { dims = [16, 8] }\ntower = { dims = [] }\ntasks = [{ label = \"purchase\", name = \"cvr\" }]\n";

/// Trains `job` from `config` and scores `test`: its pCVR against the true `p_cvr` over every
/// row, its CVR AUC on the clicked rows, and each output's test ECE before and after
/// calibration (when the run has one).
fn cvr_run(mtl: &Path, dir: &Path, job: &str, config: &str, test: &Path, threads: usize) -> Result<Value> {
    let (metrics, _) = train_job(mtl, job, config, threads, dir)?;
    let pred = dir.join(format!("{job}-pred.csv"));
    predict_csv(mtl, &dir.join(job), test, &pred, threads, Some("p_cvr"))?;
    let (truth, scores) = stats::read_two_columns(&pred, "p_cvr", "cvr")?;
    // CVR AUC on the clicked test rows, from the predictions (the clicked-rows model's own test
    // metric is over every row)
    let labels = stats::read_columns(test, &["click", "purchase"])?;
    let (clicked_scores, bought): (Vec<f64>, Vec<f64>) = scores
        .iter()
        .zip(labels[0].iter().zip(&labels[1]))
        .filter(|(_, (c, _))| **c == 1.0)
        .map(|(s, (_, b))| (*s, *b))
        .unzip();
    let mut row = json!({ "rows": truth.len(),
        "spearman_vs_true_p_cvr": stats::spearman(&scores, &truth),
        "auc_vs_true_p_cvr": stats::soft_auc(&scores, &truth),
        "mean_pcvr_all_rows": scores.iter().sum::<f64>() / scores.len().max(1) as f64,
        "cvr_auc_clicked": stats::soft_auc(&clicked_scores, &bought) });
    for output in ["ctr", "cvr", "ctcvr"] {
        let ece = |m: &Value| {
            m.as_array()
                .and_then(|a| a.iter().find(|t| t["name"] == output))
                .and_then(|t| t["binary"]["ece"].as_f64())
        };
        row[format!("{output}_ece_before")] = json!(ece(&metrics["test_uncalibrated"]));
        row[format!("{output}_ece_after")] = json!(ece(&metrics["test"]));
    }
    Ok(row)
}

/// The entire-space section's tables: each CVR model against the true p_cvr, and ESMM's
/// calibration error before and after Platt scaling.
fn entire_space_report(runs: &[Value], rows: usize, seeds: u64, truth_mean: f64) -> String {
    let mut md = format!(
        "Entire-space CVR ({rows} generated rows from each of the generator seeds {CVR_DATA_SEEDS:?}, {seeds} training seeds on each, mean ± s.e. over all runs; true mean p_cvr over all test rows {truth_mean:.4}):\n\n| CVR model | Spearman vs true p_cvr, all rows | AUC vs true p_cvr, all rows | CVR AUC, clicked rows | mean pCVR, all rows |\n|---|---|---|---|---|\n"
    );
    for name in ["esmm", "escm2-ips", "escm2-dr", "naive-cvr"] {
        let of = |r: &Value| r["model"] == name;
        md += &format!(
            "| {name} | {} | {} | {} | {} |\n",
            cell(runs, of, "spearman_vs_true_p_cvr", 4),
            cell(runs, of, "auc_vs_true_p_cvr", 4),
            cell(runs, of, "cvr_auc_clicked", 4),
            cell(runs, of, "mean_pcvr_all_rows", 4)
        );
    }
    md += "\nESMM's expected calibration error on the test rows (10 bins of equal count), before and after Platt scaling fitted on the validation rows:\n\n| output | ECE before | ECE after |\n|---|---|---|\n";
    for output in ["ctr", "cvr", "ctcvr"] {
        let of = |r: &Value| r["model"] == "esmm";
        md += &format!(
            "| {output} | {} | {} |\n",
            cell(runs, of, &format!("{output}_ece_before"), 4),
            cell(runs, of, &format!("{output}_ece_after"), 4)
        );
    }
    md
}

/// Section 2: MMOE vs OMoE vs Shared-Bottom over task correlations, with error bars.
fn mmoe_ordering(section: &Section<'_>) -> Result<(Value, String)> {
    let (mtl, dir, quick) = (section.mtl, section.dir, section.quick);
    let (threads, seeds) = (section.threads, section.seeds);
    let rows = if quick { 30_000 } else { 100_000 };
    let correlations = [1.0, 0.9, 0.5];
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
    let mut runs = Vec::new();
    for seed in 1..=seeds {
        for corr in correlations {
            // each seed draws a fresh data set, as the paper's repetitions do
            let data = work_dir(&format!("data/mmoe-{rows}-{corr}-seed{seed}"));
            if !data.join("mmoe_synth_schema.toml").exists() {
                run(Command::new(mtl)
                    .args(["gen-data", "mmoe-synthetic", "--rows", &rows.to_string()])
                    .args([
                        "--correlation",
                        &corr.to_string(),
                        "--seed",
                        &(2018 + seed).to_string(),
                        "--out",
                    ])
                    .arg(&data))?;
            }
            for (name, model) in &models {
                let config = run_config(
                    &data.join("mmoe_synth_schema.toml"),
                    &data.join("mmoe_synth_train.csv"),
                    Some(&data.join("mmoe_synth_val.csv")),
                    &data.join("mmoe_synth_test.csv"),
                    model,
                    seed,
                    "epochs = 5\nbatch_size = 256\n",
                );
                let (m, _) = train_job(
                    mtl,
                    &format!("{name}-corr{corr}-seed{seed}"),
                    &config,
                    threads,
                    dir,
                )?;
                let (a, b) = (test_metric(&m, "y1", "mse"), test_metric(&m, "y2", "mse"));
                runs.push(json!({ "correlation": corr, "seed": seed, "model": name,
                    "test_mse_y1": a, "test_mse_y2": b,
                    "test_mse_mean": a.zip(b).map(|(a, b)| (a + b) / 2.0) }));
            }
        }
    }
    let md = mmoe_ordering_report(&runs, rows, seeds, &correlations);
    Ok((json!(runs), md))
}

/// The MMoE section's tables: mean test MSE per model and correlation, and the paired
/// differences between the models.
fn mmoe_ordering_report(runs: &[Value], rows: usize, seeds: u64, correlations: &[f64]) -> String {
    let mut md = format!(
        "The MMoE paper's synthetic pair, {rows} rows, mean test MSE of the two tasks over {seeds} seeds (fresh data and training seed each; mean ± s.e.):\n\n| correlation | MMOE | OMoE | Shared-Bottom |\n|---|---|---|---|\n"
    );
    for &corr in correlations {
        let of = |name: &'static str| {
            move |r: &Value| r["model"] == name && r["correlation"].as_f64() == Some(corr)
        };
        md += &format!(
            "| {corr} | {} | {} | {} |\n",
            cell(runs, of("mmoe"), "test_mse_mean", 4),
            cell(runs, of("omoe"), "test_mse_mean", 4),
            cell(runs, of("shared_bottom"), "test_mse_mean", 4)
        );
    }
    // the ordering per correlation, from paired differences (same data and seed)
    md += "\nPaired differences (same data set and seed), mean ± s.e.; negative means the first model's error is lower:\n\n| correlation | MMOE − OMoE | MMOE − Shared-Bottom | OMoE − Shared-Bottom |\n|---|---|---|---|\n";
    for &corr in correlations {
        let diff = |a: &str, b: &str| {
            let xs: Vec<f64> = (1..=seeds)
                .filter_map(|s| {
                    let get = |name: &str| {
                        runs.iter()
                            .find(|r| {
                                r["model"] == name
                                    && r["seed"] == s
                                    && r["correlation"].as_f64() == Some(corr)
                            })
                            .and_then(|r| r["test_mse_mean"].as_f64())
                    };
                    Some(get(a)? - get(b)?)
                })
                .collect();
            mean_se(&xs).map_or("–".into(), |(m, se)| format!("{m:+.4} ± {se:.4}"))
        };
        md += &format!(
            "| {corr} | {} | {} | {} |\n",
            diff("mmoe", "omoe"),
            diff("mmoe", "shared_bottom"),
            diff("omoe", "shared_bottom")
        );
    }
    md
}
