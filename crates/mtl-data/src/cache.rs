//! A columnar cache of encoded data next to the CSV it came from (`<file>.mtl.arrow`, an Arrow
//! IPC file), so that a second run skips parsing and encoding.
//!
//! One column per schema field, named after it: sparse ids `UInt32`, sequences
//! `List<UInt32>` (the ids before padding), dense values and labels `Float32`, in record
//! batches of 65,536 rows — readable by any Arrow reader (`pyarrow.ipc.open_file`). The
//! schema metadata holds the cache key and the read report.
//!
//! The cache is valid only for the same source file contents (a hash of the whole file), the
//! same schema, fitted feature state and label rules, the same bad-row policy and the same
//! need for labels; anything else — or a file that does not read back
//! with exactly the expected columns — rebuilds it. Written atomically.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{ArrowPrimitiveType, Float32Type, UInt32Type};
use arrow_array::{Array, ArrayRef, ListArray, PrimitiveArray, RecordBatch, UInt32Array};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, FieldRef, Schema as ArrowSchema};
use mtl_features::state::{fnv1a, schema_fingerprint};
use mtl_features::{EncodedData, Encoder, LabelKind, ValidSchema, atomic_write_with};

use crate::{BadRowPolicy, DataError, ReadReport, read_encoded};

/// Bumped whenever the layout of the cache changes.
const VERSION: u32 = 3;
/// Rows per record batch.
const BATCH_ROWS: usize = 65_536;
const KEY: &str = "mtl.cache_key";
const ROWS_READ: &str = "mtl.rows_read";
const SKIPPED: &str = "mtl.rows_skipped";
const OOV: &str = "mtl.ids_oov";

/// The suffix of an encoded cache beside its data file.
pub const CACHE_SUFFIX: &str = ".mtl.arrow";

/// Whether `path` is a file mtl writes beside the data rather than data: an encoded cache
/// (`*.mtl.arrow`), an output still being written (`.mtl-*` temp files, `*.partial` shards).
/// A data pattern never matches one.
pub fn is_own_file(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    name.ends_with(CACHE_SUFFIX) || name.starts_with(".mtl-") || name.ends_with(".partial")
}

/// Where the cache of `csv` lives beside it.
pub fn cache_path(csv: &Path) -> PathBuf {
    let mut name = csv.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(CACHE_SUFFIX);
    csv.with_file_name(name)
}

/// The user's cache folder for encoded caches: `$MTL_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/mtl/encoded`, else `~/.cache/mtl/encoded` (`None` without a home).
pub fn user_cache_dir() -> Option<PathBuf> {
    let var = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty()).map(PathBuf::from);
    var("MTL_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("mtl/encoded")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/mtl/encoded")))
}

/// The cache of `csv` in folder `dir`: its name prefixed with a hash of its absolute path,
/// so that files of one name in different folders never share a cache.
pub fn cache_path_in(dir: &Path, csv: &Path) -> PathBuf {
    let absolute = std::path::absolute(csv).unwrap_or_else(|_| csv.to_path_buf());
    let hash = xxhash_rust::xxh3::xxh3_64(absolute.to_string_lossy().as_bytes());
    let name = csv.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    dir.join(format!("{hash:016x}-{name}{CACHE_SUFFIX}"))
}

/// Where the cache of `csv` may be, in the order tried: in `cache_dir` when one is given;
/// else beside the file, then (a data folder that cannot be written) the user's cache folder.
pub fn cache_paths(csv: &Path, cache_dir: Option<&Path>) -> Vec<PathBuf> {
    match cache_dir {
        Some(dir) => vec![cache_path_in(dir, csv)],
        None => std::iter::once(cache_path(csv))
            .chain(user_cache_dir().map(|dir| cache_path_in(&dir, csv)))
            .collect(),
    }
}

/// The whole file's contents hashed (XXH3-64, streamed in 1 MiB reads: ~10 GB/s, a small
/// part of loading the cache): an edit anywhere, whatever it does to size and modification
/// time, gives another key (and another identity to a run's checkpoint).
pub fn content_hash(csv: &Path) -> std::io::Result<u64> {
    let mut file = std::fs::File::open(csv)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.digest());
        }
        hasher.update(&buf[..n]);
    }
}

