//! Batch loading: the rows of each epoch in a seeded order, assembled into batches on a helper
//! thread a few batches ahead of the step that needs them — from rows held in memory, or
//! streamed from the files ([`StreamSpec`]) through a bounded shuffle buffer.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::Scope;

use burn::tensor::Device;
use mtl_data::{BadRowPolicy, ReadReport, Source};
use mtl_features::{BatchTensors, EncodedData, Encoder, TableLayout};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::TrainError;
use crate::config::TrainSettings;
use crate::fit::collective::{Group, share};
use crate::fit::shards::Shards;
use crate::fit::state::TrainState;

/// A batch as the loader hands it over.
pub struct Batch {
    /// The batch's tensors; for row-sparse training its ids index [`Batch::table_rows`].
    pub tensors: BatchTensors,
    /// Row-sparse training: the batch's distinct table rows, in first-seen order (else empty).
    pub table_rows: Vec<i32>,
    /// The rows' total sample weight (their number without weights): a rank's share of the
    /// global batch's loss.
    pub mass: f64,
}

/// The training rows: encoded in memory, or streamed from their files each epoch.
#[derive(Clone, Copy)]
pub enum TrainRows<'a> {
    /// Every row, encoded (one shard).
    Memory(&'a EncodedData),
    /// The rows of `Shards` this rank reads, encoded: the shards it holds alone (see
    /// [`Shards::held`]), else every row.
    Sharded(&'a EncodedData, Shards),
    /// Read from the files as training goes.
    Stream(&'a StreamSpec),
}

impl<'a> From<&'a EncodedData> for TrainRows<'a> {
    fn from(data: &'a EncodedData) -> Self {
        Self::Memory(data)
    }
}

impl TrainRows<'_> {
    /// Rows per epoch (over every rank).
    pub fn rows(&self) -> usize {
        self.shards().rows
    }

    /// How the rows are split into shards.
    pub fn shards(&self) -> Shards {
        match self {
            Self::Memory(d) => Shards {
                rows: d.rows,
                count: 1,
            },
            Self::Sharded(_, shards) => *shards,
            Self::Stream(s) => Shards {
                rows: s.rows,
                count: s.shards,
            },
        }
    }
}

/// Streaming input: each epoch reads `files` (in an order shuffled per epoch) in blocks of
/// `buffer_rows` rows, shuffles each block and cuts it into batches, so that at most one block
/// of encoded rows (and the batches ahead) is held at a time.
pub struct StreamSpec {
    /// The training files.
    pub files: Vec<PathBuf>,
    /// Encodes their rows.
    pub encoder: Encoder,
    /// What to do with a bad row (as when reading into memory).
    pub policy: BadRowPolicy,
    /// Good rows per epoch (counted by [`count_rows`] before training).
    pub rows: usize,
    /// Rows per shuffle block (rounded up to whole batches), over every shard.
    pub buffer_rows: usize,
    /// Shards ([`Shards`]); with more than one, each file's good rows (`file_rows`) place
    /// the shards' row ranges in the files.
    pub shards: usize,
    /// Good rows of each file (needed with more than one shard).
    pub file_rows: Vec<usize>,
}

/// Rows read from a file at a time.
const CHUNK_ROWS: usize = 65_536;

/// The good rows of `files` (bad ones follow `policy`), read in chunks without keeping them.
/// A Parquet file under the `fail` policy is counted from its footer: a bad row in it stops
/// training anyway when it is reached (its columns are still checked against the schema).
pub fn count_rows(files: &[PathBuf], encoder: &Encoder, policy: BadRowPolicy) -> Result<usize, TrainError> {
    Ok(count_file_rows(files, encoder, policy, true)?.iter().sum())
}

/// Each file's good rows, as [`count_rows`] counts them when `check`; else under the `fail`
/// policy CSV records are only parsed (a bad row is met when its rows are read).
pub fn count_file_rows(
    files: &[PathBuf],
    encoder: &Encoder,
    policy: BadRowPolicy,
    check: bool,
) -> Result<Vec<usize>, TrainError> {
    files
        .iter()
        .map(|path| {
            let mut source = Source::open(path, encoder.schema(), true)?;
            if !check || (policy == BadRowPolicy::Fail && mtl_data::parquet::is_parquet(path)) {
                return Ok(source.skip_rows(usize::MAX, encoder, policy)?);
            }
            read_chunks(&mut source, encoder, policy, usize::MAX, |_| {})
        })
        .collect()
}

/// Reads `source` in chunks of at most [`CHUNK_ROWS`] good rows until it ends or `max_rows`
/// rows were read, handing each chunk to `each`; the rows read.
fn read_chunks(
    source: &mut Source,
    encoder: &Encoder,
    policy: BadRowPolicy,
    max_rows: usize,
    mut each: impl FnMut(&EncodedData),
) -> Result<usize, TrainError> {
    let mut report = ReadReport::default();
    let mut rows = 0;
    while rows < max_rows {
        let mut chunk = mtl_data::empty_encoded(encoder.schema());
        let want = CHUNK_ROWS.min(max_rows - rows);
        let n = source.read_chunk(encoder, policy, want, &mut chunk, &mut report, None)?;
        if n == 0 {
            break;
        }
        each(&chunk);
        rows += n;
    }
    Ok(rows)
}

