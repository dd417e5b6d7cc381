//! Catch-up's replay of the steps a row missed (zero data gradient), exactly or in strides.
//!
//! A row no batch used still moves under dense Adam: its momentum keeps acting and weight
//! decay acts every step. [`step`] does one step's operations as dense Adam would have done
//! them, and `untouched_rows = "catch-up"` takes every missed step so. Its cost is the gap: a row back after 500 steps
//! costs 500 steps' work, which on a large vocabulary is what dense Adam costs.
//!
//! `"fast-catch-up"` replays the first [`EXACT_STEPS`] missed steps exactly and the rest in
//! strides ([`strides`]) of doubling length (8, 16, 32, …), each in closed form.
//! With a zero data gradient one step is linear in the row's value `w`, first moment `m`
//! and weight average `a` once the denominator `√v + ε` is known:
//!
//! ```text
//! m' = β₁ m + (1 − β₁) λ_g w                     (L2 decay λ_g in the gradient)
//! w' = (1 − η λ_u) w − k m',   k = η·f / (√v + ε) (decoupled decay λ_u, bias factor f)
//! a' = κ a + (1 − κ) w'                          (the weight average's keep κ)
//! ```
//!
//! so `n` steps are the `n`-th power of one 3 × 3 matrix per element (taken by squaring, in
//! `log₂ n` products) — exact if `η`, `f`, `ε`, `κ` and `v` stayed constant over the stride.
//! They are taken at the stride's middle step; `v` (which moves by `β₂` per step, ~0.1 %)
//! at its middle too, fed by `(λ_g w)²`. A stride of length `n` costs about `log₂ n`
//! steps' work instead of `n`, so a row's catch-up costs `O(log² gap)`.
//!
//! What that approximation costs is measured against the exact replay in f64 (the tests
//! below: random rows and histories with a learning-rate schedule, bias correction from step
//! 1, L2 and decoupled decay, with and without the average): within 2e-3 of the row's largest
//! value over the gap (typically 1e-5), and exactly the same floats where the gap is at most
//! [`EXACT_STEPS`].
//!
//! Rows are replayed in groups ([`ReplayRows`]): each group's cache lines are read first, so
//! that their misses overlap, and their exact steps are taken a few rows side by side, so that
//! one row's chain of dependent operations does not leave the CPU waiting.

use crate::row_adam::StepConstants;

/// What a step did to a row it did not touch, kept for replaying it (`catch-up`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Missed {
    pub(crate) factor: f32,
    pub(crate) eps: f32,
    pub(crate) lr: f32,
    /// The weight average's decay at the step ([`crate::average_keep`]).
    pub(crate) keep: f32,
}

/// The constants of a replay that do not change from step to step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Betas {
    pub(crate) b1: f32,
    pub(crate) b2: f32,
    pub(crate) wd_grad: f32,
    pub(crate) wd_update: f32,
}

impl StepConstants {
    pub(crate) fn betas(&self) -> Betas {
        Betas {
            b1: self.b1,
            b2: self.b2,
            wd_grad: self.wd_grad,
            wd_update: self.wd_update,
        }
    }
}

/// Missed steps `fast-catch-up` replays exactly before its first stride (also the first
/// stride's length).
pub const EXACT_STEPS: usize = 8;

/// One row to replay: its `3 × dim` floats, its weight average (if kept) and its
/// up-to-date step.
pub(crate) type ReplayRow<'r> = (&'r mut [f32], Option<&'r mut [f32]>, &'r mut u64);

/// Replays the missed steps of some rows, each given as its `3 × dim` floats and its
/// up-to-date step, compiled for the widest SIMD the CPU has (pulp's runtime dispatch).
pub(crate) struct ReplayRows<'a, 'r> {
    pub(crate) rows: &'a mut [ReplayRow<'r>],
    /// The constants of steps `base + 1 ..= time`.
    pub(crate) steps: &'a [Missed],
    pub(crate) base: u64,
    pub(crate) time: u64,
    pub(crate) dim: usize,
    pub(crate) betas: Betas,
    /// Strides ([`strides`]) instead of the exact replay, with rows untouched since
    /// `base` whose moments are zero moved by [`FreshMap`].
    pub(crate) strided: Option<&'a LazyFreshMap<'a>>,
}

impl pulp::WithSimd for ReplayRows<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(mut self, _simd: S) {
        let rows = std::mem::take(&mut self.rows);
        for rows in rows.chunks_mut(TOUCH_AHEAD) {
            touch(rows);
            self.replay(rows);
        }
    }
}

/// Rows whose memory is read ahead of their replay at a time: the table's rows lie far apart,
/// and the replay's chain of dependent operations keeps the CPU from reaching the next row's
/// loads on its own, so each row would wait for its cache misses in turn.
const TOUCH_AHEAD: usize = 32;

