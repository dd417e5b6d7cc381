use std::io::Write;

use mtl_features::{Schema, StateFitter};

use super::*;

const SCHEMA: &str = r#"
[[sparse]]
name = "user"
vocab_size = 5
[[sparse]]
name = "city"
fit = true
[[sequence]]
name = "hist"
max_len = 2
hash_buckets = 11
[[dense]]
name = "price"
standardize = true
[[labels]]
name = "click"
kind = "binary"
"#;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

fn setup(csv: &str) -> (tempfile::TempDir, PathBuf, ValidSchema) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "d.csv", csv);
    let schema = Schema::from_toml_str(SCHEMA, "s.toml").unwrap();
    (dir, path, schema)
}

const GOOD: &str =
    "click,user,city,hist,price,extra\n1,0,paris,a|b|c,1.0,x\n0,4,rome,,3.0,y\n1,2,paris,b,2.0,z\n";

#[test]
fn reads_and_encodes_good_rows() {
    let (_d, path, schema) = setup(GOOD);
    let state = fit_state(std::slice::from_ref(&path), &schema, BadRowPolicy::Fail).unwrap();
    let enc = Encoder::new(&schema, &state);
    let (data, report, ids) = read_encoded(&path, &enc, BadRowPolicy::Fail, true, Some("extra")).unwrap();
    assert_eq!(report.rows, 3);
    assert_eq!(ids, vec!["x", "y", "z"]);
    assert_eq!(data.rows, 3);
    // user ids as given, city fitted in order of appearance (paris=1, rome=2)
    assert_eq!(data.sparse, vec![0, 1, 4, 2, 2, 1]);
    // hist truncated to max_len 2 and padded
    assert_eq!(data.seq_len, vec![2, 0, 1]);
    assert_eq!(data.sequence[2..4], [0, 0]);
    // price standardised: mean 2, population std sqrt(2/3)
    let std = (2.0f32 / 3.0).sqrt();
    assert!((data.dense[0] + 1.0 / std).abs() < 1e-5);
    assert_eq!(data.labels, vec![1.0, 0.0, 1.0]);
}

#[test]
fn errors_name_file_line_and_column() {
    let cases = [
        (
            "click,user,city,hist,price\n1,0,a,,1\n0,9,a,,1\n",
            3,
            "user",
            "outside the vocabulary",
        ),
        (
            "click,user,city,hist,price\n1,0,a,,1\n1,1,a,,1\n0,1,a,,abc\n",
            4,
            "price",
            "not a number",
        ),
        (
            "click,user,city,hist,price\n1,0,a,,NaN\n",
            2,
            "price",
            "missing value (an empty cell, or NaN in a dense field) and no default",
        ),
        (
            "click,user,city,hist,price\n1,0,a,,-inf\n",
            2,
            "price",
            "not finite",
        ),
        ("click,user,city,hist,price\n2,0,a,,1\n", 2, "click", "not 0 or 1"),
        (
            "click,user,city,hist,price\n1,0,a,,1\n1,0,a\n",
            3,
            "<row>",
            "3 columns",
        ),
        (
            "click,user,city,hist,price\n1,-1,a,,1\n",
            2,
            "user",
            "not a non-negative integer",
        ),
    ];
    for (csv, line, column, what) in cases {
        let (_d, path, schema) = setup(csv);
        let state = StateFitter::new(&schema).finish();
        let enc = Encoder::new(&schema, &state);
        let err = read_encoded(&path, &enc, BadRowPolicy::Fail, true, None).unwrap_err();
        let msg = err.to_string();
        match &err {
            DataError::BadRow {
                line: l,
                column: c,
                file,
                ..
            } => {
                assert_eq!((*l, c.as_str()), (line, column), "{msg}");
                assert!(file.ends_with("d.csv"));
            }
            other => panic!("expected a bad row, got {other}"),
        }
        assert!(msg.contains(what), "{msg}");
        assert!(msg.contains(&format!("d.csv:{line}")), "{msg}");
    }
}

#[test]
fn skip_policy_counts_and_keeps_good_rows() {
    let csv = "click,user,city,hist,price\n1,0,a,,1\n0,9,a,,1\n1,1,a,,x\n0,2,b,,2\n1,3\n";
    let (_d, path, schema) = setup(csv);
    let state = fit_state(std::slice::from_ref(&path), &schema, BadRowPolicy::Skip).unwrap();
    let enc = Encoder::new(&schema, &state);
    let (data, report, _) = read_encoded(&path, &enc, BadRowPolicy::Skip, true, None).unwrap();
    assert_eq!(data.rows, 2);
    assert_eq!(report.rows, 2);
    assert_eq!(report.skipped, 3);
    assert_eq!(data.sparse, vec![0, 1, 2, 2]);
    assert!(report.examples[0].contains(":3:"), "{:?}", report.examples);
    assert!(report.to_string().contains("3 skipped"));
}

