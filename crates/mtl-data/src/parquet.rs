//! Parquet input: the columns a schema reads are projected, row groups are streamed in record
//! batches, and each batch's cells are turned into the same text cells a CSV row gives, so
//! that one encoder, one fitter and one set of errors serve both formats.
//!
//! Column types: integers (any width, signed or not), floats, decimals (as their exact text),
//! strings (plain, large, view or
//! dictionary-encoded), booleans (read as 1/0, for labels) and lists of those (a sequence
//! field's ids, joined by the field's delimiter). Nulls are empty cells (a dense field's
//! `default`, or the encoder's error naming the row and column). Row numbers in errors count
//! data rows from 1.

use std::fmt::Write as _;
use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Decimal32Type, Decimal64Type, Decimal128Type, Decimal256Type, DecimalType, Float32Type, Float64Type,
    Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::DataError;

/// Rows per record batch read.
const BATCH_ROWS: usize = 8192;

/// Whether `path` is a Parquet file: its extension, or else its first four bytes (`PAR1`).
pub fn is_parquet(path: &Path) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("parquet") || ext.eq_ignore_ascii_case("parq") => true,
        Some(ext) if ext.eq_ignore_ascii_case("csv") || ext.eq_ignore_ascii_case("tsv") => false,
        _ => {
            use std::io::Read;
            let mut magic = [0u8; 4];
            File::open(path)
                .and_then(|mut f| f.read_exact(&mut magic))
                .is_ok_and(|()| &magic == b"PAR1")
        }
    }
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Io {
        file: path.display().to_string(),
        message: e.to_string(),
    }
}

/// A reader builder over `path`: its footer read (schema, row groups), no data yet.
fn footer(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, DataError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| io_error(path, e))
}

/// The top-level column names of a Parquet file.
pub fn header(path: &Path) -> Result<Vec<String>, DataError> {
    let builder = footer(path)?;
    Ok(builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect())
}

/// What a Parquet column holds, as the reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// One value per row of a type that is read.
    Value,
    /// A list per row (its type, as `list<Int64>`), of items of a type that is read.
    List(String),
    /// A type that is not read (dates, structs, …), named.
    Unread(String),
}

/// Whether cells of type `t` are read (see the module's list).
fn readable(t: &DataType) -> bool {
    match t {
        DataType::Dictionary(_, value) => readable(value),
        t => {
            t.is_integer()
                || t.is_floating()
                || t.is_decimal()
                || t.is_null()
                || matches!(
                    t,
                    DataType::Boolean | DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                )
        }
    }
}

/// What each top-level column of a Parquet file holds, from its footer.
pub fn column_types(path: &Path) -> Result<Vec<ColumnType>, DataError> {
    let builder = footer(path)?;
    Ok(builder
        .schema()
        .fields()
        .iter()
        .map(|f| column_type(f.data_type()))
        .collect())
}

/// What each top-level column of an Arrow schema holds (a table handed over in memory).
pub fn arrow_column_types(schema: &arrow_schema::Schema) -> Vec<ColumnType> {
    schema
        .fields()
        .iter()
        .map(|f| column_type(f.data_type()))
        .collect()
}

/// What a column of Arrow type `t` holds, as the reader sees it.
fn column_type(t: &DataType) -> ColumnType {
    match t {
        DataType::List(item) | DataType::LargeList(item) if readable(item.data_type()) => {
            ColumnType::List(format!("list<{}>", item.data_type()))
        }
        t if readable(t) => ColumnType::Value,
        t => ColumnType::Unread(t.to_string()),
    }
}

/// The rows a Parquet file holds, from its footer (no data is read).
pub fn row_count(path: &Path) -> Result<u64, DataError> {
    let builder = footer(path)?;
    Ok(builder.metadata().file_metadata().num_rows().max(0) as u64)
}

/// One column of the current batch as text cells.
#[derive(Default)]
struct Cells {
    bytes: Vec<u8>,
    /// End of each row's cell in `bytes`.
    ends: Vec<usize>,
}

