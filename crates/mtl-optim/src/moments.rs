//! The saved form of a row-wise Adam's moments, one format for both table places: a header
//! (`MTLMOM1`, rows, dim as u64 LE), then every row of the first moment and every row of the
//! second, f32 LE.

use std::io::{Read, Write};
use std::path::Path;

use crate::OptimError;
use crate::error::io_err;

/// First bytes of a saved moments file.
const MOMENTS_MAGIC: &[u8; 7] = b"MTLMOM1";

/// Writes a moments file: a header (`MTLMOM1`, rows, dim as u64 LE), then every row of the
/// first moment and every row of the second, f32 LE; `row(part, r)` is row `r` of moment
/// `part` (1 first, 2 second).
pub fn write_moments<'a>(
    path: &Path,
    rows: usize,
    dim: usize,
    row: impl Fn(usize, usize) -> &'a [f32],
) -> Result<(), OptimError> {
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    out.write_all(MOMENTS_MAGIC).map_err(io_err(path))?;
    out.write_all(&(rows as u64).to_le_bytes())
        .map_err(io_err(path))?;
    out.write_all(&(dim as u64).to_le_bytes()).map_err(io_err(path))?;
    for part in [1, 2] {
        for r in 0..rows {
            out.write_all(bytemuck::cast_slice(row(part, r)))
                .map_err(io_err(path))?;
        }
    }
    out.into_inner()
        .map_err(|e| io_err(path)(e.into_error()))?
        .sync_all()
        .map_err(io_err(path))
}

/// Reads a moments file of a `rows × dim` table, handing each row to `put(part, r, values)`;
/// a file of another shape, or one that ends early, is an error naming it.
pub fn read_moments(
    path: &Path,
    rows: usize,
    dim: usize,
    mut put: impl FnMut(usize, usize, &[f32]),
) -> Result<(), OptimError> {
    let bad = |message: String| OptimError::Record {
        path: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut input = std::io::BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; 23];
    input
        .read_exact(&mut header)
        .map_err(|_| bad("not a moments file (too short)".into()))?;
    if &header[..7] != MOMENTS_MAGIC {
        return Err(bad("not a moments file (bad magic)".into()));
    }
    let file_rows = u64::from_le_bytes(header[7..15].try_into().expect("8 bytes"));
    let file_dim = u64::from_le_bytes(header[15..23].try_into().expect("8 bytes"));
    if (file_rows, file_dim) != (rows as u64, dim as u64) {
        return Err(bad(format!(
            "moments of a {file_rows} × {file_dim} table; this table is {rows} × {dim}"
        )));
    }
    let mut bytes = vec![0u8; dim * 4];
    let mut values = vec![0f32; dim];
    for part in [1, 2] {
        for r in 0..rows {
            input
                .read_exact(&mut bytes)
                .map_err(|_| bad("the file ends early".into()))?;
            for (dst, src) in values.iter_mut().zip(bytes.chunks_exact(4)) {
                *dst = f32::from_le_bytes(src.try_into().expect("4 bytes"));
            }
            put(part, r, &values);
        }
    }
    Ok(())
}
