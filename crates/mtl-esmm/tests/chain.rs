//! The N-step ESMM chain against its equations: two steps are ESMM exactly, P_k is the product
//! of the conditionals, every step's loss matches a formula computed here in f64, saturated
//! towers stay finite, and the config is checked.

mod common;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use common::constant_tower;
use mtl_esmm::{EsmmChainConfig, EsmmConfig};
use mtl_features::{EncodedData, Encoder, Schema, StateFitter, ValidSchema};
use mtl_layers::ModelBuilder;
use mtl_layers::{MlpSpec, ModelError, MultiTaskModel, TowerKind, TowerSpec};

fn schema(labels: &[(&str, &str)]) -> ValidSchema {
    let mut text = String::from(
        "embed_dim = 4\nembed_init_std = 0.5\n[[sparse]]\nname = \"u\"\nvocab_size = 20\n[[sparse]]\nname = \"i\"\nvocab_size = 30\n[[dense]]\nname = \"x\"\n",
    );
    for (name, kind) in labels {
        text += &format!("[[labels]]\nname = \"{name}\"\nkind = \"{kind}\"\n");
    }
    Schema::from_toml_str(&text, "t.toml").unwrap()
}

/// `labels[r]` are row r's labels, one per schema label.
fn data(labels: &[Vec<f32>]) -> EncodedData {
    let rows = labels.len();
    EncodedData {
        rows,
        n_sparse: 2,
        seq_max_len: vec![],
        n_dense: 1,
        n_labels: labels[0].len(),
        sparse: (0..rows)
            .flat_map(|r| [(r * 7 % 20) as u32, (r * 11 % 30) as u32])
            .collect(),
        sequence: vec![],
        seq_len: vec![],
        dense: (0..rows).map(|r| (r as f32 * 0.37).sin()).collect(),
        labels: labels.iter().flatten().copied().collect(),
    }
}

