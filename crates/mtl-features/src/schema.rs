//! The feature schema: which columns are sparse ids, dense numbers, multi-hot sequences and
//! labels, read from TOML with unknown keys rejected.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::FeatureError;

/// The most rows a vocabulary or hash space may have: ids are 32-bit.
pub const MAX_ROWS: usize = u32::MAX as usize;
/// The widest embedding a schema may ask for.
pub const MAX_EMBED_DIM: usize = 4096;
/// The longest sequence field a schema may ask for (every row holds `max_len` ids).
pub const MAX_SEQUENCE: usize = 65_536;
/// The most floats the whole embedding table may hold (rows × `embed_dim`: 16 GiB).
pub const MAX_TABLE_FLOATS: usize = 1 << 32;

fn default_embed_dim() -> usize {
    DEFAULT_EMBED_DIM
}
fn default_delimiter() -> String {
    "|".to_string()
}
fn default_min_count() -> u64 {
    1
}
fn default_init_std() -> f64 {
    1e-4
}

/// How the ids of a sparse or sequence field become table rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VocabSpec {
    /// Ids are already encoded integers in `0..size`; a larger id is an error, or with
    /// `oov = "bucket"` maps to one reserved row after them (counted and reported).
    Ids {
        /// Number of distinct ids.
        size: usize,
        /// Whether ids at or past `size` map to a reserved row `size` instead of failing.
        bucket: bool,
    },
    /// The vocabulary is fitted on training data: values seen at least `min_count` times get
    /// ids `1..=n` in order of first appearance; everything else maps to id 0 (out of vocabulary).
    Fit {
        /// Minimum count for a value to get its own id.
        min_count: u64,
    },
    /// Values are hashed (64-bit FNV-1a of the raw text) into `buckets` rows.
    Hash {
        /// Number of hash buckets.
        buckets: usize,
    },
    /// The field uses the table (and vocabulary) of another field.
    Shared {
        /// The owning field's name.
        with: String,
    },
}

/// What a declared vocabulary (`vocab_size`) does with an id at or past its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OovPolicy {
    /// An error naming file, line and column (the default).
    Error,
    /// One reserved row after the vocabulary, shared by every such id; counted and reported.
    Bucket,
}

/// A categorical field: one id per row, one embedding row per id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparseField {
    /// Field name (used by `shared_with` and in messages); or give `names`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Instead of `name`: column-name patterns (`*` any run of characters, `?` one, `[abc]`
    /// a set); the entry stands for one field per matching column of the training data's
    /// header (a column no other entry names), named after the column, in header order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// CSV column; defaults to `name`.
    #[serde(default)]
    pub column: Option<String>,
    /// Pre-encoded ids in `0..vocab_size`.
    #[serde(default)]
    pub vocab_size: Option<usize>,
    /// With `vocab_size`: `error` (default) or `bucket` for ids at or past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oov: Option<OovPolicy>,
    /// Fit the vocabulary on the training data.
    #[serde(default)]
    pub fit: Option<bool>,
    /// With `fit`: values seen fewer times map to the out-of-vocabulary id 0.
    #[serde(default)]
    pub min_count: Option<u64>,
    /// Hash raw values into this many buckets.
    #[serde(default)]
    pub hash_buckets: Option<usize>,
    /// Use another field's table and vocabulary.
    #[serde(default)]
    pub shared_with: Option<String>,
    /// Group tag (e.g. `user`, `item`) for group-sum pooling.
    #[serde(default)]
    pub group: Option<String>,
    /// This field's embedding width (default: the schema's `embed_dim`; a field sharing
    /// another's table has the owner's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed_dim: Option<usize>,
}

/// A multi-hot field: delimiter-separated ids in one column, pooled to one vector.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceField {
    /// Field name; or give `names`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Instead of `name`: column-name patterns (`*` any run of characters, `?` one, `[abc]`
    /// a set); the entry stands for one field per matching column of the training data's
    /// header (a column no other entry names), named after the column, in header order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// CSV column; defaults to `name`.
    #[serde(default)]
    pub column: Option<String>,
    /// Separator between ids in the cell.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Ids past this many are dropped.
    pub max_len: usize,
    /// `sum` or `mean` over the present ids, or DIN's target attention
    /// (`{ attention = "target", query = ["item_id"] }`).
    #[serde(default)]
    pub pooling: PoolingSpec,
    /// Pre-encoded ids in `0..vocab_size`.
    #[serde(default)]
    pub vocab_size: Option<usize>,
    /// With `vocab_size`: `error` (default) or `bucket` for ids at or past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oov: Option<OovPolicy>,
    /// Fit the vocabulary on the training data.
    #[serde(default)]
    pub fit: Option<bool>,
    /// With `fit`: minimum count for an id of its own.
    #[serde(default)]
    pub min_count: Option<u64>,
    /// Hash raw values into this many buckets.
    #[serde(default)]
    pub hash_buckets: Option<usize>,
    /// Use another field's table and vocabulary.
    #[serde(default)]
    pub shared_with: Option<String>,
    /// Group tag for group-sum pooling.
    #[serde(default)]
    pub group: Option<String>,
    /// This field's embedding width (default: the schema's `embed_dim`; a field sharing
    /// another's table has the owner's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed_dim: Option<usize>,
}

/// Pooling over the ids of one sequence field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SequencePooling {
    /// Sum of the id embeddings.
    Sum,
    /// Mean of the id embeddings (zero for an empty cell).
    #[default]
    Mean,
    /// DIN's target attention: a sum weighted by each id's relevance to a query field (written
    /// as a table, [`AttentionPooling`]).
    #[serde(skip)]
    Target,
}