#[test]
fn missing_column_and_missing_file_are_named() {
    let (_d, path, schema) = setup("click,user,hist,price\n1,0,,1\n");
    let err = fit_state(&[path], &schema, BadRowPolicy::Fail)
        .unwrap_err()
        .to_string();
    assert!(err.contains("d.csv") && err.contains("`city`"), "{err}");
    let err = fit_state(
        &[PathBuf::from("/nonexistent/x.csv")],
        &schema,
        BadRowPolicy::Fail,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent/x.csv"), "{err}");
}

#[test]
fn nothing_to_fit_leaves_the_rows_to_the_encoding_pass() {
    let dir = tempfile::tempdir().unwrap();
    // the third line has an id outside the vocabulary
    let path = write(&dir, "d.csv", "click,user\n1,3\n0,9\n");
    let schema = Schema::from_toml_str(
        "[[sparse]]\nname = \"user\"\nvocab_size = 5\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n",
        "s",
    )
    .unwrap();
    assert!(!StateFitter::new(&schema).needs_rows());
    let state = fit_state(std::slice::from_ref(&path), &schema, BadRowPolicy::Fail).unwrap();
    assert_eq!(state, StateFitter::new(&schema).finish());
    let enc = Encoder::new(&schema, &state);
    let err = read_encoded(&path, &enc, BadRowPolicy::Fail, true, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("d.csv:3") && err.contains("user"), "{err}");
    // the header is still checked before any row is read
    let bad = write(&dir, "e.csv", "click,usr\n1,3\n");
    let err = fit_state(&[bad], &schema, BadRowPolicy::Fail)
        .unwrap_err()
        .to_string();
    assert!(err.contains("e.csv") && err.contains("`user`"), "{err}");
    // with a field to fit, the rows are read
    assert!(StateFitter::new(&Schema::from_toml_str(SCHEMA, "s").unwrap()).needs_rows());
}

#[test]
fn labels_are_optional_for_prediction() {
    let (_d, path, schema) = setup("user,city,hist,price\n1,a,,1\n");
    let state = StateFitter::new(&schema).finish();
    let enc = Encoder::new(&schema, &state);
    assert!(read_encoded(&path, &enc, BadRowPolicy::Fail, true, None).is_err());
    let (data, _, _) = read_encoded(&path, &enc, BadRowPolicy::Fail, false, None).unwrap();
    assert_eq!(data.rows, 1);
    assert_eq!(data.labels, vec![0.0]);
}

#[test]
fn ali_ccp_sample_loads_with_shipped_config() {
    // at run time: a test binary reused through a shared target directory was compiled in
    // another clone, whose path `env!` would name
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(
            || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            std::path::PathBuf::from,
        )
        .join("../..");
    let data = root.join("data/samples/ali-ccp/ali_ccp_train_sample.csv");
    let schema = Schema::from_file(root.join("configs/ali-ccp-schema.toml")).unwrap();
    let state = fit_state(std::slice::from_ref(&data), &schema, BadRowPolicy::Fail).unwrap();
    let enc = Encoder::new(&schema, &state);
    let (d, report, _) = read_encoded(&data, &enc, BadRowPolicy::Fail, true, None).unwrap();
    assert_eq!(report.rows, 100);
    assert_eq!((d.n_sparse, d.n_dense, d.n_labels), (23, 8, 2));
    // the sample has 7 clicks and 1 purchase (README of the sample)
    assert_eq!(d.label_column(0).iter().sum::<f32>(), 7.0);
    assert_eq!(d.label_column(1).iter().sum::<f32>(), 1.0);
}

#[test]
fn line_numbers_are_right_for_lf_crlf_and_cr_files() {
    // the bad value (user 9, vocabulary 5) sits on line 4 of each file
    let rows = [
        "click,user,city,hist,price",
        "1,0,a,,1.0",
        "0,1,b,,2.0",
        "1,9,c,,3.0",
        "0,2,d,,4.0",
    ];
    for end in ["\n", "\r\n", "\r"] {
        let (_d, path, schema) = setup(&(rows.join(end) + end));
        let state = fit_state(std::slice::from_ref(&path), &schema, BadRowPolicy::Fail).unwrap();
        let enc = Encoder::new(&schema, &state);
        let err = read_encoded(&path, &enc, BadRowPolicy::Fail, true, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("d.csv:4: column `user`"), "{end:?}: {err}");
        // skipped rows keep the lines of the rows that are kept
        let (_, report, tags) = read_tagged(&path, &enc, BadRowPolicy::Skip, true, None, true).unwrap();
        assert_eq!(report.skipped, 1);
        assert_eq!(tags.lines, vec![2, 3, 5], "{end:?}");
    }
}

#[test]
fn integer_ids_written_as_floats_are_the_same_ids() {
    let csv = "click,user,city,hist,price\n1,3,7,7,1.0\n0,3.0,7.0,7.0|7,2.0\n1, 3 ,007,x,3.0\n";
    let (_d, path, schema) = setup(csv);
    let state = fit_state(std::slice::from_ref(&path), &schema, BadRowPolicy::Fail).unwrap();
    let enc = Encoder::new(&schema, &state);
    let (data, _, _) = read_encoded(&path, &enc, BadRowPolicy::Fail, true, None).unwrap();
    // declared (user), fitted (city) and hashed (hist) ids: `3.0` is `3`, `7.0` is `7`
    assert_eq!(data.sparse[0..2], data.sparse[2..4], "row 2 encodes as row 1");
    assert_eq!(data.sequence[0], data.sequence[2]);
    assert_eq!(data.sequence[2], data.sequence[3]);
    // `007` is not `7` for a fitted field: only a zero fraction is dropped
    assert_ne!(data.sparse[5], data.sparse[1]);
    assert_eq!(state.vocabularies[1].as_ref().unwrap(), &["7", "007"]);
}

#[test]
fn values_beyond_f32_are_errors_not_infinities() {
    let (_d, path, schema) = setup("click,user,city,hist,price\n1,0,a,,1.0\n0,1,b,,1e40\n");
    let err = fit_state(std::slice::from_ref(&path), &schema, BadRowPolicy::Fail)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("d.csv:3: column `price`") && err.contains("32-bit float"),
        "{err}"
    );
}

