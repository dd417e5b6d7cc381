//! Batch loading: the rows of each epoch in a seeded order, assembled into batches on a helper
//! thread a few batches ahead of the step that needs them — from rows held in memory, or
//! streamed from the files ([`StreamSpec`]) through a bounded shuffle buffer.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::Scope;

use burn::tensor::Device;
use mtl_data::{BadRowPolicy, ReadReport, Source};
use mtl_features::{BatchTensors, EncodedData, Encoder, TableLayout};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::TrainError;
use crate::config::TrainSettings;
use crate::fit::collective::share;
use crate::fit::state::TrainState;

/// A batch as the loader hands it over.
pub struct Batch {
    /// The batch's tensors; for row-sparse training its ids index [`Batch::table_rows`].
    pub tensors: BatchTensors,
    /// Row-sparse training: the batch's distinct table rows, in first-seen order (else empty).
    pub table_rows: Vec<i32>,
}

/// The training rows: encoded in memory, or streamed from their files each epoch.
#[derive(Clone, Copy)]
pub enum TrainRows<'a> {
    /// Every row, encoded.
    Memory(&'a EncodedData),
    /// Read from the files as training goes.
    Stream(&'a StreamSpec),
}

impl<'a> From<&'a EncodedData> for TrainRows<'a> {
    fn from(data: &'a EncodedData) -> Self {
        Self::Memory(data)
    }
}

