//! Row-sparse embedding training against burn's dense Adam, untouched rows, and learning.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use mtl_esmm::{Esmm, EsmmConfig};
use mtl_features::{EncodedData, Encoder, Schema, StateFitter, ValidSchema};
use mtl_layers::{MlpSpec, ModelBuilder, MultiTaskModel};
use mtl_optim::SparseAdam;
use mtl_trainer::fit::state::{FitOptions, TrainState};
use mtl_trainer::fit::{fit, optimizer};
use mtl_trainer::{EmbeddingUpdate, OptimizerKind, TrainSettings, UntouchedRows};

const SCHEMA_TEXT: &str = "embed_dim = 4\nembed_init_std = 0.3\n[[sparse]]\nname = \"a\"\nvocab_size = 6\n[[sparse]]\nname = \"b\"\nvocab_size = 5\n[[sparse]]\nname = \"b2\"\nshared_with = \"b\"\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n[[labels]]\nname = \"purchase\"\nkind = \"binary\"\n";

fn schema() -> ValidSchema {
    Schema::from_toml_str(SCHEMA_TEXT, "s.toml").unwrap()
}

/// 30 rows in which every id of every field occurs.
fn data() -> EncodedData {
    let rows = 30;
    EncodedData {
        rows,
        n_sparse: 3,
        n_labels: 2,
        sparse: (0..rows)
            .flat_map(|r| [(r % 6) as u32, (r % 5) as u32, ((r / 5) % 5) as u32])
            .collect(),
        labels: (0..rows)
            .flat_map(|r| [f32::from(r % 3 == 0), f32::from(r % 9 == 0)])
            .collect(),
        ..Default::default()
    }
}

fn values(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// The model's embedding table, off the autodiff graph.
fn table(m: &Esmm) -> Tensor<2> {
    m.input_layer().embedding.weight.val().inner()
}

fn model(s: &ValidSchema, enc: &Encoder, device: &Device) -> Esmm {
    EsmmConfig::new(MlpSpec::new([8]), MlpSpec::new([8]))
        .init(s, enc.layout(), device)
        .unwrap()
}

/// Trains `m` with `settings` on `d` (output under `out`); the model in eval mode and the
/// number of steps taken.
fn train(
    m: Esmm,
    settings: &TrainSettings,
    d: &EncodedData,
    enc: &Encoder,
    s: &ValidSchema,
    device: &Device,
    out: &std::path::Path,
) -> (Esmm, usize) {
    std::fs::create_dir_all(out).unwrap();
    let options = FitOptions {
        out_dir: out.to_path_buf(),
        label_names: s.label_names(),
        ..FitOptions::default()
    };
    let r = fit(
        m,
        optimizer(settings),
        d,
        None,
        enc.layout(),
        settings,
        device,
        &options,
        TrainState::default(),
    )
    .unwrap();
    (r.model.valid(), r.state.global_step)
}

/// The largest absolute difference between two lists of weights, over their common start (a
/// table alone against a table followed by tower weights compares the tables).
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max)
}

/// A temporary folder holding `init.bpk`, a model initialised from `seed` (its lazy
/// parameters made real by one prediction), and the autodiff device.
fn saved_init(s: &ValidSchema, enc: &Encoder, d: &EncodedData, seed: u64) -> (tempfile::TempDir, Device) {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex().autodiff();
    device.seed(seed);
    let init = model(s, enc, &device);
    let _ = init.predict(&d.batch(&[0], enc.layout(), &device.clone().without_autodiff()));
    init.valid().save_file(dir.path().join("init.bpk")).unwrap();
    (dir, device)
}

/// Trains as [`train`] does and reads the result back: the embedding table followed by the
/// first layer of both towers, and the number of steps.
fn trained_weights(
    m: Esmm,
    settings: &TrainSettings,
    d: &EncodedData,
    enc: &Encoder,
    s: &ValidSchema,
    device: &Device,
    out: &std::path::Path,
) -> (Vec<f32>, usize) {
    let (m, steps) = train(m, settings, d, enc, s, device, out);
    let mut v = values(m.input.embedding.weight.val());
    v.extend(values(m.ctr_tower.mlp.blocks[0].linear.weight.val()));
    v.extend(values(m.cvr_tower.mlp.blocks[0].linear.weight.val()));
    (v, steps)
}

