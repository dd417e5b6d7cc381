//! Encoded data held in memory as flat row-major blocks, and the tensors of one batch.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::state::TableLayout;

/// Encoded rows: ids are local to each field's vocabulary (the table offset is added when a
/// batch is built), dense values are already standardised, labels are numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedData {
    /// Number of rows.
    pub rows: usize,
    /// Sparse fields per row.
    pub n_sparse: usize,
    /// Per sequence field: its padded length (`max_len`).
    pub seq_max_len: Vec<usize>,
    /// Dense fields per row.
    pub n_dense: usize,
    /// Labels per row.
    pub n_labels: usize,
    /// `rows × n_sparse` ids.
    pub sparse: Vec<u32>,
    /// `rows × Σ max_len` ids, padded with 0.
    pub sequence: Vec<u32>,
    /// `rows × n_sequence` true lengths.
    pub seq_len: Vec<u32>,
    /// `rows × n_dense` values.
    pub dense: Vec<f32>,
    /// `rows × n_labels` values.
    pub labels: Vec<f32>,
}

impl EncodedData {
    /// An empty block with the given widths.
    pub fn empty(n_sparse: usize, seq_max_len: Vec<usize>, n_dense: usize, n_labels: usize) -> Self {
        Self {
            rows: 0,
            n_sparse,
            seq_max_len,
            n_dense,
            n_labels,
            ..Default::default()
        }
    }

    /// Total padded sequence width of one row.
    pub fn seq_width(&self) -> usize {
        self.seq_max_len.iter().sum()
    }

    /// Rows that fit in the buffers' capacity without a reallocation.
    pub fn spare_rows(&self) -> usize {
        let spare =
            |len: usize, cap: usize, width: usize| (cap - len).checked_div(width).unwrap_or(usize::MAX);
        let n_seq = self.seq_max_len.len();
        [
            spare(self.sparse.len(), self.sparse.capacity(), self.n_sparse),
            spare(self.sequence.len(), self.sequence.capacity(), self.seq_width()),
            spare(self.seq_len.len(), self.seq_len.capacity(), n_seq),
            spare(self.dense.len(), self.dense.capacity(), self.n_dense),
            spare(self.labels.len(), self.labels.capacity(), self.n_labels),
        ]
        .into_iter()
        .min()
        .unwrap_or(usize::MAX)
    }

    /// Makes room for `rows` more rows, or fails (nothing aborts) when the memory cannot be
    /// had: the large buffers of data read into memory grow through this.
    pub fn try_reserve_rows(&mut self, rows: usize) -> Result<(), std::collections::TryReserveError> {
        let n_seq = self.seq_max_len.len();
        let seq_width = self.seq_width();
        self.sparse.try_reserve(rows.saturating_mul(self.n_sparse))?;
        self.sequence.try_reserve(rows.saturating_mul(seq_width))?;
        self.seq_len.try_reserve(rows.saturating_mul(n_seq))?;
        self.dense.try_reserve(rows.saturating_mul(self.n_dense))?;
        self.labels.try_reserve(rows.saturating_mul(self.n_labels))
    }

    /// Bytes of the encoded rows held.
    pub fn bytes(&self) -> usize {
        4 * (self.sparse.len()
            + self.sequence.len()
            + self.seq_len.len()
            + self.dense.len()
            + self.labels.len())
    }

    /// [`EncodedData::append`] that fails instead of aborting when the memory cannot be had.
    pub fn try_append(&mut self, other: &EncodedData) -> Result<(), std::collections::TryReserveError> {
        self.try_reserve_rows(other.rows)?;
        self.append(other);
        Ok(())
    }

    /// Appends the rows `indices` of `other` (same widths), in that order.
    pub fn append_rows(&mut self, other: &EncodedData, indices: &[usize]) {
        let (s, w, q, d, l) = (
            other.n_sparse,
            other.seq_width(),
            other.seq_max_len.len(),
            other.n_dense,
            other.n_labels,
        );
        for &r in indices {
            self.sparse.extend_from_slice(&other.sparse[r * s..(r + 1) * s]);
            self.sequence
                .extend_from_slice(&other.sequence[r * w..(r + 1) * w]);
            self.seq_len.extend_from_slice(&other.seq_len[r * q..(r + 1) * q]);
            self.dense.extend_from_slice(&other.dense[r * d..(r + 1) * d]);
            self.labels.extend_from_slice(&other.labels[r * l..(r + 1) * l]);
        }
        self.rows += indices.len();
    }