impl Cells {
    fn cell(&self, row: usize) -> &[u8] {
        let start = if row == 0 { 0 } else { self.ends[row - 1] };
        &self.bytes[start..self.ends[row]]
    }
}

/// Record batches in the order they are read.
type Batches = Box<dyn Iterator<Item = Result<RecordBatch, arrow_schema::ArrowError>> + Send>;

/// The rows of a Parquet file, or of Arrow record batches held in memory (a table handed
/// over from Python), batch by batch, as text records of the full header's width (columns
/// the schema does not read are empty).
pub struct ParquetRows {
    reader: Batches,
    /// For batches in memory, the columns to take of each (the file's reader projects itself).
    project: Option<Vec<usize>>,
    path: String,
    /// For each projected column (in the batch's order): its position in the header and the
    /// delimiter that joins a list cell.
    projected: Vec<(usize, String)>,
    width: usize,
    cells: Vec<Cells>,
    /// Rows in the current batch, and the next one to hand out.
    batch_rows: usize,
    next: usize,
    /// Data rows handed out so far.
    row: u64,
}

impl ParquetRows {
    /// Opens `path`, reading only the header positions `wanted` (each with the delimiter for a
    /// list column); `names` is the header [`header`] returned.
    pub fn open(path: &Path, names: &[String], wanted: &[(usize, String)]) -> Result<Self, DataError> {
        Self::open_at(path, names, wanted, 0)
    }

    /// [`ParquetRows::open`] from data row `skip` (0-based): the row groups before it are not
    /// read, and rows are still numbered from the file's start.
    pub fn open_at(
        path: &Path,
        names: &[String],
        wanted: &[(usize, String)],
        skip: u64,
    ) -> Result<Self, DataError> {
        let mut builder = footer(path)?;
        if skip > 0 {
            let mut before = 0u64;
            let mut groups = Vec::new();
            for (g, meta) in builder.metadata().row_groups().iter().enumerate() {
                let rows = meta.num_rows().max(0) as u64;
                if before + rows <= skip && groups.is_empty() {
                    before += rows;
                } else {
                    groups.push(g);
                }
            }
            builder = builder
                .with_row_groups(groups)
                .with_offset((skip - before) as usize);
        }
        let projected = projection(wanted);
        let roots = projected.iter().map(|(i, _)| *i);
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader: ParquetRecordBatchReader = builder
            .with_projection(mask)
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| io_error(path, e))?;
        Ok(Self {
            reader: Box::new(reader),
            project: None,
            path: path.display().to_string(),
            projected,
            width: names.len(),
            cells: Vec::new(),
            batch_rows: 0,
            next: 0,
            row: skip,
        })
    }

    /// Rows of record `batches` held in memory, all of one Arrow schema whose top-level
    /// columns are `names`; `name` stands for the file in messages. Only the header positions
    /// `wanted` are read (each with the delimiter for a list column), as [`ParquetRows::open`].
    pub fn from_batches(
        name: &str,
        batches: Vec<RecordBatch>,
        names: &[String],
        wanted: &[(usize, String)],
    ) -> Self {
        let projected = projection(wanted);
        Self {
            reader: Box::new(batches.into_iter().map(Ok)),
            project: Some(projected.iter().map(|(i, _)| *i).collect()),
            path: name.to_string(),
            projected,
            width: names.len(),
            cells: Vec::new(),
            batch_rows: 0,
            next: 0,
            row: 0,
        }
    }

    /// Fills `record` with the next row's cells; its 1-based row number, or `None` at the end.
    pub fn next_into(&mut self, record: &mut csv::ByteRecord) -> Result<Option<u64>, DataError> {
        while self.next == self.batch_rows {
            match self.reader.next() {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(DataError::BadRow {
                        file: self.path.clone(),
                        line: self.row + 1,
                        column: "<row>".into(),
                        message: format!("reading the Parquet data: {e}"),
                    });
                }
                Some(Ok(batch)) => {
                    let batch = match &self.project {
                        Some(columns) => batch.project(columns).map_err(|e| DataError::BadRow {
                            file: self.path.clone(),
                            line: self.row + 1,
                            column: "<row>".into(),
                            message: format!("reading the Arrow data: {e}"),
                        })?,
                        None => batch,
                    };
                    self.load(&batch)?
                }
            }
        }
        record.clear();
        let mut p = 0;
        for i in 0..self.width {
            if p < self.projected.len() && self.projected[p].0 == i {
                record.push_field(self.cells[p].cell(self.next));
                p += 1;
            } else {
                record.push_field(b"");
            }
        }
        self.next += 1;
        self.row += 1;
        Ok(Some(self.row))
    }

    /// Turns a batch's columns into text cells.
    fn load(&mut self, batch: &RecordBatch) -> Result<(), DataError> {
        self.cells.resize_with(batch.num_columns(), Cells::default);
        for (c, column) in batch.columns().iter().enumerate() {
            let (header_index, delimiter) = &self.projected[c];
            let cells = &mut self.cells[c];
            cells.bytes.clear();
            cells.ends.clear();
            // a dictionary column's keys are normalised once per batch, its values formatted
            let dictionary = column
                .as_any_dictionary_opt()
                .map(|d| (d.normalized_keys(), d.values()));
            for r in 0..column.len() {
                let written = match &dictionary {
                    Some(_) if column.is_null(r) => Ok(()),
                    Some((keys, values)) => write_cell(values, keys[r], delimiter, &mut cells.bytes),
                    None => write_cell(column, r, delimiter, &mut cells.bytes),
                };
                written.map_err(|message| DataError::BadRow {
                    file: self.path.clone(),
                    line: self.row + 1 + r as u64,
                    column: batch.schema().field(c).name().clone(),
                    message: format!("{message} (column {} of the file)", header_index + 1),
                })?;
                cells.ends.push(cells.bytes.len());
            }
        }
        self.batch_rows = batch.num_rows();
        self.next = 0;
        Ok(())
    }
}

