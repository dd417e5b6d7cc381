//! ESMM against the paper's equations: the product, the loss by hand, log-space stability,
//! where the CVR tower's gradient comes from, and torch-rechub's parameter counts.

mod common;

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use common::constant_tower;
use mtl_esmm::{Esmm, EsmmConfig};
use mtl_features::{EncodedData, Encoder, FieldPooling, Schema, StateFitter, ValidSchema};
use mtl_layers::ModelBuilder;
use mtl_layers::{MlpSpec, MultiTaskModel, trainable_params};

fn schema() -> ValidSchema {
    Schema::from_toml_str(
        r#"
embed_dim = 4
embed_init_std = 0.5
[[sparse]]
name = "u"
vocab_size = 20
group = "user"
[[sparse]]
name = "i"
vocab_size = 30
group = "item"
[[dense]]
name = "x"
[[labels]]
name = "click"
kind = "binary"
[[labels]]
name = "purchase"
kind = "binary"
"#,
        "t.toml",
    )
    .unwrap()
}

fn data(labels: &[(f32, f32)]) -> EncodedData {
    let rows = labels.len();
    EncodedData {
        rows,
        n_sparse: 2,
        seq_max_len: vec![],
        n_dense: 1,
        n_labels: 2,
        sparse: (0..rows)
            .flat_map(|r| [(r * 7 % 20) as u32, (r * 11 % 30) as u32])
            .collect(),
        sequence: vec![],
        seq_len: vec![],
        dense: (0..rows).map(|r| (r as f32 * 0.37).sin()).collect(),
        labels: labels.iter().flat_map(|&(c, p)| [c, p]).collect(),
    }
}

fn model(pooling: FieldPooling, device: &Device) -> (Encoder, Esmm) {
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let mut cfg = EsmmConfig::new(MlpSpec::new([8, 4]), MlpSpec::new([6]));
    cfg.pooling = pooling;
    let m = cfg.init(&s, enc.layout(), device).unwrap();
    (enc, m)
}

/// Six rows: two converted clicks, two clicks without a conversion, two impressions.
fn clicks_and_conversions() -> EncodedData {
    data(&[
        (1.0, 1.0),
        (1.0, 0.0),
        (0.0, 0.0),
        (1.0, 1.0),
        (0.0, 0.0),
        (1.0, 0.0),
    ])
}

fn v(t: Tensor<1>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn pctcvr_is_pctr_times_pcvr() {
    let device = Device::flex();
    device.seed(3);
    for pooling in [
        FieldPooling::Concat,
        FieldPooling::SumByGroup(vec!["user".into(), "item".into()]),
    ] {
        let (enc, m) = model(pooling, &device);
        let d = data(&[(0.0, 0.0); 40]);
        let batch = d.batch(&(0..40).collect::<Vec<_>>(), enc.layout(), &device);
        let p = m.forward_predictions(&batch);
        let (a, b, ctcvr) = (v(p.ctr_logit), v(p.cvr_logit), v(p.pctcvr));
        let sig = |x: f32| 1.0 / (1.0 + (-f64::from(x)).exp());
        for r in 0..40 {
            let expected = sig(a[r]) * sig(b[r]);
            assert!((f64::from(ctcvr[r]) - expected).abs() < 1e-6, "row {r}");
        }
        // and not pCVR × pCVR
        assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3));
        let names: Vec<String> = m.outputs().into_iter().map(|o| o.name).collect();
        assert_eq!(names, ["ctr", "cvr", "ctcvr"]);
    }
}

#[test]
fn loss_equals_hand_computed_value() {
    let device = Device::flex();
    let (enc, mut m) = model(FieldPooling::Concat, &device);
    // a = 0 → pCTR = 0.5;  b = ln 3 → pCVR = 0.75;  pCTCVR = 0.375
    constant_tower(&mut m.ctr_tower.mlp, 0.0, &device);
    constant_tower(&mut m.cvr_tower.mlp, 3f32.ln(), &device);
    let d = data(&[(1.0, 1.0), (1.0, 0.0), (0.0, 0.0)]);
    let batch = d.batch(&[0, 1, 2], enc.layout(), &device);
    let f = m.forward(&batch);
    let ctr = f.losses[0].clone().into_scalar::<f64>();
    let ctcvr = f.losses[1].clone().into_scalar::<f64>();
    // BCE(click, 0.5) = ln 2 for every row
    assert!((ctr - 2f64.ln()).abs() < 1e-5, "{ctr}");
    // CTCVR labels 1, 0, 0: (−ln 0.375 − 2·ln 0.625) / 3
    let expected = (-(0.375f64).ln() - 2.0 * (0.625f64).ln()) / 3.0;
    assert!((ctcvr - expected).abs() < 1e-5, "{ctcvr} vs {expected}");
    let total = f.total_loss(&[]).into_scalar::<f64>();
    assert!((total - (2f64.ln() + expected)).abs() < 1e-5);
    let weighted = f.total_loss(&[2.0, 0.5]).into_scalar::<f64>();
    assert!((weighted - (2.0 * 2f64.ln() + 0.5 * expected)).abs() < 1e-5);
}

