//! End-to-end training jobs on generated data: train → eval → predict, exact resume,
//! early-stopping direction, and learning on a known signal for every model.

use mtl_layers::ModelBuilder;
use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use mtl_data::BadRowPolicy;
use mtl_esmm::EsmmConfig;
use mtl_eval::auc;
use mtl_layers::MlpSpec;
use mtl_mmoe::{AitmConfig, MmoeConfig, OmoeConfig, PleConfig, SharedBottomConfig, TaskConfig};
use mtl_models::{ModelConfig, Models};
use mtl_synth::{CcpFiles, CcpSpec, generate_ccp};

/// A run config whose model is any registered type.
type RunConfig = mtl_trainer::RunConfig<Models>;

type ModelDir = mtl_eval::ModelDir<Models>;
use mtl_trainer::fit::early_stopping::improves;
use mtl_trainer::{DataConfig, EarlyStopping, EarlyStoppingSetting, Registry, TrainOptions, TrainSettings};

/// burn seeds one random generator per device, shared by the whole process: tests training
/// at the same time would draw from each other's stream, so the runs here take turns (several
/// compare runs bit for bit).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the turn for the calling test (a test that failed earlier leaves it usable).
fn turn() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn data(dir: &Path, rows: usize, seed: u64) -> CcpFiles {
    let mut spec = CcpSpec::small(rows, seed);
    spec.embed_dim = 8;
    let files = generate_ccp(&spec, dir, "d").unwrap();
    // larger initial embeddings than torch-rechub's 1e-4 so that a few hundred steps suffice
    let text = std::fs::read_to_string(&files.schema).unwrap();
    let mut schema = mtl_features::Schema::parse(&text, "generated").unwrap();
    schema.embed_init_std = 0.05;
    std::fs::write(&files.schema, schema.to_toml()).unwrap();
    files
}

fn config(files: &CcpFiles, model: ModelConfig, settings: TrainSettings) -> RunConfig {
    RunConfig {
        schema: files.schema.clone(),
        data: DataConfig {
            train: files.train.clone().into(),
            valid: Some(files.val.clone().into()),
            test: Some(files.test.clone().into()),
            bad_rows: "fail".into(),
            cache: true,
            cache_dir: None,
            streaming: false,
            shuffle_buffer: 1_000_000,
            shards: None,
            weight: None,
        },
        model,
        train: settings,
        metrics: Default::default(),
    }
}

fn esmm() -> ModelConfig {
    ModelConfig::Esmm(EsmmConfig::new(MlpSpec::new([32, 16]), MlpSpec::new([32, 16])))
}

fn two_tasks() -> Vec<TaskConfig> {
    vec![TaskConfig::new("click"), TaskConfig::new("purchase")]
}

fn settings(epochs: usize, batch: usize) -> TrainSettings {
    TrainSettings {
        epochs,
        batch_size: batch,
        lr: 3e-3,
        seed: 7,
        ..TrainSettings::default()
    }
}

/// Trains a new run of `model` on `files` into `out`.
fn train_new(
    files: &CcpFiles,
    model: ModelConfig,
    s: TrainSettings,
    out: &Path,
) -> mtl_trainer::TrainSummary {
    mtl_trainer::train::<Models>(
        Some(&config(files, model, s)),
        out,
        false,
        &TrainOptions::default(),
    )
    .unwrap()
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().split(',').map(str::to_string).collect();
    (
        header,
        lines
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect(),
    )
}

