//! What the MMOE-family tests share: a schema of two id fields and one dense field under a
//! binary and a regression label, and rows of it.

use mtl_features::{EncodedData, Schema, ValidSchema};

/// Fields `u` (20 ids), `i` (30 ids), `x` (dense); labels `click` (binary), `dwell`
/// (regression); embed 4.
pub fn schema() -> ValidSchema {
    Schema::from_toml_str(
        r#"
embed_dim = 4
embed_init_std = 0.5
[[sparse]]
name = "u"
vocab_size = 20
[[sparse]]
name = "i"
vocab_size = 30
[[dense]]
name = "x"
[[labels]]
name = "click"
kind = "binary"
[[labels]]
name = "dwell"
kind = "regression"
"#,
        "t.toml",
    )
    .unwrap()
}

/// `rows` rows of [`schema`]: ids cycling through both vocabularies, `x = sin(0.37 r)`,
/// click `r mod 2`, dwell `r / 10`.
pub fn data(rows: usize) -> EncodedData {
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
        labels: (0..rows)
            .flat_map(|r| [(r % 2) as f32, r as f32 / 10.0])
            .collect(),
    }
}
