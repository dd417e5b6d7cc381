//! AITM: torch-rechub's parameter counts, the calibrator on hand values, attention weights,
//! the funnel's label rules and conditional outputs.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use mtl_features::{EncodedData, Encoder, Schema, StateFitter, ValidSchema};
use mtl_layers::ModelBuilder;
use mtl_layers::{MlpSpec, MultiTaskModel, trainable_params};
use mtl_mmoe::{Aitm, AitmConfig, TaskConfig};

/// Three fields of ten ids, embed 4; labels a funnel click → cart → buy.
fn schema() -> ValidSchema {
    let mut text = String::from("embed_dim = 4\nembed_init_std = 0.5\n");
    for k in 0..3 {
        text += &format!("[[sparse]]\nname = \"f{k}\"\nvocab_size = 10\n");
    }
    for label in ["click", "cart", "buy"] {
        text += &format!("[[labels]]\nname = \"{label}\"\nkind = \"binary\"\n");
    }
    Schema::from_toml_str(&text, "t.toml").unwrap()
}

fn config(labels: &[&str], alpha: f64) -> AitmConfig {
    AitmConfig {
        bottom: MlpSpec::new([8, 4]),
        tower: MlpSpec::new([3]).into(),
        tasks: labels.iter().map(|l| TaskConfig::new(l)).collect(),
        calibrator_alpha: alpha,
        pooling: Default::default(),
    }
}

fn build(c: &AitmConfig) -> (Aitm, Encoder) {
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    (c.init(&s, enc.layout(), &Device::flex()).unwrap(), enc)
}

/// torch-rechub's MLP block: per hidden layer a Linear and BatchNorm's weight and bias.
fn mlp(input: usize, dims: &[usize]) -> usize {
    let mut width = input;
    let mut n = 0;
    for &d in dims {
        n += width * d + d + 2 * d;
        width = d;
    }
    n
}

#[test]
fn parameter_counts_match_torch_rechub() {
    // torch-rechub 0.9.0's `AITM(features, n_task, {"dims": [8, 4]}, [{"dims": [3]}] * n)` on
    // these features reports 574 (two tasks) and 839 (three) parameters
    for (labels, rechub) in [
        (&["click", "cart"][..], 574),
        (&["click", "cart", "buy"][..], 839),
    ] {
        let t = labels.len();
        let (model, _) = build(&config(labels, 0.6));
        let d = 4;
        let formula = 3 * 10 * 4                   // embeddings
            + t * mlp(12, &[8, 4])                 // bottoms
            + t * (mlp(d, &[3]) + 3 + 1)           // towers and their output Linear
            + (t - 1) * mlp(d, &[d])               // info layers
            + (t - 1) * 3 * d * d; // Q, K, V without bias
        assert_eq!(formula, rechub);
        assert_eq!(trainable_params(&model), formula, "{t} tasks");
    }
}

#[test]
fn calibrator_is_zero_on_an_ordered_chain_and_positive_otherwise() {
    let (model, enc) = build(&config(&["click", "cart", "buy"], 0.5));
    let device = Device::flex();
    let t = |v: [f32; 2]| Tensor::<1>::from_floats(v, &device);
    let two_rows = EncodedData {
        rows: 2,
        n_sparse: 3,
        n_labels: 3,
        sparse: vec![0; 6],
        labels: vec![0.0; 6],
        ..Default::default()
    };
    let mut batch = two_rows.batch(&[0, 1], enc.layout(), &device);
    let value = |probs: Vec<Tensor<1>>, batch: &mtl_features::BatchTensors| {
        model
            .calibrator(&probs, batch)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()[0]
    };
    // ordered: every step at most the one before
    assert_eq!(
        value(vec![t([0.5, 0.2]), t([0.4, 0.2]), t([0.1, 0.0])], &batch),
        0.0
    );
    // cart above click on row 2 by 0.4: mean over rows 0.2; buy above cart on row 1 by 0.1:
    // mean 0.05; α = 0.5 → 0.5 · (0.2 + 0.05) = 0.125
    let probs = || vec![t([0.5, 0.2]), t([0.4, 0.6]), t([0.5, 0.1])];
    let got = value(probs(), &batch);
    assert!((got - 0.125).abs() < 1e-6, "{got}");
    // sample weights 0.5 and 1.5 (mean 1): 0.5 · (0.4 · 1.5 / 2 + 0.1 · 0.5 / 2) = 0.1625
    batch.weights = Some(t([0.5, 1.5]));
    let got = value(probs(), &batch);
    assert!((got - 0.1625).abs() < 1e-6, "{got}");
}

