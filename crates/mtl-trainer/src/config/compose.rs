//! Configs that compose: a run config may start from another with `base = "other.toml"` (its
//! tables merged under this file's, key by key; a base may have its own base), and any key may
//! be set from the command line with `--set section.key=value` (a TOML value; anything that
//! does not read as one is a string). Relative paths in a base (`schema`, `data.*`) are its own
//! folder's. The result is read as one config, checked like a file.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::TrainError;

/// The config at `path` with its bases under it and `sets` over it, as TOML text; `None` when
/// the file has no `base` and nothing is set (it is then read as it is, its errors naming its
/// own lines).
pub(crate) fn composed_text(path: &Path, sets: &[String]) -> Result<Option<String>, TrainError> {
    let text = read(path)?;
    let own: Table = parse(&text, path)?;
    if !own.contains_key("base") && sets.is_empty() {
        return Ok(None);
    }
    let mut table = load(path, &mut Vec::new())?;
    for assignment in sets {
        set(&mut table, assignment)?;
    }
    Ok(Some(toml::to_string(&table).expect("a table serialises")))
}

/// A config given as a table (a Python dict, say) rather than a file, as TOML text: its
/// relative paths made absolute against `dir`, its `base` (a path, against `dir`) merged under
/// it and `sets` over it; `origin` names it in errors.
pub(crate) fn table_text(
    mut table: Table,
    origin: &str,
    dir: &Path,
    sets: &[String],
) -> Result<String, TrainError> {
    absolutize(&mut table, dir);
    let mut table = match table.remove("base") {
        None => table,
        Some(Value::String(base)) => {
            let mut merged = load(&dir.join(base), &mut Vec::new())?;
            merge(&mut merged, table);
            merged
        }
        Some(other) => {
            return Err(TrainError::Config {
                file: origin.to_string(),
                message: format!("`base` = {other}: expected the path of another run config"),
            });
        }
    };
    for assignment in sets {
        set(&mut table, assignment)?;
    }
    Ok(toml::to_string(&table).expect("a table serialises"))
}

fn read(path: &Path) -> Result<String, TrainError> {
    std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn parse(text: &str, path: &Path) -> Result<Table, TrainError> {
    text.parse::<Table>().map_err(|e| TrainError::Config {
        file: path.display().to_string(),
        message: mtl_features::toml_error_line(text, &e),
    })
}

/// The table of `path` with its paths made absolute and its bases merged under it; `seen`
/// holds the files on the way here (a file met twice is a cycle).
fn load(path: &Path, seen: &mut Vec<PathBuf>) -> Result<Table, TrainError> {
    let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if seen.contains(&key) {
        return Err(TrainError::Config {
            file: path.display().to_string(),
            message: "`base` leads back to this file: a base cannot include itself".into(),
        });
    }
    seen.push(key);
    let mut table = parse(&read(path)?, path)?;
    // against the folder's absolute path: a relative one would be taken again by the reader
    let file = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = file.parent().unwrap_or(Path::new("."));
    absolutize(&mut table, dir);
    match table.remove("base") {
        None => Ok(table),
        Some(Value::String(base)) => {
            let mut merged = load(&dir.join(base), seen)?;
            merge(&mut merged, table);
            Ok(merged)
        }
        Some(other) => Err(TrainError::Config {
            file: path.display().to_string(),
            message: format!("`base` = {other}: expected the path of another run config"),
        }),
    }
}

/// Puts `over`'s keys over `base`'s: tables merged key by key, anything else replaced.
fn merge(base: &mut Table, over: Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(below)), Value::Table(above)) => merge(below, above),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Makes the config's relative paths (`schema`, `data.train`, `data.valid`, `data.test`,
/// each a path or a list of them, and `data.cache_dir`) absolute against `dir`.
fn absolutize(table: &mut Table, dir: &Path) {
    let fix = |v: &mut Value| match v {
        Value::String(p) if Path::new(p.as_str()).is_relative() => {
            *p = dir.join(p.as_str()).display().to_string();
        }
        _ => {}
    };
    if let Some(schema) = table.get_mut("schema") {
        fix(schema);
    }
    if let Some(Value::Table(data)) = table.get_mut("data") {
        for key in ["train", "valid", "test", "cache_dir"] {
            match data.get_mut(key) {
                Some(Value::Array(items)) => items.iter_mut().for_each(fix),
                Some(v) => fix(v),
                None => {}
            }
        }
    }
}

