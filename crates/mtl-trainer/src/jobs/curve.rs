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

/// Renders the history as an SVG document.
pub fn render_svg(history: &[EvalRecord]) -> String {
    let panels = series(history);
    let (w, h, pad) = (520.0, 180.0, 40.0);
    let total_h = h * panels.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{total_h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (p, panel) in panels.iter().enumerate() {
        let top = p as f64 * h;
        let pts: Vec<(f64, f64)> = panel.lines.iter().flat_map(|l| l.2.iter().copied()).collect();
        svg += &format!(
            "<text x=\"{pad}\" y=\"{}\" font-weight=\"bold\">{}</text>\n",
            top + 16.0,
            panel.title
        );
        svg += &format!(
            "<rect x=\"{pad}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\n",
            top + 24.0,
            w - 2.0 * pad,
            h - 48.0
        );
        if pts.is_empty() {
            svg += &format!(
                "<text x=\"{}\" y=\"{}\">no data</text>\n",
                w / 2.0 - 20.0,
                top + h / 2.0
            );
            continue;
        }
        let (x0, x1) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
        let (mut y0, mut y1) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
        if (y1 - y0).abs() < 1e-12 {
            y0 -= 0.5;
            y1 += 0.5;
        }
        let sx = |x: f64| pad + if x1 > x0 { (x - x0) / (x1 - x0) } else { 0.5 } * (w - 2.0 * pad);
        let sy = |y: f64| top + 24.0 + (1.0 - (y - y0) / (y1 - y0)) * (h - 48.0);
        svg += &format!("<text x=\"2\" y=\"{}\">{y1:.4}</text>\n", top + 32.0);
        svg += &format!("<text x=\"2\" y=\"{}\">{y0:.4}</text>\n", top + h - 26.0);
        svg += &format!("<text x=\"{pad}\" y=\"{}\">step {x0}</text>\n", top + h - 10.0);
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">step {x1}</text>\n",
            w - pad,
            top + h - 10.0
        );
        for (i, (name, color, line)) in panel.lines.iter().enumerate() {
            if line.is_empty() {
                continue;
            }
            let coords: Vec<String> = line
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            svg += &format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
                coords.join(" ")
            );
            for c in &coords {
                let (cx, cy) = c.split_once(',').unwrap_or(("0", "0"));
                svg += &format!("<circle cx=\"{cx}\" cy=\"{cy}\" r=\"2.5\" fill=\"{color}\"/>\n");
            }
            svg += &format!(
                "<text x=\"{}\" y=\"{}\" fill=\"{color}\" text-anchor=\"end\">{name}</text>\n",
                w - pad - 4.0,
                top + 38.0 + 13.0 * i as f64
            );
        }
    }
    svg + "</svg>\n"
}

/// The reliability diagram of every binary output in `metrics` (one panel each): the mean
/// prediction against the observed rate per bin, and the diagonal of perfect calibration.
pub fn render_reliability(metrics: &[mtl_eval::TaskMetrics], title: &str) -> String {
    let panels: Vec<_> = metrics
        .iter()
        .filter_map(|m| m.binary.as_ref().map(|b| (m, b)))
        .collect();
    let (w, h, pad) = (260.0, 280.0, 40.0);
    let side = w - 2.0 * pad;
    let total_w = w * panels.len().max(1) as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{total_w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (p, (m, b)) in panels.iter().enumerate() {
        let left = p as f64 * w + pad;
        let top = 40.0;
        // both axes run to the largest value seen (rare events crowd near 0 otherwise)
        let max = b
            .reliability
            .iter()
            .flat_map(|r| [r.mean_prediction, r.observed_rate])
            .fold(1e-6, f64::max);
        let sx = |x: f64| left + x / max * side;
        let sy = |y: f64| top + side - y / max * side;
        svg += &format!(
            "<text x=\"{left}\" y=\"16\" font-weight=\"bold\">{} {title}</text>\n<text x=\"{left}\" y=\"30\">ECE {:.4}</text>\n",
            m.name, b.ece
        );
        svg += &format!(
            "<rect x=\"{left}\" y=\"{top}\" width=\"{side}\" height=\"{side}\" fill=\"none\" stroke=\"#999\"/>\n<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#bbb\" stroke-dasharray=\"4\"/>\n",
            sx(0.0),
            sy(0.0),
            sx(max),
            sy(max)
        );
        let coords: Vec<String> = b
            .reliability
            .iter()
            .map(|r| format!("{:.1},{:.1}", sx(r.mean_prediction), sy(r.observed_rate)))
            .collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\n",
            coords.join(" ")
        );
        for c in &coords {
            let (cx, cy) = c.split_once(',').unwrap_or(("0", "0"));
            svg += &format!("<circle cx=\"{cx}\" cy=\"{cy}\" r=\"3\" fill=\"#1f77b4\"/>\n");
        }
        svg += &format!(
            "<text x=\"{left}\" y=\"{}\">mean prediction (0 – {max:.3})</text>\n<text x=\"{}\" y=\"{}\" transform=\"rotate(-90 {} {})\">observed rate</text>\n",
            top + side + 16.0,
            left - 8.0,
            top + side,
            left - 8.0,
            top + side
        );
    }
    svg + "</svg>\n"
}
