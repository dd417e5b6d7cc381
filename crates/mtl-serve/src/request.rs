//! Scoring requests: JSON rows (or columns) of raw feature values, checked and encoded with
//! the model's saved feature state exactly as `mtl predict` encodes a CSV row.
//!
//! A request is `{"rows": [{"feature": value, …}, …]}` or `{"columns": {"feature": [value,
//! …], …}}`. A value is a string or a number, as the CSV cell would hold it (`null` is an
//! empty cell); a sequence field also takes an array of ids. Every feature of the model must
//! be given and nothing else; errors name the row and the field.

use std::borrow::Cow;
use std::collections::HashMap;

use mtl_data::encode_features;
use mtl_features::{EncodedData, Encoder, ValidSchema};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use thiserror::Error;

/// Why a request cannot be scored.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    /// Malformed, or not what the API takes (answered 400).
    #[error("{0}")]
    Bad(String),
    /// Over a configured limit (answered 413).
    #[error("{0}")]
    TooLarge(String),
}

/// How the request gave its rows, and so how the response gives the scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `rows`: one object per row; scores come back one array per row.
    Rows,
    /// `columns`: one array per feature; scores come back one array per output.
    Columns,
}

/// The features a request must carry, in the encoder's order.
#[derive(Debug, Clone)]
pub struct Features {
    /// Feature names: sparse fields, sequence fields, dense fields.
    pub names: Vec<String>,
    /// Per feature: the delimiter of a sequence field (`None` for a single value).
    delimiters: Vec<Option<String>>,
    index: HashMap<String, usize>,
    labels: Vec<String>,
}

impl Features {
    /// The features of `schema`.
    pub fn new(schema: &ValidSchema) -> Self {
        let s = &schema.schema;
        let mut names = Vec::new();
        let mut delimiters = Vec::new();
        for f in &s.sparse {
            names.push(f.name.clone());
            delimiters.push(None);
        }
        for f in &s.sequence {
            names.push(f.name.clone());
            delimiters.push(Some(f.delimiter.clone()));
        }
        for f in &s.dense {
            names.push(f.name.clone());
            delimiters.push(None);
        }
        let index = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        Self {
            names,
            delimiters,
            index,
            labels: schema.label_names(),
        }
    }

    /// The message for a key that is not a feature.
    fn unknown(&self, key: &str) -> String {
        if self.labels.iter().any(|l| l == key) {
            return format!("`{key}` is a label, not a feature: a scoring request carries features only");
        }
        let close = self
            .names
            .iter()
            .map(|n| (strsim::levenshtein(&key.to_lowercase(), &n.to_lowercase()), n))
            .filter(|(d, n)| *d <= 2.max(n.len() / 3))
            .min();
        match close {
            Some((_, n)) => format!("unknown field `{key}` (did you mean `{n}`?)"),
            None => format!("unknown field `{key}`: not a feature of this model"),
        }
    }
}

/// One JSON value of a request, read in one pass: strings are borrowed from the body where
/// they have no escapes, and an object is its pairs in order (no map is built).
#[derive(Debug)]
enum Cell<'de> {
    /// A string, or a number as its text.
    Text(Cow<'de, str>),
    /// `null`: an empty cell.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A list.
    List(Vec<Cell<'de>>),
    /// An object's pairs.
    Map(Vec<(Cow<'de, str>, Cell<'de>)>),
}

impl Cell<'_> {
    /// The value at `key` of an object (the last, if the key repeats).
    fn get(pairs: &[(Cow<'_, str>, Cell<'_>)], key: &str) -> Option<usize> {
        pairs.iter().rposition(|(k, _)| k == key)
    }
}

struct CellVisitor;