#[test]
fn sparse_adam_equals_dense_adam_when_every_row_is_touched() {
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let d = data();
    let (dir, device) = saved_init(&s, &enc, &d, 3);
    let mut tables = Vec::new();
    for mode in [EmbeddingUpdate::Dense, EmbeddingUpdate::Sparse] {
        let m = model(&s, &enc, &device).load_file(dir.path().join("init.bpk"));
        let settings = TrainSettings {
            epochs: 6,
            batch_size: 30,
            lr: 0.05,
            weight_decay: 0.0,
            embedding: mode,
            ..TrainSettings::default()
        };
        let (v, steps) = trained_weights(
            m,
            &settings,
            &d,
            &enc,
            &s,
            &device,
            &dir.path().join(format!("{mode:?}")),
        );
        assert_eq!(steps, 6);
        tables.push(v);
    }
    let before = values(
        model(&s, &enc, &device)
            .load_file(dir.path().join("init.bpk"))
            .input
            .embedding
            .weight
            .val()
            .inner(),
    );
    let moved = max_diff(&before, &tables[0]);
    assert!(moved > 0.01, "training must move the table ({moved})");
    let diff = max_diff(&tables[0], &tables[1]);
    assert!(diff < 1e-5, "sparse and dense Adam differ by {diff}");
}

/// Trains one model initialised from `seed` once per (embedding update, untouched rows) mode
/// for 16 steps (2 epochs of batch 4 over the 30 rows, lr 0.05, weight decay 0.05) and returns
/// each run's weights (table, then both towers' first layers).
fn batch_4_runs(
    s: &ValidSchema,
    seed: u64,
    modes: &[(EmbeddingUpdate, Option<UntouchedRows>)],
) -> Vec<Vec<f32>> {
    let modes: Vec<_> = modes.iter().map(|&(e, u)| (e, u, None)).collect();
    batch_4_runs_averaged(s, seed, &modes)
}

/// [`batch_4_runs`] with a weight average (`ema_decay`) per mode; each run's weights are those
/// the fit hands back (the average's, when kept).
fn batch_4_runs_averaged(
    s: &ValidSchema,
    seed: u64,
    modes: &[(EmbeddingUpdate, Option<UntouchedRows>, Option<f64>)],
) -> Vec<Vec<f32>> {
    let enc = Encoder::new(s, &StateFitter::new(s).finish());
    let d = data();
    let (dir, device) = saved_init(s, &enc, &d, seed);
    let mut runs = Vec::new();
    for &(mode, untouched, ema_decay) in modes {
        let m = model(s, &enc, &device).load_file(dir.path().join("init.bpk"));
        let settings = TrainSettings {
            epochs: 2,
            batch_size: 4,
            lr: 0.05,
            weight_decay: 0.05,
            embedding: mode,
            untouched_rows: untouched,
            ema_decay,
            ..TrainSettings::default()
        };
        let out = dir.path().join(format!("{mode:?}-{untouched:?}-{ema_decay:?}"));
        let (v, steps) = trained_weights(m, &settings, &d, &enc, s, &device, &out);
        assert_eq!(steps, 16);
        runs.push(v);
    }
    runs
}

#[test]
fn catch_up_equals_dense_adam_when_rows_go_untouched() {
    // batches of 4 of 30 rows leave most rows out of most steps; weight decay and momentum
    // move them under dense Adam, and catch-up must move them the same
    let runs = batch_4_runs(
        &schema(),
        5,
        &[
            (EmbeddingUpdate::Dense, None),
            (EmbeddingUpdate::Sparse, Some(UntouchedRows::CatchUp)),
            (EmbeddingUpdate::Sparse, Some(UntouchedRows::Frozen)),
        ],
    );
    let caught_up = max_diff(&runs[0], &runs[1]);
    assert!(caught_up < 1e-5, "catch-up and dense Adam differ by {caught_up}");
    // the comparison can fail: frozen rows end elsewhere
    let frozen = max_diff(&runs[0], &runs[2]);
    assert!(
        frozen > 1e-3,
        "frozen rows should differ from dense Adam ({frozen})"
    );
}