#[test]
fn label_rules_name_the_row_that_breaks_them() {
    let schema = Schema::from_toml_str(
        "[[sparse]]\nname = \"u\"\nvocab_size = 3\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n\
         [[labels]]\nname = \"buy\"\nkind = \"binary\"\n",
        "s.toml",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "d.csv", "click,buy,u\n1,1,0\n0,0,1\n0,1,2\n");
    let rules = vec![mtl_features::LabelRule {
        label: 1,
        requires: 0,
        needed_by: "the test".into(),
    }];
    let enc = Encoder::new(&schema, &StateFitter::new(&schema).finish()).with_label_rules(rules);
    let err = read_encoded(&path, &enc, BadRowPolicy::Fail, true, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("d.csv:4: column `buy`: `buy` is 1 on a row where `click` is 0"),
        "{err}"
    );
    let (data, report, _) = read_encoded(&path, &enc, BadRowPolicy::Skip, true, None).unwrap();
    assert_eq!((data.rows, report.skipped), (2, 1));
    // without labels (prediction) there is nothing to check
    let enc = Encoder::new(&schema, &StateFitter::new(&schema).finish());
    assert_eq!(
        read_encoded(&path, &enc, BadRowPolicy::Fail, true, None)
            .unwrap()
            .0
            .rows,
        3
    );
}

#[test]
fn header_problems_are_named() {
    let (_d, path, schema) = setup("");
    let err = fit_state(std::slice::from_ref(&path), &schema, BadRowPolicy::Fail)
        .unwrap_err()
        .to_string();
    assert!(err.ends_with("d.csv: the file is empty (no header row)"), "{err}");
    let (_d, path, schema) = setup("click,user,city,hist,price,user\n1,0,a,,1.0,0\n");
    let err = fit_state(std::slice::from_ref(&path), &schema, BadRowPolicy::Fail)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("column `user` appears twice in the header (columns 2 and 6)"),
        "{err}"
    );
    let (_d, path, schema) = setup("click,usr,city,hist,price\n1,0,a,,1.0\n");
    let err = fit_state(std::slice::from_ref(&path), &schema, BadRowPolicy::Fail)
        .unwrap_err()
        .to_string();
    assert!(err.contains("did you mean `usr`?"), "{err}");
    assert!(
        err.contains("the header has 5 columns: click,usr,city,hist,price"),
        "{err}"
    );
}