/// The header positions of `wanted`, in order, each once with its delimiter (the first
/// given for it): the columns a batch holds, in the batch's order.
fn projection(wanted: &[(usize, String)]) -> Vec<(usize, String)> {
    let mut projected = wanted.to_vec();
    projected.sort_by_key(|(i, _)| *i);
    projected.dedup_by_key(|(i, _)| *i);
    projected
}

/// A `Vec<u8>` as a `fmt::Write` target.
struct Text<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Text<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Appends the text of `array[row]` to `out` (nothing for a null).
fn write_cell(array: &ArrayRef, row: usize, delimiter: &str, out: &mut Vec<u8>) -> Result<(), String> {
    if array.is_null(row) {
        return Ok(());
    }
    macro_rules! number {
        ($t:ty) => {{
            out.extend_from_slice(
                itoa::Buffer::new()
                    .format(array.as_primitive::<$t>().value(row))
                    .as_bytes(),
            );
        }};
    }
    // shortest round-trip text, as `Display` writes it but faster (a finite float only: the
    // encoder names NaN and infinities as errors, and so must their text)
    macro_rules! float {
        ($t:ty) => {{
            let v = array.as_primitive::<$t>().value(row);
            if v.is_finite() {
                out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
            } else {
                let _ = write!(Text(out), "{v}");
            }
        }};
    }
    // a decimal as its exact text (`12.50` for 1250 at scale 2), which the encoder reads as a
    // number or an id like any CSV cell
    macro_rules! decimal {
        ($t:ty, $scale:expr) => {{
            let v = array.as_primitive::<$t>().value(row);
            out.extend_from_slice(<$t as DecimalType>::format_decimal(v, 0, $scale).as_bytes());
        }};
    }
    match array.data_type() {
        DataType::Int8 => number!(Int8Type),
        DataType::Int16 => number!(Int16Type),
        DataType::Int32 => number!(Int32Type),
        DataType::Int64 => number!(Int64Type),
        DataType::UInt8 => number!(UInt8Type),
        DataType::UInt16 => number!(UInt16Type),
        DataType::UInt32 => number!(UInt32Type),
        DataType::UInt64 => number!(UInt64Type),
        DataType::Float32 => float!(Float32Type),
        DataType::Float64 => float!(Float64Type),
        DataType::Decimal32(_, scale) => decimal!(Decimal32Type, *scale),
        DataType::Decimal64(_, scale) => decimal!(Decimal64Type, *scale),
        DataType::Decimal128(_, scale) => decimal!(Decimal128Type, *scale),
        DataType::Decimal256(_, scale) => decimal!(Decimal256Type, *scale),
        DataType::Boolean => out.push(if array.as_boolean().value(row) { b'1' } else { b'0' }),
        DataType::Utf8 => out.extend_from_slice(array.as_string::<i32>().value(row).as_bytes()),
        DataType::LargeUtf8 => out.extend_from_slice(array.as_string::<i64>().value(row).as_bytes()),
        DataType::Utf8View => out.extend_from_slice(array.as_string_view().value(row).as_bytes()),
        DataType::List(_) => write_list(&array.as_list::<i32>().value(row), delimiter, out)?,
        DataType::LargeList(_) => write_list(&array.as_list::<i64>().value(row), delimiter, out)?,
        other => {
            return Err(format!(
                "Parquet type {other} is not read (integers, floats, decimals, strings, booleans and lists of them are)"
            ));
        }
    }
    Ok(())
}