#[test]
fn the_row_sparse_weight_average_equals_dense_adams() {
    // dense updates average the whole table as a tensor every step; the row-sparse table
    // keeps each row's average lazily, through catch-up's replay: they must agree
    let (sparse, dense) = (EmbeddingUpdate::Sparse, EmbeddingUpdate::Dense);
    let catch_up = Some(UntouchedRows::CatchUp);
    let runs = batch_4_runs_averaged(
        &schema(),
        9,
        &[
            (dense, None, Some(0.8)),
            (sparse, catch_up, Some(0.8)),
            (sparse, catch_up, None),
        ],
    );
    let diff = max_diff(&runs[0], &runs[1]);
    assert!(
        diff < 1e-5,
        "row-sparse and dense weight averages differ by {diff}"
    );
    // and the average is not the last step's model (table and towers)
    let table_rows = 6 + 5;
    let (table, towers) = (table_rows * 4, runs[0].len());
    assert!(max_diff(&runs[1][..table], &runs[2][..table]) > 1e-3);
    assert!(max_diff(&runs[1][table..towers], &runs[2][table..towers]) > 1e-3);
}

#[test]
fn fields_of_different_widths_train_row_sparse_as_dense_adam_does() {
    // `a` 8 wide (two 4-wide rows per id), `b` and its sharer 4: one 4-wide table
    let s = Schema::from_toml_str(
        &SCHEMA_TEXT.replace(
            "name = \"a\"\nvocab_size = 6",
            "name = \"a\"\nvocab_size = 6\nembed_dim = 8",
        ),
        "mixed.toml",
    )
    .unwrap();
    assert_eq!((s.dims.clone(), s.table_width()), (vec![8, 4, 4], 4));
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    assert_eq!(enc.layout().total_rows, 6 * 2 + 5);
    let runs = batch_4_runs(
        &s,
        8,
        &[
            (EmbeddingUpdate::Dense, None),
            (EmbeddingUpdate::Sparse, Some(UntouchedRows::CatchUp)),
        ],
    );
    // the towers' first layers read 8 + 4 + 4 inputs
    assert_eq!(runs[0].len(), 17 * 4 + 2 * 16 * 8);
    let diff = max_diff(&runs[0], &runs[1]);
    assert!(diff < 1e-5, "row-sparse and dense Adam differ by {diff}");
}

