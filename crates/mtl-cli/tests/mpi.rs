//! Data-parallel training over MPI (`--features mtl-cli/mpi`; needs `mpirun`, e.g. Debian's
//! `openmpi-bin`): `mpirun -np 2 mtl train` is the same computation as one process.
//!
//! - Equivalence: 2 ranks × a local batch of 256 give the weights of 1 process × 512 after 20
//!   steps (same seed, same rows in each step) within 1e-5 — ESMM on the dense path, MMOE on
//!   the row-sparse host table with (strided) catch-up and the weight average — and the last batch of
//!   each epoch (192 rows) is split too. 2 ranks as threads of one process (`--ranks 2`) give
//!   the 2 MPI ranks' weights bit for bit.
//! - Validation metrics recorded by the 2-rank run (each rank predicting one of the two
//!   evaluation batches) equal `mtl eval` of its model in one process.
//! - A rank killed mid-epoch ends the job fast, naming the rank; `--resume` on 2 ranks then
//!   predicts byte-identically to an uninterrupted 2-rank run, and a run resumed on 1 rank
//!   trains the same model (the rows of each step are the same, split otherwise).
#![cfg(feature = "mpi")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ESMM, MMOE, config, data, max_diff, mtl, ok, one, weights};

/// `mpirun -np N mtl --threads 1 ARGS` in `dir` (root allowed, as in CI's containers).
fn ranks(n: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-np", &n.to_string(), mtl(), "--threads", "1"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    cmd
}

fn on_ranks(n: usize, dir: &Path, args: &[&str]) -> Output {
    ranks(n)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("runs mpirun (install openmpi-bin)")
}

#[test]
fn two_ranks_train_the_model_one_process_trains() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    data(d);
    // ESMM in one shard: each of the 2 ranks reads every row and takes half of each batch;
    // MMOE in 2 shards, in memory and streamed: each rank reads its own 2,400 rows only
    for (name, model, split) in [
        ("esmm", ESMM, "shards = 1\n"),
        ("mmoe", MMOE, "shards = 2\n"),
        (
            "mmoe-streamed",
            MMOE,
            "shards = 2\nstreaming = true\nshuffle_buffer = 1000\n",
        ),
        // sample weights (the generator's true click probability as a weight column): each
        // rank's loss is its rows' weighted mean, the ranks' combined by their total weight
        ("esmm-weighted", ESMM, "shards = 1\nweight = \"p_click\"\n"),
        ("mmoe-weighted", MMOE, "shards = 2\nweight = \"p_click\"\n"),
    ] {
        let toml = format!("{name}.toml");
        config(d, &toml, model, split);
        let (solo, pair) = (format!("{name}-1"), format!("{name}-2"));
        ok(one(d, &["train", "--config", &toml, "--out", &solo, "--quiet"]));
        let out = ok(on_ranks(
            2,
            d,
            &["train", "--config", &toml, "--out", &pair, "--quiet"],
        ));
        // the same job as threads of one process (`--ranks 2`): the same floats
        let threads = format!("{name}-threads");
        let args = ["--threads", "2", "train", "--ranks", "2", "--config", &toml];
        ok(one(d, &[&args[..], &["--out", &threads, "--quiet"]].concat()));
        // one summary: rank 0's
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.matches("steps on flex").count(), 1, "{stdout}");
        let kind = name.split('-').next().unwrap_or(name);
        assert!(stdout.contains(&format!("{kind}: 20 steps")), "{stdout}");
        for file in ["checkpoint/model.bpk", "model.bpk"] {
            let (a, b) = (weights(&d.join(&solo), file), weights(&d.join(&pair), file));
            let diff = max_diff(&a, &b);
            eprintln!("{name} {file}: 1 process vs 2 ranks, largest weight difference {diff:e}");
            assert!(diff <= 1e-5, "{name} {file}: weights differ by {diff}");
            assert!(
                b == weights(&d.join(&threads), file),
                "{name} {file}: 2 ranks as threads differ from 2 MPI ranks"
            );
            // the comparison can fail: another seed's weights are far off
            assert!(a.iter().flatten().any(|w| *w != 0.0));
        }
        // the validation metrics the 2-rank run recorded are its model's, as one process
        // evaluates them
        let metrics: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join(&pair).join("metrics.json")).unwrap())
                .unwrap();
        if name.starts_with("mmoe") && !name.contains("streamed") {
            // rank 0 (which writes the metrics) read the first half of the rows only
            let reads = metrics.to_string();
            assert!(
                reads.contains("rows 0..2400 of 4800 (this rank's shards)"),
                "{reads}"
            );
        }
        let mut eval = vec![
            "eval",
            "--model",
            &pair,
            "--data",
            "big/synth_ccp_val.csv",
            "--out",
            "eval.json",
        ];
        if name.ends_with("weighted") {
            eval.extend(["--weight", "p_click"]);
        }
        ok(one(d, &eval));
        let evaluated: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("eval.json")).unwrap()).unwrap();
        let recorded = metrics["valid"].as_array().expect("recorded metrics");
        let evaluated = evaluated.as_array().expect("evaluated metrics");
        assert!(
            !recorded.is_empty() && recorded.len() == evaluated.len(),
            "{metrics}"
        );
        for (r, e) in recorded.iter().zip(evaluated) {
            assert_eq!(r["name"], e["name"]);
            assert!(r["binary"]["auc"].is_f64(), "{r}");
            assert_eq!(r["binary"], e["binary"], "{name}: recorded {r}, evaluated {e}");
        }
    }
}

