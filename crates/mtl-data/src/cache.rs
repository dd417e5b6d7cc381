//! A binary cache of encoded data next to the CSV it came from (`<file>.mtlcache`), so that a
//! second run skips parsing and encoding.
//!
//! The cache is valid only for the same source file (size, modification time, and a hash of
//! its first and last 64 KiB), the same schema and fitted feature state, the same bad-row
//! policy and the same need for labels; anything else rebuilds it. The format is a small
//! header and the raw little-endian arrays of [`EncodedData`] — simpler and faster to load
//! than a general columnar format for these five flat arrays. Written atomically.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use mtl_features::state::{fnv1a, schema_fingerprint};
use mtl_features::{EncodedData, Encoder, atomic_write};

use crate::{BadRowPolicy, DataError, ReadReport, read_encoded};

const MAGIC: &[u8; 8] = b"MTLCACHE";
const VERSION: u32 = 1;

/// Where the cache of `csv` lives.
pub fn cache_path(csv: &Path) -> PathBuf {
    let mut name = csv.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".mtlcache");
    csv.with_file_name(name)
}

fn source_key(csv: &Path, encoder: &Encoder, policy: BadRowPolicy, need_labels: bool) -> Option<u64> {
    let meta = std::fs::metadata(csv).ok()?;
    let modified = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    let mut file = std::fs::File::open(csv).ok()?;
    let mut head = vec![0u8; 65536.min(meta.len() as usize)];
    file.read_exact(&mut head).ok()?;
    let tail_len = 65536.min(meta.len()) as usize;
    file.seek(SeekFrom::End(-(tail_len as i64))).ok()?;
    let mut tail = vec![0u8; tail_len];
    file.read_exact(&mut tail).ok()?;
    let state = serde_json::to_vec(encoder.state()).ok()?;
    let key = format!(
        "{VERSION}|{}|{}.{}|{:x}|{:x}|{}|{:x}|{policy:?}|{need_labels}",
        meta.len(),
        modified.as_secs(),
        modified.subsec_nanos(),
        fnv1a(&head),
        fnv1a(&tail),
        schema_fingerprint(encoder.schema()),
        fnv1a(&state),
    );
    Some(fnv1a(key.as_bytes()))
}

