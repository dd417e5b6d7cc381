//! Checkpoints: model, optimiser state (dense and row-sparse) and training state written into
//! a fresh folder and swapped in, so a crash at any moment leaves a whole checkpoint; the
//! checkpoint a resume reads; atomic saves of single model files.

use std::path::{Path, PathBuf};

use burn::module::Module;

use crate::error::{io_err, record_err};
use crate::fit::state::TrainState;
use crate::{TrainError, crash_point};

/// Checkpoint files inside `out_dir/checkpoint/`.
pub fn checkpoint_dir(out_dir: &Path) -> PathBuf {
    out_dir.join("checkpoint")
}

/// Writes model, weight average (if the run keeps one), optimiser state (`save_optimizer`
/// writes it into the folder it is given) and state into a fresh folder, then swaps it in,
/// so a crash leaves either the old checkpoint or the new one, never a mix.
pub fn write_checkpoint<M: Module>(
    out_dir: &Path,
    model: &M,
    average: Option<&M>,
    state: &TrainState,
    save_optimizer: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    let final_dir = checkpoint_dir(out_dir);
    let tmp = out_dir.join("checkpoint.tmp");
    let old = out_dir.join("checkpoint.old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let _pending = mtl_features::pending::register(&tmp);
    let written = || -> Result<(), TrainError> {
        // `valid()` first: it folds BatchNorm's pending running-statistic updates into the
        // saved values (a training-mode record would hold them one step stale).
        model
            .valid()
            .save_file(tmp.join("model.bpk"))
            .map_err(record_err(&tmp))?;
        save_optimizer(&tmp)?;
        if let Some(average) = average {
            average
                .valid()
                .save_file(tmp.join(AVERAGE_MODEL))
                .map_err(record_err(&tmp))?;
        }
        let json = serde_json::to_vec_pretty(state).expect("state serialises");
        std::fs::write(tmp.join("state.json"), json).map_err(io_err(&tmp))
    };
    // a checkpoint that could not be written whole (a full disk) leaves nothing of itself
    written().inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp);
    })?;
    crash_point("checkpoint-written");
    if final_dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        std::fs::rename(&final_dir, &old).map_err(io_err(&final_dir))?;
    }
    crash_point("checkpoint-between-renames");
    std::fs::rename(&tmp, &final_dir).map_err(io_err(&tmp))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    Ok(())
}

/// File of the weight average (`ema_decay`) inside a checkpoint: the model with its averaged
/// parameters and table.
pub const AVERAGE_MODEL: &str = "average.bpk";

/// File of the row-sparse optimiser's moments inside a checkpoint.
pub const SPARSE_MOMENTS: &str = "embedding_moments.bin";

/// The checkpoint a resume reads: `checkpoint/`, or `checkpoint.old/` when a crash came
/// between the two renames of [`write_checkpoint`].
pub(crate) fn live_checkpoint_dir(out_dir: &Path) -> PathBuf {
    let dir = checkpoint_dir(out_dir);
    if !dir.join("state.json").exists() && out_dir.join("checkpoint.old/state.json").exists() {
        return out_dir.join("checkpoint.old");
    }
    dir
}

/// Reads a checkpoint: the state, and paths of the model and optimiser records.
pub fn read_checkpoint(out_dir: &Path) -> Result<(TrainState, PathBuf, PathBuf), TrainError> {
    let dir = live_checkpoint_dir(out_dir);
    let state_path = dir.join("state.json");
    let bytes = std::fs::read(&state_path).map_err(|_| TrainError::NoCheckpoint {
        dir: out_dir.display().to_string(),
    })?;
    let state: TrainState = serde_json::from_slice(&bytes).map_err(|e| TrainError::Config {
        file: state_path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok((state, dir.join("model.bpk"), dir.join("optim.bpk")))
}

/// Saves a module record atomically (temp name, then rename).
pub fn save_atomic<M: Module>(model: &M, path: &Path) -> Result<(), TrainError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp.bpk",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("model")
    ));
    let _pending = mtl_features::pending::register(&tmp);
    model.valid().save_file(&tmp).map_err(|e| {
        // a record that could not be written whole (a full disk) is not left behind
        let _ = std::fs::remove_file(&tmp);
        record_err(&tmp)(e)
    })?;
    crash_point(&format!(
        "saving-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("model")
    ));
    std::fs::rename(&tmp, path).map_err(|source| TrainError::Io {
        path: path.display().to_string(),
        source,
    })
}