/// A list cell: its non-null items joined by `delimiter`.
fn write_list(items: &ArrayRef, delimiter: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let mut first = true;
    for i in 0..items.len() {
        if items.is_null(i) {
            continue;
        }
        if !first {
            out.extend_from_slice(delimiter.as_bytes());
        }
        first = false;
        write_cell(items, i, delimiter, out)?;
    }
    Ok(())
}

/// Column types [`csv_to_parquet`] writes, inferred from the rows it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    Text,
}

/// What [`csv_to_parquet`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// The Parquet files written, in order.
    pub files: Vec<std::path::PathBuf>,
    /// Data rows written in all.
    pub rows: u64,
}

/// Compression codecs for [`csv_to_parquet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Snappy (Spark's default).
    Snappy,
    /// Zstandard at its default level.
    Zstd,
    /// None.
    None,
}

impl std::str::FromStr for Codec {
    type Err = String;

    /// `snappy`, `zstd` or `none`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "snappy" => Ok(Self::Snappy),
            "zstd" => Ok(Self::Zstd),
            "none" => Ok(Self::None),
            _ => Err("expected snappy, zstd or none".into()),
        }
    }
}

/// Converts the CSV file `input` to Parquet: each column typed from its cells (64-bit integers
/// if every non-empty cell is one, else 64-bit floats if every one is a number, else text;
/// empty cells are nulls), `row_group` rows per row group, and at most `rows_per_file` rows
/// per file (`out` itself when one file suffices, else `out` with `-00000`, `-00001`, … before
/// its extension). The types are fixed from the first `infer_rows` rows; a later cell that
/// does not fit is an error naming the line and column. The files are written into a
/// temporary folder beside `out` and moved into place when all are complete ([`swap_in`]).
pub fn csv_to_parquet(
    input: &Path,
    out: &Path,
    codec: Codec,
    row_group: usize,
    rows_per_file: Option<u64>,
    infer_rows: usize,
) -> Result<Converted, DataError> {
    use parquet::arrow::ArrowWriter;

    mtl_features::check_output_not_input(out, &[input])?;
    let io = |e: &dyn std::fmt::Display| io_error(input, e);
    let (names, kinds) = header_and_kinds(input, infer_rows)?;
    let schema = arrow_schema(&names, &kinds);
    let props = writer_properties(codec, row_group);
    // a failure leaves nothing new: the staging folder goes with it
    let staging = tempfile::Builder::new()
        .prefix(".mtl-convert-")
        .tempdir_in(folder_of(out))
        .map_err(|e| io_error(out, e))?;
    let _pending = mtl_features::pending::register(staging.path());
    let staged = |p: &Path| staging.path().join(p.file_name().unwrap_or_default());
    let mut reader = csv_reader(input)?;
    let mut converted = Converted {
        files: Vec::new(),
        rows: 0,
    };
    let mut builders: Vec<Builder> = kinds.iter().map(|&k| Builder::new(k)).collect();
    let mut in_batch = 0usize;
    let mut in_file = 0u64;
    let mut writer: Option<(ArrowWriter<File>, std::path::PathBuf)> = None;
    let finish = |(w, path): (ArrowWriter<File>, std::path::PathBuf), files: &mut Vec<std::path::PathBuf>| {
        w.close().map_err(|e| io_error(&path, e))?;
        files.push(path);
        Ok::<(), DataError>(())
    };
    let mut record = csv::StringRecord::new();
    loop {
        let more = reader.read_record(&mut record).map_err(|e| io(&e))?;
        if !more {
            break;
        }
        if writer.is_none() {
            let path = shard_path(out, rows_per_file, converted.files.len());
            mtl_features::check_output(&path, &[input])?;
            let file = File::create(staged(&path)).map_err(|e| io_error(&path, e))?;
            let w = ArrowWriter::try_new(file, schema.clone(), Some(props.clone()))
                .map_err(|e| io_error(&path, e))?;
            writer = Some((w, path));
        }
        append_record(&mut builders, &record, &names, input, infer_rows)?;
        in_batch += 1;
        in_file += 1;
        converted.rows += 1;
        let file_full = rows_per_file.is_some_and(|n| in_file >= n);
        if in_batch == BATCH_ROWS || file_full {
            let (w, path) = writer.as_mut().expect("opened above");
            write_batch(&mut builders, &schema, w, path)?;
            in_batch = 0;
        }
        if file_full {
            finish(writer.take().expect("opened above"), &mut converted.files)?;
            in_file = 0;
        }
    }
    if let Some((mut w, path)) = writer.take() {
        if in_batch > 0 {
            write_batch(&mut builders, &schema, &mut w, &path)?;
        }
        finish((w, path), &mut converted.files)?;
    }
    if converted.rows == 0 {
        return Err(DataError::Empty {
            file: input.display().to_string(),
        });
    }
    swap_in(out, &converted.files, staged)?;
    Ok(converted)
}

