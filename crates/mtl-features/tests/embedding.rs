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

/// [`SCHEMA`] with `u` (and so `u2`, which shares its table) 4 wide and `i` (and `h`) 2 wide,
/// and the schema's default 6: the table is gcd(4, 2) = 2 wide, `u` owns two rows per id.
fn mixed_schema() -> ValidSchema {
    let text = SCHEMA
        .replace("embed_dim = 2", "embed_dim = 6")
        .replace(
            "name = \"u\"\nvocab_size = 2",
            "name = \"u\"\nvocab_size = 2\nembed_dim = 4",
        )
        .replace(
            "name = \"i\"\nvocab_size = 3",
            "name = \"i\"\nvocab_size = 3\nembed_dim = 2",
        );
    Schema::from_toml_str(&text, "mixed.toml").unwrap()
}

/// The mixed layer, table row r holding [r, 10·r]: u block rows 0..4 (two per id), i block
/// rows 4..7.
fn mixed_layer(pooling: FieldPooling, device: &Device) -> (Encoder, InputLayer) {
    let schema = mixed_schema();
    assert_eq!(schema.dims, [4, 2, 4, 2]);
    assert_eq!(schema.table_width(), 2);
    let enc = Encoder::new(&schema, &StateFitter::new(&schema).finish());
    assert_eq!(enc.layout().offset, [0, 4, 0, 4]);
    assert_eq!(enc.layout().total_rows, 7);
    let spec = InputSpec::new(&schema, &pooling).unwrap();
    let mut layer = InputLayer::new(spec, enc.layout(), 0.1, device);
    let w: Vec<f32> = (0..7).flat_map(|r| [r as f32, 10.0 * r as f32]).collect();
    layer.embedding.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, [7, 2]), device));
    (enc, layer)
}

#[test]
fn fields_of_different_widths_read_their_consecutive_rows() {
    let device = Device::flex();
    let (enc, layer) = mixed_layer(FieldPooling::Concat, &device);
    // u 4 + i 2 + u2 4 + h 2 + x 1
    assert_eq!(layer.output_dim(), 13);
    let out = values(layer.forward(&data().batch(&[0, 1], enc.layout(), &device)));
    // row 0: u=1 → rows 2, 3; i=2 → row 6; u2=0 → rows 0, 1; h = mean of i's 0, 1 → rows 4, 5
    let row0 = [
        2.0, 20.0, 3.0, 30.0, 6.0, 60.0, 0.0, 0.0, 1.0, 10.0, 4.5, 45.0, 0.5,
    ];
    // row 1: u=0 → rows 0, 1; i=0 → row 4; u2=1 → rows 2, 3; h empty → 0
    let row1 = [
        0.0, 0.0, 1.0, 10.0, 4.0, 40.0, 2.0, 20.0, 3.0, 30.0, 0.0, 0.0, -1.0,
    ];
    assert_eq!(out, [row0, row1].concat());
}

#[test]
fn mixed_widths_sum_within_a_group_of_one_width_and_refuse_two() {
    let device = Device::flex();
    let (enc, layer) = mixed_layer(
        FieldPooling::SumByGroup(vec!["user".into(), "item".into()]),
        &device,
    );
    assert_eq!(layer.output_dim(), 4 + 2 + 1);
    let out = values(layer.forward(&data().batch(&[0], enc.layout(), &device)));
    // user: u=1 (2, 20, 3, 30) + u2=0 (0, 0, 1, 10); item: i=2 (6, 60) + h mean (4.5, 45)
    assert_eq!(out, [2.0, 20.0, 4.0, 40.0, 10.5, 105.0, 0.5]);
    // a group whose fields differ in width cannot be summed
    let text = SCHEMA.replace(
        "name = \"u\"\nvocab_size = 2",
        "name = \"u\"\nvocab_size = 2\nembed_dim = 4",
    );
    let schema = Schema::from_toml_str(&text, "g.toml").unwrap();
    let groups = FieldPooling::SumByGroup(vec!["user".into(), "item".into()]);
    assert!(
        InputSpec::new(&schema, &groups).is_ok(),
        "user is all 4 wide, item all 2"
    );
    let text = text.replace(
        "name = \"u2\"\nshared_with = \"u\"\ngroup = \"user\"",
        "name = \"u2\"\nvocab_size = 2\ngroup = \"user\"",
    );
    let schema = Schema::from_toml_str(&text, "g.toml").unwrap();
    let err = InputSpec::new(&schema, &groups).unwrap_err().to_string();
    assert!(
        err.contains("\"user\"") && err.contains("embed_dim") && err.contains("`u2` 2"),
        "{err}"
    );
    // a field sharing a table cannot ask for another width than its owner's rows have
    let text = SCHEMA.replace("shared_with = \"u\"\n", "shared_with = \"u\"\nembed_dim = 4\n");
    let err = Schema::from_toml_str(&text, "s.toml").unwrap_err().to_string();
    assert!(
        err.contains("sparse[2].embed_dim") && err.contains("`u`"),
        "{err}"
    );
}

#[test]
fn gathered_rows_give_the_same_mixed_input_as_the_table() {
    let device = Device::flex();
    let (enc, layer) = mixed_layer(FieldPooling::Concat, &device);
    let d = data();
    let full = layer.forward(&d.batch(&[0, 1], enc.layout(), &device));
    let (batch, unique) = d.batch_unique(&[0, 1], enc.layout(), &device);
    // each id's rows consecutive, in first-seen order: u=1 → 2, 3; i=2 → 6; u2=0 → 0, 1; then
    // row 1's i=0 → 4; sequence ids 0, 1 of i → 4 (seen), 5
    assert_eq!(unique, vec![2, 3, 6, 0, 1, 4, 5]);
    let n = unique.len();
    let idx = Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(unique, [n]), &device);
    let mut gathered = layer.clone();
    let rows = layer.embedding.weight.val().select(0, idx);
    gathered.embedding.weight = burn::module::Param::initialized(layer.embedding.weight.id, rows);
    assert_eq!(values(gathered.forward(&batch)), values(full));
}
