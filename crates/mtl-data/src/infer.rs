//! A starting schema from data (`mtl schema infer FILE…`): reads up to `sample_rows` rows of
//! the files (same header required) and guesses each column's role, for the user to edit.
//!
//! | column | guess |
//! |---|---|
//! | only 0 and 1, named like a label (`click`, `label`, `is_*`, `*_label`, …) | binary label |
//! | a distinct value on (nearly) every row, or a name like a per-request id (`id`, `request_id`, `search_id`, `session_id`, …; [`id_like`]) | an id to ignore (commented out) |
//! | integers with more than [`MANY_INTEGERS`] distinct values, or beside columns of the same name stem holding fractions (`f3` by `f1 = 0.25`), not named like an id | dense, standardised, saying why |
//! | integers or text with at most `max_categories` distinct values | sparse, fitted vocabulary |
//! | text with more distinct values | sparse, hashed into 2× that many buckets |
//! | numbers otherwise (floats, or integers with many values) | dense, standardised |
//! | a Parquet list column | a sequence field (fitted or hashed as above, `max_len` the longest list) |
//!
//! Empty or `NaN` cells in a dense column get `default = 0.0`; every guess is written with the
//! statistics behind it as a comment.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use crate::DataError;
use crate::parquet::ColumnType;

/// How much to read and where categories end.
#[derive(Debug, Clone, Copy)]
pub struct InferOptions {
    /// Rows read, at most, over all files.
    pub sample_rows: usize,
    /// The most distinct values of a categorical column with a fitted vocabulary.
    pub max_categories: usize,
}

impl Default for InferOptions {
    fn default() -> Self {
        Self {
            sample_rows: 200_000,
            max_categories: 100_000,
        }
    }
}

/// The guessed role of one column.
#[derive(Debug, Clone, PartialEq)]
pub enum Guess {
    /// A binary label.
    Label,
    /// A categorical field with a fitted vocabulary.
    SparseFit,
    /// A categorical field hashed into `buckets`.
    SparseHash {
        /// Hash buckets.
        buckets: usize,
    },
    /// A numeric field, standardised; `default` for empty cells when some were empty.
    Dense {
        /// Whether some cells were empty.
        has_empty: bool,
    },
    /// A sequence field (a Parquet list column): its items fitted (`buckets: None`) or hashed,
    /// at most `max_len` of them per row.
    Sequence {
        /// Hash buckets, when there are too many distinct items to fit.
        buckets: Option<usize>,
        /// The longest list seen.
        max_len: usize,
    },
    /// Left out: an id (distinct on nearly every row) or an empty column.
    Ignore,
}

/// What was seen in one column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnStats {
    /// Header name.
    pub name: String,
    /// Non-empty cells.
    pub filled: usize,
    /// Empty cells (and `NaN` cells: missing numbers).
    pub empty: usize,
    /// Distinct non-empty values (counted up to a cap, then `distinct_capped`).
    pub distinct: usize,
    /// Whether `distinct` stopped at the cap.
    pub distinct_capped: bool,
    /// Whether every non-empty cell is an integer.
    pub integers: bool,
    /// Whether every non-empty cell is a finite number.
    pub numbers: bool,
    /// Smallest and largest number seen.
    pub range: Option<(f64, f64)>,
    /// Sum of the numbers seen.
    pub sum: f64,
    /// Whether the column holds lists (Parquet): the statistics above count its items, and
    /// `filled`/`empty` its rows with and without items.
    pub list: bool,
    /// The most items in one row of a list column.
    pub max_items: usize,
    /// A Parquet column of a type that is not read (named): left out.
    pub unread: Option<String>,
    /// Why the guess is not the plain rule's (a name like an identifier's, many integer
    /// values, columns of the same stem holding fractions), for the schema's comment.
    pub note: Option<String>,
    /// The guess.
    pub guess: Guess,
}

/// Whether a name reads like a label: `click`, `label`, `target`, `y`, `y1`, `is_*`, `*_label`, ….
pub fn label_like(name: &str) -> bool {
    const WORDS: [&str; 14] = [
        "click",
        "clicked",
        "label",
        "target",
        "y",
        "purchase",
        "buy",
        "conversion",
        "convert",
        "cart",
        "like",
        "follow",
        "finish",
        "income",
    ];
    let n = name.to_ascii_lowercase();
    let stem = n.trim_end_matches(|c: char| c.is_ascii_digit());
    WORDS.contains(&n.as_str())
        || WORDS.contains(&stem)
        || n.starts_with("is_")
        || n.starts_with("label_")
        || n.ends_with("_label")
        || n.ends_with("_target")
}

