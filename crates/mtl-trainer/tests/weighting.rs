//! Learned loss weighting end to end: uncertainty weights move as Kendall et al.'s formula
//! predicts on tasks of very different loss scales, GradNorm brings the tasks' weighted
//! gradient norms within a band that fixed weights leave far apart, both rules train ESMM, MMOE
//! and PLE, and a resumed run continues with the same learned weights.

use std::path::{Path, PathBuf};

mod common;

use mtl_models::Models;

/// A run config whose model is any registered type.
type RunConfig = mtl_trainer::RunConfig<Models>;
use mtl_trainer::{EvalRecord, LossWeighting, TrainOptions, TrainSettings, parse_model};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Two sparse fields of 50 ids; `y1 = a_u + b_i + noise`, `y2 = 10 (c_u − d_i) + noise`: two
/// regression tasks whose losses (and gradients) differ by about two orders of magnitude.
fn scaled_pair(dir: &Path) -> Files {
    let mut rng = StdRng::seed_from_u64(5);
    let effects: Vec<[f64; 4]> = (0..50)
        .map(|_| std::array::from_fn(|_| rng.random::<f64>() * 2.0 - 1.0))
        .collect();
    let mut files = Vec::new();
    for (name, rows) in [("train", 8_000), ("valid", 1_000)] {
        let mut text = String::from("u,i,y1,y2\n");
        for _ in 0..rows {
            let (u, i) = (rng.random_range(0..50), rng.random_range(0..50));
            let y1 = effects[u][0] + effects[i][1] + 0.3 * (rng.random::<f64>() - 0.5);
            let y2 = 10.0 * (effects[u][2] - effects[i][3]) + 3.0 * (rng.random::<f64>() - 0.5);
            text += &format!("{u},{i},{y1:.4},{y2:.4}\n");
        }
        let path = dir.join(format!("{name}.csv"));
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    let schema = dir.join("schema.toml");
    std::fs::write(
        &schema,
        "embed_dim = 4\nembed_init_std = 0.1\n[[sparse]]\nname = \"u\"\nvocab_size = 50\n[[sparse]]\nname = \"i\"\nvocab_size = 50\n[[labels]]\nname = \"y1\"\nkind = \"regression\"\n[[labels]]\nname = \"y2\"\nkind = \"regression\"\n",
    )
    .unwrap();
    let [train, valid]: [PathBuf; 2] = files.try_into().unwrap();
    Files { schema, train, valid }
}

/// burn seeds one random generator per device, shared by the whole process: tests training
/// at the same time would draw from each other's stream, so the runs here take turns (the
/// resume test compares two runs bit for bit).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the turn for the calling test (a test that failed earlier leaves it usable).
fn turn() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A schema and its training and validation files.
struct Files {
    schema: PathBuf,
    train: PathBuf,
    valid: PathBuf,
}

const MMOE_Y: &str = "type = \"mmoe\"\nn_experts = 2\nexpert = { dims = [8] }\ntower = { dims = [4] }\ntasks = [{ label = \"y1\" }, { label = \"y2\" }]";

fn run(
    dir: &Path,
    name: &str,
    files: &Files,
    model: &str,
    weighting: LossWeighting,
    epochs: usize,
) -> Vec<EvalRecord> {
    let config = run_config(files, model, weighting, epochs);
    let out = dir.join(name);
    mtl_trainer::train::<Models>(Some(&config), &out, false, &TrainOptions::default()).unwrap();
    history(&out)
}

/// The run config every test here trains with: batch 128, lr 3e-3, seed 1, an evaluation every
/// 25 steps.
fn run_config(files: &Files, model: &str, weighting: LossWeighting, epochs: usize) -> RunConfig {
    common::run_config(
        &files.schema,
        &files.train,
        Some(&files.valid),
        None,
        parse_model::<Models>(model).unwrap(),
        TrainSettings {
            epochs,
            batch_size: 128,
            lr: 3e-3,
            seed: 1,
            eval_every_steps: Some(25),
            loss_weighting: weighting,
            ..TrainSettings::default()
        },
    )
}

/// A finished run's evaluation history.
fn history(out: &Path) -> Vec<EvalRecord> {
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    serde_json::from_value(metrics["history"].clone()).unwrap()
}

fn value(pairs: &[(String, f64)], name: &str) -> f64 {
    pairs.iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn uncertainty_weights_follow_the_inverse_of_each_task_loss() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let files = scaled_pair(dir.path());
    let history = run(
        dir.path(),
        "u",
        &files,
        MMOE_Y,
        LossWeighting::Uncertainty { lr: 0.02 },
        3,
    );
    let last = history.last().unwrap();
    let (w1, w2) = (value(&last.loss_weights, "y1"), value(&last.loss_weights, "y2"));
    let (l1, l2) = (value(&last.train_losses, "y1"), value(&last.train_losses, "y2"));
    eprintln!("weights {w1:.4} {w2:.4}; losses {l1:.4} {l2:.4}");
    // ∂/∂s [e^{−s} L + s] = 0 at e^{−s} = 1/L: the small-loss task's weight rises above 1,
    // the large-loss task's falls below, each towards the inverse of its loss
    assert!(
        l2 > 20.0 * l1,
        "the constructed losses differ in scale: {l1} {l2}"
    );
    assert!(w1 > 1.0 && w2 < 1.0, "{w1} {w2}");
    assert!(w1 / w2 > 10.0, "{w1} / {w2}");
    // every evaluation recorded the weights, and they moved monotonically apart
    assert!(history.iter().all(|r| r.loss_weights.len() == 2));
    let ratios: Vec<f64> = history
        .iter()
        .map(|r| value(&r.loss_weights, "y1") / value(&r.loss_weights, "y2"))
        .collect();
    assert!(
        ratios.windows(2).filter(|w| w[1] < w[0]).count() <= ratios.len() / 5,
        "{ratios:?}"
    );
    // and the run's curve plot has a panel of them
    let svg = std::fs::read_to_string(dir.path().join("u/curve.svg")).unwrap();
    assert!(svg.contains(">loss weights</text>") && svg.contains(">y2</text>"));
}

#[test]
fn gradnorm_brings_weighted_gradient_norms_within_a_band() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let files = scaled_pair(dir.path());
    let gradnorm = |lr: f64| LossWeighting::Gradnorm {
        alpha: 0.0,
        lr,
        every: 1,
    };
    // a learning rate too small to move the weights: the norms as fixed weights leave them
    let fixed = run(dir.path(), "fixed", &files, MMOE_Y, gradnorm(1e-9), 2);
    let balanced = run(dir.path(), "gn", &files, MMOE_Y, gradnorm(0.02), 2);
    let ratio = |r: &EvalRecord| value(&r.grad_norms, "y2") / value(&r.grad_norms, "y1");
    let before: Vec<f64> = fixed.iter().map(ratio).collect();
    let after: Vec<f64> = balanced.iter().map(ratio).collect();
    eprintln!("G_y2 / G_y1 with fixed weights {before:?}\nwith GradNorm {after:?}");
    assert!(before.iter().all(|r| *r > 5.0), "{before:?}");
    // after the first 100 steps, within a factor 2 of each other at every evaluation
    for (r, record) in after.iter().zip(&balanced).filter(|(_, rec)| rec.step >= 100) {
        assert!((0.5..=2.0).contains(r), "step {}: {r}", record.step);
    }
    let last = balanced.last().unwrap();
    let (w1, w2) = (value(&last.loss_weights, "y1"), value(&last.loss_weights, "y2"));
    assert!((w1 + w2 - 2.0).abs() < 1e-4 && w1 > w2, "{w1} {w2}");
}

