//! The input layer every model shares: one embedding table for all id fields, sequence
//! pooling, pooling across fields (`concat` or `sum` per group), dense features appended.
//!
//! All id fields live in one `[total_rows, width]` table (each field owns a block of rows,
//! shared fields point at their owner's block), so one gather serves a whole batch and a
//! row-sparse optimiser has one table to update. Fields may have their own `embed_dim`: the
//! table is as wide as the greatest common divisor of the widths, and a field `d` wide owns
//! `d / width` consecutive rows per id, read together as one `d`-wide vector — no padding, and
//! the row-sparse update sees ordinary rows.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::FeatureError;
use crate::attention::TargetAttention;
use crate::batch::BatchTensors;
use crate::schema::{PoolingSpec, SequencePooling, ValidSchema};
use crate::state::TableLayout;

/// How the per-field embeddings become one vector per row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FieldPooling {
    /// Flatten `[batch, fields, dim]` to `[batch, fields · dim]`.
    #[default]
    Concat,
    /// Sum the fields of each named group, then concatenate the sums: `[batch, groups · dim]`
    /// (ESMM's original input: user fields summed, item fields summed).
    SumByGroup(Vec<String>),
}

/// Resolved, non-trainable description of the input layer.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    /// The table's row width.
    pub dim: usize,
    /// Per id field (sparse, then sequence): its embedding width, a multiple of `dim`.
    pub dims: Vec<usize>,
    /// Sparse fields.
    pub n_sparse: usize,
    /// Per sequence field: (start column, max_len, pooling).
    pub sequences: Vec<(usize, usize, SequencePooling)>,
    /// Dense fields appended after pooling.
    pub n_dense: usize,
    /// For group pooling: the field indices (into `[sparse…, sequence…]`) of each group.
    pub groups: Option<Vec<Vec<usize>>>,
    /// The sequence fields pooled by target attention, in order.
    pub attention: Vec<AttentionPlan>,
}

/// One sequence field's target attention, resolved against the schema.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionPlan {
    /// The sequence field (index among the sequence fields).
    pub sequence: usize,
    /// The sparse fields of the query, in order.
    pub query: Vec<usize>,
    /// The keys' (and the query's) width.
    pub width: usize,
    /// The attention MLP's hidden widths.
    pub dims: Vec<usize>,
    /// Softmax over the present ids (else DIN's raw weights).
    pub softmax: bool,
}

impl InputSpec {
    /// Resolves the input of `schema` pooled by `pooling`; a group with no field is an error.
    pub fn new(schema: &ValidSchema, pooling: &FieldPooling) -> Result<Self, FeatureError> {
        let mut start = 0;
        let sequences = schema
            .schema
            .sequence
            .iter()
            .map(|s| {
                let entry = (start, s.max_len, s.pooling.kind());
                start += s.max_len;
                entry
            })
            .collect();
        let attention = (schema.schema.sequence.iter().enumerate())
            .filter_map(|(i, s)| match &s.pooling {
                PoolingSpec::Attention(a) => Some(AttentionPlan {
                    sequence: i,
                    query: (a.query.iter())
                        .map(|q| schema.schema.sparse.iter().position(|f| &f.name == q))
                        .collect::<Option<Vec<usize>>>()?,
                    width: schema.dims[schema.n_sparse() + i],
                    dims: a.dims.clone(),
                    softmax: a.softmax,
                }),
                PoolingSpec::Plain(_) => None,
            })
            .collect();
        let groups = match pooling {
            FieldPooling::Concat => None,
            FieldPooling::SumByGroup(names) => {
                let fields = schema.id_fields();
                let mut groups = Vec::new();
                for name in names {
                    let members: Vec<usize> = fields
                        .iter()
                        .enumerate()
                        .filter(|(_, f)| f.group == Some(name.as_str()))
                        .map(|(i, _)| i)
                        .collect();
                    if members.is_empty() {
                        return Err(FeatureError::SchemaInvalid {
                            file: "<model config>".into(),
                            key: "pooling.sum_by_group".into(),
                            message: format!("no sparse or sequence field has group = \"{name}\""),
                        });
                    }
                    let width = schema.dims[members[0]];
                    if let Some(&m) = members.iter().find(|&&m| schema.dims[m] != width) {
                        return Err(FeatureError::SchemaInvalid {
                            file: "<model config>".into(),
                            key: "pooling.sum_by_group".into(),
                            message: format!(
                                "group \"{name}\" sums fields of different embed_dim (`{}` {width}, `{}` {}); give its fields one width",
                                fields[members[0]].name, fields[m].name, schema.dims[m]
                            ),
                        });
                    }
                    groups.push(members);
                }
                Some(groups)
            }
        };
        Ok(Self {
            dim: schema.table_width(),
            dims: schema.dims.clone(),
            n_sparse: schema.n_sparse(),
            sequences,
            n_dense: schema.n_dense(),
            groups,
            attention,
        })
    }