/// Reads the next row of a file into a record: its line or row number, `None` at the end.
type NextRow = Box<dyn FnMut(&mut csv::ByteRecord) -> Result<Option<u64>, DataError>>;

/// Refuses a header a schema cannot name: a column without a name, or a name given twice.
fn check_header(names: &[String], file: &str) -> Result<(), DataError> {
    let bad = |message: String| DataError::BadRow {
        file: file.to_string(),
        line: 1,
        column: "<header>".into(),
        message,
    };
    for (i, name) in names.iter().enumerate() {
        if name.trim().is_empty() {
            return Err(bad(format!(
                "column {} has no name: every column needs one to be a field",
                i + 1
            )));
        }
        if let Some(j) = names[..i].iter().position(|n| n == name) {
            return Err(bad(format!(
                "`{name}` names columns {} and {}: give each column its own name",
                j + 1,
                i + 1
            )));
        }
    }
    Ok(())
}

/// Reads the sample and guesses every column (CSV or Parquet files).
pub fn infer_columns(files: &[&Path], options: InferOptions) -> Result<(Vec<ColumnStats>, usize), DataError> {
    let cap = options.max_categories.max(1) * 2;
    let mut header: Option<Vec<String>> = None;
    let mut seen: Vec<HashSet<String>> = Vec::new();
    let mut stats: Vec<ColumnStats> = Vec::new();
    let mut rows = 0usize;
    'files: for path in files {
        let file = path.display().to_string();
        let (names, types, mut rows_of) = open_rows(path)?;
        if names.is_empty() || names.iter().all(String::is_empty) {
            return Err(DataError::NoHeader { file });
        }
        check_header(&names, &file)?;
        match &header {
            None => {
                seen = vec![HashSet::new(); names.len()];
                stats = names.iter().map(|n| ColumnStats::empty(n)).collect();
                for (s, t) in stats.iter_mut().zip(&types) {
                    s.list = matches!(t, ColumnType::List(_));
                    if let ColumnType::Unread(t) = t {
                        s.unread = Some(t.clone());
                    }
                }
                header = Some(names);
            }
            Some(first) if *first != names => {
                return Err(DataError::BadRow {
                    file,
                    line: 1,
                    column: "<header>".into(),
                    message: format!(
                        "the header differs from the first file's ({} columns: {}); infer one layout at a time",
                        first.len(),
                        first.join(", ")
                    ),
                });
            }
            Some(_) => {}
        }
        let mut record = csv::ByteRecord::new();
        loop {
            if rows >= options.sample_rows {
                break 'files;
            }
            if rows_of(&mut record)?.is_none() {
                break;
            }
            for (c, cell) in record.iter().enumerate().take(stats.len()) {
                let cell = String::from_utf8_lossy(cell);
                if stats[c].list {
                    stats[c].add_list(&cell, &mut seen[c], cap);
                } else {
                    stats[c].add(cell.trim(), &mut seen[c], cap);
                }
            }
            rows += 1;
        }
    }
    for (s, set) in stats.iter_mut().zip(&seen) {
        if !s.distinct_capped {
            s.distinct = set.len();
        } else {
            s.distinct = cap;
        }
    }
    let fractional = fractional_stems(&stats);
    for s in &mut stats {
        (s.guess, s.note) = guess(s, options, &fractional);
    }
    Ok((stats, rows))
}

/// Integer columns with more distinct values than this are amounts or counts (dense), not
/// categories, unless named like an id.
pub const MANY_INTEGERS: usize = 1000;

/// Name stems (the name less trailing digits and `_`) of the numeric columns holding
/// fractions: an integer column of such a stem (`f3` beside `f1 = 0.25`) is a number too.
fn fractional_stems(stats: &[ColumnStats]) -> HashSet<String> {
    stats
        .iter()
        .filter(|s| s.numbers && !s.integers && !s.list && s.filled > 0)
        .map(|s| stem(&s.name))
        .collect()
}

/// `name` less its trailing digits and underscores (`f_12` → `f`), lower-cased.
fn stem(name: &str) -> String {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '_')
        .to_ascii_lowercase()
}

