//! The input layer every model shares: one embedding table for all id fields, sequence
//! pooling, pooling across fields (`concat` or `sum` per group), dense features appended.
//!
//! All id fields live in one `[total_rows, embed_dim]` table (each field owns a block of rows,
//! shared fields point at their owner's block), so one gather serves a whole batch and a
//! row-sparse optimiser has one table to update.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::FeatureError;
use crate::batch::BatchTensors;
use crate::schema::{SequencePooling, ValidSchema};
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
    /// Embedding width.
    pub dim: usize,
    /// Sparse fields.
    pub n_sparse: usize,
    /// Per sequence field: (start column, max_len, pooling).
    pub sequences: Vec<(usize, usize, SequencePooling)>,
    /// Dense fields appended after pooling.
    pub n_dense: usize,
    /// For group pooling: the field indices (into `[sparse…, sequence…]`) of each group.
    pub groups: Option<Vec<Vec<usize>>>,
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
                let entry = (start, s.max_len, s.pooling);
                start += s.max_len;
                entry
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
                    groups.push(members);
                }
                Some(groups)
            }
        };
        Ok(Self {
            dim: schema.schema.embed_dim,
            n_sparse: schema.n_sparse(),
            sequences,
            n_dense: schema.n_dense(),
            groups,
        })
    }

    /// Number of id fields (sparse + sequence).
    pub fn n_fields(&self) -> usize {
        self.n_sparse + self.sequences.len()
    }

    /// Width of the layer's output.
    pub fn output_dim(&self) -> usize {
        let pooled = match &self.groups {
            None => self.n_fields(),
            Some(g) => g.len(),
        };
        pooled * self.dim + self.n_dense
    }
}

/// Embeds and pools the features of a batch.
#[derive(Module, Debug)]
pub struct InputLayer {
    /// The one table of all id fields, `[total_rows, dim]`.
    pub embedding: Embedding,
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
        Self { embedding, spec }
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
        if let Some(ids) = &batch.sparse_ids {
            parts.push(self.lookup(ids.clone()));
        }
        if let Some(seq) = &batch.sequence {
            let [b, _] = seq.ids.dims();
            let emb = self.lookup(seq.ids.clone()) * seq.mask.clone().unsqueeze_dim(2);
            for &(start, len, pooling) in &self.spec.sequences {
                let summed = emb
                    .clone()
                    .slice([0..b, start..start + len, 0..self.spec.dim])
                    .sum_dim(1);
                let pooled = match pooling {
                    SequencePooling::Sum => summed,
                    SequencePooling::Mean => {
                        let count = seq
                            .mask
                            .clone()
                            .slice([0..b, start..start + len])
                            .sum_dim(1)
                            .clamp_min(1.0)
                            .unsqueeze_dim::<3>(2);
                        summed / count
                    }
                };
                parts.push(pooled);
            }
        }
        (!parts.is_empty()).then(|| Tensor::cat(parts, 1))
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
}