    /// Appends all rows of `other` (same widths).
    pub fn append(&mut self, other: &EncodedData) {
        assert_eq!(self.n_sparse, other.n_sparse, "sparse width differs");
        assert_eq!(self.seq_max_len, other.seq_max_len, "sequence widths differ");
        assert_eq!(self.n_dense, other.n_dense, "dense width differs");
        assert_eq!(self.n_labels, other.n_labels, "label width differs");
        self.rows += other.rows;
        self.sparse.extend_from_slice(&other.sparse);
        self.sequence.extend_from_slice(&other.sequence);
        self.seq_len.extend_from_slice(&other.seq_len);
        self.dense.extend_from_slice(&other.dense);
        self.labels.extend_from_slice(&other.labels);
    }

    /// Label `label` of the rows `indices`, in that order.
    pub fn label_of(&self, indices: &[usize], label: usize) -> Vec<f32> {
        indices
            .iter()
            .map(|&r| self.labels[r * self.n_labels + label])
            .collect()
    }

    /// Label `label` of every row.
    pub fn label_column(&self, label: usize) -> Vec<f32> {
        (0..self.rows)
            .map(|r| self.labels[r * self.n_labels + label])
            .collect()
    }

    /// Builds the tensors of the rows `indices` (in that order) on `device`; ids are table rows.
    pub fn batch(&self, indices: &[usize], layout: &TableLayout, device: &Device) -> BatchTensors {
        self.build(indices, layout, device, |global, _| global as i32)
    }

    /// Builds the tensors of the rows `indices` for row-sparse training: returns the batch's
    /// distinct table rows (in first-seen order), and the batch's ids are positions in that
    /// list (the trainer puts those rows in the table's place for the step).
    pub fn batch_unique(
        &self,
        indices: &[usize],
        layout: &TableLayout,
        device: &Device,
    ) -> (BatchTensors, Vec<i32>) {
        let mut unique: Vec<i32> = Vec::new();
        let mut position: rustc_hash::FxHashMap<usize, i32> =
            rustc_hash::FxHashMap::with_capacity_and_hasher(indices.len() * 4, Default::default());
        // an id owning several rows keeps them consecutive among the gathered rows
        let batch = self.build(indices, layout, device, |global, slots| {
            *position.entry(global).or_insert_with(|| {
                let first = unique.len() as i32;
                unique.extend((global..global + slots).map(|g| g as i32));
                first
            })
        });
        (batch, unique)
    }

    /// Every row as the host arrays of an exported graph's inputs (table rows as
    /// [`EncodedData::batch`] computes them): what an ONNX runtime is fed.
    pub fn graph_arrays(&self, layout: &TableLayout) -> HostBatch {
        let all: Vec<usize> = (0..self.rows).collect();
        self.host(&all, layout, |global, _| global as i32)
    }

    /// The rows `indices` as host arrays, each id field's value `v` given to `id` as its
    /// table row `v · slots + offset` with its slot count.
    fn host(
        &self,
        indices: &[usize],
        layout: &TableLayout,
        mut id: impl FnMut(usize, usize) -> i32,
    ) -> HostBatch {
        let b = indices.len();
        let ns = self.n_sparse;
        let mut sparse = Vec::with_capacity(b * ns);
        for &r in indices {
            let row = &self.sparse[r * ns..(r + 1) * ns];
            sparse.extend(row.iter().zip(&layout.offset).enumerate().map(|(f, (&v, &off))| {
                let k = layout.slots_of(f);
                id(v as usize * k + off, k)
            }));
        }
        let width = self.seq_width();
        let n_seq = self.seq_max_len.len();
        let mut sequence_ids = Vec::with_capacity(b * width);
        let mut sequence_mask = Vec::with_capacity(b * width);
        for &r in indices.iter().filter(|_| n_seq > 0) {
            let row = &self.sequence[r * width..(r + 1) * width];
            let lens = &self.seq_len[r * n_seq..(r + 1) * n_seq];
            let mut start = 0;
            for (s, &max_len) in self.seq_max_len.iter().enumerate() {
                let (off, slots) = (layout.offset[ns + s], layout.slots_of(ns + s));
                for k in 0..max_len {
                    sequence_ids.push(id(row[start + k] as usize * slots + off, slots));
                    sequence_mask.push(if (k as u32) < lens[s] { 1.0f32 } else { 0.0 });
                }
                start += max_len;
            }
        }
        let (nd, nl) = (self.n_dense, self.n_labels);
        let mut dense = Vec::with_capacity(b * nd);
        let mut labels = Vec::with_capacity(b * nl);
        for &r in indices {
            dense.extend_from_slice(&self.dense[r * nd..(r + 1) * nd]);
            labels.extend_from_slice(&self.labels[r * nl..(r + 1) * nl]);
        }
        HostBatch {
            rows: b,
            sparse_ids: sparse,
            sequence_ids,
            sequence_mask,
            dense,
            labels,
        }
    }

