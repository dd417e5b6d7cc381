//! Fitted feature state (vocabularies, normalisation statistics), the encoder that applies it,
//! and the table layout it implies. The state is saved beside a model so that evaluation and
//! prediction encode exactly as training did.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::schema::{LabelField, LabelKind, ValidSchema, VocabSpec};
use crate::{FeatureError, atomic_write};

/// Mean and standard deviation of one dense field on the training data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DenseStats {
    /// Mean.
    pub mean: f64,
    /// Population standard deviation (1 when the field is constant).
    pub std: f64,
    /// Rows seen.
    pub count: u64,
}

/// The fitted state of every feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureState {
    /// File format version.
    pub format: u32,
    /// Fingerprint of the schema the state was fitted for.
    pub schema_fingerprint: String,
    /// Per id field: the fitted vocabulary (value of id `k` at index `k - 1`), for `fit` fields.
    pub vocabularies: Vec<Option<Vec<String>>>,
    /// Per dense field: statistics (always computed; applied when `standardize`).
    pub dense: Vec<DenseStats>,
}

/// Fingerprint of a schema: FNV-1a of its canonical JSON.
pub fn schema_fingerprint(schema: &ValidSchema) -> String {
    let json = serde_json::to_string(&schema.schema).unwrap_or_default();
    format!("{:016x}", fnv1a(json.as_bytes()))
}

/// 64-bit FNV-1a, the hash behind `hash_buckets` (stable across platforms and releases).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Accumulates what fitting needs while the training data streams by.
#[derive(Debug)]
pub struct StateFitter {
    schema: ValidSchema,
    counts: Vec<Option<HashMap<String, (u64, u64)>>>,
    seen: u64,
    dense: Vec<(u64, f64, f64)>,
}

impl StateFitter {
    /// A fitter for the given schema.
    pub fn new(schema: &ValidSchema) -> Self {
        let counts = schema
            .vocab
            .iter()
            .map(|v| matches!(v, VocabSpec::Fit { .. }).then(HashMap::new))
            .collect();
        Self {
            schema: schema.clone(),
            counts,
            seen: 0,
            dense: vec![(0, 0.0, 0.0); schema.n_dense()],
        }
    }

    /// Whether fitting needs the data's rows at all: some vocabulary is fitted or some dense
    /// field gets statistics. Without either, the state is the same whatever the rows hold.
    pub fn needs_rows(&self) -> bool {
        self.counts.iter().any(Option::is_some) || !self.dense.is_empty()
    }

    /// Whether id field `field` needs its raw values observed.
    pub fn wants_ids(&self, field: usize) -> bool {
        self.counts[self.schema.owner[field]].is_some()
    }

    /// Records one raw value of id field `field` (counted into its owner's vocabulary).
    pub fn observe_id(&mut self, field: usize, value: &str) {
        let value = canonical_id(value);
        let owner = self.schema.owner[field];
        if let Some(map) = self.counts[owner].as_mut() {
            self.seen += 1;
            let seen = self.seen;
            if let Some(entry) = map.get_mut(value) {
                entry.0 += 1;
            } else {
                map.insert(value.to_string(), (1, seen));
            }
        }
    }

    /// Records one value of dense field `field` (Welford's update).
    pub fn observe_dense(&mut self, field: usize, value: f64) {
        let (n, mean, m2) = &mut self.dense[field];
        *n += 1;
        let delta = value - *mean;
        *mean += delta / *n as f64;
        *m2 += delta * (value - *mean);
    }

    /// The fitted state.
    pub fn finish(self) -> FeatureState {
        let vocabularies = self
            .counts
            .into_iter()
            .enumerate()
            .map(|(i, counts)| {
                counts.map(|map| {
                    let min_count = match self.schema.vocab[i] {
                        VocabSpec::Fit { min_count } => min_count,
                        _ => 1,
                    };
                    let mut kept: Vec<(String, u64)> = map
                        .into_iter()
                        .filter(|(_, (c, _))| *c >= min_count)
                        .map(|(v, (_, first))| (v, first))
                        .collect();
                    kept.sort_by_key(|(_, first)| *first);
                    kept.into_iter().map(|(v, _)| v).collect()
                })
            })
            .collect();
        let dense = self
            .dense
            .into_iter()
            .map(|(n, mean, m2)| {
                let var = if n > 0 { m2 / n as f64 } else { 0.0 };
                let std = var.sqrt();
                DenseStats {
                    mean: if n > 0 { mean } else { 0.0 },
                    std: if std > 1e-12 { std } else { 1.0 },
                    count: n,
                }
            })
            .collect();
        FeatureState {
            format: 1,
            schema_fingerprint: schema_fingerprint(&self.schema),
            vocabularies,
            dense,
        }
    }
}