/// [`GOOD`] as a Parquet file: a boolean label, integer ids, a dictionary-encoded string
/// column, a list column for the sequence, floats (with `price` null on the row of `nulls`),
/// the text column `extra`, and a date column no schema reads.
fn good_parquet(
    dir: &tempfile::TempDir,
    name: &str,
    compression: ::parquet::basic::Compression,
    null_price_row: Option<usize>,
) -> PathBuf {
    use std::sync::Arc;

    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::types::Int32Type;
    use arrow_array::{
        ArrayRef, BooleanArray, Date32Array, DictionaryArray, Float64Array, Int64Array, RecordBatch,
        StringArray,
    };
    let mut hist = ListBuilder::new(StringBuilder::new());
    for items in [vec!["a", "b", "c"], vec![], vec!["b"]] {
        for item in items {
            hist.values().append_value(item);
        }
        hist.append(true);
    }
    let price: Vec<Option<f64>> = [1.0, 3.0, 2.0]
        .iter()
        .enumerate()
        .map(|(i, v)| (Some(i) != null_price_row).then_some(*v))
        .collect();
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("click", Arc::new(BooleanArray::from(vec![true, false, true]))),
        ("user", Arc::new(Int64Array::from(vec![0, 4, 2]))),
        (
            "city",
            Arc::new(
                ["paris", "rome", "paris"]
                    .into_iter()
                    .collect::<DictionaryArray<Int32Type>>(),
            ),
        ),
        ("hist", Arc::new(hist.finish())),
        ("price", Arc::new(Float64Array::from(price))),
        ("extra", Arc::new(StringArray::from(vec!["x", "y", "z"]))),
        ("when", Arc::new(Date32Array::from(vec![1, 2, 3]))),
    ];
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let path = dir.path().join(name);
    let props = ::parquet::file::properties::WriterProperties::builder()
        .set_compression(compression)
        .build();
    let mut writer = ::parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    path
}

#[test]
fn parquet_rows_encode_as_the_same_csv_rows_do() {
    use ::parquet::basic::{Compression, ZstdLevel};
    let (dir, csv_path, schema) = setup(GOOD);
    let state = fit_state(std::slice::from_ref(&csv_path), &schema, BadRowPolicy::Fail).unwrap();
    let enc = Encoder::new(&schema, &state);
    let (want, _, want_ids) = read_encoded(&csv_path, &enc, BadRowPolicy::Fail, true, Some("extra")).unwrap();
    for (name, compression) in [
        ("snappy.parquet", Compression::SNAPPY),
        ("zstd.parquet", Compression::ZSTD(ZstdLevel::default())),
        // no extension: recognised by its magic bytes
        ("plain", Compression::UNCOMPRESSED),
    ] {
        let path = good_parquet(&dir, name, compression, None);
        assert!(parquet::is_parquet(&path), "{name}");
        assert_eq!(
            read_header(&path).unwrap(),
            ["click", "user", "city", "hist", "price", "extra", "when"]
        );
        // the fitted state (city's vocabulary, price's statistics) is the CSV's
        let fitted = fit_state(std::slice::from_ref(&path), &schema, BadRowPolicy::Fail).unwrap();
        assert_eq!(
            serde_json::to_string(&fitted).unwrap(),
            serde_json::to_string(&state).unwrap(),
            "{name}"
        );
        let (got, report, ids) = read_encoded(&path, &enc, BadRowPolicy::Fail, true, Some("extra")).unwrap();
        assert_eq!(report.rows, 3, "{name}");
        assert_eq!(ids, want_ids, "{name}");
        assert_eq!(got.sparse, want.sparse, "{name}");
        assert_eq!(got.sequence, want.sequence, "{name}");
        assert_eq!(got.seq_len, want.seq_len, "{name}");
        assert_eq!(got.dense, want.dense, "{name}");
        assert_eq!(got.labels, want.labels, "{name}");
    }
}

#[test]
fn parquet_errors_name_the_file_the_row_and_the_column() {
    use ::parquet::basic::Compression;
    let (dir, csv_path, schema) = setup(GOOD);
    let state = fit_state(std::slice::from_ref(&csv_path), &schema, BadRowPolicy::Fail).unwrap();
    let enc = Encoder::new(&schema, &state);
    // a null where the schema has no default: the second data row, column price
    let path = good_parquet(&dir, "nulls.parquet", Compression::SNAPPY, Some(1));
    let err = read_encoded(&path, &enc, BadRowPolicy::Fail, true, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nulls.parquet:2: column `price`"), "{err}");
    // skipping counts the row and keeps the others
    let (data, report, _) = read_encoded(&path, &enc, BadRowPolicy::Skip, true, None).unwrap();
    assert_eq!((data.rows, report.skipped), (2, 1));
    // a column the schema reads but the file lacks, with the file's columns listed
    let other =
        Schema::from_toml_str(&SCHEMA.replace("name = \"city\"", "name = \"town\""), "s.toml").unwrap();
    let err = match Source::open(&path, &other, true) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("the file has no `town`"),
    };
    assert!(
        err.contains("nulls.parquet") && err.contains("`town`") && err.contains("city"),
        "{err}"
    );
    // a column of a type that is not read, when the schema asks for it
    let dated =
        Schema::from_toml_str(&SCHEMA.replace("name = \"city\"", "name = \"when\""), "s.toml").unwrap();
    let err = fit_state(std::slice::from_ref(&path), &dated, BadRowPolicy::Fail)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nulls.parquet:1: column `when`") && err.contains("Date32"),
        "{err}"
    );
    // a list column read by a field that takes one value per row: refused, naming the field
    for (name, field) in [
        ("city", "sparse[1] `city`"),
        ("price", "dense[0] `price`"),
        ("click", "labels[0] `click`"),
    ] {
        let from = format!("name = \"{name}\"");
        let text = SCHEMA.replacen(&from, &format!("{from}\ncolumn = \"hist\""), 1);
        let listed = Schema::from_toml_str(&text, "s.toml").unwrap();
        let err = match Source::open(&path, &listed, true) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{field} reads a list column"),
        };
        assert!(
            err.contains("nulls.parquet") && err.contains("column `hist` holds lists (list<Utf8>)"),
            "{err}"
        );
        assert!(err.contains(field) && err.contains("[[sequence]]"), "{err}");
    }
    // a file that is not Parquet although named so
    let fake = write(&dir, "fake.parquet", "click,user\n1,2\n");
    let err = match Source::open(&fake, &schema, true) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("not a Parquet file"),
    };
    assert!(err.contains("fake.parquet"), "{err}");
}