/// The kinds of attention pooling (one so far).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKind {
    /// DIN's local activation unit, queried by the target item.
    Target,
}

fn default_attention_dims() -> Vec<usize> {
    vec![36]
}

/// DIN's target attention over a sequence field (Zhou et al., KDD 2018): each present id's
/// weight is an MLP over `[q, k, q − k, q ⊙ k]` of the query `q` (the `query` fields'
/// embeddings side by side) and the id's embedding `k`; the pooled vector is `Σ wᵢ kᵢ`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionPooling {
    /// `"target"`.
    pub attention: AttentionKind,
    /// The sparse fields whose embeddings, side by side, form the query (as wide as the
    /// sequence field's own embeddings), e.g. `["item_id"]`.
    pub query: Vec<String>,
    /// Normalise the weights with a softmax over the present ids (DIN itself does not).
    #[serde(default)]
    pub softmax: bool,
    /// Hidden widths of the attention MLP (ReLU; DIN's 36 by default).
    #[serde(default = "default_attention_dims")]
    pub dims: Vec<usize>,
}

/// A sequence field's `pooling`: `"sum"`, `"mean"` or a target attention table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PoolingSpec {
    /// `"sum"` or `"mean"`.
    Plain(SequencePooling),
    /// `{ attention = "target", query = [...] }`.
    Attention(AttentionPooling),
}

impl Default for PoolingSpec {
    fn default() -> Self {
        Self::Plain(SequencePooling::Mean)
    }
}

impl PoolingSpec {
    /// The pooling's kind.
    pub fn kind(&self) -> SequencePooling {
        match self {
            Self::Plain(p) => *p,
            Self::Attention(_) => SequencePooling::Target,
        }
    }
}

impl<'de> Deserialize<'de> for PoolingSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PoolingSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"sum\", \"mean\" or a table { attention = \"target\", query = [\"item_id\"] }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PoolingSpec, E> {
                match v {
                    "sum" => Ok(PoolingSpec::Plain(SequencePooling::Sum)),
                    "mean" => Ok(PoolingSpec::Plain(SequencePooling::Mean)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<PoolingSpec, A::Error> {
                let table = serde::de::value::MapAccessDeserializer::new(map);
                AttentionPooling::deserialize(table).map(PoolingSpec::Attention)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A numeric field.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseField {
    /// Field name; or give `names`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Instead of `name`: column-name patterns (`*` any run of characters, `?` one, `[abc]`
    /// a set); the entry stands for one field per matching column of the training data's
    /// header (a column no other entry names), named after the column, in header order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// CSV column; defaults to `name`.
    #[serde(default)]
    pub column: Option<String>,
    /// Standardize with mean and standard deviation fitted on the training data.
    #[serde(default)]
    pub standardize: bool,
    /// Value used for a missing cell (empty or `NaN`); without it a missing cell is an
    /// error.
    #[serde(default)]
    pub default: Option<f32>,
}

/// What a label measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelKind {
    /// 0 or 1; predicted as a probability.
    Binary,
    /// Any finite number; predicted as a value.
    Regression,
}

/// One training target.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelField {
    /// Label name, referred to by model configs.
    pub name: String,
    /// CSV column; defaults to `name`.
    #[serde(default)]
    pub column: Option<String>,
    /// Instead of a column: an expression over other columns of the row (a derived label,
    /// see [`crate::expr`]), e.g. `"click and purchase"` or `"income == \">50K\""`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    /// `binary` or `regression`.
    pub kind: LabelKind,
}

/// The whole feature schema of a data set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// Width of every embedding row (all fields share one table layout of this width).
    #[serde(default = "default_embed_dim")]
    pub embed_dim: usize,
    /// Standard deviation of the normal initialisation of embedding rows (torch-rechub: 1e-4).
    #[serde(default = "default_init_std")]
    pub embed_init_std: f64,
    /// Categorical fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sparse: Vec<SparseField>,
    /// Multi-hot fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sequence: Vec<SequenceField>,
    /// Numeric fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dense: Vec<DenseField>,
    /// Targets, one per task.
    pub labels: Vec<LabelField>,
}

impl Schema {
    /// A schema with no fields yet, embedding width `embed_dim` and the default init.
    pub fn new(embed_dim: usize) -> Self {
        Self {
            embed_dim,
            embed_init_std: default_init_std(),
            sparse: Vec::new(),
            sequence: Vec::new(),
            dense: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// The schema as TOML text (what a schema file holds).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a schema serialises")
    }
}

/// The default embedding width of a schema that names none.
pub const DEFAULT_EMBED_DIM: usize = 16;

impl SparseField {
    /// A sparse field with a fixed vocabulary of `vocab_size` ids (no group, no other keys).
    pub fn new(name: &str, vocab_size: usize) -> Self {
        Self {
            name: name.to_string(),
            names: Vec::new(),
            column: None,
            vocab_size: Some(vocab_size),
            oov: None,
            fit: None,
            min_count: None,
            hash_buckets: None,
            shared_with: None,
            group: None,
            embed_dim: None,
        }
    }
}

impl DenseField {
    /// A dense field read as it is (not standardised, no default).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            names: Vec::new(),
            column: None,
            standardize: false,
            default: None,
        }
    }
}

impl LabelField {
    /// A label of `kind` read from the column of its name.
    pub fn new(name: &str, kind: LabelKind) -> Self {
        Self {
            name: name.to_string(),
            column: None,
            expr: None,
            kind,
        }
    }
}

