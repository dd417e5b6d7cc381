//! `docs/config.md` documents every key of the run config's types: a key added to the top
//! level, `[data]`, `[train]` or `[metrics]` without its row there fails here. The keys are
//! the field names serde reads for each type (asked of the type itself, not listed by hand).

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Stops a deserialisation once the field names are known.
#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stop")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

/// A deserializer that records the fields a struct asks for.
struct Fields<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for Fields<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = fields;
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The keys of struct `T` as serde reads them.
fn keys<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

#[test]
fn every_key_of_the_config_types_has_a_row_in_docs_config_md() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/config.md")).unwrap();
    let sections = [
        ("data", keys::<mtl_trainer::DataConfig>()),
        ("train", keys::<mtl_trainer::TrainSettings>()),
        ("metrics", keys::<mtl_trainer::MetricsConfig>()),
    ];
    let mut missing = Vec::new();
    for (section, fields) in sections {
        assert!(fields.len() > 1 || section == "metrics", "{section}: {fields:?}");
        assert!(doc.contains(&format!("## `[{section}]`")), "{section}");
        for field in fields {
            let row = format!("| `{section}.{field}` |");
            if !doc.contains(&row) {
                missing.push(format!("{section}.{field}"));
            }
        }
    }
    // the top level: `schema` and `base` (read before the tables, by the composer), and a
    // heading per table
    for key in ["schema", "base"] {
        if !doc.contains(&format!("| `{key}` |")) {
            missing.push(key.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "keys without a row in docs/config.md: {missing:?}"
    );
    // the doc names no key the types do not have
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let key = line.split('`').nth(1).unwrap();
        let known = match key.split_once('.') {
            Some((section, field)) => sections.iter().any(|(s, f)| *s == section && f.contains(&field)),
            None => ["schema", "base"].contains(&key),
        };
        assert!(
            known,
            "docs/config.md documents `{key}`, which no config type has"
        );
    }
}