fn grads_finite_and_nonzero(m: &Esmm, loss: Tensor<1>) -> (bool, f64, f64) {
    let grads = loss.backward();
    let mut finite = true;
    let mut norm = |w: &Param<Tensor<2>>| {
        let g = w
            .val()
            .grad(&grads)
            .map(|g| g.try_into_data().unwrap().try_to_vec::<f32>().unwrap())
            .unwrap_or_default();
        finite &= g.iter().all(|x| x.is_finite());
        g.iter().map(|x| f64::from(x * x)).sum::<f64>()
    };
    let cvr = norm(&m.cvr_tower.mlp.blocks[0].linear.weight);
    let emb = norm(&m.input.embedding.weight);
    (finite, cvr, emb)
}

#[test]
fn saturated_probabilities_give_finite_loss_and_gradients() {
    let device = Device::flex().autodiff();
    let (enc, mut m) = model(FieldPooling::Concat, &device);
    // pCVR = σ(−200) rounds to 0 in f32, pCTR = σ(200) rounds to 1: probabilities alone would
    // give log 0 = −inf; the log-space loss stays finite.
    constant_tower(&mut m.ctr_tower.mlp, 200.0, &device);
    constant_tower(&mut m.cvr_tower.mlp, -200.0, &device);
    let d = data(&[(1.0, 1.0), (0.0, 0.0), (1.0, 0.0)]);
    let batch = d.batch(&[0, 1, 2], enc.layout(), &device);
    let f = m.forward(&batch);
    let losses: Vec<f64> = f.losses.iter().map(|l| l.clone().into_scalar::<f64>()).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    // CTCVR: row 0 has label 1 with log pCTCVR ≈ −200 → loss ≈ 200/3 from that row
    assert!((losses[1] - 200.0 / 3.0).abs() < 0.5, "{losses:?}");
    let (finite, _, _) = grads_finite_and_nonzero(&m, f.total_loss(&[]));
    assert!(finite, "gradients must be finite");
}

#[test]
fn cvr_tower_learns_from_the_ctcvr_loss_alone() {
    let device = Device::flex().autodiff();
    device.seed(11);
    let (enc, m) = model(FieldPooling::Concat, &device);
    let d = clicks_and_conversions();
    let batch = d.batch(&(0..6).collect::<Vec<_>>(), enc.layout(), &device);
    let f = m.forward(&batch);
    let (finite, cvr_from_ctcvr, _) = grads_finite_and_nonzero(&m, f.losses[1].clone());
    assert!(finite);
    assert!(
        cvr_from_ctcvr > 1e-12,
        "CVR tower got no gradient from the CTCVR loss"
    );
    let f = m.forward(&batch);
    let (_, cvr_from_ctr, emb_from_ctr) = grads_finite_and_nonzero(&m, f.losses[0].clone());
    assert_eq!(cvr_from_ctr, 0.0, "the CTR loss must not reach the CVR tower");
    assert!(emb_from_ctr > 0.0, "the CTR loss trains the shared embeddings");
}

#[test]
fn parameter_counts_match_torch_rechub() {
    // torch-rechub's ESMM on the peer data: 20 fields, vocabularies summing to 320,150, embed 16
    let vocab = [
        100000, 50000, 20000, 5000, 1000, 500, 100, 50, 20, 10, 100000, 30000, 10000, 2000, 1000, 300, 100,
        40, 20, 10,
    ];
    let mut text = String::from("embed_dim = 16\n");
    for (k, size) in vocab.iter().enumerate() {
        let group = if k < 10 { "user" } else { "item" };
        text += &format!("[[sparse]]\nname = \"f{k}\"\nvocab_size = {size}\ngroup = \"{group}\"\n");
    }
    text += "[[labels]]\nname = \"click\"\nkind = \"binary\"\n[[labels]]\nname = \"purchase\"\nkind = \"binary\"\n";
    let s = Schema::from_toml_str(&text, "peer").unwrap();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let device = Device::flex();
    let example = EsmmConfig::new(MlpSpec::new([16, 8]), MlpSpec::new([16, 8]))
        .init(&s, enc.layout(), &device)
        .unwrap();
    assert_eq!(trainable_params(&example), 5_133_058);
    assert_eq!(trainable_params(&example.input), 5_122_400);
    let large = EsmmConfig::new(MlpSpec::new([256, 128, 64]), MlpSpec::new([256, 128, 64]))
        .init(&s, enc.layout(), &device)
        .unwrap();
    assert_eq!(trainable_params(&large), 5_370_978);
    assert!(
        example.num_params() > 5_133_058,
        "burn's count includes BatchNorm buffers"
    );
}

