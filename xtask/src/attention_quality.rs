//! `cargo xtask quality`'s attention section: DIN's target attention against mean pooling on
//! data where the click depends on whether the target item's category is in the user's history
//! (`mtl gen-data interest`), each pooling the same Shared-Bottom model on the same files and
//! training seed; test AUC of the click, mean ± s.e. over generator and training seeds, and the
//! paired difference.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::stats::mean_se_text;
use crate::{Section, run, run_config, test_metric, train_job, work_dir};

/// The generator seeds: each a data set of its own.
const DATA_SEEDS: [u64; 2] = [2022, 2023];

/// The poolings compared: the name and the `pooling` value of `hist_cat`.
fn poolings() -> [(&'static str, toml::Value); 3] {
    let attention = |softmax: bool| {
        let mut table = toml::Table::new();
        table.insert("attention".into(), "target".into());
        table.insert("query".into(), toml::Value::Array(vec!["cat".into()]));
        table.insert("softmax".into(), softmax.into());
        toml::Value::Table(table)
    };
    [
        ("mean", toml::Value::String("mean".into())),
        ("target", attention(false)),
        ("target_softmax", attention(true)),
    ]
}

/// The schema at `path` with `hist_cat` pooled by `pooling`, written to `to`.
fn with_pooling(path: &Path, pooling: &toml::Value, to: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut schema: toml::Table = toml::from_str(&text)?;
    let sequence = schema
        .get_mut("sequence")
        .and_then(|s| s.as_array_mut())
        .and_then(|s| s.first_mut())
        .and_then(|s| s.as_table_mut())
        .context("the interest schema has a sequence field")?;
    sequence.insert("pooling".into(), pooling.clone());
    std::fs::write(to, toml::to_string(&schema)?)?;
    Ok(())
}

/// Runs the section; returns its runs and its Markdown table.
pub fn attention_quality(section: &Section<'_>) -> Result<(Value, String)> {
    let (mtl, dir, quick) = (section.mtl, section.dir, section.quick);
    let (threads, seeds) = (section.threads, section.seeds);
    let rows = if quick { 100_000 } else { 200_000 };
    let model = "type = \"shared_bottom\"\nbottom = { dims = [64, 32] }\ntower = { dims = [16] }\ntasks = [{ label = \"click\" }]";
    let mut runs = Vec::new();
    for data_seed in DATA_SEEDS {
        let data = work_dir(&format!("data/interest-{rows}-seed{data_seed}"));
        if !data.join("interest_schema.toml").exists() {
            run(Command::new(mtl)
                .args(["gen-data", "interest", "--rows", &rows.to_string()])
                .args(["--seed", &data_seed.to_string(), "--out"])
                .arg(&data))?;
        }
        for (name, pooling) in poolings() {
            let schema = dir.join(format!("interest-{data_seed}-{name}-schema.toml"));
            with_pooling(&data.join("interest_schema.toml"), &pooling, &schema)?;
            for seed in 1..=seeds {
                let config = run_config(
                    &schema,
                    &data.join("interest_train.csv"),
                    Some(&data.join("interest_val.csv")),
                    &data.join("interest_test.csv"),
                    model,
                    seed,
                    "epochs = 3\nbatch_size = 256\n",
                );
                let job = format!("interest-{data_seed}-{name}-seed{seed}");
                let (metrics, secs) = train_job(mtl, &job, &config, threads, dir)?;
                runs.push(json!({ "data_seed": data_seed, "seed": seed, "pooling": name,
                    "test_auc": test_metric(&metrics, "click", "auc"), "train_seconds": secs }));
            }
        }
    }
    Ok((json!(runs), report(&runs, rows, seeds)))
}

/// The section's table: test AUC per pooling, and each attention's paired gain over mean.
fn report(runs: &[Value], rows: usize, seeds: u64) -> String {
    let auc = |pooling: &str| -> Vec<f64> {
        (runs.iter())
            .filter(|r| r["pooling"] == pooling)
            .filter_map(|r| r["test_auc"].as_f64())
            .collect()
    };
    let mean = auc("mean");
    let mut md = format!(
        "Target attention vs mean pooling of the history (`mtl gen-data interest`, {rows} rows from each of the generator seeds {DATA_SEEDS:?}, {seeds} training seeds on each; Shared-Bottom [64, 32], tower [16], 3 epochs; click test AUC, mean ± s.e. over all runs; gain paired by data set and seed):\n\n| pooling of `hist_cat` | test AUC | gain over mean pooling | runs ahead |\n|---|---|---|---|\n"
    );
    for (name, _) in poolings() {
        let xs = auc(name);
        let gains: Vec<f64> = xs.iter().zip(&mean).map(|(a, m)| a - m).collect();
        let ahead = gains.iter().filter(|g| **g > 0.0).count();
        let (gain, ahead) = match name {
            "mean" => ("—".to_string(), "—".to_string()),
            _ => (mean_se_text(&gains, 4), format!("{ahead} of {}", gains.len())),
        };
        md += &format!("| {name} | {} | {gain} | {ahead} |\n", mean_se_text(&xs, 4));
    }
    md
}
