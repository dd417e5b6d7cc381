//! The saved form of the host table's catch-up bookkeeping, next to a checkpoint's moments:
//! what a resumed run needs to continue exactly where the saved one was, rows not yet brought
//! up to date included (a checkpoint does not move the table, so that a run stopped and
//! resumed anywhere trains as the uninterrupted one).
//!
//! Layout (little endian): `MTLLAZY1`, rows, dim, time, base, steps (u64 each); per missed step
//! its factor, ε, learning rate and keep (f32); the untouched-row grid's point count (u64), its
//! points (4 × f64 each) and keep (f64); every row's up-to-date step (u64); every row's value
//! as stored (f32, `rows × dim`); a flag (u8) and, when 1, every row's weight average as
//! stored (f32, `rows × dim`).

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use crate::OptimError;
use crate::error::io_err;
use crate::replay::{Fresh, Missed};

/// First bytes of a catch-up file.
const MAGIC: &[u8; 8] = b"MTLLAZY1";

/// The bookkeeping as saved: borrowed when writing, owned when read back.
pub(crate) struct LazyState<'a> {
    pub(crate) rows: usize,
    pub(crate) dim: usize,
    pub(crate) time: u64,
    pub(crate) base: u64,
    pub(crate) steps: std::borrow::Cow<'a, [Missed]>,
    pub(crate) fresh: std::borrow::Cow<'a, Fresh>,
    pub(crate) last: std::borrow::Cow<'a, [u64]>,
    pub(crate) average: Option<std::borrow::Cow<'a, [f32]>>,
}

/// Writes `state` to `path`, every row's value `value_row(r)` streamed from where it is stored.
pub(crate) fn write<'v>(
    path: &Path,
    state: &LazyState<'_>,
    value_row: impl Fn(usize) -> &'v [f32],
) -> Result<(), OptimError> {
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut put = |bytes: &[u8]| out.write_all(bytes).map_err(io_err(path));
    put(MAGIC)?;
    let header = [
        state.rows as u64,
        state.dim as u64,
        state.time,
        state.base,
        state.steps.len() as u64,
    ];
    put(bytemuck::cast_slice(&header.map(u64::to_le)))?;
    for s in state.steps.iter() {
        put(bytemuck::cast_slice(
            &[s.factor, s.eps, s.lr, s.keep].map(|x| x.to_bits().to_le()),
        ))?;
    }
    let (points, keep) = state.fresh.parts();
    put(&(points.len() as u64).to_le_bytes())?;
    for p in points {
        put(bytemuck::cast_slice(&p.map(|x| x.to_bits().to_le())))?;
    }
    put(&keep.to_bits().to_le_bytes())?;
    put(bytemuck::cast_slice(
        &state.last.iter().map(|x| x.to_le()).collect::<Vec<_>>(),
    ))?;
    for r in 0..state.rows {
        put(bytemuck::cast_slice(value_row(r)))?;
    }
    match &state.average {
        Some(a) => {
            put(&[1])?;
            put(bytemuck::cast_slice(a))?;
        }
        None => put(&[0])?,
    }
    out.into_inner()
        .map_err(|e| io_err(path)(e.into_error()))?
        .sync_all()
        .map_err(io_err(path))
}

/// Reads the file at `path` for a `rows × dim` table at step `time`: the bookkeeping and every
/// row's value (`rows × dim`); a file of another table or step, or one that ends early, is an
/// error naming it.
pub(crate) fn read(
    path: &Path,
    rows: usize,
    dim: usize,
    time: u64,
) -> Result<(LazyState<'static>, Vec<f32>), OptimError> {
    let bad = |message: String| OptimError::Record {
        path: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut take = |n: usize| -> Result<Vec<u8>, OptimError> {
        let mut bytes = vec![0u8; n];
        input
            .read_exact(&mut bytes)
            .map_err(|_| bad("the file ends early".into()))?;
        Ok(bytes)
    };
    if take(8)? != MAGIC {
        return Err(bad("not a catch-up file (bad magic)".into()));
    }
    let header = decode(u64::from_le_bytes, &take(40)?);
    let (file_rows, file_dim, file_time, base, n_steps) =
        (header[0], header[1], header[2], header[3], header[4]);
    if (file_rows, file_dim) != (rows as u64, dim as u64) {
        return Err(bad(format!(
            "catch-up state of a {file_rows} × {file_dim} table; this table is {rows} × {dim}"
        )));
    }
    if file_time != time || base > time || n_steps != time - base {
        return Err(bad(format!(
            "catch-up state at step {file_time} (base {base}, {n_steps} steps); the checkpoint is at step {time}"
        )));
    }
    let steps = decode(f32::from_le_bytes, &take(n_steps as usize * 16)?)
        .chunks_exact(4)
        .map(|s| Missed {
            factor: s[0],
            eps: s[1],
            lr: s[2],
            keep: s[3],
        })
        .collect::<Vec<_>>();
    let n_points = decode(u64::from_le_bytes, &take(8)?)[0] as usize;
    if n_points != Fresh::points() {
        return Err(bad(format!(
            "an untouched-row grid of {n_points} points (written by another mtl)"
        )));
    }
    let points = decode(f64::from_le_bytes, &take(n_points * 32)?)
        .chunks_exact(4)
        .map(|p| [p[0], p[1], p[2], p[3]])
        .collect();
    let keep = decode(f64::from_le_bytes, &take(8)?)[0];
    let last = decode(u64::from_le_bytes, &take(rows * 8)?);
    if last.iter().any(|&l| l < base || l > time) {
        return Err(bad(format!("a row's up-to-date step is outside {base}..={time}")));
    }
    let values = decode(f32::from_le_bytes, &take(rows * dim * 4)?);
    let average = match take(1)?[0] {
        0 => None,
        1 => Some(decode(f32::from_le_bytes, &take(rows * dim * 4)?).into()),
        flag => return Err(bad(format!("bad average flag {flag}"))),
    };
    let state = LazyState {
        rows,
        dim,
        time,
        base,
        steps: steps.into(),
        fresh: std::borrow::Cow::Owned(Fresh::from_parts(points, keep)),
        last: last.into(),
        average,
    };
    Ok((state, values))
}

/// `bytes` read as little-endian values of `N` bytes each.
fn decode<const N: usize, T>(from_le: fn([u8; N]) -> T, bytes: &[u8]) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|b| from_le(b.try_into().expect("N bytes")))
        .collect()
}
