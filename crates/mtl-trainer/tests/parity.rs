//! Every model predicts and takes a training step identically (within 1e-4) on every usable
//! backend — flex, ndarray, wgpu — starting from the same weights.

use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use mtl_features::backend::usable_backends;
use mtl_features::{BackendKind, EncodedData, Encoder, Schema, StateFitter, ValidSchema};
use mtl_layers::MultiTaskModel;
use mtl_models::{ModelConfig, Models};
use mtl_trainer::{Registry, TrainError, TrainSettings, WithModel, example_model, parse_model};

fn schema() -> ValidSchema {
    Schema::from_toml_str(
        "embed_dim = 4\nembed_init_std = 0.3\n[[sparse]]\nname = \"u0\"\nvocab_size = 40\ngroup = \"user\"\n[[sparse]]\nname = \"i0\"\nvocab_size = 25\ngroup = \"item\"\n[[sequence]]\nname = \"h\"\nmax_len = 3\nshared_with = \"i0\"\ngroup = \"item\"\n[[dense]]\nname = \"x\"\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n[[labels]]\nname = \"purchase\"\nkind = \"binary\"\n[[labels]]\nname = \"cart\"\nkind = \"binary\"\n",
        "p.toml",
    )
    .unwrap()
}

fn data(rows: usize) -> EncodedData {
    EncodedData {
        rows,
        n_sparse: 2,
        seq_max_len: vec![3],
        n_dense: 1,
        n_labels: 3,
        sparse: (0..rows)
            .flat_map(|r| [(r * 7 % 40) as u32, (r * 3 % 25) as u32])
            .collect(),
        sequence: (0..rows)
            .flat_map(|r| [(r % 25) as u32, ((r + 5) % 25) as u32, 0])
            .collect(),
        seq_len: (0..rows).map(|r| (r % 3) as u32).collect(),
        dense: (0..rows).map(|r| (r as f32 * 0.3).cos()).collect(),
        labels: (0..rows)
            // click ⊇ cart ⊇ purchase, as the chain example's steps nest
            .flat_map(|r| {
                [
                    f32::from(r % 3 == 0),
                    f32::from(r % 6 == 0),
                    f32::from(r % 6 == 0 || r % 9 == 0),
                ]
            })
            .collect(),
    }
}

/// Every registered model with its example config (so a new model is covered without
/// editing this test; fields `u0` and `i0` as the examples' data names them), and ESMM once
/// more with the paper's group-sum input.
fn models() -> Vec<ModelConfig> {
    let mut models: Vec<ModelConfig> = Models::KINDS
        .iter()
        .map(|kind| example_model::<Models>(kind).unwrap().unwrap())
        .collect();
    models.push(
        parse_model::<Models>(
            "type = \"esmm\"\nctr_tower = { dims = [16, 8] }\ncvr_tower = { dims = [8] }\npooling = { sum_by_group = [\"user\", \"item\"] }",
        )
        .unwrap(),
    );
    models
}

/// On one backend: outputs before and after one Adam step, and the step's loss terms.
/// Every backend builds its own model and loads the same saved weights (clones of a burn
/// module share BatchNorm running statistics, so a clone is no independent copy).
struct Step<'a> {
    encoder: &'a Encoder,
    data: &'a EncodedData,
    device: Device,
    weights: &'a std::path::Path,
}

fn flat(ts: Vec<Tensor<1>>) -> Vec<f32> {
    ts.into_iter()
        .flat_map(|t| t.into_data().try_to_vec::<f32>().unwrap())
        .collect()
}

impl WithModel for Step<'_> {
    type Out = (Vec<f32>, Vec<f32>, Vec<f32>);
    type Error = TrainError;
    fn run<M: MultiTaskModel + 'static>(self, model: M) -> Result<Self::Out, TrainError> {
        let idx: Vec<usize> = (0..self.data.rows).collect();
        let layout = self.encoder.layout();
        let plain = self.device.clone().without_autodiff();
        if !self.weights.exists() {
            // burn initialises parameters lazily: use them once, then save the reference
            let _ = model.predict(&self.data.batch(&idx, layout, &plain));
            model.valid().save_file(self.weights).unwrap();
        }
        let m = model.load_file(self.weights);
        let before = flat(m.valid().predict(&self.data.batch(&idx, layout, &plain)));
        let f = m.forward(&self.data.batch(&idx, layout, &self.device));
        let losses = flat(f.losses.clone());
        let grads = GradientsParams::from_grads(f.total_loss(&[]).backward(), &m);
        let mut optim = mtl_trainer::fit::optimizer(&TrainSettings {
            lr: 0.01,
            ..TrainSettings::default()
        });
        let m = optim.step(0.01, m, grads);
        let after = flat(m.valid().predict(&self.data.batch(&idx, layout, &plain)));
        Ok((before, losses, after))
    }
}

