//! # mtl-py — the native module of the `mtl` Python package (`mtl._mtl`)
//!
//! The same library calls `mtl-cli` makes, for Python: train from a config file or a dict,
//! predict and evaluate on a file or on Arrow data (a pandas DataFrame or a PyArrow table,
//! handed over through the Arrow C stream interface without a copy), infer a schema, list the
//! models, generate synthetic data. The GIL is released while Rust works; training watches
//! for Ctrl-C and stops after the step under way with a checkpoint. Every error is an
//! `mtl.MtlError` carrying the message the CLI prints (file, line, field). The Python layer
//! (`python/mtl/__init__.py`) turns the results into dicts and DataFrames.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow_array::{Array, ArrayRef, Float32Array, RecordBatch, UInt64Array};
use arrow_pyarrow::{FromPyArrow, ToPyArrow};
use mtl_data::{BadRowPolicy, Input};
use mtl_layers::Registry;
use mtl_models::Models;
use mtl_trainer::{Overrides, RunConfig, TrainOptions};

/// The command's allocator: freed tensors are reused instead of mapped afresh (with the
/// process's glibc malloc, page faults made MMOE-large prediction ~25 % slower than `mtl
/// predict`). Arrow buffers handed to Python are freed through their release callback, here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use pyo3::create_exception;
use pyo3::prelude::*;

create_exception!(
    _mtl,
    MtlError,
    pyo3::exceptions::PyException,
    "An error of mtl: the message names the file, line and field, as `mtl` on the command line does."
);

/// An error and its causes on one line, each said once (as `mtl` prints it).
fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        cause = c.source();
    }
    line
}

/// `error` as an `MtlError`, after `context` (what was being done) when given.
fn mtl_err(context: Option<&str>, error: impl std::error::Error + 'static) -> PyErr {
    let line = error_line(&error);
    MtlError::new_err(match context {
        Some(c) => format!("{c}: {line}"),
        None => line,
    })
}

/// The bad-row policy `skip_bad_rows` asks for.
fn policy(skip_bad_rows: bool) -> BadRowPolicy {
    match skip_bad_rows {
        true => BadRowPolicy::Skip,
        false => BadRowPolicy::Fail,
    }
}

/// The data a call reads: a path (`str` or `os.PathLike`), or any object with the Arrow C
/// stream interface (`__arrow_c_stream__`: a PyArrow table or reader), named `name` in
/// messages. Its batches are imported without copying their buffers.
fn input(data: &Bound<'_, PyAny>, name: &str) -> PyResult<Input> {
    if let Ok(path) = data.extract::<PathBuf>() {
        return Ok(Input::File(path));
    }
    let reader = arrow_array::ffi_stream::RecordBatchStreamReader::from_pyarrow_bound(data)?;
    let schema = arrow_array::RecordBatchReader::schema(&reader);
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| mtl_err(Some(name), e))?;
    Ok(Input::Arrow {
        name: name.to_string(),
        schema,
        batches,
    })
}

