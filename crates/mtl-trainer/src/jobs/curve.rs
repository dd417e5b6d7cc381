//! The training-curve image: one small SVG line chart per series (training and validation
//! loss, each output's main validation metric, the learned loss weights) against the step of
//! each evaluation.

use crate::fit::state::EvalRecord;

/// One line of a chart: (legend, colour, points).
type Line = (String, &'static str, Vec<(f64, f64)>);

const PALETTE: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

struct Series {
    title: String,
    lines: Vec<Line>,
}

fn series(history: &[EvalRecord]) -> Vec<Series> {
    let mut out = vec![Series {
        title: "loss".into(),
        lines: vec![
            (
                "train".into(),
                "#1f77b4",
                history.iter().map(|r| (r.step as f64, r.train_loss)).collect(),
            ),
            (
                "valid".into(),
                "#d62728",
                history
                    .iter()
                    .filter_map(|r| r.valid_loss.map(|l| (r.step as f64, l)))
                    .collect(),
            ),
        ],
    }];
    if let Some(first) = history.first() {
        for (k, task) in first.valid.iter().enumerate() {
            let (metric, _) = task.main_metric();
            let points = history
                .iter()
                .filter_map(|r| {
                    r.valid
                        .get(k)
                        .and_then(|m| m.main_metric().1)
                        .map(|v| (r.step as f64, v))
                })
                .collect();
            out.push(Series {
                title: format!("{} {metric} (valid)", task.name),
                lines: vec![("valid".into(), "#2ca02c", points)],
            });
        }
    }
    // learned loss weighting: one line per task term
    if let Some(last) = history.iter().rev().find(|r| !r.loss_weights.is_empty()) {
        let lines = last
            .loss_weights
            .iter()
            .enumerate()
            .map(|(k, (name, _))| {
                let points = history
                    .iter()
                    .filter_map(|r| {
                        r.loss_weights
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, w)| (r.step as f64, *w))
                    })
                    .collect();
                (name.clone(), PALETTE[k % PALETTE.len()], points)
            })
            .collect();
        out.push(Series {
            title: "loss weights".into(),
            lines,
        });
    }
    out
}

/// Tick values for an axis over `lo..=hi`: about four round numbers (1, 2 or 5 × 10ᵏ apart)
/// covering the range, and the decimals that show them.
fn nice_ticks(lo: f64, hi: f64) -> (Vec<f64>, usize) {
    let span = (hi - lo).max(f64::EPSILON * hi.abs().max(1.0));
    let raw = span / 4.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).floor() * step;
    // up to the first tick at or past `hi`
    let mut ticks = vec![first];
    while ticks[ticks.len() - 1] < hi - step * 1e-9 && ticks.len() < 12 {
        ticks.push(first + ticks.len() as f64 * step);
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    (ticks, decimals)
}

/// The steps where an epoch ended between two evaluations (the earlier one's step) and the
/// epoch that ended there.
fn epoch_ends(history: &[EvalRecord]) -> Vec<(f64, usize)> {
    history
        .windows(2)
        .filter(|w| w[1].epoch > w[0].epoch)
        .map(|w| (w[0].step as f64, w[0].epoch))
        .collect()
}