#[test]
fn catch_up_replays_the_missed_steps_by_the_adam_formula() {
    let (m, device) = initialised(6);
    let (lr, wd, b1, b2, eps) = (0.01f64, 0.1f64, 0.9f64, 0.999f64, 1e-5f64);
    let decay = 0.5f64;
    let settings = TrainSettings {
        weight_decay: wd,
        untouched_rows: Some(UntouchedRows::CatchUp),
        ema_decay: Some(decay),
        ..TrainSettings::default()
    };
    let mut sp = SparseAdam::new(table(&m), settings.sparse_adam(), &device);
    let start = values(sp.table());
    // step 1 touches row 1 (gradient 0.5), steps 2 and 3 touch row 2 only, at a falling lr
    let lrs = [lr, lr / 2.0, lr / 4.0];
    for (t, &rate) in lrs.iter().enumerate() {
        let row = if t == 0 { 1 } else { 2 };
        let (leaf, ids) = sp.gather(vec![row]);
        let grad = Tensor::<2>::ones(leaf.dims(), &leaf.inner().device()).mul_scalar(0.5);
        sp.step(&ids, grad, rate);
    }
    let after = values(sp.table());
    let average = values(sp.average().expect("ema_decay keeps an average"));
    // Adam with L2 decay in f64, textbook form: row 1 sees gradient 0.5 + wd·w at step 1, then
    // wd·w; row 0 sees wd·w at every step. The weight average starts at w0 and after step t
    // moves as a ← k·a + (1 − k)·w with k = min(decay, (1 + t)/(10 + t)).
    let expect = |w0: f64, first_grad: f64| {
        let (mut w, mut m1, mut m2, mut a) = (w0, 0.0, 0.0, w0);
        for (t, &rate) in lrs.iter().enumerate() {
            let g = if t == 0 { first_grad } else { 0.0 } + wd * w;
            m1 = b1 * m1 + (1.0 - b1) * g;
            m2 = b2 * m2 + (1.0 - b2) * g * g;
            let n = (t + 1) as i32;
            let (mh, vh) = (m1 / (1.0 - b1.powi(n)), m2 / (1.0 - b2.powi(n)));
            w -= rate * mh / (vh.sqrt() + eps);
            let k = decay.min((2.0 + t as f64) / (11.0 + t as f64));
            a = k * a + (1.0 - k) * w;
        }
        (w, a)
    };
    for (row, first_grad) in [(1usize, 0.5), (0, 0.0), (5, 0.0)] {
        for j in 0..4 {
            let (w0, got) = (f64::from(start[row * 4 + j]), f64::from(after[row * 4 + j]));
            let (want, want_average) = expect(w0, first_grad);
            assert!(
                (got - want).abs() < 1e-5 * want.abs().max(1e-2),
                "row {row}[{j}]: {got} vs {want} (from {w0})"
            );
            assert!((got - w0).abs() > 1e-4, "row {row}[{j}] must move ({w0} → {got})");
            let got_average = f64::from(average[row * 4 + j]);
            assert!(
                (got_average - want_average).abs() < 1e-5 * want_average.abs().max(1e-2),
                "row {row}[{j}] average: {got_average} vs {want_average}"
            );
            // the average lags the value: it is neither the start nor the end
            assert!((got_average - want).abs() > 1e-5 && (got_average - w0).abs() > 1e-5);
        }
    }
}

/// A freshly initialised model (its lazy parameters materialised by one prediction) on the
/// flex autodiff device seeded with `seed`.
fn initialised(seed: u64) -> (Esmm, Device) {
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let device = Device::flex().autodiff();
    device.seed(seed);
    let m = model(&s, &enc, &device);
    let _ = m.predict(&data().batch(&[0], enc.layout(), &device.clone().without_autodiff()));
    (m, device)
}

#[test]
fn untouched_rows_and_their_moments_stay_bit_identical() {
    let (m, device) = initialised(4);
    let settings = TrainSettings {
        weight_decay: 1e-2,
        grad_clip_norm: Some(1.0),
        untouched_rows: Some(UntouchedRows::Frozen),
        ..TrainSettings::default()
    };
    let mut sp = SparseAdam::new(table(&m), settings.sparse_adam(), &device);
    let before = values(sp.table());
    for step in 0..3 {
        let touched = vec![1, 4, 7 + step];
        let (leaf, ids) = sp.gather(touched);
        let rows = leaf.inner();
        let grad = Tensor::<2>::ones(rows.dims(), &rows.device()).mul_scalar(0.5);
        sp.step(&ids, grad, 0.01);
    }
    let after = values(sp.table());
    let (m1, m2) = sp.moments();
    let (m1, m2) = (values(m1), values(m2));
    let touched = [1usize, 4, 7, 8, 9];
    for row in 0..after.len() / 4 {
        let r = row * 4..row * 4 + 4;
        if touched.contains(&row) {
            assert_ne!(after[r.clone()], before[r.clone()], "row {row} was touched");
            assert!(m2[r].iter().all(|x| *x > 0.0));
        } else {
            assert_eq!(
                after[r.clone()].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                before[r.clone()].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "row {row}"
            );
            assert!(
                m1[r.clone()].iter().chain(&m2[r]).all(|x| *x == 0.0),
                "row {row} moments"
            );
        }
    }
}