/// Trains a model into `out` and returns the job's summary as JSON (what `mtl train` prints,
/// with every evaluation). The config is a file (`config_path`) or a table given as JSON
/// (`config_json`, relative paths against the working directory); `sets` are `--set`
/// assignments; the keyword arguments are `mtl train`'s options. `resume` continues the run
/// in `out` (no config then; `epochs` trains a finished run further). Ctrl-C stops the run
/// after the step under way, leaving a checkpoint, and raises `KeyboardInterrupt`.
#[pyfunction]
#[pyo3(signature = (
    out, config_path=None, config_json=None, *, sets=Vec::new(), resume=false, progress=true,
    data=None, valid=None, epochs=None, batch_size=None, lr=None, seed=None, max_steps=None,
    backend=None, tensorboard=None
))]
#[allow(clippy::too_many_arguments)]
fn train(
    py: Python<'_>,
    out: PathBuf,
    config_path: Option<PathBuf>,
    config_json: Option<String>,
    sets: Vec<String>,
    resume: bool,
    progress: bool,
    data: Option<PathBuf>,
    valid: Option<PathBuf>,
    epochs: Option<usize>,
    batch_size: Option<usize>,
    lr: Option<f64>,
    seed: Option<u64>,
    max_steps: Option<usize>,
    backend: Option<String>,
    tensorboard: Option<PathBuf>,
) -> PyResult<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = stop.clone();
    let (epochs_more, steps_more) = (
        resume.then_some(epochs).flatten(),
        resume.then_some(max_steps).flatten(),
    );
    let config = if resume {
        None
    } else {
        let absolute = |p: Option<PathBuf>| p.map(std::path::absolute).transpose();
        let overrides = Overrides {
            train: absolute(data)?,
            valid: absolute(valid)?,
            epochs,
            batch_size,
            lr,
            seed,
            max_steps,
            backend,
        };
        Some(read_config(config_path, config_json, &sets, overrides)?)
    };
    let out = std::path::absolute(out)?;
    let tensorboard = tensorboard.map(std::path::absolute).transpose()?;
    let job = std::thread::spawn(move || {
        let options = TrainOptions {
            progress,
            epochs: epochs_more,
            max_steps: steps_more,
            stop: Some(stopper),
            tensorboard,
            ..TrainOptions::default()
        };
        let result = mtl_trainer::train::<Models>(config.as_ref(), &out, resume, &options);
        let context = match resume {
            true => format!("resuming {}", out.display()),
            false => "training".to_string(),
        };
        result.map_err(|e| format!("{context}: {}", error_line(&e)))
    });
    let mut interrupt = None;
    // wait with the GIL released, looking for Ctrl-C (Python's handler runs here) now and then
    while !job.is_finished() {
        py.detach(|| std::thread::sleep(Duration::from_millis(50)));
        if interrupt.is_none()
            && let Err(e) = py.check_signals()
        {
            stop.store(true, Ordering::Relaxed);
            interrupt = Some(e);
        }
    }
    let result = py
        .detach(|| job.join())
        .map_err(|_| MtlError::new_err("the training thread panicked"))?;
    if let Some(e) = interrupt {
        return Err(e);
    }
    let summary = result.map_err(MtlError::new_err)?;
    Ok(serde_json::to_string(&summary).expect("a summary serialises"))
}

/// The run config of a new run: from a file or a JSON table, with `sets` and `overrides`
/// over it, checked against its schema and model before any data is read.
fn read_config(
    path: Option<PathBuf>,
    json: Option<String>,
    sets: &[String],
    overrides: Overrides,
) -> PyResult<RunConfig<Models>> {
    let context = Some("reading the config");
    let (mut config, origin) = match (path, json) {
        (Some(path), None) => {
            let config = RunConfig::from_file_with(&path, sets).map_err(|e| mtl_err(context, e))?;
            (config, path.display().to_string())
        }
        (None, Some(json)) => {
            let value: serde_json::Value = serde_json::from_str(&json).map_err(|e| mtl_err(context, e))?;
            let origin = "<config dict>";
            let table = toml::Table::try_from(value).map_err(|e| {
                MtlError::new_err(format!(
                    "reading the config: {origin}: not a TOML table (no None values; keys are strings): {e}"
                ))
            })?;
            let dir = std::env::current_dir()?;
            let config =
                RunConfig::from_table_with(table, origin, &dir, sets).map_err(|e| mtl_err(context, e))?;
            (config, origin.to_string())
        }
        _ => return Err(MtlError::new_err("give a config: a path or a dict")),
    };
    config
        .apply_checked(overrides, &origin)
        .map_err(|e| mtl_err(None, e))?;
    Ok(config)
}