#[test]
fn codecs_parse_by_name() {
    use crate::parquet::Codec;
    assert_eq!("snappy".parse::<Codec>(), Ok(Codec::Snappy));
    assert_eq!("zstd".parse::<Codec>(), Ok(Codec::Zstd));
    assert_eq!("none".parse::<Codec>(), Ok(Codec::None));
    assert_eq!(
        "lz4".parse::<Codec>(),
        Err("expected snappy, zstd or none".to_string())
    );
}

#[test]
fn schema_infer_reads_a_parquet_list_column_as_a_sequence() {
    use crate::infer::{Guess, InferOptions, infer_columns, schema_toml};
    let dir = tempfile::tempdir().unwrap();
    let path = good_parquet(&dir, "t.parquet", ::parquet::basic::Compression::SNAPPY, Some(1));
    let (stats, rows) = infer_columns(&[path.as_path()], InferOptions::default()).unwrap();
    assert_eq!(rows, 3);
    let hist = stats.iter().find(|s| s.name == "hist").unwrap();
    // rows a|b|c, (empty), b: 3 distinct items, at most 3 per row, one empty row
    assert_eq!(
        hist.guess,
        Guess::Sequence {
            buckets: None,
            max_len: 3
        }
    );
    assert_eq!((hist.distinct, hist.filled, hist.empty), (3, 2, 1));
    // the other columns are counted as from CSV: the price null is an empty cell
    let price = stats.iter().find(|s| s.name == "price").unwrap();
    assert_eq!((price.filled, price.empty, price.list), (2, 1, false));
    let text = schema_toml(&[path.as_path()], &stats, rows);
    assert!(
        text.contains("[[sequence]]  # lists of up to 3 items, 3 distinct, 1 empty\nname = \"hist\"\nmax_len = 3\nfit = true\n"),
        "{text}"
    );
    // a column of a type that is not read is left out, saying why
    assert!(
        text.contains("# not used: \"when\" (Parquet type Date32, which mtl does not read)"),
        "{text}"
    );
    // what it writes is a schema the encoder takes, reading the file's list column
    let schema = Schema::from_toml_str(&text, "inferred.toml").unwrap();
    let state = fit_state(std::slice::from_ref(&path), &schema, BadRowPolicy::Fail).unwrap();
    let enc = Encoder::new(&schema, &state);
    let (data, _, _) = read_encoded(&path, &enc, BadRowPolicy::Fail, true, None).unwrap();
    assert_eq!(data.rows, 3);
}

#[test]
fn rows_read_into_memory_grow_fallibly() {
    let (_d, path, schema) = setup(GOOD);
    let state = fit_state(std::slice::from_ref(&path), &schema, BadRowPolicy::Fail).unwrap();
    let enc = Encoder::new(&schema, &state);
    let (data, _, _) = read_encoded(&path, &enc, BadRowPolicy::Fail, true, None).unwrap();
    // the reader reserved 1024 rows ahead: rows fit without reallocating, then none do
    let first = data.clone();
    let mut grown = data;
    let spare = grown.spare_rows();
    assert_eq!(spare, 1024 - grown.rows);
    let capacity = grown.sparse.capacity();
    for _ in 0..spare {
        let one = &first;
        grown.sparse.extend_from_slice(&one.sparse[..one.n_sparse]);
        grown.sequence.extend_from_slice(&one.sequence[..one.seq_width()]);
        grown
            .seq_len
            .extend_from_slice(&one.seq_len[..one.seq_max_len.len()]);
        grown.dense.extend_from_slice(&one.dense[..one.n_dense]);
        grown.labels.extend_from_slice(&one.labels[..one.n_labels]);
        grown.rows += 1;
    }
    assert_eq!(grown.sparse.capacity(), capacity);
    assert_eq!(grown.spare_rows(), 0);
    // rows beyond any memory: an error to report, not an abort
    let data = first;
    let mut huge = data.clone();
    assert!(huge.try_reserve_rows(usize::MAX / 2).is_err());
    assert!(huge.try_append(&data).is_ok());
    assert_eq!(huge.rows, 2 * data.rows);
    let message = memory_error("t.csv", &huge, 1 << 40).to_string();
    assert!(
        message.contains("t.csv: not enough memory for the encoded rows")
            && message.contains(&format!("{} rows", huge.rows))
            && message.contains("streaming = true"),
        "{message}"
    );
}

