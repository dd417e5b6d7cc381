//! DBMTL: the relation chain against its equations (task 2's relation reads task 1's), the
//! parameter count by formula, config errors, label priors.

use burn::tensor::{Device, Tensor};
use mtl_features::{Encoder, StateFitter};
use mtl_layers::{ModelBuilder, MultiTaskModel, trainable_params};
use mtl_mmoe::{Dbmtl, DbmtlConfig};

mod common;

use common::{data, schema};

fn config(extra: &str) -> DbmtlConfig {
    toml::from_str(&format!(
        "tower = {{ dims = [6, 5] }}\nrelation = {{ dims = [3] }}\ntasks = [{{ label = \"click\" }}, {{ label = \"dwell\" }}]\n{extra}"
    ))
    .unwrap()
}

fn build(c: &DbmtlConfig, device: &Device) -> (Dbmtl, Encoder) {
    let s = schema();
    let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
    (c.init(&s, enc.layout(), device).unwrap(), enc)
}

fn v<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn task_twos_relation_reads_its_own_mlp_and_task_ones_relation() {
    let device = Device::flex();
    device.seed(7);
    let (m, enc) = build(&config("bottom = { dims = [8] }"), &device);
    let batch = data(9).batch(&(0..9).collect::<Vec<_>>(), enc.layout(), &device);
    let (relations, logits) = m.forward_relations(&batch);
    // by hand from the parts: h = bottom(x), z_t = mlp_t(h), r_1 = rel_1(z_1), r_2 = rel_2([z_2, r_1])
    let h = m.bottom.as_ref().unwrap().forward(m.input.forward(&batch));
    let z: Vec<Tensor<2>> = m.towers.iter().map(|t| t.forward(h.clone())).collect();
    let r1 = m.relations[0].forward(z[0].clone());
    let r2 = m.relations[1].forward(Tensor::cat(vec![z[1].clone(), r1.clone()], 1));
    assert_eq!(v(relations[0].clone()), v(r1.clone()));
    assert_eq!(v(relations[1].clone()), v(r2.clone()));
    assert_eq!(v(logits[1].clone()), v(m.heads[1].forward(r2).reshape([9])));
    // rel_2's first layer takes z_2 (5) and r_1 (3); rel_1's z_1 alone
    assert_eq!(m.relations[0].blocks[0].linear.weight.dims(), [5, 3]);
    assert_eq!(m.relations[1].blocks[0].linear.weight.dims(), [8, 3]);
    // task 1's relation moves task 2's output; task 2's leaves task 1's alone
    let zeroed = |mlp: &mtl_layers::Mlp| {
        let mut mlp = mlp.clone();
        let linear = &mut mlp.blocks[0].linear;
        linear.weight = linear.weight.clone().map(|w| w.zeros_like());
        mlp
    };
    let mut cut_one = m.clone();
    cut_one.relations[0] = zeroed(&m.relations[0]);
    let (_, after) = cut_one.forward_relations(&batch);
    assert_ne!(v(after[1].clone()), v(logits[1].clone()));
    let mut cut_two = m.clone();
    cut_two.relations[1] = zeroed(&m.relations[1]);
    let (_, after) = cut_two.forward_relations(&batch);
    assert_eq!(v(after[0].clone()), v(logits[0].clone()));
    assert_ne!(v(after[1].clone()), v(logits[1].clone()));
    // predictions: a probability for the click, the value for the dwell
    let p = m.predict(&batch);
    assert!(v(p[0].clone()).iter().all(|x| *x > 0.0 && *x < 1.0));
    assert_eq!(v(p[1].clone()), v(logits[1].clone()));
}

#[test]
fn the_parameter_count_is_the_formulas() {
    // input 2 · 4 + 1 = 9; an MLP layer of width d over w: w·d + d (Linear) + 2d (BatchNorm)
    let layer = |w: usize, d: usize| w * d + d + 2 * d;
    let embeddings = (20 + 30) * 4;
    let bottom = layer(9, 8);
    let tower = layer(8, 6) + layer(6, 5);
    let relations = layer(5, 3) + layer(5 + 3, 3);
    let heads = 2 * (3 + 1);
    let (m, _) = build(&config("bottom = { dims = [8] }"), &Device::flex());
    assert_eq!(
        trainable_params(&m),
        embeddings + bottom + 2 * tower + relations + heads
    );
    // without a bottom the task MLPs read the input
    let (m, _) = build(&config(""), &Device::flex());
    let tower = layer(9, 6) + layer(6, 5);
    assert_eq!(trainable_params(&m), embeddings + 2 * tower + relations + heads);
}

#[test]
fn config_errors_name_the_key() {
    let s = schema();
    let err = |c: DbmtlConfig| c.plan(&s).unwrap_err().to_string();
    let mut c = config("");
    c.tasks[1].tower = Some(mtl_layers::MlpSpec::new([4]).into());
    let e = err(c);
    assert!(e.contains("model.tasks[1].tower"), "{e}");
    let e = err(toml::from_str(
        "tower = { dims = [4] }\nrelation = { dims = [0] }\ntasks = [{ label = \"click\" }]",
    )
    .unwrap());
    assert!(e.contains("model.relation.dims[0]"), "{e}");
    let e = err(toml::from_str(
        "tower = { dims = [4] }\nrelation = { dims = [2] }\ntasks = [{ label = \"buy\" }]",
    )
    .unwrap());
    assert!(e.contains("model.tasks[0].label") && e.contains("buy"), "{e}");
    let e = toml::from_str::<DbmtlConfig>("tower = { dims = [4] }\nrelations = { dims = [2] }\ntasks = []")
        .unwrap_err()
        .to_string();
    assert!(e.contains("relations"), "{e}");
}

#[test]
fn label_priors_start_every_head_at_its_labels_base_rate() {
    let (m, _) = build(&config(""), &Device::flex().autodiff());
    let weights: Vec<Vec<f32>> = m.heads.iter().map(|h| v(h.weight.val())).collect();
    let m = m.with_label_priors(&[0.2, 3.5]);
    let bias = |k: usize| f64::from(v(m.heads[k].bias.as_ref().unwrap().val())[0]);
    assert!((bias(0) - (0.2f64 / 0.8).ln()).abs() < 1e-6, "{}", bias(0));
    assert!((bias(1) - 3.5).abs() < 1e-6, "{}", bias(1));
    let after: Vec<Vec<f32>> = m.heads.iter().map(|h| v(h.weight.val())).collect();
    assert_eq!(after, weights);
}