impl TrainRows<'_> {
    /// Rows per epoch.
    pub fn rows(&self) -> usize {
        match self {
            Self::Memory(d) => d.rows,
            Self::Stream(s) => s.rows,
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
    /// Rows per shuffle block (rounded up to whole batches).
    pub buffer_rows: usize,
}

/// Rows read from a file at a time.
const CHUNK_ROWS: usize = 65_536;

/// The good rows of `files` (bad ones follow `policy`), read in chunks without keeping them.
/// A Parquet file under the `fail` policy is counted from its footer: a bad row in it stops
/// training anyway when it is reached (its columns are still checked against the schema).
pub fn count_rows(files: &[PathBuf], encoder: &Encoder, policy: BadRowPolicy) -> Result<usize, TrainError> {
    let mut rows = 0;
    for path in files {
        let mut source = Source::open(path, encoder.schema(), true)?;
        if policy == BadRowPolicy::Fail && mtl_data::parquet::is_parquet(path) {
            rows += mtl_data::parquet::row_count(path)? as usize;
            continue;
        }
        rows += read_chunks(&mut source, encoder, policy, usize::MAX, |_| {})?;
    }
    Ok(rows)
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
/// has no finite value.
pub fn label_means(rows: TrainRows<'_>) -> Result<Vec<f64>, TrainError> {
    label_means_upto(rows, PRIOR_ROWS)
}

/// [`label_means`], streaming reading the first `max_rows` rows.
fn label_means_upto(rows: TrainRows<'_>, max_rows: usize) -> Result<Vec<f64>, TrainError> {
    let mut sums = LabelSums::default();
    match rows {
        TrainRows::Memory(data) => sums.add(data),
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

/// Per label column: the sum and count of its finite values.
#[derive(Default)]
struct LabelSums {
    rows: usize,
    sums: Vec<(f64, u64)>,
}

impl LabelSums {
    fn add(&mut self, data: &EncodedData) {
        let n = data.n_labels;
        self.sums.resize(n, (0.0, 0));
        if n > 0 {
            for row in data.labels.chunks_exact(n) {
                for (acc, &v) in self.sums.iter_mut().zip(row) {
                    if v.is_finite() {
                        acc.0 += f64::from(v);
                        acc.1 += 1;
                    }
                }
            }
        }
        self.rows += data.rows;
    }

    fn means(&self) -> Vec<f64> {
        self.sums
            .iter()
            .map(|&(sum, count)| if count > 0 { sum / count as f64 } else { f64::NAN })
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
    let (blocks_tx, blocks_rx) = sync_channel::<Result<(usize, usize, EncodedData), TrainError>>(1);
    scope.spawn(move || {
        let read = || -> Result<(), TrainError> {
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
        };
        if let Err(e) = read() {
            let _ = blocks_tx.send(Err(e));
        }
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
            let first = if epoch == plan.from.0 { plan.from.1 } else { 0 };
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

/// This rank's part of the global batch of rows `idx` of `data` (all of it in one process).
fn make_batch(
    data: &EncodedData,
    idx: &[usize],
    layout: &TableLayout,
    device: &Device,
    plan: &LoaderPlan,
) -> Batch {
    let idx = &idx[share(idx.len(), plan.share.0, plan.share.1)];
    if plan.row_sparse {
        let (tensors, table_rows) = data.batch_unique(idx, layout, device);
        Batch { tensors, table_rows }
    } else {
        Batch {
            tensors: data.batch(idx, layout, device),
            table_rows: Vec::new(),
        }
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
    ) -> Self {
        Self {
            batch_size: settings.batch_size,
            epochs: settings.epochs,
            seed: settings.seed,
            from: (state.epoch, state.batch_in_epoch),
            row_sparse,
            share,
        }
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
        TrainRows::Stream(spec) => spawn_stream(scope, spec, layout, device, plan),
    }
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
            let first = if epoch == plan.from.0 { plan.from.1 } else { 0 };
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
                batch_size: 4,
                epochs: 2,
                seed: 7,
                from,
                row_sparse: false,
                share: (0, 1),
            };
            std::thread::scope(|s| {
                spawn(s, TrainRows::Memory(&data), &layout, &device, plan)
                    .iter()
                    .map(|b| b.unwrap().tensors.labels.into_data().try_to_vec::<f32>().unwrap())
                    .collect()
            })
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
                    batch_size: 1,
                    epochs: 100,
                    seed: 0,
                    from: (0, 0),
                    row_sparse: false,
                    share: (0, 1),
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
        StreamSpec {
            files,
            encoder,
            policy: BadRowPolicy::Fail,
            rows,
            buffer_rows,
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
        let device = Device::flex();
        let layout = spec.encoder.layout().clone();
        let plan = LoaderPlan {
            batch_size,
            epochs,
            seed: 3,
            from,
            row_sparse: true,
            share,
        };
        std::thread::scope(|s| {
            spawn(s, TrainRows::Stream(spec), &layout, &device, plan)
                .iter()
                .map(|b| b.unwrap().tensors.labels.into_data().try_to_vec::<f32>().unwrap())
                .collect()
        })
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
        let device = Device::flex();
        let plan = LoaderPlan {
            batch_size: bs,
            epochs: 2,
            seed: 7,
            from: (0, 0),
            row_sparse: false,
            share: (rank, ranks),
        };
        let memory = std::thread::scope(|s| {
            spawn(s, TrainRows::Memory(&data), &layout, &device, plan)
                .iter()
                .map(|b| b.unwrap().tensors.labels.into_data().try_to_vec::<f32>().unwrap())
                .collect()
        });
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

    #[test]
    fn label_means_skip_missing_values_and_streaming_reads_a_prefix() {
        let data = EncodedData {
            rows: 4,
            n_labels: 2,
            labels: vec![1.0, 0.5, 0.0, f32::NAN, 1.0, 1.5, 0.0, f32::NAN],
            ..Default::default()
        };
        let means = label_means(TrainRows::Memory(&data)).unwrap();
        assert_eq!(means[0], 0.5);
        assert_eq!(means[1], 1.0, "the mean of 0.5 and 1.5; NaN rows left out");
        let empty = EncodedData {
            rows: 1,
            n_labels: 1,
            labels: vec![f32::NAN],
            ..Default::default()
        };
        assert!(label_means(TrainRows::Memory(&empty)).unwrap()[0].is_nan());
        // streaming: files of 7, 5 and 9 rows labelled 0..21
        let dir = tempfile::tempdir().unwrap();
        let spec = stream_spec(dir.path(), 4);
        assert_eq!(label_means(TrainRows::Stream(&spec)).unwrap(), [10.0]);
        // the first 10 rows (across the first two files): 0..10
        assert_eq!(label_means_upto(TrainRows::Stream(&spec), 10).unwrap(), [4.5]);
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
            batch_size: 2,
            epochs: 1,
            seed: 3,
            from: (0, 0),
            row_sparse: false,
            share: (0, 1),
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