fn source_key(csv: &Path, encoder: &Encoder, policy: BadRowPolicy, need_labels: bool) -> Option<u64> {
    let state = serde_json::to_vec(encoder.state()).ok()?;
    // label rules change which rows a `skip` read keeps; a `fail` read keeps every row or
    // none, so its cache serves any rules its rows satisfy (checked on loading)
    let rules = match policy {
        BadRowPolicy::Skip => serde_json::to_vec(encoder.label_rules()).ok()?,
        BadRowPolicy::Fail => Vec::new(),
    };
    let key = format!(
        "{VERSION}|{:x}|{}|{:x}|{:x}|{policy:?}|{need_labels}",
        content_hash(csv).ok()?,
        schema_fingerprint(encoder.schema()),
        fnv1a(&state),
        fnv1a(&rules),
    );
    Some(fnv1a(key.as_bytes()))
}

/// The item field of a sequence column's `List<UInt32>`.
fn sequence_item() -> FieldRef {
    Arc::new(Field::new_list_field(DataType::UInt32, false))
}

fn arrow_schema(schema: &ValidSchema, n_labels: usize, metadata: HashMap<String, String>) -> ArrowSchema {
    let s = &schema.schema;
    let item = sequence_item();
    let fields = (s
        .sparse
        .iter()
        .map(|f| Field::new(&f.name, DataType::UInt32, false)))
    .chain(
        s.sequence
            .iter()
            .map(|f| Field::new(&f.name, DataType::List(item.clone()), false)),
    )
    .chain(
        s.dense
            .iter()
            .map(|f| Field::new(&f.name, DataType::Float32, false)),
    )
    .chain((s.labels.iter().take(n_labels)).map(|f| Field::new(&f.name, DataType::Float32, false)));
    ArrowSchema::new_with_metadata(fields.collect::<Vec<_>>(), metadata)
}

/// The `width` columns of a row-major block, rows `rows`, as Arrow arrays of type `T`.
fn block_columns<T: ArrowPrimitiveType>(
    block: &[T::Native],
    width: usize,
    rows: std::ops::Range<usize>,
) -> impl Iterator<Item = ArrayRef> + '_ {
    (0..width).map(move |k| {
        let values = rows.clone().map(|r| block[r * width + k]);
        Arc::new(PrimitiveArray::<T>::from_iter_values(values)) as ArrayRef
    })
}

fn write_cache(
    path: &Path,
    key: u64,
    data: &EncodedData,
    report: &ReadReport,
    schema: &ValidSchema,
) -> Result<(), DataError> {
    let metadata = HashMap::from([
        (KEY.to_string(), format!("{key:016x}")),
        (ROWS_READ.to_string(), report.rows.to_string()),
        (SKIPPED.to_string(), report.skipped.to_string()),
        (OOV.to_string(), report.oov.to_string()),
    ]);
    let arrow = Arc::new(arrow_schema(schema, data.n_labels, metadata));
    let (n_seq, width) = (data.seq_max_len.len(), data.seq_width());
    let item = sequence_item();
    atomic_write_with(path, |out| {
        let mut writer =
            arrow_ipc::writer::FileWriter::try_new(out, &arrow).map_err(std::io::Error::other)?;
        for start in (0..data.rows).step_by(BATCH_ROWS) {
            let rows = start..(start + BATCH_ROWS).min(data.rows);
            let mut columns: Vec<ArrayRef> = Vec::with_capacity(arrow.fields().len());
            columns.extend(block_columns::<UInt32Type>(
                &data.sparse,
                data.n_sparse,
                rows.clone(),
            ));
            let mut offset = 0;
            for (s, &max_len) in data.seq_max_len.iter().enumerate() {
                let lens: Vec<u32> = rows.clone().map(|r| data.seq_len[r * n_seq + s]).collect();
                let values: Vec<u32> = rows
                    .clone()
                    .zip(&lens)
                    .flat_map(|(r, &len)| &data.sequence[r * width + offset..][..len as usize])
                    .copied()
                    .collect();
                let offsets = OffsetBuffer::from_lengths(lens.iter().map(|&l| l as usize));
                let list =
                    ListArray::try_new(item.clone(), offsets, Arc::new(UInt32Array::from(values)), None)
                        .map_err(std::io::Error::other)?;
                columns.push(Arc::new(list));
                offset += max_len;
            }
            columns.extend(block_columns::<Float32Type>(
                &data.dense,
                data.n_dense,
                rows.clone(),
            ));
            columns.extend(block_columns::<Float32Type>(
                &data.labels,
                data.n_labels,
                rows.clone(),
            ));
            let batch = RecordBatch::try_new(arrow.clone(), columns).map_err(std::io::Error::other)?;
            writer.write(&batch).map_err(std::io::Error::other)?;
        }
        writer.finish().map_err(std::io::Error::other)
    })?;
    Ok(())
}

