//! `cargo xtask quality`'s conversion-chain section: on data with a known truth for every
//! step (`mtl gen-data chain`), the N-step ESMM against per-step models trained only on the
//! rows where the previous step happened, and the chain with DeepFM / DCN towers and with
//! learned loss weights — per step, the AUC on the rows where the previous step happened and
//! the entire-space rank correlation with the true conditional probability, over several
//! training seeds; training speed; the learned weights' trajectories.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use serde_json::{Value, json};

use crate::stats::{mean_se, mean_se_text, read_columns, spearman};
use crate::{Section, predict_csv, run, run_config, train_job, work_dir};

/// The chain's steps and their rates given the previous step.
const STEPS: [(&str, f64); 3] = [("click", 0.1), ("cart", 0.3), ("purchase", 0.3)];

/// Every model trains two epochs (as the ESMM comparison of `quality` does).
const EPOCHS: &str = "epochs = 2\n";

/// The chain-model variants: name, `[model]` table, extra `[train]` lines.
fn variants() -> Vec<(&'static str, String, &'static str)> {
    let tasks = "tasks = [{ label = \"click\" }, { label = \"cart\" }, { label = \"purchase\" }]";
    let chain = |tower: &str| format!("type = \"esmm_chain\"\ntower = {tower}\n{tasks}\n");
    vec![
        ("chain", chain("{ dims = [16, 8] }"), EPOCHS),
        (
            "chain-deepfm",
            chain("{ kind = \"deepfm\", dims = [16, 8] }"),
            EPOCHS,
        ),
        (
            "chain-dcn",
            chain("{ kind = \"dcn\", cross_layers = 2, dims = [16, 8] }"),
            EPOCHS,
        ),
        (
            "chain-uncertainty",
            chain("{ dims = [16, 8] }"),
            "epochs = 2\nloss_weighting = { kind = \"uncertainty\" }\n",
        ),
        (
            "chain-gradnorm",
            chain("{ dims = [16, 8] }"),
            "epochs = 2\nloss_weighting = { kind = \"gradnorm\", alpha = 1.5 }\n",
        ),
    ]
}

/// The output (and truth column) of step `k`: its conditional given the previous step.
fn conditional(k: usize) -> (String, String) {
    match k {
        0 => (STEPS[0].0.to_string(), format!("p_{}", STEPS[0].0)),
        _ => (
            format!("{}_given_{}", STEPS[k].0, STEPS[k - 1].0),
            format!("p_{}_given_{}", STEPS[k].0, STEPS[k - 1].0),
        ),
    }
}

/// Scores `model_dir` on `test` and returns, per step, the Spearman correlation of its
/// column `columns[k]` with the truth over every test row.
fn entire_space(
    mtl: &Path,
    model_dir: &Path,
    test: &Path,
    columns: &[String],
    threads: usize,
) -> Result<Vec<Option<f64>>> {
    let pred = model_dir.with_extension("pred.csv");
    predict_csv(mtl, model_dir, test, &pred, threads, None)?;
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    let scores = read_columns(&pred, &names)?;
    let truth_names: Vec<String> = (0..STEPS.len()).map(|k| conditional(k).1).collect();
    let truth_names: Vec<&str> = truth_names.iter().map(String::as_str).collect();
    let truth = read_columns(test, &truth_names)?;
    Ok(scores.iter().zip(&truth).map(|(s, t)| spearman(s, t)).collect())
}

