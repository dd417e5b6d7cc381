//! Writing a model directory: its lock, its saved `config.toml`, and the mark that a run is
//! finished.

use std::path::{Path, PathBuf};

use mtl_eval::ModelDir;
use mtl_features::atomic_write;

use crate::config::RunConfig;
use crate::error::io_err;
use crate::fit::checkpoint::checkpoint_dir;
use crate::fit::state::TrainState;
use crate::{Registry, TrainError};

/// Holds `DIR/.lock` while a process trains in `DIR`, so that a second `mtl train` on the
/// same directory stops with an error instead of mixing two runs' files. The OS releases
/// the lock when the process ends, however it ends.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock of `dir` (which must exist), or says that another process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(TrainError::Busy {
                dir: dir.display().to_string(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
        }
    }
}

/// Writes the run's `config.toml`: the schema as the copy beside it, data paths absolute,
/// and no `max_steps` (a limit belongs to one invocation), so that `--resume` works from
/// any directory and `mtl train --config DIR/config.toml` runs the same job again.
pub(crate) fn save_dir_config<R: Registry>(out_dir: &Path, config: &RunConfig<R>) -> Result<(), TrainError> {
    let mut saved = config.clone();
    saved.schema = PathBuf::from("schema.toml");
    saved.train.max_steps = None;
    let text = toml::to_string_pretty(&saved).map_err(|e| TrainError::Config {
        file: "config".into(),
        message: e.to_string(),
    })?;
    atomic_write(&out_dir.join("config.toml"), text.as_bytes())?;
    Ok(())
}

/// The run config saved in a model directory (which its callers have found to be one); a
/// missing `config.toml` is named.
pub(crate) fn load_dir_config<R: Registry>(dir: &Path) -> Result<RunConfig<R>, TrainError> {
    let path = dir.join("config.toml");
    if !path.is_file() {
        return Err(TrainError::NotAModelDir {
            dir: dir.display().to_string(),
            missing: "config.toml".into(),
        });
    }
    RunConfig::from_file(&path)
}

/// Records in the checkpoint that the run is finished (after its model and metrics).
pub(crate) fn mark_finished(out_dir: &Path, state: &TrainState) -> Result<(), TrainError> {
    let json = serde_json::to_vec_pretty(state).expect("state serialises");
    atomic_write(&checkpoint_dir(out_dir).join("state.json"), &json)?;
    Ok(())
}

/// Opens a model directory for inference with its whole run config read and checked, as a
/// resume reads it (a bad `[train]` is reported, not skipped), and its `[model]` taken from it;
/// an unfinished run is refused unless `allow_unfinished` ([`ModelDir::check_complete`]).
pub fn open_for_inference<R: Registry>(
    dir: &Path,
    allow_unfinished: bool,
) -> Result<ModelDir<R>, TrainError> {
    ModelDir::<R>::check_files(dir)?;
    ModelDir::<R>::check_complete(dir, allow_unfinished)?;
    let config = load_dir_config::<R>(dir)?;
    Ok(ModelDir::load(dir, config.model)?)
}
