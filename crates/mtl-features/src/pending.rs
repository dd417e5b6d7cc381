//! Outputs being written: each temp file or folder is registered while it exists, so that an
//! interrupted command (Ctrl-C, `kill`) can remove what it had half written
//! ([`remove_all`], called by the CLI's signal handler) instead of leaving it behind.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The registered paths, each with its registration's number.
static PENDING: Mutex<Vec<(u64, PathBuf)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A registered temp path: unregistered when dropped (after the output was renamed into
/// place, or its temp removed).
#[must_use = "the path is unregistered when this is dropped"]
#[derive(Debug)]
pub struct Pending(u64);

/// Registers `path` (a temp file or folder) until the returned guard is dropped.
pub fn register(path: &Path) -> Pending {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    lock().push((id, path.to_path_buf()));
    Pending(id)
}

impl Drop for Pending {
    fn drop(&mut self) {
        lock().retain(|(id, _)| *id != self.0);
    }
}

fn lock() -> std::sync::MutexGuard<'static, Vec<(u64, PathBuf)>> {
    // a panic while holding the lock leaves the list as it was: still usable
    PENDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes every registered path (a folder with what it holds) and forgets them: the paths
/// removed. For a process about to exit on a signal.
pub fn remove_all() -> Vec<PathBuf> {
    let paths: Vec<PathBuf> = lock().drain(..).map(|(_, p)| p).collect();
    paths
        .into_iter()
        .filter(|p| match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).is_ok(),
            Ok(_) => std::fs::remove_file(p).is_ok(),
            Err(_) => false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_paths_are_removed_until_their_guard_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".mtl-file");
        let folder = dir.path().join(".mtl-folder");
        let done = dir.path().join(".mtl-done");
        std::fs::write(&file, "half").unwrap();
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("shard"), "half").unwrap();
        std::fs::write(&done, "renamed into place").unwrap();
        let _file = register(&file);
        let _folder = register(&folder);
        drop(register(&done));
        let removed = remove_all();
        assert!(
            removed.contains(&file) && removed.contains(&folder),
            "{removed:?}"
        );
        assert!(!file.exists() && !folder.exists());
        assert!(done.exists(), "a dropped guard's path is left alone");
        assert!(remove_all().is_empty(), "removed paths are forgotten");
    }
}
