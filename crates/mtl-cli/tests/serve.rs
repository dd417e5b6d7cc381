//! `mtl serve`: scores over HTTP equal `mtl predict`'s for the same rows; bad requests get
//! 400/404/405/413/429 with a JSON error and the server keeps serving; SIGTERM lets a request
//! in flight finish.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

fn mtl(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_mtl"))
        .args(args)
        .arg("--quiet")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "mtl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A small ESMM trained on generated data with two dense fields (Platt calibration on), and its
/// test CSV. Platt's map is smooth, so the server's batches and `predict`'s, whose float sums
/// differ by ~1e-8, stay within the comparison's 1e-6; isotonic steps fitted on 300
/// validation rows can magnify that 100-fold (measured: 1.5e-6).
fn trained(dir: &Path) -> (String, String) {
    let data = dir.join("data");
    let data_s = data.display().to_string();
    mtl(&[
        "gen-data", "ccp", "--rows", "3000", "--seed", "4", "--small", "--dense", "2", "--out", &data_s,
    ]);
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        "schema = \"data/synth_ccp_schema.toml\"\n[data]\ntrain = \"data/synth_ccp_train.csv\"\nvalid = \"data/synth_ccp_val.csv\"\n[model]\ntype = \"esmm\"\nctr_tower = { dims = [16, 8] }\ncvr_tower = { dims = [16, 8] }\n[train]\nbatch_size = 256\nepochs = 1\ncalibration = \"platt\"\n",
    )
    .unwrap();
    let model = dir.join("model").display().to_string();
    mtl(&[
        "train",
        "--config",
        &config.display().to_string(),
        "--out",
        &model,
    ]);
    // calibrated: the server's scores must equal `mtl predict`'s, calibration applied by both
    assert!(dir.join("model/calibration.json").exists());
    (model, data.join("synth_ccp_test.csv").display().to_string())
}