/// Whether `name` reads like a per-row or per-request identifier (`id`, `request_id`,
/// `search_id`, `session_id`, …), whose values do not recur between training and serving —
/// unlike `user_id` or `item_id`, which are features.
pub fn id_like(name: &str) -> bool {
    const WHOLE: [&str; 6] = ["id", "uuid", "guid", "rid", "row_id", "index"];
    const PER_EVENT: [&str; 12] = [
        "request",
        "req",
        "search",
        "session",
        "impression",
        "imp",
        "log",
        "trace",
        "event",
        "query",
        "record",
        "sample",
    ];
    let n = name.to_ascii_lowercase();
    WHOLE.contains(&n.as_str())
        || ["_id", "id", "_uuid"]
            .iter()
            .filter_map(|suffix| n.strip_suffix(suffix))
            .any(|stem| PER_EVENT.contains(&stem.trim_end_matches('_')))
}

/// The delimiter that joins a Parquet list cell's items while inferring.
const ITEMS: char = '|';

/// A file's header, what its columns hold (Parquet: lists, and types not read, whose cells
/// are left empty), and its rows as text cells, one at a time: CSV or Parquet.
fn open_rows(path: &Path) -> Result<(Vec<String>, Vec<ColumnType>, NextRow), DataError> {
    let (names, mut types, mut next) = open_own_rows(path)?;
    // the hive-style partition columns of the path, as training reads them
    let (names, extra) = crate::with_partitions(path, names);
    types.resize(names.len(), ColumnType::Value);
    if extra.is_empty() {
        return Ok((names, types, next));
    }
    let next: NextRow = Box::new(move |record| {
        let row = next(record)?;
        if row.is_some() {
            for value in &extra {
                record.push_field(value.as_bytes());
            }
        }
        Ok(row)
    });
    Ok((names, types, next))
}

/// [`open_rows`] of the file's own columns.
fn open_own_rows(path: &Path) -> Result<(Vec<String>, Vec<ColumnType>, NextRow), DataError> {
    let file = path.display().to_string();
    let io = |e: &dyn std::fmt::Display| DataError::Io {
        file: file.clone(),
        message: e.to_string(),
    };
    if crate::parquet::is_parquet(path) {
        let names = crate::parquet::header(path)?;
        let types = crate::parquet::column_types(path)?;
        let read: Vec<(usize, String)> = (types.iter().enumerate())
            .filter(|(_, t)| !matches!(t, ColumnType::Unread(_)))
            .map(|(i, _)| (i, ITEMS.to_string()))
            .collect();
        let mut pq = crate::parquet::ParquetRows::open(path, &names, &read)?;
        return Ok((names, types, Box::new(move |record| pq.next_into(record))));
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| io(&e))?;
    let names = reader
        .headers()
        .map_err(|e| io(&e))?
        .iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    let types = vec![ColumnType::Value; names.len()];
    let mut line = 1u64;
    let next: NextRow = Box::new(move |record| {
        line += 1;
        match reader.read_byte_record(record) {
            Ok(true) => Ok(Some(line)),
            Ok(false) => Ok(None),
            Err(e) => Err(DataError::BadRow {
                file: file.clone(),
                line,
                column: "<row>".into(),
                message: e.to_string(),
            }),
        }
    });
    Ok((names, types, next))
}

impl ColumnStats {
    /// A column named `name` with nothing seen yet.
    fn empty(name: &str) -> Self {
        Self {
            name: name.to_string(),
            filled: 0,
            empty: 0,
            distinct: 0,
            distinct_capped: false,
            integers: true,
            numbers: true,
            range: None,
            sum: 0.0,
            list: false,
            max_items: 0,
            unread: None,
            note: None,
            guess: Guess::Ignore,
        }
    }

    /// Counts one (trimmed) cell: empty or filled, numeric range and sum, and its distinct
    /// values in `seen` up to `cap` of them.
    fn add(&mut self, cell: &str, seen: &mut HashSet<String>, cap: usize) {
        // NaN is a missing number (as pandas and Parquet write one), not a category
        if mtl_features::state::is_missing(cell) {
            self.empty += 1;
            return;
        }
        self.filled += 1;
        self.add_value(cell, seen, cap);
    }

    /// Counts one row of a list column: empty, or its items (joined by [`ITEMS`]) counted as
    /// values.
    fn add_list(&mut self, cell: &str, seen: &mut HashSet<String>, cap: usize) {
        let items: Vec<&str> = cell
            .split(ITEMS)
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .collect();
        if items.is_empty() {
            self.empty += 1;
            return;
        }
        self.filled += 1;
        self.max_items = self.max_items.max(items.len());
        for item in items {
            self.add_value(item, seen, cap);
        }
    }