impl FeatureState {
    /// Writes the state as JSON, atomically (temp file, then rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), FeatureError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| FeatureError::State {
            file: path.as_ref().display().to_string(),
            message: e.to_string(),
        })?;
        atomic_write(path.as_ref(), &json)
    }

    /// Reads a state saved by [`FeatureState::save`] and checks it belongs to `schema`.
    pub fn load(path: impl AsRef<Path>, schema: &ValidSchema) -> Result<Self, FeatureError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| FeatureError::Io {
            path: file.clone(),
            source,
        })?;
        Self::from_json(&bytes, &file, schema)
    }

    /// A state from its JSON (`file` names it in errors), checked to belong to `schema`.
    pub fn from_json(json: &[u8], file: &str, schema: &ValidSchema) -> Result<Self, FeatureError> {
        let state: FeatureState = serde_json::from_slice(json).map_err(|e| FeatureError::State {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        if state.schema_fingerprint != schema_fingerprint(schema)
            || state.vocabularies.len() != schema.vocab.len()
            || state.dense.len() != schema.n_dense()
        {
            return Err(FeatureError::State {
                file: file.to_string(),
                message: "was fitted for a different schema".into(),
            });
        }
        Ok(state)
    }
}

/// Where each id field's rows sit in the one embedding table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableLayout {
    /// Per id field: rows of its (owner's) vocabulary.
    pub rows: Vec<usize>,
    /// Per id field: the first row of its (owner's) block in the table.
    pub offset: Vec<usize>,
    /// Rows of the whole table (shared blocks counted once).
    pub total_rows: usize,
    /// Per id field: table rows per id (its `embed_dim` over the table's width; id `v` owns
    /// rows `offset + v·slots …`). Empty means one each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<usize>,
}

impl TableLayout {
    /// Table rows per id of id field `field`.
    pub fn slots_of(&self, field: usize) -> usize {
        self.slots.get(field).copied().unwrap_or(1)
    }
}

/// Turns raw cell text into ids and numbers as the fitted state says.
#[derive(Debug, Clone)]
pub struct Encoder {
    schema: ValidSchema,
    state: FeatureState,
    lookup: Vec<Option<HashMap<String, u32>>>,
    layout: TableLayout,
    rules: Vec<LabelRule>,
    /// The label column of sample weights (checked to be at least 0), if any.
    weight_label: Option<usize>,
    /// Ids mapped to an `oov = "bucket"` row so far (shared by clones).
    oov: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// A rule every labelled row must follow: binary label `label` is 1 only where binary label
/// `requires` is 1 (ESMM: a conversion is only counted after a click).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelRule {
    /// The label that implies the other.
    pub label: usize,
    /// The label that must be 1 wherever `label` is.
    pub requires: usize,
    /// Who needs the rule, for the message (e.g. `ESMM (model.conversion_label)`).
    pub needed_by: String,
}

/// At most this many characters of a cell are quoted in a message.
const SHOWN_CHARS: usize = 48;

/// A cell's text as a message quotes it: whole when short, else its start and its length.
pub fn shown(text: &str) -> String {
    let t = text.trim();
    if t.chars().count() <= SHOWN_CHARS {
        t.to_string()
    } else {
        let start: String = t.chars().take(SHOWN_CHARS).collect();
        format!("{start}… ({} bytes)", t.len())
    }
}

