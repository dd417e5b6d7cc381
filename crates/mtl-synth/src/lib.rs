//! # mtl-synth
//!
//! Synthetic multi-task data with a known ground truth, for `mtl gen-data`, xtask's quality
//! checks and the tests: click/conversion data shaped like Ali-CCP ([`generate_ccp`]), a
//! conversion chain of N steps ([`generate_chain`]), the MMoE paper's regression pair
//! ([`generate_mmoe_synthetic`]) and clicks driven by a behaviour history ([`generate_interest`]). Each writes train/validation/test CSV files and a schema
//! built with `mtl-features`' schema types. Settings are checked first; a bad one is a
//! [`SynthError::Invalid`] naming the setting.
//!
//! ## Click/conversion data
//! Shaped like Ali-CCP.
//!
//! User and item sparse fields draw ids with Zipf-like frequencies (a random permutation of
//! the vocabulary decides which ids are popular). Labels come from a hidden model with
//! per-id effects and user×item interactions:
//!
//! ```text
//! logit_click = b_c + Σ_fields a[id] + ⟨Σ_user P[id], Σ_item Q[id]⟩
//! logit_cvr   = b_v + Σ_fields c[id] + ⟨Σ_user P'[id], Σ_item Q'[id]⟩ + 0.5·logit_click-part
//! click ~ Bernoulli(σ(logit_click)),  purchase ~ Bernoulli(σ(logit_cvr)) only if clicked
//! ```
//!
//! `p_click` and `p_cvr` (conversion given a click, defined on every impression) are written
//! with every row, so the entire-space quality of a predicted CVR can be scored. The
//! intercepts are calibrated on a pilot sample so that the click rate and the conversion rate
//! among clicks hit their targets. Output is streamed: rows are generated and written one at
//! a time, and the same seed gives the same bytes.

mod interest;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use mtl_features::{DenseField, LabelField, LabelKind, Schema, SparseField};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;

pub use interest::{InterestSpec, generate_interest};

/// A generator's error: a setting out of its range, or a file that could not be written.
#[derive(Debug, Error)]
pub enum SynthError {
    /// A setting that cannot work, named as the spec names it (`rows`, `dense`, `steps`,
    /// `correlation`), with the value given where there is one.
    #[error("{}: {message}", setting_and_value(setting, value.as_deref()))]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// The value given.
        value: Option<String>,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// Writing the files failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `setting = value`, or the setting alone.
fn setting_and_value(setting: &str, value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{setting} = {v}"),
        None => setting.to_string(),
    }
}

/// A setting out of its range.
fn invalid(setting: &'static str, value: Option<String>, message: String) -> SynthError {
    SynthError::Invalid {
        setting,
        value,
        message,
    }
}

/// Parameters of the generator.
#[derive(Debug, Clone, PartialEq)]
pub struct CcpSpec {
    /// Rows to write in total (split 80/10/10 into train/val/test).
    pub rows: usize,
    /// Random seed.
    pub seed: u64,
    /// Vocabulary size of each user field (`u0`, `u1`, …).
    pub user_vocab: Vec<usize>,
    /// Vocabulary size of each item field (`i0`, `i1`, …).
    pub item_vocab: Vec<usize>,
    /// Number of dense fields (`d0`, …), each a noisy function of the click logit.
    pub dense: usize,
    /// Target click rate.
    pub click_rate: f64,
    /// Target conversion rate among clicks.
    pub cvr_rate: f64,
    /// Embedding width to write into the schema.
    pub embed_dim: usize,
}

impl CcpSpec {
    /// The peer's field layout (vocabularies 10 … 100,000), two dense fields.
    pub fn new(rows: usize, seed: u64) -> Self {
        Self {
            rows,
            seed,
            user_vocab: vec![100_000, 50_000, 20_000, 5_000, 1_000, 500, 100, 50, 20, 10],
            item_vocab: vec![100_000, 30_000, 10_000, 2_000, 1_000, 300, 100, 40, 20, 10],
            dense: 2,
            click_rate: 0.04,
            cvr_rate: 0.05,
            embed_dim: 16,
        }
    }

    /// A small layout for quick runs and tests (vocabularies 10 … 1,000).
    pub fn small(rows: usize, seed: u64) -> Self {
        Self {
            user_vocab: vec![1_000, 200, 50, 10],
            item_vocab: vec![500, 100, 20],
            dense: 1,
            click_rate: 0.1,
            cvr_rate: 0.2,
            ..Self::new(rows, seed)
        }
    }
}