    /// Counts one value: numeric range and sum, and its distinct values in `seen` up to `cap`.
    fn add_value(&mut self, cell: &str, seen: &mut HashSet<String>, cap: usize) {
        match cell.parse::<f64>() {
            Ok(v) if v.is_finite() => {
                self.integers &= v.fract() == 0.0;
                self.range = Some(self.range.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))));
                self.sum += v;
            }
            _ => {
                self.numbers = false;
                self.integers = false;
            }
        }
        if !self.distinct_capped {
            if seen.len() < cap {
                seen.insert(cell.to_string());
            } else if !seen.contains(cell) {
                self.distinct_capped = true;
                seen.clear();
            }
        }
    }
}

/// The guess for column `s`, and why when it is not the plain rule's; `fractional` holds the
/// stems of the columns with fractions.
fn guess(s: &ColumnStats, options: InferOptions, fractional: &HashSet<String>) -> (Guess, Option<String>) {
    let plain = plain_guess(s, options);
    let categorical = matches!(plain, Guess::SparseFit | Guess::SparseHash { .. });
    if s.filled > 0 && !s.list && id_like(&s.name) && (categorical || plain == Guess::Ignore) {
        let why = "named like a per-row or per-request identifier, whose values do not recur: rename it or add it by hand if it is a feature";
        return (Guess::Ignore, Some(why.into()));
    }
    if plain == Guess::SparseFit && s.numbers && s.integers && !id_named(&s.name) {
        let dense = Guess::Dense {
            has_empty: s.empty > 0,
        };
        if s.distinct > MANY_INTEGERS {
            let why = format!(
                "integers with {} distinct values: read as a number (a count or an amount); make it sparse if they are categories",
                s.distinct
            );
            return (dense, Some(why));
        }
        if fractional.contains(&stem(&s.name)) {
            let why = format!(
                "integers, but other `{}…` columns hold fractions: read as a number like them",
                stem(&s.name)
            );
            return (dense, Some(why));
        }
    }
    (plain, None)
}

/// Whether `name` ends like an id's (`id`, `user_id`, `itemId`, `ITEM_ID`): ids are
/// categories however many there are.
fn id_named(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "id" || n.ends_with("_id") || name.ends_with("Id") || name.ends_with("ID")
}

/// The plain rule's guess (see the module's table).
fn plain_guess(s: &ColumnStats, options: InferOptions) -> Guess {
    if s.filled == 0 {
        return Guess::Ignore;
    }
    if s.list {
        let fits = !s.distinct_capped && s.distinct <= options.max_categories;
        return Guess::Sequence {
            buckets: (!fits).then(|| (2 * s.distinct).next_power_of_two()),
            max_len: s.max_items,
        };
    }
    let binary = s.numbers && s.integers && matches!(s.range, Some((lo, hi)) if lo >= 0.0 && hi <= 1.0);
    if binary && label_like(&s.name) {
        return Guess::Label;
    }
    // a distinct value on nearly every row: an identifier, not a feature
    let unique = s.distinct_capped || (s.filled >= 1000 && s.distinct as f64 > 0.9 * s.filled as f64);
    if unique && (s.integers || !s.numbers) {
        return Guess::Ignore;
    }
    if (s.integers || !s.numbers) && !s.distinct_capped && s.distinct <= options.max_categories {
        return Guess::SparseFit;
    }
    if !s.numbers {
        return Guess::SparseHash {
            buckets: (2 * s.distinct).next_power_of_two(),
        };
    }
    Guess::Dense {
        has_empty: s.empty > 0,
    }
}

