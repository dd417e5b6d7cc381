//! `cargo xtask scale`: data-parallel training measured. ESMM large and MMOE large on the
//! bench data, trained as 1 process × 1 thread, 1 process × 2 threads, N MPI ranks × 1
//! thread (`mpirun`, the `mpi` build) and N ranks as threads of one process (`--ranks N`):
//! samples/s, speed-up, test AUCs over training seeds,
//! peak RSS per rank, the share of the step in collectives and the bytes each rank sends per
//! step — and from those bytes, the speed-up expected at 8 and 64 ranks on 25 and 100 Gb/s.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::stats::mean_sd;
use crate::{build_mtl_with, ccp_data, model_toml, output_auc, run_config, train_job_as, work_dir};

/// Options of `cargo xtask scale`.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// Rows of generated data (80 % trained on).
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// Training seeds 2022, 2023, …: AUCs as mean ± sd, speeds as medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub seeds: u64,
    /// MPI ranks of the data-parallel side.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(2..))]
    pub ranks: u64,
    /// Models, each in its large configuration.
    #[arg(long, default_value = "esmm,mmoe")]
    pub models: String,
    /// Global batch size (each of N ranks takes batch / N rows a step).
    #[arg(long, default_value_t = 1024)]
    pub batch_size: usize,
}

/// One way to train: ranks (MPI processes, or threads of one process) × threads each.
struct Side {
    name: String,
    ranks: u64,
    /// Threads of the process (shared out among its ranks when they are threads).
    threads: usize,
    /// The ranks are threads of one process (`mtl train --ranks N`), not MPI processes.
    in_threads: bool,
}

/// `mtl train` of `config` as `side`, in `dir`: the job's metrics.json (with `wall_secs`).
fn train(mtl: &Path, side: &Side, name: &str, config: &str, dir: &Path) -> Result<Value> {
    let ranks = side.ranks.to_string();
    let (cmd, args) = match side.ranks {
        1 => (Command::new(mtl), vec![]),
        _ if side.in_threads => (Command::new(mtl), vec!["--ranks", &ranks]),
        n => {
            let mut c = Command::new("mpirun");
            c.args(["--oversubscribe", "--bind-to", "none", "-np", &n.to_string()])
                .arg(mtl)
                .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
            (c, vec![])
        }
    };
    let (mut m, secs) = train_job_as(cmd, name, config, side.threads, &args, dir)?;
    m["wall_secs"] = json!(secs);
    Ok(m)
}