#[test]
fn saved_moments_round_trip_and_a_mismatched_file_is_an_error() {
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let device = Device::flex().autodiff();
    let m = model(&s, &enc, &device);
    let settings = TrainSettings::default();
    let mut sp = SparseAdam::new(table(&m), settings.sparse_adam(), &device);
    let (leaf, ids) = sp.gather(vec![0, 2, 5]);
    let grad = Tensor::<2>::ones(leaf.dims(), &leaf.inner().device()).mul_scalar(0.3);
    sp.step(&ids, grad, 0.01);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moments.bin");
    sp.save(&path).unwrap();
    let (m1, m2) = sp.moments();
    let (m1, m2) = (values(m1), values(m2));
    // a fresh optimiser on the same table has zero moments until it loads the file
    let mut fresh = SparseAdam::new(table(&model(&s, &enc, &device)), settings.sparse_adam(), &device);
    assert!(values(fresh.moments().0).iter().all(|x| *x == 0.0));
    fresh.load(&path, 1).unwrap();
    let (l1, l2) = fresh.moments();
    assert_eq!(values(l1), m1);
    assert_eq!(values(l2), m2);
    assert!(m2.iter().any(|x| *x > 0.0));
    // a table of another shape refuses the file, naming it
    let other: ValidSchema = Schema::from_toml_str(
        "embed_dim = 4\n[[sparse]]\nname = \"a\"\nvocab_size = 3\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n[[labels]]\nname = \"purchase\"\nkind = \"binary\"\n",
        "other",
    )
    .unwrap();
    let other_enc = Encoder::new(&other, &StateFitter::new(&other).finish());
    let mut small = SparseAdam::new(
        table(&model(&other, &other_enc, &device)),
        settings.sparse_adam(),
        &device,
    );
    let err = small.load(&path, 1).unwrap_err().to_string();
    assert!(err.contains("moments.bin") && err.contains("table"), "{err}");
    // a truncated file is an error too
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    let err = fresh.load(&path, 1).unwrap_err().to_string();
    assert!(err.contains("ends early"), "{err}");
}

#[test]
fn sparse_training_agrees_across_backends() {
    use mtl_features::BackendKind;
    use mtl_features::backend::usable_backends;
    let backends = usable_backends().expect("a required backend is unusable");
    assert_eq!(backends[0].0, BackendKind::Flex);
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let d = data();
    let dir = tempfile::tempdir().unwrap();
    let init_path = dir.path().join("init.bpk");
    let mut results = Vec::new();
    for (kind, device) in &backends {
        let device = device.clone().autodiff();
        let m = model(&s, &enc, &device);
        if !init_path.exists() {
            let _ = m.predict(&d.batch(&[0], enc.layout(), &device.clone().without_autodiff()));
            m.valid().save_file(&init_path).unwrap();
        }
        let m = model(&s, &enc, &device).load_file(&init_path);
        let settings = TrainSettings {
            epochs: 2,
            batch_size: 8,
            lr: 0.05,
            weight_decay: 1e-3,
            embedding: EmbeddingUpdate::Sparse,
            ..TrainSettings::default()
        };
        let (v, steps) = trained_weights(
            m,
            &settings,
            &d,
            &enc,
            &s,
            &device,
            &dir.path().join(format!("{kind:?}")),
        );
        assert_eq!(steps, 8);
        results.push((*kind, v));
    }
    let (_, flex) = &results[0];
    let before = values(
        model(&s, &enc, &Device::flex())
            .load_file(&init_path)
            .input
            .embedding
            .weight
            .val(),
    );
    let moved = max_diff(&before, flex);
    assert!(moved > 0.01, "training must move the table ({moved})");
    for (kind, v) in &results[1..] {
        let diff = max_diff(flex, v);
        eprintln!("sparse training, {kind:?} vs flex: max |diff| {diff:e}");
        assert!(
            diff < 1e-4,
            "{kind:?}: sparse training differs from flex by {diff}"
        );
    }
}