#[test]
fn train_eval_predict_agree() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let files = data(&dir.path().join("data"), 6000, 1);
    let out = dir.path().join("model");
    let summary = train_new(&files, esmm(), settings(1, 256), &out);
    assert!(summary.finished);
    assert_eq!(summary.steps, 4800usize.div_ceil(256));
    for f in [
        "config.toml",
        "schema.toml",
        "features.json",
        "model.bpk",
        "metrics.json",
        "curve.svg",
        "checkpoint/state.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["history"].as_array().unwrap().len(), 1);
    // the host table's traffic: a batch's distinct rows updated, those behind brought up to date
    let table = summary
        .embedding_table
        .expect("a row-sparse host run reports its table");
    assert_eq!(
        metrics["embedding_table"]["rows_updated_per_step"],
        table.rows_updated_per_step
    );
    assert!(table.rows_updated_per_step > 0.0);
    assert!(
        table.rows_caught_up_per_step > 0.0 && table.rows_caught_up_per_step < table.rows_updated_per_step
    );
    assert!(table.missed_steps_per_row >= 1.0 && table.missed_steps_per_row < summary.steps as f64);
    // one evaluation: the curve says its values rather than drawing a line of one point
    let curve = std::fs::read_to_string(out.join("curve.svg")).unwrap();
    assert!(
        curve.contains(" at step 19") && !curve.contains("<polyline"),
        "{curve}"
    );

    // eval on the test file
    let (eval, report) =
        mtl_trainer::eval_file::<Models>(&out, &files.test, "flex", BadRowPolicy::Fail, false).unwrap();
    assert_eq!(report.rows, 600);
    assert_eq!(
        eval.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["ctr", "cvr", "ctcvr"]
    );
    // the saved model's test metrics in the summary are the same numbers
    assert_eq!(summary.test, eval);

    // predict writes the scores eval used: recompute AUCs from the written file
    let pred_path = dir.path().join("pred.csv");
    let (rows, _, names) = mtl_trainer::predict_file::<Models>(
        &out,
        &files.test,
        &pred_path,
        Some("p_click"),
        "flex",
        BadRowPolicy::Fail,
        false,
    )
    .unwrap();
    assert_eq!(rows, 600);
    assert_eq!(names, ["ctr", "cvr", "ctcvr"]);
    let (header, pred_rows) = read_csv(&pred_path);
    assert_eq!(header, ["p_click", "ctr", "cvr", "ctcvr"]);
    let (test_header, test_rows) = read_csv(&files.test);
    let col = |name: &str| test_header.iter().position(|h| h == name).unwrap();
    let click: Vec<f32> = test_rows
        .iter()
        .map(|r| r[col("click")].parse().unwrap())
        .collect();
    let buy: Vec<f32> = test_rows
        .iter()
        .map(|r| r[col("purchase")].parse().unwrap())
        .collect();
    let score = |k: usize| -> Vec<f32> { pred_rows.iter().map(|r| r[k].parse().unwrap()).collect() };
    for (r, row) in pred_rows.iter().enumerate() {
        assert_eq!(row[0], test_rows[r][col("p_click")], "id column passed through");
    }
    assert_eq!(auc(&score(1), &click), eval[0].get("auc"));
    let clicked: Vec<usize> = (0..click.len()).filter(|&i| click[i] > 0.5).collect();
    let cvr_scores: Vec<f32> = clicked.iter().map(|&i| score(2)[i]).collect();
    let cvr_labels: Vec<f32> = clicked.iter().map(|&i| buy[i]).collect();
    assert_eq!(auc(&cvr_scores, &cvr_labels), eval[1].get("auc"));
    assert_eq!(eval[1].rows, clicked.len());
    let ctcvr_labels: Vec<f32> = click.iter().zip(&buy).map(|(c, b)| c * b).collect();
    assert_eq!(auc(&score(3), &ctcvr_labels), eval[2].get("auc"));
}

fn load_weights(dir: &Path) -> Vec<f32> {
    let model_dir = ModelDir::open(dir).unwrap();
    let ModelConfig::Esmm(cfg) = &model_dir.model else {
        panic!("esmm expected")
    };
    let m = cfg
        .init(&model_dir.schema, model_dir.encoder.layout(), &Device::flex())
        .unwrap();
    let m = m.load_file(dir.join("checkpoint/model.bpk"));
    let mut out = m
        .input
        .embedding
        .weight
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    out.extend(
        m.ctr_tower.mlp.blocks[0]
            .linear
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
    );
    out.extend(
        m.cvr_tower
            .mlp
            .output
            .as_ref()
            .unwrap()
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
    );
    out.extend(
        m.cvr_tower.mlp.blocks[0]
            .norm
            .as_ref()
            .unwrap()
            .running_mean
            .value()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
    );
    out
}

