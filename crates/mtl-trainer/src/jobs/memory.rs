//! Whether training's largest buffers fit before any is allocated: the embedding table and
//! what training keeps beside it, against the memory this process may still use (its
//! address-space limit, the host's available memory, its cgroup's limit). A table that does
//! not fit is an error with the numbers, never an allocation failure mid-run.

use crate::TrainError;
use crate::config::{EmbeddingUpdate, TrainSettings};
use crate::fit::collective::Group;

const GIB: f64 = (1u64 << 30) as f64;

/// The ranks of `group`'s job on this host, each holding a replica: all of them where they are
/// threads of this process, else an MPI launcher's local size (OpenMPI's
/// `OMPI_COMM_WORLD_LOCAL_SIZE`, MPICH's `MPI_LOCALNRANKS`), else 1.
pub(crate) fn local_ranks(group: &Group) -> u64 {
    if group.threads_of_one_process() {
        return group.size() as u64;
    }
    crate::fit::collective::launcher_local_ranks().map_or(1, |n| n as u64)
}

/// The parts of training's memory that grow with the embedding table: `(what, bytes)`.
pub(crate) fn table_footprint(table_bytes: u64, settings: &TrainSettings) -> Vec<(&'static str, u64)> {
    let mut parts = vec![
        ("the table", table_bytes),
        ("Adam's two moments", 2 * table_bytes),
    ];
    if settings.average_decay().is_some() {
        parts.push(("the weight average", table_bytes));
    }
    parts.push(match settings.embedding {
        EmbeddingUpdate::Dense => ("its gradient", table_bytes),
        EmbeddingUpdate::Sparse => ("its initial values while they are moved in", table_bytes),
    });
    parts
}

/// Memory this process can still take, and what sets the bound (the smallest of the limits
/// found); `None` where none is known (not Linux).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Room {
    pub bytes: u64,
    pub bound: String,
}

/// The memory this process may still take: the least of its address-space limit (`ulimit -v`)
/// less what it has mapped, the host's available memory and swap, and its cgroup's limit
/// less its usage; the last two shared among `local_ranks` processes of one job on the host.
pub(crate) fn room(local_ranks: u64) -> Option<Room> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let mut bounds: Vec<Room> = Vec::new();
    if let (Some(limit), Some(used)) = (
        read("/proc/self/limits").and_then(|t| address_limit(&t)),
        read("/proc/self/status").and_then(|t| kib_field(&t, "VmSize:")),
    ) {
        bounds.push(Room {
            bytes: limit.saturating_sub(used),
            bound: format!(
                "its address-space limit (ulimit -v) of {:.1} GiB, {:.1} GiB of it in use",
                limit as f64 / GIB,
                used as f64 / GIB
            ),
        });
    }
    let share = |bytes: u64| bytes / local_ranks.max(1);
    let each = if local_ranks > 1 {
        format!(", shared by this host's {local_ranks} ranks")
    } else {
        String::new()
    };
    if let Some(meminfo) = read("/proc/meminfo")
        && let Some(available) = kib_field(&meminfo, "MemAvailable:")
    {
        let swap = kib_field(&meminfo, "SwapFree:").unwrap_or(0);
        bounds.push(Room {
            bytes: share(available + swap),
            bound: format!(
                "the host's available memory and swap, {:.1} GiB{each}",
                (available + swap) as f64 / GIB
            ),
        });
    }
    let max = read("/sys/fs/cgroup/memory.max").and_then(|t| t.trim().parse::<u64>().ok());
    let current = read("/sys/fs/cgroup/memory.current").and_then(|t| t.trim().parse::<u64>().ok());
    if let (Some(max), Some(current)) = (max, current) {
        bounds.push(Room {
            bytes: share(max.saturating_sub(current)),
            bound: format!(
                "the container's memory limit (cgroup memory.max) of {:.1} GiB, {:.1} GiB of it in use{each}",
                max as f64 / GIB,
                current as f64 / GIB
            ),
        });
    }
    bounds.into_iter().min_by_key(|r| r.bytes)
}