#[test]
fn first_row_step_matches_the_adam_formula_with_either_weight_decay_and_the_tables_own() {
    // after one step the bias-corrected moments are g and g², so Adam moves a row by
    // lr · g / (|g| + ε) per element: g = grad + wd · w for L2 decay (Adam), and AdamW adds
    // lr · wd · w to the move instead
    // a large decay, so that wd · w (w ~ 1e-4) is far above ε, and zero gradients, where only
    // the decay moves a weight: each kind of decay must show in the result
    // the table's decay is `embedding_weight_decay` when given, else `weight_decay`
    let (lr, eps) = (0.01f32, 1e-5f32);
    let cases = [
        (10.0, None, 10.0f32),
        (0.0, Some(10.0), 10.0),
        (10.0, Some(0.0), 0.0),
    ];
    for (kind, (dense_wd, table_wd, wd)) in [OptimizerKind::Adam, OptimizerKind::AdamW]
        .into_iter()
        .flat_map(|k| cases.map(|c| (k, c)))
    {
        let (m, device) = initialised(5);
        let settings = TrainSettings {
            weight_decay: dense_wd,
            embedding_weight_decay: table_wd,
            optimizer: kind,
            ..TrainSettings::default()
        };
        let mut sp = SparseAdam::new(table(&m), settings.sparse_adam(), &device);
        let before = values(sp.table());
        let (leaf, ids) = sp.gather(vec![2, 5]);
        let rows = leaf.inner();
        let grad: Vec<f32> = (0..rows.dims()[0] * rows.dims()[1])
            .map(|i| if i % 4 == 0 { 0.0 } else { (i as f32 - 3.5) * 0.25 })
            .collect();
        let shape = rows.dims();
        let grad_t =
            Tensor::<2>::from_data(burn::tensor::TensorData::new(grad.clone(), shape), &rows.device());
        sp.step(&ids, grad_t, lr as f64);
        let after = values(sp.table());
        let d = shape[1];
        for (k, &row) in ids.iter().enumerate() {
            for j in 0..d {
                let w = before[row as usize * d + j];
                let g = grad[k * d + j];
                let expected = match kind {
                    OptimizerKind::Adam => {
                        let g = g + wd * w;
                        w - lr * g / (g.abs() + eps)
                    }
                    OptimizerKind::AdamW => w - lr * (g / (g.abs() + eps) + wd * w),
                };
                let got = after[row as usize * d + j];
                assert!(
                    (got - expected).abs() < 1e-6,
                    "{kind:?} (weight_decay {dense_wd}, embedding_weight_decay {table_wd:?}) row {row} [{j}]: {got} vs {expected}"
                );
            }
        }
    }
}

#[test]
fn the_device_table_trains_as_the_host_table_does_on_every_backend() {
    use mtl_features::backend::usable_backends;
    use mtl_trainer::TablePlace;
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let d = data();
    let dir = tempfile::tempdir().unwrap();
    let init_path = dir.path().join("init.bpk");
    for (kind, device) in usable_backends().expect("a required backend is unusable") {
        let device = device.clone().autodiff();
        if !init_path.exists() {
            let m = model(&s, &enc, &device);
            let _ = m.predict(&d.batch(&[0], enc.layout(), &device.clone().without_autodiff()));
            m.valid().save_file(&init_path).unwrap();
        }
        let mut results = Vec::new();
        for place in [TablePlace::Host, TablePlace::Device] {
            let settings = TrainSettings {
                epochs: 2,
                batch_size: 8,
                lr: 0.05,
                weight_decay: 1e-3,
                grad_clip_norm: Some(0.5),
                embedding: EmbeddingUpdate::Sparse,
                embedding_table: place,
                ..TrainSettings::default()
            };
            let m = model(&s, &enc, &device).load_file(&init_path);
            let (v, steps) = trained_weights(
                m,
                &settings,
                &d,
                &enc,
                &s,
                &device,
                &dir.path().join(format!("{kind:?}-{place:?}")),
            );
            assert_eq!(steps, 8);
            results.push(v);
        }
        let diff = max_diff(&results[0], &results[1]);
        eprintln!("{kind:?}: device table vs host table, max |diff| {diff:e}");
        assert!(
            diff < 1e-5,
            "{kind:?}: the device table differs from the host table by {diff}"
        );
        // the tables moved (a test of two frozen tables would pass too)
        let before = values(
            model(&s, &enc, &Device::flex())
                .load_file(&init_path)
                .input
                .embedding
                .weight
                .val(),
        );
        let moved = max_diff(&before, &results[1]);
        assert!(moved > 0.01, "{kind:?}: training must move the table ({moved})");
    }
}

