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

/// Draws one id per field of one side (user or item): pushes the ids, adds their effects to
/// `click` and `cvr`, and returns the summed latent vectors (P, P').
fn draw_side(
    fields: &[Field],
    rng: &mut StdRng,
    ids: &mut Vec<usize>,
    click: &mut f64,
    cvr: &mut f64,
) -> ([f64; LATENT], [f64; LATENT]) {
    let (mut p, mut p2) = ([0f64; LATENT], [0f64; LATENT]);
    for f in fields {
        let id = f.draw(rng);
        *click += f64::from(f.a[id]);
        *cvr += f64::from(f.c[id]);
        for k in 0..LATENT {
            p[k] += f64::from(f.p[id][k]);
            p2[k] += f64::from(f.p2[id][k]);
        }
        ids.push(id);
    }
    (p, p2)
}

impl Truth {
    fn row(&self, rng: &mut StdRng) -> Row {
        let mut ids = Vec::with_capacity(self.users.len() + self.items.len());
        let (mut click, mut cvr) = (0.0, 0.0);
        let (pu, pu2) = draw_side(&self.users, rng, &mut ids, &mut click, &mut cvr);
        let (qi, qi2) = draw_side(&self.items, rng, &mut ids, &mut click, &mut cvr);
        click += (0..LATENT).map(|k| pu[k] * qi[k]).sum::<f64>();
        cvr += (0..LATENT).map(|k| pu2[k] * qi2[k]).sum::<f64>() + 0.5 * click;
        Row {
            ids,
            click_part: click,
            cvr_part: cvr,
        }
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

/// An invalid generator setting, as the I/O error the generators return.
fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

/// Checks a row count: at least 10 (one row per split), at most [`MAX_ROWS`].
fn check_rows(rows: usize) -> std::io::Result<()> {
    if !(10..=MAX_ROWS).contains(&rows) {
        return Err(invalid(format!(
            "--rows {rows}: must be between 10 (the 80/10/10 split needs a row in each file) and {MAX_ROWS}"
        )));
    }
    Ok(())
}

impl CcpSpec {
    /// Checks the settings a command line can get wrong, naming the flag and the range.
    pub fn check(&self) -> std::io::Result<()> {
        check_rows(self.rows)?;
        if self.dense > MAX_DENSE {
            return Err(invalid(format!(
                "--dense {}: must be at most {MAX_DENSE}",
                self.dense
            )));
        }
        Ok(())
    }
}

/// Writes `<out>/<prefix>_{train,val,test}.csv` and `<out>/<prefix>_schema.toml`.
pub fn generate_ccp(spec: &CcpSpec, out: &Path, prefix: &str) -> std::io::Result<CcpFiles> {
    spec.check()?;
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
    let mut files = SplitWriter::create(out, prefix, &header)?;
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
        files.write(r, &line)?;
    }
    let paths = files.finish()?;

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
) -> std::io::Result<[PathBuf; 4]> {
    check_rows(spec.rows)?;
    if !(spec.correlation.is_finite() && (-1.0..=1.0).contains(&spec.correlation)) {
        return Err(invalid(format!(
            "--correlation {}: must be between -1 and 1",
            spec.correlation
        )));
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
    let mut schema = format!(
        "# MMoE synthetic regression pair: correlation {p}, d = {d}, c = {}, m = {}, seed {}.\n\n",
        spec.scale, spec.sines, spec.seed
    );
    for k in 0..d {
        schema += &format!("[[dense]]\nname = \"x{k}\"\n\n");
    }
    schema += "[[labels]]\nname = \"y1\"\nkind = \"regression\"\n\n[[labels]]\nname = \"y2\"\nkind = \"regression\"\n";
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
