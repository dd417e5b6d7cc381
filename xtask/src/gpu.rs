//! `cargo xtask gpu`: the prepared run for a machine with an NVIDIA GPU. It builds mtl with
//! the `wgpu` and `cuda` features, runs the backend-parity and row-sparse tests with both GPU
//! backends required, then `cargo xtask bench` (ESMM and MMOE, example and large) on CUDA,
//! wgpu and the CPU, CUDA also at GPU batch sizes, and torch-rechub on CUDA on the same files
//! when the peer's Python has a CUDA torch; everything goes into one results file.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::bench::{BenchArgs, bench};
use crate::{cargo, work_dir};

/// Options of `cargo xtask gpu`.
#[derive(Debug, clap::Args)]
pub struct GpuArgs {
    /// Rows of generated data.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// GPU batch sizes to bench on CUDA besides 1024.
    #[arg(long, default_value = "8192,65536")]
    batches: String,
    /// Skip torch-rechub.
    #[arg(long)]
    no_peer: bool,
    /// CPU threads for the CPU jobs (default: all).
    #[arg(long)]
    threads: Option<usize>,
}

/// `nvidia-smi`'s line for the GPU: name, driver, memory.
fn gpu_line() -> Result<String> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,driver_version,memory.total",
            "--format=csv,noheader",
        ])
        .output()
        .context("no NVIDIA GPU here (nvidia-smi cannot run): this task needs one")?;
    if !out.status.success() {
        bail!(
            "nvidia-smi failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs everything and writes `target/xtask/gpu/results.md`.
pub fn gpu(a: &GpuArgs) -> Result<()> {
    let gpu = gpu_line()?;
    let dir = work_dir("gpu");
    std::fs::create_dir_all(&dir)?;
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let mut md = format!("# GPU run\n\nGPU: {gpu}\n\n");
    // 1. parity on both GPU backends (a backend that cannot start fails the run, not skips)
    eprintln!("== parity and row-sparse tests on wgpu and cuda");
    let out = cargo()
        .args([
            "test",
            "--release",
            "-p",
            "mtl-trainer",
            "--features",
            "wgpu,cuda",
        ])
        .args(["--test", "parity", "--test", "sparse", "--", "--nocapture"])
        .env("MTL_REQUIRE_WGPU", "1")
        .env("MTL_REQUIRE_CUDA", "1")
        .output()
        .context("running the parity tests")?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("parity.log"), &log)?;
    md += &format!(
        "## Parity (`cargo test --release -p mtl-trainer --features wgpu,cuda --test parity --test sparse`)\n\n{}\n\n```\n{}\n```\n\n",
        if out.status.success() {
            "passed"
        } else {
            "FAILED (see parity.log)"
        },
        log.lines()
            .filter(|l| l.contains("max |diff|") || l.starts_with("test result") || l.contains("FAILED"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // 2. the benches: (backend, batch, table place, with the peer)
    let mut jobs = vec![
        ("cuda", 1024, "device", !a.no_peer),
        ("cuda", 1024, "host", false),
        ("wgpu", 1024, "device", false),
        ("flex", 1024, "host", false),
    ];
    for b in a
        .batches
        .split(',')
        .filter_map(|b| b.trim().parse::<usize>().ok())
    {
        jobs.push(("cuda", b, "device", !a.no_peer));
    }
    for (backend, batch, table, peer) in jobs {
        let tag = format!("gpu-{backend}-{batch}-{table}");
        eprintln!("== bench {tag}");
        let args = BenchArgs {
            quick: false,
            rows: Some(a.rows),
            threads: vec![if backend == "flex" { threads } else { 2 }],
            no_micro: true,
            embedding: "sparse".into(),
            peer,
            peer_python: None,
            peer_dir: None,
            seeds: 1,
            models: "esmm,mmoe".into(),
            backend: backend.into(),
            features: "wgpu,cuda".into(),
            batch_size: batch,
            embedding_table: table.into(),
            peer_device: "cuda".into(),
            tag: Some(tag.clone()),
            avx2: false,
        };
        md += &format!("## {backend}, batch {batch}, table on the {table}\n\n");
        match bench(&args) {
            Ok(()) => {
                md += &std::fs::read_to_string(work_dir(&tag).join("results.md")).unwrap_or_default();
            }
            Err(e) => md += &format!("failed: {e:#}\n"),
        }
        md += "\n";
        std::fs::write(dir.join("results.md"), &md)?;
    }
    println!("{md}");
    eprintln!("== wrote {}", dir.join("results.md").display());
    Ok(())
}