/// Rows a streaming run reads (from the start of its files) to estimate the labels' base
/// rates for [`TrainSettings::label_priors`](crate::TrainSettings::label_priors).
pub const PRIOR_ROWS: usize = 1 << 20;

/// Each label column's mean over the finite values of the training rows: all of them in
/// memory, or the first [`PRIOR_ROWS`] rows of the files when streaming. NaN where a column
/// has no finite value. With sample weights (label column `weight_label`), each row counts by
/// its weight. Rows held by shard are summed over the ranks of `group`.
pub fn label_means(
    rows: TrainRows<'_>,
    group: &Group,
    weight_label: Option<usize>,
) -> Result<Vec<f64>, TrainError> {
    label_means_upto(rows, PRIOR_ROWS, group, weight_label)
}

/// [`label_means`], streaming reading the first `max_rows` rows.
fn label_means_upto(
    rows: TrainRows<'_>,
    max_rows: usize,
    group: &Group,
    weight_label: Option<usize>,
) -> Result<Vec<f64>, TrainError> {
    let mut sums = LabelSums {
        weight_label,
        ..LabelSums::default()
    };
    match rows {
        TrainRows::Memory(data) => sums.add(data),
        TrainRows::Sharded(data, shards) => {
            sums.add(data);
            if shards.held(group.rank(), group.size()).is_some() && group.is_distributed() {
                // each rank holds its own rows: the sums and counts of all of them
                let mut flat: Vec<f64> = sums.sums.iter().flat_map(|&(s, n)| [s, n]).collect();
                group.sum_f64(&mut flat);
                for (acc, pair) in sums.sums.iter_mut().zip(flat.chunks_exact(2)) {
                    *acc = (pair[0], pair[1]);
                }
            }
        }
        TrainRows::Stream(spec) => {
            for path in &spec.files {
                if sums.rows >= max_rows {
                    break;
                }
                let mut source = Source::open(path, spec.encoder.schema(), true)?;
                let left = max_rows - sums.rows;
                read_chunks(&mut source, &spec.encoder, spec.policy, left, |chunk| {
                    sums.add(chunk)
                })?;
            }
        }
    }
    Ok(sums.means())
}

/// Per label column: the (weighted) sum and the count (total weight) of its finite values.
#[derive(Default)]
struct LabelSums {
    rows: usize,
    sums: Vec<(f64, f64)>,
    weight_label: Option<usize>,
}

impl LabelSums {
    fn add(&mut self, data: &EncodedData) {
        let n = data.n_labels;
        self.sums.resize(n, (0.0, 0.0));
        if n > 0 {
            for row in data.labels.chunks_exact(n) {
                let w = self.weight_label.map_or(1.0, |l| f64::from(row[l]));
                for (acc, &v) in self.sums.iter_mut().zip(row) {
                    if v.is_finite() {
                        acc.0 += w * f64::from(v);
                        acc.1 += w;
                    }
                }
            }
        }
        self.rows += data.rows;
    }

    fn means(&self) -> Vec<f64> {
        self.sums
            .iter()
            .map(|&(sum, count)| if count > 0.0 { sum / count } else { f64::NAN })
            .collect()
    }
}

/// The files' order in `epoch`.
fn file_order(files: usize, seed: u64, epoch: usize) -> Vec<usize> {
    epoch_order(files, seed ^ 0x5eed_f11e, epoch)
}

/// Reads the next up to `want` rows of an epoch's files into `out`, moving to the next file
/// when one ends; the number read (less than `want` only at the end of the epoch).
fn read_block(
    spec: &StreamSpec,
    order: &[usize],
    next_file: &mut usize,
    source: &mut Option<Source>,
    want: usize,
    out: &mut EncodedData,
) -> Result<usize, TrainError> {
    let mut got = 0;
    let mut report = ReadReport::default();
    while got < want {
        let src = match source {
            Some(src) => src,
            None => {
                let Some(&f) = order.get(*next_file) else {
                    break;
                };
                *next_file += 1;
                source.insert(Source::open(&spec.files[f], spec.encoder.schema(), true)?)
            }
        };
        let n = src.read_chunk(
            &spec.encoder,
            spec.policy,
            (want - got).min(CHUNK_ROWS),
            out,
            &mut report,
            None,
        )?;
        if n == 0 {
            *source = None;
        }
        got += n;
    }
    Ok(got)
}