/// A CSV reader of `input`, its header row taken as the header.
fn csv_reader(input: &Path) -> Result<csv::Reader<File>, DataError> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(input)
        .map_err(|e| io_error(input, e))
}

/// `input`'s header and each column's type from its first `infer_rows` rows.
fn header_and_kinds(input: &Path, infer_rows: usize) -> Result<(Vec<String>, Vec<Kind>), DataError> {
    let mut reader = csv_reader(input)?;
    let names: Vec<String> = reader
        .headers()
        .map_err(|e| io_error(input, e))?
        .iter()
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Err(DataError::NoHeader {
            file: input.display().to_string(),
        });
    }
    let kinds = infer_kinds(&mut reader, names.len(), infer_rows).map_err(|e| io_error(input, e))?;
    Ok((names, kinds))
}

/// The writer settings of a conversion: `codec`, and row groups of `row_group` rows.
fn writer_properties(codec: Codec, row_group: usize) -> parquet::file::properties::WriterProperties {
    use parquet::basic::{Compression, ZstdLevel};
    parquet::file::properties::WriterProperties::builder()
        .set_compression(match codec {
            Codec::Snappy => Compression::SNAPPY,
            Codec::Zstd => Compression::ZSTD(ZstdLevel::default()),
            Codec::None => Compression::UNCOMPRESSED,
        })
        .set_max_row_group_row_count(Some(row_group.max(1)))
        .build()
}