/// Copies a run directory and everything under it.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// The host table's traffic of `a` and of `b`, runs of the same steps: the same row updates,
/// and the same rows brought up to date in all. Which rows a pipelined step brings up to date
/// ahead of an evaluation's read of the whole table depends on the pipelining trial, which
/// starts over in each invocation: per step and at such reads together is what agrees.
fn assert_same_table_traffic(a: &mtl_trainer::TrainSummary, b: &mtl_trainer::TrainSummary) {
    let (ta, tb) = (a.embedding_table.unwrap(), b.embedding_table.unwrap());
    assert_eq!(ta.rows_updated_per_step, tb.rows_updated_per_step);
    let caught_up = |t: &mtl_trainer::TableReport, steps: usize| {
        (t.rows_caught_up_per_step * steps as f64).round() as u64 + t.rows_caught_up_whole
    };
    assert_eq!(caught_up(&ta, a.steps), caught_up(&tb, b.steps));
    assert!(ta.rows_caught_up_whole > 0);
}

#[test]
fn interrupted_run_resumes_to_the_same_weights() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let files = data(&dir.path().join("data"), 3000, 2);
    let mut s = settings(2, 200); // 2400 rows → 12 steps per epoch, 24 in all
    s.weight_decay = 1e-4;
    s.grad_clip_norm = Some(5.0);
    let full = dir.path().join("full");
    let a = train_new(&files, esmm(), s.clone(), &full);
    assert_eq!(a.steps, 24);

    // stop inside the first epoch, resume, stop inside the second, resume to the end
    let part = dir.path().join("part");
    let mut s1 = s.clone();
    s1.max_steps = Some(7);
    let b = train_new(&files, esmm(), s1, &part);
    assert!(!b.finished);
    assert_eq!(b.steps, 7);
    assert!(
        !part.join("model.bpk").exists(),
        "an interrupted run leaves only its checkpoint"
    );
    // a checkpoint that lost the row-sparse optimiser's moments is refused, not resumed with
    // zero moments
    let broken = dir.path().join("broken");
    copy_dir(&part, &broken);
    std::fs::remove_file(
        broken
            .join("checkpoint")
            .join(mtl_trainer::fit::checkpoint::SPARSE_MOMENTS),
    )
    .unwrap();
    let err = mtl_trainer::train::<Models>(None, &broken, true, &TrainOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("embedding_moments") && err.contains("missing"),
        "{err}"
    );
    // a step limit belongs to one invocation: it is not saved with the run
    let saved = std::fs::read_to_string(part.join("config.toml")).unwrap();
    assert!(!saved.contains("max_steps"), "{saved}");
    // the run saved its resolved handling of untouched rows (the host table's fast catch-up), so
    // the resume below replays the same way
    assert!(saved.contains("untouched_rows = \"fast-catch-up\""), "{saved}");
    // and its embedding table's weight decay: the default floor above `weight_decay` = 1e-4
    assert!(saved.contains("embedding_weight_decay = 0.001"), "{saved}");
    let c = mtl_trainer::train::<Models>(
        None,
        &part,
        true,
        &TrainOptions {
            max_steps: Some(17),
            ..TrainOptions::default()
        },
    )
    .unwrap();
    assert_eq!(c.steps, 17);
    assert!(!c.finished);
    let d = mtl_trainer::train::<Models>(None, &part, true, &TrainOptions::default()).unwrap();
    assert!(d.finished);
    assert_eq!(d.steps, 24);
    let (wa, wd) = (load_weights(&full), load_weights(&part));
    assert_eq!(wa.len(), wd.len());
    let max_diff = wa
        .iter()
        .zip(&wd)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    // bit-identical: same batches, same optimiser state, BatchNorm statistics included
    assert!(max_diff == 0.0, "resumed weights differ by up to {max_diff}");
    // same seed → same metrics, and the same table traffic counted over the three invocations
    assert_eq!(a.history.last().unwrap().valid, d.history.last().unwrap().valid);
    assert_same_table_traffic(&a, &d);
    // resuming a finished run is refused
    let err = mtl_trainer::train::<Models>(None, &part, true, &TrainOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("already finished") && err.contains("--epochs"),
        "{err}"
    );
    // ... unless it asks for more epochs: a finished run trains further
    let e = mtl_trainer::train::<Models>(
        None,
        &part,
        true,
        &TrainOptions {
            epochs: Some(3),
            ..TrainOptions::default()
        },
    )
    .unwrap();
    assert!(e.finished);
    assert_eq!(e.steps, 36);
    assert_eq!(e.history.len(), 3, "one evaluation per epoch, the third new");
}