/// Renders the history as an SVG document: a panel per series with round-number ticks on
/// both axes, dotted lines where epochs end, the kept evaluation (`kept`, a step: early
/// stopping's best) marked, and a series evaluated once written as its values.
pub fn render_svg(history: &[EvalRecord], kept: Option<usize>) -> String {
    let panels = series(history);
    let (w, h, pad) = (520.0, 180.0, 48.0);
    let total_h = h * panels.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{total_h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (p, panel) in panels.iter().enumerate() {
        let top = p as f64 * h;
        svg += &format!(
            "<text x=\"{pad}\" y=\"{}\" font-weight=\"bold\">{}</text>\n",
            top + 14.0,
            panel.title
        );
        // the legend above the plot, never over its lines
        let mut lx = w - pad;
        for (name, color, _) in panel.lines.iter().rev().filter(|l| !l.2.is_empty()) {
            svg += &format!(
                "<text x=\"{lx}\" y=\"{}\" fill=\"{color}\" text-anchor=\"end\">{name}</text>\n",
                top + 14.0
            );
            lx -= 8.0 + 7.0 * name.chars().count() as f64;
        }
        let pts: Vec<(f64, f64)> = panel.lines.iter().flat_map(|l| l.2.iter().copied()).collect();
        let (x0, x1) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
        if pts.is_empty() || x1 <= x0 {
            // no line to draw: the values themselves
            let said: Vec<String> = panel
                .lines
                .iter()
                .filter_map(|(name, _, l)| l.first().map(|(x, y)| format!("{name} {y:.4} at step {x}")))
                .collect();
            let text = if said.is_empty() {
                "no data".to_string()
            } else {
                said.join(", ")
            };
            svg += &format!("<text x=\"{pad}\" y=\"{}\">{text}</text>\n", top + h / 2.0);
            continue;
        }
        svg += &plot(panel, (x0, x1), &pts, (top, w, h, pad), history, kept);
    }
    svg + "</svg>\n"
}

/// One panel's axes, grid, epoch ends, kept marker and lines (`frame`: top, width, height,
/// padding).
fn plot(
    panel: &Series,
    (x0, x1): (f64, f64),
    pts: &[(f64, f64)],
    (top, w, h, pad): (f64, f64, f64, f64),
    history: &[EvalRecord],
    kept: Option<usize>,
) -> String {
    let (lo, hi) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    let (y_ticks, y_dec) = nice_ticks(lo, hi);
    let (y0, y1) = (y_ticks[0], *y_ticks.last().expect("ticks"));
    let (x_ticks, _) = nice_ticks(x0, x1);
    let (plot_top, plot_h, plot_w) = (top + 24.0, h - 52.0, w - 2.0 * pad);
    let sx = |x: f64| pad + (x - x0) / (x1 - x0) * plot_w;
    let sy = |y: f64| plot_top + (1.0 - (y - y0) / (y1 - y0).max(f64::EPSILON)) * plot_h;
    let mut svg = format!(
        "<rect x=\"{pad}\" y=\"{plot_top}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#999\"/>\n"
    );
    for &t in &y_ticks {
        svg += &format!(
            "<line x1=\"{pad}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text class=\"ytick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{t:.y_dec$}</text>\n",
            w - pad,
            pad - 4.0,
            sy(t) + 4.0,
            y = sy(t)
        );
    }
    for &t in x_ticks.iter().filter(|t| (x0..=x1).contains(*t)) {
        svg += &format!(
            "<text class=\"xtick\" x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t}</text>\n",
            sx(t),
            plot_top + plot_h + 13.0
        );
    }
    svg += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">step</text>\n",
        w - pad,
        plot_top + plot_h + 26.0
    );
    for (step, epoch) in epoch_ends(history) {
        svg += &format!(
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{plot_top}\" y2=\"{}\" stroke=\"#bbb\" stroke-dasharray=\"2 3\"/><text x=\"{x:.1}\" y=\"{}\" fill=\"#888\" text-anchor=\"end\">epoch {epoch}</text>\n",
            plot_top + plot_h,
            plot_top + 10.0,
            x = sx(step) - 2.0
        );
    }
    if let Some(step) = kept.map(|s| s as f64).filter(|s| (x0..=x1).contains(s)) {
        svg += &format!(
            "<line class=\"kept\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{plot_top}\" y2=\"{}\" stroke=\"#444\" stroke-dasharray=\"5 3\"/><text x=\"{:.1}\" y=\"{}\" fill=\"#444\">kept</text>\n",
            plot_top + plot_h,
            sx(step) + 3.0,
            plot_top + plot_h - 4.0,
            x = sx(step)
        );
    }
    for (_, color, line) in panel.lines.iter().filter(|l| !l.2.is_empty()) {
        let coords: Vec<String> = line
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            coords.join(" ")
        );
    }
    svg
}

