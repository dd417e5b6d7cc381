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
    let (mut child, _) = paused_at(dir, &["train", "--config", "run.toml", "--out", out], point);
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "{point}: killed");
}

/// Starts `mtl ARGS` in `dir` and waits until it pauses at `point`: the process, and the
/// lines it writes to stderr from then on.
fn paused_at(
    dir: &Path,
    args: &[&str],
    point: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mtl"))
        .args(args)
        .arg("--quiet")
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
    (child, rx)
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

#[test]
fn an_interrupted_command_removes_what_it_had_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(mtl(
        d,
        &["gen-data", "ccp", "--rows", "2000", "--small", "--out", "data"],
    ));
    std::fs::write(
        d.join("run.toml"),
        "schema = \"data/synth_ccp_schema.toml\"\n[data]\ntrain = \"data/synth_ccp_train.csv\"\n\
         [model]\ntype = \"esmm\"\nctr_tower = { dims = [8] }\ncvr_tower = { dims = [8] }\n\
         [train]\nbatch_size = 256\ncheckpoint_every_steps = 2\n",
    )
    .unwrap();
    // `kill -SIGNAL pid`, then the exit code, what was said after the pause, and the hidden
    // names left in `folder`
    let interrupt = |(mut child, said): (std::process::Child, std::sync::mpsc::Receiver<String>),
                     signal: &str,
                     folder: &Path| {
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = child.wait().unwrap();
        let said: Vec<String> = said.iter().collect();
        let mut hidden: Vec<String> = std::fs::read_dir(folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.') || n.ends_with(".tmp"))
            .collect();
        hidden.sort();
        (status.code(), said, hidden)
    };
    // training, interrupted while its first checkpoint is half written: the folder goes,
    // and the run still resumes
    let train = paused_at(
        d,
        &["train", "--config", "run.toml", "--out", "run"],
        "checkpoint-written",
    );
    let (code, said, hidden) = interrupt(train, "-TERM", &d.join("run"));
    assert_eq!(code, Some(128 + 15), "{said:?}");
    assert!(
        said.iter()
            .any(|l| l.contains("removed the unfinished") && l.contains("checkpoint.tmp")),
        "{said:?}"
    );
    assert!(hidden.iter().all(|n| n == ".lock"), "{hidden:?}");
    assert!(!d.join("run/checkpoint.tmp").exists());
    ok(mtl(d, &["train", "--resume", "run"]));
    std::fs::create_dir(d.join("scores")).unwrap();
    // predict, interrupted while it writes: no temp file of the output's size, no output
    let predict = paused_at(
        d,
        &[
            "predict",
            "--model",
            "run",
            "--data",
            "data/synth_ccp_test.csv",
            "--out",
            "scores/p.csv",
        ],
        "predict-writing",
    );
    let (code, said, hidden) = interrupt(predict, "-INT", &d.join("scores"));
    assert_eq!(code, Some(128 + 2), "{said:?}");
    assert!(
        said.iter().any(|l| l.contains("removed the unfinished")),
        "{said:?}"
    );
    assert!(hidden.is_empty(), "{hidden:?}");
    assert!(!d.join("scores/p.csv").exists());
}

/// Runs `mtl train --config run.toml --out run` in `d` under an address-space limit of `kib`
/// KiB (`ulimit -v`), requires it to fail with an error (exit 1, not an abort) and leave no
/// `run` folder, and returns what it said.
fn failed_train_under_limit(d: &Path, kib: u64) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {kib} && exec \"$0\" --quiet train --config run.toml --out run"
        ))
        .arg(env!("CARGO_BIN_EXE_mtl"))
        .current_dir(d)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "an error, not an abort: {stderr}");
    assert!(!d.join("run").exists(), "the failed run's folder is left");
    stderr
}

/// A run config over `t.csv` and the schema `s.toml` (ESMM, small towers).
const SMALL_RUN: &str = "schema = \"s.toml\"\n[data]\ntrain = \"t.csv\"\n[model]\ntype = \"esmm\"\n\
                         ctr_tower = { dims = [8] }\ncvr_tower = { dims = [8] }\n";

