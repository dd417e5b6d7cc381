//! What the tests of data-parallel training share (`mpi.rs`: ranks as MPI processes,
//! `ranks.rs`: ranks as threads, `mtl train --ranks N`): the data, the configs, and reading a
//! run's weights back.
#![allow(dead_code)] // each test file uses some of these

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::module::{ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use mtl_eval::ModelDir;
use mtl_layers::{MultiTaskModel, Registry, WithModel};
use mtl_models::Models;

/// The `mtl` binary under test.
pub fn mtl() -> &'static str {
    env!("CARGO_BIN_EXE_mtl")
}

/// `mtl ARGS` in `dir`, one process.
pub fn one(dir: &Path, args: &[&str]) -> Output {
    Command::new(mtl())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("runs mtl")
}

/// `out`, asserted to have succeeded (its stdout and stderr shown if not).
pub fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every float tensor of the model saved at `file` of the run in `dir`, in module order.
pub fn weights(dir: &Path, file: &str) -> Vec<Vec<f32>> {
    struct Floats(Vec<Vec<f32>>);
    impl ModuleVisitor for Floats {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().into_data().try_to_vec::<f32>().unwrap());
        }
    }
    struct Load(PathBuf);
    impl WithModel for Load {
        type Out = Vec<Vec<f32>>;
        type Error = anyhow::Error;
        fn run<M: MultiTaskModel + 'static>(self, model: M) -> anyhow::Result<Self::Out> {
            let model = model
                .try_load_file(&self.0)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let mut floats = Floats(Vec::new());
            model.visit(&mut floats);
            Ok(floats.0)
        }
    }
    let run = ModelDir::<Models>::open(dir).unwrap();
    let device = Device::flex();
    let layout = run.encoder.layout();
    Models::with_model(&run.model, &run.schema, layout, &device, Load(dir.join(file))).unwrap()
}

/// The largest difference between two runs' weights (the same tensors, in the same order).
pub fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// 6000 rows: 4800 to train on, 10 batches of 512 an epoch (the last of 192 rows); and the
/// 6000 validation rows of 60,000 made alike (`big/`): two evaluation batches of 4096, one a
/// rank.
pub fn data(d: &Path) {
    for (rows, out) in [("6000", "data"), ("60000", "big")] {
        ok(one(
            d,
            &[
                "gen-data", "ccp", "--rows", rows, "--small", "--dense", "2", "--out", out, "--quiet",
            ],
        ));
    }
}

pub const ESMM: &str = r#"[model]
type = "esmm"
ctr_tower = { dims = [16, 8], batch_norm = false }
cvr_tower = { dims = [16, 8], batch_norm = false }
[train]
embedding = "dense"
"#;

pub const MMOE: &str = r#"[model]
type = "mmoe"
n_experts = 4
expert = { dims = [16], batch_norm = false }
tower = { dims = [8], batch_norm = false }
gate_batch_norm = false
tasks = [{ label = "click" }, { label = "purchase" }]
[train]
embedding = "sparse"
untouched_rows = "fast-catch-up"
"#;

/// A run config: `model` (with its `[train]` head) for 2 epochs of batch 512 (20 steps),
/// with `data` added to its `[data]` table.
pub fn config(d: &Path, name: &str, model: &str, data: &str) {
    let text = format!(
        "schema = \"data/synth_ccp_schema.toml\"\n[data]\ntrain = \"data/synth_ccp_train.csv\"\n\
         valid = \"big/synth_ccp_val.csv\"\n{data}{model}epochs = 2\nbatch_size = 512\nlr = 3e-3\n\
         seed = 11\nema_decay = 0.9\ncheckpoint_every_steps = 4\nearly_stopping = false\n"
    );
    std::fs::write(d.join(name), text).unwrap();
}