/// Applies one `--set section.key=value`.
fn set(table: &mut Table, assignment: &str) -> Result<(), TrainError> {
    let bad = |message: String| TrainError::Config {
        file: format!("--set {assignment}"),
        message,
    };
    let Some((key, text)) = assignment.split_once('=') else {
        return Err(bad("expected SECTION.KEY=VALUE (e.g. train.lr=0.01)".into()));
    };
    let path: Vec<&str> = key.trim().split('.').map(str::trim).collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(bad(format!("`{key}` is not a dotted key (section.key)")));
    }
    // a TOML value (number, boolean, array, inline table, quoted string), else the text
    let value = format!("v = {text}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(text.to_string()));
    let (last, parents) = path.split_last().expect("at least one part");
    let mut at = table;
    for (depth, part) in parents.iter().enumerate() {
        let entry = at
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        at = match entry {
            Value::Table(t) => t,
            _ => {
                let prefix = path[..=depth].join(".");
                return Err(bad(format!("`{prefix}` is a value, not a table of keys")));
            }
        };
    }
    at.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_merge_under_and_sets_go_over() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("shared")).unwrap();
        std::fs::write(
            d.join("shared/base.toml"),
            "schema = \"s.toml\"\n[data]\ntrain = [\"a.csv\", \"/abs/b.csv\"]\n[train]\nlr = 0.1\nepochs = 3\n",
        )
        .unwrap();
        std::fs::write(
            d.join("run.toml"),
            "base = \"shared/base.toml\"\n[train]\nepochs = 5\n[model]\ntype = \"esmm\"\n",
        )
        .unwrap();
        let sets = [
            "train.lr=0.01".to_string(),
            "train.backend=ndarray".into(),
            "train.loss_weights=[1, 2]".into(),
            "data.valid=\"v.csv\"".into(),
        ];
        let text = composed_text(&d.join("run.toml"), &sets).unwrap().unwrap();
        let t: Table = text.parse().unwrap();
        let shared = d.join("shared");
        // the base's relative paths are its own folder's; absolute ones stay
        assert_eq!(
            t["schema"].as_str().unwrap(),
            shared.join("s.toml").display().to_string()
        );
        let train: Vec<&str> = t["data"]["train"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            train,
            [shared.join("a.csv").display().to_string().as_str(), "/abs/b.csv"]
        );
        // the file over its base, the sets over both; a value that is not TOML is a string
        assert_eq!(t["train"]["epochs"].as_integer(), Some(5));
        assert_eq!(t["train"]["lr"].as_float(), Some(0.01));
        assert_eq!(t["train"]["backend"].as_str(), Some("ndarray"));
        assert_eq!(t["train"]["loss_weights"].as_array().unwrap().len(), 2);
        assert_eq!(t["data"]["valid"].as_str(), Some("v.csv"));
        assert_eq!(t["model"]["type"].as_str(), Some("esmm"));
        assert!(!t.contains_key("base"));
        // nothing to compose: the file is read as it is
        std::fs::write(d.join("plain.toml"), "[train]\nlr = 0.1\n").unwrap();
        assert_eq!(composed_text(&d.join("plain.toml"), &[]).unwrap(), None);
        // errors: a cycle, a bad assignment, a value where a table is needed
        std::fs::write(d.join("loop.toml"), "base = \"loop.toml\"\n").unwrap();
        let err = composed_text(&d.join("loop.toml"), &[]).unwrap_err().to_string();
        assert!(err.contains("leads back to this file"), "{err}");
        for (assignment, needle) in [
            ("train.lr", "expected SECTION.KEY=VALUE"),
            ("train..lr=1", "not a dotted key"),
            ("schema.x=1", "`schema` is a value, not a table"),
        ] {
            let err = composed_text(&d.join("run.toml"), &[assignment.to_string()])
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle) && err.contains(assignment), "{err}");
        }
    }

    #[test]
    fn a_table_composes_as_a_file_does_against_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("base.toml"), "[train]\nlr = 0.1\nepochs = 3\n").unwrap();
        let table: Table =
            "base = \"base.toml\"\nschema = \"s.toml\"\n[data]\ntrain = \"t.csv\"\n[train]\nepochs = 5\n"
                .parse()
                .unwrap();
        let text = table_text(table, "<config dict>", d, &["train.seed=9".to_string()]).unwrap();
        let t: Table = text.parse().unwrap();
        assert_eq!(
            t["schema"].as_str().unwrap(),
            d.join("s.toml").display().to_string()
        );
        assert_eq!(
            t["data"]["train"].as_str().unwrap(),
            d.join("t.csv").display().to_string()
        );
        // the base under the table, the sets over both
        assert_eq!(t["train"]["lr"].as_float(), Some(0.1));
        assert_eq!(t["train"]["epochs"].as_integer(), Some(5));
        assert_eq!(t["train"]["seed"].as_integer(), Some(9));
        let bad: Table = "base = 3\n".parse().unwrap();
        let err = table_text(bad, "<config dict>", d, &[]).unwrap_err().to_string();
        assert!(
            err.contains("<config dict>") && err.contains("`base` = 3"),
            "{err}"
        );
    }
}
