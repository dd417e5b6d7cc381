//! The crash test: a training process killed with SIGKILL at any of nine points — mid-epoch,
//! inside a checkpoint write, between its renames, while the best or the final model is
//! written, after the model, after the metrics — is resumed with `mtl train --resume` (from
//! another working directory), and the resumed run's predictions are byte-identical to those
//! of an uninterrupted run.
//!
//! Each point is a `crash_point` in the trainer: with `MTL_PAUSE_AT=point[:n]` the process
//! stops there and says so on stderr; this test then kills it with `Child::kill` (SIGKILL).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mtl(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mtl"))
        .args(args)
        .arg("--quiet")
        .current_dir(dir)
        .output()
        .expect("runs")
}

fn ok(out: std::process::Output) -> std::process::Output {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Starts a training run that pauses at `point`, waits until it is there, and kills it.
fn train_and_kill_at(dir: &Path, out: &str, point: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mtl"))
        .args(["train", "--config", "run.toml", "--out", out, "--quiet"])
        .current_dir(dir)
        .env(mtl_trainer::PAUSE_AT, point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.starts_with("mtl: paused at") => break,
            Ok(line) => seen.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("{point}: the run ended ({status}) without reaching the point: {seen:?}");
                }
                assert!(
                    started.elapsed() < Duration::from_secs(300),
                    "{point}: never paused"
                );
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                panic!("{point}: the run ended ({status}) without reaching the point: {seen:?}");
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "{point}: killed");
}

#[test]
fn a_run_killed_anywhere_resumes_to_the_same_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(mtl(
        d,
        &[
            "gen-data", "ccp", "--rows", "3000", "--small", "--dense", "2", "--out", "data",
        ],
    ));
    // 2400 training rows, batch 256: 10 steps an epoch, 20 in all; a checkpoint every 4
    // steps, an evaluation (and maybe a new best model) every 5
    std::fs::write(
        d.join("run.toml"),
        r#"schema = "data/synth_ccp_schema.toml"
[data]
train = "data/synth_ccp_train.csv"
valid = "data/synth_ccp_val.csv"
test = "data/synth_ccp_test.csv"
[model]
type = "esmm"
ctr_tower = { dims = [16] }
cvr_tower = { dims = [16] }
[train]
epochs = 2
batch_size = 256
checkpoint_every_steps = 4
eval_every_steps = 5
early_stopping = { metric = "ctr.auc", patience = 10 }
"#,
    )
    .unwrap();
    let predict = |run: &str| {
        let out = format!("{run}.csv");
        ok(mtl(
            d,
            &[
                "predict",
                "--model",
                run,
                "--data",
                "data/synth_ccp_test.csv",
                "--out",
                &out,
            ],
        ));
        std::fs::read(d.join(out)).unwrap()
    };
    ok(mtl(d, &["train", "--config", "run.toml", "--out", "reference"]));
    let reference = predict("reference");

    let elsewhere = tempfile::tempdir().unwrap();
    let points = [
        "step:3",                       // mid-epoch, before the first checkpoint
        "step:7",                       // mid-epoch, three steps after a checkpoint
        "checkpoint-written:2",         // a checkpoint's files written, not yet swapped in
        "checkpoint-between-renames:3", // the old checkpoint moved aside, the new one not in place
        "saving-best.bpk:2",            // while the best model so far is written
        "trained",                      // training done, the final model not yet written
        "saving-model.bpk",             // while the final model is written
        "model-saved",                  // the final model written, the metrics not
        "metrics-written",              // everything written, the run not yet marked finished
    ];
    for (k, point) in points.iter().enumerate() {
        let run = format!("run{k}");
        train_and_kill_at(d, &run, point);
        let status = mtl(d, &["eval", "--model", &run, "--data", "data/synth_ccp_test.csv"]);
        if status.status.success() {
            // only a run killed after its final model may have one
            assert!(k >= 7, "{point}: a model before the end of training");
        }
        let resumed = mtl(
            elsewhere.path(),
            &["train", "--resume", &d.join(&run).display().to_string()],
        );
        assert!(
            resumed.status.success(),
            "{point}: resume failed: {}",
            String::from_utf8_lossy(&resumed.stderr)
        );
        assert!(
            String::from_utf8_lossy(&resumed.stdout).contains("esmm: 20 steps"),
            "{point}: {}",
            String::from_utf8_lossy(&resumed.stdout)
        );
        assert!(
            predict(&run) == reference,
            "{point}: the resumed run's predictions differ from the uninterrupted run's"
        );
        // and the run is finished now
        let again = mtl(d, &["train", "--resume", &run]);
        assert!(
            String::from_utf8_lossy(&again.stderr).contains("already finished"),
            "{point}: {}",
            String::from_utf8_lossy(&again.stderr)
        );
    }
}
