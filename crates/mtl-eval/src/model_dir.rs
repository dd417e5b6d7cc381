//! A trained model directory opened for inference: its `[model]` table, schema, fitted
//! features, weights and calibration. Writing one is the trainer's job; reading one is all
//! that prediction, evaluation, export and serving need.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use mtl_features::{BackendKind, EncodedData, Encoder, FeatureState, Schema, ValidSchema};
use mtl_layers::{MultiTaskModel, OutputSpec, Registry, WithModel};

use crate::EvalError;
use crate::calibration::Calibration;
use crate::error::{io_err, record_err};
use crate::metrics::TaskMetrics;
use crate::predict::predict_all;

/// The files every trained model directory holds.
pub const MODEL_DIR_FILES: [&str; 4] = ["config.toml", "schema.toml", "features.json", "model.bpk"];

/// The device of backend `name` (`flex`, `ndarray`, `wgpu`, `cuda`), probed; a backend missing
/// from the build or unusable here is an error naming it.
pub fn backend_device(name: &str) -> Result<Device, EvalError> {
    let kind: BackendKind = name.parse()?;
    Ok(kind.probe()?)
}

/// A trained model directory, loaded for inference.
pub struct ModelDir<R: Registry> {
    /// The directory.
    pub dir: PathBuf,
    /// Its `[model]` table.
    pub model: R::Config,
    /// Its schema.
    pub schema: ValidSchema,
    /// Its encoder (fitted state).
    pub encoder: Encoder,
    /// Its post-hoc calibration (`calibration.json`), applied to every prediction.
    pub calibration: Option<Calibration>,
}

impl<R: Registry> ModelDir<R> {
    /// Opens a model directory of a finished run ([`ModelDir::check_complete`]); errors name
    /// what is missing.
    pub fn open(dir: &Path) -> Result<Self, EvalError> {
        Self::open_allowing(dir, false)
    }

    /// [`ModelDir::open`], taking the model of an unfinished run too when `allow_unfinished`.
    pub fn open_allowing(dir: &Path, allow_unfinished: bool) -> Result<Self, EvalError> {
        Self::check_files(dir)?;
        Self::check_complete(dir, allow_unfinished)?;
        let path = dir.join("config.toml");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let model = mtl_layers::registry::model_of_document::<R>(&text, &path.display().to_string())?;
        Self::load(dir, model)
    }