/// The files one generation wrote.
#[derive(Debug, Clone)]
pub struct CcpFiles {
    /// Training rows (80 %).
    pub train: PathBuf,
    /// Validation rows (10 %).
    pub val: PathBuf,
    /// Test rows (10 %).
    pub test: PathBuf,
    /// Schema TOML that `mtl-cli train` reads as is.
    pub schema: PathBuf,
    /// Observed click rate.
    pub click_rate: f64,
    /// Observed conversion rate among clicks.
    pub cvr_rate: f64,
}

const LATENT: usize = 4;
const EFFECT_SD: f64 = 0.35;

fn normal(rng: &mut StdRng) -> f64 {
    // Box–Muller
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

struct Field {
    cdf: Vec<f64>,
    perm: Vec<u32>,
    /// Per funnel step, the id's additive effect on that step's logit.
    effects: Vec<Vec<f32>>,
    /// Per funnel step, the id's latent vector in that step's user×item interaction.
    latents: Vec<Vec<[f32; LATENT]>>,
}

impl Field {
    fn new(vocab: usize, steps: usize, rng: &mut StdRng) -> Self {
        let mut cdf = Vec::with_capacity(vocab);
        let mut acc = 0.0;
        for r in 0..vocab {
            acc += 1.0 / (r as f64 + 1.0).powf(1.05);
            cdf.push(acc);
        }
        for x in &mut cdf {
            *x /= acc;
        }
        let mut perm: Vec<u32> = (0..vocab as u32).collect();
        for i in (1..vocab).rev() {
            let j = rng.random_range(0..=i);
            perm.swap(i, j);
        }
        let effects = (0..steps)
            .map(|_| (0..vocab).map(|_| (normal(rng) * EFFECT_SD) as f32).collect())
            .collect();
        let latents = (0..steps)
            .map(|_| {
                (0..vocab)
                    .map(|_| std::array::from_fn(|_| (normal(rng) * 0.35) as f32))
                    .collect()
            })
            .collect();
        Self {
            cdf,
            perm,
            effects,
            latents,
        }
    }

    fn draw(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.random();
        let rank = self.cdf.partition_point(|&x| x < u).min(self.cdf.len() - 1);
        self.perm[rank] as usize
    }
}

struct Truth {
    users: Vec<Field>,
    items: Vec<Field>,
    dense_w: Vec<f64>,
    steps: usize,
}

struct Row {
    ids: Vec<usize>,
    /// Per funnel step, the logit without its intercept.
    parts: Vec<f64>,
}

/// Draws one id per field of one side (user or item): pushes the ids, adds their effects to
/// each step's `parts`, and returns each step's summed latent vector.
fn draw_side(
    fields: &[Field],
    rng: &mut StdRng,
    ids: &mut Vec<usize>,
    parts: &mut [f64],
) -> Vec<[f64; LATENT]> {
    let mut latent = vec![[0f64; LATENT]; parts.len()];
    for f in fields {
        let id = f.draw(rng);
        for (s, part) in parts.iter_mut().enumerate() {
            *part += f64::from(f.effects[s][id]);
        }
        for (s, sum) in latent.iter_mut().enumerate() {
            for (k, x) in sum.iter_mut().enumerate() {
                *x += f64::from(f.latents[s][id][k]);
            }
        }
        ids.push(id);
    }
    latent
}

impl Truth {
    fn row(&self, rng: &mut StdRng) -> Row {
        let mut ids = Vec::with_capacity(self.users.len() + self.items.len());
        let mut parts = vec![0.0; self.steps];
        let pu = draw_side(&self.users, rng, &mut ids, &mut parts);
        let qi = draw_side(&self.items, rng, &mut ids, &mut parts);
        for s in 0..self.steps {
            let dot = (0..LATENT).map(|k| pu[s][k] * qi[s][k]).sum::<f64>();
            parts[s] += if s == 0 { dot } else { dot + 0.5 * parts[s - 1] };
        }
        Row { ids, parts }
    }
}

/// The train/val/test files of one generation, written row by row (80/10/10 by row index).
struct SplitWriter {
    paths: [PathBuf; 3],
    writers: Vec<BufWriter<File>>,
}

impl SplitWriter {
    fn create(out: &Path, prefix: &str, header: &str) -> std::io::Result<Self> {
        let paths = ["train", "val", "test"].map(|s| out.join(format!("{prefix}_{s}.csv")));
        let mut writers = Vec::new();
        for path in &paths {
            let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
            w.write_all(header.as_bytes())?;
            writers.push(w);
        }
        Ok(Self { paths, writers })
    }

    fn write(&mut self, row: usize, line: &str) -> std::io::Result<()> {
        let split = match row % 10 {
            8 => 1,
            9 => 2,
            _ => 0,
        };
        self.writers[split].write_all(line.as_bytes())
    }

    fn finish(self) -> std::io::Result<[PathBuf; 3]> {
        for mut w in self.writers {
            w.flush()?;
        }
        Ok(self.paths)
    }
}

/// Finds `b` with mean σ(b + x) = target over the pilot logits (bisection).
fn calibrate(parts: &[f64], target: f64) -> f64 {
    let (mut lo, mut hi) = (-30.0, 30.0);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        let mean = parts.iter().map(|x| sigmoid(mid + x)).sum::<f64>() / parts.len() as f64;
        if mean < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The most rows a generator writes in one call (a guard against a typo that would write
/// for hours).
pub const MAX_ROWS: usize = 1_000_000_000;
/// The most dense fields the click/conversion generator writes.
pub const MAX_DENSE: usize = 1024;

/// Checks a row count: at least 10 (one row per split), at most [`MAX_ROWS`].
fn check_rows(rows: usize) -> Result<(), SynthError> {
    if !(10..=MAX_ROWS).contains(&rows) {
        return Err(invalid(
            "rows",
            Some(rows.to_string()),
            format!("must be between 10 (the 80/10/10 split needs a row in each file) and {MAX_ROWS}"),
        ));
    }
    Ok(())
}

impl CcpSpec {
    /// Checks the settings that can be wrong, naming the setting and the range.
    pub fn check(&self) -> Result<(), SynthError> {
        check_rows(self.rows)?;
        if self.dense > MAX_DENSE {
            return Err(invalid(
                "dense",
                Some(self.dense.to_string()),
                format!("must be at most {MAX_DENSE}"),
            ));
        }
        Ok(())
    }
}

/// Writes `<out>/<prefix>_{train,val,test}.csv` and `<out>/<prefix>_schema.toml`.
pub fn generate_ccp(spec: &CcpSpec, out: &Path, prefix: &str) -> Result<CcpFiles, SynthError> {
    spec.check()?;
    let steps = [("click", spec.click_rate), ("purchase", spec.cvr_rate)];
    let written = generate_funnel(
        spec,
        &steps,
        &["p_click", "p_cvr"],
        "click/conversion",
        out,
        prefix,
    )?;
    let [train, val, test, schema] = written.paths;
    Ok(CcpFiles {
        train,
        val,
        test,
        schema,
        click_rate: written.rates[0],
        cvr_rate: written.rates[1],
    })
}

/// One step of a conversion chain: its label's name and its target rate among the rows where
/// the previous step happened (among all impressions for the first step).
#[derive(Debug, Clone, PartialEq)]
pub struct StepRate {
    /// The step's label name (`click`, `cart`, `purchase`).
    pub name: String,
    /// Target rate given the previous step.
    pub rate: f64,
}

impl std::str::FromStr for StepRate {
    type Err = String;

    /// `name:rate`, e.g. `cart:0.3`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (name, rate) = text
            .split_once(':')
            .ok_or_else(|| format!("`{text}` is not `name:rate` (e.g. `cart:0.3`)"))?;
        let rate: f64 = rate
            .trim()
            .parse()
            .map_err(|e| format!("`{text}`: the rate `{rate}` is not a number: {e}"))?;
        Ok(Self {
            name: name.trim().to_string(),
            rate,
        })
    }
}

/// Parameters of the conversion-chain generator: the fields of [`CcpSpec`] (its two rates
/// unused) and the chain's steps.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainSpec {
    /// Rows, seed, vocabularies, dense fields and embedding width.
    pub fields: CcpSpec,
    /// The steps in funnel order.
    pub steps: Vec<StepRate>,
}

/// The most steps a chain may have.
pub const MAX_STEPS: usize = 8;

impl ChainSpec {
    /// Checks rows, dense fields and steps: 2 to [`MAX_STEPS`] steps with distinct names made
    /// of letters, digits and `_` (they become CSV columns and label names), rates in (0, 1).
    pub fn check(&self) -> Result<(), SynthError> {
        self.fields.check()?;
        if !(2..=MAX_STEPS).contains(&self.steps.len()) {
            return Err(invalid(
                "steps",
                None,
                format!("{} given, a chain has 2 to {MAX_STEPS} steps", self.steps.len()),
            ));
        }
        for (i, step) in self.steps.iter().enumerate() {
            let ok = !step.name.is_empty()
                && step.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !step.name.starts_with("p_");
            if !ok {
                return Err(invalid(
                    "steps",
                    None,
                    format!(
                        "step {} is named `{}`; a name is letters, digits and `_`, not starting with `p_`",
                        i + 1,
                        step.name
                    ),
                ));
            }
            if self.steps[..i].iter().any(|s| s.name == step.name) {
                return Err(invalid("steps", None, format!("`{}` appears twice", step.name)));
            }
            let f = &self.fields;
            let columns = [
                ("u", f.user_vocab.len()),
                ("i", f.item_vocab.len()),
                ("d", f.dense),
            ];
            if columns
                .iter()
                .any(|(p, n)| (0..*n).any(|k| step.name == format!("{p}{k}")))
            {
                return Err(invalid(
                    "steps",
                    None,
                    format!(
                        "`{}` is also a feature column the generator writes (u0…, i0…, d0…): name the step otherwise",
                        step.name
                    ),
                ));
            }
            if !(step.rate > 0.0 && step.rate < 1.0) {
                return Err(invalid(
                    "steps",
                    None,
                    format!(
                        "`{}:{}`: a rate must be between 0 and 1 (exclusive)",
                        step.name, step.rate
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The truth column of each step: `p_<first>`, then `p_<step>_given_<previous>`.
    pub fn truth_columns(&self) -> Vec<String> {
        self.steps
            .iter()
            .enumerate()
            .map(|(i, s)| match i {
                0 => format!("p_{}", s.name),
                _ => format!("p_{}_given_{}", s.name, self.steps[i - 1].name),
            })
            .collect()
    }
}

/// The files of one chain generation.
#[derive(Debug, Clone)]
pub struct ChainFiles {
    /// Training rows (80 %).
    pub train: PathBuf,
    /// Validation rows (10 %).
    pub val: PathBuf,
    /// Test rows (10 %).
    pub test: PathBuf,
    /// Schema TOML, one binary label per step.
    pub schema: PathBuf,
    /// Per step, the observed rate among rows where the previous step happened.
    pub rates: Vec<f64>,
}

/// Writes a conversion chain (`impression → step 1 → … → step N`) to
/// `<out>/<prefix>_{train,val,test}.csv` and `<out>/<prefix>_schema.toml`. Every row carries
/// its labels (a step happens only after the previous one) and, per step, the true
/// probability of that step given the previous one ([`ChainSpec::truth_columns`]), defined on
/// every row. Step k's logit has its own per-id effects and user×item interaction plus half of
/// step k−1's logit. With steps `click`, `purchase` it draws the same rows as
/// [`generate_ccp`].
pub fn generate_chain(spec: &ChainSpec, out: &Path, prefix: &str) -> Result<ChainFiles, SynthError> {
    spec.check()?;
    let steps: Vec<(&str, f64)> = spec.steps.iter().map(|s| (s.name.as_str(), s.rate)).collect();
    let truth = spec.truth_columns();
    let truth: Vec<&str> = truth.iter().map(String::as_str).collect();
    let written = generate_funnel(&spec.fields, &steps, &truth, "conversion-chain", out, prefix)?;
    let [train, val, test, schema] = written.paths;
    Ok(ChainFiles {
        train,
        val,
        test,
        schema,
        rates: written.rates,
    })
}

/// What [`generate_funnel`] wrote: train, val, test, schema; observed conditional rates.
struct Funnel {
    paths: [PathBuf; 4],
    rates: Vec<f64>,
}

/// The generator behind [`generate_ccp`] and [`generate_chain`]: `steps` are (label, target
/// rate given the previous step), `truth` the column names of the true conditionals.
fn generate_funnel(
    spec: &CcpSpec,
    steps: &[(&str, f64)],
    truth_names: &[&str],
    what: &str,
    out: &Path,
    prefix: &str,
) -> Result<Funnel, SynthError> {
    std::fs::create_dir_all(out)?;
    let n = steps.len();
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let users: Vec<Field> = spec
        .user_vocab
        .iter()
        .map(|&v| Field::new(v, n, &mut rng))
        .collect();
    let items: Vec<Field> = spec
        .item_vocab
        .iter()
        .map(|&v| Field::new(v, n, &mut rng))
        .collect();
    let dense_w: Vec<f64> = (0..spec.dense).map(|_| normal(&mut rng)).collect();
    let truth = Truth {
        users,
        items,
        dense_w,
        steps: n,
    };
    let intercepts = funnel_intercepts(&truth, steps, spec.seed);
    let header = funnel_header(spec, steps, truth_names);
    let mut files = SplitWriter::create(out, prefix, &header)?;
    let mut counts = vec![0u64; n];
    let mut line = String::with_capacity(256);
    let mut probs = vec![0.0; n];
    for r in 0..spec.rows {
        let row = truth.row(&mut rng);
        line.clear();
        use std::fmt::Write as _;
        let mut happened = true;
        for s in 0..n {
            probs[s] = sigmoid(intercepts[s] + row.parts[s]);
            happened = happened && rng.random::<f64>() < probs[s];
            counts[s] += u64::from(happened);
            let sep = if s == 0 { "" } else { "," };
            let _ = write!(line, "{sep}{}", u8::from(happened));
        }
        for id in &row.ids {
            let _ = write!(line, ",{id}");
        }
        for w in &truth.dense_w {
            let _ = write!(line, ",{:.5}", w * row.parts[0] + 0.5 * normal(&mut rng));
        }
        for p in &probs {
            let _ = write!(line, ",{p:.6}");
        }
        line.push('\n');
        files.write(r, &line)?;
    }
    let [train, val, test] = files.finish()?;

    let schema_path = out.join(format!("{prefix}_schema.toml"));
    std::fs::write(&schema_path, funnel_schema(spec, steps, what))?;
    let rates = (0..n)
        .map(|s| counts[s] as f64 / if s == 0 { spec.rows as u64 } else { counts[s - 1] }.max(1) as f64)
        .collect();
    Ok(Funnel {
        paths: [train, val, test, schema_path],
        rates,
    })
}

/// Each step's logit intercept, so that step k happens at its rate among the rows where step
/// k−1 did: calibrated on a pilot sample drawn from its own stream (seeded from `seed`), each
/// pilot row weighed by the chance it got to step k.
fn funnel_intercepts(truth: &Truth, steps: &[(&str, f64)], seed: u64) -> Vec<f64> {
    let mut pilot_rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let pilot: Vec<Row> = (0..20_000).map(|_| truth.row(&mut pilot_rng)).collect();
    let mut intercepts = vec![calibrate(
        &pilot.iter().map(|r| r.parts[0]).collect::<Vec<_>>(),
        steps[0].1,
    )];
    for (s, &(_, rate)) in steps.iter().enumerate().skip(1) {
        let reach: Vec<f64> = pilot
            .iter()
            .map(|r| (0..s).fold(1.0, |w, i| w * sigmoid(intercepts[i] + r.parts[i])))
            .collect();
        let (mut lo, mut hi) = (-30.0, 30.0);
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            let (mut num, mut den) = (0.0, 0.0);
            for (r, w) in pilot.iter().zip(&reach) {
                num += w * sigmoid(mid + r.parts[s]);
                den += w;
            }
            if num / den < rate {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        intercepts.push(0.5 * (lo + hi));
    }

    intercepts
}

/// The CSV header of a funnel's files: the steps' labels, the user, item and dense fields,
/// and the true probabilities.
fn funnel_header(spec: &CcpSpec, steps: &[(&str, f64)], truth_names: &[&str]) -> String {
    let mut header = steps.iter().map(|s| s.0).collect::<Vec<_>>().join(",");
    for k in 0..spec.user_vocab.len() {
        header += &format!(",u{k}");
    }
    for k in 0..spec.item_vocab.len() {
        header += &format!(",i{k}");
    }
    for k in 0..spec.dense {
        header += &format!(",d{k}");
    }
    header += &format!(",{}\n", truth_names.join(","));
    header
}

/// The schema TOML of a funnel's files.
fn funnel_schema(spec: &CcpSpec, steps: &[(&str, f64)], what: &str) -> String {
    let mut schema = Schema::new(spec.embed_dim);
    let group = |mut field: SparseField, group: &str| {
        field.group = Some(group.to_string());
        field
    };
    for (k, &v) in spec.user_vocab.iter().enumerate() {
        schema
            .sparse
            .push(group(SparseField::new(&format!("u{k}"), v), "user"));
    }
    for (k, &v) in spec.item_vocab.iter().enumerate() {
        schema
            .sparse
            .push(group(SparseField::new(&format!("i{k}"), v), "item"));
    }
    for k in 0..spec.dense {
        let mut field = DenseField::new(&format!("d{k}"));
        field.standardize = true;
        schema.dense.push(field);
    }
    for (name, _) in steps {
        schema.labels.push(LabelField::new(name, LabelKind::Binary));
    }
    format!(
        "# Schema of synthetic {what} data (seed {}, {} rows).\n{}",
        spec.seed,
        spec.rows,
        schema.to_toml()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_written_is_the_spec_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = CcpSpec::small(200, 4);
        spec.dense = 2;
        let files = generate_ccp(&spec, dir.path(), "s").unwrap();
        let text = std::fs::read_to_string(&files.schema).unwrap();
        assert!(
            text.starts_with("# Schema of synthetic click/conversion data (seed 4, 200 rows).\n"),
            "{text}"
        );
        let schema = Schema::from_file(&files.schema).unwrap().schema;
        assert_eq!(schema.embed_dim, spec.embed_dim);
        let sparse: Vec<(String, Option<usize>, Option<String>)> = schema
            .sparse
            .iter()
            .map(|f| (f.name.clone(), f.vocab_size, f.group.clone()))
            .collect();
        let mut want = Vec::new();
        for (k, &v) in spec.user_vocab.iter().enumerate() {
            want.push((format!("u{k}"), Some(v), Some("user".to_string())));
        }
        for (k, &v) in spec.item_vocab.iter().enumerate() {
            want.push((format!("i{k}"), Some(v), Some("item".to_string())));
        }
        assert_eq!(sparse, want);
        let dense: Vec<(&str, bool)> = schema
            .dense
            .iter()
            .map(|f| (f.name.as_str(), f.standardize))
            .collect();
        assert_eq!(dense, [("d0", true), ("d1", true)]);
        let labels: Vec<(&str, LabelKind)> =
            schema.labels.iter().map(|l| (l.name.as_str(), l.kind)).collect();
        assert_eq!(
            labels,
            [("click", LabelKind::Binary), ("purchase", LabelKind::Binary)]
        );
        // the columns the CSV files hold are the schema's, truth columns aside
        let header = std::fs::read_to_string(&files.train).unwrap();
        let header = header.lines().next().unwrap();
        assert_eq!(
            header,
            ["click", "purchase"]
                .into_iter()
                .chain(sparse.iter().map(|(n, _, _)| n.as_str()))
                .chain(["d0", "d1", "p_click", "p_cvr"])
                .collect::<Vec<_>>()
                .join(",")
        );
    }

    #[test]
    fn steps_parse_as_name_colon_rate() {
        assert_eq!(
            " cart :0.3".parse::<StepRate>().unwrap(),
            StepRate {
                name: "cart".into(),
                rate: 0.3
            }
        );
        assert_eq!(
            "cart".parse::<StepRate>().unwrap_err(),
            "`cart` is not `name:rate` (e.g. `cart:0.3`)"
        );
        assert_eq!(
            "cart:x".parse::<StepRate>().unwrap_err(),
            "`cart:x`: the rate `x` is not a number: invalid float literal"
        );
    }

    #[test]
    fn same_seed_same_bytes_and_rates_near_target() {
        let dir = tempfile::tempdir().unwrap();
        let spec = CcpSpec::small(20_000, 7);
        let a = generate_ccp(&spec, &dir.path().join("a"), "s").unwrap();
        let b = generate_ccp(&spec, &dir.path().join("b"), "s").unwrap();
        for (x, y) in [(&a.train, &b.train), (&a.test, &b.test), (&a.schema, &b.schema)] {
            assert_eq!(std::fs::read(x).unwrap(), std::fs::read(y).unwrap());
        }
        assert!((a.click_rate - 0.1).abs() < 0.02, "click rate {}", a.click_rate);
        assert!((a.cvr_rate - 0.2).abs() < 0.05, "cvr rate {}", a.cvr_rate);
        let text = std::fs::read_to_string(&a.train).unwrap();
        let mut lines = text.lines();
        assert!(lines.next().unwrap().ends_with("p_click,p_cvr"));
        assert_eq!(text.lines().count() - 1, 16_000);
        // conversions only after a click
        for line in lines {
            let mut cells = line.split(',');
            let (c, p) = (cells.next().unwrap(), cells.next().unwrap());
            assert!(!(c == "0" && p == "1"), "{line}");
        }
        // a two-step chain named like the ccp data is the same rows
        let chain = ChainSpec {
            fields: spec.clone(),
            steps: vec![
                StepRate {
                    name: "click".into(),
                    rate: 0.1,
                },
                StepRate {
                    name: "purchase".into(),
                    rate: 0.2,
                },
            ],
        };
        let two = generate_chain(&chain, &dir.path().join("d"), "s").unwrap();
        let body = |p: &Path| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .skip(1)
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(body(&two.train), body(&a.train));
        assert_eq!(two.rates, vec![a.click_rate, a.cvr_rate]);
        let other = generate_ccp(&CcpSpec::small(20_000, 8), &dir.path().join("c"), "s").unwrap();
        assert_ne!(
            std::fs::read(&a.train).unwrap(),
            std::fs::read(&other.train).unwrap()
        );
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    fn spec(names: &[(&str, f64)], rows: usize) -> ChainSpec {
        ChainSpec {
            fields: CcpSpec::small(rows, 11),
            steps: names
                .iter()
                .map(|&(n, r)| StepRate {
                    name: n.into(),
                    rate: r,
                })
                .collect(),
        }
    }

    #[test]
    fn steps_nest_rates_hit_targets_and_truth_matches_the_labels() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(&[("click", 0.2), ("cart", 0.3), ("purchase", 0.4)], 60_000);
        let files = generate_chain(&s, dir.path(), "c").unwrap();
        for (rate, target) in files.rates.iter().zip([0.2, 0.3, 0.4]) {
            assert!((rate - target).abs() < 0.03, "rate {rate} vs {target}");
        }
        let text = std::fs::read_to_string(&files.train).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(&header[..3], ["click", "cart", "purchase"]);
        assert_eq!(
            &header[header.len() - 3..],
            ["p_click", "p_cart_given_click", "p_purchase_given_cart"]
        );
        // per step: among rows that reached the previous step, the step's frequency equals
        // the mean of its true conditional probability (within sampling error)
        let (mut reached, mut happened, mut truth) = ([0f64; 3], [0f64; 3], [0f64; 3]);
        for line in lines {
            let cells: Vec<&str> = line.split(',').collect();
            let labels: Vec<u8> = cells[..3].iter().map(|c| c.parse().unwrap()).collect();
            let probs: Vec<f64> = cells[cells.len() - 3..]
                .iter()
                .map(|c| c.parse().unwrap())
                .collect();
            for k in 0..3 {
                assert!(probs[k] > 0.0 && probs[k] < 1.0);
                let prev = k == 0 || labels[k - 1] == 1;
                assert!(prev || labels[k] == 0, "step {k} without step {}: {line}", k - 1);
                if prev {
                    reached[k] += 1.0;
                    happened[k] += f64::from(labels[k]);
                    truth[k] += probs[k];
                }
            }
        }
        for k in 0..3 {
            let (freq, mean) = (happened[k] / reached[k], truth[k] / reached[k]);
            let se = (mean * (1.0 - mean) / reached[k]).sqrt();
            assert!(
                (freq - mean).abs() < 4.0 * se,
                "step {k}: frequency {freq}, mean truth {mean}"
            );
        }
    }

    #[test]
    fn bad_steps_are_refused_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        for (steps, needle) in [
            (&[("click", 0.1)][..], "2 to 8 steps"),
            (&[("click", 0.1), ("click", 0.2)][..], "appears twice"),
            (&[("click", 0.1), ("buy", 1.0)][..], "between 0 and 1"),
            (&[("click", 0.1), ("p_buy", 0.2)][..], "letters, digits"),
            (&[("click", 0.1), ("a b", 0.2)][..], "letters, digits"),
            (&[("click", 0.1), ("u0", 0.2)][..], "also a feature column"),
            (&[("d0", 0.1), ("buy", 0.2)][..], "also a feature column"),
        ] {
            let err = generate_chain(&spec(steps, 100), dir.path(), "x").unwrap_err();
            assert!(
                matches!(&err, SynthError::Invalid { setting: "steps", message, .. } if message.contains(needle)),
                "{err}"
            );
            assert!(err.to_string().starts_with("steps: "), "{err}");
        }
    }
}

/// Parameters of the MMoE paper's synthetic regression pair (Ma et al., KDD 2018, §4.1).
#[derive(Debug, Clone, PartialEq)]
pub struct MmoeSynthSpec {
    /// Rows in total (split 80/10/10).
    pub rows: usize,
    /// Random seed.
    pub seed: u64,
    /// Pearson correlation P between the two tasks' weight vectors.
    pub correlation: f64,
    /// Input dimension d (paper: 100).
    pub dim: usize,
    /// Scale c of the weight vectors (not given in the paper; 1.0 here).
    pub scale: f64,
    /// Number m of sine terms (not given in the paper; 10 here), α_j, β_j ~ N(0, 1).
    pub sines: usize,
    /// Noise standard deviation (paper: ε ~ N(0, 0.01), i.e. sd 0.1).
    pub noise_sd: f64,
}

impl MmoeSynthSpec {
    /// The paper's setting with the open constants chosen here: d = 100, c = 1, m = 10.
    pub fn new(rows: usize, seed: u64, correlation: f64) -> Self {
        Self {
            rows,
            seed,
            correlation,
            dim: 100,
            scale: 1.0,
            sines: 10,
            noise_sd: 0.1,
        }
    }
}

/// Writes `<out>/<prefix>_{train,val,test}.csv` (columns `x0..x{d-1}`, `y1`, `y2`) and a schema:
/// orthonormal u1, u2; w1 = c·u1, w2 = c(P·u1 + √(1−P²)·u2); x ~ N(0, I);
/// y_i = w_iᵀx + Σ_j sin(α_j w_iᵀx + β_j) + ε.
pub fn generate_mmoe_synthetic(
    spec: &MmoeSynthSpec,
    out: &Path,
    prefix: &str,
) -> Result<[PathBuf; 4], SynthError> {
    check_rows(spec.rows)?;
    if !(spec.correlation.is_finite() && (-1.0..=1.0).contains(&spec.correlation)) {
        return Err(invalid(
            "correlation",
            Some(spec.correlation.to_string()),
            "must be between -1 and 1".into(),
        ));
    }
    std::fs::create_dir_all(out)?;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let d = spec.dim;
    // Gram–Schmidt on two Gaussian vectors
    let mut u1: Vec<f64> = (0..d).map(|_| normal(&mut rng)).collect();
    let n1 = u1.iter().map(|x| x * x).sum::<f64>().sqrt();
    u1.iter_mut().for_each(|x| *x /= n1);
    let mut u2: Vec<f64> = (0..d).map(|_| normal(&mut rng)).collect();
    let dot: f64 = u1.iter().zip(&u2).map(|(a, b)| a * b).sum();
    u2.iter_mut().zip(&u1).for_each(|(b, a)| *b -= dot * a);
    let n2 = u2.iter().map(|x| x * x).sum::<f64>().sqrt();
    u2.iter_mut().for_each(|x| *x /= n2);
    let p = spec.correlation.clamp(-1.0, 1.0);
    let q = (1.0 - p * p).max(0.0).sqrt();
    let w1: Vec<f64> = u1.iter().map(|a| spec.scale * a).collect();
    let w2: Vec<f64> = u1
        .iter()
        .zip(&u2)
        .map(|(a, b)| spec.scale * (p * a + q * b))
        .collect();
    let alpha: Vec<f64> = (0..spec.sines).map(|_| normal(&mut rng)).collect();
    let beta: Vec<f64> = (0..spec.sines).map(|_| normal(&mut rng)).collect();

    let mut header: String = (0..d).map(|k| format!("x{k},")).collect();
    header += "y1,y2\n";
    let mut files = SplitWriter::create(out, prefix, &header)?;
    let mut line = String::with_capacity(d * 10);
    let mut x = vec![0.0; d];
    for r in 0..spec.rows {
        for v in &mut x {
            *v = normal(&mut rng);
        }
        let y = |w: &[f64], rng: &mut StdRng| {
            let s: f64 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
            s + alpha
                .iter()
                .zip(&beta)
                .map(|(a, b)| (a * s + b).sin())
                .sum::<f64>()
                + spec.noise_sd * normal(rng)
        };
        let (y1, y2) = (y(&w1, &mut rng), y(&w2, &mut rng));
        line.clear();
        use std::fmt::Write as _;
        for v in &x {
            let _ = write!(line, "{v:.5},");
        }
        let _ = writeln!(line, "{y1:.6},{y2:.6}");
        files.write(r, &line)?;
    }
    let paths = files.finish()?;
    let schema_path = out.join(format!("{prefix}_schema.toml"));
    let mut schema = Schema::new(mtl_features::schema::DEFAULT_EMBED_DIM);
    schema.dense = (0..d).map(|k| DenseField::new(&format!("x{k}"))).collect();
    schema.labels = ["y1", "y2"]
        .iter()
        .map(|name| LabelField::new(name, LabelKind::Regression))
        .collect();
    let schema = format!(
        "# MMoE synthetic regression pair: correlation {p}, d = {d}, c = {}, m = {}, seed {}.\n{}",
        spec.scale,
        spec.sines,
        spec.seed,
        schema.to_toml()
    );
    std::fs::write(&schema_path, schema)?;
    let [a, b, c] = paths;
    Ok([a, b, c, schema_path])
}

#[cfg(test)]
mod mmoe_tests {
    use super::*;

    fn column(text: &str, name: &str) -> Vec<f64> {
        let mut lines = text.lines();
        let k = lines.next().unwrap().split(',').position(|h| h == name).unwrap();
        lines
            .map(|l| l.split(',').nth(k).unwrap().parse().unwrap())
            .collect()
    }

    fn pearson(a: &[f64], b: &[f64]) -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
        cov / (va * vb).sqrt()
    }

    #[test]
    fn label_correlation_follows_the_weight_correlation() {
        let dir = tempfile::tempdir().unwrap();
        let mut corr = Vec::new();
        for p in [1.0, 0.5, 0.0] {
            let [train, ..] = generate_mmoe_synthetic(
                &MmoeSynthSpec::new(4000, 3, p),
                &dir.path().join(format!("{p}")),
                "m",
            )
            .unwrap();
            let text = std::fs::read_to_string(train).unwrap();
            corr.push(pearson(&column(&text, "y1"), &column(&text, "y2")));
        }
        // P = 1: identical weights, only the noise differs; correlation falls as P falls
        assert!(corr[0] > 0.95, "{corr:?}");
        assert!(corr[0] > corr[1] && corr[1] > corr[2], "{corr:?}");
        assert!(corr[2].abs() < 0.2, "{corr:?}");
    }
}