fn v(t: Tensor<1>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn three_step_rows() -> Vec<Vec<f32>> {
    (0..24)
        .map(|r| match r % 6 {
            0 => vec![1.0, 1.0, 1.0],
            1 | 2 => vec![1.0, 1.0, 0.0],
            3 => vec![1.0, 0.0, 0.0],
            _ => vec![0.0, 0.0, 0.0],
        })
        .collect()
}

#[test]
fn two_steps_are_esmm_with_the_same_weights() {
    let device = Device::flex().autodiff();
    device.seed(5);
    let s = schema(&[("click", "binary"), ("purchase", "binary")]);
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let esmm = EsmmConfig::new(MlpSpec::new([8, 4]), MlpSpec::new([6]))
        .init(&s, enc.layout(), &device)
        .unwrap();
    let chain_config = EsmmChainConfig::new(MlpSpec::new([8, 4]), &["click", "purchase"]);
    let mut chain = chain_config.init(&s, enc.layout(), &device).unwrap();
    chain.input = esmm.input.clone();
    chain.towers = vec![esmm.ctr_tower.clone(), esmm.cvr_tower.clone()];
    let rows: Vec<Vec<f32>> = (0..30)
        .map(|r| vec![f32::from(r % 3 == 0), f32::from(r % 6 == 0)])
        .collect();
    let d = data(&rows);
    let batch = d.batch(&(0..30).collect::<Vec<_>>(), enc.layout(), &device);
    let (e, c) = (esmm.forward(&batch), chain.forward(&batch));
    assert_eq!(e.predictions.len(), c.predictions.len());
    for (a, b) in e.predictions.iter().zip(&c.predictions) {
        assert_eq!(v(a.clone()), v(b.clone()));
    }
    for (a, b) in e.losses.iter().zip(&c.losses) {
        assert_eq!(v(a.clone()), v(b.clone()));
    }
    let names: Vec<String> = chain.outputs().into_iter().map(|o| o.name).collect();
    assert_eq!(names, ["click", "purchase_given_click", "purchase"]);
    let (eo, co) = (esmm.outputs(), chain.outputs());
    for (a, b) in eo.iter().zip(&co) {
        assert_eq!((&a.target, a.rows_where), (&b.target, b.rows_where));
    }
}

#[test]
fn three_steps_products_and_losses_follow_the_formula() {
    let device = Device::flex().autodiff();
    device.seed(9);
    let s = schema(&[("click", "binary"), ("cart", "binary"), ("purchase", "binary")]);
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let m = EsmmChainConfig::new(MlpSpec::new([8]), &["click", "cart", "purchase"])
        .init(&s, enc.layout(), &device)
        .unwrap();
    let rows = three_step_rows();
    let d = data(&rows);
    let n = rows.len();
    let batch = d.batch(&(0..n).collect::<Vec<_>>(), enc.layout(), &device);
    let p = m.forward_predictions(&batch);
    let logits: Vec<Vec<f64>> = p
        .logits
        .iter()
        .map(|a| v(a.clone()).into_iter().map(f64::from).collect())
        .collect();
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let preds: Vec<Vec<f32>> = m.predict(&batch).into_iter().map(v).collect();
    assert_eq!(preds.len(), 5);
    let losses: Vec<f64> = m
        .forward(&batch)
        .losses
        .iter()
        .map(|l| l.clone().into_scalar::<f64>())
        .collect();
    for k in 0..3 {
        let mut loss = 0.0;
        for r in 0..n {
            let joint: f64 = (0..=k).map(|i| sig(logits[i][r])).product();
            let label: f32 = (0..=k).map(|i| rows[r][i]).product();
            loss -= if label == 1.0 {
                joint.ln()
            } else {
                (1.0 - joint).ln()
            };
            // predictions: [c1, c2, P2, c3, P3]
            let (cond, joint_out) = match k {
                0 => (preds[0][r], preds[0][r]),
                _ => (preds[2 * k - 1][r], preds[2 * k][r]),
            };
            assert!((f64::from(cond) - sig(logits[k][r])).abs() < 1e-6);
            assert!((f64::from(joint_out) - joint).abs() < 1e-6, "step {k} row {r}");
        }
        loss /= n as f64;
        assert!(
            (losses[k] - loss).abs() < 1e-5,
            "step {k}: {} vs {loss}",
            losses[k]
        );
    }
    assert_eq!(m.loss_names(), ["click", "cart", "purchase"]);
    let outputs = m.outputs();
    let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "click",
            "cart_given_click",
            "cart",
            "purchase_given_cart",
            "purchase"
        ]
    );
    assert_eq!(outputs[3].rows_where, Some(1));
    assert_eq!(outputs[4].target, [0, 1, 2]);
}

#[test]
fn saturated_steps_give_finite_losses_and_gradients() {
    let device = Device::flex().autodiff();
    let s = schema(&[("click", "binary"), ("cart", "binary"), ("purchase", "binary")]);
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let mut m = EsmmChainConfig::new(MlpSpec::new([8]), &["click", "cart", "purchase"])
        .init(&s, enc.layout(), &device)
        .unwrap();
    constant_tower(&mut m.towers[0].mlp, 200.0, &device);
    constant_tower(&mut m.towers[1].mlp, 200.0, &device);
    constant_tower(&mut m.towers[2].mlp, -200.0, &device);
    let rows = three_step_rows();
    let d = data(&rows);
    let batch = d.batch(&(0..rows.len()).collect::<Vec<_>>(), enc.layout(), &device);
    let f = m.forward(&batch);
    let losses: Vec<f64> = f.losses.iter().map(|l| l.clone().into_scalar::<f64>()).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    // purchase: 4 of 24 rows bought with log P3 ≈ −200
    assert!((losses[2] - 200.0 * 4.0 / 24.0).abs() < 0.5, "{losses:?}");
    let grads = f.total_loss(&[]).backward();
    let g = m.towers[2]
        .mlp
        .output
        .as_ref()
        .unwrap()
        .bias
        .as_ref()
        .unwrap()
        .grad(&grads)
        .unwrap();
    let g: Vec<f32> = g.into_data().try_to_vec().unwrap();
    assert!(g.iter().all(|x| x.is_finite()) && g[0] != 0.0, "{g:?}");
}

