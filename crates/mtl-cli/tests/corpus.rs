//! The bad-input corpus (`tests/corpus/`, see its README): every case runs the `mtl` binary on
//! its files and must end, without a panic and within a time limit, with the expected exit
//! code and a message naming what is wrong.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// One case's expectations.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    args: Vec<String>,
    exit: i32,
    stderr: Vec<String>,
    #[serde(default)]
    max_stderr_bytes: Option<usize>,
}

/// A case that ran longer than this is a hang.
const LIMIT: Duration = Duration::from_secs(120);

fn corpus() -> PathBuf {
    // cargo sets the variable when it runs the test; the compiled-in path is a fallback only
    // (a binary reused through a shared target directory carries the clone it was built in)
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/corpus")
}

fn copy_into(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_into(&entry.path(), &target);
        } else if entry.file_name() != "case.toml" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Runs one case; `Err` says how it failed.
fn run_case(dir: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(dir.join("case.toml")).map_err(|e| e.to_string())?;
    let case: Case = toml::from_str(&text).map_err(|e| format!("case.toml: {e}"))?;
    let work = tempfile::tempdir().unwrap();
    copy_into(&corpus().join("_base"), work.path());
    copy_into(dir, work.path());
    let stderr_path = work.path().join(".stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mtl"))
        .args(&case.args)
        .arg("--quiet")
        .current_dir(work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {LIMIT:?}: a hang"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let mut problems = Vec::new();
    if stderr.contains("panicked") {
        problems.push("panicked".to_string());
    }
    if status.code() != Some(case.exit) {
        problems.push(format!("exit {:?}, expected {}", status.code(), case.exit));
    }
    for fragment in &case.stderr {
        if !stderr.contains(fragment.as_str()) {
            problems.push(format!("`{fragment}` not in stderr"));
        }
    }
    if let Some(max) = case.max_stderr_bytes
        && stderr.len() > max
    {
        problems.push(format!(
            "{} bytes of stderr, at most {max} expected",
            stderr.len()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n    stderr: {}", problems.join("; "), stderr.trim()))
    }
}

#[test]
fn every_bad_input_case_fails_cleanly() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.toml").is_file())
        .collect();
    cases.sort();
    assert!(cases.len() >= 40, "the corpus has {} cases", cases.len());
    // two at a time: each case is one short process
    let failures: Vec<String> = std::thread::scope(|scope| {
        let halves: Vec<_> = [0, 1]
            .into_iter()
            .map(|k| {
                let cases = &cases;
                scope.spawn(move || {
                    cases
                        .iter()
                        .skip(k)
                        .step_by(2)
                        .filter_map(|dir| {
                            run_case(dir)
                                .err()
                                .map(|e| format!("{}: {e}", dir.file_name().unwrap().to_string_lossy()))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
