//! [`Collective`] over threads of one process (`mtl train --ranks N`): N ranks, each a thread
//! with its own rayon pool, exchanging their buffers through shared memory. The same
//! computation as N MPI processes — every rank runs the whole loop on its share of each
//! batch — without an MPI installation, and without the process boundary's copies.
//!
//! A rank puts its buffer in its slot, waits for every rank's, reads them all in rank order
//! (sums start from rank 0's and add the others in turn), and waits again before any slot is
//! reused. The ranks share the process's random stream (burn's device seed), so a job draws
//! from it only where the ranks take turns ([`Group::random_turn`](super::Group::random_turn)).

use std::any::Any;
use std::ops::Add;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Barrier, RwLock};

use super::{Collective, Group};

/// One rank of a job whose ranks are threads of this process.
#[derive(Debug)]
pub struct ThreadRank {
    rank: usize,
    shared: Arc<Shared>,
}

/// What the ranks of one job share: a slot per rank and the barrier they meet at.
struct Shared {
    size: usize,
    barrier: Barrier,
    slots: RwLock<Vec<Option<Box<dyn Any + Send + Sync>>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl ThreadRank {
    /// The `size` ranks of a new job, in rank order (one for each thread).
    pub fn job(size: usize) -> Vec<ThreadRank> {
        let shared = Arc::new(Shared {
            size,
            barrier: Barrier::new(size),
            slots: RwLock::new((0..size).map(|_| None).collect()),
        });
        (0..size)
            .map(|rank| ThreadRank {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Puts `local` in this rank's slot, waits for every rank's, runs `read` on all of them
    /// in rank order, then waits until every rank has read them.
    fn exchange<T: Send + Sync + 'static, O>(&self, local: Vec<T>, read: impl FnOnce(&[&Vec<T>]) -> O) -> O {
        let unlocked = "a rank panicked while holding the ranks' slots";
        self.shared.slots.write().expect(unlocked)[self.rank] = Some(Box::new(local));
        self.shared.barrier.wait();
        let out = {
            let slots = self.shared.slots.read().expect(unlocked);
            let parts: Vec<&Vec<T>> = slots
                .iter()
                .map(|slot| {
                    slot.as_ref()
                        .and_then(|s| s.downcast_ref::<Vec<T>>())
                        .expect("every rank calls the same collective at the same point")
                })
                .collect();
            read(&parts)
        };
        self.shared.barrier.wait();
        out
    }

    fn sum<T: Copy + Add<Output = T> + Send + Sync + 'static>(&self, buf: &mut [T]) {
        if self.size() == 1 {
            return;
        }
        self.exchange(buf.to_vec(), |parts| {
            for (i, x) in buf.iter_mut().enumerate() {
                *x = parts[1..].iter().fold(parts[0][i], |s, p| s + p[i]);
            }
        });
    }

    fn gather<T: Copy + Send + Sync + 'static>(&self, local: &[T]) -> Vec<Vec<T>> {
        self.exchange(local.to_vec(), |parts| parts.iter().map(|p| p.to_vec()).collect())
    }
}

impl Collective for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    typed_collectives!();

    /// Ends the process, every rank with it, after removing the outputs its ranks were
    /// writing (temp files, staging folders: [`mtl_features::pending`]).
    fn abort(&self, code: i32) -> ! {
        mtl_features::pending::remove_all();
        std::process::exit(code)
    }

    fn threads_of_one_process(&self) -> bool {
        true
    }
}

/// Runs `job` as `ranks` ranks, each on a thread of its own with a rayon pool of
/// `threads_per_rank` threads (the flex and ndarray backends' operations run in the pool of
/// the thread that calls them), and returns each rank's result in rank order. A rank that
/// panics ends the process (exit status 101) after the panic's message: the other ranks
/// would otherwise wait for it forever.
pub fn run_ranks<T: Send>(
    ranks: usize,
    threads_per_rank: usize,
    job: impl Fn(Group) -> T + Sync,
) -> std::io::Result<Vec<T>> {
    let pools = (0..ranks)
        .map(|r| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads_per_rank.max(1))
                .thread_name(move |i| format!("rank {r} worker {i}"))
                .build()
                .map_err(std::io::Error::other)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let job = &job;
    std::thread::scope(|scope| {
        let handles = ThreadRank::job(ranks)
            .into_iter()
            .zip(&pools)
            .map(|(rank, pool)| {
                let name = format!("rank {}", rank.rank);
                std::thread::Builder::new()
                    .name(name)
                    .spawn_scoped(scope, move || {
                        let r = rank.rank;
                        let run = AssertUnwindSafe(|| pool.install(|| job(Group::new(rank))));
                        std::panic::catch_unwind(run).unwrap_or_else(|_| {
                            eprintln!("error: rank {r} panicked (above); ending every rank");
                            std::process::exit(101)
                        })
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| std::process::exit(101)))
            .collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_sum_and_gather_in_rank_order_every_time() {
        // 3 ranks, 50 rounds each: rank r sums [r + round, 10 r] and gathers r + 1 copies of
        // its rank; a round reading another round's slot would get other numbers
        let out = run_ranks(3, 1, |group| {
            let mut seen = Vec::new();
            for round in 0..50 {
                let (r, k) = (group.rank() as f32, round as f32);
                let mut buf = [r + k, 10.0 * r];
                group.sum_f32(&mut buf);
                assert_eq!(buf, [3.0 * k + 3.0, 30.0], "round {round}");
                let mut wide = [f64::from(r) * 0.1];
                group.sum_f64(&mut wide);
                // rank order: (0 + 0.1) + 0.2
                assert_eq!(wide[0], (0.0 + 0.1) + 0.2);
                let ids = vec![group.rank() as i32; group.rank() + 1];
                seen = group.gather_i32(&ids);
            }
            (group.rank(), group.size(), group.is_distributed(), seen)
        })
        .unwrap();
        assert_eq!(out.len(), 3);
        for (r, (rank, size, distributed, seen)) in out.into_iter().enumerate() {
            assert_eq!((rank, size, distributed), (r, 3, true));
            assert_eq!(seen, [vec![0], vec![1, 1], vec![2, 2, 2]]);
        }
    }

    #[test]
    fn each_rank_runs_in_a_pool_of_its_own() {
        let out = run_ranks(2, 3, |group| {
            let name = std::thread::current().name().map(str::to_owned);
            (group.rank(), rayon::current_num_threads(), name)
        })
        .unwrap();
        for (r, (rank, threads, name)) in out.into_iter().enumerate() {
            assert_eq!((rank, threads), (r, 3));
            let name = name.unwrap_or_default();
            assert!(name.starts_with(&format!("rank {r} worker ")), "{name}");
        }
        // a job of one rank is one process's: nothing to exchange
        let one = run_ranks(1, 1, |group| {
            let mut buf = [2.5f32];
            group.sum_f32(&mut buf);
            (group.is_distributed(), buf)
        })
        .unwrap();
        assert_eq!(one, [(false, [2.5])]);
    }
}
