//! DIN's target attention: the unit on a two-id history with hand-set weights, the input layer's
//! wiring (query from the target field, keys from the history, padding masked) on one-width and
//! mixed-width schemas, and the schema's checks.

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use mtl_features::attention::TargetAttention;
use mtl_features::{EncodedData, Encoder, FieldPooling, InputLayer, InputSpec, Schema, StateFitter};

fn t2(v: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// The score `0.5·q₁ + k₂ + (q₁k₁ − q₂k₂) + 0.1`: weights on `[q, k, q − k, q ⊙ k]` of
/// `[0.5, 0, 0, 1, 0, 0, 1, −1]`, bias 0.1, no hidden layer.
fn unit(softmax: bool, device: &Device) -> TargetAttention {
    let mut unit = TargetAttention::new(2, &[], softmax, device);
    unit.output.weight =
        Param::from_tensor(t2(vec![0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, -1.0], [8, 1], device));
    unit.output.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(vec![0.1f32], [1]),
        device,
    )));
    unit
}

fn score(q: [f32; 2], k: [f32; 2]) -> f32 {
    0.5 * q[0] + k[1] + (q[0] * k[0] - q[1] * k[1]) + 0.1
}

fn close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
}

#[test]
fn a_two_id_history_pools_as_worked_out_by_hand() {
    let device = Device::flex();
    // q = (1, 2); k₁ = (1, 0) scores 0.5 + 0 + 1 + 0.1 = 1.6; k₂ = (0, 1) scores 0.5 + 1 − 2 + 0.1 = −0.4
    assert_eq!(
        (score([1.0, 2.0], [1.0, 0.0]), score([1.0, 2.0], [0.0, 1.0])),
        (1.6, -0.4)
    );
    let query = t2(vec![1.0, 2.0, 1.0, 2.0], [2, 2], &device);
    // row 0 holds both ids, row 1 only the first (the second is padding, zero)
    let keys = Tensor::<3>::from_data(
        TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0], [2, 2, 2]),
        &device,
    );
    let mask = t2(vec![1.0, 1.0, 1.0, 0.0], [2, 2], &device);
    // DIN: raw weights, padding's weight 0 although its score is 0.5 + 0.1
    let din = unit(false, &device);
    close(
        &values(din.weights(query.clone(), keys.clone(), mask.clone())),
        &[1.6, -0.4, 1.6, 0.0],
    );
    close(
        &values(din.forward(query.clone(), keys.clone(), mask.clone())),
        &[1.6, -0.4, 1.6, 0.0],
    );
    // softmax: e^1.6 / (e^1.6 + e^−0.4) = 1 / (1 + e^−2) = 0.880797; the one present id takes all
    let soft = unit(true, &device);
    let w = 1.0 / (1.0 + (-2.0f32).exp());
    close(
        &values(soft.weights(query.clone(), keys.clone(), mask.clone())),
        &[w, 1.0 - w, 1.0, 0.0],
    );
    close(&values(soft.forward(query, keys, mask)), &[w, 1.0 - w, 1.0, 0.0]);
}

const SCHEMA: &str = r#"
embed_dim = 2
[[sparse]]
name = "i"
vocab_size = 3
[[sequence]]
name = "h"
max_len = 3
shared_with = "i"
pooling = { attention = "target", query = ["i"], dims = [] }
[[labels]]
name = "y"
kind = "binary"
"#;

/// Two rows: (i = 2, h = [0, 1]) and (i = 0, h = [1]); with `wide`, a 4-wide field `u` first.
fn data(wide: bool) -> EncodedData {
    let (n_sparse, sparse) = if wide {
        (2, vec![1, 2, 0, 0])
    } else {
        (1, vec![2, 0])
    };
    EncodedData {
        rows: 2,
        n_sparse,
        seq_max_len: vec![3],
        n_dense: 0,
        n_labels: 1,
        sparse,
        sequence: vec![0, 1, 0, 1, 0, 0],
        seq_len: vec![2, 1],
        dense: vec![],
        labels: vec![1.0, 0.0],
    }
}

/// The input layer of `text` with `i`'s rows (i = 0, 1, 2) set to (1, 0), (0, 1), (1, 2) and the
/// unit of [`unit`]; `u`'s rows (if any) all 0.5.
fn input_layer(text: &str, device: &Device) -> (Encoder, InputLayer) {
    let schema = Schema::from_toml_str(text, "t.toml").unwrap();
    let enc = Encoder::new(&schema, &StateFitter::new(&schema).finish());
    let mut layer = InputLayer::new(
        InputSpec::new(&schema, &FieldPooling::Concat).unwrap(),
        enc.layout(),
        0.1,
        device,
    );
    let rows = enc.layout().total_rows;
    let mut w = vec![0.5f32; rows * 2];
    w[rows * 2 - 6..].copy_from_slice(&[1.0, 0.0, 0.0, 1.0, 1.0, 2.0]);
    layer.embedding.weight = Param::from_tensor(t2(w, [rows, 2], device));
    layer.attention[0] = unit(false, device);
    (enc, layer)
}