/// The folder `path` is in (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Moves a conversion's complete shards (`files`, staged at `staged(file)`) into place, after
/// removing what an earlier conversion to `out` left that this one does not write (its single
/// file, or shards past this one's count), so that a pattern over the shards reads this
/// conversion's rows only.
fn swap_in(
    out: &Path,
    files: &[std::path::PathBuf],
    staged: impl Fn(&Path) -> std::path::PathBuf,
) -> Result<(), DataError> {
    let parent = folder_of(out);
    let (stem, ext) = stem_and_extension(out);
    let earlier = |name: &str| {
        let Some(k) = name
            .strip_prefix(&format!("{stem}-"))
            .and_then(|r| r.strip_suffix(&ext))
        else {
            return Some(name) == out.file_name().and_then(|n| n.to_str());
        };
        k.len() == 5 && k.bytes().all(|b| b.is_ascii_digit())
    };
    let entries = std::fs::read_dir(parent).map_err(|e| io_error(parent, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let written = files
            .iter()
            .any(|f| f.file_name() == Some(entry.file_name().as_os_str()));
        if earlier(&name) && !written && entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
        }
    }
    for file in files {
        std::fs::rename(staged(file), file).map_err(|e| io_error(file, e))?;
    }
    Ok(())
}

/// Appends one CSV record to the column builders; a record of another width than the
/// header, or a cell not of its column's inferred type, is an error naming the line (and
/// the column).
fn append_record(
    builders: &mut [Builder],
    record: &csv::StringRecord,
    names: &[String],
    input: &Path,
    infer_rows: usize,
) -> Result<(), DataError> {
    let line = record.position().map_or(0, |p| p.line());
    if record.len() != names.len() {
        return Err(DataError::BadRow {
            file: input.display().to_string(),
            line,
            column: "<row>".into(),
            message: format!("{} columns, the header has {}", record.len(), names.len()),
        });
    }
    for ((b, cell), name) in builders.iter_mut().zip(record.iter()).zip(names) {
        let cell = cell.trim();
        b.append(cell).map_err(|kind| DataError::BadRow {
            file: input.display().to_string(),
            line,
            column: name.clone(),
            message: format!(
                "`{cell}` is not {kind}, the type taken from the first {infer_rows} rows (convert with more --infer-rows)"
            ),
        })?;
    }
    Ok(())
}

/// Each column's type from the first `infer_rows` rows of `reader` (at least one): an
/// integer column until a cell is not one, then a number column, then text; empty cells
/// say nothing.
/// The 64-bit integer `cell` is, when it reads back as the same text: `007`, `+7` and integers
/// beyond 64 bits are not (as integers they would merge with `7` or lose digits; they stay
/// text, as the CSV path reads them).
fn exact_int(cell: &str) -> Option<i64> {
    cell.parse::<i64>().ok().filter(|v| v.to_string() == cell)
}

/// The number `cell` is, unless it is written as an integer that is not [`exact_int`] (leading
/// zeros, a sign, beyond 64 bits): such a column is an id column, kept as text.
fn number(cell: &str) -> Option<f64> {
    let digits = cell.strip_prefix(['-', '+']).unwrap_or(cell);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && exact_int(cell).is_none() {
        return None;
    }
    cell.parse().ok()
}

fn infer_kinds(
    reader: &mut csv::Reader<File>,
    columns: usize,
    infer_rows: usize,
) -> Result<Vec<Kind>, csv::Error> {
    let mut kinds = vec![Kind::Int; columns];
    let mut record = csv::StringRecord::new();
    for _ in 0..infer_rows.max(1) {
        if !reader.read_record(&mut record)? {
            break;
        }
        for (kind, cell) in kinds.iter_mut().zip(record.iter()) {
            let cell = cell.trim();
            if cell.is_empty() {
                continue;
            }
            if *kind == Kind::Int && exact_int(cell).is_none() {
                *kind = Kind::Float;
            }
            if *kind == Kind::Float && number(cell).is_none() {
                *kind = Kind::Text;
            }
        }
    }
    Ok(kinds)
}

