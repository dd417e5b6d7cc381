//! Pluggable towers against their equations (the FM term, a cross layer, parameter counts,
//! config checks) and against a known signal: a label that depends on the *product* of two
//! fields' hidden factors and on neither field alone, which a DeepFM or DCN tower fits and a
//! shallow MLP (logistic regression over the concatenated embeddings) cannot.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use mtl_layers::tower::{CrossLayer, fm_interactions};
use mtl_layers::{MlpSpec, ModelError, TowerKind, TowerSpec, trainable_params};
use mtl_mmoe::{SharedBottomConfig, TaskConfig};
mod common;

use common::run_config;
use mtl_models::{ModelConfig, Models};
use mtl_trainer::{TrainOptions, TrainSettings};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn fm_term_is_the_sum_of_pairwise_inner_products() {
    let device = Device::flex();
    // 2 rows, 3 fields, dim 2
    let e = [
        [[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]],
        [[0.0, 1.0], [2.0, 2.0], [-1.0, 4.0]],
    ];
    let flat: Vec<f32> = e.iter().flatten().flatten().copied().collect();
    let fields = Tensor::<3>::from_data(TensorData::new(flat, [2, 3, 2]), &device);
    let got = values(fm_interactions(fields));
    for (r, row) in e.iter().enumerate() {
        let mut expected = 0.0;
        for f in 0..3 {
            for g in f + 1..3 {
                expected += row[f][0] * row[g][0] + row[f][1] * row[g][1];
            }
        }
        assert!(
            (got[r] - expected).abs() < 1e-5,
            "row {r}: {} vs {expected}",
            got[r]
        );
    }
}

#[test]
fn cross_layer_is_x0_times_affine_plus_x() {
    let device = Device::flex();
    device.seed(2);
    let spec = TowerSpec::mlp([3]).with_kind(TowerKind::Dcn, Some(1));
    let tower = spec.init(4, &device);
    let layer: &CrossLayer = &tower.cross[0];
    let w = values(layer.linear.weight.val()); // [in, out], row-major
    let b = values(layer.linear.bias.as_ref().unwrap().val());
    let x0 = [0.5f32, -1.0, 2.0, 0.25];
    let x = [1.0f32, 0.0, -0.5, 3.0];
    let t = |v: [f32; 4]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [1, 4]), &device);
    let got = values(layer.forward(t(x0), t(x)));
    for j in 0..4 {
        let affine: f32 = (0..4).map(|i| x[i] * w[i * 4 + j]).sum::<f32>() + b[j];
        let expected = x0[j] * affine + x[j];
        assert!((got[j] - expected).abs() < 1e-5, "{j}: {} vs {expected}", got[j]);
    }
}

#[test]
fn parameter_counts_per_kind() {
    let device = Device::flex();
    let d = 10;
    let mlp = trainable_params(&TowerSpec::mlp([6]).init(d, &device));
    // Linear 10→6 (66) + BatchNorm γ, β (12) + Linear 6→1 (7)
    assert_eq!(mlp, 66 + 12 + 7);
    let fm = TowerSpec::mlp([6]).with_kind(TowerKind::Deepfm, None);
    assert_eq!(trainable_params(&fm.init(d, &device)), mlp);
    for layers in [1, 3] {
        let dcn = TowerSpec::mlp([6]).with_kind(TowerKind::Dcn, Some(layers));
        assert_eq!(
            trainable_params(&dcn.init(d, &device)),
            mlp + layers * (d * d + d)
        );
    }
    let default_dcn = TowerSpec::mlp([6]).with_kind(TowerKind::Dcn, None);
    assert_eq!(
        trainable_params(&default_dcn.init(d, &device)),
        mlp + 2 * (d * d + d)
    );
}