#[test]
fn config_errors_name_the_key() {
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let mut cfg = EsmmConfig::new(MlpSpec::new([4]), MlpSpec::new([4]));
    cfg.conversion_label = "buy".into();
    let err = cfg
        .init(&s, enc.layout(), &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.conversion_label") && err.contains("buy") && err.contains("purchase"),
        "{err}"
    );
    let toml_err =
        toml::from_str::<EsmmConfig>("ctr_tower = { dims = [4] }\ncvr_tower = { dims = [4] }\ntowers = 3\n")
            .unwrap_err()
            .to_string();
    assert!(toml_err.contains("towers"), "{toml_err}");
}

#[test]
fn label_priors_start_pctr_at_the_click_rate_and_pcvr_at_conversions_per_click() {
    let device = Device::flex().autodiff();
    device.seed(5);
    let (enc, m) = model(FieldPooling::Concat, &device);
    let ids = |m: &Esmm| {
        let (c, v) = (
            m.ctr_tower.mlp.output.as_ref().unwrap(),
            m.cvr_tower.mlp.output.as_ref().unwrap(),
        );
        [c.weight.id, v.weight.id]
    };
    let before = ids(&m);
    // click mean 0.2, purchase mean 0.05: P(conversion | click) = 0.05 / 0.2 = 0.25
    let m = m.with_label_priors(&[0.2, 0.05]);
    assert_eq!(ids(&m), before, "the parameters keep their ids");
    let bias = |t: &mtl_layers::Tower| v(t.mlp.output.as_ref().unwrap().bias.as_ref().unwrap().val())[0];
    assert!((f64::from(bias(&m.ctr_tower)) - 0.25f64.ln()).abs() < 1e-6); // logit 0.2 = ln(0.2/0.8)
    assert!((f64::from(bias(&m.cvr_tower)) - (1.0f64 / 3.0).ln()).abs() < 1e-6); // logit 0.25
    let d = clicks_and_conversions();
    let batch = d.batch(&(0..6).collect::<Vec<_>>(), enc.layout(), &device);
    let p = m.forward_predictions(&batch);
    // the CVR tower's output weights are zero: pCVR is the prior on every row...
    for (r, x) in v(p.pcvr).iter().enumerate() {
        assert!((f64::from(*x) - 0.25).abs() < 1e-6, "row {r}: {x}");
    }
    // ...while the CTR tower keeps its random output weights (pCTR varies by row)
    let pctr = v(p.pctr);
    assert!(pctr.iter().any(|x| (x - pctr[0]).abs() > 1e-4), "{pctr:?}");
    // and the zeroed weights still learn from the CTCVR loss
    let f = m.forward(&batch);
    let grads = f.losses[1].clone().backward();
    let out = m.cvr_tower.mlp.output.as_ref().unwrap();
    let g = v(out.weight.val().grad(&grads).unwrap().flatten(0, 1));
    assert!(
        g.iter().all(|x| x.is_finite()) && g.iter().any(|x| x.abs() > 1e-9),
        "{g:?}"
    );
}

#[test]
fn label_priors_need_clicks_and_rates() {
    let s = schema();
    let labels = EsmmConfig::new(MlpSpec::new([4]), MlpSpec::new([4]))
        .init(
            &s,
            Encoder::new(&s, &StateFitter::new(&s).finish()).layout(),
            &Device::flex(),
        )
        .unwrap()
        .labels;
    let (ctr, cvr) = labels.priors(&[0.04, 0.002]).unwrap();
    assert!((ctr - 0.04).abs() < 1e-12 && (cvr - 0.05).abs() < 1e-12);
    assert_eq!(
        labels.priors(&[0.0, 0.0]),
        None,
        "no clicked row: no conversion rate"
    );
    assert_eq!(labels.priors(&[f64::NAN, 0.0]), None);
    assert_eq!(labels.priors(&[0.5, 2.0]), None, "a mean above 1 is not a rate");
    assert_eq!(labels.priors(&[0.5]), None, "a missing column");
    // a model without clicks keeps its random start
    let device = Device::flex();
    device.seed(9);
    let (_, m) = model(FieldPooling::Concat, &device);
    let w = |m: &Esmm| {
        let out = m.cvr_tower.mlp.output.as_ref();
        out.map(|o| v(o.weight.val().flatten(0, 1)))
    };
    let before = w(&m);
    assert_eq!(w(&m.with_label_priors(&[0.0, 0.0])), before);
}