/// The Wilson score interval (95 %) of `positives` out of `rows`: where the true rate of a
/// bin lies, given its count.
fn wilson(positives: f64, rows: f64) -> (f64, f64) {
    if rows <= 0.0 {
        return (0.0, 1.0);
    }
    let (z, p) = (1.96f64, positives / rows);
    let denominator = 1.0 + z * z / rows;
    let center = (p + z * z / (2.0 * rows)) / denominator;
    let half = z * (p * (1.0 - p) / rows + z * z / (4.0 * rows * rows)).sqrt() / denominator;
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// The reliability diagram of every binary output in `metrics` (one panel each): each bin's
/// mean prediction against its observed rate, with its 95 % Wilson interval and its rows,
/// round-number ticks, and the diagonal of perfect calibration (no line joins the bins).
pub fn render_reliability(metrics: &[mtl_eval::TaskMetrics], title: &str) -> String {
    let panels: Vec<_> = metrics
        .iter()
        .filter_map(|m| m.binary.as_ref().map(|b| (m, b)))
        .collect();
    let (w, h, pad) = (280.0, 300.0, 52.0);
    let side = w - pad - 20.0;
    let total_w = w * panels.len().max(1) as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{total_w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (p, (m, b)) in panels.iter().enumerate() {
        let (left, top) = (p as f64 * w + pad, 44.0);
        // both axes run to the largest value seen, intervals included (rare events crowd near
        // 0 otherwise), at a round number
        let intervals: Vec<(f64, f64)> = (b.reliability.iter())
            .map(|r| wilson(r.observed_rate * r.rows as f64, r.rows as f64))
            .collect();
        let seen = (b.reliability.iter().map(|r| r.mean_prediction))
            .chain(intervals.iter().map(|i| i.1))
            .fold(1e-6, f64::max);
        let (ticks, decimals) = nice_ticks(0.0, seen);
        let max = *ticks.last().expect("ticks");
        let sx = |x: f64| left + x / max * side;
        let sy = |y: f64| top + side - y / max * side;
        svg += &format!(
            "<text x=\"{left}\" y=\"16\" font-weight=\"bold\">{} {title}</text>\n<text x=\"{left}\" y=\"30\">ECE {:.4} · bars: 95 % · numbers: rows</text>\n",
            m.name, b.ece
        );
        svg += &format!(
            "<rect x=\"{left}\" y=\"{top}\" width=\"{side}\" height=\"{side}\" fill=\"none\" stroke=\"#999\"/>\n<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#bbb\" stroke-dasharray=\"4\"/>\n",
            sx(0.0),
            sy(0.0),
            sx(max),
            sy(max)
        );
        for &t in &ticks {
            svg += &format!(
                "<text class=\"xtick\" x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t:.decimals$}</text><text class=\"ytick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{t:.decimals$}</text>\n",
                sx(t),
                top + side + 13.0,
                left - 4.0,
                sy(t) + 4.0
            );
        }
        // a bin's row count beside it, unless the last count drawn is too close to read both
        let mut last_label: Option<(f64, f64)> = None;
        for (r, (lo, hi)) in b.reliability.iter().zip(&intervals) {
            let (x, y) = (sx(r.mean_prediction), sy(r.observed_rate));
            svg += &format!(
                "<line class=\"bin\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#9ecae1\" stroke-width=\"3\"/><circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"#1f77b4\"/>\n",
                sy(*lo),
                sy(*hi),
            );
            if last_label.is_none_or(|(lx, ly)| (x - lx).abs() > 20.0 || (y - ly).abs() > 10.0) {
                svg += &format!(
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" fill=\"#555\">{}</text>\n",
                    x + 4.0,
                    y - 4.0,
                    r.rows
                );
                last_label = Some((x, y));
            }
        }
        svg += &format!(
            "<text x=\"{left}\" y=\"{}\">mean prediction</text>\n<text x=\"{}\" y=\"{}\" transform=\"rotate(-90 {} {})\">observed rate</text>\n",
            top + side + 28.0,
            left - 36.0,
            top + side,
            left - 36.0,
            top + side
        );
    }
    svg + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An evaluation at `step` of `epoch` with training and validation loss `loss`.
    fn record(step: usize, epoch: usize, loss: f64) -> EvalRecord {
        serde_json::from_value(serde_json::json!({
            "epoch": epoch, "step": step, "train_loss": loss, "train_losses": [],
            "valid_loss": loss + 0.01, "valid": [], "train_rows": 64, "train_secs": 0.1,
            "samples_per_sec": 640.0, "data_secs": 0.0, "comm_secs": 0.0, "reduced_bytes": 0.0,
            "gathered_bytes": 0.0, "loss_weights": [], "grad_norms": []
        }))
        .unwrap()
    }

    /// The numbers of the `class` tick labels in `svg`.
    fn ticks(svg: &str, class: &str) -> Vec<f64> {
        svg.split(&format!("class=\"{class}\""))
            .skip(1)
            .map(|rest| {
                let text = &rest[rest.find('>').unwrap() + 1..];
                text[..text.find('<').unwrap()].parse().unwrap()
            })
            .collect()
    }

    /// Four evaluations over two epochs, the loss falling to 0.58 at step 6 and rising after.
    fn four_evaluations() -> [EvalRecord; 4] {
        [
            record(2, 1, 0.64),
            record(4, 1, 0.61),
            record(6, 2, 0.58),
            record(8, 2, 0.60),
        ]
    }

    /// One binary output's metrics with three reliability bins of 10 rows: predictions 0.1,
    /// 0.2, 0.3 against observed rates 0, 0.3, 0.3.
    fn three_bins() -> Vec<mtl_eval::TaskMetrics> {
        serde_json::from_value(serde_json::json!([{
            "name": "ctr", "rows": 30, "rows_from": "all rows",
            "binary": {"auc": 0.7, "log_loss": 0.5, "mean_prediction": 0.2, "observed_rate": 0.2, "ece": 0.05,
                "reliability": [
                    {"rows": 10, "mean_prediction": 0.1, "observed_rate": 0.0},
                    {"rows": 10, "mean_prediction": 0.2, "observed_rate": 0.3},
                    {"rows": 10, "mean_prediction": 0.3, "observed_rate": 0.3}]}
        }]))
        .unwrap()
    }

    #[test]
    fn reliability_bins_carry_their_wilson_intervals_and_counts() {
        // 3 of 10: the textbook Wilson interval 0.1078 … 0.6032
        let (lo, hi) = wilson(3.0, 10.0);
        assert!(
            (lo - 0.1078).abs() < 1e-4 && (hi - 0.6032).abs() < 1e-4,
            "{lo} {hi}"
        );
        assert_eq!(wilson(0.0, 0.0), (0.0, 1.0));
        let metrics = three_bins();
        let svg = render_reliability(&metrics, "(test)");
        assert!(!svg.contains("<polyline"), "no line through noisy bins");
        assert_eq!(svg.matches("class=\"bin\"").count(), 3);
        assert!(svg.contains(">10</text>"), "bin counts");
        // the axes reach the highest interval (0.6032) at a round number, ticks rising
        let y = ticks(&svg, "ytick");
        assert!(
            y.windows(2).all(|w| w[1] > w[0]) && y.last().unwrap() >= &0.6032,
            "{y:?}"
        );
    }

    /// `svg` rendered to pixels (resvg, shapes only): its size and the share of pixels that
    /// are not the white background. With `MTL_SVG_PNG_DIR` set, written there as `name.png`
    /// for a person to look at.
    fn rendered(svg: &str, name: &str) -> (u32, u32, f64) {
        let tree = resvg::usvg::Tree::from_str(svg, &resvg::usvg::Options::default()).expect("valid SVG");
        let size = tree.size().to_int_size();
        let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).unwrap();
        pixmap.fill(resvg::tiny_skia::Color::WHITE);
        resvg::render(
            &tree,
            resvg::tiny_skia::Transform::default(),
            &mut pixmap.as_mut(),
        );
        if let Ok(dir) = std::env::var("MTL_SVG_PNG_DIR") {
            pixmap
                .save_png(std::path::Path::new(&dir).join(format!("{name}.png")))
                .unwrap();
        }
        let pixels = pixmap.pixels();
        let drawn = pixels
            .iter()
            .filter(|p| (p.red(), p.green(), p.blue()) != (255, 255, 255))
            .count();
        (size.width(), size.height(), drawn as f64 / pixels.len() as f64)
    }

    #[test]
    fn the_pictures_render_to_pixels() {
        let history = four_evaluations();
        let (w, h, drawn) = rendered(&render_svg(&history, Some(6)), "curve");
        assert!(w >= 400 && h >= 150, "{w}x{h}");
        // axes, grid, lines and markers: some of the picture, not all of it
        assert!((0.01..0.5).contains(&drawn), "{drawn}");
        let metrics = three_bins();
        let (_, _, drawn) = rendered(&render_reliability(&metrics, "(test)"), "reliability");
        assert!((0.01..0.5).contains(&drawn), "{drawn}");
    }

    #[test]
    fn ticks_are_round_numbers_that_cover_the_values() {
        let (t, decimals) = nice_ticks(0.8123, 0.8467);
        assert_eq!(decimals, 2);
        assert!(
            t.first().unwrap() <= &0.8123 && t.last().unwrap() >= &0.8467,
            "{t:?}"
        );
        for w in t.windows(2) {
            assert!(((w[1] - w[0]) - 0.01).abs() < 1e-9, "{t:?}");
        }
        let (t, decimals) = nice_ticks(0.0, 1000.0);
        assert_eq!((decimals, t.first().copied()), (0, Some(0.0)));
        assert_eq!(t, [0.0, 500.0, 1000.0]);
    }

    #[test]
    fn curves_have_ticks_in_range_epoch_ends_and_the_kept_evaluation() {
        let history = four_evaluations();
        let svg = render_svg(&history, Some(6));
        let y = ticks(&svg, "ytick");
        // the loss panel: values 0.58 … 0.62 inside the ticks, which rise evenly
        assert!(
            y.first().unwrap() <= &0.58 && y.iter().any(|t| *t >= 0.62),
            "{y:?}"
        );
        assert!(y.windows(2).all(|w| w[1] > w[0]), "{y:?}");
        let x = ticks(&svg, "xtick");
        assert!(
            !x.is_empty() && x.iter().all(|s| (2.0..=8.0).contains(s)),
            "{x:?}"
        );
        assert!(svg.contains("class=\"kept\"") && svg.contains(">kept<"));
        assert!(
            svg.contains(">epoch 1<"),
            "the first epoch ends between steps 4 and 6"
        );
        assert!(svg.matches("<polyline").count() >= 2);
        // one evaluation: its values, no line on a degenerate axis
        let once = render_svg(&history[..1], None);
        assert!(!once.contains("<polyline"), "{once}");
        assert!(
            once.contains("train 0.6400 at step 2, valid 0.6500 at step 2"),
            "{once}"
        );
    }
}
