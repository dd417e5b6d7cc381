//! Writing predictions for a data file.

use std::path::Path;
use std::time::Instant;

use mtl_data::{BadRowPolicy, Input, ReadReport, read_input};
use mtl_features::atomic_write_with;

use crate::jobs::model_dir::open_for_inference;
use crate::{Registry, TrainError};

/// The column of input line numbers that `predict` writes when bad rows are skipped.
pub const INPUT_LINE_COLUMN: &str = "input_line";

/// Writes predictions for a CSV file: a header, then one row per kept input row with the id
/// column (if asked) and one column per output. When bad rows are skipped, the first column
/// is the input line of each row (`input_line`), so that no prediction can be matched to the
/// wrong row. Written atomically, with the `csv` writer (ids holding commas are quoted). The
/// model of an unfinished run is used only when `allow_unfinished`.
pub fn predict_file<R: Registry>(
    dir: &Path,
    data: &Path,
    out: &Path,
    id_column: Option<&str>,
    backend: &str,
    policy: BadRowPolicy,
    allow_unfinished: bool,
) -> Result<(usize, ReadReport, Vec<String>), TrainError> {
    mtl_features::check_output(out, &[data])?;
    let started = Instant::now();
    let input = Input::File(data.to_path_buf());
    let p = predict_input::<R>(dir, &input, id_column, backend, policy, allow_unfinished)?;
    let mut header: Vec<String> = Vec::with_capacity(p.names.len() + 2);
    if p.lines.is_some() {
        header.push(INPUT_LINE_COLUMN.to_string());
    }
    header.extend(id_column.map(str::to_string));
    header.extend(p.names.iter().cloned());
    atomic_write_with(out, |w| {
        let mut csv = csv::Writer::from_writer(w);
        csv.write_record(&header)?;
        crate::crash::crash_point("predict-writing");
        let mut row: Vec<String> = Vec::with_capacity(header.len());
        for r in 0..p.rows {
            row.clear();
            row.extend(p.lines.as_ref().map(|lines| lines[r].to_string()));
            row.extend(p.ids.as_ref().map(|ids| ids[r].clone()));
            row.extend(p.columns.iter().map(|c| c[r].to_string()));
            csv.write_record(&row)?;
        }
        csv.flush()
    })?;
    tracing::info!(rows = p.rows, secs = started.elapsed().as_secs_f64(), "predicted");
    Ok((p.rows, p.report, p.names))
}

/// Predictions held in memory ([`predict_input`]).
#[derive(Debug)]
pub struct Predictions {
    /// Rows predicted (the rows kept).
    pub rows: usize,
    /// The outputs, in the model's order.
    pub names: Vec<String>,
    /// One column per output, one value per kept row (calibrated, as `mtl predict` writes).
    pub columns: Vec<Vec<f32>>,
    /// What was read (rows, rows skipped and why).
    pub report: ReadReport,
    /// Each kept row's input line (its row from 1, for a table) when bad rows are skipped.
    pub lines: Option<Vec<u64>>,
    /// Each kept row's text in the id column, when one was asked for.
    pub ids: Option<Vec<String>>,
}

/// Predictions for any [`Input`] (a file, or Arrow batches held in memory), kept in memory:
/// what [`predict_file`] writes. `id_column`, when given, is kept as text per row.
pub fn predict_input<R: Registry>(
    dir: &Path,
    data: &Input,
    id_column: Option<&str>,
    backend: &str,
    policy: BadRowPolicy,
    allow_unfinished: bool,
) -> Result<Predictions, TrainError> {
    let model = open_for_inference::<R>(dir, allow_unfinished)?;
    let keep_lines = policy == BadRowPolicy::Skip;
    let tag = id_column.map(|c| (c, "--id-column"));
    let (encoded, report, tags) = read_input(data, &model.encoder, policy, false, tag, keep_lines)?;
    let (names, columns) = model.predict(&encoded, backend, 4096)?;
    Ok(Predictions {
        rows: encoded.rows,
        names,
        columns,
        report,
        lines: keep_lines.then_some(tags.lines),
        ids: id_column.map(|_| tags.ids),
    })
}