#[test]
fn tower_config_errors_name_the_key() {
    let message = |r: Result<(), ModelError>| r.unwrap_err().to_string();
    let on_mlp = TowerSpec::mlp([4]).with_kind(TowerKind::Mlp, Some(2));
    assert!(
        message(on_mlp.check("model.tower", 3))
            .contains("`model.tower.cross_layers`: is only for kind = \"dcn\"")
    );
    let zero = TowerSpec::mlp([4]).with_kind(TowerKind::Dcn, Some(0));
    assert!(message(zero.check("model.ctr_tower", 3)).contains("`model.ctr_tower.cross_layers`: = 0"));
    let fm = TowerSpec::mlp([4]).with_kind(TowerKind::Deepfm, None);
    assert!(message(fm.check("model.tower", 1)).contains("needs at least two embedded"));
    assert!(fm.check("model.tower", 2).is_ok());
    let bad_mlp = TowerSpec::mlp([0]).with_kind(TowerKind::Dcn, None);
    assert!(message(bad_mlp.check("model.tower", 2)).contains("model.tower.dims[0]"));
    // the TOML form, through a whole run config's parser
    let parsed: TowerSpec = toml::from_str("kind = \"dcn\"\ndims = [8]\ncross_layers = 3\n").unwrap();
    assert_eq!(parsed, TowerSpec::mlp([8]).with_kind(TowerKind::Dcn, Some(3)));
    assert!(toml::from_str::<TowerSpec>("kind = \"fm\"\ndims = []\n").is_err());
    assert_eq!(
        toml::from_str::<TowerSpec>("dims = [8]\n").unwrap(),
        MlpSpec::new([8]).into()
    );
}