/// What a model directory is: its model type, its outputs (prediction order) and its schema's
/// TOML text. Refuses an unfinished run unless `allow_unfinished`.
#[pyfunction]
#[pyo3(signature = (model_dir, allow_unfinished=false))]
fn describe(model_dir: PathBuf, allow_unfinished: bool) -> PyResult<(String, Vec<String>, String)> {
    let context = format!("opening {}", model_dir.display());
    let model = mtl_trainer::jobs::open_for_inference::<Models>(&model_dir, allow_unfinished)
        .map_err(|e| mtl_err(Some(&context), e))?;
    let plan = Models::plan(&model.model, &model.schema).map_err(|e| mtl_err(Some(&context), e))?;
    let schema =
        std::fs::read_to_string(model_dir.join("schema.toml")).map_err(|e| mtl_err(Some(&context), e))?;
    let outputs = plan.outputs.into_iter().map(|o| o.name).collect();
    Ok((Models::kind(&model.model).to_string(), outputs, schema))
}

/// Predictions of the model in `model_dir` for `data` (a path, or Arrow data named `name`),
/// as a PyArrow record batch: one float32 column per output (calibrated, as `mtl predict`
/// writes them), preceded by `input_line` (each kept row's line, or row from 1 for a table)
/// when bad rows are skipped.
#[pyfunction]
#[pyo3(signature = (model_dir, data, name="<data>", *, backend="flex", skip_bad_rows=false, allow_unfinished=false))]
fn predict(
    py: Python<'_>,
    model_dir: PathBuf,
    data: &Bound<'_, PyAny>,
    name: &str,
    backend: &str,
    skip_bad_rows: bool,
    allow_unfinished: bool,
) -> PyResult<Py<PyAny>> {
    let input = input(data, name)?;
    let predictions = py
        .detach(|| {
            mtl_trainer::predict_input::<Models>(
                &model_dir,
                &input,
                None,
                backend,
                policy(skip_bad_rows),
                allow_unfinished,
            )
        })
        .map_err(|e| mtl_err(Some(&format!("predicting with {}", model_dir.display())), e))?;
    let mut columns: Vec<(String, ArrayRef)> = Vec::new();
    if let Some(lines) = predictions.lines {
        columns.push((
            mtl_trainer::jobs::INPUT_LINE_COLUMN.to_string(),
            Arc::new(UInt64Array::from(lines)),
        ));
    }
    for (name, values) in predictions.names.into_iter().zip(predictions.columns) {
        columns.push((name, Arc::new(Float32Array::from(values))));
    }
    let batch = RecordBatch::try_from_iter(columns).map_err(|e| mtl_err(None, e))?;
    Ok(batch.to_pyarrow(py)?.unbind())
}

/// The model's metrics on `data` (labels required), as `mtl eval` reports them: JSON of one
/// entry per output; with `group_by`, each binary output's GAUC over that column's groups;
/// with `weight`, every metric counts each row by that column's sample weight.
#[pyfunction]
#[pyo3(signature = (model_dir, data, name="<data>", *, group_by=None, weight=None, backend="flex", skip_bad_rows=false, allow_unfinished=false))]
#[allow(clippy::too_many_arguments)]
fn evaluate(
    py: Python<'_>,
    model_dir: PathBuf,
    data: &Bound<'_, PyAny>,
    name: &str,
    group_by: Option<&str>,
    weight: Option<&str>,
    backend: &str,
    skip_bad_rows: bool,
    allow_unfinished: bool,
) -> PyResult<String> {
    let input = input(data, name)?;
    let (metrics, _) = py
        .detach(|| {
            mtl_trainer::eval_input::<Models>(
                &model_dir,
                &input,
                backend,
                policy(skip_bad_rows),
                allow_unfinished,
                mtl_trainer::Counting { group_by, weight },
            )
        })
        .map_err(|e| mtl_err(Some(&format!("evaluating {}", model_dir.display())), e))?;
    Ok(serde_json::to_string(&metrics).expect("metrics serialise"))
}

