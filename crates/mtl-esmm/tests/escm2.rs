//! ESCM² against its equations: the IPS and DR terms on a 4-row batch by hand, the propensity
//! held constant, the loss terms each variant adds, config errors.

use burn::tensor::{Device, Tensor, TensorData};
use mtl_esmm::escm2::{conversion_error, dr_rows, inverse_propensity, ips_rows};
use mtl_esmm::{Escm2Config, Escm2Variant};
use mtl_features::{EncodedData, Encoder, Schema, StateFitter, ValidSchema};
use mtl_layers::{ModelBuilder, MultiTaskModel};

fn t(v: &[f32]) -> Tensor<1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Device::flex())
}

fn v(t: Tensor<1>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn close(got: &[f32], want: &[f64]) {
    for (g, w) in got.iter().zip(want) {
        assert!(
            (f64::from(*g) - w).abs() < 1e-6 * w.abs().max(1.0),
            "{got:?} vs {want:?}"
        );
    }
}

/// Four impressions: logits (a, b) = (0, 0.5), (2, −1), (−3, 2), (1, 0); clicked 1, 1, 0, 1;
/// converted 1, 0, 0, 0; clip 0.05, λ = 0.1. By hand: pCTR = σ(a) = 0.5, 0.880797, 0.047426,
/// 0.731059; e = −log σ(0.5), −log σ(1), −log σ(−2), −log σ(0) = 0.474077, 0.313262,
/// 2.126928, 0.693147; 1/ô = 2, 1.135335, 20 (clipped: 0.047 < 0.05), 1.367879;
/// IPS = 0.1 · (0.474077·2 + 0.313262·1.135335 + 0 + 0.693147·1.367879) / 4 = 0.0562988;
/// with ê = (0.2, 0.1, 0.3, 0.4): DR = 0.1 · mean(ê + o (e − ê)/ô) = 0.0547817 and the
/// imputation term 0.1 · mean(o (e − ê)²/ô) = 0.00798553.
#[test]
fn ips_and_dr_terms_equal_the_hand_computed_values() {
    let (ctr, cvr) = (t(&[0.0, 2.0, -3.0, 1.0]), t(&[0.5, -1.0, 2.0, 0.0]));
    let (click, conversion) = (t(&[1.0, 1.0, 0.0, 1.0]), t(&[1.0, 0.0, 0.0, 0.0]));
    let error = conversion_error(cvr, conversion);
    close(
        &v(error.clone()),
        &[0.474_077, 0.313_262, 2.126_928, std::f64::consts::LN_2],
    );
    let inverse = inverse_propensity(burn::tensor::activation::sigmoid(ctr), 0.05);
    close(&v(inverse.clone()), &[2.0, 1.135_335, 20.0, 1.367_879]);
    let ips = ips_rows(error.clone(), click.clone(), inverse.clone(), 0.1).mean();
    close(&v(ips), &[0.056_298_8]);
    let [dr, imputation] = dr_rows(error, t(&[0.2, 0.1, 0.3, 0.4]), click, inverse, 0.1).map(|r| r.mean());
    close(&v(dr), &[0.054_781_7]);
    close(&v(imputation), &[0.007_985_53]);
}

fn schema() -> ValidSchema {
    Schema::from_toml_str(
        "embed_dim = 4\n[[sparse]]\nname = \"u\"\nvocab_size = 20\n[[dense]]\nname = \"x\"\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n[[labels]]\nname = \"purchase\"\nkind = \"binary\"\n",
        "t.toml",
    )
    .unwrap()
}

fn config(extra: &str) -> Escm2Config {
    toml::from_str(&format!(
        "ctr_tower = {{ dims = [8] }}\ncvr_tower = {{ dims = [8] }}\n{extra}"
    ))
    .unwrap()
}

#[test]
fn each_variant_adds_its_terms_and_the_propensity_carries_no_gradient() {
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let device = Device::flex().autodiff();
    device.seed(2);
    let rows = 16;
    let data = EncodedData {
        rows,
        n_sparse: 1,
        seq_max_len: vec![],
        n_dense: 1,
        n_labels: 2,
        sparse: (0..rows).map(|r| (r * 7 % 20) as u32).collect(),
        sequence: vec![],
        seq_len: vec![],
        dense: (0..rows).map(|r| (r as f32 * 0.37).sin()).collect(),
        labels: (0..rows)
            .flat_map(|r| [(r % 2) as f32, (r % 4 == 0) as u8 as f32])
            .collect(),
    };
    let batch = data.batch(&(0..rows).collect::<Vec<_>>(), enc.layout(), &device);
    let ips = config("").init(&s, enc.layout(), &device).unwrap();
    assert_eq!(ips.plan().loss_names, ["ctr", "ctcvr", "cvr_ips"]);
    let f = ips.forward(&batch);
    assert_eq!(f.losses.len(), 3);
    assert!(v(f.losses[2].clone())[0] > 0.0);
    // the IPS term moves the CVR tower, not the CTR tower (ô is held constant)
    let grads = f.losses[2].clone().backward();
    let out = |t: &mtl_layers::Tower| t.mlp.output.clone().unwrap().weight.val();
    let norm = |g: Option<Tensor<2>>| g.map_or(0.0, |g| g.abs().sum().into_scalar::<f32>());
    assert_eq!(norm(out(&ips.esmm.ctr_tower).grad(&grads)), 0.0);
    assert!(norm(out(&ips.esmm.cvr_tower).grad(&grads)) > 0.0);
    // the predictions are ESMM's
    assert_eq!(
        v(ips.predict(&batch)[1].clone()),
        v(ips.esmm.predict(&batch)[1].clone())
    );
    let dr = config("variant = \"dr\"")
        .init(&s, enc.layout(), &device)
        .unwrap();
    assert_eq!(dr.plan().loss_names, ["ctr", "ctcvr", "cvr_dr", "imputation"]);
    assert!(dr.imputation.is_some() && ips.imputation.is_none());
    assert_eq!(dr.forward(&batch).losses.len(), 4);
    // λ = 0: the regulariser is zero
    let off = config("counterfactual_weight = 0.0")
        .init(&s, enc.layout(), &device)
        .unwrap();
    assert_eq!(v(off.forward(&batch).losses[2].clone()), [0.0]);
}

#[test]
fn config_errors_name_the_key() {
    let s = schema();
    let err = |extra: &str| config(extra).plan(&s).unwrap_err().to_string();
    let e = err("imputation_tower = { dims = [4] }");
    assert!(e.contains("model.imputation_tower") && e.contains("dr"), "{e}");
    let e = err("counterfactual_weight = 11.0");
    assert!(e.contains("model.counterfactual_weight"), "{e}");
    let e = err("propensity_clip = 0.0");
    assert!(e.contains("model.propensity_clip"), "{e}");
    let e = err("variant = \"dr\"\nimputation_tower = { dims = [0] }");
    assert!(e.contains("model.imputation_tower.dims[0]"), "{e}");
    assert_eq!(config("variant = \"dr\"").variant, Escm2Variant::Dr);
    assert!(
        toml::from_str::<Escm2Config>(
            "ctr_tower = { dims = [8] }\ncvr_tower = { dims = [8] }\nvariant = \"snips\""
        )
        .is_err()
    );
}