#[test]
fn skipped_rows_are_passed_over_and_the_rest_read_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::from_toml_str(
        "[[sparse]]\nname = \"r\"\nvocab_size = 12\n[[labels]]\nname = \"y\"\nkind = \"regression\"\n",
        "s.toml",
    )
    .unwrap();
    let enc = Encoder::new(&schema, &StateFitter::new(&schema).finish());
    let mut text = String::from("r,y\n");
    for r in 0..10 {
        text += &format!("{r},{r}\n");
    }
    let csv = write(&dir, "t.csv", &text);
    let pq = dir.path().join("t.parquet");
    parquet::csv_to_parquet(&csv, &pq, parquet::Codec::Snappy, 3, None, 100).unwrap();
    // row 5 of another file is bad: under `skip` it is not a row, so the skipped count passes it
    let bad = write(&dir, "bad.csv", &text.replace("5,5\n", "5,x\n"));
    let rest = |path: &Path, k: usize, policy: BadRowPolicy| -> (usize, Vec<f32>) {
        let mut source = Source::open(path, &schema, true).unwrap();
        let passed = source.skip_rows(k, &enc, policy).unwrap();
        let mut out = empty_encoded(&schema);
        let mut report = ReadReport::default();
        source
            .read_chunk(&enc, policy, usize::MAX, &mut out, &mut report, None)
            .unwrap();
        (passed, out.labels)
    };
    for k in 0..=11 {
        let want: Vec<f32> = (k.min(10)..10).map(|r| r as f32).collect();
        for path in [&csv, &pq] {
            assert_eq!(
                rest(path, k, BadRowPolicy::Fail),
                (k.min(10), want.clone()),
                "{path:?} {k}"
            );
        }
        let good: Vec<f32> = (0..10).filter(|&r| r != 5).map(|r| r as f32).collect();
        let skipped = rest(&bad, k, BadRowPolicy::Skip);
        assert_eq!(skipped, (k.min(9), good[k.min(9)..].to_vec()), "skip policy, {k}");
    }
    // rows after a Parquet skip keep their numbers in errors: row 8 of the file
    let bad_pq = dir.path().join("bad.parquet");
    let csv8 = write(&dir, "t8.csv", &text.replace("7,7\n", "700,7\n"));
    parquet::csv_to_parquet(&csv8, &bad_pq, parquet::Codec::Snappy, 3, None, 100).unwrap();
    let mut source = Source::open(&bad_pq, &schema, true).unwrap();
    assert_eq!(source.skip_rows(4, &enc, BadRowPolicy::Fail).unwrap(), 4);
    let mut out = empty_encoded(&schema);
    let err = source
        .read_chunk(
            &enc,
            BadRowPolicy::Fail,
            usize::MAX,
            &mut out,
            &mut ReadReport::default(),
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.parquet:8: column `r`"), "{err}");
}

