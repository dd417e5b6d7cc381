//! Predicting a whole set: every output for every row, in batches, read back to the host.

use burn::tensor::{Device, Tensor};
use mtl_features::{BackendKind, EncodedData, TableLayout};
use mtl_layers::MultiTaskModel;
use rayon::prelude::*;

use crate::EvalError;

/// Reads a `[n]` tensor back to the host; a backend failure is an error, never an empty list.
pub fn to_host(t: Tensor<1>) -> Result<Vec<f32>, EvalError> {
    let n = t.dims()[0];
    let values = t
        .try_into_data()
        .map_err(|e| EvalError::Backend(format!("reading results from the device: {e:?}")))?
        .try_to_vec::<f32>()
        .map_err(|e| EvalError::Backend(format!("reading results from the device: {e:?}")))?;
    if values.len() != n {
        return Err(EvalError::Backend(format!(
            "expected {n} values from the device, got {}",
            values.len()
        )));
    }
    Ok(values)
}

/// One column of predictions per output, and the mean loss terms when asked for.
pub type Predictions = (Vec<Vec<f32>>, Option<Vec<f64>>);

/// Whether [`predict_rows`] also computes the loss terms, and how the rows count in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Losses {
    /// Predictions only.
    Skip,
    /// The mean loss terms over the rows.
    Mean,
    /// The loss terms with each row counted by its sample weight (label column `.0`).
    Weighted(usize),
}

/// Predictions of every output for every row of `data`, in batches, with the model in
/// evaluation mode on the plain device. Also returns the mean loss terms when `with_loss`.
pub fn predict_all<M: MultiTaskModel>(
    model: &M,
    data: &EncodedData,
    layout: &TableLayout,
    device: &Device,
    batch_size: usize,
    with_loss: bool,
) -> Result<Predictions, EvalError> {
    let losses = if with_loss { Losses::Mean } else { Losses::Skip };
    predict_rows(model, data, 0..data.rows, layout, device, batch_size, losses)
}

/// [`predict_all`] for the rows `rows` of `data` (one rank's share of a set): their
/// predictions, and their loss terms as `losses` asks (zeros for no rows).
///
/// On a CPU backend with several rayon threads the batches are predicted side by side (a
/// batch's own operations scale worse over the threads than whole batches do); each batch is
/// the same rows and the same operations either way, and the loss terms are summed in batch
/// order, so the results are the same floats.
pub fn predict_rows<M: MultiTaskModel>(
    model: &M,
    data: &EncodedData,
    rows: std::ops::Range<usize>,
    layout: &TableLayout,
    device: &Device,
    batch_size: usize,
    losses: Losses,
) -> Result<Predictions, EvalError> {
    let last = rows.end.min(data.rows);
    let starts: Vec<usize> = (rows.start..last).step_by(batch_size.max(1)).collect();
    let batch = |start: usize| {
        let idx: Vec<usize> = (start..(start + batch_size).min(last)).collect();
        predict_batch(model, data, &idx, layout, device, losses)
    };
    let threads = rayon::current_num_threads();
    let side_by_side = threads > 1 && starts.len() > 1 && BackendKind::is_host_device(device);
    let mut preds = vec![Vec::with_capacity(last.saturating_sub(rows.start)); model.outputs().len()];
    let (mut loss_sums, mut mass): (Vec<f64>, f64) = (Vec::new(), 0.0);
    // a few batches per thread at a time, so that only those wait beside the predictions
    for wave in starts.chunks(4 * threads) {
        let parts: Vec<_> = match side_by_side {
            true => wave.par_iter().map(|&s| batch(s)).collect::<Result<_, _>>()?,
            false => wave.iter().map(|&s| batch(s)).collect::<Result<_, _>>()?,
        };
        for part in parts {
            for (p, o) in preds.iter_mut().zip(part.outputs) {
                p.extend(o);
            }
            loss_sums.resize(part.terms.len(), 0.0);
            for (s, t) in loss_sums.iter_mut().zip(part.terms) {
                *s += f64::from(t) * part.mass;
            }
            mass += part.mass;
        }
    }
    let mass = if mass > 0.0 { mass } else { 1.0 };
    let losses = (losses != Losses::Skip).then(|| loss_sums.iter().map(|s| s / mass).collect());
    Ok((preds, losses))
}

/// What one batch gave: its predictions (read back), its loss terms (none with
/// [`Losses::Skip`]) and the mass its rows count for in the loss.
struct BatchPrediction {
    outputs: Vec<Vec<f32>>,
    terms: Vec<f32>,
    mass: f64,
}

/// Predicts one batch, the rows `idx` of `data`.
fn predict_batch<M: MultiTaskModel>(
    model: &M,
    data: &EncodedData,
    idx: &[usize],
    layout: &TableLayout,
    device: &Device,
    losses: Losses,
) -> Result<BatchPrediction, EvalError> {
    let batch = data.batch(idx, layout, device);
    let (batch, mass) = match losses {
        Losses::Weighted(label) => batch.with_weights(&data.label_of(idx, label)),
        _ => (batch, idx.len() as f64),
    };
    let (outputs, terms) = if losses == Losses::Skip {
        (model.predict(&batch), Vec::new())
    } else {
        let f = model.forward(&batch);
        (f.predictions, to_host(Tensor::cat(f.losses, 0))?)
    };
    let outputs = outputs.into_iter().map(to_host).collect::<Result<Vec<_>, _>>()?;
    Ok(BatchPrediction { outputs, terms, mass })
}