/// Runs the section: returns its JSON and its Markdown table.
pub fn chain_quality(section: &Section<'_>) -> Result<(Value, String)> {
    let (mtl, dir, quick) = (section.mtl, section.dir, section.quick);
    let (threads, seeds) = (section.threads, section.seeds);
    let rows = if quick { 200_000 } else { 1_000_000 };
    let data = chain_data(mtl, rows)?;
    let schema = data.join("synth_chain_schema.toml");
    let (train, valid, test) = (
        data.join("synth_chain_train.csv"),
        data.join("synth_chain_val.csv"),
        data.join("synth_chain_test.csv"),
    );
    // per-step training files: the rows where the previous step happened
    let mut step_train = vec![train.clone()];
    for (previous, _) in &STEPS[..STEPS.len() - 1] {
        let path = dir.join(format!("chain_train_where_{previous}.csv"));
        crate::stats::filter_where(&train, &path, previous)?;
        step_train.push(path);
    }
    let mut runs = Vec::new();
    for seed in 1..=seeds {
        for (name, model, extra) in variants() {
            let config = run_config(&schema, &train, Some(&valid), &test, &model, seed, extra);
            let job = format!("{name}-seed{seed}");
            let (metrics, secs) = train_job(mtl, &job, &config, threads, dir)?;
            let columns: Vec<String> = (0..STEPS.len()).map(|k| conditional(k).0).collect();
            let rho = entire_space(mtl, &dir.join(&job), &test, &columns, threads)?;
            let weights: Vec<Value> = metrics["history"]
                .as_array()
                .map(|h| {
                    h.iter()
                        .map(|r| json!({ "step": r["step"], "weights": r["loss_weights"] }))
                        .collect()
                })
                .unwrap_or_default();
            runs.push(json!({ "model": name, "seed": seed, "spearman": rho,
                "samples_per_sec": metrics["samples_per_sec"], "wall_secs": secs, "loss_weights": weights }));
        }
        // one model per step, trained where the previous step happened (the classic way)
        let (mut aucs, mut rho) = (Vec::new(), Vec::new());
        for (k, (step, _)) in STEPS.iter().enumerate() {
            let model = format!(
                "type = \"shared_bottom\"\nbottom = {{ dims = [16, 8] }}\ntower = {{ dims = [] }}\ntasks = [{{ label = \"{step}\", name = \"{}\" }}]\n",
                conditional(k).0
            );
            let valid_rows = match k {
                0 => valid.clone(),
                _ => {
                    let path = dir.join(format!("chain_valid_where_{}.csv", STEPS[k - 1].0));
                    crate::stats::filter_where(&valid, &path, STEPS[k - 1].0)?;
                    path
                }
            };
            let config = run_config(
                &schema,
                &step_train[k],
                Some(&valid_rows),
                &test,
                &model,
                seed,
                EPOCHS,
            );
            let job = format!("per-step-{step}-seed{seed}");
            train_job(mtl, &job, &config, threads, dir)?;
            let r = entire_space(mtl, &dir.join(&job), &test, &[conditional(k).0], threads)?;
            rho.push(r[0]);
            aucs.push(auc_where(&dir.join(&job).with_extension("pred.csv"), &test, k)?);
        }
        runs.push(json!({ "model": "per-step", "seed": seed, "auc": aucs, "spearman": rho }));
    }
    // the chain's conditional AUCs are computed the same way (predictions on the previous
    // step's test rows), so every row of the table is comparable
    for r in runs.iter_mut().filter(|r| r["model"] != "per-step") {
        let job = format!("{}-seed{}", r["model"].as_str().unwrap_or(""), r["seed"]);
        let pred = dir.join(&job).with_extension("pred.csv");
        let aucs: Vec<Option<f64>> = (0..STEPS.len())
            .map(|k| auc_where(&pred, &test, k))
            .collect::<Result<_>>()?;
        r["auc"] = json!(aucs);
    }
    let md = table(&runs, seeds);
    Ok((
        json!({ "rows": rows, "steps": STEPS.iter().map(|s| s.0).collect::<Vec<_>>(), "runs": runs }),
        md,
    ))
}

/// The chain's data set of `rows` rows (seed 2022, the steps of [`STEPS`]), generated once and
/// reused.
fn chain_data(mtl: &Path, rows: usize) -> Result<PathBuf> {
    chain_data_seeded(mtl, rows, 2022)
}

/// [`chain_data`] from generator seed `seed`.
pub(crate) fn chain_data_seeded(mtl: &Path, rows: usize, seed: u64) -> Result<PathBuf> {
    let name = match seed {
        2022 => format!("data/chain-{rows}"),
        _ => format!("data/chain-{rows}-{seed}"),
    };
    let data = work_dir(&name);
    if !data.join("synth_chain_schema.toml").exists() {
        let steps: Vec<String> = STEPS.iter().map(|(n, r)| format!("{n}:{r}")).collect();
        run(Command::new(mtl)
            .args([
                "gen-data",
                "chain",
                "--rows",
                &rows.to_string(),
                "--seed",
                &seed.to_string(),
                "--steps",
            ])
            .arg(steps.join(","))
            .arg("--out")
            .arg(&data))?;
    }
    Ok(data)
}

/// AUC of step `k`'s conditional column in `pred` on the test rows where step k−1 happened
/// (all rows for step 1), against the step's label.
fn auc_where(pred: &Path, test: &Path, k: usize) -> Result<Option<f64>> {
    let scores = read_columns(pred, &[conditional(k).0.as_str()])?.remove(0);
    let labels = read_columns(test, &[STEPS[k].0])?.remove(0);
    let gate = match k {
        0 => vec![1.0; labels.len()],
        _ => read_columns(test, &[STEPS[k - 1].0])?.remove(0),
    };
    let (s, y): (Vec<f64>, Vec<f64>) = scores
        .iter()
        .zip(&labels)
        .zip(&gate)
        .filter(|(_, g)| **g == 1.0)
        .map(|((s, y), _)| (*s, *y))
        .unzip();
    Ok(crate::stats::soft_auc(&s, &y))
}

/// Mean ± standard error per model and step.
fn table(runs: &[Value], seeds: u64) -> String {
    let mut md = format!(
        "| model ({seeds} seeds) | {} | training rows/s |\n|---|{}---|\n",
        (0..STEPS.len())
            .map(|k| format!("{} AUC | {} ρ all rows", conditional(k).0, conditional(k).0))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|---|".repeat(STEPS.len())
    );
    let mut names: Vec<&str> = variants().iter().map(|v| v.0).collect();
    names.push("per-step");
    for name in names {
        let of: Vec<&Value> = runs.iter().filter(|r| r["model"] == name).collect();
        let cell = |key: &str, k: usize| {
            let xs: Vec<f64> = of.iter().filter_map(|r| r[key][k].as_f64()).collect();
            mean_se_text(&xs, 3)
        };
        let cells: Vec<String> = (0..STEPS.len())
            .map(|k| format!("{} | {}", cell("auc", k), cell("spearman", k)))
            .collect();
        let speed: Vec<f64> = of.iter().filter_map(|r| r["samples_per_sec"].as_f64()).collect();
        let speed = mean_se(&speed).map_or("–".into(), |(m, _)| format!("{m:.0}"));
        md += &format!("| {name} | {} | {speed} |\n", cells.join(" | "));
    }
    md
}
