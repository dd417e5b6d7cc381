//! `cargo xtask serve-load`: trains ESMM example and MMOE large on generated data, serves
//! each with `mtl serve` on loopback, and measures p50/p99 latency and rows/s at concurrency
//! 1, 16 and 64 (a fixed number of requests per level), the server's peak RSS, and a storm
//! of malformed requests of more than 20 kinds interleaved with good ones — every good one
//! must succeed with its scores and every bad one must get its expected status.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::{build_mtl, ccp_data, model_toml, run, run_config, train_job, work_dir};

/// Options of `cargo xtask serve-load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Smaller data and fewer requests (a smoke run).
    #[arg(long)]
    quick: bool,
    /// Rows in each scoring request.
    #[arg(long, default_value_t = 100)]
    rows_per_request: usize,
    /// Requests per concurrency level.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// CPU threads for the server's model (flex backend).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// Concurrency levels measured.
const LEVELS: [usize; 3] = [1, 16, 64];
/// Most rows per request the server is started with (the storm sends one more).
const MAX_ROWS: usize = 1000;
/// Largest body the server is started with (the storm sends a larger one).
const MAX_BODY: usize = 1 << 20;

/// A running server, stopped with SIGTERM when dropped.
struct Server {
    child: Child,
    url: String,
    /// Kept open so that the server's last lines have somewhere to go.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Server {
    fn start(mtl: &Path, model: &Path, threads: usize) -> Result<Self> {
        let mut child = Command::new(mtl)
            .args(["--quiet", "--threads", &threads.to_string(), "serve", "--model"])
            .arg(model)
            .args(["--addr", "127.0.0.1:0", "--queue", "4096"])
            .args([
                "--max-rows",
                &MAX_ROWS.to_string(),
                "--max-body-bytes",
                &MAX_BODY.to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting mtl serve")?;
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().context("server stdout")?);
        stdout.read_line(&mut line)?;
        let Some(url) = line
            .strip_prefix("listening on ")
            .and_then(|r| r.split_whitespace().next())
        else {
            bail!("mtl serve did not start: `{line}`");
        };
        Ok(Self {
            url: url.to_string(),
            child,
            _stdout: stdout,
        })
    }

    /// Peak resident memory of the server so far, in MB.
    fn peak_rss_mb(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> Result<bool> {
        run(Command::new("kill").args(["-TERM", &self.child.id().to_string()]))?;
        Ok(self.child.wait()?.success())
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Sends one request; its status and body.
fn send(agent: &ureq::Agent, method: &str, url: &str, body: &[u8]) -> Result<(u16, String)> {
    let mut response = match method {
        "GET" => agent.get(url).call()?,
        _ => agent
            .post(url)
            .header("content-type", "application/json")
            .send(body)?,
    };
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Ok((status, text))
}

/// The test file's feature cells as JSON rows (the generated CSV has no quoting).
fn feature_rows(test: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(test)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("empty test file")?.split(',').collect();
    let skip = ["click", "purchase", "p_click", "p_cvr"];
    Ok(lines
        .map(|line| {
            let mut row = serde_json::Map::new();
            for (name, cell) in header.iter().zip(line.split(',')) {
                if !skip.contains(name) {
                    row.insert((*name).to_string(), Value::String(cell.to_string()));
                }
            }
            Value::Object(row)
        })
        .collect())
}

/// Percentile `p` (0–100) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `requests` requests from `concurrency` clients; (p50 ms, p99 ms, rows/s, failures).
fn load(
    url: &str,
    bodies: &[String],
    rows_per_request: usize,
    concurrency: usize,
    requests: usize,
) -> (f64, f64, f64, usize) {
    let next = AtomicUsize::new(0);
    let failures = AtomicUsize::new(0);
    let started = Instant::now();
    let mut latencies: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..concurrency)
            .map(|_| {
                s.spawn(|| {
                    let agent = agent();
                    let mut mine = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= requests {
                            return mine;
                        }
                        let t = Instant::now();
                        match send(
                            &agent,
                            "POST",
                            &format!("{url}/v1/predict"),
                            bodies[k % bodies.len()].as_bytes(),
                        ) {
                            Ok((200, _)) => mine.push(t.elapsed().as_secs_f64() * 1e3),
                            _ => {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let ok = latencies.len();
    (
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        (ok * rows_per_request) as f64 / secs,
        failures.load(Ordering::Relaxed),
    )
}

/// One malformed request and the status it must get.
struct Bad {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    body: Vec<u8>,
    status: u16,
}

/// More than 20 kinds of bad request for a model whose features are the keys of `row`.
fn bad_requests(row: &Value) -> Vec<Bad> {
    let obj = row.as_object().expect("a row object");
    let first = obj.keys().next().expect("a feature").clone();
    let with = |key: &str, value: Value| {
        let mut r = row.clone();
        r[key] = value;
        json!({ "rows": [r] }).to_string().into_bytes()
    };
    let mut missing = row.clone();
    missing.as_object_mut().expect("object").remove(&first);
    let too_many: Vec<&Value> = std::iter::repeat_n(row, MAX_ROWS + 1).collect();
    let over_body = format!(
        "{{\"rows\": [{}]}}",
        vec![row.to_string(); MAX_BODY / 100].join(",")
    );
    let mut columns = serde_json::Map::new();
    for k in obj.keys() {
        columns.insert(k.clone(), json!([obj[k], obj[k]]));
    }
    columns.insert(first.clone(), json!([obj[&first]]));
    let p = "/v1/predict";
    let b = |name, body: Vec<u8>, status| Bad {
        name,
        method: "POST",
        path: p,
        body,
        status,
    };
    let mut cases = malformed_bodies();
    cases.extend([
        b("row not an object", b"{\"rows\": [1]}".to_vec(), 400),
        b(
            "missing feature",
            json!({ "rows": [missing] }).to_string().into_bytes(),
            400,
        ),
        b("unknown feature", with("no_such_feature", json!("1")), 400),
        b("label in a row", with("click", json!(1)), 400),
        b("boolean value", with(&first, json!(true)), 400),
        b("object value", with(&first, json!({"a": 1})), 400),
        b("array for a single id", with(&first, json!([1, 2])), 400),
        b("negative id", with(&first, json!(-1)), 400),
        b(
            "id outside the vocabulary",
            with(&first, json!(4_000_000_000u64)),
            400,
        ),
        b("id not a number", with(&first, json!("abc")), 400),
        b(
            "number out of range",
            format!("{{\"rows\": [{{\"{first}\": 1e400}}]}}").into_bytes(),
            400,
        ),
        b(
            "deep nesting",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            400,
        ),
        b(
            "columns of unequal length",
            json!({ "columns": columns }).to_string().into_bytes(),
            400,
        ),
        b(
            "column not a list",
            format!("{{\"columns\": {{\"{first}\": 1}}}}").into_bytes(),
            400,
        ),
        b(
            "too many rows",
            json!({ "rows": too_many }).to_string().into_bytes(),
            413,
        ),
        b("body over the limit", over_body.into_bytes(), 413),
        Bad {
            name: "GET on predict",
            method: "GET",
            path: p,
            body: Vec::new(),
            status: 405,
        },
        Bad {
            name: "unknown path",
            method: "POST",
            path: "/v2/score",
            body: b"{}".to_vec(),
            status: 404,
        },
    ]);
    cases
}

/// Bodies that are no request at all, whatever the model: empty, not JSON, not an object, no
/// rows.
fn malformed_bodies() -> Vec<Bad> {
    let b = |name, body: Vec<u8>| Bad {
        name,
        method: "POST",
        path: "/v1/predict",
        body,
        status: 400,
    };
    vec![
        b("empty body", Vec::new()),
        b("truncated JSON", b"{\"rows\": [".to_vec()),
        b("not JSON", b"rows=1".to_vec()),
        b("invalid UTF-8", vec![b'{', 0xff, 0xfe, b'}']),
        b("JSON null", b"null".to_vec()),
        b("top-level array", b"[]".to_vec()),
        b("unknown top key", b"{\"data\": []}".to_vec()),
        b("rows not a list", b"{\"rows\": 5}".to_vec()),
        b("no rows", b"{\"rows\": []}".to_vec()),
        b("rows and columns", b"{\"rows\": [], \"columns\": {}}".to_vec()),
    ]
}

/// Good and bad requests interleaved from 16 clients: (good sent, good failed, bad sent,
/// bad answered otherwise than expected, kinds).
fn storm(
    url: &str,
    good: &str,
    good_rows: usize,
    bad: &[Bad],
    rounds: usize,
) -> (usize, usize, usize, usize) {
    let total = bad.len() * rounds * 2;
    let next = AtomicUsize::new(0);
    let good_failed = AtomicUsize::new(0);
    let bad_wrong = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                let agent = agent();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= total {
                        return;
                    }
                    if k.is_multiple_of(2) {
                        let ok = match send(&agent, "POST", &format!("{url}/v1/predict"), good.as_bytes()) {
                            Ok((200, body)) => {
                                serde_json::from_str::<Value>(&body)
                                    .ok()
                                    .and_then(|v| v["scores"].as_array().map(Vec::len))
                                    == Some(good_rows)
                            }
                            _ => false,
                        };
                        if !ok {
                            good_failed.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        let b = &bad[(k / 2) % bad.len()];
                        let answer = send(&agent, b.method, &format!("{url}{}", b.path), &b.body);
                        let right = matches!(&answer, Ok((status, body))
                            if *status == b.status && body.contains("\"error\""));
                        if !right {
                            eprintln!(
                                "   bad request `{}`: expected {}, got {:?}",
                                b.name,
                                b.status,
                                answer.map(|a| a.0)
                            );
                            bad_wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    (
        total / 2,
        good_failed.load(Ordering::Relaxed),
        total / 2,
        bad_wrong.load(Ordering::Relaxed),
    )
}

/// Runs the load test and writes `target/xtask/serve/results.{json,md}`.
pub fn serve_load(a: &LoadArgs) -> Result<()> {
    let mtl = build_mtl()?;
    let (rows, requests) = if a.quick {
        (20_000, a.requests.min(300))
    } else {
        (200_000, a.requests)
    };
    let data = ccp_data(&mtl, rows, 2022)?;
    let dir = work_dir("serve");
    let test = data.join("synth_ccp_test.csv");
    let features = feature_rows(&test)?;
    let rpr = a.rows_per_request.clamp(1, MAX_ROWS);
    let bodies: Vec<String> = (0..64)
        .map(|k| {
            let start = (k * rpr) % features.len().saturating_sub(rpr).max(1);
            json!({ "rows": features[start..start + rpr] }).to_string()
        })
        .collect();
    let mut results = Vec::new();
    let mut md = format!(
        "{rpr} rows per request, {requests} requests per level, server on {} thread(s), loopback; \
         `cargo xtask serve-load{}`\n\n| model | concurrency | p50 ms | p99 ms | rows/s | failed |\n|---|---|---|---|---|---|\n",
        a.threads,
        if a.quick { " --quick" } else { "" }
    );
    for (model, size) in [("esmm", "example"), ("mmoe", "large")] {
        let name = format!("{model}-{size}");
        let config = run_config(
            &data.join("synth_ccp_schema.toml"),
            &data.join("synth_ccp_train.csv"),
            None,
            &test,
            &model_toml(model, size)?,
            2022,
            "epochs = 1\nbatch_size = 1024\n",
        );
        let (metrics, _) = train_job(&mtl, &name, &config, a.threads, &dir)?;
        let model_dir = dir.join(&name);
        // mtl predict on the same file, as a reference: the whole command, and the model alone
        let out = dir.join(format!("{name}-scores.csv"));
        let started = Instant::now();
        crate::predict_csv(&mtl, &model_dir, &test, &out, a.threads, None)?;
        let predict_rows_per_sec = features.len() as f64 / started.elapsed().as_secs_f64();
        let model_rows_per_sec = metrics["inference_samples_per_sec"].as_f64();
        let server = Server::start(&mtl, &model_dir, a.threads)?;
        eprintln!("== {name}: serving at {}", server.url);
        load(&server.url, &bodies, rpr, 4, 40);
        let mut levels = Vec::new();
        for c in LEVELS {
            let (p50, p99, rows_per_sec, failed) = load(&server.url, &bodies, rpr, c, requests);
            eprintln!(
                "   concurrency {c}: p50 {p50:.2} ms, p99 {p99:.2} ms, {rows_per_sec:.0} rows/s, {failed} failed"
            );
            md += &format!("| {name} | {c} | {p50:.2} | {p99:.2} | {rows_per_sec:.0} | {failed} |\n");
            levels.push(json!({"concurrency": c, "p50_ms": p50, "p99_ms": p99, "rows_per_sec": rows_per_sec, "failed": failed}));
        }
        let bad = bad_requests(&features[0]);
        let (good_sent, good_failed, bad_sent, bad_wrong) =
            storm(&server.url, &bodies[0], rpr, &bad, if a.quick { 2 } else { 10 });
        eprintln!(
            "   storm: {} kinds of bad request, {bad_sent} sent ({bad_wrong} answered wrongly); {good_sent} good ones, {good_failed} failed",
            bad.len()
        );
        let rss = server.peak_rss_mb();
        let clean = server.stop()?;
        results.push(json!({
            "job": name,
            "levels": levels,
            "predict_command_rows_per_sec": predict_rows_per_sec,
            "model_inference_rows_per_sec": model_rows_per_sec,
            "server_peak_rss_mb": rss,
            "storm": {"kinds": bad.len(), "bad_sent": bad_sent, "bad_wrong": bad_wrong, "good_sent": good_sent, "good_failed": good_failed},
            "clean_shutdown": clean,
        }));
        md += &format!(
            "| {name} | `mtl predict` (whole command; model alone {}) | | | {predict_rows_per_sec:.0} | |\n",
            model_rows_per_sec.map_or("-".into(), |v| format!("{v:.0} rows/s"))
        );
        md += &format!(
            "| {name} | storm: {} kinds, {bad_sent} bad sent, {bad_wrong} answered wrongly; {good_sent} good, {good_failed} failed; peak RSS {} MB; SIGTERM exit {} | | | | |\n",
            bad.len(),
            rss.map_or("-".into(), |r| format!("{r:.0}")),
            if clean { "clean" } else { "NOT clean" }
        );
        if good_failed > 0 || bad_wrong > 0 || !clean {
            std::fs::write(dir.join("results.md"), &md)?;
            bail!("{name}: the storm or shutdown failed (see above)");
        }
    }
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&results)?)?;
    std::fs::write(dir.join("results.md"), &md)?;
    println!("{md}");
    eprintln!("== wrote {}", dir.join("results.md").display());
    Ok(())
}