/// Reads the next `width` columns (of type `T`) into the rows from `start` on of the
/// row-major `block`, grown to `rows` rows; `None` when a column is missing or of another type.
fn read_block<'a, T: ArrowPrimitiveType>(
    columns: &mut impl Iterator<Item = &'a ArrayRef>,
    block: &mut Vec<T::Native>,
    width: usize,
    start: usize,
    rows: usize,
) -> Option<()> {
    block.resize(rows * width, T::Native::default());
    for k in 0..width {
        let values = columns.next()?.as_primitive_opt::<T>()?.values();
        for (row, &v) in block[start * width..].chunks_exact_mut(width).zip(values.iter()) {
            row[k] = v;
        }
    }
    Some(())
}

/// Reads the cache back; `None` when it is missing, stale (another key) or not exactly the
/// expected columns.
fn read_cache(path: &Path, key: u64, schema: &ValidSchema, file: &str) -> Option<(EncodedData, ReadReport)> {
    let reader = std::io::BufReader::new(std::fs::File::open(path).ok()?);
    let reader = arrow_ipc::reader::FileReader::try_new(reader, None).ok()?;
    let meta = reader.schema().metadata().clone();
    if meta.get(KEY)? != &format!("{key:016x}") {
        return None;
    }
    let fixed = schema.n_sparse() + schema.n_sequence() + schema.n_dense();
    let n_labels = reader.schema().fields().len().checked_sub(fixed)?;
    if n_labels != 0 && n_labels != schema.n_labels() {
        return None;
    }
    let expected = arrow_schema(schema, n_labels, HashMap::new());
    if reader.schema().fields() != expected.fields() {
        return None;
    }
    let seq_max_len: Vec<usize> = schema.schema.sequence.iter().map(|f| f.max_len).collect();
    let mut data = EncodedData::empty(schema.n_sparse(), seq_max_len, schema.n_dense(), n_labels);
    let (n_sparse, n_seq, n_dense, width) = (
        data.n_sparse,
        data.seq_max_len.len(),
        data.n_dense,
        data.seq_width(),
    );
    for batch in reader {
        let batch = batch.ok()?;
        let n = batch.num_rows();
        let mut columns = batch.columns().iter();
        if batch.columns().iter().any(|c| c.null_count() > 0) {
            return None;
        }
        // a cache too large for memory is read from its source instead, which says so
        if data.spare_rows() < n {
            data.try_reserve_rows(n.max(data.rows)).ok()?;
        }
        let start = data.rows;
        data.rows += n;
        read_block::<UInt32Type>(&mut columns, &mut data.sparse, n_sparse, start, data.rows)?;
        data.sequence.resize(data.rows * width, 0);
        data.seq_len.resize(data.rows * n_seq, 0);
        let mut offset = 0;
        for (s, &max_len) in schema.schema.sequence.iter().map(|f| &f.max_len).enumerate() {
            let list = columns.next()?.as_list_opt::<i32>()?;
            let values = list.values().as_primitive_opt::<UInt32Type>()?.values();
            for (i, w) in list.offsets().windows(2).enumerate() {
                let ids = values.get(w[0] as usize..w[1] as usize)?;
                if ids.len() > max_len {
                    return None;
                }
                let row = start + i;
                data.sequence[row * width + offset..][..ids.len()].copy_from_slice(ids);
                data.seq_len[row * n_seq + s] = ids.len() as u32;
            }
            offset += max_len;
        }
        read_block::<Float32Type>(&mut columns, &mut data.dense, n_dense, start, data.rows)?;
        read_block::<Float32Type>(&mut columns, &mut data.labels, n_labels, start, data.rows)?;
    }
    let report = ReadReport {
        file: file.to_string(),
        rows: meta.get(ROWS_READ)?.parse().ok()?,
        skipped: meta.get(SKIPPED)?.parse().ok()?,
        // caches written before the count existed held no bucketed ids to count
        oov: meta.get(OOV).map_or(Some(0), |v| v.parse().ok())?,
        examples: Vec::new(),
    };
    Some((data, report))
}