/// Starts threads in `scope` that stream the run's remaining batches from `spec`'s files (see
/// [`StreamSpec`]): one reads blocks, one cuts them into batches. A read error is sent in place
/// of a batch and ends both. A resumed run re-reads the rows before its position without
/// batching them.
fn spawn_stream<'scope, 'env: 'scope>(
    scope: &'scope Scope<'scope, 'env>,
    spec: &'env StreamSpec,
    layout: &'env TableLayout,
    device: &'env Device,
    plan: LoaderPlan,
) -> Receiver<Result<Batch, TrainError>> {
    let (tx, rx) = sync_channel::<Result<Batch, TrainError>>(AHEAD);
    let bs = plan.batch_size;
    // whole batches per block, so that an epoch has ⌈rows / batch⌉ batches as in memory
    let block = spec.buffer_rows.max(1).div_ceil(bs) * bs;
    let per_block = block / bs;
    // one thread reads (and encodes) the next block while another cuts the current one into
    // batches: two blocks at most are held, and the step rarely waits for the files
    let blocks_rx = producer(scope, 1, move |blocks_tx| {
        for epoch in plan.from.0..plan.epochs {
            let order = file_order(spec.files.len(), plan.seed, epoch);
            let (mut next_file, mut source) = (0, None);
            for b in 0.. {
                let mut buf = mtl_data::empty_encoded(spec.encoder.schema());
                if read_block(spec, &order, &mut next_file, &mut source, block, &mut buf)? == 0 {
                    break;
                }
                if blocks_tx.send(Ok((epoch, b, buf))).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    });
    scope.spawn(move || {
        for item in blocks_rx {
            let (epoch, b, buf) = match item {
                Ok(block) => block,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let first = plan.first_in(epoch);
            let done = b * per_block;
            if done + buf.rows.div_ceil(bs) <= first {
                continue; // before the resume position
            }
            let rows = epoch_order(buf.rows, plan.seed.wrapping_add(b as u64 + 1), epoch);
            for (k, idx) in rows.chunks(bs).enumerate() {
                if done + k < first {
                    continue;
                }
                if tx.send(Ok(make_batch(&buf, idx, layout, device, &plan))).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Starts a thread in `scope` that runs `produce` with the sending end of a channel of
/// `capacity` items and returns the receiving end; an error `produce` returns is sent down the
/// channel as its last item. `produce` stops with `Ok` when it is done or the receiver is gone.
fn producer<'scope, T: Send + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    capacity: usize,
    produce: impl FnOnce(&SyncSender<Result<T, TrainError>>) -> Result<(), TrainError> + Send + 'scope,
) -> Receiver<Result<T, TrainError>> {
    let (tx, rx) = sync_channel(capacity);
    scope.spawn(move || {
        if let Err(e) = produce(&tx) {
            let _ = tx.send(Err(e));
        }
    });
    rx
}

/// This rank's part of the global batch of rows `idx` of `data` (all of it in one process).
fn make_batch(
    data: &EncodedData,
    idx: &[usize],
    layout: &TableLayout,
    device: &Device,
    plan: &LoaderPlan,
) -> Batch {
    let idx = match plan.alone() {
        true => idx,
        false => &idx[share(idx.len(), plan.share.0, plan.share.1)],
    };
    let (tensors, table_rows) = match plan.row_sparse {
        true => data.batch_unique(idx, layout, device),
        false => (data.batch(idx, layout, device), Vec::new()),
    };
    let (tensors, mass) = match plan.weight_label {
        Some(label) => tensors.with_weights(&data.label_of(idx, label)),
        None => (tensors, idx.len() as f64),
    };
    Batch {
        tensors,
        table_rows,
        mass,
    }
}

/// Batches built ahead of the step that needs them.
const AHEAD: usize = 2;

/// The row order of `epoch`: a permutation seeded by (seed, epoch), so a resumed run replays it.
pub fn epoch_order(rows: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows).collect();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
    order.shuffle(&mut rng);
    order
}

/// Where the batches of a run start and what they carry.
#[derive(Debug, Clone, Copy)]
pub struct LoaderPlan {
    /// Rows per batch.
    pub batch_size: usize,
    /// Epochs in the run.
    pub epochs: usize,
    /// Shuffling seed.
    pub seed: u64,
    /// The first batch: (epoch, batch within it), both 0-based.
    pub from: (usize, usize),
    /// Build batches for row-sparse training (ids local to each batch's distinct rows).
    pub row_sparse: bool,
    /// (rank, ranks): each batch is this rank's contiguous part of the global batch
    /// ([`share`]); `(0, 1)` in one process.
    pub share: (usize, usize),
    /// How the rows are split ([`Shards`]; one shard: one permutation of every row).
    pub shards: Shards,
    /// The label column of sample weights, if any: each batch carries them (scaled to mean 1
    /// over the rank's rows) and their sum.
    pub weight_label: Option<usize>,
}

impl LoaderPlan {
    /// The batches left of a run with `settings` that stands at `state`, for rank `share.0`
    /// of `share.1`: the global batches are the same on every rank, and for any number of
    /// ranks, so a run resumed on another number of ranks reads the same rows in each step.
    pub fn from_state(
        settings: &TrainSettings,
        state: &TrainState,
        row_sparse: bool,
        share: (usize, usize),
        shards: Shards,
    ) -> Self {
        Self {
            batch_size: settings.batch_size,
            epochs: settings.epochs,
            seed: settings.seed,
            from: (state.epoch, state.batch_in_epoch),
            row_sparse,
            share,
            shards,
            weight_label: None,
        }
    }

    /// Whether this rank builds its part of each batch from the shards it holds alone (more
    /// than one shard, and the ranks divide them).
    fn alone(&self) -> bool {
        self.shards.count > 1 && self.shards.held(self.share.0, self.share.1).is_some()
    }

    /// The shards this rank reads: those it holds alone, else all.
    fn held(&self) -> std::ops::Range<usize> {
        match self.alone() {
            true => self.shards.held(self.share.0, self.share.1).unwrap_or(0..0),
            false => 0..self.shards.count,
        }
    }

    /// The first batch of `epoch` to send (later than 0 in the epoch a resume starts in).
    fn first_in(&self, epoch: usize) -> usize {
        if epoch == self.from.0 { self.from.1 } else { 0 }
    }
}

/// Shard `k`'s shuffling seed: the run's own for shard 0, so one shard orders rows as before.
fn shard_seed(seed: u64, k: usize) -> u64 {
    seed ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The loader's batches as the training loop takes them: while steps are pipelined, the batch
/// after the one taken is received too, so that its table rows are known during the step.
pub struct Feed {
    batches: Receiver<Result<Batch, TrainError>>,
    ahead: Option<Result<Batch, TrainError>>,
}

impl Feed {
    /// The batches of [`spawn`].
    pub fn new(batches: Receiver<Result<Batch, TrainError>>) -> Self {
        Self { batches, ahead: None }
    }

    /// The next batch (`None` once the loader ran out), receiving the one after it too when
    /// `ahead`.
    pub fn take(&mut self, ahead: bool) -> Option<Result<Batch, TrainError>> {
        let batch = self.ahead.take().or_else(|| self.batches.recv().ok());
        if ahead && batch.is_some() {
            self.ahead = self.batches.recv().ok();
        }
        batch
    }

    /// The table rows of the batch received ahead, if one was.
    pub fn next_rows(&self) -> Option<&[i32]> {
        self.ahead
            .as_ref()?
            .as_ref()
            .ok()
            .map(|b| b.table_rows.as_slice())
    }
}

/// Starts a thread in `scope` that sends every remaining batch of the run in order; it ends
/// when the run's batches are all sent or the receiver is dropped.
pub fn spawn<'scope, 'env: 'scope>(
    scope: &'scope Scope<'scope, 'env>,
    rows: TrainRows<'env>,
    layout: &'env TableLayout,
    device: &'env Device,
    plan: LoaderPlan,
) -> Receiver<Result<Batch, TrainError>> {
    match rows {
        TrainRows::Memory(data) => spawn_memory(scope, data, layout, device, plan),
        TrainRows::Sharded(data, shards) if shards.count <= 1 => {
            spawn_memory(scope, data, layout, device, plan)
        }
        TrainRows::Sharded(data, _) => spawn_memory_sharded(scope, data, layout, device, plan),
        TrainRows::Stream(spec) if spec.shards <= 1 => spawn_stream(scope, spec, layout, device, plan),
        TrainRows::Stream(spec) => spawn_stream_sharded(scope, spec, layout, device, plan),
    }
}

/// [`spawn`] for shards in memory: `data` holds the rows of [`LoaderPlan::held`]; each epoch
/// every shard has its own permutation, and batch `b` joins each shard's part `b`.
fn spawn_memory_sharded<'scope, 'env: 'scope>(
    scope: &'scope Scope<'scope, 'env>,
    data: &'env EncodedData,
    layout: &'env TableLayout,
    device: &'env Device,
    plan: LoaderPlan,
) -> Receiver<Result<Batch, TrainError>> {
    let (tx, rx) = sync_channel::<Result<Batch, TrainError>>(AHEAD);
    scope.spawn(move || {
        let (shards, bs, held) = (plan.shards, plan.batch_size, plan.held());
        let offset = shards.rows_of_shards(&held).start;
        assert_eq!(
            data.rows,
            shards.rows_of_shards(&held).len(),
            "the held shards' rows"
        );
        for epoch in plan.from.0..plan.epochs {
            let orders: Vec<(usize, usize, Vec<usize>)> = held
                .clone()
                .map(|k| {
                    let rows = shards.rows_of(k);
                    let order = epoch_order(rows.len(), shard_seed(plan.seed, k), epoch);
                    (rows.start - offset, shards.part(bs, k), order)
                })
                .collect();
            for b in plan.first_in(epoch)..shards.batches(bs) {
                let idx: Vec<usize> = orders
                    .iter()
                    .flat_map(|(start, part, order)| {
                        let take = &order[(b * part).min(order.len())..((b + 1) * part).min(order.len())];
                        take.iter().map(move |&r| start + r)
                    })
                    .collect();
                if tx
                    .send(Ok(make_batch(data, &idx, layout, device, &plan)))
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    rx
}

/// One shard's rows streamed from the files: its range of the rows, read in blocks of whole
/// parts, each block shuffled (seeded by run, shard, block and epoch).
struct ShardStream<'a> {
    spec: &'a StreamSpec,
    k: usize,
    /// Rows of the shard left to read, rows per batch part and per block.
    left: usize,
    part: usize,
    block: usize,
    next_file: usize,
    source: Option<Source>,
    buf: EncodedData,
    order: Vec<usize>,
    at: usize,
    blocks: usize,
}

impl<'a> ShardStream<'a> {
    /// Shard `k` of `spec`, positioned at its first row: the rows before it are passed over
    /// (whole files unread; see [`Source::skip_rows`]).
    fn open(spec: &'a StreamSpec, k: usize, batch: usize) -> Result<Self, TrainError> {
        let shards = Shards {
            rows: spec.rows,
            count: spec.shards,
        };
        let rows = shards.rows_of(k);
        let part = shards.part(batch, k).max(1);
        let per_shard = spec.buffer_rows.max(1).div_ceil(spec.shards);
        let mut stream = Self {
            spec,
            k,
            left: rows.len(),
            part,
            block: per_shard.div_ceil(part) * part,
            next_file: 0,
            source: None,
            buf: mtl_data::empty_encoded(spec.encoder.schema()),
            order: Vec::new(),
            at: 0,
            blocks: 0,
        };
        let mut before = 0;
        for (f, &n) in spec.file_rows.iter().enumerate() {
            if rows.is_empty() {
                break;
            }
            if before + n > rows.start {
                let mut source = Source::open(&spec.files[f], spec.encoder.schema(), true)?;
                source.skip_rows(rows.start - before, &spec.encoder, spec.policy)?;
                stream.source = Some(source);
                stream.next_file = f + 1;
                break;
            }
            before += n;
        }
        Ok(stream)
    }

    /// Appends the shard's next part of a batch to `out` (nothing once the shard is spent).
    fn take_part(&mut self, out: &mut EncodedData, seed: u64, epoch: usize) -> Result<(), TrainError> {
        if self.at == self.order.len() && self.left > 0 {
            let identity: Vec<usize> = (0..self.spec.files.len()).collect();
            let mut buf = mtl_data::empty_encoded(self.spec.encoder.schema());
            let want = self.block.min(self.left);
            let got = read_block(
                self.spec,
                &identity,
                &mut self.next_file,
                &mut self.source,
                want,
                &mut buf,
            )?;
            self.left = if got < want { 0 } else { self.left - got };
            let block_seed = shard_seed(seed, self.k).wrapping_add(self.blocks as u64 + 1);
            self.order = epoch_order(buf.rows, block_seed, epoch);
            self.buf = buf;
            self.at = 0;
            self.blocks += 1;
        }
        let end = (self.at + self.part).min(self.order.len());
        out.append_rows(&self.buf, &self.order[self.at..end]);
        self.at = end;
        Ok(())
    }
}

/// [`spawn`] for shards streamed from the files: each held shard reads its own rows (see
/// [`ShardStream`]); one thread joins the shards' parts into this rank's batches, another
/// builds their tensors.
fn spawn_stream_sharded<'scope, 'env: 'scope>(
    scope: &'scope Scope<'scope, 'env>,
    spec: &'env StreamSpec,
    layout: &'env TableLayout,
    device: &'env Device,
    plan: LoaderPlan,
) -> Receiver<Result<Batch, TrainError>> {
    let (tx, rx) = sync_channel::<Result<Batch, TrainError>>(AHEAD);
    let rows_rx = producer(scope, AHEAD, move |rows_tx| {
        let bs = plan.batch_size;
        for epoch in plan.from.0..plan.epochs {
            let mut streams: Vec<ShardStream<'_>> = plan
                .held()
                .map(|k| ShardStream::open(spec, k, bs))
                .collect::<Result<_, _>>()?;
            for b in 0..plan.shards.batches(bs) {
                let mut rows = mtl_data::empty_encoded(spec.encoder.schema());
                for stream in &mut streams {
                    stream.take_part(&mut rows, plan.seed, epoch)?;
                }
                // a resumed run reads the rows before its position without batching them
                if b >= plan.first_in(epoch) && rows_tx.send(Ok(rows)).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    });
    scope.spawn(move || {
        for rows in rows_rx {
            let batch = rows.map(|rows| {
                let idx: Vec<usize> = (0..rows.rows).collect();
                make_batch(&rows, &idx, layout, device, &plan)
            });
            if tx.send(batch).is_err() {
                return;
            }
        }
    });
    rx
}

/// [`spawn`] for rows in memory: each epoch's seeded permutation of them.
fn spawn_memory<'scope, 'env: 'scope>(
    scope: &'scope Scope<'scope, 'env>,
    data: &'env EncodedData,
    layout: &'env TableLayout,
    device: &'env Device,
    plan: LoaderPlan,
) -> Receiver<Result<Batch, TrainError>> {
    let (tx, rx) = sync_channel::<Result<Batch, TrainError>>(AHEAD);
    scope.spawn(move || {
        let bs = plan.batch_size;
        let batches = data.rows.div_ceil(bs);
        for epoch in plan.from.0..plan.epochs {
            let order = epoch_order(data.rows, plan.seed, epoch);
            let first = plan.first_in(epoch);
            for bi in first..batches {
                let idx = &order[bi * bs..((bi + 1) * bs).min(data.rows)];
                if tx.send(Ok(make_batch(data, idx, layout, device, &plan))).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_loader_sends_the_rest_of_the_run_in_the_same_order() {
        // 10 rows, batches of 4 (3 per epoch), 2 epochs; each batch's first label is its row
        let data = EncodedData {
            rows: 10,
            n_labels: 1,
            labels: (0..10).map(|r| r as f32).collect(),
            ..Default::default()
        };
        let layout = TableLayout {
            rows: Vec::new(),
            offset: Vec::new(),
            total_rows: 0,
            slots: Vec::new(),
        };
        let device = Device::flex();
        let rows = |from: (usize, usize)| -> Vec<Vec<f32>> {
            let plan = LoaderPlan {
                weight_label: None,
                batch_size: 4,
                epochs: 2,
                seed: 7,
                from,
                row_sparse: false,
                share: (0, 1),
                shards: Shards { rows: 10, count: 1 },
            };
            labels_of(TrainRows::Memory(&data), &layout, plan)
        };
        let all = rows((0, 0));
        assert_eq!(all.len(), 6);
        assert_eq!(all.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2, 4, 4, 2]);
        let expected: Vec<f32> = epoch_order(10, 7, 1).iter().map(|&r| r as f32).collect();
        assert_eq!(all[3..].concat(), expected);
        assert_ne!(all[..3].concat(), expected, "each epoch has its own order");
        assert_eq!(rows((0, 2)), all[2..]);
        assert_eq!(rows((1, 1)), all[4..]);
        // dropping the receiver early ends the thread (the scope would hang otherwise)
        std::thread::scope(|s| {
            let rx = spawn(
                s,
                TrainRows::Memory(&data),
                &layout,
                &device,
                LoaderPlan {
                    weight_label: None,
                    batch_size: 1,
                    epochs: 100,
                    seed: 0,
                    from: (0, 0),
                    row_sparse: false,
                    share: (0, 1),
                    shards: Shards { rows: 10, count: 1 },
                },
            );
            assert!(rx.recv().is_ok());
        });
    }

    /// Three CSV files of 7, 5 and 9 rows: column `r` the row's global number (an id), `y` it
    /// again as a regression label, so that a batch's labels name its rows.
    fn stream_spec(dir: &std::path::Path, buffer_rows: usize) -> StreamSpec {
        let schema = mtl_features::Schema::from_toml_str(
            "[[sparse]]\nname = \"r\"\nvocab_size = 21\n[[labels]]\nname = \"y\"\nkind = \"regression\"\n",
            "s.toml",
        )
        .unwrap();
        let mut files = Vec::new();
        let mut next = 0;
        for (k, n) in [7, 5, 9].into_iter().enumerate() {
            let path = dir.join(format!("part-{k}.csv"));
            let mut text = String::from("r,y\n");
            for _ in 0..n {
                text += &format!("{next},{next}\n");
                next += 1;
            }
            std::fs::write(&path, text).unwrap();
            files.push(path);
        }
        let encoder = Encoder::new(&schema, &mtl_features::StateFitter::new(&schema).finish());
        let rows = count_rows(&files, &encoder, BadRowPolicy::Fail).unwrap();
        let file_rows = count_file_rows(&files, &encoder, BadRowPolicy::Fail, true).unwrap();
        StreamSpec {
            files,
            encoder,
            policy: BadRowPolicy::Fail,
            rows,
            buffer_rows,
            shards: 1,
            file_rows,
        }
    }

    fn streamed(spec: &StreamSpec, batch_size: usize, epochs: usize, from: (usize, usize)) -> Vec<Vec<f32>> {
        streamed_share(spec, batch_size, epochs, from, (0, 1))
    }

    fn streamed_share(
        spec: &StreamSpec,
        batch_size: usize,
        epochs: usize,
        from: (usize, usize),
        share: (usize, usize),
    ) -> Vec<Vec<f32>> {
        let layout = spec.encoder.layout().clone();
        let plan = LoaderPlan {
            weight_label: None,
            batch_size,
            epochs,
            seed: 3,
            from,
            row_sparse: true,
            share,
            shards: Shards {
                rows: spec.rows,
                count: spec.shards,
            },
        };
        labels_of(TrainRows::Stream(spec), &layout, plan)
    }

    #[test]
    fn streaming_sends_every_row_once_per_epoch_from_bounded_blocks() {
        let dir = tempfile::tempdir().unwrap();
        // blocks of 5 rows round up to 6 (two batches of 3)
        let spec = stream_spec(dir.path(), 5);
        assert_eq!(spec.rows, 21);
        let all = streamed(&spec, 3, 2, (0, 0));
        // ⌈21 / 3⌉ = 7 batches an epoch, as in memory
        assert_eq!(all.len(), 14);
        let files: Vec<Vec<f32>> = vec![
            (0..7).map(|r| r as f32).collect(),
            (7..12).map(|r| r as f32).collect(),
            (12..21).map(|r| r as f32).collect(),
        ];
        for (e, epoch) in all.chunks(7).enumerate() {
            // the epoch reads the files in its own order; block j holds rows 6j..6j+6 of that
            // sequence (in a shuffled order), and no batch mixes two blocks
            let read: Vec<f32> = file_order(3, 3, e)
                .iter()
                .flat_map(|&f| files[f].clone())
                .collect();
            for (j, block) in epoch.chunks(2).enumerate() {
                let mut got = block.concat();
                got.sort_by(f32::total_cmp);
                let mut want = read[j * 6..(j * 6 + 6).min(21)].to_vec();
                want.sort_by(f32::total_cmp);
                assert_eq!(got, want, "epoch {e}, block {j}");
            }
            let mut rows: Vec<f32> = epoch.concat();
            rows.sort_by(f32::total_cmp);
            assert_eq!(rows, (0..21).map(|r| r as f32).collect::<Vec<_>>());
        }
        assert_ne!(
            all[..7].concat(),
            all[7..].concat(),
            "each epoch has its own order"
        );
        // a resumed stream sends the rest of the run, in the same order
        assert_eq!(streamed(&spec, 3, 2, (0, 3)), all[3..]);
        assert_eq!(streamed(&spec, 3, 2, (1, 5)), all[12..]);
    }

    /// Each rank's batches, in memory (rows 0..10 labelled by their number) and streamed from
    /// the 21-row files, for `ranks` ranks and batches of `bs` rows over 2 epochs.
    fn rank_batches(
        spec: &StreamSpec,
        bs: usize,
        ranks: usize,
        rank: usize,
    ) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let data = EncodedData {
            rows: 10,
            n_labels: 1,
            labels: (0..10).map(|r| r as f32).collect(),
            ..Default::default()
        };
        let layout = spec.encoder.layout().clone();
        let plan = LoaderPlan {
            weight_label: None,
            batch_size: bs,
            epochs: 2,
            seed: 7,
            from: (0, 0),
            row_sparse: false,
            share: (rank, ranks),
            shards: Shards { rows: 10, count: 1 },
        };
        let memory = labels_of(TrainRows::Memory(&data), &layout, plan);
        (memory, streamed_share(spec, bs, 2, (0, 0), (rank, ranks)))
    }

    /// `spec` with its files as Parquet shards of row groups of 2 rows.
    fn as_parquet(spec: StreamSpec, dir: &std::path::Path) -> StreamSpec {
        let files = spec
            .files
            .iter()
            .enumerate()
            .map(|(k, csv)| {
                let out = dir.join(format!("part-{k}.parquet"));
                mtl_data::parquet::csv_to_parquet(csv, &out, mtl_data::parquet::Codec::Snappy, 2, None, 100)
                    .unwrap();
                out
            })
            .collect();
        StreamSpec { files, ..spec }
    }

    #[test]
    fn ranks_split_each_global_batch_and_see_every_row_once_an_epoch() {
        let dir = tempfile::tempdir().unwrap();
        for parquet in [false, true] {
            let spec = stream_spec(dir.path(), 5);
            let spec = if parquet {
                as_parquet(spec, dir.path())
            } else {
                spec
            };
            ranks_share_batches(&spec);
        }
    }

    /// The ranks' batches of `spec` (and of 10 rows in memory), 3 ranks, batches of 4.
    fn ranks_share_batches(spec: &StreamSpec) {
        // 3 ranks, batches of 4: neither 10 nor 21 rows divide, and the last batches (2 and 1
        // rows) leave a rank with nothing
        let (whole_memory, whole_stream) = rank_batches(spec, 4, 1, 0);
        let parts: Vec<_> = (0..3).map(|r| rank_batches(spec, 4, 3, r)).collect();
        for (whole, part) in [
            (&whole_memory, parts.iter().map(|p| &p.0).collect::<Vec<_>>()),
            (&whole_stream, parts.iter().map(|p| &p.1).collect::<Vec<_>>()),
        ] {
            for (b, global) in whole.iter().enumerate() {
                // the ranks' parts, in rank order, are the one-process batch
                let joined: Vec<f32> = part.iter().flat_map(|p| p[b].clone()).collect();
                assert_eq!(&joined, global, "batch {b}");
            }
            assert!(
                part.iter().all(|p| p.len() == whole.len()),
                "every rank takes every step"
            );
        }
        // every row once an epoch across the ranks: 3 + 3 batches in memory, 6 + 6 streamed
        for (whole, rows) in [(&whole_memory, 10), (&whole_stream, 21)] {
            let per_epoch = whole.len() / 2;
            for epoch in whole.chunks(per_epoch) {
                let mut seen: Vec<f32> = epoch.concat();
                seen.sort_by(f32::total_cmp);
                assert_eq!(seen, (0..rows).map(|r| r as f32).collect::<Vec<_>>());
            }
        }
        assert!(
            parts[0].0[2].is_empty() && parts[1].0[2].len() == 1,
            "{:?}",
            parts[0].0
        );
    }

    /// A loader run: its batches' labels for (rank, ranks) and a resume position.
    type Run<'a> = Box<dyn Fn((usize, usize), (usize, usize)) -> Vec<Vec<f32>> + 'a>;

    /// Labels of every batch `rows` sends under `plan`.
    fn labels_of(rows: TrainRows<'_>, layout: &TableLayout, plan: LoaderPlan) -> Vec<Vec<f32>> {
        let device = Device::flex();
        std::thread::scope(|s| {
            spawn(s, rows, layout, &device, plan)
                .iter()
                .map(|b| b.unwrap().tensors.labels.into_data().try_to_vec::<f32>().unwrap())
                .collect()
        })
    }

    /// 3 shards of 10 rows in memory and of the 21-row files streamed, on 1, 2 and 3 ranks:
    /// the ranks' parts joined are one process's batch, each rank of 3 holds one shard's rows
    /// only, every row comes once an epoch, and shard k gives batch b its rows of shard k.
    #[test]
    fn shards_make_the_batches_whatever_the_ranks_and_ranks_that_divide_them_read_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let csv = stream_spec(dir.path(), 4);
        let parquet = as_parquet(stream_spec(dir.path(), 4), dir.path());
        let layout = csv.encoder.layout().clone();
        let plan = |rows: usize, share: (usize, usize), from: (usize, usize)| LoaderPlan {
            weight_label: None,
            batch_size: 4,
            epochs: 2,
            seed: 5,
            from,
            row_sparse: false,
            share,
            shards: Shards { rows, count: 3 },
        };
        // in memory: the rank's rows only (its shards' range), labelled by their number
        let held = |range: std::ops::Range<usize>| EncodedData {
            rows: range.len(),
            n_labels: 1,
            labels: range.map(|r| r as f32).collect(),
            ..Default::default()
        };
        let shards = Shards { rows: 10, count: 3 };
        let memory = |share: (usize, usize), from| {
            let range = match shards.held(share.0, share.1) {
                Some(h) => shards.rows_of_shards(&h),
                None => 0..10,
            };
            let data = held(range);
            labels_of(TrainRows::Sharded(&data, shards), &layout, plan(10, share, from))
        };
        let streamed = |spec: &StreamSpec, share: (usize, usize), from| {
            let spec = StreamSpec {
                files: spec.files.clone(),
                encoder: spec.encoder.clone(),
                file_rows: spec.file_rows.clone(),
                shards: 3,
                ..*spec
            };
            labels_of(TrainRows::Stream(&spec), &layout, plan(21, share, from))
        };
        let runs: [(usize, Run<'_>); 3] = [
            (10, Box::new(memory)),
            (21, Box::new(|share, from| streamed(&csv, share, from))),
            (21, Box::new(|share, from| streamed(&parquet, share, from))),
        ];
        for (rows, run) in &runs {
            let split = Shards {
                rows: *rows,
                count: 3,
            };
            let whole = run((0, 1), (0, 0));
            assert_eq!(whole.len(), 2 * split.batches(4), "{rows} rows");
            for ranks in [2, 3] {
                let parts: Vec<_> = (0..ranks).map(|r| run((r, ranks), (0, 0))).collect();
                for (b, global) in whole.iter().enumerate() {
                    let joined: Vec<f32> = parts.iter().flat_map(|p| p[b].clone()).collect();
                    assert_eq!(&joined, global, "{rows} rows, {ranks} ranks, batch {b}");
                }
                if ranks == 3 {
                    // rank k holds shard k alone: every label it sees is one of its rows
                    for (k, part) in parts.iter().enumerate() {
                        let own = split.rows_of(k);
                        assert!(
                            part.concat().iter().all(|&r| own.contains(&(r as usize))),
                            "rank {k}"
                        );
                    }
                }
            }
            for epoch in whole.chunks(split.batches(4)) {
                let mut seen = epoch.concat();
                seen.sort_by(f32::total_cmp);
                assert_eq!(seen, (0..*rows).map(|r| r as f32).collect::<Vec<_>>(), "{rows}");
                // batch b holds shard k's part b: 1, 1 and 2 rows of a batch of 4
                for batch in epoch.iter().filter(|b| b.len() == 4) {
                    let shard_of = |r: f32| (0..3).find(|&k| split.rows_of(k).contains(&(r as usize)));
                    let owners: Vec<_> = batch.iter().map(|&r| shard_of(r).unwrap()).collect();
                    assert_eq!(owners, [0, 1, 2, 2], "{batch:?}");
                }
            }
            assert_ne!(
                whole[..whole.len() / 2],
                whole[whole.len() / 2..],
                "each epoch its own order"
            );
            // a resumed run continues in the same order
            let per_epoch = split.batches(4);
            assert_eq!(run((0, 1), (1, 1)), whole[per_epoch + 1..], "{rows} rows resumed");
        }
    }

    #[test]
    fn label_means_skip_missing_values_and_streaming_reads_a_prefix() {
        let data = EncodedData {
            rows: 4,
            n_labels: 2,
            labels: vec![1.0, 0.5, 0.0, f32::NAN, 1.0, 1.5, 0.0, f32::NAN],
            ..Default::default()
        };
        let means = label_means(TrainRows::Memory(&data), &Group::default(), None).unwrap();
        assert_eq!(means[0], 0.5);
        assert_eq!(means[1], 1.0, "the mean of 0.5 and 1.5; NaN rows left out");
        let empty = EncodedData {
            rows: 1,
            n_labels: 1,
            labels: vec![f32::NAN],
            ..Default::default()
        };
        assert!(label_means(TrainRows::Memory(&empty), &Group::default(), None).unwrap()[0].is_nan());
        // streaming: files of 7, 5 and 9 rows labelled 0..21
        let dir = tempfile::tempdir().unwrap();
        let spec = stream_spec(dir.path(), 4);
        assert_eq!(
            label_means(TrainRows::Stream(&spec), &Group::default(), None).unwrap(),
            [10.0]
        );
        // the first 10 rows (across the first two files): 0..10
        assert_eq!(
            label_means_upto(TrainRows::Stream(&spec), 10, &Group::default(), None).unwrap(),
            [4.5]
        );
    }

    #[test]
    fn a_bad_row_met_while_streaming_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = stream_spec(dir.path(), 4);
        std::fs::write(&spec.files[1], "r,y\n7,7\n8,x\n").unwrap();
        spec.rows = 21;
        let device = Device::flex();
        let layout = spec.encoder.layout().clone();
        let plan = LoaderPlan {
            weight_label: None,
            batch_size: 2,
            epochs: 1,
            seed: 3,
            from: (0, 0),
            row_sparse: false,
            share: (0, 1),
            shards: Shards { rows: 21, count: 1 },
        };
        let err = std::thread::scope(|s| {
            spawn(s, TrainRows::Stream(&spec), &layout, &device, plan)
                .iter()
                .find_map(Result::err)
                .unwrap()
                .to_string()
        });
        assert!(err.contains("part-1.csv:3") && err.contains("`y`"), "{err}");
    }
}