/// Starts `mpirun -np 2 mtl train` with rank 1 paused at its 5th step, kills rank 1 (SIGKILL)
/// and returns how long the job took to end and what it printed.
fn kill_rank_one(d: &Path, toml: &str, out: &str) -> (Duration, String, bool) {
    let mut child = ranks(2)
        .args(["train", "--config", toml, "--out", out, "--quiet"])
        .current_dir(d)
        .env(mtl_trainer::PAUSE_AT, "step:5@1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs mpirun");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let pid = loop {
        let line = lines.next().expect("rank 1 pauses").unwrap();
        seen += &line;
        if let Some(rest) = line.strip_prefix("mtl: paused at step (pid ") {
            break rest.trim_end_matches(')').to_string();
        }
    };
    let killed = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success()
    );
    for line in lines {
        seen += &line.unwrap();
        seen.push('\n');
    }
    let status = child.wait().unwrap();
    (killed.elapsed(), seen, status.success())
}

#[test]
fn a_killed_rank_ends_the_job_and_the_run_resumes_on_any_number_of_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    data(d);
    config(d, "run.toml", MMOE, "");
    ok(on_ranks(
        2,
        d,
        &["train", "--config", "run.toml", "--out", "whole", "--quiet"],
    ));
    let (took, said, success) = kill_rank_one(d, "run.toml", "killed");
    assert!(!success, "the job fails");
    eprintln!("the job ended {took:?} after rank 1 was killed");
    assert!(took < Duration::from_secs(60), "ended {took:?} after the kill");
    assert!(said.contains("rank 1"), "names the rank: {said}");
    // the last checkpoint (step 4) resumes on 2 ranks to the same predictions, byte for byte
    ok(on_ranks(2, d, &["train", "--resume", "killed", "--quiet"]));
    let predict = |run: &str| {
        let out = format!("{run}.csv");
        ok(one(
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
    assert_eq!(predict("killed"), predict("whole"));
    // and on one rank: the same model, the step's rows summed in another order
    let (_, _, _) = kill_rank_one(d, "run.toml", "moved");
    ok(one(d, &["train", "--resume", "moved", "--quiet"]));
    let diff = max_diff(
        &weights(&d.join("moved"), "model.bpk"),
        &weights(&d.join("whole"), "model.bpk"),
    );
    eprintln!("resumed on 1 rank vs 2 ranks throughout: largest weight difference {diff:e}");
    assert!(diff <= 1e-5, "resumed on 1 rank: weights differ by {diff}");
}

/// A leader that cannot open its TensorBoard events (the folder asked for is a file) ends the
/// job on every rank, naming the file, instead of leaving the others waiting in a collective;
/// the new run's folder is removed. The job is killed after 120 s should it hang.
#[test]
fn a_leader_that_cannot_open_its_events_ends_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    data(d);
    config(d, "esmm.toml", ESMM, "");
    std::fs::write(d.join("tb"), "a file, not a folder").unwrap();
    let started = Instant::now();
    let mut child = ranks(2)
        .args([
            "train",
            "--config",
            "esmm.toml",
            "--out",
            "m",
            "--tensorboard",
            "tb",
        ])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs mpirun");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the job hung: killed after 120 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("tb") && stderr.contains("rank 1: rank 0 could not set up"),
        "{stderr}"
    );
    assert!(!d.join("m").exists());
}