/// Like [`read_encoded`] (without an id column), through the cache beside `csv`: loads it when
/// valid, otherwise reads the CSV and writes the cache. Returns whether the cache was used.
pub fn read_encoded_cached(
    csv: &Path,
    encoder: &Encoder,
    policy: BadRowPolicy,
    need_labels: bool,
    cache_dir: Option<&Path>,
) -> Result<(EncodedData, ReadReport, bool), DataError> {
    let file = csv.display().to_string();
    let key = source_key(csv, encoder, policy, need_labels);
    let caches = cache_paths(csv, cache_dir);
    let found = key.and_then(|key| {
        caches
            .iter()
            .find_map(|cache| Some((cache, read_cache(cache, key, encoder.schema(), &file)?)))
    });
    if let Some((cache, (data, report))) = found
        && follows_rules(&data, encoder)
    {
        // a cache is input too: values its encoder cannot write (an edited file keeping its
        // key) are never trained on; the cache is rebuilt from the source instead
        if values_fit(&data, encoder) {
            return Ok((data, report, true));
        }
        tracing::warn!(
            cache = %cache.display(),
            "the encoded cache holds values its schema cannot produce (edited?); rebuilt from {file}"
        );
    }
    let (data, report, _) = read_encoded(csv, encoder, policy, need_labels, None)?;
    if let Some(key) = key {
        // the first place that takes it: a read-only data folder sends it to the user's
        // cache folder, and no place at all just means no cache
        for cache in &caches {
            let _ = cache.parent().map(std::fs::create_dir_all);
            if write_cache(cache, key, &data, &report, encoder.schema()).is_ok() {
                break;
            }
        }
    }
    Ok((data, report, false))
}

/// Whether `data` (read from a cache) holds only what `encoder` writes: every block of the
/// right length, every id inside its field's vocabulary, every sequence length within its
/// field's `max_len`, every dense value finite, every binary label 0 or 1 and every
/// regression label finite (either may be missing: NaN).
fn values_fit(data: &EncodedData, encoder: &Encoder) -> bool {
    let (rows, layout, ns) = (data.rows, encoder.layout(), data.n_sparse);
    let (n_seq, width) = (data.seq_max_len.len(), data.seq_width());
    let lengths = data.sparse.len() == rows * ns
        && data.sequence.len() == rows * width
        && data.seq_len.len() == rows * n_seq
        && data.dense.len() == rows * data.n_dense
        && data.labels.len() == rows * data.n_labels
        && layout.rows.len() >= ns + n_seq;
    if !lengths {
        return false;
    }
    let sparse = (0..ns).all(|f| {
        data.sparse
            .iter()
            .skip(f)
            .step_by(ns)
            .all(|&v| (v as usize) < layout.rows[f])
    });
    let sequence = (0..rows).all(|r| {
        let (mut start, lens) = (r * width, &data.seq_len[r * n_seq..(r + 1) * n_seq]);
        data.seq_max_len.iter().enumerate().all(|(s, &max_len)| {
            let ids = &data.sequence[start..start + max_len];
            start += max_len;
            lens[s] as usize <= max_len && ids.iter().all(|&v| (v as usize) < layout.rows[ns + s])
        })
    });
    let kinds: Vec<LabelKind> = encoder.schema().schema.labels.iter().map(|l| l.kind).collect();
    let weight = encoder.weight_label();
    let labels = data.n_labels == 0
        || data.labels.chunks_exact(data.n_labels).all(|row| {
            row.iter().zip(&kinds).enumerate().all(|(l, (&y, kind))| {
                y.is_nan()
                    || match kind {
                        LabelKind::Binary => y == 0.0 || y == 1.0,
                        LabelKind::Regression if weight == Some(l) => y.is_finite() && y >= 0.0,
                        LabelKind::Regression => y.is_finite(),
                    }
            })
        });
    sparse && sequence && labels && data.dense.iter().all(|x| x.is_finite())
}

