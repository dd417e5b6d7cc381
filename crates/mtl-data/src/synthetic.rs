//! Synthetic click/conversion data with a known ground truth, shaped like Ali-CCP.
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

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
    a: Vec<f32>,
    c: Vec<f32>,
    p: Vec<[f32; LATENT]>,
    p2: Vec<[f32; LATENT]>,
}

impl Field {
    fn new(vocab: usize, rng: &mut StdRng) -> Self {
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
        let mut draw = |sd: f64| -> Vec<f32> { (0..vocab).map(|_| (normal(rng) * sd) as f32).collect() };
        let a = draw(EFFECT_SD);
        let c = draw(EFFECT_SD);
        let mut latent = || -> Vec<[f32; LATENT]> {
            (0..vocab)
                .map(|_| std::array::from_fn(|_| (normal(rng) * 0.35) as f32))
                .collect()
        };
        let p = latent();
        let p2 = latent();
        Self {
            cdf,
            perm,
            a,
            c,
            p,
            p2,
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
}

struct Row {
    ids: Vec<usize>,
    click_part: f64,
    cvr_part: f64,
}

impl Truth {
    fn row(&self, rng: &mut StdRng) -> Row {
        let mut ids = Vec::with_capacity(self.users.len() + self.items.len());
        let (mut click, mut cvr) = (0.0, 0.0);
        let (mut pu, mut qi, mut pu2, mut qi2) =
            ([0f64; LATENT], [0f64; LATENT], [0f64; LATENT], [0f64; LATENT]);
        for f in &self.users {
            let id = f.draw(rng);
            click += f64::from(f.a[id]);
            cvr += f64::from(f.c[id]);
            for k in 0..LATENT {
                pu[k] += f64::from(f.p[id][k]);
                pu2[k] += f64::from(f.p2[id][k]);
            }
            ids.push(id);
        }
        for f in &self.items {
            let id = f.draw(rng);
            click += f64::from(f.a[id]);
            cvr += f64::from(f.c[id]);
            for k in 0..LATENT {
                qi[k] += f64::from(f.p[id][k]);
                qi2[k] += f64::from(f.p2[id][k]);
            }
            ids.push(id);
        }
        click += (0..LATENT).map(|k| pu[k] * qi[k]).sum::<f64>();
        cvr += (0..LATENT).map(|k| pu2[k] * qi2[k]).sum::<f64>() + 0.5 * click;
        Row {
            ids,
            click_part: click,
            cvr_part: cvr,
        }
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

/// Writes `<out>/<prefix>_{train,val,test}.csv` and `<out>/<prefix>_schema.toml`.
pub fn generate_ccp(spec: &CcpSpec, out: &Path, prefix: &str) -> std::io::Result<CcpFiles> {
    std::fs::create_dir_all(out)?;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let users: Vec<Field> = spec.user_vocab.iter().map(|&v| Field::new(v, &mut rng)).collect();
    let items: Vec<Field> = spec.item_vocab.iter().map(|&v| Field::new(v, &mut rng)).collect();
    let dense_w: Vec<f64> = (0..spec.dense).map(|_| normal(&mut rng)).collect();
    let truth = Truth {
        users,
        items,
        dense_w,
    };

    // calibrate the intercepts on a pilot sample drawn from its own stream
    let mut pilot_rng = StdRng::seed_from_u64(spec.seed ^ 0x9e37_79b9_7f4a_7c15);
    let pilot: Vec<Row> = (0..20_000).map(|_| truth.row(&mut pilot_rng)).collect();
    let b_click = calibrate(
        &pilot.iter().map(|r| r.click_part).collect::<Vec<_>>(),
        spec.click_rate,
    );
    // conversion rate among clicks: weight the pilot rows by their click probability
    let (mut lo, mut hi) = (-30.0, 30.0);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        let (mut num, mut den) = (0.0, 0.0);
        for r in &pilot {
            let pc = sigmoid(b_click + r.click_part);
            num += pc * sigmoid(mid + r.cvr_part);
            den += pc;
        }
        if num / den < spec.cvr_rate {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let b_cvr = 0.5 * (lo + hi);

    let paths = ["train", "val", "test"].map(|s| out.join(format!("{prefix}_{s}.csv")));
    let mut writers = Vec::new();
    for p in &paths {
        writers.push(BufWriter::with_capacity(1 << 20, File::create(p)?));
    }
    let mut header = String::from("click,purchase");
    for k in 0..spec.user_vocab.len() {
        header += &format!(",u{k}");
    }
    for k in 0..spec.item_vocab.len() {
        header += &format!(",i{k}");
    }
    for k in 0..spec.dense {
        header += &format!(",d{k}");
    }
    header += ",p_click,p_cvr\n";
    for w in &mut writers {
        w.write_all(header.as_bytes())?;
    }
    let (mut clicks, mut buys) = (0u64, 0u64);
    let mut line = String::with_capacity(256);
    for r in 0..spec.rows {
        let row = truth.row(&mut rng);
        let p_click = sigmoid(b_click + row.click_part);
        let p_cvr = sigmoid(b_cvr + row.cvr_part);
        let click = rng.random::<f64>() < p_click;
        let buy = click && rng.random::<f64>() < p_cvr;
        clicks += u64::from(click);
        buys += u64::from(buy);
        line.clear();
        use std::fmt::Write as _;
        let _ = write!(line, "{},{}", u8::from(click), u8::from(buy));
        for id in &row.ids {
            let _ = write!(line, ",{id}");
        }
        for w in &truth.dense_w {
            let _ = write!(line, ",{:.5}", w * row.click_part + 0.5 * normal(&mut rng));
        }
        let _ = writeln!(line, ",{p_click:.6},{p_cvr:.6}");
        let split = match r % 10 {
            8 => 1,
            9 => 2,
            _ => 0,
        };
        writers[split].write_all(line.as_bytes())?;
    }
    for mut w in writers {
        w.flush()?;
    }

    let schema_path = out.join(format!("{prefix}_schema.toml"));
    let mut schema = format!(
        "# Schema of synthetic click/conversion data (seed {}, {} rows).\nembed_dim = {}\n\n",
        spec.seed, spec.rows, spec.embed_dim
    );
    for (k, v) in spec.user_vocab.iter().enumerate() {
        schema += &format!("[[sparse]]\nname = \"u{k}\"\nvocab_size = {v}\ngroup = \"user\"\n\n");
    }
    for (k, v) in spec.item_vocab.iter().enumerate() {
        schema += &format!("[[sparse]]\nname = \"i{k}\"\nvocab_size = {v}\ngroup = \"item\"\n\n");
    }
    for k in 0..spec.dense {
        schema += &format!("[[dense]]\nname = \"d{k}\"\nstandardize = true\n\n");
    }
    schema += "[[labels]]\nname = \"click\"\nkind = \"binary\"\n\n[[labels]]\nname = \"purchase\"\nkind = \"binary\"\n";
    std::fs::write(&schema_path, schema)?;
    let [train, val, test] = paths;
    Ok(CcpFiles {
        train,
        val,
        test,
        schema: schema_path,
        click_rate: clicks as f64 / spec.rows.max(1) as f64,
        cvr_rate: buys as f64 / clicks.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let other = generate_ccp(&CcpSpec::small(20_000, 8), &dir.path().join("c"), "s").unwrap();
        assert_ne!(
            std::fs::read(&a.train).unwrap(),
            std::fs::read(&other.train).unwrap()
        );
    }
}