/// A sparse or sequence field seen uniformly (sparse fields first, then sequences).
#[derive(Debug, Clone, Copy)]
pub struct IdField<'a> {
    /// Field name.
    pub name: &'a str,
    /// CSV column.
    pub column: &'a str,
    /// Group tag.
    pub group: Option<&'a str>,
    /// Key prefix for messages, e.g. `sparse[2]`.
    pub key: &'static str,
    /// Index within its own list.
    pub index: usize,
}

/// The vocabulary keys of an id field (sparse or sequence), as written.
struct VocabKeys<'a> {
    vocab_size: Option<usize>,
    oov: Option<OovPolicy>,
    fit: Option<bool>,
    min_count: Option<u64>,
    hash_buckets: Option<usize>,
    shared_with: &'a Option<String>,
}

fn resolve_vocab(file: &str, key: &str, keys: VocabKeys<'_>) -> Result<VocabSpec, FeatureError> {
    let VocabKeys {
        vocab_size,
        oov,
        fit,
        min_count,
        hash_buckets,
        shared_with,
    } = keys;
    let invalid = |k: &str, message: String| schema_invalid(file, format!("{key}.{k}"), message);
    let fit = fit.unwrap_or(false);
    let given = [
        vocab_size.is_some(),
        fit,
        hash_buckets.is_some(),
        shared_with.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given != 1 {
        return Err(invalid(
            "vocab_size",
            format!(
                "give exactly one of `vocab_size`, `fit = true`, `hash_buckets`, `shared_with` (found {given})"
            ),
        ));
    }
    if min_count.is_some() && !fit {
        return Err(invalid("min_count", "only allowed with `fit = true`".into()));
    }
    if oov.is_some() && vocab_size.is_none() {
        return Err(invalid(
            "oov",
            "only allowed with `vocab_size` (a fitted vocabulary maps unseen values to id 0, hashing has no outside)".into(),
        ));
    }
    Ok(if let Some(size) = vocab_size {
        if size == 0 || size > MAX_ROWS {
            return Err(invalid(
                "vocab_size",
                format!("= {size}: must be between 1 and {MAX_ROWS} (ids are 32-bit)"),
            ));
        }
        VocabSpec::Ids {
            size,
            bucket: oov == Some(OovPolicy::Bucket),
        }
    } else if fit {
        VocabSpec::Fit {
            min_count: min_count.unwrap_or(default_min_count()).max(1),
        }
    } else if let Some(buckets) = hash_buckets {
        if buckets == 0 || buckets > MAX_ROWS {
            return Err(invalid(
                "hash_buckets",
                format!("= {buckets}: must be between 1 and {MAX_ROWS} (ids are 32-bit)"),
            ));
        }
        VocabSpec::Hash { buckets }
    } else {
        VocabSpec::Shared {
            with: shared_with.clone().unwrap_or_default(),
        }
    })
}

impl SparseField {
    /// The CSV column this field reads.
    pub fn column(&self) -> &str {
        self.column.as_deref().unwrap_or(&self.name)
    }
}
impl SequenceField {
    /// A mean-pooled sequence field of up to `max_len` ids, `|`-separated, its vocabulary fitted.
    pub fn new(name: &str, max_len: usize) -> Self {
        Self {
            name: name.to_string(),
            names: Vec::new(),
            column: None,
            delimiter: default_delimiter(),
            max_len,
            pooling: PoolingSpec::default(),
            vocab_size: None,
            oov: None,
            fit: Some(true),
            min_count: None,
            hash_buckets: None,
            shared_with: None,
            group: None,
            embed_dim: None,
        }
    }

    /// The CSV column this field reads.
    pub fn column(&self) -> &str {
        self.column.as_deref().unwrap_or(&self.name)
    }
}
impl DenseField {
    /// The CSV column this field reads.
    pub fn column(&self) -> &str {
        self.column.as_deref().unwrap_or(&self.name)
    }
}
impl LabelField {
    /// The CSV column this label reads.
    pub fn column(&self) -> &str {
        self.column.as_deref().unwrap_or(&self.name)
    }
}

/// A schema that passed validation, with vocabulary specs resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValidSchema {
    /// The schema as written.
    pub schema: Schema,
    /// One vocabulary spec per id field (sparse fields first, then sequences).
    pub vocab: Vec<VocabSpec>,
    /// For each id field, the id field whose table it uses (itself unless shared).
    pub owner: Vec<usize>,
    /// For each id field, its embedding width.
    pub dims: Vec<usize>,
}

/// An entry that may stand for several fields through `names` patterns.
trait Patterned: Clone {
    fn name(&self) -> &str;
    fn patterns(&self) -> &[String];
    fn column(&self) -> Option<&str>;
    /// This entry as the one field for `column`.
    fn for_column(&self, column: &str) -> Self;
}

macro_rules! patterned {
    ($($t:ty),*) => {$(
        impl Patterned for $t {
            fn name(&self) -> &str {
                &self.name
            }
            fn patterns(&self) -> &[String] {
                &self.names
            }
            fn column(&self) -> Option<&str> {
                self.column.as_deref()
            }
            fn for_column(&self, column: &str) -> Self {
                Self {
                    name: column.to_string(),
                    names: Vec::new(),
                    column: None,
                    ..self.clone()
                }
            }
        }
    )*};
}
patterned!(SparseField, SequenceField, DenseField);