/// MetaBalance with the first task (y1, the small gradient) as the main one: the auxiliary
/// task's weighted gradient norm on the table is brought to the main one's (relax factor 1)
/// or part of the way (0.5), where fixed weights leave it 5–20× larger.
#[test]
fn metabalance_brings_the_auxiliary_gradient_norm_to_the_main_ones() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let files = scaled_pair(dir.path());
    let meta = |relax_factor: f64| LossWeighting::Metabalance {
        relax_factor,
        beta: 0.9,
        every: 1,
    };
    let ratio = |r: &EvalRecord| value(&r.grad_norms, "y2") / value(&r.grad_norms, "y1");
    let late = |history: &[EvalRecord]| -> Vec<f64> {
        history.iter().filter(|r| r.step >= 100).map(ratio).collect()
    };
    // relax factor 0: the weights stay 1, the norms as fixed weights leave them
    let fixed = late(&run(dir.path(), "r0", &files, MMOE_Y, meta(0.0), 2));
    let full = run(dir.path(), "r1", &files, MMOE_Y, meta(1.0), 2);
    let half = late(&run(dir.path(), "r05", &files, MMOE_Y, meta(0.5), 2));
    eprintln!(
        "G_y2 / G_y1: r = 0 {fixed:?}\nr = 1 {:?}\nr = 0.5 {half:?}",
        late(&full)
    );
    assert!(fixed.iter().all(|r| *r > 5.0), "{fixed:?}");
    assert!(
        late(&full).iter().all(|r| (0.5..=2.0).contains(r)),
        "{:?}",
        late(&full)
    );
    for (k, r) in half.iter().enumerate() {
        assert!(*r > late(&full)[k] && *r < fixed[k], "evaluation {k}: {r}");
    }
    // the main task keeps weight 1; the auxiliary task's falls below it
    let last = full.last().unwrap();
    assert_eq!(value(&last.loss_weights, "y1"), 1.0);
    assert!(value(&last.loss_weights, "y2") < 0.5, "{:?}", last.loss_weights);
}

