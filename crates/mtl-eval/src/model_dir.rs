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
use crate::metrics::{TaskMetrics, evaluate};
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
    /// Opens a model directory; errors name what is missing.
    pub fn open(dir: &Path) -> Result<Self, EvalError> {
        Self::check_files(dir)?;
        let path = dir.join("config.toml");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let model = mtl_layers::registry::model_of_document::<R>(&text, &path.display().to_string())?;
        Self::load(dir, model)
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
            c.apply(&names, &mut preds);
        }
        Ok((specs, preds))
    }

    /// Per-output metrics of the model on `data` (labels required).
    pub fn evaluate(&self, data: &EncodedData, backend: &str) -> Result<Vec<TaskMetrics>, EvalError> {
        let (specs, preds) = self.predict_outputs(data, backend, 4096)?;
        Ok(evaluate(&specs, &preds, data, &self.schema.label_names()))
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