#[test]
fn the_input_layer_queries_the_history_with_the_target_item() {
    let device = Device::flex();
    // row 0: q = i(2) = (1, 2); h = [(1, 0), (0, 1)] → 1.6·(1, 0) − 0.4·(0, 1)
    // row 1: q = i(0) = (1, 0); h = [(0, 1)] → score 0.5 + 1 + 0 + 0.1 = 1.6 → (0, 1.6)
    assert_eq!(score([1.0, 0.0], [0.0, 1.0]), 1.6);
    let want = [1.0, 2.0, 1.6, -0.4, 1.0, 0.0, 0.0, 1.6];
    let (enc, layer) = input_layer(SCHEMA, &device);
    let batch = data(false).batch(&[0, 1], enc.layout(), &device);
    close(&values(layer.forward(&batch)), &want);
    // fields of mixed widths (u is 4 wide) take the per-field path: the same pooled history
    let wide = SCHEMA.replace(
        "[[sparse]]\nname = \"i\"",
        "[[sparse]]\nname = \"u\"\nvocab_size = 2\nembed_dim = 4\n[[sparse]]\nname = \"i\"",
    );
    let (enc, layer) = input_layer(&wide, &device);
    assert!(!layer.spec.uniform());
    let batch = data(true).batch(&[0, 1], enc.layout(), &device);
    let out = values(layer.forward(&batch));
    close(&out[4..8], &want[..4]);
    close(&out[12..16], &want[4..]);
    // the attention's parameters are the layer's: 4 · 2 weights and a bias beside the table
    use burn::module::Module;
    let table = layer.embedding.weight.shape().num_elements();
    assert_eq!(layer.num_params(), table + 4 * 2 + 1);
}

#[test]
fn the_schema_checks_the_query() {
    let err = |text: String| Schema::from_toml_str(&text, "t.toml").unwrap_err().to_string();
    let e = err(SCHEMA.replace("query = [\"i\"]", "query = [\"item\"]"));
    assert!(
        e.contains("sequence[0].pooling.query[0]") && e.contains("item"),
        "{e}"
    );
    let e = err(SCHEMA.replace("query = [\"i\"]", "query = []"));
    assert!(e.contains("sequence[0].pooling.query"), "{e}");
    let e = err(SCHEMA
        .replace("vocab_size = 3", "vocab_size = 3\nembed_dim = 4")
        .replace("shared_with = \"i\"", "vocab_size = 3"));
    assert!(
        e.contains("query") && e.contains("4 wide") && e.contains("2 wide"),
        "{e}"
    );
    let e = err(SCHEMA.replace("attention = \"target\"", "attention = \"self\""));
    assert!(e.contains("self") && e.contains("target"), "{e}");
    let e = err(SCHEMA.replace(
        "pooling = { attention = \"target\", query = [\"i\"], dims = [] }",
        "pooling = \"max\"",
    ));
    assert!(
        e.contains("max") && e.contains("sum") && e.contains("attention"),
        "{e}"
    );
    let e = err(SCHEMA.replace("dims = []", "dims = [0]"));
    assert!(e.contains("sequence[0].pooling.dims[0]"), "{e}");
}

#[test]
fn the_blockwise_first_layer_is_the_mlp_over_the_joined_features() {
    // random unit with two hidden layers: its scores against the MLP run on [q, k, q − k, q ⊙ k]
    let device = Device::flex();
    device.seed(5);
    let unit = TargetAttention::new(3, &[6, 4], false, &device);
    let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
    let query = Tensor::<2>::random([5, 3], normal, &device);
    let keys = Tensor::<3>::random([5, 4, 3], normal, &device);
    let mask = Tensor::<2>::ones([5, 4], &device);
    let q = query.clone().reshape([5, 1, 3]).repeat_dim(1, 4);
    let joined = Tensor::cat(
        vec![
            q.clone(),
            keys.clone(),
            q.clone() - keys.clone(),
            q * keys.clone(),
        ],
        2,
    );
    let mut h = joined.reshape([20, 12]);
    for layer in &unit.hidden {
        h = burn::tensor::activation::relu(layer.forward(h));
    }
    let want = values(unit.output.forward(h).reshape([5, 4]));
    close(&values(unit.weights(query, keys, mask)), &want);
}