#[test]
fn a_streaming_run_resumes_to_the_same_weights_and_learns_as_in_memory() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let files = data(&dir.path().join("data"), 3000, 4);
    let s = settings(2, 200); // 2400 rows → 12 steps per epoch
    let streaming = |s: TrainSettings| {
        let mut c = config(&files, esmm(), s);
        c.data.streaming = true;
        c.data.shuffle_buffer = 500; // blocks of 600 rows: 4 of them, and a fifth of 0
        c
    };
    let full = dir.path().join("full");
    let a = mtl_trainer::train::<Models>(
        Some(&streaming(s.clone())),
        &full,
        false,
        &TrainOptions::default(),
    )
    .unwrap();
    assert_eq!(a.steps, 24);
    assert_eq!(a.train_rows, 2400);
    let saved = std::fs::read_to_string(full.join("config.toml")).unwrap();
    assert!(saved.contains("streaming = true"), "{saved}");
    // stop inside a block of the first epoch, resume to the end
    let part = dir.path().join("part");
    let mut s1 = s.clone();
    s1.max_steps = Some(5);
    let b =
        mtl_trainer::train::<Models>(Some(&streaming(s1)), &part, false, &TrainOptions::default()).unwrap();
    assert_eq!(b.steps, 5);
    let c = mtl_trainer::train::<Models>(None, &part, true, &TrainOptions::default()).unwrap();
    assert!(c.finished);
    assert_eq!(c.steps, 24);
    let (wa, wc) = (load_weights(&full), load_weights(&part));
    assert_eq!(
        wa, wc,
        "a resumed streaming run ends where the uninterrupted one does"
    );
    // the in-memory run sees the rows in another order, and learns as well
    let memory = dir.path().join("memory");
    let m = train_new(&files, esmm(), s, &memory);
    let auc = |summary: &mtl_trainer::TrainSummary| summary.test[0].binary.as_ref().unwrap().auc.unwrap();
    eprintln!("click AUC streaming {} in memory {}", auc(&a), auc(&m));
    assert!(
        auc(&a) > 0.6 && (auc(&a) - auc(&m)).abs() < 0.05,
        "{} vs {}",
        auc(&a),
        auc(&m)
    );
}

#[test]
fn early_stopping_direction() {
    let _turn = turn();
    let auc = EarlyStopping {
        metric: "ctr.auc".into(),
        patience: 1,
    };
    assert!(improves(&auc, 0.7, None));
    assert!(improves(&auc, 0.71, Some(0.70)));
    assert!(!improves(&auc, 0.69, Some(0.70)));
    let mse = EarlyStopping {
        metric: "dwell.mse".into(),
        patience: 1,
    };
    assert!(improves(&mse, 0.9, Some(1.0)));
    assert!(!improves(&mse, 1.1, Some(1.0)));
    let loss = EarlyStopping {
        metric: "loss".into(),
        patience: 1,
    };
    assert!(!loss.higher_is_better());
}

