//! What the trainer's integration tests share.

use std::path::Path;

use mtl_models::{ModelConfig, Models};

/// A run config whose model is any registered type.
type RunConfig = mtl_trainer::RunConfig<Models>;
use mtl_trainer::{DataConfig, TrainSettings};

/// A run config over these files (bad rows fail, no encoded cache).
pub fn run_config(
    schema: &Path,
    train: &Path,
    valid: Option<&Path>,
    test: Option<&Path>,
    model: ModelConfig,
    settings: TrainSettings,
) -> RunConfig {
    RunConfig {
        schema: schema.to_path_buf(),
        data: DataConfig {
            train: train.to_path_buf().into(),
            valid: valid.map(|v| v.to_path_buf().into()),
            test: test.map(|t| t.to_path_buf().into()),
            bad_rows: "fail".into(),
            cache: false,
            cache_dir: None,
            streaming: false,
            shuffle_buffer: 1_000_000,
            shards: None,
            weight: None,
        },
        model,
        train: settings,
        metrics: Default::default(),
    }
}