#[test]
fn a_table_beyond_the_memory_limit_is_refused_with_the_numbers_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut rows = String::from("click,purchase,big\n");
    for i in 0..300u64 {
        rows += &format!("{},{},{}\n", i % 2, u64::from(i % 10 == 1), i * 7919);
    }
    std::fs::write(d.join("t.csv"), rows).unwrap();
    // 2^23 rows × 64 = 2 GiB of table, about 10 GiB while training
    let schema = |buckets: u64| {
        format!(
            "embed_dim = 64\n[[sparse]]\nname = \"big\"\nhash_buckets = {buckets}\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n[[labels]]\nname = \"purchase\"\nkind = \"binary\"\n"
        )
    };
    std::fs::write(d.join("s.toml"), schema(1 << 23)).unwrap();
    std::fs::write(d.join("run.toml"), SMALL_RUN).unwrap();
    // under a 3 GB address-space limit
    let stderr = failed_train_under_limit(d, 3_000_000);
    for needle in [
        "8388608 rows × width 64, 2.0 GiB",
        "Adam's two moments 4.0",
        "ulimit -v",
        "lower vocab_size / hash_buckets or embed_dim",
    ] {
        assert!(stderr.contains(needle), "`{needle}` not in {stderr}");
    }
    // the failed new run took its folder with it: the mended command runs as given
    std::fs::write(d.join("s.toml"), schema(1 << 12)).unwrap();
    ok(mtl(d, &["train", "--config", "run.toml", "--out", "run"]));
}

/// A small tmpfs at `path` (root only), unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Self(path.to_path_buf()))
    }

    /// Fills the file system but for about `leave` bytes, with `.filler`.
    fn fill(&self, leave: u64) {
        use std::io::Write;
        let path = self.0.join(".filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let len = std::fs::metadata(&path).unwrap().len();
        f.set_len(len.saturating_sub(leave)).unwrap();
    }

    fn empty(&self) {
        let _ = std::fs::remove_file(self.0.join(".filler"));
    }

    /// Every name under the mount (but the filler), sorted.
    fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = walk(&self.0)
            .into_iter()
            .filter(|n| !n.ends_with(".filler"))
            .collect();
        names.sort();
        names
    }
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.display().to_string());
        if p.is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_with_its_reason_and_leaves_what_was_there() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(disk) = Tmpfs::mount(&d.join("disk"), "4m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root): the disk-full cases did not run");
        return;
    };
    ok(mtl(
        d,
        &["gen-data", "ccp", "--rows", "3000", "--small", "--out", "data"],
    ));
    std::fs::write(
        d.join("run.toml"),
        "schema = \"data/synth_ccp_schema.toml\"\n[data]\ntrain = \"data/synth_ccp_train.csv\"\n\
         [model]\ntype = \"esmm\"\nctr_tower = { dims = [8] }\ncvr_tower = { dims = [8] }\n\
         [train]\nbatch_size = 256\n",
    )
    .unwrap();
    let full = |out: &std::process::Output, what: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains("No space left on device"), "{what}: {stderr}");
    };
    // a finished run on the small disk, then `--resume --epochs 3` with the disk full: the
    // run stays finished after 1 epoch, its config saying so
    ok(mtl(d, &["train", "--config", "run.toml", "--out", "disk/run"]));
    let config = std::fs::read(d.join("disk/run/config.toml")).unwrap();
    let before = disk.listing();
    disk.fill(8 << 10);
    full(
        &mtl(d, &["train", "--resume", "disk/run", "--epochs", "3"]),
        "resume",
    );
    assert_eq!(std::fs::read(d.join("disk/run/config.toml")).unwrap(), config);
    assert_eq!(disk.listing(), before, "resume");
    disk.empty();
    let again = mtl(d, &["train", "--resume", "disk/run"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already finished"));
    // predict, convert (several shards) and a new run, each on a nearly full disk: an error
    // with the reason, and nothing new left behind
    disk.fill(4 << 10);
    let before = disk.listing();
    let test = "data/synth_ccp_test.csv";
    let train = "data/synth_ccp_train.csv";
    let mut cases = vec![
        (
            "predict",
            vec![
                "predict",
                "--model",
                "disk/run",
                "--data",
                test,
                "--out",
                "disk/p.csv",
            ],
        ),
        (
            "convert",
            vec!["convert", train, "--out", "disk/pq", "--rows-per-file", "500"],
        ),
        (
            "new run",
            vec!["train", "--config", "run.toml", "--out", "disk/run2"],
        ),
    ];
    if cfg!(feature = "onnx") {
        cases.push((
            "export",
            vec!["export", "--model", "disk/run", "--out", "disk/m.onnx"],
        ));
    }
    for (what, args) in cases {
        full(&mtl(d, &args), what);
        assert_eq!(disk.listing(), before, "{what} left something");
    }
}

#[test]
fn rows_beyond_the_memory_limit_are_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 600,000 short rows (6 MB) whose sequence pads to 1,000 ids: 2.4 GB once encoded
    let mut rows = String::from("click,purchase,u,hist\n");
    for i in 0..600_000u32 {
        rows += &format!(
            "{},{},{},{}|{}\n",
            i % 2,
            u32::from(i % 10 == 1),
            i % 7,
            i % 5,
            i % 3
        );
    }
    std::fs::write(d.join("t.csv"), rows).unwrap();
    std::fs::write(
        d.join("s.toml"),
        "embed_dim = 4\n[[sparse]]\nname = \"u\"\nfit = true\n[[sequence]]\nname = \"hist\"\nmax_len = 1000\nfit = true\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n[[labels]]\nname = \"purchase\"\nkind = \"binary\"\n",
    )
    .unwrap();
    std::fs::write(d.join("run.toml"), SMALL_RUN).unwrap();
    // under a 2.5 GB address-space limit
    let stderr = failed_train_under_limit(d, 2_500_000);
    for needle in [
        "t.csv: not enough memory for the encoded rows",
        "could not be allocated",
        "streaming = true",
    ] {
        assert!(stderr.contains(needle), "`{needle}` not in {stderr}");
    }
}