#[test]
fn early_stopping_keeps_the_best_model() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let files = data(&dir.path().join("data"), 3000, 3);
    let mut s = settings(6, 100);
    s.lr = 0.05; // large steps: the validation loss turns up after a few evaluations
    s.eval_every_steps = Some(6);
    // early stopping left at its default: on with a validation set (validation loss, patience 2)
    assert_eq!(s.early_stopping, EarlyStoppingSetting::Auto);
    let out = dir.path().join("m");
    let summary = train_new(&files, esmm(), s, &out);
    let losses: Vec<f64> = summary.history.iter().map(|h| h.valid_loss.unwrap()).collect();
    let best = losses.iter().copied().fold(f64::INFINITY, f64::min);
    if summary.stopped_early {
        // stopped exactly `patience` evaluations after the best one
        let best_at = losses.iter().position(|&l| l == best).unwrap();
        assert_eq!(losses.len() - 1 - best_at, 2, "{losses:?}");
    }
    // the saved model is the best one: its validation loss equals the best seen
    let model = ModelDir::open(&out).unwrap();
    // the run saved the choice it made, so a resume keeps it
    let saved = RunConfig::from_file(out.join("config.toml")).unwrap();
    assert_eq!(
        saved.train.early_stopping,
        EarlyStoppingSetting::On(EarlyStopping::default())
    );
    let (valid, _, _) =
        mtl_data::read_encoded(&files.val, &model.encoder, BadRowPolicy::Fail, true, None).unwrap();
    let ModelConfig::Esmm(cfg) = &model.model else {
        panic!()
    };
    let m = cfg
        .init(&model.schema, model.encoder.layout(), &Device::flex())
        .unwrap()
        .load_file(out.join("model.bpk"));
    let (preds, terms) =
        mtl_eval::predict_all(&m, &valid, model.encoder.layout(), &Device::flex(), 4096, true).unwrap();
    // two ranks' shares of the set, in whole batches as a distributed evaluation takes them:
    // the predictions of one pass in the same batches, bit for bit (a batch's size can move
    // the last bits), and the whole set's mean loss from the shares' means by their rows
    let layout = model.encoder.layout();
    let (split, _) = mtl_eval::predict_all(&m, &valid, layout, &Device::flex(), 100, false).unwrap();
    let half = valid.rows.div_ceil(100) / 2 * 100;
    let share = |rows| {
        mtl_eval::predict_rows(
            &m,
            &valid,
            rows,
            layout,
            &Device::flex(),
            100,
            mtl_eval::Losses::Mean,
        )
        .unwrap()
    };
    let ((a, la), (b, lb)) = (share(0..half), share(half..valid.rows));
    for (o, whole) in split.iter().enumerate() {
        assert_eq!([a[o].clone(), b[o].clone()].concat(), *whole, "output {o}");
        assert_eq!(whole.len(), preds[o].len());
    }
    let n = valid.rows as f64;
    for (t, whole) in terms.as_ref().unwrap().iter().enumerate() {
        let (la, lb) = (la.as_ref().unwrap()[t], lb.as_ref().unwrap()[t]);
        let joined = (la * half as f64 + lb * (n - half as f64)) / n;
        assert!((joined - whole).abs() < 1e-6, "term {t}: {joined} vs {whole}");
    }
    // batches predicted side by side (two threads) give one thread's predictions and loss
    // terms, bit for bit
    let in_pool = |threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| mtl_eval::predict_all(&m, &valid, layout, &Device::flex(), 20, true).unwrap())
    };
    let (one, two) = (in_pool(1), in_pool(2));
    assert!(valid.rows > 160, "several batches per thread");
    assert_eq!(one, two);
    let loss: f64 = terms.unwrap().iter().sum();
    assert!(
        (loss - best).abs() < 1e-6,
        "saved model loss {loss} vs best {best} of {losses:?}"
    );
}