/// The Arrow schema of the converted file: every column nullable, of its inferred type.
fn arrow_schema(names: &[String], kinds: &[Kind]) -> arrow_schema::SchemaRef {
    let fields: Vec<arrow_schema::Field> = names
        .iter()
        .zip(kinds)
        .map(|(n, k)| {
            let t = match k {
                Kind::Int => DataType::Int64,
                Kind::Float => DataType::Float64,
                Kind::Text => DataType::Utf8,
            };
            arrow_schema::Field::new(n, t, true)
        })
        .collect();
    std::sync::Arc::new(arrow_schema::Schema::new(fields))
}

/// `out`'s file stem and its extension with the dot (`""` without one).
fn stem_and_extension(out: &Path) -> (String, String) {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = out
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (stem, ext)
}

/// The path of shard `k`: `out` itself without `rows_per_file`, else `STEM-0000k.EXT` beside it.
fn shard_path(out: &Path, rows_per_file: Option<u64>, k: usize) -> std::path::PathBuf {
    if rows_per_file.is_none() {
        return out.to_path_buf();
    }
    let (stem, ext) = stem_and_extension(out);
    out.with_file_name(format!("{stem}-{k:05}{ext}"))
}

/// One column being converted: its values so far, of its inferred type.
enum Builder {
    Int(arrow_array::builder::Int64Builder),
    Float(arrow_array::builder::Float64Builder),
    Text(arrow_array::builder::StringBuilder),
}

impl Builder {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Int => Self::Int(arrow_array::builder::Int64Builder::new()),
            Kind::Float => Self::Float(arrow_array::builder::Float64Builder::new()),
            Kind::Text => Self::Text(arrow_array::builder::StringBuilder::new()),
        }
    }

    /// Appends a (trimmed) cell, empty as null; a cell not of the column's type is an error
    /// naming the type ("an integer", "a number").
    fn append(&mut self, cell: &str) -> Result<(), &'static str> {
        match self {
            Self::Int(b) if cell.is_empty() => b.append_null(),
            Self::Int(b) => b.append_value(exact_int(cell).ok_or("an integer written as Int64 writes it")?),
            Self::Float(b) if cell.is_empty() => b.append_null(),
            Self::Float(b) => b.append_value(number(cell).ok_or("a number")?),
            Self::Text(b) if cell.is_empty() => b.append_null(),
            Self::Text(b) => b.append_value(cell),
        }
        Ok(())
    }

    /// The column's values so far, leaving it empty.
    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Int(b) => std::sync::Arc::new(b.finish()),
            Self::Float(b) => std::sync::Arc::new(b.finish()),
            Self::Text(b) => std::sync::Arc::new(b.finish()),
        }
    }
}