#[test]
fn derived_labels_are_computed_from_their_columns() {
    let dir = tempfile::tempdir().unwrap();
    let text = "u,marital-status,income,views,rate\n\
                1,Married-civ-spouse,>50K,4,0.25\n\
                2,Never-married,>50K,2,0.5\n\
                0,Married-civ-spouse,<=50K,8,0.125\n";
    let path = write(&dir, "census.csv", text);
    let schema_text = |married: &str| {
        format!(
            "[[sparse]]\nname = \"u\"\nvocab_size = 3\n\
             [[labels]]\nname = \"married\"\nkind = \"binary\"\nexpr = '{married}'\n\
             [[labels]]\nname = \"rich_married\"\nkind = \"binary\"\nexpr = '{married} and income == \">50K\"'\n\
             [[labels]]\nname = \"reach\"\nkind = \"regression\"\nexpr = 'views * rate'\n"
        )
    };
    let schema = Schema::from_toml_str(
        &schema_text("`marital-status` == \"Married-civ-spouse\""),
        "s.toml",
    )
    .unwrap();
    let enc = Encoder::new(&schema, &StateFitter::new(&schema).finish());
    let (data, _, _) = read_encoded(&path, &enc, BadRowPolicy::Fail, true, None).unwrap();
    // by hand: married 1, 0, 1; and rich 1, 0, 0; views × rate 1, 1, 1
    assert_eq!(data.labels, [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]);
    // predicting needs no label input: the derived labels' columns may be absent
    let bare = write(&dir, "bare.csv", "u\n1\n2\n");
    let (data, _, _) = read_encoded(&bare, &enc, BadRowPolicy::Fail, false, None).unwrap();
    assert_eq!(data.rows, 2);
    // a missing input column names the label and its expression; an empty cell, the row
    let err = read_encoded(&bare, &enc, BadRowPolicy::Fail, true, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("marital-status") && err.contains("labels[0] `married`"),
        "{err}"
    );
    let gap = write(
        &dir,
        "gap.csv",
        &text.replace("2,Never-married,>50K,2,0.5", "2,Never-married,>50K,,0.5"),
    );
    let err = read_encoded(&gap, &enc, BadRowPolicy::Fail, true, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gap.csv:3")
            && err.contains("label `reach` = \"views * rate\": column `views` is empty"),
        "{err}"
    );
    // a binary label whose expression is not 0/1 is refused on the row; a bad expression, in the schema
    let bad = Schema::from_toml_str(&schema_text("views"), "s.toml").unwrap();
    let enc = Encoder::new(&bad, &StateFitter::new(&bad).finish());
    let err = read_encoded(&path, &enc, BadRowPolicy::Fail, true, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("census.csv:2") && err.contains("not 0 or 1"),
        "{err}"
    );
    let err = Schema::from_toml_str(&schema_text("income =="), "s.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("labels[0].expr") && err.contains("ends too soon"),
        "{err}"
    );
    let both = "[[sparse]]\nname = \"u\"\nvocab_size = 3\n[[labels]]\nname = \"y\"\nkind = \"binary\"\ncolumn = \"u\"\nexpr = \"u == 1\"\n";
    let err = Schema::from_toml_str(both, "s.toml").unwrap_err().to_string();
    assert!(err.contains("both `column` and `expr`"), "{err}");
}

#[test]
fn parquet_decimals_read_as_their_exact_numbers() {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Decimal128Array, Int64Array, RecordBatch};
    let dir = tempfile::tempdir().unwrap();
    // 12.50, 3.00, -0.05 and an id column stored as DECIMAL(10, 0)
    let price = Decimal128Array::from(vec![1250, 300, -5])
        .with_precision_and_scale(10, 2)
        .unwrap();
    let ids = Decimal128Array::from(vec![2, 0, 1])
        .with_precision_and_scale(10, 0)
        .unwrap();
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("click", Arc::new(Int64Array::from(vec![1, 0, 1]))),
        ("user", Arc::new(ids)),
        ("price", Arc::new(price)),
    ];
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let path = dir.path().join("d.parquet");
    let mut writer =
        ::parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None)
            .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let schema = Schema::from_toml_str(
        "[[sparse]]\nname = \"user\"\nvocab_size = 3\n[[dense]]\nname = \"price\"\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n",
        "s.toml",
    )
    .unwrap();
    let enc = Encoder::new(&schema, &StateFitter::new(&schema).finish());
    let (data, _, _) = read_encoded(&path, &enc, BadRowPolicy::Fail, true, None).unwrap();
    assert_eq!(data.dense, [12.5, 3.0, -0.05]);
    assert_eq!(data.sparse, [2, 0, 1]);
}