/// Whether every row of `data` follows the encoder's label rules (a cache written for a model
/// without them may hold rows another model refuses: those are read from the CSV again, which
/// names the file and line of the first).
fn follows_rules(data: &EncodedData, encoder: &Encoder) -> bool {
    encoder.label_rules().is_empty()
        || data.n_labels == 0
        || data
            .labels
            .chunks_exact(data.n_labels)
            .all(|row| encoder.check_label_rules(row).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtl_features::{Schema, StateFitter};

    const SCHEMA: &str = "[[sparse]]\nname = \"u\"\nvocab_size = 10\n[[sequence]]\nname = \"h\"\nmax_len = 2\nhash_buckets = 7\n[[dense]]\nname = \"x\"\n[[labels]]\nname = \"y\"\nkind = \"binary\"\n";

    #[test]
    fn an_edited_cache_is_rebuilt_never_trained_on() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("d.csv");
        std::fs::write(&csv, "y,u,h,x\n1,3,a|b,0.25\n0,9,,-1.5\n").unwrap();
        let schema = Schema::from_toml_str(SCHEMA, "s").unwrap();
        let enc = Encoder::new(&schema, &StateFitter::new(&schema).finish());
        let (fresh, report, _) = read_encoded_cached(&csv, &enc, BadRowPolicy::Fail, true, None).unwrap();
        // the cache edited, keeping its key: an id past its vocabulary, a sequence length
        // past max_len, a label of 2, a NaN feature — each rebuilt from the CSV
        let key = source_key(&csv, &enc, BadRowPolicy::Fail, true).unwrap();
        let tampered = [
            EncodedData {
                sparse: vec![3, 10],
                ..fresh.clone()
            },
            EncodedData {
                seq_len: vec![3, 0],
                ..fresh.clone()
            },
            EncodedData {
                labels: vec![2.0, 0.0],
                ..fresh.clone()
            },
            EncodedData {
                dense: vec![f32::NAN, 0.0],
                ..fresh.clone()
            },
        ];
        for bad in tampered {
            write_cache(&cache_path(&csv), key, &bad, &report, enc.schema()).unwrap();
            let (read, _, cached) = read_encoded_cached(&csv, &enc, BadRowPolicy::Fail, true, None).unwrap();
            assert!(!cached, "{bad:?} was used");
            assert_eq!(read, fresh);
            // and the cache now holds the source's values again
            assert!(
                read_encoded_cached(&csv, &enc, BadRowPolicy::Fail, true, None)
                    .unwrap()
                    .2
            );
        }
    }

    #[test]
    fn round_trips_exactly_and_rebuilds_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("d.csv");
        std::fs::write(&csv, "y,u,h,x\n1,3,a|b,0.25\n0,9,,-1.5\n").unwrap();
        let schema = Schema::from_toml_str(SCHEMA, "s").unwrap();
        let enc = Encoder::new(&schema, &StateFitter::new(&schema).finish());
        let (fresh, _, cached) = read_encoded_cached(&csv, &enc, BadRowPolicy::Fail, true, None).unwrap();
        assert!(!cached);
        assert!(cache_path(&csv).exists());

        // an Arrow IPC file, one column per field, named after it
        let file = std::fs::File::open(cache_path(&csv)).unwrap();
        let reader = arrow_ipc::reader::FileReader::try_new(file, None).unwrap();
        let names: Vec<_> = reader
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["u", "h", "x", "y"]);
        let batches: Vec<_> = reader.map(Result::unwrap).collect();
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        assert_eq!(b.column(0).as_primitive::<UInt32Type>().values(), &[3, 9]);
        let h = b.column(1).as_list::<i32>();
        assert_eq!((h.value_length(0), h.value_length(1)), (2, 0));
        assert_eq!(b.column(2).as_primitive::<Float32Type>().values(), &[0.25, -1.5]);
        assert_eq!(b.column(3).as_primitive::<Float32Type>().values(), &[1.0, 0.0]);

        let (again, report, cached) =
            read_encoded_cached(&csv, &enc, BadRowPolicy::Fail, true, None).unwrap();
        assert!(cached, "second read comes from the cache");
        assert_eq!(again, fresh);
        assert_eq!(report.rows, 2);

        // the CSV changes (same size, so only content and time tell): rebuilt
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&csv, "y,u,h,x\n1,4,a|b,0.25\n0,9,,-1.5\n").unwrap();
        let (changed, _, cached) = read_encoded_cached(&csv, &enc, BadRowPolicy::Fail, true, None).unwrap();
        assert!(!cached);
        assert_eq!(changed.sparse, vec![4, 9]);

        // an edit late in a large file, same size, modification time put back: rebuilt (the
        // key once read only size, time and the first and last 64 KiB)
        let mut big = String::from("y,u,h,x\n");
        for r in 0..40_000 {
            big += &format!("{},{},a,0.5\n", r % 2, r % 10);
        }
        std::fs::write(&csv, &big).unwrap();
        let (before, _, _) = read_encoded_cached(&csv, &enc, BadRowPolicy::Fail, true, None).unwrap();
        let mtime = std::fs::metadata(&csv).unwrap().modified().unwrap();
        let at = big.len() / 2;
        let at = at + big[at..].find('\n').unwrap() + 3; // the `u` digit of a row mid-file
        let mut bytes = big.into_bytes();
        assert!(bytes[at].is_ascii_digit());
        bytes[at] = if bytes[at] == b'9' { b'8' } else { b'9' };
        std::fs::write(&csv, &bytes).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&csv)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let (after, _, cached) = read_encoded_cached(&csv, &enc, BadRowPolicy::Fail, true, None).unwrap();
        assert!(!cached, "a same-size, same-time edit is seen");
        assert_ne!(after.sparse, before.sparse);
        std::fs::write(&csv, "y,u,h,x\n1,4,a|b,0.25\n0,9,,-1.5\n").unwrap();
        read_encoded_cached(&csv, &enc, BadRowPolicy::Fail, true, None).unwrap();

        // label rules: a cache written without them serves a run with them when its rows follow
        // them; rows that break them are read from the CSV again, which names the line
        let labelled = Schema::from_toml_str(
            &format!("{SCHEMA}[[labels]]\nname = \"z\"\nkind = \"binary\"\n"),
            "s",
        )
        .unwrap();
        let plain = Encoder::new(&labelled, &StateFitter::new(&labelled).finish());
        let rule = mtl_features::LabelRule {
            label: 1,
            requires: 0,
            needed_by: "the test".into(),
        };
        let ruled = plain.clone().with_label_rules(vec![rule]);
        std::fs::write(&csv, "y,z,u,h,x\n1,1,4,a|b,0.25\n0,0,9,,-1.5\n").unwrap();
        assert!(
            !read_encoded_cached(&csv, &plain, BadRowPolicy::Fail, true, None)
                .unwrap()
                .2
        );
        assert!(
            read_encoded_cached(&csv, &ruled, BadRowPolicy::Fail, true, None)
                .unwrap()
                .2
        );
        std::fs::write(&csv, "y,z,u,h,x\n1,1,4,a|b,0.25\n0,1,9,,-1.5\n").unwrap();
        assert!(
            !read_encoded_cached(&csv, &plain, BadRowPolicy::Fail, true, None)
                .unwrap()
                .2
        );
        let err = read_encoded_cached(&csv, &ruled, BadRowPolicy::Fail, true, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("d.csv:3: column `z`"), "{err}");
        std::fs::write(&csv, "y,u,h,x\n1,4,a|b,0.25\n0,9,,-1.5\n").unwrap();

        // the schema changes: rebuilt
        let other =
            Schema::from_toml_str(&SCHEMA.replace("hash_buckets = 7", "hash_buckets = 5"), "s").unwrap();
        let enc2 = Encoder::new(&other, &StateFitter::new(&other).finish());
        let (_, _, cached) = read_encoded_cached(&csv, &enc2, BadRowPolicy::Fail, true, None).unwrap();
        assert!(!cached);
        let (_, _, cached) = read_encoded_cached(&csv, &enc2, BadRowPolicy::Fail, true, None).unwrap();
        assert!(cached);

        // a corrupt cache is ignored and replaced
        std::fs::write(cache_path(&csv), b"MTLCACHE garbage").unwrap();
        let (data, _, cached) = read_encoded_cached(&csv, &enc2, BadRowPolicy::Fail, true, None).unwrap();
        assert!(!cached);
        assert_eq!(data.rows, 2);
    }

    #[test]
    fn round_trips_across_record_batches() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("d.csv");
        let rows = BATCH_ROWS + 1_000;
        let mut text = String::from("y,u,h,x\n");
        for r in 0..rows {
            let h: Vec<String> = (0..r % 3).map(|k| format!("t{}", (r + k) % 11)).collect();
            text += &format!("{},{},{},{}\n", r % 2, r % 10, h.join("|"), r as f32 / 7.0);
        }
        std::fs::write(&csv, text).unwrap();
        let schema = Schema::from_toml_str(SCHEMA, "s").unwrap();
        let enc = Encoder::new(&schema, &StateFitter::new(&schema).finish());
        let (fresh, _, cached) = read_encoded_cached(&csv, &enc, BadRowPolicy::Fail, true, None).unwrap();
        assert!(!cached);
        assert_eq!(fresh.rows, rows);
        let (again, report, cached) =
            read_encoded_cached(&csv, &enc, BadRowPolicy::Fail, true, None).unwrap();
        assert!(cached);
        assert_eq!(report.rows, rows as u64);
        assert_eq!(again, fresh);
    }
}