/// The starting schema, as TOML with a comment per field.
pub fn schema_toml(files: &[&Path], stats: &[ColumnStats], rows: usize) -> String {
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let mut out = format!(
        "# Inferred by `mtl schema infer` from {rows} rows of {}.\n# A starting point: check every guess, then train.\nembed_dim = 16\n",
        names.join(", ")
    );
    let describe = |s: &ColumnStats| {
        let mut d = format!(
            "{} distinct{}",
            s.distinct,
            if s.distinct_capped { " or more" } else { "" }
        );
        if let Some((lo, hi)) = s.range {
            let _ = write!(d, ", {lo} … {hi}");
        }
        if s.empty > 0 {
            let _ = write!(d, ", {} empty", s.empty);
        }
        if let Some(note) = &s.note {
            let _ = write!(d, "; {note}");
        }
        d
    };
    let quote = |n: &str| format!("{n:?}");
    for s in stats.iter().filter(|s| s.guess == Guess::SparseFit) {
        let _ = write!(
            out,
            "\n[[sparse]]  # {}\nname = {}\nfit = true\n",
            describe(s),
            quote(&s.name)
        );
    }
    for s in stats.iter() {
        if let Guess::SparseHash { buckets } = s.guess {
            let _ = write!(
                out,
                "\n[[sparse]]  # {}: hashed\nname = {}\nhash_buckets = {buckets}\n",
                describe(s),
                quote(&s.name)
            );
        }
    }
    for s in stats.iter() {
        if let Guess::Dense { has_empty } = s.guess {
            let _ = write!(
                out,
                "\n[[dense]]  # {}\nname = {}\nstandardize = true\n{}",
                describe(s),
                quote(&s.name),
                if has_empty { "default = 0.0\n" } else { "" }
            );
        }
    }
    for s in stats.iter() {
        if let Guess::Sequence { buckets, max_len } = s.guess {
            let vocabulary = match buckets {
                None => "fit = true\n".to_string(),
                Some(b) => format!("hash_buckets = {b}\n"),
            };
            let _ = write!(
                out,
                "\n[[sequence]]  # lists of up to {max_len} items, {}\nname = {}\nmax_len = {max_len}\n{vocabulary}",
                describe(s),
                quote(&s.name)
            );
        }
    }
    let labels: Vec<&ColumnStats> = stats.iter().filter(|s| s.guess == Guess::Label).collect();
    if labels.is_empty() {
        out += "\n# No column looked like a binary label (0/1, named like click, label, is_…): add one:\n# [[labels]]\n# name = \"…\"\n# kind = \"binary\"\n";
    }
    for s in labels {
        let _ = write!(
            out,
            "\n[[labels]]  # 0/1, mean {:.4}\nname = {}\nkind = \"binary\"\n",
            s.sum / s.filled.max(1) as f64,
            quote(&s.name)
        );
    }
    for s in stats.iter().filter(|s| s.guess == Guess::Ignore) {
        let why = if let Some(t) = &s.unread {
            format!("Parquet type {t}, which mtl does not read")
        } else if s.filled == 0 {
            "empty".to_string()
        } else if s.note.is_some() {
            describe(s)
        } else {
            format!("an identifier? {}", describe(s))
        };
        let _ = write!(out, "\n# not used: {} ({why})\n", quote(&s.name));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names() {
        for yes in [
            "click",
            "Click",
            "y",
            "y1",
            "is_buy",
            "label",
            "income_label",
            "purchase",
        ] {
            assert!(label_like(yes), "{yes}");
        }
        for no in ["user_id", "age", "clicks_7d", "city"] {
            assert!(!label_like(no), "{no}");
        }
    }

    #[test]
    fn identifiers_and_integer_amounts_are_told_from_categories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        let mut text = String::from("search_id,user_id,amount,f1,f2,cat,click\n");
        for r in 0..3000 {
            // a search of 5 impressions; 1,500 users; 1,501 amounts; f1 fractions, f2 its
            // integer sibling; 20 categories
            text += &format!(
                "{},{},{},{:.2},{},{},{}\n",
                r / 5,
                r % 1500,
                r * 7 % 1501,
                r as f64 / 8.0,
                r % 10,
                r % 20,
                r % 2
            );
        }
        std::fs::write(&path, &text).unwrap();
        let (stats, _) = infer_columns(&[path.as_path()], InferOptions::default()).unwrap();
        let dense = Guess::Dense { has_empty: false };
        let guess: Vec<(&str, &Guess)> = stats.iter().map(|s| (s.name.as_str(), &s.guess)).collect();
        assert_eq!(
            guess,
            [
                ("search_id", &Guess::Ignore),
                ("user_id", &Guess::SparseFit),
                ("amount", &dense),
                ("f1", &dense),
                ("f2", &dense),
                ("cat", &Guess::SparseFit),
                ("click", &Guess::Label),
            ]
        );
        let text = schema_toml(&[path.as_path()], &stats, 3000);
        for note in [
            "# not used: \"search_id\" (600 distinct, 0 … 599; named like a per-row or per-request identifier",
            "integers with 1501 distinct values: read as a number (a count or an amount)",
            "other `f…` columns hold fractions",
        ] {
            assert!(text.contains(note), "`{note}` not in {text}");
        }
        for (name, yes) in [
            ("id", true),
            ("request_id", true),
            ("searchId", true),
            ("session_uuid", true),
            ("user_id", false),
            ("item_id", false),
            ("paid", false),
        ] {
            assert_eq!(id_like(name), yes, "{name}");
        }
    }

    #[test]
    fn guesses_by_column_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        let mut text = String::from("rid,flag,is_click,seg,word,score,empty,gappy\n");
        for r in 0..2000 {
            // rid unique; flag 0/1 not named like a label; seg 7 ints; word 1,500 texts; score
            // floats; gappy floats with NaN (missing) in one row of 500
            let gappy = if r % 500 == 7 {
                "NaN".to_string()
            } else {
                format!("{:.2}", r as f64 / 3.0)
            };
            text += &format!(
                "{r},{},{},{},w{},{:.3},,{gappy}\n",
                r % 2,
                (r % 3 == 0) as u8,
                r % 7,
                r % 1500,
                r as f64 / 7.0
            );
        }
        std::fs::write(&path, &text).unwrap();
        let options = InferOptions {
            sample_rows: 10_000,
            max_categories: 1000,
        };
        let (stats, rows) = infer_columns(&[path.as_path()], options).unwrap();
        assert_eq!(rows, 2000);
        let guess: Vec<(&str, &Guess)> = stats.iter().map(|s| (s.name.as_str(), &s.guess)).collect();
        assert_eq!(
            guess,
            [
                ("rid", &Guess::Ignore),
                ("flag", &Guess::SparseFit),
                ("is_click", &Guess::Label),
                ("seg", &Guess::SparseFit),
                ("word", &Guess::SparseHash { buckets: 4096 }),
                ("score", &Guess::Dense { has_empty: false }),
                ("empty", &Guess::Ignore),
                ("gappy", &Guess::Dense { has_empty: true }),
            ]
        );
        assert_eq!(stats[3].distinct, 7);
        assert_eq!((stats[7].empty, stats[7].filled), (4, 1996));
        // a second file with another header is refused, naming it
        let other = dir.path().join("u.csv");
        std::fs::write(&other, "a,b\n1,2\n").unwrap();
        let err = infer_columns(&[path.as_path(), other.as_path()], options)
            .unwrap_err()
            .to_string();
        assert!(err.contains("u.csv:1") && err.contains("header differs"), "{err}");
        // the sample stops at `sample_rows`
        let (_, rows) = infer_columns(
            &[path.as_path()],
            InferOptions {
                sample_rows: 10,
                ..options
            },
        )
        .unwrap();
        assert_eq!(rows, 10);
    }
}