/// A starting schema (TOML text, a comment on every guess) for the files `paths`, guessed
/// from their first `rows` rows, as `mtl schema infer` writes it.
#[pyfunction]
#[pyo3(signature = (paths, rows=100_000, max_categories=10_000))]
fn infer_schema(py: Python<'_>, paths: Vec<PathBuf>, rows: usize, max_categories: usize) -> PyResult<String> {
    if rows == 0 || max_categories == 0 {
        return Err(MtlError::new_err(
            "rows and max_categories: give at least 1 each (a guess needs a row; a fitted vocabulary of no values sends every value to one id)",
        ));
    }
    let files: Vec<&std::path::Path> = paths.iter().map(PathBuf::as_path).collect();
    let options = mtl_data::infer::InferOptions {
        sample_rows: rows,
        max_categories,
    };
    let inferred = py
        .detach(|| mtl_data::infer::infer_schema(&files, options))
        .map_err(|e| mtl_err(None, e))?;
    Ok(inferred.text)
}

/// Exports the model in `model_dir` to ONNX at `out` with its encoder sidecar `out.json`, as
/// `mtl export` does; returns `(inputs, outputs, fixed batch or None)`.
#[pyfunction]
#[pyo3(signature = (model_dir, out, batch=None, allow_unfinished=false))]
fn export_onnx(
    py: Python<'_>,
    model_dir: PathBuf,
    out: PathBuf,
    batch: Option<usize>,
    allow_unfinished: bool,
) -> PyResult<(Vec<String>, Vec<String>, Option<usize>)> {
    let exported = py
        .detach(|| mtl_serve::onnx::export_onnx::<Models>(&model_dir, &out, batch, allow_unfinished))
        .map_err(|e| mtl_err(Some(&format!("exporting {}", model_dir.display())), e))?;
    Ok((exported.inputs, exported.outputs, exported.batch))
}