/// Expands one list's pattern entries over `header`'s columns that are not `taken`, marking
/// the ones it uses; `claimed` remembers which entry took a column, for the error when two
/// patterns match the same one.
fn expand_list<F: Patterned>(
    list: &[F],
    kind: &str,
    header: &[String],
    taken: &mut HashSet<String>,
    claimed: &mut HashMap<String, String>,
    invalid: &impl Fn(String, String) -> FeatureError,
) -> Result<Vec<F>, FeatureError> {
    let mut out = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        if entry.patterns().is_empty() {
            out.push(entry.clone());
            continue;
        }
        let key = format!("{kind}[{i}].names");
        if !entry.name().is_empty() || entry.column().is_some() {
            return Err(invalid(
                key,
                "give either `name` (and `column`) or `names` patterns, not both".into(),
            ));
        }
        let mut patterns = Vec::new();
        for text in entry.patterns() {
            let pattern = glob::Pattern::new(text)
                .map_err(|e| invalid(key.clone(), format!("`{text}` is not a valid pattern: {e}")))?;
            patterns.push((text, pattern, false, Vec::new()));
        }
        for column in header {
            let mut hit = false;
            for (_, pattern, used, elsewhere) in patterns.iter_mut() {
                if pattern.matches(column) {
                    // a column a label or an explicit entry has does not count as a match
                    match taken.contains(column) {
                        true => elsewhere.push(column.clone()),
                        false => *used = true,
                    }
                    hit = true;
                }
            }
            if !hit {
                continue;
            }
            if let Some(other) = claimed.get(column) {
                return Err(invalid(
                    key,
                    format!(
                        "column `{column}` matches both these patterns and {other}'s; make them disjoint"
                    ),
                ));
            }
            if taken.contains(column) {
                // named by an explicit entry: that entry has it
                continue;
            }
            claimed.insert(column.clone(), key.trim_end_matches(".names").to_string());
            out.push(entry.for_column(column));
        }
        if let Some((text, _, _, elsewhere)) = patterns.iter().find(|(_, _, used, _)| !used) {
            if !elsewhere.is_empty() {
                return Err(invalid(
                    key,
                    format!(
                        "the pattern `{text}` matches only columns other entries have ({}: labels or fields named on their own): it adds no field",
                        elsewhere.join(", ")
                    ),
                ));
            }
            let shown: Vec<&str> = header.iter().take(12).map(String::as_str).collect();
            return Err(invalid(
                key,
                format!(
                    "the pattern `{text}` matches no column of the header ({}{})",
                    shown.join(", "),
                    if header.len() > shown.len() { ", …" } else { "" }
                ),
            ));
        }
    }
    for f in &out {
        taken.insert(f.column().unwrap_or(f.name()).to_string());
    }
    Ok(out)
}

impl Schema {
    /// The key of the first entry with `names` patterns, if any.
    pub fn first_pattern(&self) -> Option<String> {
        let sparse = self
            .sparse
            .iter()
            .position(|f| !f.names.is_empty())
            .map(|i| format!("sparse[{i}].names"));
        let sequence = || {
            self.sequence
                .iter()
                .position(|f| !f.names.is_empty())
                .map(|i| format!("sequence[{i}].names"))
        };
        let dense = || {
            self.dense
                .iter()
                .position(|f| !f.names.is_empty())
                .map(|i| format!("dense[{i}].names"))
        };
        sparse.or_else(sequence).or_else(dense)
    }

    /// Whether some entry gives `names` patterns (to expand with [`Schema::expand`]).
    pub fn has_patterns(&self) -> bool {
        self.first_pattern().is_some()
    }

    /// Replaces every entry with `names` patterns by one field per matching column of
    /// `header` (in header order), leaving out columns that an entry or label names explicitly.
    /// A pattern that matches nothing, a column matched by two pattern entries, or an entry
    /// with both `name` and `names` is an error naming `file` and the key.
    pub fn expand(mut self, header: &[String], file: &str) -> Result<Schema, FeatureError> {
        let invalid = |key: String, message: String| schema_invalid(file, key, message);
        let mut taken: HashSet<String> = HashSet::new();
        let explicit = |name: &str, column: Option<&str>, patterns: &[String]| {
            patterns.is_empty().then(|| column.unwrap_or(name).to_string())
        };
        taken.extend(
            self.sparse
                .iter()
                .filter_map(|f| explicit(&f.name, f.column.as_deref(), &f.names)),
        );
        taken.extend(
            self.sequence
                .iter()
                .filter_map(|f| explicit(&f.name, f.column.as_deref(), &f.names)),
        );
        taken.extend(
            self.dense
                .iter()
                .filter_map(|f| explicit(&f.name, f.column.as_deref(), &f.names)),
        );
        taken.extend(
            self.labels
                .iter()
                .map(|l| l.column.clone().unwrap_or_else(|| l.name.clone())),
        );
        let mut claimed = HashMap::new();
        self.sparse = expand_list(&self.sparse, "sparse", header, &mut taken, &mut claimed, &invalid)?;
        self.sequence = expand_list(
            &self.sequence,
            "sequence",
            header,
            &mut taken,
            &mut claimed,
            &invalid,
        )?;
        self.dense = expand_list(&self.dense, "dense", header, &mut taken, &mut claimed, &invalid)?;
        Ok(self)
    }

    /// Parses schema TOML without validating it (patterns may still need expanding).
    pub fn parse(text: &str, file: &str) -> Result<Schema, FeatureError> {
        toml::from_str(text).map_err(|e| FeatureError::SchemaParse {
            file: file.to_string(),
            message: crate::toml_error_line(text, &e),
        })
    }