#[test]
fn every_model_learns_a_known_signal() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let files = data(&dir.path().join("data"), 25_000, 4);
    let models = [
        esmm(),
        ModelConfig::Mmoe(MmoeConfig::new(
            3,
            MlpSpec::new([32]),
            MlpSpec::new([16]),
            two_tasks(),
        )),
        ModelConfig::Omoe(OmoeConfig(MmoeConfig::new(
            3,
            MlpSpec::new([32]),
            MlpSpec::new([16]),
            two_tasks(),
        ))),
        ModelConfig::SharedBottom(SharedBottomConfig {
            bottom: MlpSpec::new([32]),
            tower: MlpSpec::new([16]).into(),
            tasks: two_tasks(),
            pooling: Default::default(),
        }),
        ModelConfig::Ple(PleConfig {
            n_level: 2,
            n_expert_specific: 1,
            n_expert_shared: 1,
            expert: MlpSpec::new([32]),
            tower: MlpSpec::new([16]).into(),
            tasks: two_tasks(),
            gate_batch_norm: true,
            pooling: Default::default(),
        }),
        ModelConfig::Aitm(AitmConfig {
            bottom: MlpSpec::new([32]),
            tower: MlpSpec::new([16]).into(),
            tasks: two_tasks(),
            calibrator_alpha: 0.6,
            pooling: Default::default(),
        }),
    ];
    let mut sparse_esmm_auc = None;
    for model in models {
        let kind = Models::kind(&model);
        let out = dir.path().join(kind);
        let s = train_new(&files, model, settings(2, 128), &out);
        let test_auc = |name: &str| {
            s.test
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| m.get("auc"))
                .unwrap()
        };
        let click = if kind == "esmm" {
            test_auc("ctr")
        } else {
            test_auc("click")
        };
        eprintln!("{kind}: {} steps, test click AUC {click:.4}", s.steps);
        // mixtures and AITM report their gates on the validation rows, in metrics.json too
        let gated = ["mmoe", "omoe", "ple", "aitm"].contains(&kind);
        assert_eq!(!s.gates.is_empty(), gated, "{kind}: {:?}", s.gates);
        for g in &s.gates {
            let total: f64 = g.mean_weight.iter().sum();
            assert!((total - 1.0).abs() < 1e-4, "{kind} {}: {total}", g.gate);
            assert_eq!(g.rows, 2500);
        }
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
        assert_eq!(saved["gates"].as_array().map_or(0, Vec::len), s.gates.len());
        assert!(click > 0.68, "{kind}: click AUC {click}");
        if kind == "esmm" {
            sparse_esmm_auc = Some(click);
            let cvr = test_auc("cvr");
            let ctcvr = test_auc("ctcvr");
            eprintln!("esmm: cvr AUC {cvr:.4} ctcvr AUC {ctcvr:.4}");
            assert!(cvr > 0.6, "cvr AUC {cvr}");
            assert!(ctcvr > 0.7, "ctcvr AUC {ctcvr}");
        } else {
            let buy = test_auc("purchase");
            eprintln!("{kind}: purchase AUC {buy:.4}");
            assert!(buy > 0.7, "{kind}: purchase AUC {buy}");
        }
        if kind == "aitm" {
            // the funnel's second step, also scored on the rows where the first happened
            let given = test_auc("purchase_given_click");
            eprintln!("aitm: purchase AUC on clicked rows {given:.4}");
            assert!(given > 0.55, "aitm: purchase | click AUC {given}");
        }
    }
    // the default row-sparse embedding updates land in the same AUC band as burn's dense Adam
    let mut dense = settings(2, 128);
    dense.embedding = mtl_trainer::EmbeddingUpdate::Dense;
    let s = train_new(&files, esmm(), dense, &dir.path().join("dense"));
    let dense_auc = s
        .test
        .iter()
        .find(|m| m.name == "ctr")
        .and_then(|m| m.get("auc"))
        .unwrap();
    let sparse_auc = sparse_esmm_auc.unwrap();
    eprintln!("esmm click AUC: sparse {sparse_auc:.4}, dense {dense_auc:.4}");
    assert!(
        dense_auc > 0.68 && (sparse_auc - dense_auc).abs() < 0.02,
        "sparse {sparse_auc} vs dense {dense_auc}"
    );
}

