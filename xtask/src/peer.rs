//! The peer: torch-rechub 0.9.0 on PyTorch (CPU), run by the project's own harness in
//! `xtask/peer/` on the same files as mtl, so that `cargo xtask bench --peer` measures both in
//! one run.
//!
//! xtask drives the harness's scripts (`gen_data.py`, `bench_torch_rechub.py`) with the Python
//! the user installed `xtask/peer/requirements.txt` into; it never installs anything itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::run;

/// Where the peer's scripts are and which Python runs them.
pub struct Peer {
    python: PathBuf,
    dir: PathBuf,
}

/// How to install the peer, printed when it is missing.
const SETUP: &str = "set it up once (a few GB of wheels):\n  python3 -m venv .venv-peer && .venv-peer/bin/pip install -r xtask/peer/requirements.txt\nor point MTL_PEER_PYTHON / --peer-python at a Python that has them";

impl Peer {
    /// Finds the peer's scripts and a Python with torch and torch-rechub (with `train` false,
    /// one that runs the data generator: numpy), or says how to get them.
    ///
    /// Defaults: `<root>/.venv-peer/bin/python` and `<root>/xtask/peer`; the environment
    /// variables `MTL_PEER_PYTHON` and `MTL_PEER_DIR` override them, flags override both.
    pub fn locate(root: &Path, python: Option<PathBuf>, dir: Option<PathBuf>, train: bool) -> Result<Self> {
        let python = python
            .or_else(|| std::env::var_os("MTL_PEER_PYTHON").map(PathBuf::from))
            .unwrap_or_else(|| root.join(".venv-peer/bin/python"));
        let dir = dir
            .or_else(|| std::env::var_os("MTL_PEER_DIR").map(PathBuf::from))
            .unwrap_or_else(|| root.join("xtask/peer"));
        for script in ["gen_data.py", "bench_torch_rechub.py"] {
            if !dir.join(script).is_file() {
                bail!(
                    "the peer's {script} is not in {} (set --peer-dir or MTL_PEER_DIR)",
                    dir.display()
                );
            }
        }
        let (code, needs) = if train {
            (
                "import torch, torch_rechub, numpy, pandas, sklearn, scipy; print(torch.__version__, torch_rechub.__version__)",
                "torch and torch-rechub",
            )
        } else {
            (
                "import numpy; print(numpy.__version__)",
                "numpy (for the data generator)",
            )
        };
        let probe = Command::new(&python).args(["-c", code]).output();
        match probe {
            Ok(out) if out.status.success() => {
                eprintln!(
                    "== peer: {} ({needs}: {})",
                    python.display(),
                    String::from_utf8_lossy(&out.stdout).trim()
                );
            }
            Ok(out) => bail!(
                "{} cannot import {needs}:\n{}\n{SETUP}",
                python.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => bail!("cannot run {}: {e}\n{SETUP}", python.display()),
        }
        Ok(Self { python, dir })
    }

    /// Generates (or reuses) the data set under `out` with the harness's `gen_data.py`, writes
    /// mtl's schema for it, and returns the files' prefix (`<out>/synth_ccp`).
    pub fn gen_data(&self, rows: usize, seed: u64, out: &Path) -> Result<PathBuf> {
        let prefix = out.join("synth_ccp");
        let meta_path = out.join("synth_ccp_meta.json");
        if meta_path.exists() {
            eprintln!("== reusing {}", out.display());
        } else {
            eprintln!("== generating {rows} rows with xtask/peer/gen_data.py");
            std::fs::create_dir_all(out)?;
            run(Command::new(&self.python)
                .arg(self.dir.join("gen_data.py"))
                .args(["--rows", &rows.to_string(), "--seed", &seed.to_string(), "--out"])
                .arg(out.join("synth_ccp.csv")))?;
        }
        let meta: Value = serde_json::from_slice(
            &std::fs::read(&meta_path).with_context(|| format!("reading {}", meta_path.display()))?,
        )
        .with_context(|| format!("parsing {}", meta_path.display()))?;
        let schema = schema_from_meta(&meta).with_context(|| format!("in {}", meta_path.display()))?;
        std::fs::write(out.join("synth_ccp_schema.toml"), schema)?;
        Ok(prefix)
    }

    /// Trains one torch-rechub job (`model` ESMM or MMOE, `config` example or large) for one
    /// epoch on the files at `prefix`, with training seed `seed`, and returns its JSON result
    /// line.
    pub fn bench_job(
        &self,
        prefix: &Path,
        model: &str,
        config: &str,
        job: JobOptions<'_>,
        log: &Path,
    ) -> Result<Value> {
        let JobOptions {
            threads,
            seed,
            batch,
            device,
            epochs,
            avx2,
        } = job;
        std::fs::create_dir_all(log)?;
        let results = log.join(format!("{model}-{config}.jsonl"));
        if results.exists() {
            std::fs::remove_file(&results)?;
        }
        eprintln!("== torch-rechub {model} {config}");
        // its driver prints every result line; they are read back from `results` below
        let stdout = std::fs::File::create(log.join(format!("{model}-{config}.stdout")))?;
        run(Command::new(&self.python)
            .arg(self.dir.join("bench_torch_rechub.py"))
            .arg("--data")
            .arg(prefix)
            .args([
                "--threads",
                &threads.to_string(),
                "--models",
                model,
                "--configs",
                config,
                "--seed",
                &seed.to_string(),
                "--batch",
                &batch.to_string(),
                "--device",
                device,
                "--epochs",
                &epochs.to_string(),
            ])
            .arg("--results")
            .arg(&results)
            .arg("--logdir")
            .arg(log)
            // on a 2-core machine PyTorch's spinning OpenMP threads make it many times slower
            // under any other load; the peer's README measures with PASSIVE
            .env("OMP_WAIT_POLICY", "PASSIVE")
            .envs(PEER_AVX2_ENV.iter().copied().filter(|_| avx2))
            .stdout(stdout))?;
        let text =
            std::fs::read_to_string(&results).with_context(|| format!("reading {}", results.display()))?;
        let line = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["model"] == model && v["config"] == config)
            .with_context(|| format!("no {model} {config} result in {}", results.display()))?;
        if let Some(err) = line["error"].as_str() {
            bail!("torch-rechub {model} {config} failed: {err}");
        }
        Ok(line)
    }
}

