//! Property tests of the CSV → encoder path: random rows built from awkward cells, and random
//! bytes after a header, must never panic. Every outcome is either encoded rows whose ids fit
//! the table and whose values are finite, or an error naming the file (and, for a row, a line
//! that exists in the file).

use std::path::Path;

use mtl_data::{BadRowPolicy, DataError, fit_state, read_encoded};
use mtl_features::{Encoder, Schema, ValidSchema};
use proptest::prelude::*;

const SCHEMA: &str = r#"
[[sparse]]
name = "u"
vocab_size = 10
[[sparse]]
name = "i"
fit = true
[[sparse]]
name = "h"
hash_buckets = 7
[[sequence]]
name = "s"
max_len = 3
vocab_size = 5
[[dense]]
name = "x"
standardize = true
[[dense]]
name = "y"
default = 0.5
[[labels]]
name = "click"
kind = "binary"
[[labels]]
name = "dwell"
kind = "regression"
"#;

const HEADER: &str = "click,dwell,u,i,h,s,x,y";

fn schema() -> ValidSchema {
    Schema::from_toml_str(SCHEMA, "fuzz.toml").unwrap()
}

/// Cells that have broken readers before: numbers in every spelling, empties, quotes,
/// separators, non-ASCII, huge values.
fn cell() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..12).prop_map(|n| n.to_string()),
        (-3i64..3).prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "",
            " ",
            "0",
            "1",
            "3.0",
            "3.",
            "-2.00",
            " 4 ",
            "1e40",
            "-1e39",
            "1e-50",
            "NaN",
            "inf",
            "-inf",
            "abc",
            "é",
            "\"a,b\"",
            "\"\"",
            "1|2|3",
            "1||4",
            "9|9",
            "99999999999999999999",
            "0x10",
            "+5",
            "2",
            "0.5",
        ])
        .prop_map(str::to_string),
    ]
}

/// A CSV text: the header, then rows of 0–10 cells, with `\n` or `\r\n` line ends.
fn csv_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::collection::vec(cell(), 0..10), 0..25),
        any::<bool>(),
    )
        .prop_map(|(rows, crlf)| {
            let end = if crlf { "\r\n" } else { "\n" };
            let mut text = String::from(HEADER) + end;
            for row in rows {
                text += &row.join(",");
                text += end;
            }
            text
        })
}

/// Checks one file under both policies; `lines` is the number of lines in the file.
fn check(path: &Path, lines: u64) -> Result<(), TestCaseError> {
    let schema = schema();
    for policy in [BadRowPolicy::Fail, BadRowPolicy::Skip] {
        let state = match fit_state(&[path.to_path_buf()], &schema, policy) {
            Ok(state) => state,
            Err(e) => {
                check_error(&e, path, lines)?;
                continue;
            }
        };
        let encoder = Encoder::new(&schema, &state);
        match read_encoded(path, &encoder, policy, true, None) {
            Ok((data, report, _)) => {
                prop_assert!(data.rows as u64 <= lines);
                prop_assert_eq!(report.rows, data.rows as u64);
                let layout = encoder.layout();
                for (k, id) in data.sparse.iter().enumerate() {
                    prop_assert!((*id as usize) < layout.rows[k % data.n_sparse]);
                }
                prop_assert!(data.dense.iter().all(|v| v.is_finite()));
                prop_assert!(data.labels.iter().all(|v| v.is_finite()));
            }
            Err(e) => check_error(&e, path, lines)?,
        }
    }
    Ok(())
}

fn check_error(e: &DataError, path: &Path, lines: u64) -> Result<(), TestCaseError> {
    let message = e.to_string();
    let file = path.display().to_string();
    prop_assert!(message.starts_with(&file), "{message}");
    if let DataError::BadRow { line, .. } = e {
        prop_assert!(
            *line >= 2 && *line <= lines.max(2),
            "line {line} of {lines}: {message}"
        );
        prop_assert!(message.starts_with(&format!("{file}:{line}: ")), "{message}");
    }
    prop_assert!(message.len() < 600, "an overlong message: {message}");
    Ok(())
}

/// Lines as an editor counts them (`\n`, or `\r` alone in a file without `\n`).
fn line_count(bytes: &[u8]) -> u64 {
    let newlines = bytes.iter().filter(|b| **b == b'\n').count() as u64;
    let returns = bytes.iter().filter(|b| **b == b'\r').count() as u64;
    newlines.max(returns) + 1
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_rows_encode_or_fail_with_file_and_line(text in csv_text()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.csv");
        std::fs::write(&path, &text).unwrap();
        check(&path, line_count(text.as_bytes()))?;
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), header in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bytes.csv");
        let mut content = if header { format!("{HEADER}\n").into_bytes() } else { Vec::new() };
        content.extend(&bytes);
        std::fs::write(&path, &content).unwrap();
        check(&path, line_count(&content))?;
    }
}