#[test]
fn moments_saved_by_either_table_place_load_into_the_other() {
    use mtl_optim::DeviceAdam;
    let (m, device) = initialised(6);
    let settings = TrainSettings {
        weight_decay: 1e-2,
        ..TrainSettings::default()
    };
    let mut host = SparseAdam::new(table(&m), settings.sparse_adam(), &device);
    let mut dev = DeviceAdam::new(table(&m), settings.row_adam(), &device);
    for step in 0..3 {
        let touched = vec![0, 3, 5 + step];
        let (leaf, ids) = host.gather(touched.clone());
        let g = Tensor::<2>::ones(leaf.dims(), &leaf.inner().device()).mul_scalar(0.25 + step as f32);
        host.step(&ids, g.clone(), 0.01);
        let (_, idx) = dev.gather(touched);
        dev.step(&idx, g, 0.01);
    }
    let close = |a: Vec<f32>, b: Vec<f32>, what: &str| {
        let diff = max_diff(&a, &b);
        assert!(diff < 1e-6, "{what}: {diff}");
    };
    close(values(host.table()), values(dev.table()), "tables after 3 steps");
    let dir = tempfile::tempdir().unwrap();
    let (from_host, from_dev) = (dir.path().join("h.bin"), dir.path().join("d.bin"));
    host.save(&from_host).unwrap();
    dev.save(&from_dev).unwrap();
    let mut host2 = SparseAdam::new(table(&m), settings.sparse_adam(), &device);
    host2.load(&from_dev, 3).unwrap();
    let mut dev2 = DeviceAdam::new(table(&m), settings.row_adam(), &device);
    dev2.load(&from_host, 3).unwrap();
    let (hm, hv) = host.moments();
    let (dm, dv) = dev2.moments();
    close(
        values(hm.clone()),
        values(dm),
        "first moments, host file into the device table",
    );
    close(
        values(hv.clone()),
        values(dv),
        "second moments, host file into the device table",
    );
    let (m1, m2) = host2.moments();
    close(
        values(m1),
        values(hm),
        "first moments, device file into the host table",
    );
    close(
        values(m2),
        values(hv.clone()),
        "second moments, device file into the host table",
    );
    assert!(values(hv).iter().any(|x| *x > 0.0));
}

#[test]
fn a_pipelined_run_trains_the_same_model_bit_for_bit() {
    // 60 steps (4 epochs of batch 2 over the 30 rows), strided catch-up and the weight average:
    // the next batch's rows brought up to date on a second thread give the same floats
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let d = data();
    let (dir, device) = saved_init(&s, &enc, &d, 21);
    let mut runs = Vec::new();
    for pipeline in [false, true] {
        let m = model(&s, &enc, &device).load_file(dir.path().join("init.bpk"));
        let settings = TrainSettings {
            epochs: 4,
            batch_size: 2,
            lr: 0.05,
            weight_decay: 0.05,
            untouched_rows: Some(UntouchedRows::FastCatchUp),
            ema_decay: Some(0.8),
            pipeline: Some(pipeline),
            ..TrainSettings::default()
        };
        let out = dir.path().join(format!("pipeline-{pipeline}"));
        let (v, steps) = trained_weights(m, &settings, &d, &enc, &s, &device, &out);
        assert_eq!(steps, 60);
        runs.push(v);
    }
    assert_eq!(
        runs[0], runs[1],
        "a pipelined run differs from the sequential one"
    );
}
