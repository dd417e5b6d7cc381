//! `cargo xtask read-bench`: the same rows as CSV, as Parquet (zstd and snappy) and from the
//! encoded cache — rows per second from file to encoded rows, and the training process's peak
//! RSS — on mtl's own click/conversion generator (no download), ESMM example, one epoch.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use clap::Args;

use crate::{build_mtl, run, run_config, train_job, work_dir};

/// Options of `cargo xtask read-bench`.
#[derive(Debug, Args)]
pub struct ReadBenchArgs {
    /// Rows generated (80 % of them train).
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Runs per format (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// CPU threads for mtl.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// `mtl convert CSV --out PARQUET` with `extra` options.
pub(crate) fn convert(mtl: &Path, csv: &Path, parquet: &Path, extra: &[&str]) -> Result<()> {
    run(Command::new(mtl)
        .args(["--quiet", "convert"])
        .arg(csv)
        .arg("--out")
        .arg(parquet)
        .args(extra))
}

/// The `rows/s` figure of a read report line (`… (123 rows/s…`).
fn rows_per_sec(line: &str) -> Option<f64> {
    let end = line.find(" rows/s")?;
    let start = line[..end].rfind('(')? + 1;
    line[start..end].parse().ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the comparison and prints a table (also written to `read-bench/results.md`).
pub fn read_bench(a: &ReadBenchArgs) -> Result<()> {
    let mtl = build_mtl()?;
    let dir = work_dir("read-bench");
    std::fs::create_dir_all(&dir)?;
    let data = crate::ccp_data_with(&mtl, &format!("ccp-{}-7", a.rows), a.rows, 7, &[])?;
    let file = |s: &str| data.join(format!("synth_ccp_{s}"));
    let (schema, train_csv, test_csv) = (file("schema.toml"), file("train.csv"), file("test.csv"));
    let mut formats: Vec<(String, PathBuf, bool)> = vec![("CSV".into(), train_csv.clone(), false)];
    for codec in ["zstd", "snappy"] {
        let out = dir.join(format!("train-{codec}.parquet"));
        let started = std::time::Instant::now();
        convert(&mtl, &train_csv, &out, &["--codec", codec])?;
        eprintln!(
            "converted to {codec} Parquet in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        formats.push((format!("Parquet ({codec})"), out, false));
    }
    formats.push(("encoded cache (of the CSV)".into(), train_csv.clone(), true));
    let mut md = format!(
        "{} training rows of `mtl gen-data ccp --rows {} --seed 7`, ESMM example, 1 epoch, {} threads; median of {} runs:\n\n| input | file MB | rows/s to encoded rows | peak RSS of the run (MB) |\n|---|---|---|---|\n",
        a.rows * 8 / 10,
        a.rows,
        a.threads,
        a.repeats
    );
    for (name, path, cached) in &formats {
        let extra = "epochs = 1\nbatch_size = 1024\n";
        let mut config = run_config(
            &schema,
            path,
            None,
            &test_csv,
            &crate::model_toml("esmm", "example")?,
            1,
            extra,
        );
        config = config.replace("[data]\n", &format!("[data]\ncache = {cached}\n"));
        if *cached {
            // a first run writes the cache; the measured ones read it
            train_job(&mtl, "warm-cache", &config, a.threads, &dir)?;
        }
        let (mut speeds, mut rss) = (Vec::new(), Vec::new());
        for r in 0..a.repeats {
            let (metrics, _) = train_job(&mtl, &format!("read-{r}"), &config, a.threads, &dir)?;
            let line = metrics["reads"][0]
                .as_str()
                .context("metrics.json has no read report")?;
            speeds.push(rows_per_sec(line).with_context(|| format!("no rows/s in `{line}`"))?);
            rss.push(metrics["peak_rss_mb"].as_f64().unwrap_or(f64::NAN));
        }
        let mb = std::fs::metadata(path)?.len() as f64 / 1e6;
        md += &format!(
            "| {name} | {mb:.0} | {:.0} | {:.0} |\n",
            median(speeds),
            median(rss)
        );
    }
    std::fs::write(dir.join("results.md"), &md)?;
    println!("{md}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rate_is_read_off_a_report_line() {
        let line = "x.csv: 800000 rows in 0.27 s (2909692 rows/s, from the encoded cache)";
        assert_eq!(super::rows_per_sec(line), Some(2_909_692.0));
        assert_eq!(super::rows_per_sec("no rate here"), None);
    }
}

/// Options of `cargo xtask widths-bench`.
#[derive(Debug, Args)]
pub struct WidthsBenchArgs {
    /// Rows generated (80 % of them train).
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// CPU threads for mtl.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// ESMM example on the same rows with every field 16 wide, with the fields of 20,000 ids or
/// more 8 wide (a table 8 wide, the others owning two rows per id), and with every field 8
/// wide: training speed, table size and test AUCs.
pub fn widths_bench(a: &WidthsBenchArgs) -> Result<()> {
    let mtl = build_mtl()?;
    let dir = work_dir("widths-bench");
    std::fs::create_dir_all(&dir)?;
    let data = crate::ccp_data_with(&mtl, &format!("ccp-{}-7", a.rows), a.rows, 7, &[])?;
    let file = |s: &str| data.join(format!("synth_ccp_{s}"));
    let text = std::fs::read_to_string(file("schema.toml"))?;
    let vocab: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("vocab_size = ")?.parse().ok())
        .collect();
    anyhow::ensure!(!vocab.is_empty(), "the generated schema has no sparse fields");
    // every `vocab_size = N` line of a large field gets `embed_dim = 8` after it
    let narrow_large = text
        .lines()
        .map(|l| {
            match l
                .strip_prefix("vocab_size = ")
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(n) if n >= 20_000 => format!("{l}\nembed_dim = 8"),
                _ => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let variants = [
        (
            "every field 16",
            text.clone(),
            vocab.iter().map(|v| v * 16).sum::<u64>(),
        ),
        (
            "fields of ≥ 20,000 ids 8, the rest 16",
            narrow_large,
            vocab
                .iter()
                .map(|&v| if v >= 20_000 { v * 8 } else { v * 16 })
                .sum(),
        ),
        (
            "every field 8",
            text.replace("embed_dim = 16", "embed_dim = 8"),
            vocab.iter().map(|v| v * 8).sum(),
        ),
    ];
    let mut md = format!(
        "{} training rows of `mtl gen-data ccp --rows {} --seed 7`, ESMM example, 1 epoch, {} threads, row-sparse updates:\n\n| widths | table floats | samples/s | test CTR AUC | test CTCVR AUC |\n|---|---|---|---|---|\n",
        a.rows * 8 / 10,
        a.rows,
        a.threads
    );
    for (k, (name, schema_text, floats)) in variants.iter().enumerate() {
        let schema = dir.join(format!("schema-{k}.toml"));
        std::fs::write(&schema, schema_text)?;
        let config = run_config(
            &schema,
            &file("train.csv"),
            None,
            &file("test.csv"),
            &crate::model_toml("esmm", "example")?,
            1,
            "epochs = 1\nbatch_size = 1024\n",
        );
        let (m, _) = train_job(&mtl, &format!("widths-{k}"), &config, a.threads, &dir)?;
        md += &format!(
            "| {name} | {floats} | {:.0} | {:.4} | {:.4} |\n",
            m["samples_per_sec"].as_f64().unwrap_or(f64::NAN),
            crate::test_auc(&m, "ctr").unwrap_or(f64::NAN),
            crate::test_auc(&m, "ctcvr").unwrap_or(f64::NAN),
        );
    }
    std::fs::write(dir.join("results.md"), &md)?;
    println!("{md}");
    Ok(())
}