/// Writes the builders' rows as one record batch to the shard at `path`, emptying them.
fn write_batch(
    builders: &mut [Builder],
    schema: &arrow_schema::SchemaRef,
    writer: &mut parquet::arrow::ArrowWriter<File>,
    path: &Path,
) -> Result<(), DataError> {
    let columns: Vec<ArrayRef> = builders.iter_mut().map(Builder::finish).collect();
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| io_error(path, e))?;
    writer.write(&batch).map_err(|e| io_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_types_say_what_a_field_may_read() {
        use std::sync::Arc;

        use arrow_schema::Field;
        let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
        assert_eq!(column_type(&DataType::Int64), ColumnType::Value);
        assert_eq!(column_type(&DataType::Decimal128(10, 2)), ColumnType::Value);
        assert_eq!(
            column_type(&DataType::Dictionary(
                Box::new(DataType::Int32),
                Box::new(DataType::Utf8)
            )),
            ColumnType::Value
        );
        assert_eq!(
            column_type(&list(DataType::Int64)),
            ColumnType::List("list<Int64>".into())
        );
        assert_eq!(
            column_type(&list(DataType::Utf8)),
            ColumnType::List("list<Utf8>".into())
        );
        // nested lists and other types are not read (no silent flattening)
        assert!(matches!(
            column_type(&list(list(DataType::Int64))),
            ColumnType::Unread(_)
        ));
        assert!(matches!(column_type(&DataType::Date32), ColumnType::Unread(t) if t == "Date32"));
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn integers_convert_only_when_they_read_back_exactly() {
        assert_eq!(exact_int("7"), Some(7));
        assert_eq!(exact_int("-12"), Some(-12));
        for lossy in ["007", "+7", "-0", "12345678901234567890", "7.0"] {
            assert_eq!(exact_int(lossy), None, "{lossy}");
        }
        // ids with leading zeros or beyond 64 bits are not numbers either: their column is text
        assert_eq!(number("007"), None);
        assert_eq!(number("12345678901234567890"), None);
        assert_eq!(number("1.50"), Some(1.5));
        assert_eq!(number("-2e3"), Some(-2000.0));
        // end to end: `007` and `7` stay two values, a 20-digit id keeps its digits
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("ids.csv");
        std::fs::write(
            &csv,
            "a,b,c\n7,12345678901234567890,1\n007,12345678901234567891,2\n",
        )
        .unwrap();
        let out = dir.path().join("ids.parquet");
        csv_to_parquet(&csv, &out, Codec::None, 10, None, 100).unwrap();
        let file = File::open(&out).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let batch = reader.into_iter().next().unwrap().unwrap();
        use arrow_array::cast::AsArray;
        let a = batch.column(0).as_string::<i32>();
        assert_eq!((a.value(0), a.value(1)), ("7", "007"));
        let b = batch.column(1).as_string::<i32>();
        assert_eq!(b.value(1), "12345678901234567891");
        assert_eq!(batch.column(2).data_type(), &arrow_schema::DataType::Int64);
    }

    #[test]
    fn a_conversion_replaces_an_earlier_one_whole_and_a_failed_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let csv = |name: &str, rows: usize| {
            let path = d.join(name);
            let text: String = (0..rows).map(|r| format!("{r},{}.5\n", r % 7)).collect();
            std::fs::write(&path, format!("id,x\n{text}")).unwrap();
            path
        };
        let out = d.join("pq").join("t.parquet");
        std::fs::create_dir(d.join("pq")).unwrap();
        let rows =
            |files: &[std::path::PathBuf]| -> u64 { files.iter().map(|f| row_count(f).unwrap()).sum() };
        let done = csv_to_parquet(&csv("ten.csv", 10), &out, Codec::Snappy, 2, Some(3), 100).unwrap();
        assert_eq!(rows(&done.files), 10);
        let four = [
            "t-00000.parquet",
            "t-00001.parquet",
            "t-00002.parquet",
            "t-00003.parquet",
        ];
        assert_eq!(listing(&d.join("pq")), four);
        // fewer rows into the same name: the shards past the new count are gone
        let done = csv_to_parquet(&csv("five.csv", 5), &out, Codec::Snappy, 2, Some(3), 100).unwrap();
        assert_eq!(listing(&d.join("pq")), four[..2]);
        assert_eq!(rows(&done.files), 5);
        // one file: the earlier shards are gone
        csv_to_parquet(&csv("five.csv", 5), &out, Codec::Snappy, 2, None, 100).unwrap();
        assert_eq!(listing(&d.join("pq")), ["t.parquet"]);
        let before = std::fs::read(&out).unwrap();
        // a cell that breaks the inferred type on row 5 of 8: an error, and the folder as it was
        let bad = d.join("bad.csv");
        std::fs::write(&bad, "id,x\n1,1\n2,2\n3,3\n4,4\nfive,5\n6,6\n7,7\n8,8\n").unwrap();
        let err = csv_to_parquet(&bad, &out, Codec::Snappy, 2, Some(3), 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.csv") && err.contains("`five`"), "{err}");
        assert_eq!(listing(&d.join("pq")), ["t.parquet"]);
        assert_eq!(std::fs::read(&out).unwrap(), before);
    }
}