/// Held by each test while it seeds and initialises models: a backend's seed is shared by the
/// process, so two tests seeding at once would draw each other's numbers.
static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn all_models_agree_across_backends() {
    let _seeded = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    let backends = usable_backends().expect("a required backend is unusable");
    assert_eq!(backends[0].0, BackendKind::Flex);
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let d = data(48);
    let models = models();
    assert!(models.len() > Models::KINDS.len());
    let dir = tempfile::tempdir().unwrap();
    for (k, config) in models.iter().enumerate() {
        let weights = dir.path().join(format!("{k}.bpk"));
        let mut results = Vec::new();
        for (kind, device) in &backends {
            let ad = device.clone().autodiff();
            ad.seed(100 + k as u64);
            let step = Step {
                encoder: &enc,
                data: &d,
                device: ad.clone(),
                weights: &weights,
            };
            results.push((
                *kind,
                Models::with_model(config, &s, enc.layout(), &ad, step).unwrap(),
            ));
        }
        let (_, (b0, l0, a0)) = &results[0];
        for (kind, (b, l, a)) in &results[1..] {
            for (what, x, y) in [
                ("predictions", b0, b),
                ("losses", l0, l),
                ("after one step", a0, a),
            ] {
                let diff = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
                let model = Models::kind(config);
                eprintln!("{model}: {kind} vs flex, {what}: max |diff| {diff:e}");
                assert!(diff < 1e-4, "{model}: {kind}: {what} differ by {diff}");
            }
        }
    }
}

/// One model's loss terms (evaluation mode: BatchNorm at its running statistics, so a row's
/// loss is its own) on the rows `idx` weighted by `weights`, and unweighted on `repeated`.
struct WeightedLosses<'a> {
    encoder: &'a Encoder,
    data: &'a EncodedData,
    idx: &'a [usize],
    weights: &'a [f32],
    repeated: &'a [usize],
}

impl WithModel for WeightedLosses<'_> {
    type Out = (Vec<f32>, Vec<f32>, Vec<f32>);
    type Error = TrainError;
    fn run<M: MultiTaskModel + 'static>(self, model: M) -> Result<Self::Out, TrainError> {
        let (layout, device) = (self.encoder.layout(), Device::flex());
        let losses = |batch| flat(model.valid().forward(&batch).losses);
        let batch = self.data.batch(self.idx, layout, &device);
        let (weighted, mass) = batch.clone().with_weights(self.weights);
        assert_eq!(mass, self.weights.iter().map(|&w| f64::from(w)).sum::<f64>());
        let repeated = self.data.batch(self.repeated, layout, &device);
        Ok((losses(weighted), losses(repeated), losses(batch)))
    }
}

#[test]
fn a_rows_sample_weight_counts_it_that_many_times_in_every_models_loss() {
    // weights 0, 1, 2, 3 cycling: the same loss terms as each row repeated that many times,
    // for every loss term of every model (a term that ignored the weights would differ)
    let _seeded = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let d = data(24);
    let idx: Vec<usize> = (0..24).collect();
    let weights: Vec<f32> = idx.iter().map(|r| (r % 4) as f32).collect();
    let repeated: Vec<usize> = idx.iter().flat_map(|&r| std::iter::repeat_n(r, r % 4)).collect();
    for (k, config) in models().iter().enumerate() {
        let device = Device::flex();
        device.seed(300 + k as u64);
        let job = WeightedLosses {
            encoder: &enc,
            data: &d,
            idx: &idx,
            weights: &weights,
            repeated: &repeated,
        };
        let (weighted, repeated, plain) = Models::with_model(config, &s, enc.layout(), &device, job).unwrap();
        let model = Models::kind(config);
        assert_eq!(weighted.len(), repeated.len());
        for (t, (w, r)) in weighted.iter().zip(&repeated).enumerate() {
            assert!(
                (w - r).abs() <= 1e-5 * r.abs().max(1.0),
                "{model}: term {t}: {w} vs {r}"
            );
        }
        // and the weights matter: the plain mean differs
        assert!(
            weighted.iter().zip(&plain).any(|(w, p)| (w - p).abs() > 1e-4),
            "{model}"
        );
    }
}
