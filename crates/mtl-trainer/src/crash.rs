//! Named points where the crash test may kill training. They exist only in builds with the
//! `crash-points` feature, which the CLI's tests turn on (a dev-dependency feature, so a
//! user's `cargo build --release` never has it); elsewhere [`crash_point`] is an empty inline
//! function.

/// The environment variable that pauses a process at a named point, for the crash test:
/// `MTL_PAUSE_AT=step:5` pauses at the fifth time the `step` point is passed;
/// `MTL_PAUSE_AT=step:5@1` only in rank 1 of an MPI job (the rank read from the launcher's
/// `OMPI_COMM_WORLD_RANK` or `PMI_RANK`).
pub const PAUSE_AT: &str = "MTL_PAUSE_AT";

/// A point where the crash test may kill training: when [`PAUSE_AT`] names `name` (and this
/// is its n-th pass, for `name:n`, in the rank named, for `@rank`), prints
/// `mtl: paused at NAME (pid PID)` to stderr and waits forever, so that the test can `kill -9`
/// the process at exactly this point. Without the variable it costs one lookup per process.
#[cfg(feature = "crash-points")]
pub fn crash_point(name: &str) {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static TARGET: std::sync::OnceLock<Option<(String, usize)>> = std::sync::OnceLock::new();
    static PASSES: AtomicUsize = AtomicUsize::new(0);
    static LOCK: Mutex<()> = Mutex::new(());
    let target = TARGET.get_or_init(|| {
        let spec = std::env::var(PAUSE_AT).ok()?;
        let spec = match spec.split_once('@') {
            Some((spec, rank)) => {
                let mine = ["OMPI_COMM_WORLD_RANK", "PMI_RANK"]
                    .iter()
                    .find_map(|v| std::env::var(v).ok())
                    .unwrap_or_else(|| "0".into());
                if mine != rank {
                    return None;
                }
                spec.to_string()
            }
            None => spec,
        };
        let (point, n) = match spec.rsplit_once(':') {
            Some((p, n)) => (p.to_string(), n.parse().ok()?),
            None => (spec, 1),
        };
        Some((point, n))
    });
    let Some((point, n)) = target else { return };
    if point != name {
        return;
    }
    let _guard = LOCK.lock();
    if PASSES.fetch_add(1, Ordering::SeqCst) + 1 == *n {
        use std::io::Write;
        {
            // the lock is released before the pause: a signal handler may still write
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "mtl: paused at {name} (pid {})", std::process::id());
            let _ = err.flush();
        }
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Without the `crash-points` feature a crash point does nothing.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn crash_point(_name: &str) {}