/// Two fields of 30 ids; P(y = 1) = σ(2.5 ⟨P_u, Q_i⟩) with unit-normal factors of width 3,
/// each set centred: averaged over either field alone the logit is exactly 0, so additive models
/// see no signal.
fn pairwise_data(dir: &Path, seed: u64) -> (std::path::PathBuf, [std::path::PathBuf; 3]) {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = |rng: &mut StdRng| -> f64 {
        let (a, b): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    };
    let factors = |rng: &mut StdRng| -> Vec<[f64; 3]> {
        let mut f: Vec<[f64; 3]> = (0..30).map(|_| [normal(rng), normal(rng), normal(rng)]).collect();
        for k in 0..3 {
            let mean = f.iter().map(|v| v[k]).sum::<f64>() / 30.0;
            f.iter_mut().for_each(|v| v[k] -= mean);
        }
        f
    };
    let (p, q) = (factors(&mut rng), factors(&mut rng));
    let mut files = Vec::new();
    for (name, rows) in [("train", 24_000), ("valid", 3_000), ("test", 6_000)] {
        let mut text = String::from("u,i,y\n");
        for _ in 0..rows {
            let (u, i) = (rng.random_range(0..30), rng.random_range(0..30));
            let logit: f64 = 2.5 * (0..3).map(|k| p[u][k] * q[i][k]).sum::<f64>() / 3f64.sqrt();
            let y = rng.random::<f64>() < 1.0 / (1.0 + (-logit).exp());
            text += &format!("{u},{i},{}\n", u8::from(y));
        }
        let path = dir.join(format!("{name}.csv"));
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    let schema = dir.join("schema.toml");
    std::fs::write(
        &schema,
        "embed_dim = 4\nembed_init_std = 0.1\n[[sparse]]\nname = \"u\"\nvocab_size = 30\n[[sparse]]\nname = \"i\"\nvocab_size = 30\n[[labels]]\nname = \"y\"\nkind = \"binary\"\n",
    )
    .unwrap();
    (schema, files.try_into().unwrap())
}

/// The test AUC of a shared-bottom model with `tower`, trained 12 epochs with training seed `seed`.
fn test_auc(
    dir: &Path,
    schema: &Path,
    files: &[std::path::PathBuf; 3],
    (tower, seed): (TowerSpec, u64),
    name: &str,
) -> f64 {
    let model = ModelConfig::SharedBottom(SharedBottomConfig {
        bottom: MlpSpec::new([]),
        tower,
        tasks: vec![TaskConfig::new("y")],
        pooling: Default::default(),
    });
    let config = run_config(
        schema,
        &files[0],
        Some(&files[1]),
        Some(&files[2]),
        model,
        TrainSettings {
            epochs: 12,
            batch_size: 256,
            lr: 1e-2,
            seed,
            ..TrainSettings::default()
        },
    );
    let summary =
        mtl_trainer::train::<Models>(Some(&config), &dir.join(name), false, &TrainOptions::default())
            .unwrap();
    summary.test[0].binary.as_ref().unwrap().auc.unwrap()
}

#[test]
fn fm_and_cross_towers_fit_a_pairwise_interaction_a_shallow_mlp_cannot() {
    // Two data seeds, a training seed each. Measured on this machine (12 epochs): shallow
    // 0.501–0.539, deepfm 0.844–0.857, dcn 0.819–0.857. At 4 epochs a one-layer DCN was still
    // climbing (0.79–0.83 here, 0.74 on CI's CPU), hence 12.
    for (data_seed, seed) in [(17, 3), (18, 5)] {
        let dir = tempfile::tempdir().unwrap();
        let (schema, files) = pairwise_data(dir.path(), data_seed);
        let auc = |tower: TowerSpec, name: &str| test_auc(dir.path(), &schema, &files, (tower, seed), name);
        let shallow = auc(TowerSpec::mlp([]), "mlp");
        let deepfm = auc(TowerSpec::mlp([]).with_kind(TowerKind::Deepfm, None), "deepfm");
        let dcn = auc(TowerSpec::mlp([]).with_kind(TowerKind::Dcn, Some(1)), "dcn");
        eprintln!(
            "data seed {data_seed}, seed {seed}: shallow MLP {shallow:.4}, deepfm {deepfm:.4}, dcn {dcn:.4}"
        );
        assert!(
            shallow < 0.62,
            "a shallow MLP cannot see a pure interaction: {shallow}"
        );
        assert!(deepfm > shallow + 0.2, "deepfm {deepfm} vs mlp {shallow}");
        assert!(dcn > shallow + 0.2, "dcn {dcn} vs mlp {shallow}");
    }
}

#[test]
fn every_model_with_towers_takes_deepfm_and_dcn_towers() {
    use mtl_synth::{CcpSpec, generate_ccp};
    let dir = tempfile::tempdir().unwrap();
    let files = generate_ccp(&CcpSpec::small(3000, 4), &dir.path().join("data"), "d").unwrap();
    let tasks = "tasks = [{ label = \"click\" }, { label = \"purchase\" }]";
    for kind in ["kind = \"deepfm\"", "kind = \"dcn\", cross_layers = 1"] {
        let tower = format!("{{ {kind}, dims = [8] }}");
        for table in [
            format!("type = \"esmm\"\nctr_tower = {tower}\ncvr_tower = {{ dims = [8] }}"),
            format!(
                "type = \"esmm_chain\"\ntower = {{ dims = [8] }}\ntasks = [{{ label = \"click\", tower = {tower} }}, {{ label = \"purchase\" }}]"
            ),
            format!("type = \"mmoe\"\nn_experts = 2\nexpert = {{ dims = [8] }}\ntower = {tower}\n{tasks}"),
            format!(
                "type = \"ple\"\nn_level = 1\nn_expert_specific = 1\nn_expert_shared = 1\nexpert = {{ dims = [8] }}\ntower = {tower}\n{tasks}"
            ),
            format!("type = \"aitm\"\nbottom = {{ dims = [8] }}\ntower = {tower}\n{tasks}"),
        ] {
            let model = mtl_trainer::parse_model::<Models>(&table).unwrap_or_else(|e| panic!("{table}: {e}"));
            let config = run_config(
                &files.schema,
                &files.train,
                None,
                Some(&files.test),
                model,
                TrainSettings {
                    epochs: 1,
                    batch_size: 256,
                    ..TrainSettings::default()
                },
            );
            let out = dir.path().join("model");
            let _ = std::fs::remove_dir_all(&out);
            let summary = mtl_trainer::train::<Models>(Some(&config), &out, false, &TrainOptions::default())
                .unwrap_or_else(|e| panic!("{table}: {e}"));
            assert!(summary.finished, "{table}");
            for m in &summary.test {
                let b = m.binary.as_ref().unwrap();
                assert!(
                    b.log_loss.is_finite() && b.mean_prediction > 0.0 && b.mean_prediction < 1.0,
                    "{table}: {m:?}"
                );
            }
        }
    }
}