#[test]
fn hive_partition_folders_give_their_columns() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Schema::from_toml_str(
        "[[sparse]]\nname = \"user\"\nvocab_size = 5\n[[sparse]]\nname = \"date\"\nfit = true\n\
         [[sparse]]\nname = \"country\"\nfit = true\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n",
        "s.toml",
    )
    .unwrap();
    // DuckDB's PARTITION_BY layout: the files lack `date` and `country`
    let mut files = Vec::new();
    for (date, country, rows) in [("2024-01-01", "FR", "1,0\n2,1\n"), ("2024-01-02", "DE", "3,1\n")] {
        let folder = dir.path().join(format!("events/date={date}/country={country}"));
        std::fs::create_dir_all(&folder).unwrap();
        let csv = folder.join("part-0.csv");
        std::fs::write(&csv, format!("user,click\n{rows}")).unwrap();
        let pq = folder.join("part-1.parquet");
        parquet::csv_to_parquet(&csv, &pq, parquet::Codec::Snappy, 10, None, 100).unwrap();
        files.extend([csv, pq]);
    }
    assert_eq!(
        read_header(&files[1]).unwrap(),
        ["user", "click", "date", "country"]
    );
    assert_eq!(
        partitions(&files[0]),
        [
            ("date".into(), "2024-01-01".into()),
            ("country".into(), "FR".into())
        ]
    );
    let state = fit_state(&files, &schema, BadRowPolicy::Fail).unwrap();
    let enc = Encoder::new(&schema, &state);
    // each file's rows carry their folder's values: date and country ids 1 (first fitted) or 2
    for (k, path) in files.iter().enumerate() {
        let (data, _, _) = read_encoded(path, &enc, BadRowPolicy::Fail, true, None).unwrap();
        let id = if k < 2 { 1 } else { 2 };
        let rows: Vec<&[u32]> = data.sparse.chunks(3).collect();
        assert!(
            rows.iter().all(|r| r[1] == id && r[2] == id),
            "{path:?}: {:?}",
            data.sparse
        );
    }
    // schema inference sees them too
    let (stats, _) =
        crate::infer::infer_columns(&[files[0].as_path(), files[2].as_path()], Default::default()).unwrap();
    let country = stats.iter().find(|s| s.name == "country").unwrap();
    assert_eq!((country.distinct, country.filled), (2, 3));
    // a file that has the column keeps its own values
    let own = dir.path().join("events/date=2024-01-01/country=FR/own.csv");
    std::fs::write(&own, "user,click,country\n1,0,IT\n").unwrap();
    assert_eq!(read_header(&own).unwrap(), ["user", "click", "country", "date"]);
}

#[test]
fn arrow_batches_in_memory_read_as_the_same_parquet_rows_do() {
    let (dir, csv_path, schema) = setup(GOOD);
    let state = fit_state(std::slice::from_ref(&csv_path), &schema, BadRowPolicy::Fail).unwrap();
    let enc = Encoder::new(&schema, &state);
    let (want, _, want_tags) =
        read_tagged(&csv_path, &enc, BadRowPolicy::Fail, true, Some("extra"), false).unwrap();
    // the Parquet file's table, handed over as two batches (rows 0 and 1–2)
    let path = good_parquet(&dir, "t.parquet", ::parquet::basic::Compression::SNAPPY, None);
    let reader = ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&path).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let arrow = arrow_array::RecordBatchReader::schema(&reader);
    let table: Vec<arrow_array::RecordBatch> = reader.map(Result::unwrap).collect();
    let batches = vec![table[0].slice(0, 1), table[0].slice(1, 2)];
    let input = Input::Arrow {
        name: "<DataFrame>".into(),
        schema: arrow.clone(),
        batches,
    };
    let tag = Some(("extra", "id_column"));
    let (got, report, tags) = read_input(&input, &enc, BadRowPolicy::Fail, true, tag, false).unwrap();
    assert_eq!((report.rows, report.file.as_str()), (3, "<DataFrame>"));
    assert_eq!(tags.ids, want_tags.ids);
    assert_eq!(got.sparse, want.sparse);
    assert_eq!(got.sequence, want.sequence);
    assert_eq!(got.seq_len, want.seq_len);
    assert_eq!(got.dense, want.dense);
    assert_eq!(got.labels, want.labels);
    // without the label column: predictions need none, evaluation names it
    let no_click = Input::Arrow {
        name: "<DataFrame>".into(),
        schema: std::sync::Arc::new(arrow.project(&[1, 2, 3, 4]).unwrap()),
        batches: vec![table[0].project(&[1, 2, 3, 4]).unwrap()],
    };
    let (unlabelled, _, _) = read_input(&no_click, &enc, BadRowPolicy::Fail, false, None, false).unwrap();
    assert_eq!(unlabelled.sparse, want.sparse);
    let err = read_input(&no_click, &enc, BadRowPolicy::Fail, true, None, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("<DataFrame>") && err.contains("click"), "{err}");
    // a column of a type that is not read is named with the field that reads it
    let columns = [0, 1, 2, 3, 6];
    let fields: Vec<arrow_schema::Field> = columns
        .iter()
        .map(|&i| arrow.field(i).clone())
        .map(|f| {
            if f.name() == "when" {
                f.with_name("price")
            } else {
                f
            }
        })
        .collect();
    let dated = std::sync::Arc::new(arrow_schema::Schema::new(fields));
    let cells = columns.iter().map(|&i| table[0].column(i).clone()).collect();
    let bad = Input::Arrow {
        name: "<DataFrame>".into(),
        schema: dated.clone(),
        batches: vec![arrow_array::RecordBatch::try_new(dated, cells).unwrap()],
    };
    let err = read_input(&bad, &enc, BadRowPolicy::Fail, true, None, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("<DataFrame>") && err.contains("price") && err.contains("Date32"),
        "{err}"
    );
}