/// The value an id cell stands for: surrounding spaces dropped, and an integer written as a
/// decimal number (`3.0`, `3.`, `-2.00`) read as that integer (`3`, `-2`), so that `3.0` and
/// `3` are one id for fitted, hashed and declared vocabularies alike (files written by
/// pandas turn integer columns with gaps into floats).
pub fn canonical_id(text: &str) -> &str {
    let t = text.trim();
    if let Some((int, frac)) = t.split_once('.') {
        let digits = int.strip_prefix('-').unwrap_or(int);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && frac.bytes().all(|b| b == b'0')
        {
            return int;
        }
    }
    t
}

/// Why one cell could not be encoded (the reader adds file, line and column).
#[derive(Debug, Clone, PartialEq)]
pub enum CellError {
    /// Not a non-negative integer id.
    NotAnId(String),
    /// An id at or past the vocabulary size.
    IdOutOfRange {
        /// The id.
        id: u64,
        /// The vocabulary size.
        size: usize,
    },
    /// Not a number.
    NotANumber(String),
    /// NaN or infinity.
    NotFinite(String),
    /// A finite number too large for a 32-bit float (after standardisation, if any).
    OutOfRange(String),
    /// A missing value (an empty or NaN cell) where no default exists.
    Missing,
    /// A binary label other than 0 or 1.
    NotBinary(String),
    /// A sample weight below 0.
    NegativeWeight(String),
}

impl std::fmt::Display for CellError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotAnId(v) => write!(f, "`{v}` is not a non-negative integer id"),
            Self::IdOutOfRange { id, size } => {
                write!(f, "id {id} is outside the vocabulary (size {size})")
            }
            Self::NotANumber(v) => write!(f, "`{v}` is not a number"),
            Self::NotFinite(v) => write!(f, "`{v}` is not finite (NaN or infinity)"),
            Self::OutOfRange(v) => write!(
                f,
                "`{v}` is outside the range of a 32-bit float (about ±3.4e38) once encoded"
            ),
            Self::Missing => write!(
                f,
                "missing value (an empty cell, or NaN in a dense field) and no default"
            ),
            Self::NotBinary(v) => write!(f, "binary label `{v}` is not 0 or 1"),
            Self::NegativeWeight(v) => write!(f, "sample weight `{v}` is negative (weights are at least 0)"),
        }
    }
}

fn parse_finite(text: &str) -> Result<f64, CellError> {
    let t = text.trim();
    let v: f64 = t.parse().map_err(|_| CellError::NotANumber(shown(t)))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(CellError::NotFinite(shown(t)))
    }
}

/// `v` as the f32 the model sees, or an error quoting `text` when it does not fit.
fn to_f32(v: f64, text: &str) -> Result<f32, CellError> {
    let x = v as f32;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(CellError::OutOfRange(shown(text)))
    }
}

