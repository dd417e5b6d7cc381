//! The model worker: one thread owns the model and scores the queued requests, several at a
//! time — after the first request it takes the ones already queued and, while more are being
//! parsed, waits for them up to the configured time, until a batch holds the maximum rows.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use mtl_eval::predict_all;
use mtl_features::{EncodedData, TableLayout};
use mtl_layers::MultiTaskModel;
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// Scores per output (one `Vec` per output, one value per row), or why scoring failed.
pub(crate) type Scores = Result<Vec<Vec<f32>>, String>;

/// One request's encoded rows and where its scores go.
pub(crate) struct Job {
    /// The rows.
    pub data: EncodedData,
    /// Receives the request's scores.
    pub reply: oneshot::Sender<Scores>,
}

/// How requests are batched together.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Rows per model batch, at most (one larger request is scored on its own).
    pub max_rows: usize,
    /// How long to wait for requests that are still being parsed.
    pub max_wait: Duration,
}

/// Scores jobs from `queue` until every sender is gone. `parsing` counts the requests that
/// have been received but not yet queued (the worker waits for those, up to `max_wait`).
pub(crate) fn run<M: MultiTaskModel>(
    model: &M,
    layout: &TableLayout,
    device: &Device,
    queue: &Receiver<Job>,
    batching: Batching,
    parsing: &Arc<AtomicUsize>,
    metrics: &Metrics,
) {
    while let Ok(first) = queue.recv() {
        let mut rows = first.data.rows;
        let mut jobs = vec![first];
        let deadline = Instant::now() + batching.max_wait;
        while rows < batching.max_rows {
            let next = match queue.try_recv() {
                Ok(job) => Some(job),
                // nothing queued: wait only while requests are on their way
                Err(_) if parsing.load(Ordering::Acquire) > 0 => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    queue.recv_timeout(left).ok()
                }
                Err(_) => None,
            };
            let Some(job) = next else { break };
            if rows + job.data.rows > batching.max_rows {
                // over the batch: score what we have, then this one first
                score(model, layout, device, std::mem::take(&mut jobs), metrics);
                rows = 0;
            }
            rows += job.data.rows;
            jobs.push(job);
        }
        score(model, layout, device, jobs, metrics);
    }
}

/// Scores `jobs` as one batch and sends each its part.
fn score<M: MultiTaskModel>(
    model: &M,
    layout: &TableLayout,
    device: &Device,
    jobs: Vec<Job>,
    metrics: &Metrics,
) {
    if jobs.is_empty() {
        return;
    }
    let mut data = EncodedData::empty(
        jobs[0].data.n_sparse,
        jobs[0].data.seq_max_len.clone(),
        jobs[0].data.n_dense,
        jobs[0].data.n_labels,
    );
    for job in &jobs {
        data.append(&job.data);
    }
    metrics.batch_rows.observe(data.rows as f64);
    // a fault in the backend answers the batch's requests with an error; the server goes on
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        predict_all(model, &data, layout, device, data.rows.max(1), false)
    }));
    let scores: Scores = match result {
        Ok(Ok((columns, _))) => Ok(columns),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the model failed on this batch (a panic in the backend)".into()),
    };
    let mut start = 0;
    for job in jobs {
        let n = job.data.rows;
        let part = scores
            .as_ref()
            .map(|cols| cols.iter().map(|c| c[start..start + n].to_vec()).collect())
            .map_err(Clone::clone);
        start += n;
        // the client may have gone; nothing to do then
        let _ = job.reply.send(part);
    }
}
