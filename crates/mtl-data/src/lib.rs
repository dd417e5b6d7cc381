//! # mtl-data
//!
//! Reads CSV files (header row, one example per line) into [`EncodedData`], streaming:
//! records are parsed one at a time into reused byte buffers and only the encoded ids and
//! numbers are kept. It sits in its own crate so that model crates never link CSV code.
//!
//! A bad row (wrong number of columns, unparsable number, NaN or infinity, id outside its
//! vocabulary, binary label other than 0/1) is an error naming the file, the line and the
//! column, unless the policy is [`BadRowPolicy::Skip`], which counts and reports it.

use std::fmt;
use std::path::{Path, PathBuf};

use mtl_features::expr::Expr;
use mtl_features::schema::ValidSchema;
use mtl_features::state::parse_dense_for_fit;
use mtl_features::{CellError, EncodedData, Encoder, FeatureError, FeatureState, StateFitter};
use thiserror::Error;

pub mod cache;
pub mod infer;
pub mod parquet;

/// Errors of the data layer; every one names the file, and a row error the line and column.
#[derive(Debug, Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{file}: {message}")]
    Io {
        /// The file.
        file: String,
        /// What failed.
        message: String,
    },
    /// The file has no header row at all.
    #[error("{file}: the file is empty (no header row)")]
    NoHeader {
        /// The file.
        file: String,
    },
    /// A column the schema reads appears twice in the header.
    #[error(
        "{file}:1: column `{column}` appears twice in the header (columns {first} and {second}); \
         rename one so that it is clear which to read"
    )]
    DuplicateColumn {
        /// The file.
        file: String,
        /// The column name.
        column: String,
        /// 1-based position of its first appearance.
        first: usize,
        /// 1-based position of its second appearance.
        second: usize,
    },
    /// The schema names a column the file's header lacks.
    #[error("{file}: no column `{column}` in the header (needed by {field}){header}")]
    MissingColumn {
        /// The file.
        file: String,
        /// The missing column.
        column: String,
        /// Which schema entry needs it.
        field: String,
        /// A suggestion and the columns present, as a clause of the message.
        header: String,
    },
    /// A row the policy did not allow.
    #[error("{file}:{line}: column `{column}`: {message}")]
    BadRow {
        /// The file.
        file: String,
        /// 1-based line number.
        line: u64,
        /// The column (or `<row>` for a row-level fault).
        column: String,
        /// What is wrong.
        message: String,
    },
    /// A Parquet list column read by a field that takes one value per row.
    #[error(
        "{file}: column `{column}` holds lists ({kind}), but {field} reads one value per row: \
         only a [[sequence]] field reads a list column (its items are the sequence's ids)"
    )]
    ListColumn {
        /// The file.
        file: String,
        /// The column.
        column: String,
        /// Its Parquet (Arrow) type.
        kind: String,
        /// The schema entry reading it (`sparse[0] \`u\``, `labels[1] \`buy\``, …).
        field: String,
    },
    /// The encoded rows read into memory outgrew it.
    #[error(
        "{file}: not enough memory for the encoded rows: {rows} rows ({gib:.1} GiB) held when \
         the next {more} could not be allocated; stream the training data (`streaming = true` \
         under [data]) or give the process more memory"
    )]
    Memory {
        /// The file being read.
        file: String,
        /// Rows held when the allocation failed.
        rows: usize,
        /// Their size in GiB.
        gib: f64,
        /// The rows that did not fit.
        more: usize,
    },
    /// A schema could not be guessed from the file (no rows, or nothing to train on).
    #[error("{file}: {message}")]
    Infer {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
    /// The file has no data rows (or every row was skipped).
    #[error("{file}: no usable data rows")]
    Empty {
        /// The file.
        file: String,
    },
    /// A feature-layer error.
    #[error(transparent)]
    Feature(#[from] FeatureError),
}

/// What to do with a row that cannot be encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BadRowPolicy {
    /// Stop with an error naming file, line and column (default).
    #[default]
    Fail,
    /// Drop the row, count it and keep the first few messages for the report.
    Skip,
}

impl std::str::FromStr for BadRowPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fail" => Ok(Self::Fail),
            "skip" => Ok(Self::Skip),
            other => Err(format!(
                "unknown bad-row policy `{other}` (expected fail or skip)"
            )),
        }
    }
}

/// What a read saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// The file read.
    pub file: String,
    /// Rows kept.
    pub rows: u64,
    /// Rows skipped under [`BadRowPolicy::Skip`].
    pub skipped: u64,
    /// Ids at or past a declared vocabulary mapped to its `oov = "bucket"` row.
    pub oov: u64,
    /// The first few skip reasons (`file:line: column: message`).
    pub examples: Vec<String>,
}

impl fmt::Display for ReadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} rows", self.file, self.rows)?;
        if self.skipped > 0 {
            write!(f, ", {} skipped", self.skipped)?;
            if let Some(first) = self.examples.first() {
                write!(f, " (first: {first})")?;
            }
        }
        if self.oov > 0 {
            write!(
                f,
                ", {} ids outside their vocabulary mapped to its oov row",
                self.oov
            )?;
        }
        Ok(())
    }
}