/// Reads every cache line of `rows` (their floats and averages), with loads that do not depend
/// on each other, so that their misses overlap.
#[inline(always)]
fn touch(rows: &[ReplayRow<'_>]) {
    let mut sum = 0u32;
    for (slot, average, _) in rows {
        let line = |x: &[f32]| {
            x.iter()
                .step_by(16)
                .chain(x.last())
                .fold(0u32, |s, f| s.wrapping_add(f.to_bits()))
        };
        sum = sum.wrapping_add(line(slot));
        if let Some(a) = average {
            sum = sum.wrapping_add(line(a));
        }
    }
    std::hint::black_box(sum);
}

impl ReplayRows<'_, '_> {
    /// Replays `rows`: their exact steps [`PACK`] rows side by side ([`replay_packed`]), then
    /// each row's strides.
    #[inline(always)]
    fn replay(&self, rows: &mut [ReplayRow<'_>]) {
        let d = self.dim;
        let mut pending = Vec::with_capacity(rows.len());
        for (slot, average, last) in rows.iter_mut() {
            let (w, moments) = slot.split_at_mut(d);
            let (m, v) = moments.split_at_mut(d);
            let missed = &self.steps[(**last - self.base) as usize..];
            let unused_since_base = **last == self.base;
            **last = self.time;
            match self.strided {
                Some(fresh) if unused_since_base && FreshMap::fits(w, m, v) => {
                    fresh.get().apply(w, m, v, average.as_deref_mut());
                }
                how => pending.push(Pending::new(
                    (w, m, v),
                    average.as_deref_mut(),
                    missed,
                    how.is_some(),
                )),
            }
        }
        replay_packed(&mut pending, self.betas);
        for row in pending.iter_mut().filter(|row| row.exact < row.missed.len()) {
            strides(row, self.betas);
        }
    }
}

/// A row being replayed: its value, moments and average, the steps it missed, and how many
/// of them are replayed exactly.
struct Pending<'r, 's> {
    w: &'r mut [f32],
    m: &'r mut [f32],
    v: &'r mut [f32],
    average: Option<&'r mut [f32]>,
    missed: &'s [Missed],
    exact: usize,
    /// The row's largest `|w|` before the replay, where strides follow ([`SETTLED`]).
    scale: f32,
}

impl<'r, 's> Pending<'r, 's> {
    /// The replay of `missed` on a row: every step exactly, or (`strided`) the first
    /// [`EXACT_STEPS`] exactly and the rest in strides.
    #[inline(always)]
    fn new(
        (w, m, v): (&'r mut [f32], &'r mut [f32], &'r mut [f32]),
        average: Option<&'r mut [f32]>,
        missed: &'s [Missed],
        strided: bool,
    ) -> Self {
        let exact = match strided {
            true => missed.len().min(EXACT_STEPS),
            false => missed.len(),
        };
        let scale = if exact < missed.len() { largest(w) } else { 0.0 };
        Self {
            w,
            m,
            v,
            average,
            missed,
            exact,
            scale,
        }
    }
}

/// Rows whose exact steps [`replay_packed`] takes side by side.
const PACK: usize = 4;

/// The exact steps of `rows`, [`PACK`] rows at a time step by step: one row's step is a chain
/// of dependent operations (a square root and a division among them) that leaves the CPU
/// waiting; the steps of other rows fill the wait. Each row gets the operations [`step`]
/// does, in its order, so the same floats.
#[inline(always)]
fn replay_packed(rows: &mut [Pending<'_, '_>], k: Betas) {
    for pack in rows.chunks_mut(PACK) {
        let longest = pack.iter().map(|row| row.exact).max().unwrap_or(0);
        for j in 0..longest {
            for row in pack.iter_mut().filter(|row| j < row.exact) {
                let s = &row.missed[j];
                match row.average.as_deref_mut() {
                    Some(a) => step_averaged(row.w, row.m, row.v, a, s, k),
                    None => step(row.w, row.m, row.v, s, k),
                }
            }
        }
    }
}

/// The replay of a stretch of steps on rows whose moments are zero (no batch has used them),
/// followed step by step as the steps are taken, for every such row at once.
///
/// With `m = v = 0` at the start, an element's path depends on its value `w₀` alone, and is odd
/// in it: `w = w₀ φ(|w₀|)`, likewise `m` and the average's share, and `v = w₀² ψ(|w₀|)`. The
/// element for each `|w₀|` of a grid (64 points per octave, `2ᵉ (1 + j/64)`, from 2⁻³⁰ to 2⁻²)
/// is followed in f64 through the steps, exactly as [`step`] moves it; an element in between
/// is interpolated linearly (its float's exponent and top mantissa bits are the grid index), one
/// below the grid takes its first point (there `φ` no longer depends on `|w₀|`). A row with an
/// element above the grid is replayed in strides instead.
#[derive(Debug, Clone)]
pub(crate) struct Fresh {
    /// Per grid point: `w`, `m`, the average's share and `v` of the element starting there.
    points: Vec<[f64; 4]>,
    /// The average's own decay `Π κ`.
    keep: f64,
}

/// Mantissa bits of a grid index: 2⁶ = 64 points per octave.
const GRID_BITS: u32 = 6;

impl Fresh {
    /// The grid's first and last octave (`log₂ |w₀|`).
    const FIRST: i32 = -30;
    const LAST: i32 = -2;

    /// The `|w₀|` of grid point `i`.
    fn grid(i: usize) -> f64 {
        let per = 1usize << GRID_BITS;
        let octave = Self::FIRST + (i / per) as i32;
        f64::from(octave).exp2() * (1.0 + (i % per) as f64 / per as f64)
    }

    /// Points on the grid.
    pub(crate) fn points() -> usize {
        (((Self::LAST - Self::FIRST) as usize) << GRID_BITS) + 1
    }

    /// The map of no steps.
    pub(crate) fn new() -> Self {
        let points = (0..Self::points())
            .map(|i| [Self::grid(i), 0.0, 0.0, 0.0])
            .collect();
        Self { points, keep: 1.0 }
    }

    /// Follows every grid element through one more step (the average's share starts at 0).
    pub(crate) fn push(&mut self, s: &Missed, k: Betas) {
        let (b1, b2) = (f64::from(k.b1), f64::from(k.b2));
        let (lg, lu) = (f64::from(k.wd_grad), f64::from(k.wd_update));
        let (factor, eps, lr, kp) = (
            f64::from(s.factor),
            f64::from(s.eps),
            f64::from(s.lr),
            f64::from(s.keep),
        );
        for [w, m, a, v] in self.points.iter_mut() {
            let g = lg * *w;
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *w -= lr * (*m * factor / (v.sqrt() + eps) + lu * *w);
            *a = kp * *a + (1.0 - kp) * *w;
        }
        self.keep *= kp;
    }

    /// The grid's points and the average's decay (for saving).
    pub(crate) fn parts(&self) -> (&[[f64; 4]], f64) {
        (&self.points, self.keep)
    }

    /// A grid saved by [`Fresh::parts`].
    pub(crate) fn from_parts(points: Vec<[f64; 4]>, keep: f64) -> Self {
        Self { points, keep }
    }

    /// The grid's last `|w₀|`.
    fn w_max() -> f32 {
        (Self::LAST as f32).exp2()
    }

    /// The grid's `(φ_w, φ_m, φ_a, ψ)`: its values over `w₀` (`w₀²` for `v`), for
    /// [`FreshMap`].
    pub(crate) fn map(&self) -> FreshMap {
        let phi = self
            .points
            .iter()
            .enumerate()
            .map(|(i, &[w, m, a, v])| {
                let g = Self::grid(i);
                [w / g, m / g, a / g, v / (g * g)].map(|x| x as f32)
            })
            .collect();
        FreshMap {
            phi,
            keep: self.keep as f32,
        }
    }
}

/// [`Fresh`]'s map, read out of the grid the first time a row needs it: a replay with no row
/// that [`FreshMap::fits`] does not pay for it.
pub(crate) struct LazyFreshMap<'a> {
    grid: &'a Fresh,
    map: std::sync::OnceLock<FreshMap>,
}

impl<'a> LazyFreshMap<'a> {
    /// The map of `grid`, not yet read out.
    pub(crate) fn new(grid: &'a Fresh) -> Self {
        Self {
            grid,
            map: std::sync::OnceLock::new(),
        }
    }

    /// The map, read out on first use.
    pub(crate) fn get(&self) -> &FreshMap {
        self.map.get_or_init(|| self.grid.map())
    }
}

/// [`Fresh`]'s grid read out for applying it to rows.
pub(crate) struct FreshMap {
    phi: Vec<[f32; 4]>,
    keep: f32,
}

impl FreshMap {
    /// `(φ_w, φ_m, φ_a, ψ)` at `|w₀|` (at most the grid's last), interpolated linearly
    /// between the grid points around it.
    #[inline(always)]
    fn at(&self, w0: f32) -> [f32; 4] {
        let bits = w0.abs().to_bits();
        let octave = (bits >> 23) as i32 - 127;
        if octave < Fresh::FIRST {
            return self.phi[0];
        }
        let low = 23 - GRID_BITS;
        let i = (((octave - Fresh::FIRST) as usize) << GRID_BITS)
            | ((bits >> low) as usize & ((1 << GRID_BITS) - 1));
        let f = (bits & ((1 << low) - 1)) as f32 / (1u32 << low) as f32;
        let (p, q) = (self.phi[i], self.phi[(i + 1).min(self.phi.len() - 1)]);
        [0, 1, 2, 3].map(|k| p[k] + f * (q[k] - p[k]))
    }

    /// Whether a row is one this map serves: zero moments, values within the grid.
    #[inline(always)]
    pub(crate) fn fits(w: &[f32], m: &[f32], v: &[f32]) -> bool {
        let quiet = m.iter().chain(v).fold(0f32, |s, x| s.max(x.abs())) == 0.0;
        quiet && w.iter().fold(0f32, |s, x| s.max(x.abs())) <= Fresh::w_max()
    }

    /// Moves a row it [`FreshMap::fits`] through the steps followed.
    #[inline(always)]
    pub(crate) fn apply(&self, w: &mut [f32], m: &mut [f32], v: &mut [f32], average: Option<&mut [f32]>) {
        let mut average = average;
        for i in 0..w.len() {
            let w0 = w[i];
            let [fw, fm, fa, fv] = self.at(w0);
            if let Some(a) = average.as_deref_mut() {
                a[i] = a[i] * self.keep + w0 * fa;
            }
            m[i] = w0 * fm;
            v[i] = w0 * w0 * fv;
            w[i] = w0 * fw;
        }
    }
}

/// One missed step `s` on a row: a touched row's operations with a zero gradient.
#[inline(always)]
fn step(w: &mut [f32], m: &mut [f32], v: &mut [f32], s: &Missed, k: Betas) {
    for ((w, m), v) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()) {
        // the same operations as a touched row's with g = 0 (0 · coef + w · wd = w · wd)
        adam_element(w, m, v, 0.0, s, k);
    }
}

/// [`step`] and the weight average's update after it ([`average_element`]), element by element in
/// one loop: each element gets the same operations in the same order, so the same floats, and
/// the average reads the new value where it is (a loop of its own would read the row back
/// from memory just written, and wait for it).
#[inline(always)]
fn step_averaged(w: &mut [f32], m: &mut [f32], v: &mut [f32], a: &mut [f32], s: &Missed, k: Betas) {
    for (((w, m), v), a) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(a.iter_mut()) {
        adam_element(w, m, v, 0.0, s, k);
        average_element(a, *w, s.keep);
    }
}

/// One element's Adam step at step `s`'s constants, its data gradient (clipped) being `g`:
/// the L2 decay joins the gradient, the decoupled decay the update. A touched row's update
/// ([`crate::row_step::RowStep`]) and a missed step's replay ([`step`]) both take it, so
/// that catch-up's exact replay is the operations dense Adam does.
#[inline(always)]
pub(crate) fn adam_element(w: &mut f32, m: &mut f32, v: &mut f32, g: f32, s: &Missed, k: Betas) {
    let g = g + *w * k.wd_grad;
    *m = *m * k.b1 + g * (1.0 - k.b1);
    *v = *v * k.b2 + g * g * (1.0 - k.b2);
    let update = *m * s.factor / (v.sqrt() + s.eps);
    *w -= (update + *w * k.wd_update) * s.lr;
}

/// One element's step of the weight average: `a ← keep · a + (1 − keep) · w`.
#[inline(always)]
pub(crate) fn average_element(a: &mut f32, w: f32, keep: f32) {
    *a = *a * keep + w * (1.0 - keep);
}

/// The strides of a row whose first `exact` missed steps were replayed.
#[inline(always)]
fn strides(row: &mut Pending<'_, '_>, k: Betas) {
    let Pending {
        w,
        m,
        v,
        average,
        missed,
        exact,
        scale,
    } = row;
    let (mut at, mut len) = (*exact, EXACT_STEPS);
    while at < missed.len() {
        let end = missed.len().min(at + len);
        let mut a_chunks = average.as_deref_mut().map(|a| a.chunks_mut(LANES));
        let constants = StrideConstants::new(&missed[at..end], k);
        let mut reach = 0f32;
        for ((w, m), v) in w
            .chunks_mut(LANES)
            .zip(m.chunks_mut(LANES))
            .zip(v.chunks_mut(LANES))
        {
            let a = a_chunks.as_mut().and_then(|c| c.next());
            reach = reach.max(stride(w, m, v, a, &constants));
        }
        at = end;
        len *= 2;
        if reach <= SETTLED * *scale && at < missed.len() {
            settle(m, v, average.as_deref_mut(), &missed[at..], k);
            return;
        }
    }
}

/// The largest `|x|` (lane by lane in [`LANES`]-wide arrays, so that it is vectorised).
#[inline(always)]
fn largest(x: &[f32]) -> f32 {
    let mut most = [0f32; LANES];
    for chunk in x.chunks(LANES) {
        for (most, x) in most.iter_mut().zip(chunk) {
            *most = most.max(x.abs());
        }
    }
    most.iter().fold(0f32, |s, &x| s.max(x))
}

/// A row whose value and momentum can no longer move it by more than this fraction of its
/// largest value at the replay's start has settled: [`settle`] finishes its replay.
const SETTLED: f32 = 1e-9;

/// The rest of a settled row's replay in one go: its value stays (what is left of it is below
/// [`SETTLED`] of where it started), its moments decay by `β₁ʳ`, `β₂ʳ` and its average by the
/// keep of the steps' middle, to the power `r`.
fn settle(m: &mut [f32], v: &mut [f32], average: Option<&mut [f32]>, rest: &[Missed], k: Betas) {
    let r = rest.len();
    let (b1, b2) = (power(f64::from(k.b1), r) as f32, power(f64::from(k.b2), r) as f32);
    m.iter_mut().for_each(|m| *m *= b1);
    v.iter_mut().for_each(|v| *v *= b2);
    if let Some(a) = average {
        let keep = power(f64::from(rest[(r - 1) / 2].keep), r) as f32;
        a.iter_mut().for_each(|a| *a *= keep);
    }
}

/// Elements a stride handles at a time (fixed-size arrays the compiler vectorises).
const LANES: usize = 16;

/// A stride's constants, taken at its middle step.
struct StrideConstants {
    /// Steps in the stride.
    n: usize,
    b1: f32,
    wd_grad: f32,
    /// `η·f` (learning rate times the bias-corrected factor).
    lr_factor: f32,
    eps: f32,
    /// `1 − η λ_u` (decoupled decay's shrink per step).
    shrink: f32,
    keep: f32,
    /// `β₂^(n/2)` and `β₂ⁿ`: `v` at the middle and at the end.
    b2_half: f32,
    b2_n: f32,
}

impl StrideConstants {
    fn new(steps: &[Missed], k: Betas) -> Self {
        let n = steps.len();
        let mid = &steps[(n - 1) / 2];
        let b2 = f64::from(k.b2);
        Self {
            n,
            b1: k.b1,
            wd_grad: k.wd_grad,
            lr_factor: mid.lr * mid.factor,
            eps: mid.eps,
            shrink: 1.0 - mid.lr * k.wd_update,
            keep: mid.keep,
            b2_half: power(b2, n).sqrt() as f32,
            b2_n: power(b2, n) as f32,
        }
    }
}

/// `xⁿ` by squaring (a few products: cheaper than `powi`'s library call per stride).
fn power(x: f64, mut n: usize) -> f64 {
    let (mut result, mut square) = (1.0, x);
    while n > 0 {
        if n & 1 == 1 {
            result *= square;
        }
        square *= square;
        n >>= 1;
    }
    result
}

/// One stride on up to [`LANES`] elements: the 3 × 3 matrix of one step (per element: its
/// `k` depends on the element's `v`) raised to the stride's length by squaring, applied to
/// `(w, m, a)`; `v` decayed by `β₂ⁿ` and fed by the decay's gradient. Where the decay's
/// gradient feeds `v` faster than `β₂` forgets it, `v` at the middle depends on where `w`
/// goes, so the power is taken twice: first with `v` fed by the stride's first `w`, then by
/// the mean of `w²` between the first and the predicted last `w`.
#[inline(always)]
fn stride(w: &mut [f32], m: &mut [f32], v: &mut [f32], a: Option<&mut [f32]>, c: &StrideConstants) -> f32 {
    // the chunk in fixed-width arrays (unused lanes zero), so that every loop is vectorised
    let len = w.len();
    let lane = |x: &[f32]| {
        let mut out = [0f32; LANES];
        out[..len].copy_from_slice(x);
        out
    };
    let (w0, m0, mut v0) = (lane(w), lane(m), lane(v));
    let lg = c.wd_grad;
    let mut g2 = [0f32; LANES];
    for i in 0..LANES {
        g2[i] = lg * w0[i] * lg * w0[i];
    }
    if lg != 0.0 && c.feed_matters(&v0, &g2) {
        let first = c.step_matrix(&v0, &g2).pow(c.n);
        for i in 0..LANES {
            let w1 = first.a11[i] * w0[i] + first.a12[i] * m0[i];
            g2[i] = lg * lg * (w0[i] * w0[i] + w0[i] * w1 + w1 * w1) / 3.0;
        }
    }
    let one = c.step_matrix(&v0, &g2);
    let p = match a {
        Some(a) => {
            // the average's row: a' = κ a + (1 − κ) w'
            let mut r = Row {
                r1: one.a11,
                r2: one.a12,
                kk: [c.keep; LANES],
            };
            for i in 0..LANES {
                r.r1[i] *= 1.0 - c.keep;
                r.r2[i] *= 1.0 - c.keep;
            }
            let (p, r) = pow_with_row(&one, &r, c.n);
            let mut a1 = lane(a);
            for i in 0..LANES {
                a1[i] = r.r1[i] * w0[i] + r.r2[i] * m0[i] + r.kk[i] * a1[i];
            }
            a.copy_from_slice(&a1[..len]);
            p
        }
        None => one.pow(c.n),
    };
    let (mut w1, mut m1) = ([0f32; LANES], [0f32; LANES]);
    for i in 0..LANES {
        w1[i] = p.a11[i] * w0[i] + p.a12[i] * m0[i];
        m1[i] = p.a21[i] * w0[i] + p.a22[i] * m0[i];
        v0[i] = c.b2_n * v0[i] + (1.0 - c.b2_n) * g2[i];
    }
    w.copy_from_slice(&w1[..len]);
    m.copy_from_slice(&m1[..len]);
    v.copy_from_slice(&v0[..len]);
    // how far the row could still move: its value, and its momentum's sum Σ k m β₁ʲ
    let mut reach = 0f32;
    for i in 0..LANES {
        reach = reach.max(w1[i].abs() + (one.a12[i] * m1[i]).abs() / (c.b1 * (1.0 - c.b1)));
    }
    reach
}

impl StrideConstants {
    /// Whether the decay's gradient could feed `v` enough, over the stride, to change the
    /// denominator `√v + ε` by 1 % if `|w|` grew 4-fold: the first of
    /// [`stride`]'s two powers is needed only then.
    #[inline(always)]
    fn feed_matters(&self, v: &[f32; LANES], g2: &[f32; LANES]) -> bool {
        let mut matters = false;
        for i in 0..LANES {
            let (x, feed) = (self.b2_half * v[i], 16.0 * (1.0 - self.b2_half) * g2[i]);
            // √(x + δ) − √x ≤ δ / (2 √x), and ≤ √δ
            let change = (feed / (2.0 * x.sqrt())).min(feed.sqrt());
            matters |= change > 1e-2 * (x.sqrt() + self.eps);
        }
        matters
    }

    /// One step's matrix on `(w, m)` per element, its `v` at the stride's middle fed by `g2`
    /// (the decay's squared gradient).
    #[inline(always)]
    fn step_matrix(&self, v: &[f32; LANES], g2: &[f32; LANES]) -> Mat {
        let (b1, lg) = (self.b1, self.wd_grad);
        let mut one = Mat {
            a11: [0.0; LANES],
            a12: [0.0; LANES],
            a21: [(1.0 - b1) * lg; LANES],
            a22: [b1; LANES],
        };
        for i in 0..LANES {
            let den = (self.b2_half * v[i] + (1.0 - self.b2_half) * g2[i]).sqrt() + self.eps;
            let k = self.lr_factor / den;
            one.a11[i] = self.shrink - k * (1.0 - b1) * lg;
            one.a12[i] = -k * b1;
        }
        one
    }
}

/// [`LANES`] 2 × 2 matrices `[[a11, a12], [a21, a22]]` (a step on `(w, m)`), one per element.
#[derive(Clone, Copy)]
struct Mat {
    a11: [f32; LANES],
    a12: [f32; LANES],
    a21: [f32; LANES],
    a22: [f32; LANES],
}

/// The weight average's row `[r1, r2, kk]` of a step on `(w, m, a)`: `a' = r1 w + r2 m + kk a`.
#[derive(Clone, Copy)]
struct Row {
    r1: [f32; LANES],
    r2: [f32; LANES],
    kk: [f32; LANES],
}

impl Mat {
    fn identity() -> Self {
        Self {
            a11: [1.0; LANES],
            a12: [0.0; LANES],
            a21: [0.0; LANES],
            a22: [1.0; LANES],
        }
    }

    /// `self · y` (apply `y`, then `self`), element for element.
    #[inline(always)]
    fn after(&self, y: &Self) -> Self {
        let mut o = Self::identity();
        for i in 0..LANES {
            o.a11[i] = self.a11[i] * y.a11[i] + self.a12[i] * y.a21[i];
            o.a12[i] = self.a11[i] * y.a12[i] + self.a12[i] * y.a22[i];
            o.a21[i] = self.a21[i] * y.a11[i] + self.a22[i] * y.a21[i];
            o.a22[i] = self.a21[i] * y.a12[i] + self.a22[i] * y.a22[i];
        }
        o
    }

    /// `selfⁿ` by squaring.
    #[inline(always)]
    fn pow(&self, mut n: usize) -> Self {
        let (mut result, mut square) = (Self::identity(), *self);
        while n > 0 {
            if n & 1 == 1 {
                result = square.after(&result);
            }
            n >>= 1;
            if n > 0 {
                square = square.after(&square);
            }
        }
        result
    }
}

impl Row {
    /// The average's row of `(self, x) · (y, ry)`: `self · y + kk · ry` (and `kk` multiplied).
    #[inline(always)]
    fn after(&self, y: &Mat, ry: &Self) -> Self {
        let mut o = *self;
        for i in 0..LANES {
            o.r1[i] = self.r1[i] * y.a11[i] + self.r2[i] * y.a21[i] + self.kk[i] * ry.r1[i];
            o.r2[i] = self.r1[i] * y.a12[i] + self.r2[i] * y.a22[i] + self.kk[i] * ry.r2[i];
            o.kk[i] = self.kk[i] * ry.kk[i];
        }
        o
    }
}

/// The `n`-th power of the step `(one, row)` on `(w, m, a)` by squaring.
#[inline(always)]
fn pow_with_row(one: &Mat, row: &Row, mut n: usize) -> (Mat, Row) {
    let (mut result, mut result_row) = (
        Mat::identity(),
        Row {
            r1: [0.0; LANES],
            r2: [0.0; LANES],
            kk: [1.0; LANES],
        },
    );
    let (mut square, mut square_row) = (*one, *row);
    while n > 0 {
        if n & 1 == 1 {
            result_row = square_row.after(&result, &result_row);
            result = square.after(&result);
        }
        n >>= 1;
        if n > 0 {
            square_row = square_row.after(&square, &square_row);
            square = square.after(&square);
        }
    }
    (result, result_row)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), uniform in [0, 1).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }

        fn range(&mut self, lo: f64, hi: f64) -> f64 {
            lo + (hi - lo) * self.next()
        }
    }

    /// One step of a row's weight average, in a loop of its own after the step's (what the
    /// replay and a touched row's update do in one loop, element by element).
    fn average_row(a: &mut [f32], w: &[f32], keep: f32) {
        for (a, &w) in a.iter_mut().zip(w) {
            *a = *a * keep + w * (1.0 - keep);
        }
    }

    /// The steps `first ..= first + gap − 1` of a run with burn's Adam constants, ε 1e-5, a
    /// warm-up and cosine learning-rate schedule and the weight average's keep (decay 0.99).
    fn history(first: usize, gap: usize, lr: f64) -> Vec<Missed> {
        (first..first + gap)
            .map(|t| {
                let (b1, b2) = (0.9f64, 0.999f64);
                let bc2 = (1.0 - b2.powi(t as i32)).sqrt();
                let warm = (t as f64 / 200.0).min(1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * t as f64 / 5000.0).cos());
                Missed {
                    factor: (bc2 / (1.0 - b1.powi(t as i32))) as f32,
                    eps: (1e-5 * bc2) as f32,
                    lr: (lr * warm * (0.1 + 0.9 * cosine)) as f32,
                    keep: crate::average_keep(0.99, t),
                }
            })
            .collect()
    }

    /// Replays the steps `missed` on one row (`w`, `m`, `v`) with a zero gradient: dense Adam's
    /// operations on a row no example used, weight decay included; and the weight average's
    /// update after each step, when kept: the production replay, one row alone.
    fn replay(
        w: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        mut average: Option<&mut [f32]>,
        missed: &[Missed],
        k: Betas,
    ) {
        for s in missed {
            step(w, m, v, s, k);
            if let Some(a) = average.as_deref_mut() {
                average_row(a, w, s.keep);
            }
        }
    }

    /// The missed steps `missed` on one row: the first [`EXACT_STEPS`] by [`replay`], the rest in
    /// strides of doubling length by [`strides`]: the production replay, one row alone.
    fn replay_strided(
        w: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        average: Option<&mut [f32]>,
        missed: &[Missed],
        k: Betas,
    ) {
        let mut row = Pending::new((w, m, v), average, missed, true);
        replay(
            row.w,
            row.m,
            row.v,
            row.average.as_deref_mut(),
            &missed[..row.exact],
            k,
        );
        strides(&mut row, k);
    }

    /// The exact replay in f64, textbook Adam: returns `w`, `a` after the steps and the
    /// largest `|w|` on the way.
    fn exact_f64(
        w: &[f32],
        m: &[f32],
        v: &[f32],
        a: &[f32],
        steps: &[Missed],
        k: Betas,
    ) -> (Vec<f64>, Vec<f64>, f64) {
        let (b1, b2) = (f64::from(k.b1), f64::from(k.b2));
        let (lg, lu) = (f64::from(k.wd_grad), f64::from(k.wd_update));
        let mut out_w = Vec::new();
        let mut out_a = Vec::new();
        let mut peak = 0f64;
        for i in 0..w.len() {
            let (mut w, mut m, mut v, mut a) =
                (f64::from(w[i]), f64::from(m[i]), f64::from(v[i]), f64::from(a[i]));
            peak = peak.max(w.abs());
            for s in steps {
                let g = lg * w;
                m = b1 * m + (1.0 - b1) * g;
                v = b2 * v + (1.0 - b2) * g * g;
                let step = m * f64::from(s.factor) / (v.sqrt() + f64::from(s.eps));
                w -= f64::from(s.lr) * (step + lu * w);
                let keep = f64::from(s.keep);
                a = keep * a + (1.0 - keep) * w;
                peak = peak.max(w.abs());
            }
            out_w.push(w);
            out_a.push(a);
        }
        (out_w, out_a, peak)
    }

    /// L2 decay `wd` in the gradient with burn's betas.
    fn l2(wd: f32) -> Betas {
        decay(wd, false)
    }

    /// Decay `wd`, in the gradient (L2) or `decoupled` (AdamW), with burn's betas.
    fn decay(wd: f32, decoupled: bool) -> Betas {
        Betas {
            b1: 0.9,
            b2: 0.999,
            wd_grad: if decoupled { 0.0 } else { wd },
            wd_update: if decoupled { wd } else { 0.0 },
        }
    }

    /// The largest difference of `w` (and the average, when given) from the f64 values, over
    /// `peak`.
    fn relative_error(got: (&[f32], Option<&Vec<f32>>), want: (&[f64], &[f64]), peak: f64) -> f64 {
        let far = |got: &[f32], want: &[f64]| {
            got.iter()
                .zip(want)
                .map(|(&g, &w)| (f64::from(g) - w).abs())
                .fold(0f64, f64::max)
        };
        far(got.0, want.0).max(got.1.map_or(0.0, |a| far(a, want.1))) / peak
    }

    /// A row as training leaves it: values of scale `scale`, a first moment from a recent
    /// gradient and a second moment of its square (or a row never touched: zero moments).
    fn random_row(rng: &mut Rng, dim: usize, scale: f64, touched: bool) -> [Vec<f32>; 4] {
        let [mut w, mut m, mut v, mut a] = [(); 4].map(|_| Vec::with_capacity(dim));
        for _ in 0..dim {
            let value = rng.range(-scale, scale) as f32;
            let (first, second) = if touched {
                let g = rng.range(-1.0, 1.0) * 10f64.powf(rng.range(-6.0, -4.0));
                ((0.3 * g) as f32, (g * g * rng.range(0.2, 3.0)) as f32)
            } else {
                (0.0, 0.0)
            };
            w.push(value);
            m.push(first);
            v.push(second);
            a.push((f64::from(value) * rng.range(0.5, 1.5)) as f32);
        }
        [w, m, v, a]
    }

    #[test]
    fn strides_follow_the_exact_replay_within_their_bound() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut worst, mut worst_default_lr, mut errors) = (0f64, 0f64, Vec::new());
        for _ in 0..600 {
            let mut pick = |n: usize| (rng.next() * n as f64) as usize;
            let decoupled = pick(2) == 1;
            let wd = [1e-4, 1e-3, 1e-2][pick(3)];
            let k = decay(wd, decoupled);
            let with_average = pick(2) == 0;
            let gap = [5, 9, 20, 40, 80, 150, 700, 2500][pick(8)];
            let lr = [1e-3, 1e-2][pick(2)];
            let touched = pick(3) != 0;
            let first = 1 + pick(3000);
            let steps = history(first, gap, lr);
            let scale = 10f64.powf(rng.range(-4.0, -1.0));
            let [mut w, mut m, mut v, mut a] = random_row(&mut rng, 19, scale, touched);
            let (want_w, want_a, peak) = exact_f64(&w, &m, &v, &a, &steps, k);
            let average = with_average.then_some(a.as_mut_slice());
            replay_strided(&mut w, &mut m, &mut v, average, &steps, k);
            let error = relative_error((&w, with_average.then_some(&a)), (&want_w, &want_a), peak);
            if lr < 5e-3 {
                worst_default_lr = worst_default_lr.max(error);
            }
            worst = worst.max(error);
            errors.push(error);
        }
        errors.sort_by(f64::total_cmp);
        let median = errors[errors.len() / 2];
        // measured: median 1.6e-5; worst 3.6e-3 at lr 1e-3 with L2 decay 1e-3 (the defaults),
        // 1.3e-2 at lr 1e-3 with L2 1e-2, 6.4e-2 at lr 1e-2 with L2 1e-2 (where dense Adam's
        // untouched rows oscillate with a period of a few steps)
        assert!(median < 1e-4, "median error {median:e}");
        assert!(
            worst_default_lr < 2e-2,
            "worst error at lr 1e-3: {worst_default_lr:e}"
        );
        assert!(worst < 0.1, "worst error {worst:e} of the row's largest value");
    }

    #[test]
    fn unused_rows_follow_the_exact_replay_by_one_map() {
        // rows no batch used (zero moments) at the scale of their initial values, through the
        // first steps of a run and through a later stretch, L2 or decoupled decay
        let mut rng = Rng(5);
        let mut served = 0;
        for case in 0..40 {
            let decoupled = case % 4 == 3;
            let wd = [1e-4, 1e-3, 1e-2][case % 3];
            let k = decay(wd, decoupled);
            let first = if case % 2 == 0 {
                1
            } else {
                1 + (rng.next() * 3000.0) as usize
            };
            let gap = [3, 50, 400, 1500][case % 4];
            let steps = history(first, gap, [1e-3, 1e-2][case / 4 % 2]);
            let mut grid = Fresh::new();
            steps.iter().for_each(|s| grid.push(s, k));
            let fresh = grid.map();
            let scale = 10f64.powf(rng.range(-6.0, -1.0));
            let [mut w, mut m, mut v, mut a] = random_row(&mut rng, 16, scale, false);
            let (want_w, want_a, peak) = exact_f64(&w, &m, &v, &a, &steps, k);
            if !FreshMap::fits(&w, &m, &v) {
                continue;
            }
            served += 1;
            fresh.apply(&mut w, &mut m, &mut v, Some(&mut a));
            let error = relative_error((&w, Some(&a)), (&want_w, &want_a), peak);
            assert!(error < 1e-4, "case {case}: {error:e}");
        }
        assert_eq!(served, 40, "every row within the grid is served");
        // a row that was used, or one far from its initial scale, is not
        assert!(!FreshMap::fits(&[1e-4], &[1e-9], &[0.0]));
        assert!(!FreshMap::fits(&[1.0], &[0.0], &[0.0]));
        assert!(FreshMap::fits(&[1e-4, -0.2], &[0.0, 0.0], &[0.0, 0.0]));
    }

    #[test]
    fn the_exact_replay_is_textbook_adam() {
        // the f64 reference above and the f32 replay agree to f32 rounding over 700 steps
        let mut rng = Rng(7);
        let k = l2(1e-3);
        let steps = history(40, 700, 1e-3);
        let [mut w, mut m, mut v, mut a] = random_row(&mut rng, 16, 1e-2, true);
        let (want_w, want_a, peak) = exact_f64(&w, &m, &v, &a, &steps, k);
        replay(&mut w, &mut m, &mut v, Some(&mut a), &steps, k);
        let error = relative_error((&w, Some(&a)), (&want_w, &want_a), peak);
        assert!(error < 1e-5, "{error:e}");
    }

    #[test]
    fn short_gaps_are_replayed_exactly() {
        let mut rng = Rng(11);
        let k = l2(1e-3);
        for gap in 1..=EXACT_STEPS {
            let steps = history(10, gap, 1e-3);
            let row = random_row(&mut rng, 16, 1e-2, true);
            let [mut w1, mut m1, mut v1, mut a1] = row.clone();
            let [mut w2, mut m2, mut v2, mut a2] = row;
            replay(&mut w1, &mut m1, &mut v1, Some(&mut a1), &steps, k);
            replay_strided(&mut w2, &mut m2, &mut v2, Some(&mut a2), &steps, k);
            assert_eq!((w1, m1, v1, a1), (w2, m2, v2, a2), "gap {gap}");
        }
    }

    #[test]
    fn rows_replayed_together_get_each_rows_own_replay() {
        // 37 rows (more than a pack and a touched group) of width 19 that missed 1 to 60 steps
        // (a different stretch each), exact or strided, with and without the average: the
        // replay of them all at once gives each row the floats of its replay alone
        let mut rng = Rng(23);
        let k = l2(1e-3);
        let steps = history(5, 60, 1e-3);
        let (dim, n) = (19, 37);
        let rows: Vec<[Vec<f32>; 4]> = (0..n).map(|_| random_row(&mut rng, dim, 1e-2, true)).collect();
        let lasts: Vec<u64> = (0..n).map(|_| (rng.next() * 60.0) as u64).collect();
        let grid = Fresh::new();
        let lazy = LazyFreshMap::new(&grid);
        for strided in [false, true] {
            for with_average in [false, true] {
                let mut slots: Vec<Vec<f32>> = rows
                    .iter()
                    .map(|[w, m, v, _]| [w.clone(), m.clone(), v.clone()].concat())
                    .collect();
                let mut averages: Vec<Vec<f32>> = rows.iter().map(|r| r[3].clone()).collect();
                let mut last = lasts.clone();
                let mut together: Vec<ReplayRow<'_>> = slots
                    .iter_mut()
                    .zip(averages.iter_mut())
                    .zip(last.iter_mut())
                    .map(|((slot, a), l)| (slot.as_mut_slice(), with_average.then_some(a.as_mut_slice()), l))
                    .collect();
                pulp::Arch::new().dispatch(ReplayRows {
                    rows: &mut together,
                    steps: &steps,
                    base: 0,
                    time: 60,
                    dim,
                    betas: k,
                    strided: strided.then_some(&lazy),
                });
                assert!(last.iter().all(|&l| l == 60));
                for (i, [w, m, v, a]) in rows.iter().enumerate() {
                    let [mut w, mut m, mut v, mut a] = [w.clone(), m.clone(), v.clone(), a.clone()];
                    let missed = &steps[lasts[i] as usize..];
                    let average = with_average.then_some(a.as_mut_slice());
                    match strided {
                        true => replay_strided(&mut w, &mut m, &mut v, average, missed, k),
                        false => replay(&mut w, &mut m, &mut v, average, missed, k),
                    }
                    assert_eq!(slots[i], [w, m, v].concat(), "row {i}, strided {strided}");
                    if with_average {
                        assert_eq!(averages[i], a, "row {i}'s average, strided {strided}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_matrix_power_is_repeated_steps() {
        // the power by squaring against 13 single products, with and without the average's row
        let mut one = Mat::identity();
        let mut row = Row {
            r1: [0.0; LANES],
            r2: [0.0; LANES],
            kk: [0.99; LANES],
        };
        for i in 0..LANES {
            let x = i as f32 / LANES as f32;
            (one.a11[i], one.a12[i], one.a21[i], one.a22[i]) = (0.99 - 0.1 * x, -0.05, 1e-4, 0.9);
            (row.r1[i], row.r2[i]) = (0.01 * one.a11[i], 0.01 * one.a12[i]);
        }
        let (mut product, mut product_row) = (
            Mat::identity(),
            Row {
                r1: [0.0; LANES],
                r2: [0.0; LANES],
                kk: [1.0; LANES],
            },
        );
        for _ in 0..13 {
            product_row = row.after(&product, &product_row);
            product = one.after(&product);
        }
        let power = one.pow(13);
        let (power_with, power_row) = pow_with_row(&one, &row, 13);
        for i in 0..LANES {
            for (p, q) in [
                (power.a11[i], product.a11[i]),
                (power.a12[i], product.a12[i]),
                (power.a21[i], product.a21[i]),
                (power.a22[i], product.a22[i]),
                (power_with.a11[i], product.a11[i]),
                (power_row.r1[i], product_row.r1[i]),
                (power_row.r2[i], product_row.r2[i]),
                (power_row.kk[i], product_row.kk[i]),
            ] {
                assert!((p - q).abs() < 1e-6, "{p} {q}");
            }
        }
    }
}