/// Encodes `data` (a path, or Arrow data named `name`) into the inputs of a graph `mtl export`
/// wrote, from its sidecar `<graph>.json` alone (schema, fitted state, table layout): each
/// input's name, values (row-major: int64 table rows, or float32) and width, in graph order.
#[pyfunction]
#[pyo3(signature = (sidecar, data, name="<data>", *, skip_bad_rows=false))]
fn encode(
    py: Python<'_>,
    sidecar: PathBuf,
    data: &Bound<'_, PyAny>,
    name: &str,
    skip_bad_rows: bool,
) -> PyResult<Vec<(String, Py<PyAny>, usize)>> {
    let input = input(data, name)?;
    let file = sidecar.display().to_string();
    let bad = |message: String| MtlError::new_err(format!("{file}: {message}"));
    let text = std::fs::read_to_string(&sidecar).map_err(|e| bad(e.to_string()))?;
    let side: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let schema_text = side["schema"]
        .as_str()
        .ok_or_else(|| bad("no `schema`: not a sidecar `mtl export` wrote".into()))?;
    let schema = mtl_features::Schema::from_toml_str(schema_text, &format!("{file} (its schema)"))
        .map_err(|e| mtl_err(None, e))?;
    let state =
        mtl_features::FeatureState::from_json(side["features"].to_string().as_bytes(), &file, &schema)
            .map_err(|e| mtl_err(None, e))?;
    let encoder = mtl_features::Encoder::new(&schema, &state);
    let host = py
        .detach(|| {
            let (encoded, _, _) =
                mtl_data::read_input(&input, &encoder, policy(skip_bad_rows), false, None, false)?;
            Ok::<_, mtl_data::DataError>(encoded.graph_arrays(encoder.layout()))
        })
        .map_err(|e| mtl_err(Some("encoding"), e))?;
    // the encoder's block each input takes its columns from (`rows × width` values)
    enum Block<'a> {
        Ids(&'a [i32]),
        Floats(&'a [f32]),
    }
    let block = |of: &str| match of {
        "sparse_ids" => Some(Block::Ids(&host.sparse_ids)),
        "sequence_ids" => Some(Block::Ids(&host.sequence_ids)),
        "sequence_mask" => Some(Block::Floats(&host.sequence_mask)),
        "dense" => Some(Block::Floats(&host.dense)),
        _ => None,
    };
    let row_width = |b: &Block| {
        let len = match b {
            Block::Ids(v) => v.len(),
            Block::Floats(f) => f.len(),
        };
        len / host.rows.max(1)
    };
    // the columns `columns` of a block, row by row
    let take = |block: Block, columns: std::ops::Range<usize>| -> ArrayRef {
        let width = row_width(&block);
        let rows = (0..host.rows).flat_map(|r| (r * width + columns.start)..(r * width + columns.end));
        match block {
            Block::Ids(v) => Arc::new(arrow_array::Int64Array::from_iter_values(
                rows.map(|k| i64::from(v[k])),
            )),
            Block::Floats(f) => Arc::new(Float32Array::from_iter_values(rows.map(|k| f[k]))),
        }
    };
    let specs = side["inputs"].as_array().filter(|s| !s.is_empty());
    let specs = specs.ok_or_else(|| bad("no `inputs`: not a sidecar `mtl export` wrote".into()))?;
    let mut out = Vec::new();
    for spec in specs {
        let name = spec["name"].as_str().unwrap_or_default();
        let of = spec["of"].as_str().unwrap_or(name);
        let column = |k: usize| spec["columns"][k].as_u64().map(|c| c as usize);
        let (values, width) = match (of, block(of), column(0), column(1)) {
            ("unused", ..) => (Arc::new(Float32Array::from(vec![0.0])) as ArrayRef, 1),
            (_, Some(b), Some(start), Some(end))
                if start < end && (end <= row_width(&b) || host.rows == 0) =>
            {
                (take(b, start..end), end - start)
            }
            _ => {
                let columns = &spec["columns"];
                return Err(bad(format!(
                    "input `{name}` is not one mtl writes (of `{of}`, columns {columns})"
                )));
            }
        };
        let array = values.to_data().to_pyarrow(py)?.unbind();
        out.push((name.to_string(), array, width));
    }
    Ok(out)
}

/// The registered model types: `(type, what it is, its example [model] table)` each.
#[pyfunction]
fn models() -> Vec<(String, String, String)> {
    Models::KINDS
        .iter()
        .map(|kind| {
            let (about, example) = Models::about(kind).expect("a registered kind has its text");
            (
                kind.to_string(),
                about.to_string(),
                mtl_layers::model_section(example).to_string(),
            )
        })
        .collect()
}

/// Writes synthetic click/conversion data (`mtl gen-data ccp --small`): train/validation/test
/// CSV files and their schema under `out`; returns their paths `(train, valid, test, schema)`.
#[pyfunction]
#[pyo3(signature = (out, rows=10_000, seed=2022, dense=0))]
fn gen_data(
    py: Python<'_>,
    out: PathBuf,
    rows: usize,
    seed: u64,
    dense: usize,
) -> PyResult<(PathBuf, PathBuf, PathBuf, PathBuf)> {
    let mut spec = mtl_synth::CcpSpec::small(rows, seed);
    spec.dense = dense;
    let files = py
        .detach(|| mtl_synth::generate_ccp(&spec, &out, "synth_ccp"))
        .map_err(|e| mtl_err(Some(&format!("writing to {}", out.display())), e))?;
    Ok((files.train, files.val, files.test, files.schema))
}

/// The module `mtl._mtl`.
#[pymodule]
fn _mtl(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // warnings and errors of the library on stderr (more with RUST_LOG=info), as `mtl` logs
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    m.add("MtlError", m.py().get_type::<MtlError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(describe, m)?)?;
    m.add_function(wrap_pyfunction!(predict, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(infer_schema, m)?)?;
    m.add_function(wrap_pyfunction!(export_onnx, m)?)?;
    m.add_function(wrap_pyfunction!(encode, m)?)?;
    m.add_function(wrap_pyfunction!(models, m)?)?;
    m.add_function(wrap_pyfunction!(gen_data, m)?)?;
    Ok(())
}