/// The soft "Max address space" of `/proc/self/limits`, in bytes (`None` when unlimited).
fn address_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max address space"))?;
    line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A `NAME: N kB` field of `/proc/meminfo` or `/proc/self/status`, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a table whose training footprint (see [`table_footprint`]) exceeds `room`, with
/// the numbers: the table's shape, each part, the room and what bounds it.
pub(crate) fn check_footprint(
    rows: usize,
    width: usize,
    settings: &TrainSettings,
    room: Option<Room>,
    file: &str,
) -> Result<(), TrainError> {
    let table = (rows as u64).saturating_mul(width as u64).saturating_mul(4);
    let parts = table_footprint(table, settings);
    let need: u64 = parts.iter().map(|(_, b)| b).sum();
    let Some(room) = room.filter(|r| need > r.bytes) else {
        return Ok(());
    };
    let listed: Vec<String> = parts
        .iter()
        .map(|(what, b)| format!("{what} {:.1}", *b as f64 / GIB))
        .collect();
    Err(TrainError::Config {
        file: file.to_string(),
        message: format!(
            "the embedding table ({rows} rows × width {width}, {:.1} GiB) needs about {:.1} GiB \
             while training ({} GiB), more than the {:.1} GiB this process can still use \
             (bounded by {}): lower vocab_size / hash_buckets or embed_dim, or give the \
             process more memory",
            table as f64 / GIB,
            need as f64 / GIB,
            listed.join(", "),
            room.bytes as f64 / GIB,
            room.bound
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> TrainSettings {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn the_footprint_counts_moments_average_and_the_transient_copy() {
        let gib = 1u64 << 30;
        let sum = |s: &TrainSettings| table_footprint(gib, s).iter().map(|(_, b)| b).sum::<u64>();
        // table + 2 moments + the copy moved in (sparse) or the gradient (dense); + average
        assert_eq!(sum(&settings("")), 4 * gib);
        assert_eq!(sum(&settings("ema_decay = 0.99")), 5 * gib);
        assert_eq!(sum(&settings("embedding = \"dense\"")), 4 * gib);
        assert_eq!(sum(&settings("embedding = \"dense\"\nema_decay = 0.9")), 5 * gib);
    }

    #[test]
    fn a_table_beyond_the_room_is_refused_with_the_numbers() {
        let room = |gib: f64| {
            Some(Room {
                bytes: (gib * GIB) as u64,
                bound: "its address-space limit (ulimit -v) of 3.0 GiB".into(),
            })
        };
        // 2^29 floats = 2 GiB: needs 8 GiB
        let s = settings("");
        let err = check_footprint(1 << 23, 64, &s, room(3.0), "s.toml")
            .unwrap_err()
            .to_string();
        for needle in [
            "s.toml",
            "8388608 rows × width 64, 2.0 GiB",
            "needs about 8.0 GiB",
            "the table 2.0, Adam's two moments 4.0",
            "more than the 3.0 GiB",
            "ulimit -v",
        ] {
            assert!(err.contains(needle), "`{needle}` not in {err}");
        }
        assert!(check_footprint(1 << 23, 64, &s, room(8.5), "s.toml").is_ok());
        assert!(
            check_footprint(1 << 23, 64, &s, None, "s.toml").is_ok(),
            "no known bound"
        );
    }

    #[test]
    fn proc_files_are_read_in_bytes() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max address space         3072000000           unlimited            bytes     \n";
        assert_eq!(address_limit(limits), Some(3_072_000_000));
        assert_eq!(
            address_limit("Max address space         unlimited            unlimited            bytes"),
            None
        );
        assert_eq!(
            kib_field("MemAvailable:   23929456 kB\n", "MemAvailable:"),
            Some(23_929_456 * 1024)
        );
        assert_eq!(kib_field("VmSize:\t    3892 kB\n", "VmSize:"), Some(3892 * 1024));
        // this process has some room, bounded by something named
        let r = room(1).expect("Linux");
        assert!(r.bytes > 0 && !r.bound.is_empty(), "{r:?}");
    }
}