    /// Number of id fields (sparse + sequence).
    pub fn n_fields(&self) -> usize {
        self.n_sparse + self.sequences.len()
    }

    /// Width of the layer's output.
    pub fn output_dim(&self) -> usize {
        let pooled: usize = match &self.groups {
            None => self.widths().sum(),
            Some(g) => g.iter().map(|members| self.width(members[0])).sum(),
        };
        pooled + self.n_dense
    }

    /// Id field `f`'s embedding width.
    fn width(&self, f: usize) -> usize {
        self.dims.get(f).copied().unwrap_or(self.dim)
    }

    /// Every id field's embedding width.
    fn widths(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.n_fields()).map(|f| self.width(f))
    }

    /// Whether every id field is one table row wide (the single-gather path).
    pub fn uniform(&self) -> bool {
        self.widths().all(|w| w == self.dim)
    }
}

/// Embeds and pools the features of a batch.
#[derive(Module, Debug)]
pub struct InputLayer {
    /// The one table of all id fields, `[total_rows, dim]`.
    pub embedding: Embedding,
    /// Each target-attention sequence field's attention unit, in [`InputSpec::attention`] order.
    pub attention: Vec<TargetAttention>,
    /// Layout and pooling (not trained).
    #[module(skip)]
    pub spec: InputSpec,
}

impl InputLayer {
    /// The input layer every model starts from: `schema`'s fields pooled by `pooling`, one
    /// table of `layout.total_rows` rows initialised with the schema's `embed_init_std`.
    pub fn for_schema(
        schema: &ValidSchema,
        pooling: &FieldPooling,
        layout: &TableLayout,
        device: &Device,
    ) -> Result<Self, FeatureError> {
        Ok(Self::new(
            InputSpec::new(schema, pooling)?,
            layout,
            schema.schema.embed_init_std,
            device,
        ))
    }