/// The per-step bytes a rank sent: (all-reduced, gathered), from the run's evaluations.
fn step_bytes(m: &Value) -> (f64, f64) {
    let steps = m["steps"].as_f64().unwrap_or(1.0).max(1.0);
    let sum = |key: &str| -> f64 {
        m["history"]
            .as_array()
            .map_or(0.0, |h| h.iter().filter_map(|e| e[key].as_f64()).sum())
    };
    (sum("reduced_bytes") / steps, sum("gathered_bytes") / steps)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// One side's runs over the seeds, summarised.
fn summarise(side: &Side, model: &str, runs: &[Value]) -> Value {
    let outputs: &[&str] = if model == "esmm" {
        &["ctr", "cvr", "ctcvr"]
    } else {
        &["click", "purchase"]
    };
    let aucs: serde_json::Map<String, Value> = outputs
        .iter()
        .map(|o| {
            let v: Vec<f64> = runs.iter().filter_map(|m| output_auc(&m["test"], o)).collect();
            (o.to_string(), json!(mean_sd(&v)))
        })
        .collect();
    let pick = |f: &dyn Fn(&Value) -> Option<f64>| median(runs.iter().filter_map(f).collect());
    let (reduced, gathered) = runs.first().map_or((0.0, 0.0), step_bytes);
    json!({
        "side": side.name,
        "ranks": side.ranks,
        "threads": side.threads,
        "samples_per_sec": pick(&|m| m["samples_per_sec"].as_f64()),
        "auc": aucs,
        "peak_rss_mb": match side.ranks {
            1 => json!([pick(&|m| m["peak_rss_mb"].as_f64())]),
            _ => runs[0]["peak_rss_mb_per_rank"].clone(),
        },
        "comm_fraction": pick(&|m| m["comm_fraction"].as_f64()),
        "reduced_bytes_per_step": reduced,
        "gathered_bytes_per_step": gathered,
    })
}

/// Seconds of a step's communication on `ranks` ranks at `gbps`: a ring all-reduce of the
/// `reduced` bytes (each rank sends and receives 2(N−1)/N of them), an all-gather of the
/// global batch's row ids and gradients (measured as `gathered` bytes from each of
/// `measured_ranks` ranks: `measured_ranks × gathered` in all, of which each rank receives
/// (N−1)/N), and a latency of [`ALPHA`] per ring round ([`ROUNDS`] × (N−1) rounds a step).
fn comm_secs(reduced: f64, gathered: f64, measured_ranks: f64, ranks: f64, gbps: f64) -> f64 {
    let bytes_per_sec = gbps * 1e9 / 8.0;
    let n = ranks;
    let volume = 2.0 * (n - 1.0) / n * reduced + (n - 1.0) / n * gathered * measured_ranks;
    volume / bytes_per_sec + ALPHA * ROUNDS * (n - 1.0)
}

/// Per-message latency assumed on the network (seconds).
const ALPHA: f64 = 10e-6;
/// Ring rounds per step per (N − 1): 2 all-reduces × 2 + 4 gathers (counts and parts, ids
/// and gradients) × 1.
const ROUNDS: f64 = 8.0;

/// `cargo xtask scale`.
pub fn scale(a: &ScaleArgs) -> Result<()> {
    let status = Command::new("mpirun").arg("--version").output();
    if !status.is_ok_and(|o| o.status.success()) {
        bail!(
            "`mpirun` not found: install an MPI (Debian: apt-get install libopenmpi-dev openmpi-bin clang libclang-dev)"
        );
    }
    let mtl = build_mtl_with("mpi")?;
    let data = ccp_data(&mtl, a.rows, 2022)?;
    let dir = work_dir("scale");
    let sides = [
        Side {
            name: "1 process × 1 thread".into(),
            ranks: 1,
            threads: 1,
            in_threads: false,
        },
        Side {
            name: "1 process × 2 threads".into(),
            ranks: 1,
            threads: 2,
            in_threads: false,
        },
        // the side `paper` reads the bytes of: third
        Side {
            name: format!("{} ranks × 1 thread", a.ranks),
            ranks: a.ranks,
            threads: 1,
            in_threads: false,
        },
        Side {
            name: format!("1 process, {} ranks as threads (`--ranks {}`)", a.ranks, a.ranks),
            ranks: a.ranks,
            threads: a.ranks as usize,
            in_threads: true,
        },
    ];
    let mut results = Vec::new();
    for model in a.models.split(',').map(str::trim) {
        if !["esmm", "mmoe"].contains(&model) {
            bail!("--models: `{model}`: esmm or mmoe");
        }
        let mut by_side = Vec::new();
        for side in &sides {
            let runs = (2022..2022 + a.seeds)
                .map(|seed| {
                    let config = run_config(
                        &data.join("synth_ccp_schema.toml"),
                        &data.join("synth_ccp_train.csv"),
                        None,
                        &data.join("synth_ccp_test.csv"),
                        &model_toml(model, "large")?,
                        seed,
                        &format!("epochs = 1\nbatch_size = {}\n", a.batch_size),
                    );
                    let how = if side.in_threads { "t" } else { "x" };
                    let name = format!("{model}-{}{how}{}-{seed}", side.ranks, side.threads);
                    train(&mtl, side, &name, &config, &dir)
                })
                .collect::<Result<Vec<_>>>()?;
            by_side.push(summarise(side, model, &runs));
        }
        results.push(json!({ "model": format!("{model}-large"), "sides": by_side }));
    }
    let md = report(a, &results).context("writing the report")?;
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&results)?)?;
    std::fs::write(dir.join("results.md"), &md)?;
    println!("{md}");
    println!("wrote {} and results.md", dir.join("results.json").display());
    Ok(())
}