fn put_u32s(out: &mut Vec<u8>, v: &[u32]) {
    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

fn put_f32s(out: &mut Vec<u8>, v: &[f32]) {
    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32s(&mut self) -> Option<Vec<u32>> {
        let n = self.u64()? as usize;
        let raw = self.take(n.checked_mul(4)?)?;
        Some(
            raw.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
    fn f32s(&mut self) -> Option<Vec<f32>> {
        let n = self.u64()? as usize;
        let raw = self.take(n.checked_mul(4)?)?;
        Some(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }
}

fn encode(key: u64, data: &EncodedData, report: &ReadReport) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + 4 * (data.sparse.len() + data.sequence.len() + data.dense.len() + data.labels.len()),
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&key.to_le_bytes());
    for n in [data.rows, data.n_sparse, data.n_dense, data.n_labels] {
        out.extend_from_slice(&(n as u64).to_le_bytes());
    }
    out.extend_from_slice(&report.rows.to_le_bytes());
    out.extend_from_slice(&report.skipped.to_le_bytes());
    put_u32s(
        &mut out,
        &data.seq_max_len.iter().map(|&x| x as u32).collect::<Vec<_>>(),
    );
    put_u32s(&mut out, &data.sparse);
    put_u32s(&mut out, &data.sequence);
    put_u32s(&mut out, &data.seq_len);
    put_f32s(&mut out, &data.dense);
    put_f32s(&mut out, &data.labels);
    out
}

fn decode(bytes: &[u8], key: u64, file: &str) -> Option<(EncodedData, ReadReport)> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(8)? != MAGIC || r.u64()? != key {
        return None;
    }
    let (rows, n_sparse, n_dense, n_labels) = (
        r.u64()? as usize,
        r.u64()? as usize,
        r.u64()? as usize,
        r.u64()? as usize,
    );
    let (read, skipped) = (r.u64()?, r.u64()?);
    let seq_max_len = r.u32s()?.into_iter().map(|x| x as usize).collect();
    let data = EncodedData {
        rows,
        n_sparse,
        seq_max_len,
        n_dense,
        n_labels,
        sparse: r.u32s()?,
        sequence: r.u32s()?,
        seq_len: r.u32s()?,
        dense: r.f32s()?,
        labels: r.f32s()?,
    };
    let consistent = data.sparse.len() == rows * n_sparse
        && data.dense.len() == rows * n_dense
        && data.labels.len() == rows * n_labels
        && data.sequence.len() == rows * data.seq_width()
        && data.seq_len.len() == rows * data.seq_max_len.len();
    consistent.then(|| {
        let report = ReadReport {
            file: file.to_string(),
            rows: read,
            skipped,
            examples: Vec::new(),
        };
        (data, report)
    })
}

/// Like [`read_encoded`] (without an id column), through the cache beside `csv`: loads it when
/// valid, otherwise reads the CSV and writes the cache. Returns whether the cache was used.
pub fn read_encoded_cached(
    csv: &Path,
    encoder: &Encoder,
    policy: BadRowPolicy,
    need_labels: bool,
) -> Result<(EncodedData, ReadReport, bool), DataError> {
    let file = csv.display().to_string();
    let key = source_key(csv, encoder, policy, need_labels);
    let cache = cache_path(csv);
    if let Some(key) = key
        && let Ok(bytes) = std::fs::read(&cache)
        && let Some((data, report)) = decode(&bytes, key, &file)
    {
        return Ok((data, report, true));
    }
    let (data, report, _) = read_encoded(csv, encoder, policy, need_labels, None)?;
    if let Some(key) = key {
        // a read-only data folder just means no cache
        let _ = atomic_write(&cache, &encode(key, &data, &report));
    }
    Ok((data, report, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtl_features::{Schema, StateFitter};

    const SCHEMA: &str = "[[sparse]]\nname = \"u\"\nvocab_size = 10\n[[sequence]]\nname = \"h\"\nmax_len = 2\nhash_buckets = 7\n[[dense]]\nname = \"x\"\n[[labels]]\nname = \"y\"\nkind = \"binary\"\n";

    #[test]
    fn round_trips_exactly_and_rebuilds_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("d.csv");
        std::fs::write(&csv, "y,u,h,x\n1,3,a|b,0.25\n0,9,,-1.5\n").unwrap();
        let schema = Schema::from_toml_str(SCHEMA, "s").unwrap();
        let enc = Encoder::new(&schema, &StateFitter::new(&schema).finish());
        let (fresh, _, cached) = read_encoded_cached(&csv, &enc, BadRowPolicy::Fail, true).unwrap();
        assert!(!cached);
        assert!(cache_path(&csv).exists());
        let (again, report, cached) = read_encoded_cached(&csv, &enc, BadRowPolicy::Fail, true).unwrap();
        assert!(cached, "second read comes from the cache");
        assert_eq!(again, fresh);
        assert_eq!(report.rows, 2);

        // the CSV changes (same size, so only content and time tell): rebuilt
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&csv, "y,u,h,x\n1,4,a|b,0.25\n0,9,,-1.5\n").unwrap();
        let (changed, _, cached) = read_encoded_cached(&csv, &enc, BadRowPolicy::Fail, true).unwrap();
        assert!(!cached);
        assert_eq!(changed.sparse, vec![4, 9]);

        // the schema changes: rebuilt
        let other =
            Schema::from_toml_str(&SCHEMA.replace("hash_buckets = 7", "hash_buckets = 5"), "s").unwrap();
        let enc2 = Encoder::new(&other, &StateFitter::new(&other).finish());
        let (_, _, cached) = read_encoded_cached(&csv, &enc2, BadRowPolicy::Fail, true).unwrap();
        assert!(!cached);
        let (_, _, cached) = read_encoded_cached(&csv, &enc2, BadRowPolicy::Fail, true).unwrap();
        assert!(cached);

        // a corrupt cache is ignored and replaced
        std::fs::write(cache_path(&csv), b"MTLCACHE garbage").unwrap();
        let (data, _, cached) = read_encoded_cached(&csv, &enc2, BadRowPolicy::Fail, true).unwrap();
        assert!(!cached);
        assert_eq!(data.rows, 2);
    }
}