    /// Reads and validates a schema file; errors name the file and the key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<ValidSchema, FeatureError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| FeatureError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates schema TOML; `file` names the source in errors.
    pub fn from_toml_str(text: &str, file: &str) -> Result<ValidSchema, FeatureError> {
        Self::parse(text, file)?.validate(file)
    }

    /// Checks names, vocabularies and sharing; returns the resolved schema.
    pub fn validate(self, file: &str) -> Result<ValidSchema, FeatureError> {
        self.check_values(file)?;
        self.check_fields(file)?;
        let vocab = self.vocabularies(file)?;
        let id_names: Vec<&str> = self
            .sparse
            .iter()
            .map(|f| f.name.as_str())
            .chain(self.sequence.iter().map(|f| f.name.as_str()))
            .collect();
        let owner = self.table_owners(file, &vocab, &id_names)?;
        let dims = self.table_widths(file, &owner, &id_names)?;
        self.check_attention(file, &dims)?;
        Ok(ValidSchema {
            schema: self,
            vocab,
            owner,
            dims,
        })
    }

    /// The schema-wide values: embedding width and init, dense defaults, at least one label
    /// and one input field, no unexpanded patterns.
    fn check_values(&self, file: &str) -> Result<(), FeatureError> {
        if self.embed_dim == 0 || self.embed_dim > MAX_EMBED_DIM {
            return Err(schema_invalid(
                file,
                "embed_dim".into(),
                format!("= {}: must be between 1 and {MAX_EMBED_DIM}", self.embed_dim),
            ));
        }
        if !(self.embed_init_std.is_finite() && (0.0..=10.0).contains(&self.embed_init_std)) {
            return Err(schema_invalid(
                file,
                "embed_init_std".into(),
                format!("= {}: must be between 0 and 10", self.embed_init_std),
            ));
        }
        for (i, d) in self.dense.iter().enumerate() {
            if let Some(v) = d.default
                && !v.is_finite()
            {
                return Err(schema_invalid(
                    file,
                    format!("dense[{i}].default"),
                    format!("= {v}: must be a finite number"),
                ));
            }
        }
        if self.labels.is_empty() {
            return Err(schema_invalid(
                file,
                "labels".into(),
                "at least one label is required".into(),
            ));
        }
        for (i, label) in self.labels.iter().enumerate() {
            let Some(src) = &label.expr else { continue };
            if label.column.is_some() {
                return Err(schema_invalid(
                    file,
                    format!("labels[{i}]"),
                    "gives both `column` and `expr`: a label reads one column or derives from several".into(),
                ));
            }
            if let Err(e) = crate::expr::Expr::parse(src) {
                return Err(schema_invalid(
                    file,
                    format!("labels[{i}].expr"),
                    format!("= {src:?}: {e}"),
                ));
            }
        }
        if self.sparse.is_empty() && self.sequence.is_empty() && self.dense.is_empty() {
            return Err(schema_invalid(
                file,
                "sparse".into(),
                "the schema has no input fields".into(),
            ));
        }
        if let Some(key) = self.first_pattern() {
            return Err(schema_invalid(
                file,
                key,
                "holds column-name patterns, which are expanded against the training data's header; \
                 load it together with the data, as `mtl train` does"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Every field and label named, each name once; sequences' lengths and delimiters.
    fn check_fields(&self, file: &str) -> Result<(), FeatureError> {
        let mut names = HashSet::new();
        let all_names = self
            .sparse
            .iter()
            .enumerate()
            .map(|(i, f)| (format!("sparse[{i}].name"), &f.name))
            .chain(
                self.sequence
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (format!("sequence[{i}].name"), &f.name)),
            )
            .chain(
                self.dense
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (format!("dense[{i}].name"), &f.name)),
            )
            .chain(
                self.labels
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (format!("labels[{i}].name"), &f.name)),
            );
        for (key, name) in all_names {
            if name.is_empty() {
                return Err(schema_invalid(
                    file,
                    key,
                    "missing or empty: give a `name` (or, for an input field, `names` patterns)".into(),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(schema_invalid(
                    file,
                    key,
                    format!("the name `{name}` is used twice"),
                ));
            }
        }
        for (i, s) in self.sequence.iter().enumerate() {
            if s.max_len == 0 || s.max_len > MAX_SEQUENCE {
                return Err(schema_invalid(
                    file,
                    format!("sequence[{i}].max_len"),
                    format!("= {}: must be between 1 and {MAX_SEQUENCE}", s.max_len),
                ));
            }
            if s.delimiter.is_empty() {
                return Err(schema_invalid(
                    file,
                    format!("sequence[{i}].delimiter"),
                    "must not be empty".into(),
                ));
            }
        }
        Ok(())
    }

    /// Each target attention: its query names sparse fields, once each, as wide together as
    /// the sequence's own embeddings; its MLP's widths in range.
    fn check_attention(&self, file: &str, dims: &[usize]) -> Result<(), FeatureError> {
        for (i, s) in self.sequence.iter().enumerate() {
            let PoolingSpec::Attention(a) = &s.pooling else {
                continue;
            };
            let key = |k: &str| format!("sequence[{i}].pooling.{k}");
            if a.query.is_empty() {
                return Err(schema_invalid(
                    file,
                    key("query"),
                    "is empty: name the sparse field(s) of the target (e.g. [\"item_id\"])".into(),
                ));
            }
            let mut width = 0;
            for (q, name) in a.query.iter().enumerate() {
                let Some(f) = self.sparse.iter().position(|f| &f.name == name) else {
                    return Err(schema_invalid(
                        file,
                        key(&format!("query[{q}]")),
                        format!("= \"{name}\" is not a sparse field of the schema"),
                    ));
                };
                if a.query[..q].contains(name) {
                    return Err(schema_invalid(
                        file,
                        key(&format!("query[{q}]")),
                        format!("= \"{name}\" is named twice"),
                    ));
                }
                width += dims[f];
            }
            let own = dims[self.sparse.len() + i];
            if width != own {
                return Err(schema_invalid(
                    file,
                    key("query"),
                    format!(
                        "is {width} wide but `{}`'s embeddings are {own} wide: the query and the keys need one width",
                        s.name
                    ),
                ));
            }
            if let Some((d, &w)) = a.dims.iter().enumerate().find(|(_, w)| **w == 0 || **w > 65_536) {
                return Err(schema_invalid(
                    file,
                    key(&format!("dims[{d}]")),
                    format!("= {w}: a layer width must be between 1 and 65536"),
                ));
            }
        }
        Ok(())
    }

    /// Each id field's vocabulary (sparse fields, then sequences).
    fn vocabularies(&self, file: &str) -> Result<Vec<VocabSpec>, FeatureError> {
        let mut vocab = Vec::new();
        for (i, f) in self.sparse.iter().enumerate() {
            vocab.push(resolve_vocab(
                file,
                &format!("sparse[{i}]"),
                VocabKeys {
                    vocab_size: f.vocab_size,
                    oov: f.oov,
                    fit: f.fit,
                    min_count: f.min_count,
                    hash_buckets: f.hash_buckets,
                    shared_with: &f.shared_with,
                },
            )?);
        }
        for (i, f) in self.sequence.iter().enumerate() {
            vocab.push(resolve_vocab(
                file,
                &format!("sequence[{i}]"),
                VocabKeys {
                    vocab_size: f.vocab_size,
                    oov: f.oov,
                    fit: f.fit,
                    min_count: f.min_count,
                    hash_buckets: f.hash_buckets,
                    shared_with: &f.shared_with,
                },
            )?);
        }
        Ok(vocab)
    }

    /// Each id field's table owner: itself, or the field it shares with (which must own a
    /// table of its own).
    fn table_owners(
        &self,
        file: &str,
        vocab: &[VocabSpec],
        id_names: &[&str],
    ) -> Result<Vec<usize>, FeatureError> {
        let index: HashMap<&str, usize> = id_names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut owner = Vec::with_capacity(vocab.len());
        for (i, v) in vocab.iter().enumerate() {
            let key = if i < self.sparse.len() {
                format!("sparse[{i}].shared_with")
            } else {
                format!("sequence[{}].shared_with", i - self.sparse.len())
            };
            match v {
                VocabSpec::Shared { with } => {
                    let Some(&j) = index.get(with.as_str()) else {
                        return Err(schema_invalid(
                            file,
                            key,
                            format!("no sparse or sequence field is named `{with}`"),
                        ));
                    };
                    if matches!(vocab[j], VocabSpec::Shared { .. }) {
                        return Err(schema_invalid(
                            file,
                            key,
                            format!("`{with}` itself shares another table; name the owner"),
                        ));
                    }
                    owner.push(j);
                }
                _ => owner.push(i),
            }
        }
        Ok(owner)
    }

    /// Each id field's embedding width: a field's own, else the schema's; a sharing field has
    /// its owner's (and may only repeat it).
    fn table_widths(
        &self,
        file: &str,
        owner: &[usize],
        id_names: &[&str],
    ) -> Result<Vec<usize>, FeatureError> {
        // widths: a field's own, else the schema's; a sharing field has its owner's
        let given: Vec<Option<usize>> = self
            .sparse
            .iter()
            .map(|f| f.embed_dim)
            .chain(self.sequence.iter().map(|f| f.embed_dim))
            .collect();
        let mut dims = Vec::with_capacity(given.len());
        for (i, g) in given.iter().enumerate() {
            let key = if i < self.sparse.len() {
                format!("sparse[{i}].embed_dim")
            } else {
                format!("sequence[{}].embed_dim", i - self.sparse.len())
            };
            if let Some(d) = g
                && (*d == 0 || *d > MAX_EMBED_DIM)
            {
                return Err(schema_invalid(
                    file,
                    key,
                    format!("= {d}: must be between 1 and {MAX_EMBED_DIM}"),
                ));
            }
            let own = given[owner[i]].unwrap_or(self.embed_dim);
            if owner[i] != i
                && let Some(d) = g
                && *d != own
            {
                return Err(schema_invalid(
                    file,
                    key,
                    format!(
                        "= {d}: the field shares `{}`'s table, whose rows are {own} wide (leave it out)",
                        id_names[owner[i]]
                    ),
                ));
            }
            dims.push(own);
        }
        Ok(dims)
    }
}

impl ValidSchema {
    /// The embedding table's row width: the greatest common divisor of the id fields'
    /// widths (the schema's `embed_dim` when there are none). A field `d` wide owns `d / width`
    /// consecutive rows per id.
    pub fn table_width(&self) -> usize {
        fn gcd(a: usize, b: usize) -> usize {
            if b == 0 { a } else { gcd(b, a % b) }
        }
        self.dims
            .iter()
            .copied()
            .reduce(gcd)
            .unwrap_or(self.schema.embed_dim)
    }

    /// Table rows per id of each id field (`embed_dim / table_width`).
    pub fn slots(&self) -> Vec<usize> {
        let w = self.table_width();
        self.dims.iter().map(|d| d / w).collect()
    }

    /// Number of sparse (single-id) fields.
    pub fn n_sparse(&self) -> usize {
        self.schema.sparse.len()
    }
    /// Number of sequence fields.
    pub fn n_sequence(&self) -> usize {
        self.schema.sequence.len()
    }
    /// Number of dense fields.
    pub fn n_dense(&self) -> usize {
        self.schema.dense.len()
    }
    /// Number of labels.
    pub fn n_labels(&self) -> usize {
        self.schema.labels.len()
    }
    /// The id fields (sparse then sequence) in table order.
    pub fn id_fields(&self) -> Vec<IdField<'_>> {
        let s = &self.schema;
        s.sparse
            .iter()
            .enumerate()
            .map(|(i, f)| IdField {
                name: &f.name,
                column: f.column(),
                group: f.group.as_deref(),
                key: "sparse",
                index: i,
            })
            .chain(s.sequence.iter().enumerate().map(|(i, f)| IdField {
                name: &f.name,
                column: f.column(),
                group: f.group.as_deref(),
                key: "sequence",
                index: i,
            }))
            .collect()
    }
    /// Index of a label by name.
    pub fn label_index(&self, name: &str) -> Option<usize> {
        self.schema.labels.iter().position(|l| l.name == name)
    }
    /// The label names in order.
    pub fn label_names(&self) -> Vec<String> {
        self.schema.labels.iter().map(|l| l.name.clone()).collect()
    }
}

/// A schema key whose value cannot work, naming the file.
fn schema_invalid(file: &str, key: String, message: String) -> FeatureError {
    FeatureError::SchemaInvalid {
        file: file.to_string(),
        key,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
embed_dim = 8
[[sparse]]
name = "user"
vocab_size = 10
group = "user"
[[sparse]]
name = "item"
fit = true
min_count = 2
group = "item"
[[sparse]]
name = "cat"
hash_buckets = 7
[[sparse]]
name = "item2"
shared_with = "item"
[[sequence]]
name = "hist"
max_len = 3
pooling = "sum"
shared_with = "item"
[[dense]]
name = "price"
standardize = true
default = 0.0
[[labels]]
name = "click"
kind = "binary"
"#;

    #[test]
    fn good_schema_resolves_vocab_and_owners() {
        let s = Schema::from_toml_str(GOOD, "good.toml").unwrap();
        assert_eq!(
            s.vocab[0],
            VocabSpec::Ids {
                size: 10,
                bucket: false
            }
        );
        assert_eq!(s.vocab[1], VocabSpec::Fit { min_count: 2 });
        assert_eq!(s.vocab[2], VocabSpec::Hash { buckets: 7 });
        assert_eq!(s.owner, vec![0, 1, 2, 1, 1]);
        assert_eq!(s.schema.sequence[0].pooling.kind(), SequencePooling::Sum);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = GOOD.replace("standardize = true", "standardise = true");
        let err = Schema::from_toml_str(&text, "s.toml").unwrap_err().to_string();
        assert!(err.starts_with("s.toml"), "{err}");
        assert!(err.contains("standardise"), "{err}");
    }

    #[test]
    fn missing_labels_is_named() {
        let text = "[[sparse]]\nname = \"a\"\nvocab_size = 3\n";
        let err = Schema::from_toml_str(text, "s.toml").unwrap_err().to_string();
        assert!(err.contains("labels"), "{err}");
        let text = "labels = []\n[[sparse]]\nname = \"a\"\nvocab_size = 3\n";
        let err = Schema::from_toml_str(text, "s.toml").unwrap_err().to_string();
        assert!(err.contains("`labels`"), "{err}");
    }

    #[test]
    fn bad_type_is_named() {
        let text = GOOD.replace("vocab_size = 10", "vocab_size = \"ten\"");
        let err = Schema::from_toml_str(&text, "s.toml").unwrap_err().to_string();
        assert!(err.contains("vocab_size"), "{err}");
        let text = GOOD.replace("kind = \"binary\"", "kind = \"ordinal\"");
        let err = Schema::from_toml_str(&text, "s.toml").unwrap_err().to_string();
        assert!(err.contains("ordinal"), "{err}");
    }

    #[test]
    fn conflicting_or_dangling_vocab_is_named() {
        let text = GOOD.replace("hash_buckets = 7", "hash_buckets = 7\nvocab_size = 3");
        let err = Schema::from_toml_str(&text, "s.toml").unwrap_err().to_string();
        assert!(err.contains("sparse[2].vocab_size"), "{err}");
        let text = GOOD.replace("shared_with = \"item\"\n[[seq", "shared_with = \"nope\"\n[[seq");
        let err = Schema::from_toml_str(&text, "s.toml").unwrap_err().to_string();
        assert!(
            err.contains("sparse[3].shared_with") && err.contains("nope"),
            "{err}"
        );
        let text = GOOD.replace("name = \"cat\"", "name = \"user\"");
        let err = Schema::from_toml_str(&text, "s.toml").unwrap_err().to_string();
        assert!(err.contains("sparse[2].name"), "{err}");
    }

    /// `id, categorical_1..16, numerical_1..63, click, purchase`: a wide public layout.
    fn wide_header() -> Vec<String> {
        let mut h = vec!["id".to_string()];
        h.extend((1..=16).map(|i| format!("categorical_{i}")));
        h.extend((1..=63).map(|i| format!("numerical_{i}")));
        h.extend(["click".to_string(), "purchase".to_string()]);
        h
    }

    const WIDE: &str = r#"[[sparse]]
names = ["categorical_*"]
fit = true
[[dense]]
names = ["numerical_*"]
standardize = true
[[labels]]
name = "click"
kind = "binary"
[[labels]]
name = "purchase"
kind = "binary"
"#;

    #[test]
    fn name_patterns_expand_over_the_header_in_order() {
        assert!(WIDE.lines().count() <= 15, "the wide schema fits in 15 lines");
        let raw = Schema::parse(WIDE, "w.toml").unwrap();
        assert!(raw.has_patterns());
        // unexpanded, validation refuses it and says why
        let err = raw.clone().validate("w.toml").unwrap_err().to_string();
        assert!(err.contains("sparse[0].names") && err.contains("header"), "{err}");
        let s = raw
            .expand(&wide_header(), "w.toml")
            .unwrap()
            .validate("w.toml")
            .unwrap();
        assert_eq!(s.n_sparse(), 16);
        assert_eq!(s.schema.dense.len(), 63);
        let sparse: Vec<&str> = s.schema.sparse.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(sparse[0], "categorical_1");
        assert_eq!(sparse[15], "categorical_16");
        assert!(
            s.schema
                .sparse
                .iter()
                .all(|f| f.fit == Some(true) && f.names.is_empty())
        );
        assert_eq!(s.schema.dense[62].name, "numerical_63");
        assert!(s.schema.dense.iter().all(|f| f.standardize));
        // the id column is matched by no pattern and read by no field
        assert!(!sparse.contains(&"id") && s.schema.dense.iter().all(|f| f.name != "id"));
        // the expanded schema round-trips through TOML with no patterns left
        let text = toml::to_string(&s.schema).unwrap();
        assert!(!text.contains("names"), "{text}");
        let again = Schema::from_toml_str(&text, "again").unwrap();
        assert_eq!(again.n_sparse(), 16);
    }

    #[test]
    fn explicit_entries_win_and_patterns_share_and_group() {
        let text = r#"
[[sparse]]
name = "item_id"
vocab_size = 100
group = "item"
[[sparse]]
names = ["hist_item_?"]
shared_with = "item_id"
group = "item"
[[sparse]]
name = "categorical_1"
hash_buckets = 10
[[sparse]]
names = ["categorical_*"]
vocab_size = 5
[[labels]]
name = "click"
kind = "binary"
"#;
        let header: Vec<String> = [
            "item_id",
            "hist_item_1",
            "hist_item_2",
            "categorical_1",
            "categorical_2",
            "click",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect();
        let s = Schema::parse(text, "p.toml")
            .unwrap()
            .expand(&header, "p.toml")
            .unwrap()
            .validate("p.toml")
            .unwrap();
        let names: Vec<&str> = s.schema.sparse.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "item_id",
                "hist_item_1",
                "hist_item_2",
                "categorical_1",
                "categorical_2"
            ]
        );
        // the history fields use item_id's table, in item_id's group
        assert_eq!(s.owner[1], 0);
        assert_eq!(s.owner[2], 0);
        assert_eq!(s.schema.sparse[2].group.as_deref(), Some("item"));
        // categorical_1 keeps its explicit entry; the pattern took only categorical_2
        assert_eq!(s.vocab[3], VocabSpec::Hash { buckets: 10 });
        assert_eq!(
            s.vocab[4],
            VocabSpec::Ids {
                size: 5,
                bucket: false
            }
        );
    }

    #[test]
    fn bad_patterns_are_errors_naming_the_key() {
        let header = wide_header();
        let expand = |text: &str| {
            Schema::parse(text, "b.toml")
                .unwrap()
                .expand(&header, "b.toml")
                .and_then(|s| s.validate("b.toml"))
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        let labels = "[[labels]]\nname = \"click\"\nkind = \"binary\"\n";
        let err = expand(&format!("[[sparse]]\nnames = [\"cat_*\"]\nfit = true\n{labels}"));
        assert!(
            err.contains("sparse[0].names")
                && err.contains("`cat_*` matches no column")
                && err.contains("categorical_1"),
            "{err}"
        );
        let err = expand(&format!(
            "[[sparse]]\nnames = [\"categorical_1*\"]\nfit = true\n[[dense]]\nnames = [\"categorical_*\"]\n{labels}"
        ));
        assert!(
            err.contains("dense[0].names") && err.contains("categorical_1") && err.contains("both"),
            "{err}"
        );
        // a pattern whose only matches are a label: an error, not a pattern that adds nothing
        let err = expand(&format!(
            "[[sparse]]\nnames = [\"categorical_*\"]\nfit = true\n[[dense]]\nnames = [\"cli*\"]\n{labels}"
        ));
        assert!(
            err.contains("dense[0].names")
                && err.contains("`cli*` matches only columns other entries have (click"),
            "{err}"
        );
        let err = expand(&format!(
            "[[sparse]]\nname = \"x\"\nnames = [\"categorical_*\"]\nfit = true\n{labels}"
        ));
        assert!(
            err.contains("sparse[0].names") && err.contains("not both"),
            "{err}"
        );
        let err = expand(&format!("[[dense]]\nnames = [\"numerical_[\"]\n{labels}"));
        assert!(
            err.contains("dense[0].names") && err.contains("not a valid pattern"),
            "{err}"
        );
        let err = expand(&format!("[[dense]]\nstandardize = true\n{labels}"));
        assert!(err.contains("dense[0].name") && err.contains("names"), "{err}");
    }
}