impl Encoder {
    /// An encoder for `schema` with the fitted `state`.
    pub fn new(schema: &ValidSchema, state: &FeatureState) -> Self {
        let lookup = state
            .vocabularies
            .iter()
            .map(|v| {
                v.as_ref().map(|values| {
                    values
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (s.clone(), (i + 1) as u32))
                        .collect()
                })
            })
            .collect();
        let mut own_rows = Vec::with_capacity(schema.vocab.len());
        for (i, spec) in schema.vocab.iter().enumerate() {
            own_rows.push(match spec {
                VocabSpec::Ids { size, bucket } => *size + usize::from(*bucket),
                VocabSpec::Hash { buckets } => *buckets,
                VocabSpec::Fit { .. } => state.vocabularies[i].as_ref().map_or(0, Vec::len) + 1,
                VocabSpec::Shared { .. } => 0,
            });
        }
        let slots = schema.slots();
        let mut own_offset = vec![0; own_rows.len()];
        let mut total = 0;
        for (i, rows) in own_rows.iter().enumerate() {
            own_offset[i] = total;
            total += rows * slots[i];
        }
        let layout = TableLayout {
            rows: schema.owner.iter().map(|&o| own_rows[o]).collect(),
            offset: schema.owner.iter().map(|&o| own_offset[o]).collect(),
            total_rows: total,
            slots: if slots.iter().all(|&k| k == 1) {
                Vec::new()
            } else {
                slots
            },
        };
        Self {
            schema: schema.clone(),
            state: state.clone(),
            lookup,
            layout,
            rules: Vec::new(),
            weight_label: None,
            oov: Default::default(),
        }
    }

    /// Ids that were at or past a declared vocabulary with `oov = "bucket"`, mapped to its
    /// reserved row, since this encoder (or the one it was cloned from) was made.
    pub fn oov_count(&self) -> u64 {
        self.oov.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The same encoder, also checking `rules` on every labelled row.
    pub fn with_label_rules(mut self, rules: Vec<LabelRule>) -> Self {
        self.rules = rules;
        self
    }

    /// The label rules checked on every labelled row.
    pub fn label_rules(&self) -> &[LabelRule] {
        &self.rules
    }

    /// The same encoder reading `labels` as the rows' labels (its fields and fitted state
    /// unchanged): how an evaluation adds a column of sample weights after the model's own
    /// labels without fitting anything again.
    pub fn with_labels(mut self, labels: Vec<LabelField>) -> Self {
        self.schema.schema.labels = labels;
        self
    }

    /// The same encoder, reading label column `label` (if any) as sample weights: a value
    /// below 0 is an error.
    pub fn with_weight_label(mut self, label: Option<usize>) -> Self {
        self.weight_label = label;
        self
    }

    /// The label column of sample weights, if any.
    pub fn weight_label(&self) -> Option<usize> {
        self.weight_label
    }

    /// Checks one row's labels (in schema order) against the rules: the first rule broken,
    /// as (the label it names, the message).
    pub fn check_label_rules(&self, labels: &[f32]) -> Result<(), (usize, String)> {
        for rule in &self.rules {
            if labels[rule.label] == 1.0 && labels[rule.requires] != 1.0 {
                let names = &self.schema.schema.labels;
                return Err((
                    rule.label,
                    format!(
                        "`{}` is 1 on a row where `{}` is 0; {} needs `{}` to be 1 only where `{}` is 1",
                        names[rule.label].name,
                        names[rule.requires].name,
                        rule.needed_by,
                        names[rule.label].name,
                        names[rule.requires].name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The schema this encoder serves.
    pub fn schema(&self) -> &ValidSchema {
        &self.schema
    }

    /// The fitted state this encoder applies.
    pub fn state(&self) -> &FeatureState {
        &self.state
    }

    /// The embedding table layout.
    pub fn layout(&self) -> &TableLayout {
        &self.layout
    }

    /// Encodes one raw value of id field `field` to its id within the field's vocabulary.
    pub fn encode_id(&self, field: usize, text: &str) -> Result<u32, CellError> {
        let owner = self.schema.owner[field];
        match &self.schema.vocab[owner] {
            VocabSpec::Ids { size, bucket } => {
                let t = canonical_id(text);
                let id: u64 = t.parse().map_err(|_| CellError::NotAnId(shown(t)))?;
                if id >= *size as u64 {
                    if *bucket {
                        self.oov.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return Ok(*size as u32);
                    }
                    return Err(CellError::IdOutOfRange { id, size: *size });
                }
                Ok(id as u32)
            }
            VocabSpec::Fit { .. } => Ok(self.lookup[owner]
                .as_ref()
                .and_then(|m| m.get(canonical_id(text)).copied())
                .unwrap_or(0)),
            VocabSpec::Hash { buckets } => {
                Ok((fnv1a(canonical_id(text).as_bytes()) % *buckets as u64) as u32)
            }
            VocabSpec::Shared { .. } => unreachable!("owners never share"),
        }
    }

    /// Encodes one dense cell: default for a missing value (an empty cell or `NaN`),
    /// standardised when the schema says so.
    pub fn encode_dense(&self, field: usize, text: &str) -> Result<f32, CellError> {
        let spec = &self.schema.schema.dense[field];
        let raw = if is_missing(text) {
            match spec.default {
                Some(d) => return Ok(d),
                None => return Err(CellError::Missing),
            }
        } else {
            parse_finite(text)?
        };
        let value = if spec.standardize {
            let s = self.state.dense[field];
            (raw - s.mean) / s.std
        } else {
            raw
        };
        to_f32(value, text)
    }

    /// Encodes one label cell.
    pub fn encode_label(&self, label: usize, text: &str) -> Result<f32, CellError> {
        if text.trim().is_empty() {
            return Err(CellError::Missing);
        }
        let v = parse_finite(text)?;
        if self.weight_label == Some(label) && v < 0.0 {
            return Err(CellError::NegativeWeight(shown(text)));
        }
        match self.schema.schema.labels[label].kind {
            LabelKind::Binary if v == 0.0 || v == 1.0 => Ok(v as f32),
            LabelKind::Binary => Err(CellError::NotBinary(shown(text))),
            LabelKind::Regression => to_f32(v, text),
        }
    }
}

/// Whether a dense cell holds no value: empty (spaces only) or `NaN` in any spelling Rust
/// reads (`NaN`, `nan`, …, as pandas and Parquet write a missing float). Infinities are
/// values, refused by the encoder as not finite.
pub fn is_missing(text: &str) -> bool {
    let t = text.trim();
    t.is_empty() || t.parse::<f64>().is_ok_and(f64::is_nan)
}

/// Parses a dense cell for fitting (no default, no standardisation): `None` for a missing
/// value ([`is_missing`]).
pub fn parse_dense_for_fit(text: &str) -> Result<Option<f64>, CellError> {
    if is_missing(text) {
        Ok(None)
    } else {
        let v = parse_finite(text)?;
        to_f32(v, text)?;
        Ok(Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Schema;

    fn schema() -> ValidSchema {
        Schema::from_toml_str(
            r#"
[[sparse]]
name = "a"
vocab_size = 4
[[sparse]]
name = "b"
fit = true
min_count = 2
[[sparse]]
name = "c"
hash_buckets = 5
[[sparse]]
name = "b2"
shared_with = "b"
[[dense]]
name = "x"
standardize = true
[[dense]]
name = "y"
default = -1.0
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

    fn fitted(s: &ValidSchema) -> FeatureState {
        let mut f = StateFitter::new(s);
        for v in ["p", "q", "p", "r", "q"] {
            f.observe_id(1, v);
        }
        f.observe_id(3, "r"); // shared field counts into b's vocabulary
        for x in [1.0, 2.0, 3.0, 4.0] {
            f.observe_dense(0, x);
        }
        f.finish()
    }

    #[test]
    fn fit_orders_by_first_appearance_and_applies_min_count() {
        let s = schema();
        let st = fitted(&s);
        assert_eq!(
            st.vocabularies[1].as_deref(),
            Some(&["p".to_string(), "q".into(), "r".into()][..])
        );
        assert!(st.vocabularies[0].is_none());
        // mean 2.5, population std sqrt(1.25)
        assert!((st.dense[0].mean - 2.5).abs() < 1e-12);
        assert!((st.dense[0].std - 1.25f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn encode_ids_oov_hash_and_layout() {
        let s = schema();
        let enc = Encoder::new(&s, &fitted(&s));
        assert_eq!(enc.encode_id(0, "3"), Ok(3));
        assert_eq!(
            enc.encode_id(0, "4"),
            Err(CellError::IdOutOfRange { id: 4, size: 4 })
        );
        assert!(matches!(enc.encode_id(0, "x"), Err(CellError::NotAnId(_))));
        assert_eq!(enc.encode_id(1, "p"), Ok(1));
        assert_eq!(enc.encode_id(1, "r"), Ok(3));
        assert_eq!(enc.encode_id(1, "never-seen"), Ok(0), "OOV is id 0");
        assert_eq!(
            enc.encode_id(3, "q"),
            Ok(2),
            "shared field uses the owner's vocabulary"
        );
        // hash: FNV-1a of the bytes modulo the buckets, computed independently here
        let expected = (fnv1a(b"hello") % 5) as u32;
        assert_eq!(enc.encode_id(2, "hello"), Ok(expected));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let l = enc.layout();
        assert_eq!(l.rows, vec![4, 4, 5, 4]);
        assert_eq!(l.offset, vec![0, 4, 8, 4]);
        assert_eq!(l.total_rows, 13);
    }

    #[test]
    fn a_bucketed_vocabulary_has_one_more_row_and_counts_what_lands_in_it() {
        let text = "[[sparse]]\nname = \"a\"\nvocab_size = 4\noov = \"bucket\"\n[[sparse]]\nname = \"b\"\nvocab_size = 3\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n";
        let s = Schema::from_toml_str(text, "t.toml").unwrap();
        let enc = Encoder::new(&s, &StateFitter::new(&s).finish());
        assert_eq!(enc.layout().rows, [5, 3]);
        assert_eq!(enc.layout().offset, [0, 5]);
        assert_eq!(enc.encode_id(0, "3").unwrap(), 3);
        assert_eq!(enc.oov_count(), 0);
        assert_eq!(enc.encode_id(0, "4").unwrap(), 4);
        assert_eq!(enc.encode_id(0, "1000").unwrap(), 4);
        assert_eq!(enc.oov_count(), 2);
        // the other field keeps the default: an error
        assert_eq!(
            enc.encode_id(1, "3"),
            Err(CellError::IdOutOfRange { id: 3, size: 3 })
        );
        // not an id at all is still an error with a bucket
        assert!(matches!(enc.encode_id(0, "x"), Err(CellError::NotAnId(_))));
        // a schema without `oov` serialises as before (fitted states keep their fingerprint)
        let plain = Schema::from_toml_str(&text.replace("oov = \"bucket\"\n", ""), "t.toml").unwrap();
        assert!(!serde_json::to_string(&plain.schema).unwrap().contains("oov"));
    }

    /// A label is never missing: NaN is refused as not finite.
    fn encode_nan_label(enc: &Encoder) -> Result<f32, CellError> {
        enc.encode_label(0, "NaN")
    }

    #[test]
    fn dense_and_labels() {
        let s = schema();
        let enc = Encoder::new(&s, &fitted(&s));
        let z = enc.encode_dense(0, "2.5").unwrap();
        assert!(z.abs() < 1e-6);
        assert_eq!(enc.encode_dense(1, ""), Ok(-1.0));
        assert_eq!(enc.encode_dense(0, ""), Err(CellError::Missing));
        // NaN is a missing value: the default where there is one, else the missing error
        for nan in ["NaN", "nan", " NAN "] {
            assert_eq!(enc.encode_dense(1, nan), Ok(-1.0), "{nan}");
            assert_eq!(enc.encode_dense(0, nan), Err(CellError::Missing), "{nan}");
        }
        assert_eq!(parse_dense_for_fit("nan"), Ok(None));
        assert!(matches!(enc.encode_dense(0, "inf"), Err(CellError::NotFinite(_))));
        assert!(matches!(
            enc.encode_dense(1, "-inf"),
            Err(CellError::NotFinite(_))
        ));
        assert!(matches!(encode_nan_label(&enc), Err(CellError::NotFinite(_))));
        assert_eq!(enc.encode_label(0, "1"), Ok(1.0));
        assert!(matches!(enc.encode_label(0, "2"), Err(CellError::NotBinary(_))));
        assert_eq!(enc.encode_label(1, "2.5"), Ok(2.5));
    }

    #[test]
    fn state_round_trip_gives_identical_ids() {
        let s = schema();
        let st = fitted(&s);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.json");
        st.save(&path).unwrap();
        let loaded = FeatureState::load(&path, &s).unwrap();
        assert_eq!(loaded, st);
        let (a, b) = (Encoder::new(&s, &st), Encoder::new(&s, &loaded));
        for v in ["p", "q", "r", "zz", "hello"] {
            assert_eq!(a.encode_id(1, v), b.encode_id(1, v));
            assert_eq!(a.encode_id(2, v), b.encode_id(2, v));
        }
        // a different schema refuses the state
        let other = Schema::from_toml_str(
            "[[sparse]]\nname = \"a\"\nvocab_size = 9\n[[labels]]\nname = \"l\"\nkind = \"binary\"\n",
            "o.toml",
        )
        .unwrap();
        let err = FeatureState::load(&path, &other).unwrap_err().to_string();
        assert!(err.contains("different schema"), "{err}");
    }
}
