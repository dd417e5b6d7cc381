//! `cargo xtask onnx-check`: trains small models on generated data, exports them with
//! `mtl export --format onnx`, scores the test file with onnxruntime (in `.venv-onnx`, which
//! this task creates from `xtask/onnx/requirements.txt`) and compares with `mtl predict`.
//! Models the exporter cannot express are reported with its reason.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{build_mtl, ccp_data, ccp_data_with, model_toml, root, run, run_config, train_job, work_dir};

/// Largest difference accepted between onnxruntime's and `mtl predict`'s scores.
const TOLERANCE: f64 = 1e-5;

/// The Python with onnxruntime: `.venv-onnx`, created and filled on first use.
fn python() -> Result<PathBuf> {
    let venv = root().join(".venv-onnx");
    let python = venv.join("bin/python");
    let ready = python.exists()
        && Command::new(&python)
            .args(["-c", "import onnxruntime, numpy"])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        eprintln!("== installing onnxruntime into {}", venv.display());
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(root().join("xtask/onnx/requirements.txt")))?;
    }
    Ok(python)
}

/// Runs the check and writes `target/xtask/onnx/results.md`.
pub fn onnx_check(quick: bool) -> Result<()> {
    let mtl = build_mtl()?;
    let python = python()?;
    let rows = if quick { 20_000 } else { 100_000 };
    let dir = work_dir("onnx");
    let peer_data = ccp_data(&mtl, rows, 2022)?;
    // data with dense fields too (small vocabularies, three dense fields)
    let dense = ccp_data_with(
        &mtl,
        &format!("ccp-dense-{rows}"),
        rows,
        7,
        &["--small", "--dense", "3"],
    )?;
    let jobs = [
        ("esmm-example", "esmm", "example", &peer_data),
        ("esmm-large", "esmm", "large", &peer_data),
        ("shared_bottom-dense", "shared-bottom", "example", &dense),
        ("esmm-dense", "esmm", "example", &dense),
        ("mmoe-example", "mmoe", "example", &peer_data),
        ("mmoe-large", "mmoe", "large", &peer_data),
        ("ple-example", "ple", "example", &peer_data),
        ("ple-large", "ple", "large", &peer_data),
        ("aitm-example", "aitm", "example", &peer_data),
    ];
    let mut md = format!(
        "`cargo xtask onnx-check{}`: {rows} generated rows, 1 epoch; onnxruntime (CPU) on the test file vs `mtl predict`\n\n| job | result | max abs difference per output |\n|---|---|---|\n",
        if quick { " --quick" } else { "" }
    );
    let mut failed = Vec::new();
    for (name, kind, size, data) in jobs {
        // the example tables (configs/*-example.toml), whatever data they are given
        let model = model_toml(kind, size)?;
        let (row, ok) = check_job(&mtl, &python, &dir, name, &model, data)?;
        md += &row;
        if !ok {
            failed.push(name);
        }
    }
    std::fs::write(dir.join("results.md"), &md)?;
    println!("{md}");
    if !failed.is_empty() {
        bail!("ONNX scores differ from mtl predict's for {failed:?}");
    }
    Ok(())
}

/// Trains job `name` on `data`, predicts its test file, exports it to ONNX and scores the test
/// file with onnxruntime: the results table's row, and whether the scores agree (a model the
/// exporter refuses is a row saying why, not a failure).
fn check_job(
    mtl: &Path,
    python: &Path,
    dir: &Path,
    name: &str,
    model: &str,
    data: &Path,
) -> Result<(String, bool)> {
    let test = data.join("synth_ccp_test.csv");
    let config = run_config(
        &data.join("synth_ccp_schema.toml"),
        &data.join("synth_ccp_train.csv"),
        None,
        &test,
        model,
        2022,
        "epochs = 1\nbatch_size = 1024\n",
    );
    train_job(mtl, name, &config, 2, dir)?;
    let model_dir = dir.join(name);
    let scores = dir.join(format!("{name}-scores.csv"));
    run(Command::new(mtl)
        .args(["--quiet", "predict", "--model"])
        .arg(&model_dir)
        .arg("--data")
        .arg(&test)
        .arg("--out")
        .arg(&scores))?;
    let onnx = dir.join(format!("{name}.onnx"));
    let _ = std::fs::remove_file(&onnx);
    let export = Command::new(mtl)
        .args(["--quiet", "export", "--model"])
        .arg(&model_dir)
        .arg("--out")
        .arg(&onnx)
        .output()
        .context("running mtl export")?;
    if !export.status.success() {
        let why = String::from_utf8_lossy(&export.stderr).trim().replace('\n', " ");
        eprintln!("== {name}: not exported: {why}");
        return Ok((format!("| {name} | not exported: {why} | |\n"), true));
    }
    let out = Command::new(python)
        .arg(root().join("xtask/onnx/check_onnx.py"))
        .arg(&onnx)
        .arg(&test)
        .arg(&scores)
        .output()
        .context("running check_onnx.py")?;
    if !out.status.success() {
        bail!(
            "{name}: check_onnx.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line: Value = serde_json::from_slice(&out.stdout).context("check_onnx.py output")?;
    let diffs = line["max_abs_diff"].as_object().context("max_abs_diff")?;
    let worst = diffs.values().filter_map(Value::as_f64).fold(0.0f64, f64::max);
    let list: Vec<String> = diffs
        .iter()
        .map(|(k, v)| format!("{k} {:.1e}", v.as_f64().unwrap_or(f64::NAN)))
        .collect();
    let ok = worst <= TOLERANCE;
    eprintln!("== {name}: {} rows, max |diff| {worst:.2e}", line["rows"]);
    let row = format!(
        "| {name} | {} ({} rows, batch {}, onnxruntime {}) | {} |\n",
        if ok {
            "exported, equal within 1e-5"
        } else {
            "DIFFERS"
        },
        line["rows"],
        line["batch"],
        line["onnxruntime"].as_str().unwrap_or("?"),
        list.join(", ")
    );
    Ok((row, ok))
}