#[test]
fn encoded_caches_go_to_a_cache_folder_when_the_data_folder_cannot_take_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(mtl(
        d,
        &["gen-data", "ccp", "--rows", "2000", "--small", "--out", "data"],
    ));
    let run = |cache_dir: &str| {
        format!(
            "schema = \"data/synth_ccp_schema.toml\"\n[data]\ntrain = \"data/synth_ccp_train.csv\"\n{cache_dir}\
             [model]\ntype = \"esmm\"\nctr_tower = {{ dims = [8] }}\ncvr_tower = {{ dims = [8] }}\n[train]\nbatch_size = 256\n"
        )
    };
    let cached =
        |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).contains("from the encoded cache");
    let listing = |p: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(p)
            .map(|r| {
                r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    // `[data] cache_dir`: the caches there (named by a hash of the file's path), none beside
    std::fs::write(d.join("run.toml"), run("cache_dir = \"caches\"\n")).unwrap();
    assert!(!cached(&ok(mtl(
        d,
        &["train", "--config", "run.toml", "--out", "a"]
    ))));
    assert!(cached(&ok(mtl(
        d,
        &["train", "--config", "run.toml", "--out", "b"]
    ))));
    let caches = listing(&d.join("caches"));
    assert!(
        caches.len() == 1 && caches[0].ends_with("-synth_ccp_train.csv.mtl.arrow"),
        "{caches:?}"
    );
    assert!(!listing(&d.join("data")).iter().any(|n| n.ends_with(".mtl.arrow")));
    // a data folder that cannot be written (a read-only mount): the user's cache folder
    let Some(disk) = Tmpfs::mount(&d.join("ro"), "8m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root): the read-only case did not run");
        return;
    };
    for f in ["synth_ccp_schema.toml", "synth_ccp_train.csv"] {
        std::fs::copy(d.join("data").join(f), d.join("ro").join(f)).unwrap();
    }
    let remounted = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&disk.0)
        .status()
        .unwrap();
    assert!(remounted.success());
    std::fs::write(d.join("ro.toml"), run("").replace("data/", "ro/")).unwrap();
    let train = |out: &str| {
        Command::new(env!("CARGO_BIN_EXE_mtl"))
            .args(["train", "--config", "ro.toml", "--out", out, "--quiet"])
            .current_dir(d)
            .env("MTL_CACHE_DIR", d.join("user-cache"))
            .output()
            .unwrap()
    };
    assert!(!cached(&ok(train("c"))));
    assert!(
        cached(&ok(train("e"))),
        "the second run reads the cache it could not write beside"
    );
    assert_eq!(listing(&d.join("user-cache")).len(), 1);
}