#[test]
fn both_rules_train_esmm_mmoe_and_ple() {
    let _turn = turn();
    use mtl_synth::{CcpSpec, generate_ccp};
    let dir = tempfile::tempdir().unwrap();
    let ccp = generate_ccp(&CcpSpec::small(4000, 2), &dir.path().join("data"), "d").unwrap();
    let files = Files {
        schema: ccp.schema,
        train: ccp.train,
        valid: ccp.val,
    };
    let tasks = "tasks = [{ label = \"click\" }, { label = \"purchase\" }]";
    let models = [
        (
            "esmm",
            "type = \"esmm\"\nctr_tower = { dims = [8] }\ncvr_tower = { dims = [8] }".to_string(),
            ["ctr", "ctcvr"],
        ),
        (
            "mmoe",
            format!(
                "type = \"mmoe\"\nn_experts = 2\nexpert = {{ dims = [8] }}\ntower = {{ dims = [4] }}\n{tasks}"
            ),
            ["click", "purchase"],
        ),
        (
            "ple",
            format!(
                "type = \"ple\"\nn_level = 1\nn_expert_specific = 1\nn_expert_shared = 1\nexpert = {{ dims = [8] }}\ntower = {{ dims = [4] }}\n{tasks}"
            ),
            ["click", "purchase"],
        ),
    ];
    for (name, model, terms) in models {
        for (rule, weighting) in [
            ("uncertainty", LossWeighting::Uncertainty { lr: 0.02 }),
            (
                "gradnorm",
                LossWeighting::Gradnorm {
                    alpha: 1.5,
                    lr: 0.02,
                    every: 2,
                },
            ),
        ] {
            let history = run(
                dir.path(),
                &format!("{name}-{rule}"),
                &files,
                &model,
                weighting,
                1,
            );
            let last = history.last().unwrap();
            let names: Vec<&str> = last.loss_weights.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, terms, "{name} {rule}");
            assert!(
                last.loss_weights
                    .iter()
                    .all(|(_, w)| w.is_finite() && *w > 0.0 && (*w - 1.0).abs() > 1e-3),
                "{name} {rule}: {:?}",
                last.loss_weights
            );
            assert!(last.valid_loss.unwrap().is_finite());
            assert_eq!(last.grad_norms.is_empty(), rule == "uncertainty", "{name} {rule}");
        }
    }
}

#[test]
fn a_resumed_run_keeps_the_learned_weights() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let files = scaled_pair(dir.path());
    let weighting = LossWeighting::Gradnorm {
        alpha: 1.0,
        lr: 0.02,
        every: 1,
    };
    let whole = run(dir.path(), "whole", &files, MMOE_Y, weighting.clone(), 2);
    // the same run stopped after its first epoch, then resumed for the second
    let out = dir.path().join("split");
    let first_epoch = run_config(&files, MMOE_Y, weighting, 1);
    mtl_trainer::train::<Models>(Some(&first_epoch), &out, false, &TrainOptions::default()).unwrap();
    let options = TrainOptions {
        epochs: Some(2),
        ..TrainOptions::default()
    };
    mtl_trainer::train::<Models>(None, &out, true, &options).unwrap();
    let resumed = history(&out);
    // the split run also evaluated where its first part ended; compare at the whole run's steps
    let resumed: Vec<&EvalRecord> = resumed
        .iter()
        .filter(|r| whole.iter().any(|w| w.step == r.step))
        .collect();
    assert_eq!(resumed.len(), whole.len());
    for (a, b) in resumed.iter().zip(&whole) {
        assert_eq!(a.loss_weights, b.loss_weights, "step {}", a.step);
        assert_eq!(a.grad_norms, b.grad_norms, "step {}", a.step);
        // (training losses are means since the previous evaluation, which differs)
        assert_eq!(a.valid_loss, b.valid_loss, "step {}", a.step);
    }
}