#[test]
fn calibration_is_fitted_on_validation_saved_and_applied_everywhere() {
    let _turn = turn();
    use mtl_eval::CalibrationMethod;
    let dir = tempfile::tempdir().unwrap();
    let files = data(&dir.path().join("data"), 20_000, 6);
    for method in [CalibrationMethod::Platt, CalibrationMethod::Isotonic] {
        let mut s = settings(1, 256);
        s.calibration = method;
        // from a random start (not the labels' base rates) one epoch leaves pCTR well off the
        // click rate (ECE ≈ 0.1): the miscalibration the map must remove
        s.label_priors = false;
        let out = dir.path().join(format!("{method:?}"));
        let summary = train_new(&files, esmm(), s, &out);
        assert!(out.join("calibration.json").exists());
        // the reliability diagram of the test set, one panel per output with its ECE
        let svg = std::fs::read_to_string(out.join("reliability.svg")).unwrap();
        assert_eq!(svg.matches("ECE ").count(), summary.test.len());
        assert!(svg.contains(&format!(
            "ECE {:.4}",
            summary.test[0].binary.as_ref().unwrap().ece
        )));
        let before = summary
            .test_uncalibrated
            .clone()
            .expect("metrics before calibration");
        // eval (and predict, through the same model directory) apply the calibration
        let (eval, _) =
            mtl_trainer::eval_file::<Models>(&out, &files.test, "flex", BadRowPolicy::Fail, false).unwrap();
        assert_eq!(eval, summary.test);
        // a monotone map keeps each output's AUC (up to ties it may create)
        for (a, b) in before.iter().zip(&summary.test) {
            let (a, b) = (a.binary.as_ref().unwrap(), b.binary.as_ref().unwrap());
            if let (Some(x), Some(y)) = (a.auc, b.auc) {
                assert!((x - y).abs() < 0.01, "{method:?}: AUC {x} → {y}");
            }
        }
        // on the rows it was fitted on, the calibrated mean prediction is the observed rate
        // (Platt: the intercept's gradient is zero at the fit) and the ECE falls
        let (valid_after, _) =
            mtl_trainer::eval_file::<Models>(&out, &files.val, "flex", BadRowPolicy::Fail, false).unwrap();
        // the map set aside (a calibration of no output: a missing file the config asks for
        // is refused)
        std::fs::rename(out.join("calibration.json"), out.join("off.json")).unwrap();
        std::fs::write(out.join("calibration.json"), r#"{"outputs": []}"#).unwrap();
        let (valid_before, _) =
            mtl_trainer::eval_file::<Models>(&out, &files.val, "flex", BadRowPolicy::Fail, false).unwrap();
        for (a, b) in valid_before.iter().zip(&valid_after) {
            let name = &a.name;
            let (a, b) = (a.binary.as_ref().unwrap(), b.binary.as_ref().unwrap());
            eprintln!(
                "{method:?} {name}: ECE {:.4} → {:.4}, mean {:.4} → {:.4} (observed {:.4})",
                a.ece, b.ece, a.mean_prediction, b.mean_prediction, b.observed_rate
            );
            // Platt cannot raise the binned error on its own rows; isotonic's interpolation
            // between block centres may move it a little either way where it was small
            let slack = if method == CalibrationMethod::Platt {
                1e-9
            } else {
                2e-3
            };
            assert!(b.ece <= a.ece + slack, "{method:?}: ECE {} → {}", a.ece, b.ece);
            if name == "ctr" {
                // the most miscalibrated output (ECE ≈ 0.1 before) at least halves
                assert!(b.ece < a.ece / 2.0, "{method:?}: ECE {} → {}", a.ece, b.ece);
            }
            if method == CalibrationMethod::Platt {
                assert!(
                    (b.mean_prediction - b.observed_rate).abs() < 1e-4,
                    "{method:?}: {b:?}"
                );
            }
        }
    }
}

#[test]
fn a_new_esmm_run_starts_at_the_training_labels_base_rates() {
    let _turn = turn();
    let dir = tempfile::tempdir().unwrap();
    let files = data(&dir.path().join("data"), 1200, 4);
    // the click rate of the training file
    let (header, rows) = read_csv(&files.train);
    let col = header.iter().position(|h| h == "click").unwrap();
    let clicks = rows.iter().filter(|r| r[col] == "1").count() as f64;
    let ctr = clicks / rows.len() as f64;
    // one epoch of one step (the saved model is the weight average of the start and that
    // step: each of its values lies between the two)
    let first_step = |priors: bool| {
        let mut s = settings(1, rows.len());
        s.label_priors = priors;
        let out = dir.path().join(format!("priors-{priors}"));
        let summary = train_new(&files, esmm(), s, &out);
        assert_eq!(summary.steps, 1);
        let model_dir = ModelDir::open(&out).unwrap();
        let ModelConfig::Esmm(cfg) = &model_dir.model else {
            panic!("esmm expected")
        };
        let m = cfg
            .init(&model_dir.schema, model_dir.encoder.layout(), &Device::flex())
            .unwrap()
            .load_file(out.join("model.bpk"));
        let values = |t: burn::tensor::Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
        let ctr_out = m.ctr_tower.mlp.output.as_ref().unwrap();
        let cvr_out = m.cvr_tower.mlp.output.as_ref().unwrap();
        (
            values(ctr_out.bias.as_ref().unwrap().val())[0],
            values(cvr_out.weight.val().flatten(0, 1)),
        )
    };
    let lr = settings(1, 1).lr as f32;
    // Adam's first step moves each parameter by at most lr: the CTR bias is still within lr
    // of logit(click rate), the CVR tower's output weights within lr of zero
    let (ctr_bias, cvr_weights) = first_step(true);
    let logit = (ctr / (1.0 - ctr)).ln() as f32;
    assert!(
        (ctr_bias - logit).abs() <= lr * 1.01,
        "{ctr_bias} vs logit({ctr}) = {logit}"
    );
    assert!(
        cvr_weights.iter().all(|w| w.abs() <= lr * 1.01),
        "{cvr_weights:?}"
    );
    // label_priors = false keeps the random start
    let (ctr_bias, cvr_weights) = first_step(false);
    assert!((ctr_bias - logit).abs() > 1.0, "{ctr_bias}");
    assert!(cvr_weights.iter().any(|w| w.abs() > 10.0 * lr), "{cvr_weights:?}");
}
