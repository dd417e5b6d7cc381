//! Embedding lookup, sequence pooling and field pooling against values worked out by hand.

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use mtl_features::{
    EncodedData, Encoder, FieldPooling, InputLayer, InputSpec, Schema, StateFitter, ValidSchema,
};

const SCHEMA: &str = r#"
embed_dim = 2
[[sparse]]
name = "u"
vocab_size = 2
group = "user"
[[sparse]]
name = "i"
vocab_size = 3
group = "item"
[[sparse]]
name = "u2"
shared_with = "u"
group = "user"
[[sequence]]
name = "h"
max_len = 3
pooling = "mean"
shared_with = "i"
group = "item"
[[dense]]
name = "x"
[[labels]]
name = "y"
kind = "binary"
"#;

/// Table rows: u block = rows 0..2, i block = rows 2..5. Row r holds [r, 10·r].
fn layer(pooling: FieldPooling, device: &Device) -> (ValidSchema, Encoder, InputLayer) {
    let schema = Schema::from_toml_str(SCHEMA, "t.toml").unwrap();
    let enc = Encoder::new(&schema, &StateFitter::new(&schema).finish());
    let spec = InputSpec::new(&schema, &pooling).unwrap();
    let mut layer = InputLayer::new(spec, enc.layout(), 0.1, device);
    let rows = enc.layout().total_rows;
    assert_eq!(rows, 5);
    let w: Vec<f32> = (0..rows).flat_map(|r| [r as f32, 10.0 * r as f32]).collect();
    layer.embedding.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, [rows, 2]), device));
    (schema, enc, layer)
}

fn data() -> EncodedData {
    // two rows: (u=1, i=2, u2=0, h=[0,1] of 3, x=0.5) and (u=0, i=0, u2=1, h=[], x=-1)
    EncodedData {
        rows: 2,
        n_sparse: 3,
        seq_max_len: vec![3],
        n_dense: 1,
        n_labels: 1,
        sparse: vec![1, 2, 0, 0, 0, 1],
        sequence: vec![0, 1, 0, 0, 0, 0],
        seq_len: vec![2, 0],
        dense: vec![0.5, -1.0],
        labels: vec![1.0, 0.0],
    }
}

fn values(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn lookup_and_concat_pooling_match_hand_values() {
    let device = Device::flex();
    let (_, enc, layer) = layer(FieldPooling::Concat, &device);
    let batch = data().batch(&[0, 1], enc.layout(), &device);
    let fields = layer.fields(&batch).unwrap();
    assert_eq!(fields.dims(), [2, 4, 2]);
    let out = layer.forward(&batch);
    assert_eq!(out.dims(), [2, 4 * 2 + 1]);
    assert_eq!(layer.output_dim(), 9);
    // row 0: u=1 → table row 1; i=2 → row 2+2=4; u2=0 → row 0; h mean of i-rows 2,3 → [2.5, 25]
    // row 1: u=0 → 0; i=0 → 2; u2=1 → 1; h empty → [0, 0]
    let expected = [
        1.0, 10.0, 4.0, 40.0, 0.0, 0.0, 2.5, 25.0, 0.5, //
        0.0, 0.0, 2.0, 20.0, 1.0, 10.0, 0.0, 0.0, -1.0,
    ];
    assert_eq!(values(out), expected);
}

#[test]
fn group_sum_pooling_matches_hand_values() {
    let device = Device::flex();
    let (_, enc, layer) = layer(
        FieldPooling::SumByGroup(vec!["user".into(), "item".into()]),
        &device,
    );
    let batch = data().batch(&[1, 0], enc.layout(), &device);
    let out = layer.forward(&batch);
    assert_eq!(out.dims(), [2, 2 * 2 + 1]);
    // batch row 0 is data row 1: user = u(0)+u2(1) = [1, 10]; item = i(row 2) + h(0) = [2, 20]
    // batch row 1 is data row 0: user = row1 + row0 = [1, 10]; item = row4 + [2.5, 25] = [6.5, 65]
    let expected = [1.0, 10.0, 2.0, 20.0, -1.0, 1.0, 10.0, 6.5, 65.0, 0.5];
    assert_eq!(values(out), expected);
}

#[test]
fn sum_sequence_pooling_and_unknown_group() {
    let device = Device::flex();
    let text = SCHEMA.replace("pooling = \"mean\"", "pooling = \"sum\"");
    let schema = Schema::from_toml_str(&text, "t.toml").unwrap();
    let enc = Encoder::new(&schema, &StateFitter::new(&schema).finish());
    let spec = InputSpec::new(&schema, &FieldPooling::Concat).unwrap();
    let mut layer = InputLayer::new(spec, enc.layout(), 0.1, &device);
    let w: Vec<f32> = (0..5).flat_map(|r| [r as f32, 10.0 * r as f32]).collect();
    layer.embedding.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, [5, 2]), &device));
    let fields = layer.fields(&data().batch(&[0], enc.layout(), &device)).unwrap();
    let v = fields.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(&v[6..8], &[5.0, 50.0], "sum of rows 2 and 3");
    let err = InputSpec::new(&schema, &FieldPooling::SumByGroup(vec!["ctx".into()])).unwrap_err();
    assert!(err.to_string().contains("ctx"), "{err}");
}

#[test]
fn gathered_rows_give_the_same_input_as_the_table() {
    let device = Device::flex();
    for pooling in [
        FieldPooling::Concat,
        FieldPooling::SumByGroup(vec!["user".into(), "item".into()]),
    ] {
        let (_, enc, layer) = layer(pooling, &device);
        let d = data();
        let full = layer.forward(&d.batch(&[0, 1], enc.layout(), &device));
        let (batch, unique) = d.batch_unique(&[0, 1], enc.layout(), &device);
        // distinct table rows in first-seen order: u=1 → 1, i=2 → 4, u2=0 → 0, then row 1's
        // i=0 → 2; sequence ids 0, 1 of i → 2, 3; padding id 0 of i → 2 (already seen)
        assert_eq!(unique, vec![1, 4, 0, 2, 3]);
        let idx = Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(unique, [5]), &device);
        // the layer with the gathered rows in the table's place, as row-sparse training has it
        let mut gathered = layer.clone();
        let rows = layer.embedding.weight.val().select(0, idx);
        gathered.embedding.weight = burn::module::Param::initialized(layer.embedding.weight.id, rows);
        assert_eq!(values(gathered.forward(&batch)), values(full));
    }
}