/// A running `mtl serve` and its base URL; killed when dropped.
struct Server {
    child: Child,
    url: String,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Server {
    fn start(model: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mtl"))
            .args(["serve", "--model", model, "--addr", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in `{line}`"))
            .to_string();
        Self {
            child,
            url: addr,
            stdout,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// POSTs `body`; the status and the body as JSON.
fn post(agent: &ureq::Agent, url: &str, body: &str) -> (u16, Value) {
    let mut r = agent
        .post(&format!("{url}/v1/predict"))
        .header("content-type", "application/json")
        .send(body)
        .expect("an answer");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

fn get(agent: &ureq::Agent, url: &str) -> (u16, String) {
    let mut r = agent.get(url).call().expect("an answer");
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// The test CSV's rows as JSON objects of cell text, and `mtl predict`'s scores per row.
fn rows_and_scores(dir: &Path, model: &str, test: &str) -> (Vec<Value>, Vec<Vec<f32>>) {
    let scores_path = dir.join("scores.csv").display().to_string();
    mtl(&["predict", "--model", model, "--data", test, "--out", &scores_path]);
    let mut reader = csv::Reader::from_path(test).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let rows = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            let mut obj = serde_json::Map::new();
            for (name, cell) in header.iter().zip(r.iter()) {
                if !["click", "purchase", "p_click", "p_cvr"].contains(&name.as_str()) {
                    obj.insert(name.clone(), Value::String(cell.to_string()));
                }
            }
            Value::Object(obj)
        })
        .collect();
    let scores = csv::Reader::from_path(&scores_path)
        .unwrap()
        .records()
        .map(|r| r.unwrap().iter().map(|v| v.parse().unwrap()).collect())
        .collect();
    (rows, scores)
}

fn assert_close(got: &Value, want: &[Vec<f32>], what: &str) {
    let got = got.as_array().unwrap_or_else(|| panic!("{what}: {got}"));
    assert_eq!(got.len(), want.len(), "{what}");
    for (r, (g, w)) in got.iter().zip(want).enumerate() {
        let g: Vec<f64> = g
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(g.len(), w.len(), "{what} row {r}");
        for (a, b) in g.iter().zip(w) {
            assert!((a - f64::from(*b)).abs() <= 1e-6, "{what} row {r}: {a} vs {b}");
        }
    }
}

#[test]
fn served_scores_equal_predict_and_bad_requests_leave_the_server_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (model, test) = trained(dir.path());
    let (rows, want) = rows_and_scores(dir.path(), &model, &test);
    assert!(rows.len() >= 250, "{} test rows", rows.len());
    assert!(
        rows[0].as_object().unwrap().keys().any(|k| k.starts_with('d')),
        "dense fields sent"
    );
    let server = Server::start(&model, &["--max-rows", "500", "--max-body-bytes", "262144"]);
    let url = server.url.clone();
    let client = agent();

    // the same rows, sent in requests of 1, 7 and 100 rows from 8 threads at once (so that
    // the worker batches requests together), come back with `mtl predict`'s scores
    std::thread::scope(|s| {
        for t in 0..8 {
            let (rows, want, url) = (&rows, &want, &url);
            s.spawn(move || {
                let client = agent();
                let size = [1, 7, 100][t % 3];
                let mut start = t * 3;
                while start < rows.len().min(250) {
                    let end = (start + size).min(rows.len());
                    let body = json!({ "rows": rows[start..end] }).to_string();
                    let (status, answer) = post(&client, url, &body);
                    assert_eq!(status, 200, "{answer}");
                    assert_eq!(answer["outputs"], json!(["ctr", "cvr", "ctcvr"]));
                    assert_close(
                        &answer["scores"],
                        &want[start..end],
                        &format!("rows {start}..{end}"),
                    );
                    start = end + 37;
                }
            });
        }
    });
    // columns: one list per feature, scores one list per output
    let n = 40;
    let mut columns = serde_json::Map::new();
    for key in rows[0].as_object().unwrap().keys() {
        columns.insert(key.clone(), rows[..n].iter().map(|r| r[key].clone()).collect());
    }
    let (status, answer) = post(&client, &url, &json!({ "columns": columns }).to_string());
    assert_eq!(status, 200, "{answer}");
    let by_column: Vec<Vec<f32>> = (0..n)
        .map(|r| {
            (0..3)
                .map(|o| answer["columns"][o][r].as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    assert_close(&json!(by_column), &want[..n], "columns");
    let model_id = answer["model_id"].as_str().unwrap().to_string();
    assert_eq!(model_id.len(), 16);

    // bad requests: each answered with its status and a JSON error naming the problem, and a
    // good request after each still succeeds
    let good = json!({ "rows": rows[..2] }).to_string();
    let mut missing = rows[0].clone();
    let first_key = missing.as_object().unwrap().keys().next().unwrap().clone();
    missing.as_object_mut().unwrap().remove(&first_key);
    let mut wrong = rows[0].clone();
    wrong["d0"] = json!("high");
    let many: Vec<Value> = (0..501).map(|i| rows[i % rows.len()].clone()).collect();
    let huge = format!("{{\"rows\": [{}]}}", vec![good.as_str(); 2000].join(","));
    let cases: Vec<(String, u16, Vec<String>)> = vec![
        ("{\"rows\": [".into(), 400, vec!["malformed JSON".into()]),
        ("not json".into(), 400, vec!["line 1".into()]),
        (
            json!({ "rows": [missing] }).to_string(),
            400,
            vec!["rows[0]".into(), format!("missing feature `{first_key}`")],
        ),
        (
            json!({ "rows": [rows[0], wrong] }).to_string(),
            400,
            vec!["rows[1].d0".into(), "`high` is not a number".into()],
        ),
        (
            json!({ "rows": many }).to_string(),
            413,
            vec!["501 rows".into(), "--max-rows".into()],
        ),
        (huge, 413, vec!["--max-body-bytes".into()]),
    ];
    for (body, status, needles) in &cases {
        let (got, answer) = post(&client, &url, body);
        assert_eq!(got, *status, "{answer}");
        let message = answer["error"].as_str().unwrap_or_else(|| panic!("{answer}"));
        for n in needles {
            assert!(message.contains(n.as_str()), "`{message}` lacks `{n}`");
        }
        let (ok, _) = post(&client, &url, &good);
        assert_eq!(ok, 200, "a good request after `{message}`");
    }
    let (status, body) = get(&client, &format!("{url}/v1/nothing"));
    assert_eq!(status, 404);
    assert!(body.contains("no such endpoint"), "{body}");
    let (status, _) = get(&client, &format!("{url}/v1/predict"));
    assert_eq!(status, 405);

    // health, model description, metrics
    let (status, body) = get(&client, &format!("{url}/health"));
    assert_eq!(status, 200);
    assert!(body.contains(&model_id), "{body}");
    let (_, body) = get(&client, &format!("{url}/v1/model"));
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["type"], "esmm");
    assert_eq!(info["outputs"][2]["name"], "ctcvr");
    assert_eq!(
        info["features"].as_array().unwrap().len(),
        rows[0].as_object().unwrap().len()
    );
    let (_, metrics) = get(&client, &format!("{url}/metrics"));
    let counter = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert!(counter("mtl_rows_scored_total") >= 250.0, "{metrics}");
    assert_eq!(counter("mtl_errors_total{kind=\"too_large\"}"), 2.0, "{metrics}");
    assert_eq!(
        counter("mtl_errors_total{kind=\"bad_request\"}"),
        4.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("mtl_request_duration_seconds_bucket"),
        "{metrics}"
    );
    drop(server);
}

/// A client that sends its headers and part of its body, then stops: answered 408 once
/// `--body-timeout-ms` has passed, and the server goes on serving.
#[test]
fn a_body_that_stops_arriving_is_answered_408() {
    let dir = tempfile::tempdir().unwrap();
    let (model, test) = trained(dir.path());
    let (rows, want) = rows_and_scores(dir.path(), &model, &test);
    let server = Server::start(&model, &["--body-timeout-ms", "500"]);
    let host = server.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&host).unwrap();
    let head = format!(
        "POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"rows\""
    );
    let started = std::time::Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let took = started.elapsed();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("--body-timeout-ms"), "{response}");
    assert!(
        took >= std::time::Duration::from_millis(450) && took < std::time::Duration::from_secs(10),
        "{took:?}"
    );
    let (status, answer) = post(&agent(), &server.url, &json!({ "rows": rows[..2] }).to_string());
    assert_eq!(status, 200, "{answer}");
    assert_close(&answer["scores"], &want[..2], "after a timed-out request");
}

#[cfg(unix)]
#[test]
fn a_full_queue_answers_429_and_sigterm_lets_a_request_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let (model, test) = trained(dir.path());
    let (rows, want) = rows_and_scores(dir.path(), &model, &test);
    let mut server = Server::start(&model, &["--queue", "1", "--max-batch-rows", "64"]);
    let url = server.url.clone();
    // 48 requests of 250 rows at once against a queue of one: some are refused with 429 (and
    // say so), every answered one has the right scores
    let body = json!({ "rows": rows[..250] }).to_string();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..48)
            .map(|_| {
                let (body, url, want) = (&body, &url, &want);
                s.spawn(move || {
                    let (status, answer) = post(&agent(), url, body);
                    match status {
                        200 => assert_close(&answer["scores"], &want[..250], "under load"),
                        429 => assert!(answer["error"].as_str().unwrap().contains("--queue"), "{answer}"),
                        other => panic!("{other}: {answer}"),
                    }
                    status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.contains(&200) && statuses.contains(&429), "{statuses:?}");

    // a request whose body is half sent when SIGTERM comes still gets its scores
    let one = json!({ "rows": rows[..3] }).to_string();
    let host = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    let head = format!(
        "POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        one.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&one.as_bytes()[..10]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    stream.write_all(&one.as_bytes()[10..]).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let answer: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_close(&answer["scores"], &want[..3], "in flight at SIGTERM");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    server.stdout.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("stopped"), "{rest}");
}