/// A schema guessed by [`infer_schema`].
#[derive(Debug, Clone)]
pub struct InferredSchema {
    /// The schema's TOML text, with a comment on every guess.
    pub text: String,
    /// Columns seen.
    pub columns: usize,
    /// Rows read.
    pub rows: usize,
    /// Columns taken for labels.
    pub labels: usize,
}

/// `mtl schema infer`: a starting schema for `files`, guessed from their first rows; one
/// with labels is checked to read back as a schema. No rows, or no column to train on
/// (every column a label or left out), is an error naming the first file.
pub fn infer_schema(files: &[&Path], options: InferOptions) -> Result<InferredSchema, DataError> {
    let (stats, rows) = infer_columns(files, options)?;
    let file = files.first().map(|p| p.display().to_string()).unwrap_or_default();
    if rows == 0 {
        return Err(DataError::Infer {
            file,
            message: "no data rows to guess from".into(),
        });
    }
    if stats
        .iter()
        .all(|s| matches!(s.guess, Guess::Label | Guess::Ignore))
    {
        let kept: Vec<&str> = stats.iter().map(|s| s.name.as_str()).collect();
        return Err(DataError::Infer {
            file,
            message: format!(
                "no column to train on — every column ({}) looks like a label or is left out \
                 (an id distinct on nearly every row, or empty)",
                kept.join(", ")
            ),
        });
    }
    let text = schema_toml(files, &stats, rows);
    let labels = stats.iter().filter(|s| s.guess == Guess::Label).count();
    if labels > 0 {
        // what is written must read back as a schema
        mtl_features::Schema::from_toml_str(&text, "<inferred schema>")?;
    }
    Ok(InferredSchema {
        text,
        columns: stats.len(),
        rows,
        labels,
    })
}
