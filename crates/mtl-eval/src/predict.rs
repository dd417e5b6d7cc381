//! Predicting a whole set: every output for every row, in batches, read back to the host.

use burn::tensor::{Device, Tensor};
use mtl_features::{EncodedData, TableLayout};
use mtl_layers::MultiTaskModel;

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
pub fn predict_rows<M: MultiTaskModel>(
    model: &M,
    data: &EncodedData,
    rows: std::ops::Range<usize>,
    layout: &TableLayout,
    device: &Device,
    batch_size: usize,
    losses: Losses,
) -> Result<Predictions, EvalError> {
    let n_out = model.outputs().len();
    let last = rows.end.min(data.rows);
    let n = last.saturating_sub(rows.start);
    let mut preds = vec![Vec::with_capacity(n); n_out];
    let (mut loss_sums, mut mass): (Vec<f64>, f64) = (Vec::new(), 0.0);
    let mut start = rows.start;
    while start < last {
        let end = (start + batch_size).min(last);
        let idx: Vec<usize> = (start..end).collect();
        let batch = data.batch(&idx, layout, device);
        let (batch, batch_mass) = match losses {
            Losses::Weighted(label) => batch.with_weights(&data.label_of(&idx, label)),
            _ => (batch, idx.len() as f64),
        };
        let outputs = if losses == Losses::Skip {
            model.predict(&batch)
        } else {
            let f = model.forward(&batch);
            let terms = to_host(Tensor::cat(f.losses, 0))?;
            loss_sums.resize(terms.len(), 0.0);
            for (s, t) in loss_sums.iter_mut().zip(terms) {
                *s += f64::from(t) * batch_mass;
            }
            mass += batch_mass;
            f.predictions
        };
        for (p, o) in preds.iter_mut().zip(outputs) {
            p.extend(to_host(o)?);
        }
        start = end;
    }
    let mass = if mass > 0.0 { mass } else { 1.0 };
    let losses = (losses != Losses::Skip).then(|| loss_sums.iter().map(|s| s / mass).collect());
    Ok((preds, losses))
}