    /// Checks that the directory is what it says: a run marked finished in its checkpoint
    /// (`finished: false` — killed before its calibration or metrics, or being trained
    /// further — is refused unless `allow_unfinished`), and, for a finished run, the
    /// `calibration.json` its config asks for (`[train] calibration`).
    pub fn check_complete(dir: &Path, allow_unfinished: bool) -> Result<(), EvalError> {
        let bad = |file: PathBuf, message: String| EvalError::Config {
            file: file.display().to_string(),
            message,
        };
        let state = dir.join("checkpoint").join("state.json");
        let finished = match std::fs::read(&state) {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .map_err(|e| bad(state.clone(), e.to_string()))?
                .get("finished")
                .is_none_or(|f| f.as_bool() != Some(false)),
            // a directory without its checkpoint (a copied or shipped model) is taken as it is
            Err(_) => true,
        };
        if !finished && !allow_unfinished {
            return Err(bad(
                dir.to_path_buf(),
                format!(
                    "the run has not finished: its model, calibration and metrics may be missing \
                     or stale; finish it with `mtl train --resume {}`, or pass --allow-unfinished \
                     to use the model it holds",
                    dir.display()
                ),
            ));
        }
        let config = dir.join("config.toml");
        let text = std::fs::read_to_string(&config).map_err(io_err(&config))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| bad(config.clone(), e.to_string()))?;
        let method = table
            .get("train")
            .and_then(|t| t.get("calibration"))
            .and_then(toml::Value::as_str)
            .unwrap_or("none");
        let calibration = dir.join(crate::calibration::CALIBRATION_FILE);
        if finished && method != "none" && !calibration.exists() {
            return Err(bad(
                calibration,
                format!(
                    "missing: the run's config.toml says calibration = \"{method}\" (restore the file, or train the run again)"
                ),
            ));
        }
        Ok(())
    }

    /// Checks that `dir` is a directory holding every file of [`MODEL_DIR_FILES`]; the error
    /// names the first one missing.
    pub fn check_files(dir: &Path) -> Result<(), EvalError> {
        let missing = |missing: &str| EvalError::NotAModelDir {
            dir: dir.display().to_string(),
            missing: missing.to_string(),
        };
        if !dir.is_dir() {
            return Err(missing("the directory itself"));
        }
        match MODEL_DIR_FILES.iter().find(|f| !dir.join(f).exists()) {
            Some(file) => Err(missing(file)),
            None => Ok(()),
        }
    }

    /// Loads a model directory whose files are checked ([`ModelDir::check_files`]) and whose
    /// `[model]` table the caller has read: its schema, fitted features and calibration.
    pub fn load(dir: &Path, model: R::Config) -> Result<Self, EvalError> {
        let schema = Schema::from_file(dir.join("schema.toml"))?;
        let state = FeatureState::load(dir.join("features.json"), &schema)?;
        let encoder = Encoder::new(&schema, &state);
        let calibration = Calibration::load(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            model,
            schema,
            encoder,
            calibration,
        })
    }

    /// Predictions for every row of `data` on `backend`: one column per output.
    pub fn predict(
        &self,
        data: &EncodedData,
        backend: &str,
        batch_size: usize,
    ) -> Result<(Vec<String>, Vec<Vec<f32>>), EvalError> {
        let (specs, preds) = self.predict_outputs(data, backend, batch_size)?;
        Ok((specs.into_iter().map(|o| o.name).collect(), preds))
    }

    /// Predictions with the specs of the outputs they belong to, calibrated.
    fn predict_outputs(
        &self,
        data: &EncodedData,
        backend: &str,
        batch_size: usize,
    ) -> Result<(Vec<OutputSpec>, Vec<Vec<f32>>), EvalError> {
        let device = backend_device(backend)?;
        let job = Predict {
            dir: &self.dir,
            data,
            encoder: &self.encoder,
            device: device.clone(),
            batch_size,
        };
        let (specs, mut preds) =
            R::with_model(&self.model, &self.schema, self.encoder.layout(), &device, job)?;
        if let Some(c) = &self.calibration {
            let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
            if let Some((unknown, _)) = c.outputs.iter().find(|(n, _)| !names.contains(n)) {
                return Err(EvalError::Config {
                    file: self
                        .dir
                        .join(crate::calibration::CALIBRATION_FILE)
                        .display()
                        .to_string(),
                    message: format!(
                        "calibrates an output `{unknown}` the model does not have (its outputs: {})",
                        names.join(", ")
                    ),
                });
            }
            c.apply(&names, &mut preds);
        }
        Ok((specs, preds))
    }

    /// Per-output metrics of the model on `data` (labels required).
    pub fn evaluate(&self, data: &EncodedData, backend: &str) -> Result<Vec<TaskMetrics>, EvalError> {
        self.evaluate_grouped(data, backend, None)
    }

    /// [`ModelDir::evaluate`] with each binary output's GAUC over `groups` (one id per row).
    pub fn evaluate_grouped(
        &self,
        data: &EncodedData,
        backend: &str,
        groups: Option<&[u32]>,
    ) -> Result<Vec<TaskMetrics>, EvalError> {
        self.evaluate_weighted(data, backend, groups, None)
    }

    /// [`ModelDir::evaluate_grouped`] with every row counted by its sample weight: label
    /// column `weight.0` of `data` (read after the schema's own labels), the column `weight.1`.
    pub fn evaluate_weighted(
        &self,
        data: &EncodedData,
        backend: &str,
        groups: Option<&[u32]>,
        weight: Option<(usize, &str)>,
    ) -> Result<Vec<TaskMetrics>, EvalError> {
        let (specs, preds) = self.predict_outputs(data, backend, 4096)?;
        Ok(crate::metrics::evaluate_weighted(
            &specs,
            &preds,
            data,
            &self.schema.label_names(),
            groups,
            weight,
        ))
    }
}

/// Loads the directory's weights into a freshly built model and predicts every row.
struct Predict<'a> {
    dir: &'a Path,
    data: &'a EncodedData,
    encoder: &'a Encoder,
    device: Device,
    batch_size: usize,
}

impl WithModel for Predict<'_> {
    type Out = (Vec<OutputSpec>, Vec<Vec<f32>>);
    type Error = EvalError;

    fn run<M: MultiTaskModel + 'static>(self, model: M) -> Result<Self::Out, EvalError> {
        let path = self.dir.join("model.bpk");
        let model = model.try_load_file(&path).map_err(record_err(&path))?;
        let specs = model.outputs();
        let (preds, _) = predict_all(
            &model,
            self.data,
            self.encoder.layout(),
            &self.device,
            self.batch_size,
            false,
        )?;
        Ok((specs, preds))
    }
}