impl<'de> Visitor<'de> for CellVisitor {
    type Value = Cell<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cell<'de>, E> {
        Ok(Cell::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cell<'de>, E> {
        Ok(Cell::Text(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Cell<'de>, E> {
        Ok(Cell::Text(Cow::Owned(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Cell<'de>, E> {
        Ok(Cell::Text(Cow::Owned(v.to_string())))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Cell<'de>, E> {
        Ok(Cell::Text(Cow::Owned(v.to_string())))
    }
    // the shortest text that reads back as the same number (`3.0` reads as 3)
    fn visit_f64<E>(self, v: f64) -> Result<Cell<'de>, E> {
        Ok(Cell::Text(Cow::Owned(v.to_string())))
    }
    fn visit_unit<E>(self) -> Result<Cell<'de>, E> {
        Ok(Cell::Null)
    }
    fn visit_none<E>(self) -> Result<Cell<'de>, E> {
        Ok(Cell::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Cell<'de>, E> {
        Ok(Cell::Bool(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Cell<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(CellVisitor)? {
            items.push(item);
        }
        Ok(Cell::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Cell<'de>, A::Error> {
        let mut pairs = Vec::new();
        while let Some(key) = map.next_key_seed(CellVisitor)? {
            let Cell::Text(key) = key else {
                return Err(de::Error::custom("object keys are strings"));
            };
            pairs.push((key, map.next_value_seed(CellVisitor)?));
        }
        Ok(Cell::Map(pairs))
    }
}

impl<'de> DeserializeSeed<'de> for CellVisitor {
    type Value = Cell<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cell<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

/// The text a value stands for, as a CSV cell would hold it.
fn cell_text<'a>(value: &'a Cell<'_>, delimiter: Option<&str>) -> Result<Cow<'a, str>, String> {
    match value {
        Cell::Text(t) => Ok(Cow::Borrowed(t.as_ref())),
        Cell::Null => Ok(Cow::Borrowed("")),
        Cell::Bool(b) => Err(format!("expected a string or a number, got {b}")),
        Cell::Map(_) => Err("expected a value, got an object".into()),
        Cell::List(items) => {
            let Some(delimiter) = delimiter else {
                return Err("expected a single value, got an array".into());
            };
            let mut parts = Vec::with_capacity(items.len());
            for (k, item) in items.iter().enumerate() {
                let Cell::Text(text) = item else {
                    return Err(format!("item {k}: expected an id (a string or a number)"));
                };
                if text.contains(delimiter) {
                    return Err(format!(
                        "item {k} (`{text}`) contains the field's delimiter `{delimiter}`"
                    ));
                }
                parts.push(text.as_ref());
            }
            Ok(Cow::Owned(parts.join(delimiter)))
        }
    }
}

/// Parses and encodes a request body; `max_rows` bounds its rows.
pub fn parse(
    body: &[u8],
    features: &Features,
    encoder: &Encoder,
    max_rows: usize,
) -> Result<(Layout, EncodedData), RequestError> {
    let bad = |m: String| RequestError::Bad(m);
    let mut reader = serde_json::Deserializer::from_slice(body);
    let value = CellVisitor
        .deserialize(&mut reader)
        .and_then(|v| reader.end().map(|()| v))
        .map_err(|e| {
            bad(format!(
                "malformed JSON at line {}, column {}: {e}",
                e.line(),
                e.column()
            ))
        })?;
    let Cell::Map(top) = value else {
        return Err(bad("expected a JSON object with `rows` or `columns`".into()));
    };
    if let Some((key, _)) = top.iter().find(|(k, _)| k != "rows" && k != "columns") {
        return Err(bad(format!(
            "unknown key `{key}`: a request has `rows` or `columns`"
        )));
    }
    let rows = Cell::get(&top, "rows").map(|i| &top[i].1);
    let columns = Cell::get(&top, "columns").map(|i| &top[i].1);
    let out = mtl_data::empty_encoded(encoder.schema());
    match (rows, columns) {
        (Some(_), Some(_)) => Err(bad("give `rows` or `columns`, not both".into())),
        (None, None) => Err(bad(
            "expected `rows` (a list of objects) or `columns` (an object of lists)".into(),
        )),
        (Some(rows), None) => Ok((Layout::Rows, parse_rows(rows, features, encoder, max_rows, out)?)),
        (None, Some(columns)) => Ok((
            Layout::Columns,
            parse_columns(columns, features, encoder, max_rows, out)?,
        )),
    }
}

/// Encodes `rows`, a list of objects of feature values, onto `out`: every feature once per
/// row and nothing else.
fn parse_rows(
    rows: &Cell<'_>,
    features: &Features,
    encoder: &Encoder,
    max_rows: usize,
    mut out: EncodedData,
) -> Result<EncodedData, RequestError> {
    let bad = |m: String| RequestError::Bad(m);
    let n_features = features.names.len();
    // where a row's features are among its pairs: most clients send every row's keys in one
    // order, so the first row's order is tried before a search
    let mut hint: Vec<usize> = Vec::new();
    let mut find = |pairs: &[(Cow<'_, str>, Cell<'_>)], f: usize| -> Option<usize> {
        let name = features.names[f].as_str();
        if let Some(&i) = hint.get(f)
            && pairs.get(i).is_some_and(|(k, _)| k == name)
        {
            return Some(i);
        }
        let i = Cell::get(pairs, name)?;
        if hint.len() == f {
            hint.push(i);
        }
        Some(i)
    };
    let Cell::List(rows) = rows else {
        return Err(bad("`rows` must be a list of objects".into()));
    };
    check_count(rows.len(), max_rows)?;
    let mut cells = Vec::with_capacity(n_features);
    for (r, row) in rows.iter().enumerate() {
        let Cell::Map(pairs) = row else {
            return Err(bad(format!("rows[{r}]: expected an object of feature values")));
        };
        let unknown = || {
            let (key, _) = pairs
                .iter()
                .find(|(k, _)| !features.index.contains_key(k.as_ref()))?;
            Some(bad(format!("rows[{r}]: {}", features.unknown(key))))
        };
        // every feature once and nothing else has as many pairs as features (checked
        // in full only when the counts differ, or a feature is missing)
        if pairs.len() != n_features
            && let Some(e) = unknown()
        {
            return Err(e);
        }
        if pairs.len() > n_features {
            // no unknown key, more pairs than features: one is given twice
            let twice = pairs
                .iter()
                .enumerate()
                .find(|(i, (k, _))| pairs[..*i].iter().any(|(j, _)| j == k))
                .map_or("?", |(_, (k, _))| k.as_ref());
            return Err(bad(format!("rows[{r}]: feature `{twice}` given twice")));
        }
        cells.clear();
        for (f, name) in features.names.iter().enumerate() {
            let Some(i) = find(pairs, f) else {
                return Err(unknown().unwrap_or_else(|| bad(format!("rows[{r}]: missing feature `{name}`"))));
            };
            let text = cell_text(&pairs[i].1, features.delimiters[f].as_deref())
                .map_err(|m| bad(format!("rows[{r}].{name}: {m}")))?;
            cells.push(text);
        }
        encode_row(encoder, &cells, &mut out)
            .map_err(|(f, m)| bad(format!("rows[{r}].{}: {m}", features.names[f])))?;
    }
    Ok(out)
}

/// Encodes `columns`, an object of equally long lists, one per feature, onto `out`.
fn parse_columns(
    columns: &Cell<'_>,
    features: &Features,
    encoder: &Encoder,
    max_rows: usize,
    mut out: EncodedData,
) -> Result<EncodedData, RequestError> {
    let bad = |m: String| RequestError::Bad(m);
    let n_features = features.names.len();
    let Cell::Map(columns) = columns else {
        return Err(bad("`columns` must be an object of lists, one per feature".into()));
    };
    if let Some((key, _)) = columns
        .iter()
        .find(|(k, _)| !features.index.contains_key(k.as_ref()))
    {
        return Err(bad(format!("columns: {}", features.unknown(key))));
    }
    let mut lists = Vec::with_capacity(n_features);
    for name in &features.names {
        match Cell::get(columns, name).map(|i| &columns[i].1) {
            None => return Err(bad(format!("columns: missing feature `{name}`"))),
            Some(Cell::List(values)) => lists.push(values),
            Some(_) => return Err(bad(format!("columns.{name}: expected a list of values"))),
        }
    }
    let n = lists.first().map_or(0, |l| l.len());
    if let Some((f, l)) = lists.iter().enumerate().find(|(_, l)| l.len() != n) {
        return Err(bad(format!(
            "columns.{} has {} values, columns.{} has {n}",
            features.names[f],
            l.len(),
            features.names[0]
        )));
    }
    check_count(n, max_rows)?;
    let mut cells = Vec::with_capacity(n_features);
    for r in 0..n {
        cells.clear();
        for ((name, list), delimiter) in features.names.iter().zip(&lists).zip(&features.delimiters) {
            let text = cell_text(&list[r], delimiter.as_deref())
                .map_err(|m| bad(format!("columns.{name}[{r}]: {m}")))?;
            cells.push(text);
        }
        encode_row(encoder, &cells, &mut out)
            .map_err(|(f, m)| bad(format!("columns.{}[{r}]: {m}", features.names[f])))?;
    }
    Ok(out)
}

fn check_count(rows: usize, max_rows: usize) -> Result<(), RequestError> {
    if rows == 0 {
        return Err(RequestError::Bad("no rows to score".into()));
    }
    if rows > max_rows {
        return Err(RequestError::TooLarge(format!(
            "{rows} rows in one request; the limit is {max_rows} (--max-rows)"
        )));
    }
    Ok(())
}

/// Encodes one row's cells (labels are zero: they are not needed to score).
fn encode_row(
    encoder: &Encoder,
    cells: &[Cow<'_, str>],
    out: &mut EncodedData,
) -> Result<(), (usize, String)> {
    encode_features(encoder, |f| Ok(cells[f].as_ref()), out).map_err(|(f, e)| (f, e.to_string()))?;
    out.labels.extend(std::iter::repeat_n(0.0, out.n_labels));
    out.rows += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtl_features::{Schema, StateFitter};

    fn encoder() -> Encoder {
        let s = Schema::from_toml_str(
            "embed_dim = 4\n[[sparse]]\nname = \"user\"\nvocab_size = 10\n[[sequence]]\nname = \"hist\"\nmax_len = 3\nvocab_size = 10\n[[dense]]\nname = \"price\"\nstandardize = false\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n",
            "s.toml",
        )
        .unwrap();
        Encoder::new(&s, &StateFitter::new(&s).finish())
    }

    fn run(body: &str) -> Result<(Layout, EncodedData), RequestError> {
        let enc = encoder();
        parse(body.as_bytes(), &Features::new(enc.schema()), &enc, 3)
    }

    fn bad(body: &str) -> String {
        match run(body) {
            Err(RequestError::Bad(m)) => m,
            other => panic!("{body}: expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn rows_and_columns_encode_the_same_as_csv_cells() {
        let (layout, rows) = run(
            r#"{"rows": [{"user": 3, "hist": [1, "2"], "price": 2.5}, {"user": "4.0", "hist": "5|6", "price": "-1"}]}"#,
        )
        .unwrap();
        assert_eq!(layout, Layout::Rows);
        assert_eq!(rows.rows, 2);
        assert_eq!(rows.sparse, [3, 4]);
        assert_eq!(rows.sequence, [1, 2, 0, 5, 6, 0]);
        assert_eq!(rows.seq_len, [2, 2]);
        assert_eq!(rows.dense, [2.5, -1.0]);
        assert_eq!(rows.labels, [0.0, 0.0]);
        let (layout, cols) =
            run(r#"{"columns": {"user": [3, "4.0"], "hist": [[1, 2], "5|6"], "price": [2.5, "-1"]}}"#)
                .unwrap();
        assert_eq!(layout, Layout::Columns);
        assert_eq!(cols, rows);
        // and a CSV file with the same cells reads to the same block
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.csv");
        std::fs::write(&path, "user,hist,price\n3,1|2,2.5\n4.0,5|6,-1\n").unwrap();
        let enc = encoder();
        let (csv, _, _) =
            mtl_data::read_encoded(&path, &enc, mtl_data::BadRowPolicy::Fail, false, None).unwrap();
        assert_eq!(csv, rows);
    }

    #[test]
    fn each_bad_request_names_the_row_and_field() {
        let cases: &[(&str, &[&str])] = &[
            ("{", &["malformed JSON", "line 1"]),
            ("[1]", &["JSON object"]),
            (r#"{"rows": [], "extra": 1}"#, &["unknown key `extra`"]),
            (r#"{"rows": [], "columns": {}}"#, &["not both"]),
            ("{}", &["`rows`", "`columns`"]),
            (r#"{"rows": {}}"#, &["list of objects"]),
            (r#"{"rows": []}"#, &["no rows"]),
            (r#"{"rows": [1]}"#, &["rows[0]", "object"]),
            (
                r#"{"rows": [{"user": 1, "hist": [], "price": 1, "prise": 2}]}"#,
                &["rows[0]", "`prise`", "`price`"],
            ),
            (
                r#"{"rows": [{"user": 1, "hist": [], "price": 1, "click": 1}]}"#,
                &["rows[0]", "`click` is a label"],
            ),
            (
                r#"{"rows": [{"user": 1, "hist": []}]}"#,
                &["rows[0]", "missing feature `price`"],
            ),
            (
                r#"{"rows": [{"user": 1, "hist": [], "price": true}]}"#,
                &["rows[0].price", "string or a number"],
            ),
            (
                r#"{"rows": [{"user": [1], "hist": [], "price": 1}]}"#,
                &["rows[0].user", "single value"],
            ),
            (
                r#"{"rows": [{"user": {}, "hist": [], "price": 1}]}"#,
                &["rows[0].user", "object"],
            ),
            (
                r#"{"rows": [{"user": 1, "hist": [[1]], "price": 1}]}"#,
                &["rows[0].hist", "item 0"],
            ),
            (
                r#"{"rows": [{"user": 1, "hist": ["1|2"], "price": 1}]}"#,
                &["rows[0].hist", "delimiter"],
            ),
            (
                r#"{"rows": [{"user": 1, "hist": [], "price": 1}, {"user": 10, "hist": [], "price": 1}]}"#,
                &["rows[1].user", "outside the vocabulary"],
            ),
            (
                r#"{"rows": [{"user": -1, "hist": [], "price": 1}]}"#,
                &["rows[0].user", "not a non-negative integer id"],
            ),
            (
                r#"{"rows": [{"user": 1, "hist": [], "price": "abc"}]}"#,
                &["rows[0].price", "not a number"],
            ),
            (
                r#"{"rows": [{"user": 1, "hist": [], "price": "NaN"}]}"#,
                &["rows[0].price", "missing value", "no default"],
            ),
            (
                r#"{"rows": [{"user": 1, "hist": [], "price": null}]}"#,
                &["rows[0].price", "empty"],
            ),
            (
                r#"{"rows": [{"user": 1, "hist": [], "price": 1e39}]}"#,
                &["rows[0].price", "32-bit"],
            ),
            (r#"{"columns": []}"#, &["object of lists"]),
            (
                r#"{"columns": {"user": [1], "hist": [[]]}}"#,
                &["missing feature `price`"],
            ),
            (
                r#"{"columns": {"user": 1, "hist": [[]], "price": [1]}}"#,
                &["columns.user", "list"],
            ),
            (
                r#"{"columns": {"user": [1, 2], "hist": [[]], "price": [1]}}"#,
                &["columns.hist has 1 values", "columns.user has 2"],
            ),
            (
                r#"{"columns": {"user": [1], "hist": [[]], "price": ["x"]}}"#,
                &["columns.price[0]", "not a number"],
            ),
        ];
        for (body, needles) in cases {
            let m = bad(body);
            for n in *needles {
                assert!(m.contains(n), "{body}: `{m}` lacks `{n}`");
            }
        }
        // the row limit is its own kind of error, naming the limit
        let four = r#"{"rows": [{"user": 1, "hist": [], "price": 1}, {"user": 1, "hist": [], "price": 1}, {"user": 1, "hist": [], "price": 1}, {"user": 1, "hist": [], "price": 1}]}"#;
        match run(four) {
            Err(RequestError::TooLarge(m)) => {
                assert!(m.contains("4 rows") && m.contains("limit is 3"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
}