    fn build(
        &self,
        indices: &[usize],
        layout: &TableLayout,
        device: &Device,
        id: impl FnMut(usize, usize) -> i32,
    ) -> BatchTensors {
        let h = self.host(indices, layout, id);
        let b = h.rows;
        let ns = self.n_sparse;
        let sparse_ids =
            (ns > 0).then(|| Tensor::<2, Int>::from_data(TensorData::new(h.sparse_ids, [b, ns]), device));
        let width = self.seq_width();
        let sequence = (!self.seq_max_len.is_empty()).then(|| SequenceTensors {
            ids: Tensor::from_data(TensorData::new(h.sequence_ids, [b, width]), device),
            mask: Tensor::from_data(TensorData::new(h.sequence_mask, [b, width]), device),
        });
        let dense = (self.n_dense > 0)
            .then(|| Tensor::from_data(TensorData::new(h.dense, [b, self.n_dense]), device));
        let nl = self.n_labels;
        BatchTensors {
            rows: b,
            sparse_ids,
            sequence,
            dense,
            labels: Tensor::from_data(TensorData::new(h.labels, [b, nl.max(1)]), device),
            weights: None,
        }
    }
}

/// Rows as host arrays, row-major: the tensors of a [`BatchTensors`] before they are made.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// Rows.
    pub rows: usize,
    /// `rows × n_sparse` table rows (offset applied).
    pub sparse_ids: Vec<i32>,
    /// `rows × Σ max_len` table rows (offset applied; padding is row 0 of the field's block).
    pub sequence_ids: Vec<i32>,
    /// `rows × Σ max_len`: 1 where a sequence holds an item, 0 on padding.
    pub sequence_mask: Vec<f32>,
    /// `rows × n_dense` values (standardised where the schema says).
    pub dense: Vec<f32>,
    /// `rows × n_labels` values.
    pub labels: Vec<f32>,
}

/// Padded sequence ids with their mask.
#[derive(Debug, Clone)]
pub struct SequenceTensors {
    /// `[batch, Σ max_len]` table rows (offset applied).
    pub ids: Tensor<2, Int>,
    /// `[batch, Σ max_len]`: 1 where an id is present, 0 for padding.
    pub mask: Tensor<2>,
}

/// The tensors of one batch, ready for a model.
#[derive(Debug, Clone)]
pub struct BatchTensors {
    /// Rows in the batch.
    pub rows: usize,
    /// `[batch, n_sparse]` table rows (offset applied), absent without sparse fields.
    pub sparse_ids: Option<Tensor<2, Int>>,
    /// Sequence ids and mask, absent without sequence fields.
    pub sequence: Option<SequenceTensors>,
    /// `[batch, n_dense]`, absent without dense fields.
    pub dense: Option<Tensor<2>>,
    /// `[batch, n_labels]`.
    pub labels: Tensor<2>,
    /// `[batch]` sample weights (`[data] weight`), scaled so that their mean over the whole
    /// global batch is 1; absent without weights.
    pub weights: Option<Tensor<1>>,
}

impl BatchTensors {
    /// The batch with sample weights `weights` (one per row) scaled to mean 1 over its rows
    /// (all 0 when they sum to 0), and their sum before scaling.
    pub fn with_weights(mut self, weights: &[f32]) -> (Self, f64) {
        let (n, mass) = (weights.len(), weights.iter().map(|&w| f64::from(w)).sum::<f64>());
        let scale = if mass > 0.0 { n as f64 / mass } else { 0.0 };
        let scaled: Vec<f32> = weights.iter().map(|&w| (f64::from(w) * scale) as f32).collect();
        self.weights = Some(Tensor::from_data(
            TensorData::new(scaled, [n]),
            &self.labels.device(),
        ));
        (self, mass)
    }

    /// The batch's mean of a per-row quantity, each row counted by its sample weight:
    /// `Σ wᵢ xᵢ / B` with the weights scaled to mean 1 (`Σ wᵢ xᵢ / Σ wᵢ` over the global batch),
    /// the plain mean without weights.
    ///
    /// # Shapes
    /// - per_row: `[batch]`; output: `[1]`
    pub fn mean_rows(&self, per_row: Tensor<1>) -> Tensor<1> {
        match &self.weights {
            Some(w) => (per_row * w.clone()).mean(),
            None => per_row.mean(),
        }
    }

    /// Label column `index` as `[batch]`.
    pub fn label(&self, index: usize) -> Tensor<1> {
        self.labels
            .clone()
            .slice([0..self.rows, index..index + 1])
            .reshape([self.rows])
    }
}