/// The Markdown report: the measured table, then the one on paper.
fn report(a: &ScaleArgs, results: &[Value]) -> Result<String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut md = format!(
        "Data: `mtl gen-data ccp --rows {} --seed 2022` (80 % train), 1 epoch, global batch {}, \
         {} training seeds, flex backend, {cores} cores.\n\n\
         | job | side | samples/s | speed-up | test AUC (mean ± sd) | peak RSS by rank (MB) | in collectives | bytes a rank sends a step (all-reduce + gather) |\n\
         |---|---|---|---|---|---|---|---|\n",
        a.rows, a.batch_size, a.seeds
    );
    for r in results {
        let sides = r["sides"].as_array().context("sides")?;
        let base = sides[0]["samples_per_sec"].as_f64().unwrap_or(f64::NAN);
        for s in sides {
            let sps = s["samples_per_sec"].as_f64().unwrap_or(f64::NAN);
            let auc: Vec<String> = s["auc"]
                .as_object()
                .context("auc")?
                .iter()
                .filter_map(|(k, v)| Some(format!("{k} {:.4} ± {:.4}", v[0].as_f64()?, v[1].as_f64()?)))
                .collect();
            let rss: Vec<String> = s["peak_rss_mb"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .filter_map(Value::as_f64)
                        .map(|x| format!("{x:.0}"))
                        .collect()
                })
                .unwrap_or_default();
            let (reduced, gathered) = (
                s["reduced_bytes_per_step"].as_f64().unwrap_or(0.0),
                s["gathered_bytes_per_step"].as_f64().unwrap_or(0.0),
            );
            md += &format!(
                "| {} | {} | {sps:.0} | {:.2}× | {} | {} | {} | {} |\n",
                r["model"].as_str().unwrap_or(""),
                s["side"].as_str().unwrap_or(""),
                sps / base,
                auc.join(", "),
                rss.join(", "),
                s["comm_fraction"]
                    .as_f64()
                    .filter(|c| c.is_finite())
                    .map_or("–".into(), |c| format!("{:.1} %", 100.0 * c)),
                if reduced + gathered > 0.0 {
                    format!("{:.2} MB + {:.2} MB", reduced / 1e6, gathered / 1e6)
                } else {
                    "–".into()
                },
            );
        }
    }
    md += &paper(a, results)?;
    Ok(md)
}

/// The speed-up expected at 8 and 64 ranks from the measured bytes and the 1 × 1 step time.
fn paper(a: &ScaleArgs, results: &[Value]) -> Result<String> {
    let mut md = format!(
        "\nOn paper: a step of the global batch takes t₁ = batch ÷ (1 × 1 samples/s) on one core; on N \
         ranks (one core each) t_N = t₁/N + t_comm, t_comm = [2(N−1)/N · R + (N−1)/N · G] ÷ bandwidth \
         + {ROUNDS} (N−1) α, with R the all-reduced bytes a rank sends a step, G = {} × the gathered \
         bytes a rank sends a step at {} ranks (the global batch's row ids and gradients), α = {} µs; \
         speed-up = t₁ / t_N (compute assumed to split perfectly: an upper bound).\n\n\
         | job | R | G | t₁ | 8 ranks, 25 Gb/s | 8 ranks, 100 Gb/s | 64 ranks, 25 Gb/s | 64 ranks, 100 Gb/s |\n\
         |---|---|---|---|---|---|---|---|\n",
        a.ranks,
        a.ranks,
        ALPHA * 1e6
    );
    for r in results {
        let sides = r["sides"].as_array().context("sides")?;
        let base = sides[0]["samples_per_sec"].as_f64().unwrap_or(f64::NAN);
        let dist = &sides[2];
        let reduced = dist["reduced_bytes_per_step"].as_f64().unwrap_or(0.0);
        let gathered = dist["gathered_bytes_per_step"].as_f64().unwrap_or(0.0);
        let t1 = a.batch_size as f64 / base;
        let cell = |n: f64, gbps: f64| {
            let tc = comm_secs(reduced, gathered, a.ranks as f64, n, gbps);
            format!("{:.1}× (comm {:.1} ms)", t1 / (t1 / n + tc), tc * 1e3)
        };
        md += &format!(
            "| {} | {:.2} MB | {:.2} MB | {:.1} ms | {} | {} | {} | {} |\n",
            r["model"].as_str().unwrap_or(""),
            reduced / 1e6,
            gathered * a.ranks as f64 / 1e6,
            t1 * 1e3,
            cell(8.0, 25.0),
            cell(8.0, 100.0),
            cell(64.0, 25.0),
            cell(64.0, 100.0)
        );
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn communication_time_follows_the_ring_formulas() {
        // 2 ranks, 1 GB/s (8 Gb/s): all-reduce 2·½·8 MB = 8 MB, gather ½·(2·1 MB) = 1 MB
        let t = comm_secs(8e6, 1e6, 2.0, 2.0, 8.0);
        let want = 9e6 / 1e9 + ALPHA * ROUNDS;
        assert!((t - want).abs() < 1e-12, "{t} vs {want}");
        // one rank sends nothing
        assert_eq!(comm_secs(8e6, 1e6, 2.0, 1.0, 8.0), 0.0);
    }
}