    /// A table of `layout.total_rows` rows initialised `N(0, init_std²)`.
    pub fn new(spec: InputSpec, layout: &TableLayout, init_std: f64, device: &Device) -> Self {
        let embedding = EmbeddingConfig::new(layout.total_rows.max(1), spec.dim)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: init_std,
            })
            .init(device);
        let attention = (spec.attention.iter())
            .map(|a| TargetAttention::new(a.width, &a.dims, a.softmax, device))
            .collect();
        Self {
            embedding,
            attention,
            spec,
        }
    }

    /// Width of [`InputLayer::forward`]'s output.
    pub fn output_dim(&self) -> usize {
        self.spec.output_dim()
    }

    /// The table rows `ids` index. Training (an autodiff device) goes through burn's embedding
    /// op and its backward; inference gathers the same rows with `select`, which burn's ONNX
    /// exporter lowers to `Gather` (it has no lowering for the embedding op).
    ///
    /// # Shapes
    /// - ids: `[batch, n]`; output: `[batch, n, dim]`
    fn lookup(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let weight = self.embedding.weight.val();
        if weight.device().is_autodiff() {
            return self.embedding.forward(ids);
        }
        let [b, n] = ids.dims();
        let dim = weight.dims()[1];
        weight.select(0, ids.reshape([b * n])).reshape([b, n, dim])
    }

    /// Per-field embeddings, sequences pooled.
    ///
    /// # Shapes
    /// - output: `[batch, n_sparse + n_sequence, dim]`
    pub fn fields(&self, batch: &BatchTensors) -> Option<Tensor<3>> {
        let mut parts = Vec::new();
        let sparse = batch.sparse_ids.as_ref().map(|ids| self.lookup(ids.clone()));
        if let Some(sparse) = &sparse {
            parts.push(sparse.clone());
        }
        if let Some(seq) = &batch.sequence {
            let [b, _] = seq.ids.dims();
            let d = self.spec.dim;
            let emb = self.lookup(seq.ids.clone()) * seq.mask.clone().unsqueeze_dim(2);
            for (s, &(start, len, pooling)) in self.spec.sequences.iter().enumerate() {
                let keys = emb.clone().slice([0..b, start..start + len, 0..d]);
                let mask = seq.mask.clone().slice([0..b, start..start + len]);
                let pooled = match pooling {
                    SequencePooling::Sum => keys.sum_dim(1),
                    SequencePooling::Mean => {
                        keys.sum_dim(1) / present_at_least_one(mask).unsqueeze_dim::<3>(2)
                    }
                    SequencePooling::Target => {
                        let sparse = sparse.clone().expect("a target attention has a sparse query");
                        let query = |f: usize| sparse.clone().slice([0..b, f..f + 1, 0..d]).reshape([b, d]);
                        self.attend(s, query, keys, mask).unsqueeze_dim(1)
                    }
                };
                parts.push(pooled);
            }
        }
        (!parts.is_empty()).then(|| Tensor::cat(parts, 1))
    }

    /// Sequence field `s` pooled by its target attention, the query built from its sparse
    /// fields' vectors (`query(f)` gives sparse field `f`'s).
    ///
    /// # Shapes
    /// - keys: `[batch, len, width]`; mask: `[batch, len]`; output: `[batch, width]`
    fn attend(
        &self,
        s: usize,
        query: impl Fn(usize) -> Tensor<2>,
        keys: Tensor<3>,
        mask: Tensor<2>,
    ) -> Tensor<2> {
        let a = (self.spec.attention.iter())
            .position(|a| a.sequence == s)
            .expect("a target-pooled sequence has an attention plan");
        let q: Vec<Tensor<2>> = self.spec.attention[a].query.iter().map(|&f| query(f)).collect();
        self.attention[a].forward(Tensor::cat(q, 1), keys, mask)
    }

    /// The model input: pooled embeddings followed by the dense features.
    ///
    /// # Shapes
    /// - output: `[batch, output_dim]`
    pub fn forward(&self, batch: &BatchTensors) -> Tensor<2> {
        self.forward_with_fields(batch).0
    }

    /// The model input and the per-field embeddings it was pooled from (for towers that
    /// interact fields, e.g. DeepFM), with one lookup.
    ///
    /// # Shapes
    /// - output: `[batch, output_dim]`, and `[batch, n_sparse + n_sequence, dim]` if the
    ///   schema has id fields
    pub fn forward_with_fields(&self, batch: &BatchTensors) -> (Tensor<2>, Option<Tensor<3>>) {
        if !self.spec.uniform() {
            return (self.forward_mixed(batch), None);
        }
        let b = batch.rows;
        let mut parts = Vec::new();
        let fields = self.fields(batch);
        if let Some(fields) = fields.clone() {
            let [_, f, d] = fields.dims();
            match &self.spec.groups {
                None => parts.push(fields.reshape([b, f * d])),
                Some(groups) => {
                    let device = fields.device();
                    for members in groups {
                        let idx: Vec<i32> = members.iter().map(|&m| m as i32).collect();
                        let n = idx.len();
                        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &device);
                        parts.push(fields.clone().select(1, idx).sum_dim(1).reshape([b, d]));
                    }
                }
            }
        }
        if let Some(dense) = &batch.dense {
            parts.push(dense.clone());
        }
        (Tensor::cat(parts, 1), fields)
    }

    /// The forward pass when fields have different widths: each field's vector read from its
    /// consecutive rows, pooled per row (sequences), then concatenated or summed by group.
    ///
    /// # Shapes
    /// - output: `[batch, output_dim]`
    fn forward_mixed(&self, batch: &BatchTensors) -> Tensor<2> {
        let vectors = self.field_vectors(batch);
        let mut parts = match &self.spec.groups {
            None => vectors,
            Some(groups) => groups
                .iter()
                .map(|members| {
                    members
                        .iter()
                        .map(|&m| vectors[m].clone())
                        .reduce(|a, v| a + v)
                        .expect("a group has members")
                })
                .collect(),
        };
        if let Some(dense) = &batch.dense {
            parts.push(dense.clone());
        }
        Tensor::cat(parts, 1)
    }

    /// `base` `[m, 1]` table rows widened to the `slots` consecutive rows each id owns.
    ///
    /// # Shapes
    /// - `base`: `[m, 1]`; output: `[m, slots]`
    fn widen(base: Tensor<2, Int>, slots: usize) -> Tensor<2, Int> {
        if slots == 1 {
            return base;
        }
        let steps = Tensor::<1, Int>::arange(0..slots as i64, &base.device()).reshape([1, slots]);
        base + steps
    }

    /// One vector per id field (sparse, then sequence pooled over its present ids).
    ///
    /// # Shapes
    /// - output: one `[batch, width_f]` per id field
    pub fn field_vectors(&self, batch: &BatchTensors) -> Vec<Tensor<2>> {
        let g = self.spec.dim;
        let mut out = Vec::new();
        if let Some(ids) = &batch.sparse_ids {
            let [b, n] = ids.dims();
            for f in 0..n {
                let k = self.spec.width(f) / g;
                let rows = Self::widen(ids.clone().slice([0..b, f..f + 1]), k);
                out.push(self.lookup(rows).reshape([b, k * g]));
            }
        }
        if let Some(seq) = &batch.sequence {
            let [b, _] = seq.ids.dims();
            for (s, &(start, len, pooling)) in self.spec.sequences.iter().enumerate() {
                let k = self.spec.width(self.spec.n_sparse + s) / g;
                let base = seq
                    .ids
                    .clone()
                    .slice([0..b, start..start + len])
                    .reshape([b * len, 1]);
                let rows = Self::widen(base, k).reshape([b, len * k]);
                let mask = seq.mask.clone().slice([0..b, start..start + len]);
                let emb = self.lookup(rows).reshape([b, len, k * g]) * mask.clone().unsqueeze_dim(2);
                let pooled = match pooling {
                    SequencePooling::Sum => emb.sum_dim(1).reshape([b, k * g]),
                    SequencePooling::Mean => emb.sum_dim(1).reshape([b, k * g]) / present_at_least_one(mask),
                    SequencePooling::Target => self.attend(s, |f| out[f].clone(), emb, mask),
                };
                out.push(pooled);
            }
        }
        out
    }
}

/// The ids present in each row of a sequence `mask` (0/1), at least 1, so that mean pooling
/// of an empty sequence gives zeros: `max(count, 1)` written as `relu(count − 1) + 1`, which
/// is exact for whole counts and, unlike `clamp_min`, burn's ONNX exporter can express.
///
/// # Shapes
/// - `mask`: `[batch, len]`; output: `[batch, 1]`
fn present_at_least_one(mask: Tensor<2>) -> Tensor<2> {
    burn::tensor::activation::relu(mask.sum_dim(1) - 1.0) + 1.0
}
