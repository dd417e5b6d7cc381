//! `cargo xtask stream-bench`: training on more rows than are held — mtl's click/conversion
//! generator writes the rows (80 % train), `mtl convert` turns the training file into zstd
//! Parquet shards and the CSV is deleted; ESMM example then trains one epoch streaming over
//! the shards (`[data] streaming = true`), and on a subset of the same rows both streaming and
//! in memory, to compare speed, peak RSS and test AUC.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

use crate::read_bench::convert;
use crate::stats::mean_sd;
use crate::{build_mtl, ccp_data_with, model_toml, test_auc, train_job, work_dir};

/// Options of `cargo xtask stream-bench`.
#[derive(Debug, Args)]
pub struct StreamBenchArgs {
    /// Rows generated in all (80 % of them train).
    #[arg(long, default_value_t = 62_500_000)]
    rows: usize,
    /// Training rows per Parquet shard.
    #[arg(long, default_value_t = 5_000_000)]
    shard_rows: u64,
    /// Rows of the subset trained both ways (and of the validation and test files).
    #[arg(long, default_value_t = 1_000_000)]
    subset: usize,
    /// CPU threads for mtl.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Training seeds of the subset runs (1, 2, …; mean ± sd of their AUCs).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Keep the shards and subsets an earlier run of this command left (skip generating).
    #[arg(long)]
    reuse: bool,
}

/// The header and first `rows` rows of `from`, written to `to`.
fn head(from: &Path, to: &Path, rows: usize) -> Result<()> {
    let input = BufReader::new(std::fs::File::open(from).with_context(|| format!("{}", from.display()))?);
    let mut out = BufWriter::new(std::fs::File::create(to)?);
    for line in input.lines().take(rows + 1) {
        writeln!(out, "{}", line?)?;
    }
    out.flush()?;
    Ok(())
}

/// Runs the bench and prints a table (also written to `stream-bench/results.md`).
pub fn stream_bench(a: &StreamBenchArgs) -> Result<()> {
    let mtl = build_mtl()?;
    let dir = work_dir("stream-bench");
    std::fs::create_dir_all(&dir)?;
    let schema = dir.join("schema.toml");
    let shards = dir.join("pq");
    let (sub, valid, test) = (
        dir.join("subset.csv"),
        dir.join("valid.csv"),
        dir.join("test.csv"),
    );
    let sub_pq = dir.join("subset.parquet");
    if !(a.reuse && sub_pq.exists() && shards.join("train-00000.parquet").exists()) {
        let generated = ccp_data_with(&mtl, &format!("ccp-{}-9", a.rows), a.rows, 9, &[])?;
        let file = |s: &str| generated.join(format!("synth_ccp_{s}"));
        std::fs::copy(file("schema.toml"), &schema)?;
        if shards.exists() {
            std::fs::remove_dir_all(&shards)?;
        }
        std::fs::create_dir_all(&shards)?;
        convert(
            &mtl,
            &file("train.csv"),
            &shards.join("train.parquet"),
            &["--codec", "zstd", "--rows-per-file", &a.shard_rows.to_string()],
        )?;
        head(&file("train.csv"), &sub, a.subset)?;
        head(&file("val.csv"), &valid, a.subset)?;
        head(&file("test.csv"), &test, a.subset)?;
        convert(&mtl, &sub, &sub_pq, &[])?;
        // the training rows now exist only as Parquet shards (the generated folder goes whole,
        // so that a later run generates it again rather than finding a schema alone)
        std::fs::remove_dir_all(&generated)?;
    }
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let job = |name: &str, train: String, streaming: bool, seed: u64| -> Result<(Value, f64)> {
        let config = format!(
            "schema = {}\n[data]\ntrain = {train}\nvalid = {}\ntest = {}\ncache = false\nstreaming = {streaming}\n[model]\n{}\n[train]\nlr = 1e-3\nweight_decay = 1e-4\nseed = {seed}\nepochs = 1\nbatch_size = 1024\n",
            q(&schema),
            q(&valid),
            q(&test),
            model_toml("esmm", "example")?
        );
        train_job(&mtl, name, &config, a.threads, &dir)
    };
    let all = format!("{:?}", format!("{}/train-*.parquet", shards.display()));
    let mut md = format!(
        "`mtl gen-data ccp --rows {} --seed 9`: training rows as zstd Parquet shards of {} rows; ESMM example, 1 epoch, batch 1024, {} threads; validation and test: the first {} rows of their files. Subset runs: training seeds 1–{}, medians of speed and RSS, AUC mean ± sd.\n\n| run | training rows | samples/s | wall s | peak RSS MB | test CTR AUC | test CVR AUC |\n|---|---|---|---|---|---|---|\n",
        a.rows, a.shard_rows, a.threads, a.subset, a.seeds
    );
    for (name, train, streaming, seeds) in [
        ("streaming, all shards", all, true, 1),
        ("streaming, subset (Parquet)", q(&sub_pq), true, a.seeds),
        ("in memory, subset (Parquet)", q(&sub_pq), false, a.seeds),
        ("in memory, subset (CSV)", q(&sub), false, 1),
    ] {
        let slug: String = name.chars().filter(|c| c.is_alphanumeric()).collect();
        let (mut speed, mut wall, mut rss, mut ctr, mut cvr, mut rows) =
            (vec![], vec![], vec![], vec![], vec![], 0);
        for seed in 1..=seeds {
            let (m, secs) = job(&format!("{slug}-s{seed}"), train.clone(), streaming, seed)?;
            speed.push(m["samples_per_sec"].as_f64().unwrap_or(f64::NAN));
            wall.push(secs);
            rss.push(m["peak_rss_mb"].as_f64().unwrap_or(f64::NAN));
            ctr.push(test_auc(&m, "ctr").unwrap_or(f64::NAN));
            cvr.push(test_auc(&m, "cvr").unwrap_or(f64::NAN));
            rows = m["train_rows"].as_u64().unwrap_or(0);
        }
        let med = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let auc = |v: &[f64]| match mean_sd(v) {
            Some((m, sd)) if v.len() > 1 => format!("{m:.4} ± {sd:.4}"),
            _ => format!("{:.4}", v[0]),
        };
        md += &format!(
            "| {name} | {rows} | {:.0} | {:.0} | {:.0} | {} | {} |\n",
            med(speed),
            med(wall),
            med(rss),
            auc(&ctr),
            auc(&cvr)
        );
    }
    std::fs::write(dir.join("results.md"), &md)?;
    println!("{md}");
    Ok(())
}
