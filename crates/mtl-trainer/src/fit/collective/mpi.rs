//! [`Collective`] over MPI: rsmpi on the system's OpenMPI or MPICH (`mpirun -np N mtl train
//! …`). MPI is started once per process ([`MpiGroup::init`]); the same binary started without
//! `mpirun` is a job of one rank. Only the training loop's thread calls MPI (`Funneled`).
//!
//! MPI's default error handler (`MPI_ERRORS_ARE_FATAL`) stays in place: a rank that dies ends
//! the job — `mpirun` reports the rank and kills the others — instead of leaving them waiting.

use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Equivalence};

use super::Collective;

/// The ranks of an MPI job (its world communicator); MPI is finalised when it is dropped.
pub struct MpiGroup {
    world: SimpleCommunicator,
    /// Held so that MPI stays up while the group lives.
    _universe: Universe,
}

impl std::fmt::Debug for MpiGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MpiGroup(rank {} of {})", self.world.rank(), self.world.size())
    }
}

impl MpiGroup {
    /// Starts MPI (once per process; `None` when it was started already).
    pub fn init() -> Option<Self> {
        let (universe, _) = mpi::initialize_with_threading(Threading::Funneled)?;
        Some(Self {
            world: universe.world(),
            _universe: universe,
        })
    }

    fn sum<T: Equivalence + Copy>(&self, buf: &mut [T]) {
        if self.world.size() > 1 && !buf.is_empty() {
            let send = buf.to_vec();
            self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
        }
    }

    fn gather<T: Equivalence + Copy + Default>(&self, local: &[T]) -> Vec<Vec<T>> {
        let n = self.world.size() as usize;
        let mut counts = vec![0i32; n];
        let count = i32::try_from(local.len()).expect("fewer than 2^31 values a rank");
        self.world.all_gather_into(&count, &mut counts[..]);
        let displs: Vec<i32> = counts
            .iter()
            .scan(0i32, |at, &c| {
                let d = *at;
                *at += c;
                Some(d)
            })
            .collect();
        let total = counts.iter().map(|&c| c as usize).sum();
        let mut all = vec![T::default(); total];
        {
            let mut parts = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(local, &mut parts);
        }
        let mut out = Vec::with_capacity(n);
        let mut rest = &all[..];
        for &c in &counts {
            let (head, tail) = rest.split_at(c as usize);
            out.push(head.to_vec());
            rest = tail;
        }
        out
    }
}

impl Collective for MpiGroup {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    typed_collectives!();

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