const MAX_EXAMPLES: usize = 5;

/// Column positions of every schema entry in one file.
#[derive(Debug, Clone)]
struct ColumnMap {
    /// Every feature's column, in [`encode_features`] order (sparse, sequence, dense).
    features: Vec<usize>,
    sparse: Vec<usize>,
    sequence: Vec<usize>,
    dense: Vec<usize>,
    /// Per label: its column (a derived label's first input: the column its errors name).
    labels: Vec<usize>,
    /// Per label: for a derived label, its expression and the columns it reads.
    label_exprs: Vec<Option<Derived>>,
    /// Every column the labels read (derived labels' inputs included).
    label_inputs: Vec<usize>,
    names: Vec<String>,
    width: usize,
}

/// The columns listed in a missing-column message, at most.
const SHOWN_COLUMNS: usize = 40;

/// The end of a missing-column message: a close match ("did you mean"), then the header.
fn header_hint(column: &str, header: &[&str]) -> String {
    let close = header
        .iter()
        .map(|h| (strsim::levenshtein(&column.to_lowercase(), &h.to_lowercase()), *h))
        .filter(|(d, h)| *d <= (column.chars().count().max(h.chars().count()) / 3).max(1))
        .min_by_key(|(d, _)| *d);
    let mut out = String::new();
    if let Some((_, h)) = close {
        out += &format!("; did you mean `{h}`?");
    }
    if header.iter().all(|h| h.is_empty()) {
        return out + "; the header row is empty";
    }
    let shown: Vec<&str> = header.iter().take(SHOWN_COLUMNS).copied().collect();
    out += &format!("; the header has {} columns: {}", header.len(), shown.join(","));
    if header.len() > SHOWN_COLUMNS {
        out += &format!(",… ({} more)", header.len() - SHOWN_COLUMNS);
    }
    out
}

/// The position of `column` among the header's `names`; missing (with a hint) or named twice
/// is an error. `field` says who needs the column.
fn locate(file: &str, names: &[&str], column: &str, field: String) -> Result<usize, DataError> {
    let mut at = names
        .iter()
        .enumerate()
        .filter(|(_, h)| **h == column)
        .map(|(i, _)| i);
    match (at.next(), at.next()) {
        (Some(first), None) => Ok(first),
        (Some(first), Some(second)) => Err(DataError::DuplicateColumn {
            file: file.to_string(),
            column: column.to_string(),
            first: first + 1,
            second: second + 1,
        }),
        (None, _) => Err(DataError::MissingColumn {
            file: file.to_string(),
            column: column.to_string(),
            field,
            header: header_hint(column, names),
        }),
    }
}

/// A derived label: its expression, and each column it reads with the column's position.
type Derived = (Expr, Vec<(String, usize)>);

fn column_map(
    file: &str,
    header: &[&str],
    schema: &ValidSchema,
    need_labels: bool,
) -> Result<ColumnMap, DataError> {
    let names: Vec<&str> = header.iter().map(|h| h.trim()).collect();
    let find = |column: &str, field: String| locate(file, &names, column, field);
    let s = &schema.schema;
    let sparse: Vec<usize> = s
        .sparse
        .iter()
        .enumerate()
        .map(|(i, f)| find(f.column(), format!("sparse[{i}] `{}`", f.name)))
        .collect::<Result<_, _>>()?;
    let sequence: Vec<usize> = s
        .sequence
        .iter()
        .enumerate()
        .map(|(i, f)| find(f.column(), format!("sequence[{i}] `{}`", f.name)))
        .collect::<Result<_, _>>()?;
    let dense: Vec<usize> = s
        .dense
        .iter()
        .enumerate()
        .map(|(i, f)| find(f.column(), format!("dense[{i}] `{}`", f.name)))
        .collect::<Result<_, _>>()?;
    let (mut labels, mut label_exprs, mut label_inputs) = (Vec::new(), Vec::new(), Vec::new());
    for (i, f) in s.labels.iter().enumerate().filter(|_| need_labels) {
        let field = format!("labels[{i}] `{}`", f.name);
        let Some(src) = &f.expr else {
            let c = find(f.column(), field)?;
            labels.push(c);
            label_exprs.push(None);
            label_inputs.push(c);
            continue;
        };
        let expr = Expr::parse(src).map_err(|message| DataError::BadRow {
            file: file.to_string(),
            line: 1,
            column: field.clone(),
            message,
        })?;
        let inputs: Vec<(String, usize)> = (expr.columns().into_iter())
            .map(|c| Ok((c.to_string(), find(c, format!("{field} (expr = {src:?})"))?)))
            .collect::<Result<_, DataError>>()?;
        labels.push(inputs.first().map_or(usize::MAX, |(_, c)| *c));
        label_inputs.extend(inputs.iter().map(|(_, c)| *c));
        label_exprs.push(Some((expr, inputs)));
    }
    Ok(ColumnMap {
        features: sparse.iter().chain(&sequence).chain(&dense).copied().collect(),
        sparse,
        sequence,
        dense,
        labels,
        label_exprs,
        label_inputs,
        names: names.iter().map(|n| n.to_string()).collect(),
        width: header.len(),
    })
}

