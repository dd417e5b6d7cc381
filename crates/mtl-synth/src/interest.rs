//! Data where a click depends on whether the target item's category is among the categories
//! the user interacted with before — what DIN's target attention is for. Every item has one
//! category; a row holds a user, the target item, its category and a history of up to
//! `max_history` categories. Half the rows are given a history holding the target's category
//! (at a random position, among random others); the click is
//!
//! ```text
//! click ~ Bernoulli(σ(b + interest · [category ∈ history] + item effect))
//! ```
//!
//! with the true probability written as `p_click`. Mean pooling blurs the history into one
//! average; an attention queried by the target's category can find the match.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use mtl_features::schema::{AttentionKind, AttentionPooling, PoolingSpec, SequenceField};
use mtl_features::{LabelField, LabelKind, Schema, SparseField};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{SplitWriter, SynthError, check_rows, invalid, normal, sigmoid};

/// Settings of [`generate_interest`].
#[derive(Debug, Clone, PartialEq)]
pub struct InterestSpec {
    /// Rows in total (split 80/10/10).
    pub rows: usize,
    /// Random seed.
    pub seed: u64,
    /// Distinct users (a field with no effect on the click).
    pub users: usize,
    /// Distinct items.
    pub items: usize,
    /// Distinct categories.
    pub categories: usize,
    /// The longest history (lengths are uniform in `1..=max_history`).
    pub max_history: usize,
    /// The logit added when the target's category is in the history.
    pub interest: f64,
}

impl InterestSpec {
    /// 1,000 users, 2,000 items in 100 categories, histories up to 10, interest 2.5.
    pub fn new(rows: usize, seed: u64) -> Self {
        Self {
            rows,
            seed,
            users: 1000,
            items: 2000,
            categories: 100,
            max_history: 10,
            interest: 2.5,
        }
    }
}

/// Writes `<out>/<prefix>_{train,val,test}.csv` (columns `user, item, cat, hist_cat, click,
/// p_click`) and `<prefix>_schema.toml`, whose `hist_cat` is pooled by target attention
/// queried by `cat`; returns the four paths.
pub fn generate_interest(spec: &InterestSpec, out: &Path, prefix: &str) -> Result<[PathBuf; 4], SynthError> {
    check_rows(spec.rows)?;
    for (name, v) in [
        ("users", spec.users),
        ("items", spec.items),
        ("max_history", spec.max_history),
    ] {
        if v == 0 {
            return Err(invalid(name, Some("0".into()), "must be at least 1".into()));
        }
    }
    if spec.categories < 2 {
        return Err(invalid(
            "categories",
            Some(spec.categories.to_string()),
            "must be at least 2".into(),
        ));
    }
    std::fs::create_dir_all(out)?;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let category: Vec<usize> = (0..spec.items)
        .map(|_| rng.random_range(0..spec.categories))
        .collect();
    let item_effect: Vec<f64> = (0..spec.items).map(|_| 0.3 * normal(&mut rng)).collect();
    let mut files = SplitWriter::create(out, prefix, "user,item,cat,hist_cat,click,p_click\n")?;
    let (mut line, mut history) = (String::new(), Vec::new());
    for r in 0..spec.rows {
        let (user, item) = (rng.random_range(0..spec.users), rng.random_range(0..spec.items));
        let c = category[item];
        let len = rng.random_range(1..=spec.max_history);
        history.clear();
        while history.len() < len {
            let other = rng.random_range(0..spec.categories);
            if other != c {
                history.push(other);
            }
        }
        let interested = rng.random_bool(0.5);
        if interested {
            let at = rng.random_range(0..len);
            history[at] = c;
        }
        let p = sigmoid(-1.5 + spec.interest * f64::from(u8::from(interested)) + item_effect[item]);
        let click = rng.random_bool(p);
        line.clear();
        let hist: Vec<String> = history.iter().map(usize::to_string).collect();
        let _ = writeln!(
            line,
            "{user},{item},{c},{},{},{p:.6}",
            hist.join("|"),
            u8::from(click)
        );
        files.write(r, &line)?;
    }
    let [train, val, test] = files.finish()?;
    let schema_path = out.join(format!("{prefix}_schema.toml"));
    std::fs::write(&schema_path, interest_schema(spec))?;
    Ok([train, val, test, schema_path])
}

/// The schema of [`generate_interest`]'s files.
fn interest_schema(spec: &InterestSpec) -> String {
    let mut schema = Schema::new(mtl_features::schema::DEFAULT_EMBED_DIM);
    schema.sparse = vec![
        SparseField::new("user", spec.users),
        SparseField::new("item", spec.items),
        SparseField::new("cat", spec.categories),
    ];
    let mut hist = SequenceField::new("hist_cat", spec.max_history);
    (hist.fit, hist.shared_with) = (None, Some("cat".into()));
    hist.pooling = PoolingSpec::Attention(AttentionPooling {
        attention: AttentionKind::Target,
        query: vec!["cat".into()],
        softmax: false,
        dims: vec![36],
    });
    schema.sequence = vec![hist];
    schema.labels = vec![LabelField::new("click", LabelKind::Binary)];
    format!(
        "# Interest data: click depends on the target's category being in the history (interest {}, seed {}).\n{}",
        spec.interest,
        spec.seed,
        schema.to_toml()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_click_rate_is_higher_where_the_category_is_in_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let [train, .., schema] = generate_interest(&InterestSpec::new(20_000, 4), dir.path(), "i").unwrap();
        mtl_features::Schema::from_file(&schema).unwrap();
        let text = std::fs::read_to_string(train).unwrap();
        let (mut hits, mut misses) = ((0.0, 0.0), (0.0, 0.0));
        for line in text.lines().skip(1) {
            let cells: Vec<&str> = line.split(',').collect();
            let inside = cells[3].split('|').any(|h| h == cells[2]);
            let counts = if inside { &mut hits } else { &mut misses };
            counts.0 += cells[4].parse::<f64>().unwrap();
            counts.1 += 1.0;
        }
        // σ(−1.5 + 2.5) ≈ 0.73 and σ(−1.5) ≈ 0.18, about half the rows each
        let (hit_rate, miss_rate) = (hits.0 / hits.1, misses.0 / misses.1);
        assert!(
            (hit_rate - 0.73).abs() < 0.03 && (miss_rate - 0.18).abs() < 0.03,
            "{hit_rate} {miss_rate}"
        );
        assert!((hits.1 / (hits.1 + misses.1) - 0.5).abs() < 0.02);
    }
}
