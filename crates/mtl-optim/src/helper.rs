//! The host table's own second thread ([`crate::SparseAdam::prepare_beside`]).
//!
//! A rayon pool of one thread, started once. Between two steps' work it waits in a parked
//! job of its own rather than idle in rayon's search for work: an idle rayon thread yields the
//! CPU some 33 times before it sleeps, and where every core is busy (MMOE large's passes, whose
//! products run on both cores) each yield is a context switch taken from them. Measured
//! (docs/speed.md): ~32 fewer context switches a step in MMOE large's run (median 116k against
//! 140k over three runs each). The parked job waits on a condition variable, which costs
//! nothing while it waits.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// The table's second thread: takes one job beside the calling thread's work at a time
/// ([`Helper::beside`]), and is parked in between.
pub(crate) struct Helper {
    pool: rayon::ThreadPool,
    park: Arc<Park>,
    /// Whether a parked job is queued on the thread or waits there.
    parked: bool,
}

/// Where the parked job waits, until `open`.
#[derive(Default)]
struct Park {
    open: Mutex<bool>,
    wake: Condvar,
}

impl Park {
    /// Waits until released, and closes again.
    fn wait(&self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        while !*open {
            open = self.wake.wait(open).unwrap_or_else(PoisonError::into_inner);
        }
        *open = false;
    }

    /// Lets the parked job (queued or waiting) end.
    fn release(&self) {
        *self.open.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_one();
    }
}

impl Helper {
    /// A helper with its thread started; `None` when the thread cannot be had.
    pub(crate) fn new() -> Option<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "mtl-table".into())
            .build()
            .ok()?;
        Some(Self {
            pool,
            park: Arc::default(),
            parked: false,
        })
    }

    /// Runs `side` on the helper's thread while `main` runs on the calling thread; returns
    /// what `main` returned once both are done (a panic on either side reaches the caller).
    /// The thread, parked since the last call, is given `side` and then a new parked job
    /// before the old one is released, so that it goes from one job to the next without ever
    /// looking for work.
    pub(crate) fn beside<'s, R>(&mut self, side: impl FnOnce() + Send + 's, main: impl FnOnce() -> R) -> R {
        let Self { pool, park, parked } = self;
        pool.in_place_scope(|scope| {
            scope.spawn(move |_| side());
            let next = Arc::clone(park);
            pool.spawn(move || next.wait());
            // the previous release was taken: the parked job it let go came before the last
            // call's `side`, which that call's scope waited for
            if std::mem::replace(parked, true) {
                park.release();
            }
            main()
        })
    }
}

impl Drop for Helper {
    /// Lets the parked job end, so that the thread ends with the pool.
    fn drop(&mut self) {
        if self.parked {
            self.park.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own; fails when it is not done within a minute (a parked
    /// job never released would leave the next step waiting for ever).
    fn within_a_minute(f: impl FnOnce() + Send + 'static) {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = done.send(());
        });
        finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the helper's steps did not end");
    }

    #[test]
    fn each_step_runs_its_side_on_the_helpers_thread_and_the_parked_thread_takes_the_next() {
        within_a_minute(|| {
            let mut helper = Helper::new().expect("a thread");
            let caller = std::thread::current().id();
            for step in 0..200u64 {
                let side_on = Mutex::new(None);
                let mut sum = 0u64;
                let got = helper.beside(
                    || {
                        let name = std::thread::current().name().map(str::to_owned);
                        *side_on.lock().unwrap() = Some((std::thread::current().id(), name));
                        sum = (0..=step).sum();
                    },
                    || step * 2,
                );
                assert_eq!(got, step * 2);
                assert_eq!(sum, step * (step + 1) / 2, "step {step}'s side work was done");
                let (id, name) = side_on.into_inner().unwrap().expect("the side work ran");
                assert_ne!(id, caller);
                assert_eq!(name.as_deref(), Some("mtl-table"));
            }
        });
    }

    #[test]
    fn a_dropped_helper_releases_its_parked_thread() {
        within_a_minute(|| {
            let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut helper = Helper::new().expect("a thread");
            helper.beside(|| {}, || ());
            let flag = Arc::clone(&ended);
            // a job queued behind the parked one runs only once the park is released
            helper
                .pool
                .spawn(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
            drop(helper);
            let start = std::time::Instant::now();
            while !ended.load(std::sync::atomic::Ordering::SeqCst) {
                assert!(start.elapsed().as_secs() < 30, "the parked job was not released");
                std::thread::yield_now();
            }
        });
    }

    #[test]
    fn a_panic_on_the_helpers_thread_reaches_the_caller_and_the_helper_goes_on() {
        within_a_minute(|| {
            let mut helper = Helper::new().expect("a thread");
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                helper.beside(|| panic!("side"), || 1)
            }));
            assert!(caught.is_err());
            assert_eq!(helper.beside(|| {}, || 2), 2);
        });
    }
}