/// The error of `data` (read from `file`) failing to grow by `more` rows.
pub fn memory_error(file: &str, data: &EncodedData, more: usize) -> DataError {
    DataError::Memory {
        file: file.to_string(),
        rows: data.rows,
        gib: data.bytes() as f64 / f64::from(1u32 << 30),
        more,
    }
}

/// Refuses a Parquet column a field cannot read: a list column read by a sparse, dense or
/// label field (which would read its items joined as one cell; only a sequence field reads
/// lists), or a column of a type that is not read (nested lists, dates, structs, …).
fn check_column_types(
    file: &str,
    types: &[parquet::ColumnType],
    columns: &ColumnMap,
    schema: &ValidSchema,
) -> Result<(), DataError> {
    let s = &schema.schema;
    let mut readers: Vec<(&str, String, usize)> = Vec::new();
    let mut add = |kind: &'static str, names: Vec<&String>, cols: &[usize]| {
        for (i, (n, &c)) in names.into_iter().zip(cols).enumerate() {
            readers.push((kind, format!("{kind}[{i}] `{n}`"), c));
        }
    };
    add(
        "sparse",
        s.sparse.iter().map(|f| &f.name).collect(),
        &columns.sparse,
    );
    add(
        "sequence",
        s.sequence.iter().map(|f| &f.name).collect(),
        &columns.sequence,
    );
    add("dense", s.dense.iter().map(|f| &f.name).collect(), &columns.dense);
    // a label reads its column, a derived label each of its inputs
    for (i, (&column, derived)) in columns.labels.iter().zip(&columns.label_exprs).enumerate() {
        let field = format!("labels[{i}] `{}`", s.labels[i].name);
        match derived {
            Some((_, inputs)) => readers.extend(inputs.iter().map(|(_, c)| ("labels", field.clone(), *c))),
            None => readers.push(("labels", field, column)),
        }
    }
    for (kind, field, c) in readers {
        let column = || columns.names[c].clone();
        let Some(t) = types.get(c) else { continue };
        match t {
            parquet::ColumnType::List(list) if kind != "sequence" => {
                return Err(DataError::ListColumn {
                    file: file.to_string(),
                    column: column(),
                    kind: list.clone(),
                    field,
                });
            }
            parquet::ColumnType::Unread(t) => {
                return Err(DataError::BadRow {
                    file: file.to_string(),
                    line: 1,
                    column: column(),
                    message: format!(
                        "Parquet type {t} is not read (integers, floats, decimals, strings, booleans and \
                         lists of them are), and {field} reads this column"
                    ),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// How a file ends its lines, read from its first line: the csv reader counts `\n`s, and
/// records a row's line before it skips the `\n` of the previous row's `\r\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineEnds {
    /// `\n`: the reader's line numbers are right.
    Lf,
    /// `\r\n`: every row after the header is reported one line early.
    CrLf,
    /// `\r` alone: the reader never sees a new line; the record count is used.
    Cr,
}

fn line_ends(path: &Path) -> std::io::Result<LineEnds> {
    use std::io::Read;
    let mut head = Vec::with_capacity(1 << 16);
    std::fs::File::open(path)?.take(1 << 16).read_to_end(&mut head)?;
    Ok(match head.iter().position(|b| *b == b'\n' || *b == b'\r') {
        Some(i) if head[i] == b'\r' && head.get(i + 1) == Some(&b'\n') => LineEnds::CrLf,
        Some(i) if head[i] == b'\r' && i + 1 < head.len() => LineEnds::Cr,
        _ => LineEnds::Lf,
    })
}

/// Where a source's records come from.
enum Records {
    /// A CSV reader, and how the file ends its lines (for line numbers).
    Csv(csv::Reader<std::fs::File>, LineEnds),
    /// Columns — a Parquet file, or Arrow batches held in memory: opened at the first read,
    /// once every column to read is known (the header positions, each with the delimiter of
    /// a list cell).
    Columns {
        from: Columnar,
        wanted: Vec<(usize, String)>,
        rows: Option<parquet::ParquetRows>,
    },
}

/// Where a columnar source's record batches come from.
enum Columnar {
    /// A Parquet file, and the rows to pass over when its reader opens (see
    /// [`Source::skip_rows`]).
    File { path: PathBuf, skip: u64 },
    /// Batches held in memory (taken when read).
    Memory(Option<Vec<arrow_array::RecordBatch>>),
}

impl Columnar {
    /// The rows, text records of the header `names`' width, reading the columns `wanted`;
    /// `file` names batches in memory in messages.
    fn open(
        &mut self,
        file: &str,
        names: &[String],
        wanted: &[(usize, String)],
    ) -> Result<parquet::ParquetRows, DataError> {
        match self {
            Columnar::File { path, skip } => parquet::ParquetRows::open_at(path, names, wanted, *skip),
            Columnar::Memory(batches) => Ok(parquet::ParquetRows::from_batches(
                file,
                batches.take().unwrap_or_default(),
                names,
                wanted,
            )),
        }
    }
}

/// Data to read: a file (CSV or Parquet), or a table of Arrow record batches held in memory
/// (a pandas or PyArrow table handed over from Python) read as a Parquet file's are.
#[derive(Debug, Clone)]
pub enum Input {
    /// A CSV or Parquet file.
    File(PathBuf),
    /// Record batches of one Arrow schema; `name` stands for the file in messages.
    Arrow {
        /// What messages call the table (`<DataFrame>`).
        name: String,
        /// The batches' schema (a table of no batches still has its columns).
        schema: arrow_schema::SchemaRef,
        /// The rows, in order.
        batches: Vec<arrow_array::RecordBatch>,
    },
}

/// A data file (CSV, or Parquet: see [`parquet`]) opened against a schema: header checked, rows
/// streamed as text records, so that both formats share one encoder, fitter and set of errors.
pub struct Source {
    file: String,
    records: Records,
    columns: ColumnMap,
    record: csv::ByteRecord,
    /// The values of the file's partition columns ([`partitions`]) the file itself lacks,
    /// appended to every record after its own cells.
    extra: Vec<String>,
}

/// The hive-style partition columns of a data file's path (`…/date=2024-01-01/country=FR/
/// part-0.parquet` gives `date` and `country`), outermost first: folders named `key=value`,
/// whose value every row of the file has in column `key`.
pub fn partitions(path: &Path) -> Vec<(String, String)> {
    let Some(dir) = path.parent() else {
        return Vec::new();
    };
    dir.components()
        .filter_map(|c| {
            let part = c.as_os_str().to_str()?;
            let (key, value) = part.split_once('=')?;
            (!key.is_empty()).then(|| (key.to_string(), value.to_string()))
        })
        .collect()
}

/// `names` (a file's own header) and the partition columns of `path` it lacks: the header
/// the schema sees, and the values to append to each record.
pub(crate) fn with_partitions(path: &Path, mut names: Vec<String>) -> (Vec<String>, Vec<String>) {
    let mut extra = Vec::new();
    for (key, value) in partitions(path) {
        if !names.contains(&key) {
            names.push(key);
            extra.push(value);
        }
    }
    (names, extra)
}

/// What to keep of each row that [`Source::read_chunk`] keeps, besides its encoding.
#[derive(Debug, Default)]
pub struct RowTags {
    /// The column copied as text (an id column), if any.
    pub column: Option<usize>,
    /// Its text per kept row.
    pub ids: Vec<String>,
    /// Whether to keep line numbers.
    pub keep_lines: bool,
    /// The input line of each kept row (as an editor counts it), when `keep_lines`.
    pub lines: Vec<u64>,
}

/// One row's cells, as the encoder and fitter see them.
struct Row<'a> {
    record: &'a csv::ByteRecord,
}

impl Row<'_> {
    fn cell(&self, i: usize) -> Result<&str, CellError> {
        std::str::from_utf8(self.record.get(i).unwrap_or(b""))
            .map_err(|_| CellError::NotANumber("<invalid UTF-8>".into()))
    }
}

/// A CSV reader over `path` (rows may differ in width: the encoder names such a row) and its
/// header; an empty header is an error naming the file.
fn open_csv(path: &Path) -> Result<(csv::Reader<std::fs::File>, csv::StringRecord), DataError> {
    let file = path.display().to_string();
    let io = |e: &dyn fmt::Display| DataError::Io {
        file: file.clone(),
        message: e.to_string(),
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(true)
        .from_path(path)
        .map_err(|e| io(&e))?;
    let header = reader.headers().map_err(|e| io(&e))?.clone();
    if header.is_empty() {
        return Err(DataError::NoHeader { file });
    }
    Ok((reader, header))
}

/// The column names of a data file's header, in order (for expanding schema patterns).
/// The header's columns come first, then the path's partition columns ([`partitions`]) it
/// lacks.
pub fn read_header(path: impl AsRef<Path>) -> Result<Vec<String>, DataError> {
    let path = path.as_ref();
    let names = if parquet::is_parquet(path) {
        parquet::header(path)?
    } else {
        let (_, header) = open_csv(path)?;
        header.iter().map(str::to_string).collect()
    };
    Ok(with_partitions(path, names).0)
}

/// The header positions below `own` (the file's own columns, not its partition columns)
/// that the schema reads, each with the delimiter that joins its list cells (a sequence
/// field's own, else `|`).
fn wanted_columns(columns: &ColumnMap, schema: &ValidSchema, own: usize) -> Vec<(usize, String)> {
    let mut wanted: Vec<(usize, String)> = columns
        .features
        .iter()
        .chain(&columns.label_inputs)
        .filter(|&&c| c < own)
        .map(|&c| (c, "|".to_string()))
        .collect();
    for (s, &c) in schema.schema.sequence.iter().zip(&columns.sequence) {
        if let Some(w) = wanted.iter_mut().find(|(i, _)| *i == c) {
            w.1 = s.delimiter.clone();
        }
    }
    wanted
}

impl Source {
    /// Opens `input` (a file, or Arrow batches in memory) and maps the schema's columns;
    /// labels are required when `need_labels`.
    pub fn open_input(input: &Input, schema: &ValidSchema, need_labels: bool) -> Result<Self, DataError> {
        let (name, arrow, batches) = match input {
            Input::File(path) => return Self::open(path, schema, need_labels),
            Input::Arrow {
                name,
                schema,
                batches,
            } => (name, schema, batches),
        };
        let names: Vec<&str> = arrow.fields().iter().map(|f| f.name().as_str()).collect();
        let columns = column_map(name, &names, schema, need_labels)?;
        check_column_types(name, &parquet::arrow_column_types(arrow), &columns, schema)?;
        let wanted = wanted_columns(&columns, schema, names.len());
        Ok(Self {
            file: name.clone(),
            records: Records::Columns {
                from: Columnar::Memory(Some(batches.clone())),
                wanted,
                rows: None,
            },
            columns,
            record: csv::ByteRecord::new(),
            extra: Vec::new(),
        })
    }

    /// Opens `path` and maps the schema's columns; labels are required when `need_labels`.
    pub fn open(path: impl AsRef<Path>, schema: &ValidSchema, need_labels: bool) -> Result<Self, DataError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        if parquet::is_parquet(path) {
            let names = parquet::header(path)?;
            let own = names.len();
            let (names, extra) = with_partitions(path, names);
            let shown: Vec<&str> = names.iter().map(String::as_str).collect();
            let columns = column_map(&file, &shown, schema, need_labels)?;
            check_column_types(&file, &parquet::column_types(path)?, &columns, schema)?;
            let wanted = wanted_columns(&columns, schema, own);
            return Ok(Self {
                file,
                records: Records::Columns {
                    from: Columnar::File {
                        path: path.to_path_buf(),
                        skip: 0,
                    },
                    wanted,
                    rows: None,
                },
                columns,
                record: csv::ByteRecord::new(),
                extra,
            });
        }
        let (reader, header) = open_csv(path)?;
        let line_ends = line_ends(path).map_err(|e| DataError::Io {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let (names, extra) = with_partitions(path, header.iter().map(str::to_string).collect());
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let columns = column_map(&file, &names, schema, need_labels)?;
        Ok(Self {
            file,
            records: Records::Csv(reader, line_ends),
            columns,
            record: csv::ByteRecord::new(),
            extra,
        })
    }

    /// Passes over the next `n` good rows without keeping them (rows another rank reads); the
    /// rows passed (fewer at the end of the file). Under the `fail` policy a row is a record:
    /// CSV records are parsed, not encoded, and a Parquet file not yet read skips whole row
    /// groups unread. Under `skip` each row is encoded, to tell a good row from a bad one.
    pub fn skip_rows(
        &mut self,
        n: usize,
        encoder: &Encoder,
        policy: BadRowPolicy,
    ) -> Result<usize, DataError> {
        if policy == BadRowPolicy::Skip {
            let mut passed = 0;
            let mut report = ReadReport::default();
            while passed < n {
                let mut scratch = empty_encoded(encoder.schema());
                let want = (n - passed).min(1 << 16);
                let got = self.read_chunk(encoder, policy, want, &mut scratch, &mut report, None)?;
                if got == 0 {
                    break;
                }
                passed += got;
            }
            return Ok(passed);
        }
        if let Records::Columns {
            from: Columnar::File { path, skip },
            rows: None,
            ..
        } = &mut self.records
        {
            let left = parquet::row_count(path)?.saturating_sub(*skip);
            let passed = (n as u64).min(left);
            *skip += passed;
            return Ok(passed as usize);
        }
        let mut passed = 0;
        while passed < n && self.next_record()?.is_some() {
            passed += 1;
        }
        Ok(passed)
    }

    /// The file name used in messages.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Position of a named column in the header (one that is missing, or named twice, is an
    /// error naming the file and `field`, the one who asked for it).
    pub fn column_index(&mut self, name: &str, field: &str) -> Result<usize, DataError> {
        let names: Vec<&str> = self.columns.names.iter().map(String::as_str).collect();
        let at = locate(&self.file, &names, name, field.to_string())?;
        let own = self.columns.names.len() - self.extra.len();
        if let Records::Columns { wanted, .. } = &mut self.records
            && at < own
            && !wanted.iter().any(|(i, _)| *i == at)
        {
            wanted.push((at, "|".into()));
        }
        Ok(at)
    }

    /// Advances to the next record, its partition values appended; `Ok(None)` at the end.
    /// Row-level faults carry the line (CSV, as an editor counts it) or the data row
    /// (Parquet, from 1).
    fn next_record(&mut self) -> Result<Option<u64>, DataError> {
        let next = self.next_own_record()?;
        if next.is_some() {
            for value in &self.extra {
                self.record.push_field(value.as_bytes());
            }
        }
        Ok(next)
    }

    /// [`Source::next_record`] without the partition values.
    fn next_own_record(&mut self) -> Result<Option<u64>, DataError> {
        let (reader, line_ends) = match &mut self.records {
            Records::Csv(reader, line_ends) => (reader, *line_ends),
            Records::Columns { from, wanted, rows } => {
                let own = &self.columns.names[..self.columns.names.len() - self.extra.len()];
                let rows = match rows {
                    Some(rows) => rows,
                    None => rows.insert(from.open(&self.file, own, wanted)?),
                };
                return rows.next_into(&mut self.record);
            }
        };
        // the line where a record at `pos` starts
        let line_of = |pos: Option<&csv::Position>| {
            let Some(pos) = pos else { return 0 };
            match line_ends {
                LineEnds::Lf => pos.line(),
                LineEnds::CrLf => pos.line() + 1,
                LineEnds::Cr => pos.record() + 1,
            }
        };
        match reader.read_byte_record(&mut self.record) {
            Ok(false) => Ok(None),
            Ok(true) => Ok(Some(line_of(self.record.position()))),
            Err(e) => Err(DataError::BadRow {
                file: self.file.clone(),
                line: line_of(e.position()),
                column: "<row>".into(),
                message: e.to_string(),
            }),
        }
    }

    fn bad(&self, line: u64, column: usize, e: impl fmt::Display) -> DataError {
        DataError::BadRow {
            file: self.file.clone(),
            line,
            column: self
                .columns
                .names
                .get(column)
                .cloned()
                .unwrap_or_else(|| format!("#{column}")),
            message: e.to_string(),
        }
    }

    fn check_width(&self, line: u64) -> Result<(), DataError> {
        if self.record.len() != self.columns.width {
            return Err(DataError::BadRow {
                file: self.file.clone(),
                line,
                column: "<row>".into(),
                message: format!(
                    "{} columns, the header has {}",
                    self.record.len(),
                    self.columns.width
                ),
            });
        }
        Ok(())
    }

    /// Encodes the next up to `max_rows` good rows into `out`; returns how many were read.
    /// Extra output columns (`passthrough`) are appended per kept row as raw text.
    pub fn read_chunk(
        &mut self,
        encoder: &Encoder,
        policy: BadRowPolicy,
        max_rows: usize,
        out: &mut EncodedData,
        report: &mut ReadReport,
        mut tags: Option<&mut RowTags>,
    ) -> Result<usize, DataError> {
        let schema = encoder.schema();
        let n_seq = schema.n_sequence();
        let oov_before = encoder.oov_count();
        let mut kept = 0;
        while kept < max_rows {
            let line = match self.next_record() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => match policy {
                    BadRowPolicy::Fail => return Err(e),
                    BadRowPolicy::Skip => {
                        note_skip(report, &e);
                        continue;
                    }
                },
            };
            if out.spare_rows() == 0 {
                let more = out.rows.max(1024);
                out.try_reserve_rows(more)
                    .map_err(|_| memory_error(&self.file, out, more))?;
            }
            let start = (
                out.sparse.len(),
                out.sequence.len(),
                out.seq_len.len(),
                out.dense.len(),
                out.labels.len(),
            );
            match self.encode_row(encoder, line, n_seq, out) {
                Ok(()) => {
                    kept += 1;
                    out.rows += 1;
                    if let Some(tags) = tags.as_mut() {
                        if let Some(col) = tags.column {
                            let text = self.record.get(col).unwrap_or(b"");
                            tags.ids.push(String::from_utf8_lossy(text).into_owned());
                        }
                        if tags.keep_lines {
                            tags.lines.push(line);
                        }
                    }
                }
                Err(e) => {
                    out.sparse.truncate(start.0);
                    out.sequence.truncate(start.1);
                    out.seq_len.truncate(start.2);
                    out.dense.truncate(start.3);
                    out.labels.truncate(start.4);
                    match policy {
                        BadRowPolicy::Fail => return Err(e),
                        BadRowPolicy::Skip => note_skip(report, &e),
                    }
                }
            }
        }
        report.rows += kept as u64;
        report.oov += encoder.oov_count() - oov_before;
        Ok(kept)
    }

    fn encode_row(
        &self,
        encoder: &Encoder,
        line: u64,
        n_seq: usize,
        out: &mut EncodedData,
    ) -> Result<(), DataError> {
        self.check_width(line)?;
        let row = Row { record: &self.record };
        let columns = &self.columns.features;
        encode_features(encoder, |f| row.cell(columns[f]), out)
            .map_err(|(f, e)| self.bad(line, columns[f], e))?;
        debug_assert_eq!(out.seq_len.len() % n_seq.max(1), 0);
        for (l, &col) in self.columns.labels.iter().enumerate() {
            let v = match &self.columns.label_exprs[l] {
                Some((expr, inputs)) => {
                    let cell = |name: &str| {
                        let c = inputs.iter().find(|(n, _)| n == name)?.1;
                        row.cell(c).ok()
                    };
                    let derived = |e: &dyn fmt::Display| {
                        let label = &encoder.schema().schema.labels[l];
                        let src = label.expr.as_deref().unwrap_or_default();
                        self.bad(line, col, format!("label `{}` = {src:?}: {e}", label.name))
                    };
                    let x = expr.eval(&cell).map_err(|e| derived(&e))?;
                    encoder.encode_label(l, &x.to_string()).map_err(|e| derived(&e))?
                }
                None => row
                    .cell(col)
                    .and_then(|t| encoder.encode_label(l, t))
                    .map_err(|e| self.bad(line, col, e))?,
            };
            out.labels.push(v);
        }
        if self.columns.labels.is_empty() {
            out.labels.extend(std::iter::repeat_n(0.0, out.n_labels));
        } else {
            let row_labels = &out.labels[out.labels.len() - out.n_labels..];
            encoder
                .check_label_rules(row_labels)
                .map_err(|(label, message)| self.bad(line, self.columns.labels[label], message))?;
        }
        Ok(())
    }

    /// Feeds every good row to `fitter`; bad rows follow `policy`.
    fn fit_into(
        &mut self,
        schema: &ValidSchema,
        fitter: &mut StateFitter,
        policy: BadRowPolicy,
        report: &mut ReadReport,
    ) -> Result<(), DataError> {
        let n_sparse = schema.n_sparse();
        loop {
            let line = match self.next_record() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) if policy == BadRowPolicy::Skip => {
                    note_skip(report, &e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let result = (|| {
                self.check_width(line)?;
                let row = Row { record: &self.record };
                let mut dense = Vec::with_capacity(self.columns.dense.len());
                for (d, &col) in self.columns.dense.iter().enumerate() {
                    let v = row
                        .cell(col)
                        .and_then(parse_dense_for_fit)
                        .map_err(|e| self.bad(line, col, e))?;
                    dense.push((d, v));
                }
                Ok::<_, DataError>(dense)
            })();
            let dense = match result {
                Ok(d) => d,
                Err(e) if policy == BadRowPolicy::Skip => {
                    note_skip(report, &e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            for (d, v) in dense {
                if let Some(v) = v {
                    fitter.observe_dense(d, v);
                }
            }
            let row = Row { record: &self.record };
            for (f, &col) in self.columns.sparse.iter().enumerate() {
                if fitter.wants_ids(f) {
                    let text = row.cell(col).map_err(|e| self.bad(line, col, e))?;
                    fitter.observe_id(f, text);
                }
            }
            for (s, &col) in self.columns.sequence.iter().enumerate() {
                let field = n_sparse + s;
                if fitter.wants_ids(field) {
                    let spec = &schema.schema.sequence[s];
                    let text = row.cell(col).map_err(|e| self.bad(line, col, e))?;
                    for part in text
                        .split(spec.delimiter.as_str())
                        .filter(|p| !p.trim().is_empty())
                        .take(spec.max_len)
                    {
                        fitter.observe_id(field, part);
                    }
                }
            }
            report.rows += 1;
        }
        Ok(())
    }
}

/// Encodes the feature cells of one row into `out` (labels are the caller's): `cell(f)` gives
/// feature `f`'s text, features counted in schema order — sparse fields, then sequence fields
/// (delimiter-separated ids, empty parts skipped, cut at `max_len`), then dense fields. The CSV
/// reader and the server encode through this one function, so a value means the same in both.
/// On an error, the feature's index and the cause; `out` may then hold part of the row.
pub fn encode_features<'a>(
    encoder: &Encoder,
    cell: impl Fn(usize) -> Result<&'a str, CellError>,
    out: &mut EncodedData,
) -> Result<(), (usize, CellError)> {
    let schema = encoder.schema();
    let n_sparse = schema.n_sparse();
    for f in 0..n_sparse {
        let id = cell(f)
            .and_then(|t| encoder.encode_id(f, t))
            .map_err(|e| (f, e))?;
        out.sparse.push(id);
    }
    for (s, spec) in schema.schema.sequence.iter().enumerate() {
        let f = n_sparse + s;
        let text = cell(f).map_err(|e| (f, e))?;
        let mut len = 0u32;
        for part in text
            .split(spec.delimiter.as_str())
            .filter(|p| !p.trim().is_empty())
            .take(spec.max_len)
        {
            out.sequence.push(encoder.encode_id(f, part).map_err(|e| (f, e))?);
            len += 1;
        }
        out.sequence
            .extend(std::iter::repeat_n(0, spec.max_len - len as usize));
        out.seq_len.push(len);
    }
    let first_dense = n_sparse + schema.n_sequence();
    for d in 0..schema.n_dense() {
        let f = first_dense + d;
        let v = cell(f)
            .and_then(|t| encoder.encode_dense(d, t))
            .map_err(|e| (f, e))?;
        out.dense.push(v);
    }
    Ok(())
}

fn note_skip(report: &mut ReadReport, e: &DataError) {
    report.skipped += 1;
    if report.examples.len() < MAX_EXAMPLES {
        report.examples.push(e.to_string());
    }
}

/// Fits the feature state on the training file(s): vocabularies of `fit` fields and dense
/// statistics. A schema with nothing to fit still gets a state; its files are only opened
/// and their headers checked (the rows are left to the encoding pass, which reports any bad
/// one), so that a file is parsed once.
pub fn fit_state(
    paths: &[PathBuf],
    schema: &ValidSchema,
    policy: BadRowPolicy,
) -> Result<FeatureState, DataError> {
    let mut fitter = StateFitter::new(schema);
    for path in paths {
        let mut source = Source::open(path, schema, true)?;
        if !fitter.needs_rows() {
            continue;
        }
        let mut report = ReadReport {
            file: source.file().to_string(),
            ..Default::default()
        };
        source.fit_into(schema, &mut fitter, policy, &mut report)?;
        if report.rows == 0 {
            return Err(DataError::Empty { file: report.file });
        }
    }
    Ok(fitter.finish())
}

/// An empty [`EncodedData`] with the widths of `schema`.
pub fn empty_encoded(schema: &ValidSchema) -> EncodedData {
    EncodedData::empty(
        schema.n_sparse(),
        schema.schema.sequence.iter().map(|s| s.max_len).collect(),
        schema.n_dense(),
        schema.n_labels(),
    )
}

/// Reads and encodes a whole file. Labels are required when `need_labels`; otherwise they are
/// read if present (zeros if not). `id_column`, when given, is passed through as text.
pub fn read_encoded(
    path: impl AsRef<Path>,
    encoder: &Encoder,
    policy: BadRowPolicy,
    need_labels: bool,
    id_column: Option<&str>,
) -> Result<(EncodedData, ReadReport, Vec<String>), DataError> {
    let (data, report, tags) = read_tagged(path, encoder, policy, need_labels, id_column, false)?;
    Ok((data, report, tags.ids))
}

/// Like [`read_encoded`], also keeping each kept row's input line when `keep_lines`, so that
/// output rows can be matched to input rows when bad rows are skipped.
pub fn read_tagged(
    path: impl AsRef<Path>,
    encoder: &Encoder,
    policy: BadRowPolicy,
    need_labels: bool,
    id_column: Option<&str>,
    keep_lines: bool,
) -> Result<(EncodedData, ReadReport, RowTags), DataError> {
    let column = id_column.map(|name| (name, "--id-column"));
    read_tagged_by(path, encoder, policy, need_labels, column, keep_lines)
}

/// Like [`read_tagged`], the kept column given with the option that asks for it (named in
/// the error when the file lacks the column), e.g. `("user_id", "--group-by")`.
pub fn read_tagged_by(
    path: impl AsRef<Path>,
    encoder: &Encoder,
    policy: BadRowPolicy,
    need_labels: bool,
    tag_column: Option<(&str, &str)>,
    keep_lines: bool,
) -> Result<(EncodedData, ReadReport, RowTags), DataError> {
    let input = Input::File(path.as_ref().to_path_buf());
    read_input(&input, encoder, policy, need_labels, tag_column, keep_lines)
}

/// [`read_tagged_by`] for any [`Input`]: a file, or Arrow batches in memory.
pub fn read_input(
    input: &Input,
    encoder: &Encoder,
    policy: BadRowPolicy,
    need_labels: bool,
    tag_column: Option<(&str, &str)>,
    keep_lines: bool,
) -> Result<(EncodedData, ReadReport, RowTags), DataError> {
    let schema = encoder.schema();
    let mut source = match Source::open_input(input, schema, true) {
        Err(DataError::MissingColumn { .. }) if !need_labels => Source::open_input(input, schema, false)?,
        other => other?,
    };
    let column = match tag_column {
        Some((name, asker)) => Some(source.column_index(name, asker)?),
        None => None,
    };
    let mut tags = RowTags {
        column,
        keep_lines,
        ..RowTags::default()
    };
    let mut out = empty_encoded(schema);
    let mut report = ReadReport {
        file: source.file().to_string(),
        ..Default::default()
    };
    source.read_chunk(
        encoder,
        policy,
        usize::MAX,
        &mut out,
        &mut report,
        Some(&mut tags),
    )?;
    if out.rows == 0 {
        return Err(DataError::Empty { file: report.file });
    }
    Ok((out, report, tags))
}

#[cfg(test)]
mod tests;
