//! Data-parallel training with ranks as threads of one process (`mtl train --ranks N`, no MPI
//! needed): the same computation as one process, rank 0 alone writing the run.
//!
//! - Equivalence: 2 ranks × a local batch of 256 give the weights of 1 process × 512 after 20
//!   steps (same seed, same rows in each step) within 1e-5, ESMM on the dense path and MMOE on
//!   the row-sparse host table with catch-up, the weight average and 2 shards; two runs of the
//!   same job are the same bit for bit (the ranks draw their initial weights in turn).
//! - Dropout is refused (the ranks would share one random stream), a leader that fails ends
//!   every rank without a hang and leaves no run behind, `--ranks 0` is an error.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{ESMM, MMOE, config, data, max_diff, ok, one, weights};

/// `mtl --threads 2 train --ranks 2 ARGS` in `dir`.
fn two_ranks(dir: &Path, args: &[&str]) -> Output {
    one(
        dir,
        &[&["--threads", "2", "train", "--ranks", "2"], args].concat(),
    )
}

#[test]
fn thread_ranks_train_the_model_one_process_trains() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    data(d);
    for (name, model, split) in [("esmm", ESMM, "shards = 1\n"), ("mmoe", MMOE, "shards = 2\n")] {
        let toml = format!("{name}.toml");
        config(d, &toml, model, split);
        let (solo, pair, again) = (format!("{name}-1"), format!("{name}-2"), format!("{name}-2b"));
        ok(one(d, &["train", "--config", &toml, "--out", &solo, "--quiet"]));
        let out = ok(two_ranks(d, &["--config", &toml, "--out", &pair, "--quiet"]));
        // one summary: rank 0's
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.matches("steps on flex").count(), 1, "{stdout}");
        assert!(stdout.contains(&format!("{name}: 20 steps")), "{stdout}");
        ok(two_ranks(d, &["--config", &toml, "--out", &again, "--quiet"]));
        for file in ["checkpoint/model.bpk", "model.bpk"] {
            let (a, b) = (weights(&d.join(&solo), file), weights(&d.join(&pair), file));
            let diff = max_diff(&a, &b);
            eprintln!("{name} {file}: 1 process vs 2 thread ranks, largest weight difference {diff:e}");
            assert!(diff <= 1e-5, "{name} {file}: weights differ by {diff}");
            // the comparison can fail: the weights moved from their start
            assert!(a.iter().flatten().any(|w| *w != 0.0));
            assert!(
                b == weights(&d.join(&again), file),
                "{name} {file}: two runs differ"
            );
        }
        // only rank 0 wrote: one metrics file, which says how the rows were split
        let metrics = std::fs::read_to_string(d.join(&pair).join("metrics.json")).unwrap();
        if name == "mmoe" {
            assert!(
                metrics.contains("rows 0..2400 of 4800 (this rank's shards)"),
                "{metrics}"
            );
        }
    }
}

#[test]
fn thread_ranks_refuse_dropout_and_end_together_when_the_leader_fails() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    data(d);
    let dropout = ESMM.replace(
        "cvr_tower = { dims = [16, 8], batch_norm = false }",
        "cvr_tower = { dims = [16, 8], batch_norm = false, dropout = 0.2 }",
    );
    assert_ne!(dropout, ESMM);
    config(d, "dropout.toml", &dropout, "");
    let out = two_ranks(d, &["--config", "dropout.toml", "--out", "m"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("model.cvr_tower.dropout") && stderr.contains("--ranks"),
        "{stderr}"
    );
    assert!(!d.join("m").exists());
    // in one process the same config trains
    ok(one(
        d,
        &[
            "train",
            "--config",
            "dropout.toml",
            "--out",
            "m1",
            "--quiet",
            "--max-steps",
            "2",
        ],
    ));
    // the leader cannot open its TensorBoard events (the folder asked for is a file): every
    // rank ends, the new run's folder is removed
    config(d, "esmm.toml", ESMM, "");
    std::fs::write(d.join("tb"), "a file, not a folder").unwrap();
    let started = Instant::now();
    let out = two_ranks(d, &["--config", "esmm.toml", "--out", "m", "--tensorboard", "tb"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("rank 0") && stderr.contains("tb"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(!d.join("m").exists());
    let out = one(d, &["train", "--ranks", "0", "--config", "esmm.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ranks 0"));
}