#[test]
fn config_errors_name_the_key() {
    let s = schema(&[("click", "binary"), ("cart", "binary"), ("dwell", "regression")]);
    let err = |c: EsmmChainConfig| match c.plan(&s) {
        Err(ModelError::Invalid { key, message }) => format!("{key}: {message}"),
        other => panic!("{other:?}"),
    };
    let one = EsmmChainConfig::new(MlpSpec::new([4]), &["click"]);
    assert!(err(one).contains("model.tasks: 1 steps given; an ESMM chain needs 2 to 16 steps"));
    let regression = EsmmChainConfig::new(MlpSpec::new([4]), &["click", "dwell"]);
    assert!(err(regression).starts_with("model.tasks[1].label"));
    let plan = EsmmChainConfig::new(MlpSpec::new([4]), &["click", "cart"])
        .plan(&s)
        .unwrap();
    assert_eq!(plan.label_rules.len(), 1);
    assert_eq!((plan.label_rules[0].label, plan.label_rules[0].requires), (1, 0));
    let mut bad_tower = EsmmChainConfig::new(MlpSpec::new([4]), &["click", "cart"]);
    bad_tower.tasks[1].tower = Some(TowerSpec::mlp([4]).with_kind(TowerKind::Mlp, Some(2)));
    assert!(err(bad_tower).starts_with("model.tasks[1].tower.cross_layers"));
}

#[test]
fn params_count_every_tower() {
    let device = Device::flex();
    let s = schema(&[("click", "binary"), ("cart", "binary"), ("purchase", "binary")]);
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    let m = EsmmChainConfig::new(
        MlpSpec::new([8]).with_batch_norm(false),
        &["click", "cart", "purchase"],
    )
    .init(&s, enc.layout(), &device)
    .unwrap();
    // input 2 fields × 4 + 1 dense = 9; tower 9·8 + 8 + 8 + 1 = 89; embeddings (20 + 30) × 4
    assert_eq!(m.num_params(), 3 * 89 + 200);
}

/// Label priors: step 1 starts at its rate, each later step at its conditional rate
/// (mean(label k) / mean(label k−1)) with its output weights at zero, so that P_k starts at
/// label k's rate on every row; a step whose previous rate is 0 keeps its random start.
#[test]
fn label_priors_start_every_step_at_its_conditional_rate() {
    let s = schema(&[("click", "binary"), ("cart", "binary"), ("buy", "binary")]);
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    // the trainer's device: the primed biases are parameters that learn
    let device = Device::flex().autodiff();
    device.seed(4);
    let config = EsmmChainConfig::new(MlpSpec::new([8, 4]), &["click", "cart", "buy"]);
    let chain = config.init(&s, enc.layout(), &device).unwrap();
    let rates = [0.2, 0.05, 0.01];
    let primed = chain.clone().with_label_priors(&rates);
    let bias = |t: &mtl_layers::Tower| v(t.mlp.output.as_ref().unwrap().bias.as_ref().unwrap().val())[0];
    let logit = |p: f64| (p / (1.0 - p)).ln();
    for (k, want) in [logit(0.2), logit(0.25), logit(0.2)].iter().enumerate() {
        let got = f64::from(bias(&primed.towers[k]));
        assert!((got - want).abs() < 1e-6, "step {k}: {got} vs {want}");
    }
    let batch = data(&three_step_rows()).batch(&(0..24).collect::<Vec<_>>(), enc.layout(), &device);
    let p = primed.forward_predictions(&batch);
    for (k, rate) in [(1, 0.25f32), (2, 0.2)] {
        assert!(
            v(p.conditional[k].clone())
                .iter()
                .all(|x| (x - rate).abs() < 1e-6),
            "step {k}"
        );
    }
    // the first step keeps its random output weights: P_1 varies by row
    let first = v(p.joint[0].clone());
    assert!(first.iter().any(|x| (x - first[0]).abs() > 1e-4), "{first:?}");
    // no row reaches step 1: steps 2 and 3 have no conditional rate and keep their start
    let unprimed = chain.clone().with_label_priors(&[0.0, 0.0, 0.0]);
    for k in 1..3 {
        assert_eq!(bias(&unprimed.towers[k]), bias(&chain.towers[k]), "step {k}");
    }
}