#[test]
fn attention_weights_are_distributions_and_outputs_follow_the_funnel() {
    let (model, enc) = build(&config(&["click", "cart", "buy"], 0.6));
    let rows = 12;
    let d = EncodedData {
        rows,
        n_sparse: 3,
        seq_max_len: vec![],
        n_dense: 0,
        n_labels: 3,
        sparse: (0..rows)
            .flat_map(|r| [(r % 10) as u32, (r * 3 % 10) as u32, 1])
            .collect(),
        sequence: vec![],
        seq_len: vec![],
        dense: vec![],
        labels: (0..rows)
            .flat_map(|r| {
                [
                    f32::from(r % 2 == 0),
                    f32::from(r % 4 == 0),
                    f32::from(r % 8 == 0),
                ]
            })
            .collect(),
    };
    let batch = d.batch(&(0..rows).collect::<Vec<_>>(), enc.layout(), &Device::flex());
    let (logits, attention) = model.valid().forward_with_attention(&batch);
    assert_eq!((logits.len(), attention.len()), (3, 2));
    for w in attention {
        assert_eq!(w.dims(), [rows, 2]);
        let sums = w.sum_dim(1).into_data().try_to_vec::<f32>().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
    }
    // three steps over all rows, then cart on clicked rows and buy on carted rows
    let names: Vec<String> = model.outputs().into_iter().map(|o| o.name).collect();
    assert_eq!(
        names,
        ["click", "cart", "buy", "cart_given_click", "buy_given_cart"]
    );
    let outputs = model.outputs();
    assert_eq!(outputs[3].rows_where, Some(0));
    assert_eq!(outputs[4].rows_where, Some(1));
    assert_eq!(model.predict(&batch).len(), 5);
    let f = model.forward(&batch);
    assert_eq!(model.loss_names(), ["click", "cart", "buy", "calibrator"]);
    assert_eq!(f.losses.len(), 4);
    // each step may only happen after the one before it
    let plan = config(&["click", "cart", "buy"], 0.6).plan(&schema()).unwrap();
    let rules: Vec<(usize, usize)> = plan.label_rules.iter().map(|r| (r.label, r.requires)).collect();
    assert_eq!(rules, [(1, 0), (2, 1)]);
    // α = 0: torch-rechub's training, no calibrator term
    let (plain, _) = build(&config(&["click", "cart"], 0.0));
    assert_eq!(plain.loss_names(), ["click", "cart"]);
}

#[test]
fn impossible_aitm_configs_are_named() {
    let s = schema();
    for (c, key) in [
        (config(&["click"], 0.6), "model.tasks"),
        (config(&["click", "cart"], -1.0), "model.calibrator_alpha"),
        (
            AitmConfig {
                bottom: MlpSpec::new([]),
                ..config(&["click", "cart"], 0.6)
            },
            "model.bottom.dims",
        ),
    ] {
        let err = c.plan(&s).unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

/// Label priors: every task's tower output bias starts at logit(its label's rate), its
/// weights as they were.
#[test]
fn label_priors_start_every_task_at_its_labels_rate() {
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let c = config(&["click", "cart", "buy"], 0.6);
    let m = c.init(&s, enc.layout(), &Device::flex().autodiff()).unwrap();
    let out = |m: &Aitm, k: usize| m.towers[k].mlp.output.clone().unwrap();
    let v = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
    let weights: Vec<Vec<f32>> = (0..3).map(|k| v(out(&m, k).weight.val().flatten(0, 1))).collect();
    let primed = m.with_label_priors(&[0.3, 0.1, 0.02]);
    for (k, rate) in [0.3f64, 0.1, 0.02].iter().enumerate() {
        let got = f64::from(v(out(&primed, k).bias.unwrap().val())[0]);
        assert!((got - (rate / (1.0 - rate)).ln()).abs() < 1e-6, "task {k}: {got}");
        assert_eq!(
            v(out(&primed, k).weight.val().flatten(0, 1)),
            weights[k],
            "task {k}"
        );
    }
}