/// How one peer job runs.
#[derive(Debug, Clone, Copy)]
pub struct JobOptions<'a> {
    /// CPU threads.
    pub threads: usize,
    /// Training seed.
    pub seed: u64,
    /// Training batch size.
    pub batch: usize,
    /// `cpu` or `cuda`.
    pub device: &'a str,
    /// Training epochs (more than one: validation AUCs after each, as `val_by_epoch`).
    pub epochs: usize,
    /// Keep PyTorch to AVX2 (its own kernels, MKL and oneDNN), as on a CPU without AVX-512.
    pub avx2: bool,
}

/// The environment that keeps PyTorch's CPU kernels to AVX2: ATen's dispatch, MKL's and
/// oneDNN's instruction sets.
pub const PEER_AVX2_ENV: [(&str, &str); 3] = [
    ("ATEN_CPU_CAPABILITY", "avx2"),
    ("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
    ("ONEDNN_MAX_CPU_ISA", "AVX2"),
];

/// mtl's schema for the peer's files: 10 user and 10 item id fields with the vocabularies in
/// `synth_ccp_meta.json`, labels `click` and `purchase`.
pub fn schema_from_meta(meta: &Value) -> Result<String> {
    let mut toml = format!(
        "# Schema of the peer's synthetic click/conversion data (gen_data.py, seed {}, {} rows).\nembed_dim = 16\n",
        meta["seed"], meta["rows"]
    );
    for (side, prefix, key) in [("user", "u", "user_vocab"), ("item", "i", "item_vocab")] {
        let vocab = meta[key]
            .as_array()
            .with_context(|| format!("`{key}` is missing or not a list"))?;
        for (k, v) in vocab.iter().enumerate() {
            let v = v
                .as_u64()
                .filter(|&v| v > 0)
                .with_context(|| format!("`{key}[{k}]` is not a positive integer"))?;
            toml += &format!("\n[[sparse]]\nname = \"{prefix}{k}\"\nvocab_size = {v}\ngroup = \"{side}\"\n");
        }
    }
    toml += "\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n\n[[labels]]\nname = \"purchase\"\nkind = \"binary\"\n";
    Ok(toml)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema_lists_every_field_with_its_vocabulary() {
        let meta = json!({ "seed": 7, "rows": 10, "user_vocab": [100, 5], "item_vocab": [30] });
        let s = schema_from_meta(&meta).unwrap();
        let doc: toml::Table = s.parse().unwrap();
        let sparse: Vec<(String, i64, String)> = doc["sparse"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().unwrap().to_string(),
                    f["vocab_size"].as_integer().unwrap(),
                    f["group"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let expect = [("u0", 100, "user"), ("u1", 5, "user"), ("i0", 30, "item")];
        let expect: Vec<(String, i64, String)> = expect
            .iter()
            .map(|(n, v, g)| (n.to_string(), *v, g.to_string()))
            .collect();
        assert_eq!(sparse, expect);
        let labels: Vec<&str> = doc["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap())
            .collect();
        assert_eq!(labels, ["click", "purchase"]);
        assert_eq!(doc["embed_dim"].as_integer(), Some(16));
    }

    #[test]
    fn bad_meta_is_an_error_naming_the_key() {
        let meta = json!({ "seed": 7, "rows": 10, "user_vocab": [100, 0], "item_vocab": [30] });
        let e = schema_from_meta(&meta).unwrap_err().to_string();
        assert!(e.contains("user_vocab[1]"), "{e}");
        let meta = json!({ "seed": 7, "rows": 10, "user_vocab": [100] });
        let e = schema_from_meta(&meta).unwrap_err().to_string();
        assert!(e.contains("item_vocab"), "{e}");
    }
}
