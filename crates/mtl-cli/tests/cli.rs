//! The `mtl` binary: bad input exits non-zero with one clear line and no panic; a small
//! train → eval → predict round trip through the command line.

use std::path::Path;
use std::process::{Command, Output};

fn mtl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mtl"))
        .args(args)
        .arg("--quiet")
        .output()
        .expect("runs")
}

fn assert_user_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success: {stderr}");
    assert!(
        !stderr.contains("panicked"),
        "panic instead of an error: {stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "`{n}` not in: {stderr}");
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const SCHEMA: &str = "embed_dim = 4\n[[sparse]]\nname = \"u\"\nvocab_size = 10\n[[sparse]]\nname = \"i\"\nfit = true\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n[[labels]]\nname = \"purchase\"\nkind = \"binary\"\n";

fn csv(rows: usize) -> String {
    let mut s = String::from("click,purchase,u,i,rid\n");
    for r in 0..rows {
        let click = usize::from(r % 3 == 0);
        let buy = usize::from(r % 9 == 0);
        s += &format!("{click},{buy},{},{},row{r}\n", r % 10, ["a", "b", "c"][r % 3]);
    }
    s
}

fn config(dir: &Path, extra: &str) -> String {
    write(dir, "schema.toml", SCHEMA);
    write(dir, "train.csv", &csv(300));
    write(
        dir,
        "run.toml",
        &format!(
            "schema = \"schema.toml\"\n[data]\ntrain = \"train.csv\"\nvalid = \"train.csv\"\n[model]\ntype = \"esmm\"\nctr_tower = {{ dims = [8] }}\ncvr_tower = {{ dims = [8] }}\n[train]\nbatch_size = 64\n{extra}"
        ),
    )
}

#[test]
fn missing_config_file() {
    let out = mtl(&["train", "--config", "/nonexistent/run.toml"]);
    assert_user_error(&out, &["/nonexistent/run.toml"]);
}

#[test]
fn wrong_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "learning_rate = 0.1\n");
    let out = mtl(&[
        "train",
        "--config",
        &cfg,
        "--out",
        &dir.path().join("m").display().to_string(),
    ]);
    assert_user_error(&out, &["run.toml", "learning_rate"]);
}

#[test]
fn unknown_backend() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let out = mtl(&[
        "train",
        "--config",
        &cfg,
        "--backend",
        "tpu",
        "--out",
        &dir.path().join("m").display().to_string(),
    ]);
    assert_user_error(&out, &["unknown backend `tpu`"]);
}

#[test]
fn model_dir_without_weights() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "config.toml", "");
    let data = write(dir.path(), "d.csv", &csv(5));
    let out = mtl(&[
        "eval",
        "--model",
        &dir.path().display().to_string(),
        "--data",
        &data,
    ]);
    assert_user_error(&out, &["not a trained model directory"]);
    let out = mtl(&[
        "predict",
        "--model",
        "/nonexistent/model",
        "--data",
        &data,
        "--out",
        "/tmp/x.csv",
    ]);
    assert_user_error(&out, &["/nonexistent/model"]);
}

#[test]
fn bad_data_row_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let mut bad = csv(20);
    bad += "1,0,12,a,row-bad\n"; // u = 12 is outside vocab_size 10, on line 22
    write(dir.path(), "train.csv", &bad);
    let out = mtl(&[
        "train",
        "--config",
        &cfg,
        "--out",
        &dir.path().join("m").display().to_string(),
    ]);
    assert_user_error(&out, &["train.csv:22", "column `u`", "outside the vocabulary"]);
}

#[test]
fn train_eval_predict_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "epochs = 2\n");
    let model = dir.path().join("model").display().to_string();
    let out = mtl(&["train", "--config", &cfg, "--out", &model]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("esmm: 10 steps"), "{stdout}");
    assert!(stdout.contains("rows with click = 1"), "{stdout}");
    let data = dir.path().join("train.csv").display().to_string();
    let metrics = dir.path().join("m.json").display().to_string();
    let out = mtl(&["eval", "--model", &model, "--data", &data, "--out", &metrics]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&metrics).unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    // GAUC by user: 10 users, each with clicks and non-clicks among its 30 rows
    let grouped = dir.path().join("g.json").display().to_string();
    let out = mtl(&[
        "eval",
        "--model",
        &model,
        "--data",
        &data,
        "--out",
        &grouped,
        "--group-by",
        "u",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("gauc "), "printed");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&grouped).unwrap()).unwrap();
    let ctr = &json[0]["binary"]["gauc"];
    assert_eq!(
        (ctr["groups"].as_u64(), ctr["rows"].as_u64()),
        (Some(10), Some(300)),
        "{ctr}"
    );
    assert!((0.0..=1.0).contains(&ctr["value"].as_f64().unwrap()), "{ctr}");
    assert_user_error(
        &mtl(&["eval", "--model", &model, "--data", &data, "--group-by", "nosuch"]),
        &["nosuch", "--group-by"],
    );
    let pred = dir.path().join("p.csv").display().to_string();
    let out = mtl(&[
        "predict",
        "--model",
        &model,
        "--data",
        &data,
        "--out",
        &pred,
        "--id-column",
        "rid",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&pred).unwrap();
    assert!(
        text.starts_with("rid,ctr,cvr,ctcvr\nrow0,"),
        "{}",
        &text[..60.min(text.len())]
    );
    assert_eq!(text.lines().count(), 301);
    // a second train into the same directory is refused rather than overwriting it
    let out = mtl(&["train", "--config", &cfg, "--out", &model]);
    assert_user_error(&out, &["--resume"]);
}

#[test]
fn a_run_without_a_terminal_prints_progress_lines() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "epochs = 2\n");
    // progress on (no --quiet), stderr a pipe: lines stand in for the bar
    let train = |out: &str, every: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mtl"))
            .args(["train", "--config", &cfg, "--out"])
            .arg(dir.path().join(out))
            .args(every)
            .output()
            .unwrap()
    };
    let out = train("a", &["--log-every", "0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("epoch ")).collect();
    // 300 rows, batch 64: 5 steps an epoch, a line after each
    assert_eq!(lines.len(), 10, "{stderr}");
    assert!(
        lines[0].starts_with("epoch 1/2: 64/300 rows (21 %), "),
        "{}",
        lines[0]
    );
    assert!(
        lines[9].starts_with("epoch 2/2: 300/300 rows (100 %), "),
        "{}",
        lines[9]
    );
    for line in &lines {
        // whole numbers: rows/s and eta without a fraction, then the loss
        let rate = line.split(", ").nth(1).unwrap();
        let (number, unit) = rate.split_once(' ').unwrap();
        assert!(number.parse::<u64>().is_ok() && unit == "rows/s", "{line}");
        assert!(line.contains(", eta ") && line.contains("s, loss "), "{line}");
    }
    // every 30 s by default: a short run prints none
    let out = train("b", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.lines().any(|l| l.starts_with("epoch ")),
        "{stderr}"
    );
    assert_user_error(&train("c", &["--log-every=-1"]), &["--log-every -1", "0 or more"]);
}

/// Census-like rows: age, education, hours, marital status and income as text, the income
/// band tied to education and hours, marriage to age (no public data: generated here).
fn census_like(rows: usize) -> String {
    let mut out = String::from("age,education,hours,marital-status,income\n");
    let (mut state, educations) = (7u64, ["HS-grad", "Bachelors", "Masters", "Doctorate"]);
    for _ in 0..rows {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let (age, e, hours) = (
            18 + (state >> 33) % 60,
            (state >> 20) % 4,
            20 + (state >> 40) % 40,
        );
        let married = (age > 30) ^ ((state >> 10) % 5 == 0);
        let rich = e * 15 + hours > 60 + (state >> 50) % 30;
        let marital = if married {
            "Married-civ-spouse"
        } else {
            "Never-married"
        };
        let income = if rich { ">50K" } else { "<=50K" };
        out += &format!("{age},{},{hours},{marital},{income}\n", educations[e as usize]);
    }
    out
}

#[test]
fn esmm_trains_on_census_with_a_derived_conversion_label() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "census.csv", &census_like(600));
    // ESMM's conversion must be nested in its click: derived as `married and rich`
    write(
        d,
        "schema.toml",
        "embed_dim = 4\n[[sparse]]\nname = \"education\"\nfit = true\n\
         [[dense]]\nname = \"age\"\nstandardize = true\n[[dense]]\nname = \"hours\"\nstandardize = true\n\
         [[labels]]\nname = \"married\"\nkind = \"binary\"\nexpr = '`marital-status` == \"Married-civ-spouse\"'\n\
         [[labels]]\nname = \"married_rich\"\nkind = \"binary\"\n\
         expr = '`marital-status` == \"Married-civ-spouse\" and income == \">50K\"'\n",
    );
    let cfg = write(
        d,
        "run.toml",
        "schema = \"schema.toml\"\n[data]\ntrain = \"census.csv\"\nvalid = \"census.csv\"\n[model]\n\
         type = \"esmm\"\nclick_label = \"married\"\nconversion_label = \"married_rich\"\n\
         ctr_tower = { dims = [8] }\ncvr_tower = { dims = [8] }\n[train]\nbatch_size = 64\nepochs = 3\n",
    );
    let model = d.join("m").display().to_string();
    let out = mtl(&["train", "--config", &cfg, "--out", &model]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // the saved schema keeps the expressions; the model learned the married task
    let saved = std::fs::read_to_string(d.join("m/schema.toml")).unwrap();
    assert!(
        saved.contains("income == \\\">50K\\\"") || saved.contains("income == \">50K\""),
        "{saved}"
    );
    // the observed rates of the evaluation are the derived labels' rates, counted here
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("m/metrics.json")).unwrap()).unwrap();
    let rows = census_like(600);
    let count = |f: &dyn Fn(&str) -> bool| rows.lines().skip(1).filter(|l| f(l)).count() as f64 / 600.0;
    let married = count(&|l| l.contains("Married-civ-spouse"));
    let both = count(&|l| l.contains("Married-civ-spouse") && l.ends_with(">50K"));
    let valid = metrics["valid"].as_array().unwrap();
    let observed = |name: &str| {
        let m = valid.iter().rev().find(|m| m["name"] == name).unwrap();
        m["binary"]["observed_rate"].as_f64().unwrap()
    };
    assert!(
        (observed("ctr") - married).abs() < 1e-9,
        "{} vs {married}",
        observed("ctr")
    );
    assert!(
        (observed("ctcvr") - both).abs() < 1e-9,
        "{} vs {both}",
        observed("ctcvr")
    );
    assert!(
        both > 0.05 && married - both > 0.05,
        "both classes of each: {married}, {both}"
    );
    // predicting needs neither the marital status nor the income
    write(
        d,
        "new.csv",
        "age,education,hours\n40,Masters,50\n22,HS-grad,30\n",
    );
    let scores = d.join("s.csv").display().to_string();
    let new = d.join("new.csv").display().to_string();
    let out = mtl(&["predict", "--model", &model, "--data", &new, "--out", &scores]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&scores).unwrap().lines().count(), 3);
}

#[test]
fn configs_compose_from_a_base_and_set_any_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    config(d, "");
    // one shared [data]/[train] block in another folder, its paths relative to it
    std::fs::create_dir(d.join("shared")).unwrap();
    std::fs::rename(d.join("schema.toml"), d.join("shared/schema.toml")).unwrap();
    std::fs::rename(d.join("train.csv"), d.join("shared/train.csv")).unwrap();
    write(
        &d.join("shared"),
        "base.toml",
        "schema = \"schema.toml\"\n[data]\ntrain = \"train.csv\"\n[train]\nbatch_size = 64\nepochs = 1\nlr = 0.1\n",
    );
    let cfg = write(
        d,
        "esmm.toml",
        "base = \"shared/base.toml\"\n[model]\ntype = \"esmm\"\nctr_tower = { dims = [8] }\ncvr_tower = { dims = [8] }\n[train]\nepochs = 2\n",
    );
    let model = d.join("m").display().to_string();
    let out = mtl(&[
        "train",
        "--config",
        &cfg,
        "--out",
        &model,
        "--set",
        "train.lr=0.005",
        "--set",
        "data.bad_rows=skip",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // the run's saved config: the file over its base, the sets over both, paths absolute
    let saved: toml::Table = std::fs::read_to_string(d.join("m/config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(saved["train"]["lr"].as_float(), Some(0.005));
    assert_eq!(
        saved["train"]["epochs"].as_integer(),
        Some(2),
        "the file over its base"
    );
    assert_eq!(
        saved["train"]["batch_size"].as_integer(),
        Some(64),
        "from the base"
    );
    assert_eq!(saved["data"]["bad_rows"].as_str(), Some("skip"));
    let train = d.join("shared/train.csv").display().to_string();
    assert_eq!(saved["data"]["train"].as_str(), Some(train.as_str()));
    // `config show`: the config as training reads it, defaults filled in
    let shown = mtl(&["config", "show", "--config", &cfg, "--set", "train.seed=9"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success() && text.contains("seed = 9") && text.contains("ema_decay"),
        "{text}"
    );
    // a set value is checked like the file's: its type, its key, its range
    for (set, needles) in [
        ("train.lr=abc", &["`lr = \"abc\"`", "expected a number"][..]),
        ("train.nosuch=1", &["unknown field `nosuch`"][..]),
        ("train.batch_size=0", &["batch_size"][..]),
        ("lr", &["--set lr", "SECTION.KEY=VALUE"][..]),
    ] {
        assert_user_error(
            &mtl(&["train", "--config", &cfg, "--out", &model, "--set", set]),
            needles,
        );
    }
    assert_user_error(
        &mtl(&["train", "--resume", &model, "--set", "train.lr=1"]),
        &["--set", "--resume"],
    );
}

#[test]
fn training_evaluations_report_gauc_by_a_column() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "eval_every_steps = 2\nearly_stopping = { metric = \"ctr.gauc\", patience = 50 }\n[metrics]\ngroup_by = \"u\"\n",
    );
    let model = dir.path().join("m").display().to_string();
    let out = mtl(&["train", "--config", &cfg, "--out", &model]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("m/metrics.json")).unwrap()).unwrap();
    let history = metrics["history"].as_array().expect("evaluations");
    assert!(history.len() >= 2, "{metrics}");
    for record in history {
        // 10 users, each with both classes among its 30 validation rows
        let ctr = record["valid"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "ctr")
            .unwrap();
        let gauc = &ctr["binary"]["gauc"];
        assert_eq!(
            (gauc["groups"].as_u64(), gauc["rows"].as_u64()),
            (Some(10), Some(300)),
            "{gauc}"
        );
    }
    // early stopping watched it: the best value its state keeps is the best GAUC
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("m/checkpoint/state.json")).unwrap()).unwrap();
    let best = state["best"][0].as_f64();
    let values: Vec<f64> = history
        .iter()
        .map(|r| {
            let ctr = r["valid"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == "ctr")
                .unwrap();
            ctr["binary"]["gauc"]["value"].as_f64().unwrap()
        })
        .collect();
    assert_eq!(best, values.iter().copied().reduce(f64::max), "{metrics}");
    assert_user_error(
        &mtl(&[
            "train",
            "--config",
            &config(dir.path(), "early_stopping = { metric = \"ctr.gauc\" }\n"),
            "--out",
            &dir.path().join("x").display().to_string(),
        ]),
        &["ctr.gauc", "[metrics] group_by"],
    );
    // the column must exist in the validation file
    let cfg = config(dir.path(), "[metrics]\ngroup_by = \"nosuch\"\n");
    let other = dir.path().join("n").display().to_string();
    assert_user_error(
        &mtl(&["train", "--config", &cfg, "--out", &other]),
        &["nosuch", "metrics.group_by"],
    );
}

/// The sample weight of row `r` of [`weighted_csv`]: 3 on every other clicked row, else 0 or 1.
fn weight_of_row(r: usize) -> usize {
    if r.is_multiple_of(6) { 3 } else { r % 2 }
}

/// [`csv`] with a column `w` of sample weights ([`weight_of_row`]) and a column `one` of 1s.
fn weighted_csv(rows: usize) -> String {
    let text = csv(rows);
    let mut lines = text.lines();
    let mut out = format!("{},w,one\n", lines.next().unwrap());
    for (r, line) in lines.enumerate() {
        out += &format!("{line},{},1\n", weight_of_row(r));
    }
    out
}

fn weighted_config(dir: &Path, name: &str, weight: Option<&str>) -> String {
    let weight = weight.map_or(String::new(), |w| format!("weight = \"{w}\"\n"));
    write(
        dir,
        name,
        &format!(
            "schema = \"schema.toml\"\n[data]\ntrain = \"train.csv\"\nvalid = \"train.csv\"\ntest = \"train.csv\"\n{weight}[model]\ntype = \"esmm\"\nctr_tower = {{ dims = [8] }}\ncvr_tower = {{ dims = [8] }}\n[train]\nbatch_size = 64\nepochs = 2\n"
        ),
    )
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn sample_weights_count_in_training_and_every_metric_and_predict_needs_none() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "schema.toml", SCHEMA);
    write(d, "train.csv", &weighted_csv(300));
    let run = |cfg: &str, out: &str| {
        let out_dir = d.join(out).display().to_string();
        let done = mtl(&["train", "--config", cfg, "--out", &out_dir]);
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
        out_dir
    };
    let weighted = run(&weighted_config(d, "w.toml", Some("w")), "w");
    let metrics = json(&d.join("w/metrics.json"));
    let ctr = &metrics["test"][0];
    assert_eq!(ctr["rows_from"], "all rows, weighted by w", "{ctr}");
    // the observed click rate counts each row by its weight: Σ w·click / Σ w by hand
    let (mut wc, mut w) = (0.0, 0.0);
    for r in 0..300 {
        let (weight, click) = (weight_of_row(r) as f64, f64::from(u8::from(r % 3 == 0)));
        (wc, w) = (wc + weight * click, w + weight);
    }
    let observed = ctr["binary"]["observed_rate"].as_f64().unwrap();
    assert!((observed - wc / w).abs() < 1e-12, "{observed} vs {}", wc / w);
    // `mtl eval --weight` gives the run's own test metrics; without it, the plain ones
    let test = d.join("train.csv").display().to_string();
    let eval = |extra: &[&str], out: &str| {
        let out = d.join(out).display().to_string();
        let mut args = vec!["eval", "--model", &weighted, "--data", &test, "--out", &out];
        args.extend(extra);
        let done = mtl(&args);
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
        json(Path::new(&out))
    };
    let (with, without) = (eval(&["--weight", "w"], "e1.json"), eval(&[], "e2.json"));
    assert_eq!(with[0]["binary"], ctr["binary"]);
    assert_ne!(
        without[0]["binary"]["observed_rate"],
        ctr["binary"]["observed_rate"]
    );
    // prediction never reads the weights: a file without the column predicts
    write(d, "plain.csv", &csv(20));
    let plain = d.join("plain.csv").display().to_string();
    let scores = d.join("p.csv").display().to_string();
    let done = mtl(&[
        "predict", "--model", &weighted, "--data", &plain, "--out", &scores,
    ]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    // weights of 1 train the very model no weights train (its scores bit for bit)
    let ones = run(&weighted_config(d, "one.toml", Some("one")), "one");
    let none = run(&weighted_config(d, "none.toml", None), "none");
    let scores_of = |model: &str| {
        let out = d.join("s.csv").display().to_string();
        let done = mtl(&["predict", "--model", model, "--data", &plain, "--out", &out]);
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
        std::fs::read_to_string(&out).unwrap()
    };
    let (ones, none, weighted) = (scores_of(&ones), scores_of(&none), scores_of(&weighted));
    assert!(ones == none, "weights of 1 changed the model:\n{ones}\n{none}");
    assert!(weighted != none, "the weights changed nothing");
    // a negative weight names the file, line and column; a weight column the schema reads is refused
    let mut bad = weighted_csv(20);
    bad += "1,0,3,a,row-bad,-0.5,1\n";
    write(d, "train.csv", &bad);
    let out = mtl(&[
        "train",
        "--config",
        &weighted_config(d, "w.toml", Some("w")),
        "--out",
        &d.join("bad").display().to_string(),
    ]);
    assert_user_error(&out, &["train.csv:22", "column `w`", "negative"]);
    let out = mtl(&[
        "train",
        "--config",
        &weighted_config(d, "c.toml", Some("click")),
        "--out",
        &d.join("c").display().to_string(),
    ]);
    assert_user_error(&out, &["data.weight", "click", "label"]);
}

fn repo() -> std::path::PathBuf {
    // at run time: a binary reused through a shared target directory was built elsewhere
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(
            || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            std::path::PathBuf::from,
        )
        .join("../..")
}

#[test]
fn shipped_configs_parse() {
    let mut n = 0;
    for entry in std::fs::read_dir(repo().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with("-schema.toml") {
            mtl_features::Schema::from_file(&path).unwrap();
        } else {
            use mtl_trainer::Registry;
            let c = mtl_trainer::RunConfig::<mtl_models::Models>::from_file(&path)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let kind = mtl_models::Models::kind(&c.model);
            // `esmm-chain-example.toml` holds an `esmm_chain` model
            assert!(
                name.replace('-', "_").starts_with(kind),
                "{name} holds a {kind} model"
            );
        }
        n += 1;
    }
    assert!(n >= 7);
}

/// Runs `mtl train` on `cfg` into `out_dir`, then `mtl eval` and `mtl predict` on `test` with
/// it (scores to `scores`), each required to succeed; the stdout of train and eval and the
/// scores file's text.
fn train_eval_predict(
    label: &str,
    cfg: &str,
    out_dir: &str,
    test: &str,
    scores: &str,
) -> (String, String, String) {
    let ok = |args: &[&str]| -> String {
        let out = mtl(args);
        assert!(
            out.status.success(),
            "{label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let train = ok(&["train", "--config", cfg, "--out", out_dir]);
    assert!(Path::new(out_dir).join("model.bpk").exists(), "{label}");
    let eval = ok(&["eval", "--model", out_dir, "--data", test]);
    ok(&["predict", "--model", out_dir, "--data", test, "--out", scores]);
    (train, eval, std::fs::read_to_string(scores).unwrap())
}

#[test]
fn ali_ccp_sample_trains_with_the_shipped_config() {
    let dir = tempfile::tempdir().unwrap();
    let test = repo()
        .join("data/samples/ali-ccp/ali_ccp_test_sample.csv")
        .display()
        .to_string();
    for model in ["esmm", "escm2", "mmoe", "ple", "aitm", "dbmtl", "pepnet"] {
        let cfg = repo()
            .join(format!("configs/{model}-ali-ccp.toml"))
            .display()
            .to_string();
        let out_dir = dir.path().join(model).display().to_string();
        let scores = dir.path().join(format!("{model}.csv")).display().to_string();
        let (train, eval, scores) = train_eval_predict(model, &cfg, &out_dir, &test, &scores);
        assert!(train.contains("ali_ccp_train_sample.csv: 100 rows"), "{train}");
        // the trained model evaluates and predicts from its directory
        assert!(eval.contains("50 rows"), "{eval}");
        assert_eq!(scores.lines().count(), 51);
    }
}

/// A trained model in `dir/model` (the small ESMM of [`config`]).
fn trained(dir: &Path) -> String {
    let cfg = config(dir, "");
    let model = dir.join("model").display().to_string();
    let out = mtl(&["train", "--config", &cfg, "--out", &model]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    model
}

#[cfg(unix)]
#[test]
fn outputs_never_replace_links_devices_or_fifos_and_get_normal_permissions() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let model = trained(dir.path());
    let data = dir.path().join("train.csv").display().to_string();
    // a symlink stays a symlink, and its target is untouched
    let target = write(dir.path(), "target.json", "keep me");
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for (out_path, what) in [
        (link.display().to_string(), "symbolic link"),
        (fifo.display().to_string(), "not a regular file"),
        ("/dev/null".to_string(), "not a regular file"),
        (dir.path().display().to_string(), "a folder"),
    ] {
        for sub in ["eval", "predict"] {
            let out = mtl(&[sub, "--model", &model, "--data", &data, "--out", &out_path]);
            assert_user_error(&out, &[&out_path, "refusing to replace it", what]);
        }
    }
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    assert!(
        std::fs::symlink_metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
    // a new output gets the permissions `File::create` gives (0666 less the umask), not 0600
    let umask = u32::from_str_radix(
        String::from_utf8(Command::new("sh").args(["-c", "umask"]).output().unwrap().stdout)
            .unwrap()
            .trim(),
        8,
    )
    .unwrap();
    let fresh = dir.path().join("fresh.json").display().to_string();
    let out = mtl(&["eval", "--model", &model, "--data", &data, "--out", &fresh]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666 & !umask, "mode {mode:o} with umask {umask:o}");
    // a regular file is replaced and keeps its own mode
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = mtl(&["eval", "--model", &model, "--data", &data, "--out", &fresh]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
        0o640
    );
    // the model directory's own files are not private either
    let model_mode = std::fs::metadata(Path::new(&model).join("model.bpk"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(model_mode & 0o777, 0o666 & !umask);
}

/// Every command with `--out`, given as its output any of its inputs (the data by another
/// spelling, a hard link to it) or any file of a model directory: refused, naming the output,
/// and every file is byte for byte what it was.
#[cfg(unix)]
#[test]
fn no_command_writes_over_its_input_or_a_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = trained(d);
    let data = d.join("train.csv").display().to_string();
    let spelled = format!("{}/./train.csv", d.display());
    let linked = d.join("same.csv");
    std::fs::hard_link(&data, &linked).unwrap();
    let linked = linked.display().to_string();
    let mut model_files: Vec<String> = std::fs::read_dir(&model)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    model_files.sort();
    assert!(model_files.len() >= 5, "{model_files:?}");
    let mut kept: Vec<String> = vec![data.clone(), d.join("schema.toml").display().to_string()];
    kept.extend(model_files.iter().cloned());
    let before: Vec<Vec<u8>> = kept.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let mut outs = vec![data.clone(), spelled, linked];
    outs.extend(model_files.iter().cloned());
    // a name a run writes, before the run has written it
    assert!(!Path::new(&model).join("calibration.json").exists());
    outs.push(format!("{model}/calibration.json"));
    let mut tried = 0;
    for out in &outs {
        let commands: [Vec<&str>; 5] = [
            vec!["predict", "--model", &model, "--data", &data, "--out", out],
            vec!["eval", "--model", &model, "--data", &data, "--out", out],
            vec!["convert", &data, "--out", out],
            vec!["schema", "infer", &data, "--out", out],
            vec!["export", "--model", &model, "--out", out],
        ];
        for args in commands {
            // export reads no data file: only the model's files are its inputs
            if args[0] == "export" && !out.starts_with(&model) {
                continue;
            }
            let result = mtl(&args);
            assert_user_error(&result, &["refusing to write there"]);
            tried += 1;
        }
    }
    assert_eq!(tried, outs.len() * 4 + model_files.len() + 1);
    let after: Vec<Vec<u8>> = kept.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(before == after, "a file changed");
    assert!(!Path::new(&format!("{model}/calibration.json")).exists());
    // a new run into a folder holding the user's schema (or a run's files) is refused
    let cfg = d.join("run.toml").display().to_string();
    let folder = d.display().to_string();
    let result = mtl(&["train", "--config", &cfg, "--out", &folder]);
    assert_user_error(&result, &["already holds schema.toml", "choose another --out"]);
    assert_eq!(std::fs::read(d.join("schema.toml")).unwrap(), before[1]);
}

#[test]
fn predict_with_skipped_rows_writes_each_rows_input_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = trained(dir.path());
    // lines 2..=11 are rows 0..=9; lines 4 and 8 are bad (u outside the vocabulary)
    let mut text = String::from("click,purchase,u,i,rid\n");
    for r in 0..10 {
        let u = if r == 2 || r == 6 { 42 } else { r % 10 };
        text += &format!("0,0,{u},a,row{r}\n");
    }
    let data = write(dir.path(), "skip.csv", &text);
    let pred = dir.path().join("p.csv").display().to_string();
    let out = mtl(&[
        "predict",
        "--model",
        &model,
        "--data",
        &data,
        "--out",
        &pred,
        "--bad-rows",
        "skip",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written = std::fs::read_to_string(&pred).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines[0], "input_line,ctr,cvr,ctcvr");
    let input_lines: Vec<&str> = lines[1..].iter().map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(input_lines, ["2", "3", "5", "6", "7", "9", "10", "11"]);
    // with an id column too, each id sits beside its own line
    let out = mtl(&[
        "predict",
        "--model",
        &model,
        "--data",
        &data,
        "--out",
        &pred,
        "--bad-rows",
        "skip",
        "--id-column",
        "rid",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written = std::fs::read_to_string(&pred).unwrap();
    assert!(
        written.starts_with("input_line,rid,ctr,cvr,ctcvr\n2,row0,"),
        "{written}"
    );
    assert!(written.contains("\n5,row3,"), "{written}");
}

#[test]
fn a_locked_run_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let out_dir = dir.path().join("busy");
    std::fs::create_dir_all(&out_dir).unwrap();
    let lock = mtl_trainer::jobs::RunLock::acquire(&out_dir).unwrap();
    let out = mtl(&["train", "--config", &cfg, "--out", &out_dir.display().to_string()]);
    assert_user_error(&out, &["is in use", "another mtl process"]);
    assert!(
        !out_dir.join("config.toml").exists(),
        "nothing written into a locked run"
    );
    drop(lock);
    let out = mtl(&["train", "--config", &cfg, "--out", &out_dir.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A model directory that is not what it says is refused: its calibration missing though the
/// config asks for one, a calibration naming an output the model lacks, a run not marked
/// finished (unless `--allow-unfinished`); and serve's model id changes with the calibration.
#[test]
fn an_incomplete_model_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "calibration = \"platt\"\n");
    let model = dir.path().join("m");
    let m = model.display().to_string();
    let out = mtl(&["train", "--config", &cfg, "--out", &m]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let data = dir.path().join("train.csv").display().to_string();
    let scores = dir.path().join("s.csv").display().to_string();
    let predict = |extra: &[&str]| {
        let mut args = vec!["predict", "--model", &m, "--data", &data, "--out", &scores];
        args.extend(extra);
        mtl(&args)
    };
    assert!(predict(&[]).status.success());
    let calibration = model.join("calibration.json");
    let saved = std::fs::read_to_string(&calibration).unwrap();
    let id = mtl_serve::model_id(&model).unwrap();
    std::fs::remove_file(&calibration).unwrap();
    let onnx = dir.path().join("m.onnx").display().to_string();
    for out in [
        predict(&[]),
        mtl(&["eval", "--model", &m, "--data", &data]),
        mtl(&["export", "--model", &m, "--out", &onnx]),
    ] {
        assert_user_error(&out, &["calibration.json", "missing", "calibration = \"platt\""]);
    }
    std::fs::write(&calibration, saved.replace("\"ctr\"", "\"nope\"")).unwrap();
    assert_user_error(&predict(&[]), &["calibration.json", "`nope`", "does not have"]);
    // another map, another model id
    let edited = saved.replacen("\"b\": ", "\"b\": 1", 1);
    assert_ne!(edited, saved);
    std::fs::write(&calibration, &edited).unwrap();
    assert_ne!(mtl_serve::model_id(&model).unwrap(), id);
    std::fs::write(&calibration, &saved).unwrap();
    assert_eq!(mtl_serve::model_id(&model).unwrap(), id);
    // a run whose checkpoint says it has not finished
    let state = model.join("checkpoint/state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.contains("\"finished\": true"), "{text}");
    std::fs::write(&state, text.replace("\"finished\": true", "\"finished\": false")).unwrap();
    assert_user_error(
        &predict(&[]),
        &["has not finished", "--resume", "--allow-unfinished"],
    );
    let out = predict(&["--allow-unfinished"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A run interrupted, its training file then shrunk, grown, or edited in place at the same
/// size: each `--resume` is refused naming the file and what changed; with the file restored
/// the run resumes and finishes.
#[test]
fn a_resume_on_changed_training_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "epochs = 2\n");
    let run = dir.path().join("run").display().to_string();
    let out = mtl(&["train", "--config", &cfg, "--out", &run, "--max-steps", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let train = dir.path().join("train.csv");
    let original = std::fs::read_to_string(&train).unwrap();
    let shown = train.display().to_string();
    let mut lines: Vec<&str> = original.lines().collect();
    let edited = {
        // the same size: two rows' click labels swapped
        let (a, b) = (lines[1].to_string(), lines[2].to_string());
        lines[1] = &b;
        lines[2] = &a;
        lines.join("\n") + "\n"
    };
    assert_eq!(edited.len(), original.len());
    assert_ne!(edited, original);
    let shrunk: String = original.lines().take(200).map(|l| format!("{l}\n")).collect();
    let grown = original.clone()
        + &original
            .lines()
            .skip(1)
            .take(50)
            .map(|l| format!("{l}\n"))
            .collect::<String>();
    for (text, says) in [
        (&shrunk, "bytes then"),
        (&grown, "bytes then"),
        (&edited, "the same size, other contents"),
    ] {
        std::fs::write(&train, text).unwrap();
        let out = mtl(&["train", "--resume", &run]);
        assert_user_error(
            &out,
            &[&shown, "changed since the run's checkpoint", says, "restore"],
        );
    }
    std::fs::write(&train, &original).unwrap();
    let out = mtl(&["train", "--resume", &run]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("esmm: 10 steps"));
}

/// A finished run asked for more epochs whose extension fails before its first checkpoint
/// (here: its training data changed) keeps its config as it was: still one epoch, finished.
#[test]
fn a_failed_extension_leaves_the_finished_run_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "epochs = 1\n");
    let run = dir.path().join("run");
    let r = run.display().to_string();
    let out = mtl(&["train", "--config", &cfg, "--out", &r]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let train = dir.path().join("train.csv");
    let original = std::fs::read_to_string(&train).unwrap();
    std::fs::write(
        &train,
        original.lines().take(100).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    let out = mtl(&["train", "--resume", &r, "--epochs", "3"]);
    assert_user_error(&out, &["changed since the run's checkpoint"]);
    assert_eq!(
        std::fs::read_to_string(run.join("config.toml")).unwrap(),
        before,
        "config.toml rewritten"
    );
    std::fs::write(&train, &original).unwrap();
    let out = mtl(&["train", "--resume", &r]);
    assert_user_error(&out, &["already finished after 1 epochs"]);
    let out = mtl(&["train", "--resume", &r, "--epochs", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(
        std::fs::read_to_string(run.join("config.toml")).unwrap(),
        before,
        "the extension saved"
    );
}

#[test]
fn runs_resume_and_rerun_from_any_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), "epochs = 2\n");
    // started with relative paths from the data folder...
    let run = Command::new(env!("CARGO_BIN_EXE_mtl"))
        .args([
            "train",
            "--config",
            "run.toml",
            "--out",
            "runs/a",
            "--max-steps",
            "3",
            "--quiet",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // ...resumed from somewhere else
    let elsewhere = tempfile::tempdir().unwrap();
    let a = dir.path().join("runs/a");
    let out = Command::new(env!("CARGO_BIN_EXE_mtl"))
        .args(["train", "--resume", &a.display().to_string(), "--quiet"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("esmm: 10 steps"));
    // the saved config runs the same job again, from anywhere
    let saved = a.join("config.toml").display().to_string();
    let b = dir.path().join("runs/b").display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_mtl"))
        .args(["train", "--config", &saved, "--out", &b, "--quiet"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // (model files hold random parameter ids: the predictions are what must be equal)
    let data = dir.path().join("train.csv").display().to_string();
    let predictions = |model: &Path| {
        let out = model.join("p.csv");
        let run = mtl(&[
            "predict",
            "--model",
            &model.display().to_string(),
            "--data",
            &data,
            "--out",
            &out.display().to_string(),
        ]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        std::fs::read_to_string(out).unwrap()
    };
    assert!(
        predictions(&a) == predictions(Path::new(&b)),
        "same config, same seed: the same predictions"
    );
    // a finished run trains further with more epochs
    let out = mtl(&["train", "--resume", &a.display().to_string(), "--epochs", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("esmm: 15 steps"));
}

#[test]
fn a_new_run_prints_the_embedding_tables_own_weight_decay_when_it_differs() {
    let dir = tempfile::tempdir().unwrap();
    let train = |extra: &str, name: &str| {
        let cfg = config(dir.path(), extra);
        let model = dir.path().join(name);
        // not --quiet: the run's settings are printed on stderr
        let out = Command::new(env!("CARGO_BIN_EXE_mtl"))
            .args(["train", "--config", &cfg, "--out"])
            .arg(&model)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (
            stderr,
            std::fs::read_to_string(model.join("config.toml")).unwrap(),
        )
    };
    let (stderr, saved) = train("weight_decay = 1e-4\n", "default");
    assert!(
        stderr.contains("weight decay: 0.001 on the embedding table, 0.0001 on the dense layers"),
        "{stderr}"
    );
    assert!(saved.contains("embedding_weight_decay = 0.001"), "{saved}");
    // the table at the dense layers' decay: nothing to point out
    let (stderr, saved) = train("weight_decay = 1e-4\nembedding_weight_decay = 1e-4\n", "same");
    assert!(!stderr.contains("on the embedding table"), "{stderr}");
    assert!(saved.contains("embedding_weight_decay = 0.0001"), "{saved}");
}

#[test]
fn thread_counts_beyond_the_machine_are_capped_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let out = mtl(&[
        "--threads",
        "100000",
        "train",
        "--config",
        &cfg,
        "--out",
        &dir.path().join("m").display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("--threads 100000 is more than the"), "{stderr}");
}

#[test]
fn generated_data_trains_every_example_config() {
    // the example configs read `../data/synth/` beside `configs/`: the same layout in a
    // temporary folder, with a small generated set in place of the 1M-row one
    let dir = tempfile::tempdir().unwrap();
    let synth = dir.path().join("data/synth");
    let out = mtl(&[
        "gen-data",
        "ccp",
        "--rows",
        "4000",
        "--seed",
        "3",
        "--out",
        &synth.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let chain = dir.path().join("data/chain");
    let out = mtl(&[
        "gen-data",
        "chain",
        "--rows",
        "4000",
        "--seed",
        "3",
        "--small",
        "--out",
        &chain.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::create_dir_all(dir.path().join("configs")).unwrap();
    // every example config shipped, one per registered model type
    let mut examples: Vec<String> = std::fs::read_dir(repo().join("configs"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix("-example.toml").map(str::to_string))
        .collect();
    examples.sort();
    assert_eq!(
        examples.len(),
        <mtl_models::Models as mtl_trainer::Registry>::KINDS.len(),
        "{examples:?}"
    );
    for model in examples.iter().map(String::as_str) {
        let test = match model {
            "esmm-chain" => chain.join("synth_chain_test.csv"),
            _ => synth.join("synth_ccp_test.csv"),
        };
        let test = test.display().to_string();
        let name = format!("{model}-example.toml");
        let cfg = dir.path().join("configs").join(&name);
        std::fs::copy(repo().join("configs").join(&name), &cfg).unwrap();
        let out_dir = dir.path().join(model).display().to_string();
        let scores = dir.path().join(format!("{model}.csv")).display().to_string();
        let (_, _, text) = train_eval_predict(model, &cfg.display().to_string(), &out_dir, &test, &scores);
        let metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(Path::new(&out_dir).join("metrics.json")).unwrap())
                .unwrap();
        let outputs = metrics["test"].as_array().expect("test metrics");
        assert!(outputs.len() >= 2, "{model}: {metrics}");
        if model == "esmm-chain" {
            let names: Vec<&str> = outputs.iter().filter_map(|o| o["name"].as_str()).collect();
            assert_eq!(
                names,
                [
                    "click",
                    "cart_given_click",
                    "cart",
                    "purchase_given_cart",
                    "purchase"
                ],
                "{metrics}"
            );
        }
        let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
        assert_eq!(header.len(), outputs.len(), "{model}: one column per output");
        // every score is a probability
        for line in text.lines().skip(1) {
            for v in line.split(',') {
                let p: f64 = v.parse().unwrap();
                assert!((0.0..=1.0).contains(&p), "{model}: {line}");
            }
        }
    }
}

#[test]
fn serve_refuses_bad_options_a_missing_model_and_a_taken_address() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope").display().to_string();
    assert_user_error(
        &mtl(&["serve", "--model", &missing]),
        &["nope", "the directory itself"],
    );
    let model = trained(dir.path());
    assert_user_error(
        &mtl(&["serve", "--model", &model, "--max-rows", "0"]),
        &["--max-rows = 0", "1..=1000000"],
    );
    assert_user_error(
        &mtl(&["serve", "--model", &model, "--max-wait-ms", "5000"]),
        &["--max-wait-ms = 5000"],
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_user_error(
        &mtl(&["serve", "--model", &model, "--addr", &addr]),
        &["cannot listen on", &addr],
    );
    assert_user_error(
        &mtl(&["serve", "--model", &model, "--addr", "not-an-address"]),
        &["cannot listen on", "not-an-address"],
    );
}

#[cfg(feature = "onnx")]
#[test]
fn export_writes_onnx_with_its_encoder_with_a_symbolic_or_a_fixed_batch() {
    let dir = tempfile::tempdir().unwrap();
    let model = trained(dir.path());
    let onnx = dir.path().join("esmm.onnx");
    let out = mtl(&["export", "--model", &model, "--out", &onnx.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // the table (2 fields' rows × 4) and both towers are in the file, as float initialisers
    let bytes = std::fs::read(&onnx).unwrap();
    assert!(bytes.len() > 1000, "{} bytes", bytes.len());
    assert!(bytes.windows(9).any(|w| w == b"burn-onnx"), "producer name");
    // the graph's own inputs and outputs carry the sidecar's names; ids are int64, cast inside
    for name in [&b"sparse_ids"[..], b"ctcvr", b"sparse_ids_cast"] {
        let shown = String::from_utf8_lossy(name);
        assert!(
            bytes.windows(name.len()).any(|w| w == name),
            "{shown} in the graph"
        );
    }
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("esmm.onnx.json")).unwrap()).unwrap();
    assert_eq!(side["outputs"], serde_json::json!(["ctr", "cvr", "ctcvr"]));
    assert_eq!(side["inputs"][0]["name"], "sparse_ids");
    assert_eq!(side["inputs"][0]["shape"], serde_json::json!(["batch", 2]));
    assert_eq!(side["inputs"][0]["dtype"], "int64");
    assert!(side["schema"].as_str().unwrap().contains("[[sparse]]"));
    assert!(side["features"]["vocabularies"].is_array());
    // MMOE (its experts a reshape to `[batch, experts, width]`, which burn's exporter alone
    // cannot make symbolic): symbolic too; a fixed batch when asked
    let train_as = |name: &str, model_table: &str| -> String {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let cfg = config(&sub, "");
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "type = \"esmm\"\nctr_tower = { dims = [8] }\ncvr_tower = { dims = [8] }",
            model_table,
        );
        std::fs::write(&cfg, text).unwrap();
        let out_dir = sub.join("model").display().to_string();
        let out = mtl(&["train", "--config", &cfg, "--out", &out_dir]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out_dir
    };
    let tasks = "tasks = [{ label = \"click\" }, { label = \"purchase\" }]";
    let mmoe = train_as(
        "m",
        &format!(
            "type = \"mmoe\"\nn_experts = 2\nexpert = {{ dims = [8] }}\ntower = {{ dims = [4] }}\n{tasks}"
        ),
    );
    let target = dir.path().join("mmoe.onnx").display().to_string();
    for (batch, shape) in [
        (None, serde_json::json!(["batch", 2])),
        (Some("64"), serde_json::json!([64, 2])),
    ] {
        let mut args = vec!["export", "--model", &mmoe, "--out", &target];
        args.extend(batch.iter().flat_map(|b| ["--batch", *b]));
        let out = mtl(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let said = if batch.is_some() {
            "batch fixed at 64 rows"
        } else {
            "batch symbolic"
        };
        assert!(String::from_utf8_lossy(&out.stdout).contains(said));
        let side: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("mmoe.onnx.json")).unwrap()).unwrap();
        assert_eq!(
            side["batch"],
            serde_json::json!(batch.map(|b| b.parse::<u64>().unwrap()))
        );
        assert_eq!(side["inputs"][0]["shape"], shape);
    }
    // an output file that is a directory is refused, naming it
    assert_user_error(
        &mtl(&[
            "export",
            "--model",
            &mmoe,
            "--out",
            &dir.path().display().to_string(),
        ]),
        &["folder"],
    );
    assert_user_error(
        &mtl(&["export", "--model", &model, "--batch", "0", "--out", "x.onnx"]),
        &["--batch = 0"],
    );
    assert_user_error(
        &mtl(&["export", "--model", &model, "--format", "tflite", "--out", "x"]),
        &["--format tflite"],
    );
}

/// A mean-pooled sequence field (empty sequences included) exports like a summed one (its
/// count is `relu(n − 1) + 1`, which the exporter expresses; `clamp_min` it cannot), fed as
/// its own ids and mask inputs.
#[cfg(feature = "onnx")]
#[test]
fn a_mean_pooled_sequence_field_exports() {
    let dir = tempfile::tempdir().unwrap();
    let seq = dir.path().join("seq");
    std::fs::create_dir_all(&seq).unwrap();
    let mut rows = String::from("click,purchase,u,hist\n");
    for r in 0..200 {
        let hist: Vec<String> = (0..r % 4).map(|k| ((r + k) % 7).to_string()).collect();
        rows += &format!("{},{},{},{}\n", r % 3 / 2, r % 9 / 8, r % 5, hist.join("|"));
    }
    write(&seq, "train.csv", &rows);
    write(
        &seq,
        "schema.toml",
        "embed_dim = 4\n[[sparse]]\nname = \"u\"\nfit = true\n[[sequence]]\nname = \"hist\"\nmax_len = 3\npooling = \"mean\"\nfit = true\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n[[labels]]\nname = \"purchase\"\nkind = \"binary\"\n",
    );
    let cfg = write(
        &seq,
        "run.toml",
        "schema = \"schema.toml\"\n[data]\ntrain = \"train.csv\"\n[model]\ntype = \"esmm\"\nctr_tower = { dims = [8] }\ncvr_tower = { dims = [8] }\n[train]\nbatch_size = 64\n",
    );
    let seq_model = seq.join("model").display().to_string();
    let out = mtl(&["train", "--config", &cfg, "--out", &seq_model]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let target = seq.join("seq.onnx");
    let out = mtl(&[
        "export",
        "--model",
        &seq_model,
        "--out",
        &target.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(seq.join("seq.onnx.json")).unwrap()).unwrap();
    let inputs: Vec<&str> = side["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(inputs, ["sparse_ids", "hist.ids", "hist.mask"]);
    assert_eq!(side["batch"], serde_json::Value::Null);
    assert_eq!(side["inputs"][1]["of"], "sequence_ids");
    assert_eq!(side["inputs"][1]["columns"], serde_json::json!([0, 3]));
}

#[test]
fn data_may_be_many_files_a_list_or_a_glob_pattern() {
    let dir = tempfile::tempdir().unwrap();
    // the same 300 rows: one file, and three parts under parts/ (header in each)
    config(dir.path(), "");
    let all = csv(300);
    let mut lines = all.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.collect();
    std::fs::create_dir_all(dir.path().join("parts")).unwrap();
    for (k, chunk) in rows.chunks(100).enumerate() {
        write(
            dir.path(),
            &format!("parts/part-{k}.csv"),
            &format!("{header}\n{}\n", chunk.join("\n")),
        );
    }
    let run = |train: &str, valid: &str| {
        write(
            dir.path(),
            "many.toml",
            &format!(
                "schema = \"schema.toml\"\n[data]\ntrain = {train}\nvalid = {valid}\n[model]\ntype = \"esmm\"\nctr_tower = {{ dims = [8] }}\ncvr_tower = {{ dims = [8] }}\n[train]\nbatch_size = 64\n"
            ),
        )
    };
    let cfg = run(
        "\"parts/part-*.csv\"",
        "[\"parts/part-0.csv\", \"parts/part-2.csv\"]",
    );
    let out_dir = dir.path().join("m").display().to_string();
    let out = mtl(&["train", "--config", &cfg, "--out", &out_dir]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for part in [
        "part-0.csv: 100 rows",
        "part-1.csv: 100 rows",
        "part-2.csv: 100 rows",
    ] {
        assert!(stdout.contains(part), "`{part}` not in {stdout}");
    }
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(&out_dir).join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["train_rows"], 300, "{metrics}");
    // the saved config keeps the pattern (made absolute), so the run resumes and reruns alike
    let saved = std::fs::read_to_string(Path::new(&out_dir).join("config.toml")).unwrap();
    assert!(saved.contains("part-*.csv"), "{saved}");
    // a pattern that matches nothing, a bad pattern, a wrong type, an empty list: errors
    for (train, needles) in [
        (
            "\"parts/none-*.csv\"",
            &["data.train", "none-*.csv", "matches no file"][..],
        ),
        ("\"parts/[.csv\"", &["data.train", "not a valid pattern"][..]),
        (
            "5",
            &["line 3", "train = 5", "a path, a glob pattern, or a list"][..],
        ),
        ("[]", &["line 3", "train = []", "empty list"][..]),
    ] {
        let cfg = run(train, "\"train.csv\"");
        let out_dir = dir.path().join("bad").display().to_string();
        assert_user_error(&mtl(&["train", "--config", &cfg, "--out", &out_dir]), needles);
    }
}

#[test]
fn ids_past_a_declared_vocabulary_fail_or_go_to_the_oov_row_as_the_schema_says() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    // rows 0..300 have u = r % 10; three rows get ids past the vocabulary of 10
    let mut text = csv(300);
    text = text
        .replacen(",3,a,row3", ",12,a,row3", 1)
        .replacen(",4,b,row4", ",99,b,row4", 1);
    text = text.replacen(",5,c,row5", ",5.0,c,row5", 1);
    write(dir.path(), "train.csv", &text);
    let out_dir = |name: &str| dir.path().join(name).display().to_string();
    // the default: an error naming file, line and column
    assert_user_error(
        &mtl(&["train", "--config", &cfg, "--out", &out_dir("a")]),
        &["train.csv:5", "u", "id 12 is outside the vocabulary (size 10)"],
    );
    // `oov = "bucket"`: one reserved row (the table grows by one), counted and reported
    let schema = SCHEMA.replace("vocab_size = 10\n", "vocab_size = 10\noov = \"bucket\"\n");
    write(dir.path(), "schema.toml", &schema);
    let out = mtl(&["train", "--config", &cfg, "--out", &out_dir("b")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("2 ids outside their vocabulary mapped to its oov row"),
        "{stdout}"
    );
    // `5.0` is the id 5, not an unseen value (integers written as floats)
    assert!(!stdout.contains("3 ids outside"), "{stdout}");
    // `oov` belongs to declared vocabularies only
    let schema = SCHEMA.replace("fit = true\n", "fit = true\noov = \"bucket\"\n");
    write(dir.path(), "schema.toml", &schema);
    assert_user_error(
        &mtl(&["train", "--config", &cfg, "--out", &out_dir("c")]),
        &["sparse[1].oov", "only allowed with `vocab_size`"],
    );
}

/// Writes `DIR/NAME.toml` (schema `schema.toml`, then the `[data]`, `[model]` and `[train]`
/// lines given), trains it into `DIR/NAME` and returns that folder and its `metrics.json`.
fn train_in(dir: &Path, name: &str, data: &str, model: &str, train: &str) -> (String, serde_json::Value) {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!("schema = \"schema.toml\"\n[data]\n{data}\n[model]\n{model}\n[train]\n{train}\n"),
    )
    .unwrap();
    let model_dir = dir.join(name).display().to_string();
    let out = mtl(&[
        "train",
        "--config",
        &cfg.display().to_string(),
        "--out",
        &model_dir,
    ]);
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics =
        serde_json::from_slice(&std::fs::read(Path::new(&model_dir).join("metrics.json")).unwrap()).unwrap();
    (model_dir, metrics)
}

/// A 13-line schema of name patterns for [`wide_table`]'s 26 input columns and two labels
/// (`request_id` is matched by nothing).
const WIDE_PATTERNS: &str = "[[sparse]]\nnames = [\"cat_*\", \"city\"]\nfit = true\n[[dense]]\nnames = [\"num_*\"]\nstandardize = true\ndefault = 0.0\n[[labels]]\nname = \"click\"\nkind = \"binary\"\n[[labels]]\nname = \"purchase\"\nkind = \"binary\"\n";

const ESMM_16: &str = "type = \"esmm\"\nctr_tower = { dims = [16] }\ncvr_tower = { dims = [16] }";
const MMOE_16: &str = "type = \"mmoe\"\nn_experts = 2\nexpert = { dims = [16] }\ntower = { dims = [8] }\ntasks = [{ label = \"click\" }, { label = \"purchase\" }]";

/// `DIR/train.csv` (3000 rows) and `DIR/valid.csv` (600) of [`wide_table`] at generator seeds
/// `seed` and `seed + 1`.
fn wide_pair(dir: &Path, seed: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    let (train, valid) = (dir.join("train.csv"), dir.join("valid.csv"));
    wide_table(&train, 3000, seed);
    wide_table(&valid, 600, seed + 1);
    (train, valid)
}

/// A wide public-style table: an id to ignore, 16 integer categoricals, a text categorical,
/// 8 numeric columns (one with gaps), and two labels (a purchase only after a click).
fn wide_table(path: &Path, rows: usize, seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let cities = ["paris", "lyon", "nice", "lille", "brest"];
    let mut text = String::from("request_id");
    (0..16).for_each(|k| text += &format!(",cat_{k}"));
    text += ",city";
    (0..8).for_each(|k| text += &format!(",num_{k}"));
    text += ",click,purchase\n";
    for r in 0..rows {
        let mut line = format!("{}", seed * 1_000_000 + r as u64);
        let mut logit = -1.5;
        for k in 0..16 {
            let id = (next() * (5 + 12 * k) as f64) as u32;
            logit += if id.is_multiple_of(3) { 0.4 } else { -0.1 };
            line += &format!(",{id}");
        }
        line += &format!(",{}", cities[(next() * 5.0) as usize]);
        for k in 0..8 {
            let x = next() * 4.0 - 2.0;
            logit += 0.2 * x;
            if k == 7 && r % 10 == 0 {
                line += ",";
            } else {
                line += &format!(",{x:.4}");
            }
        }
        let click = next() < 1.0 / (1.0 + (-logit).exp());
        let purchase = click && next() < 0.3;
        line += &format!(",{},{}\n", u8::from(click), u8::from(purchase));
        text += &line;
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn schema_infer_turns_a_wide_table_into_a_trainable_schema() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = wide_pair(dir.path(), 1);
    let schema = dir.path().join("schema.toml");
    let out = mtl(&[
        "schema",
        "infer",
        &train.display().to_string(),
        "--out",
        &schema.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&schema).unwrap();
    #[derive(serde::Deserialize)]
    struct Named {
        name: String,
        #[serde(default)]
        fit: Option<bool>,
        #[serde(default)]
        standardize: Option<bool>,
        #[serde(default)]
        default: Option<f32>,
    }
    #[derive(serde::Deserialize)]
    struct Inferred {
        sparse: Vec<Named>,
        dense: Vec<Named>,
        labels: Vec<Named>,
    }
    let inferred: Inferred = toml::from_str(&text).unwrap();
    let names = |v: &[Named]| v.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
    let mut sparse: Vec<String> = (0..16).map(|k| format!("cat_{k}")).collect();
    sparse.push("city".into());
    assert_eq!(names(&inferred.sparse), sparse);
    assert!(inferred.sparse.iter().all(|f| f.fit == Some(true)));
    assert_eq!(
        names(&inferred.dense),
        (0..8).map(|k| format!("num_{k}")).collect::<Vec<_>>()
    );
    assert!(inferred.dense.iter().all(|f| f.standardize == Some(true)));
    // the column with gaps gets a default for its empty cells, the others none
    assert_eq!(inferred.dense[7].default, Some(0.0));
    assert!(inferred.dense[..7].iter().all(|f| f.default.is_none()));
    assert_eq!(names(&inferred.labels), ["click", "purchase"]);
    assert!(text.contains("# not used: \"request_id\""), "{text}");
    // it trains as written: ESMM and MMOE
    for (name, model) in [("esmm", ESMM_16), ("mmoe", MMOE_16)] {
        let (_, metrics) = train_in(
            dir.path(),
            name,
            "train = \"train.csv\"\nvalid = \"valid.csv\"",
            model,
            "batch_size = 256\nepochs = 2",
        );
        let click_auc = metrics["valid"][0]["binary"]["auc"].as_f64().unwrap();
        assert!(
            click_auc > 0.55,
            "{name}: the table's click signal is learnable: {click_auc}"
        );
    }
    // bad input: a file that does not exist, and no rows
    let missing = dir.path().join("nope.csv").display().to_string();
    assert_user_error(&mtl(&["schema", "infer", &missing]), &["nope.csv"]);
}

#[test]
fn a_schema_of_name_patterns_trains_the_wide_table_and_the_run_keeps_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (_, valid) = wide_pair(dir.path(), 3);
    let schema = WIDE_PATTERNS;
    assert!(schema.lines().count() <= 15);
    std::fs::write(dir.path().join("schema.toml"), schema).unwrap();
    let cfg = dir.path().join("run.toml");
    let (model, metrics) = train_in(
        dir.path(),
        "run",
        "train = \"train.csv\"\nvalid = \"valid.csv\"",
        MMOE_16,
        "batch_size = 256\nepochs = 2",
    );
    // the run's schema lists the fields the patterns stood for, in header order
    let saved = std::fs::read_to_string(Path::new(&model).join("schema.toml")).unwrap();
    let parsed: toml::Value = toml::from_str(&saved).unwrap();
    let names = |kind: &str| -> Vec<String> {
        parsed[kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect()
    };
    let mut sparse: Vec<String> = (0..16).map(|k| format!("cat_{k}")).collect();
    sparse.push("city".into());
    assert_eq!(names("sparse"), sparse);
    assert_eq!(
        names("dense"),
        (0..8).map(|k| format!("num_{k}")).collect::<Vec<_>>()
    );
    assert!(!saved.contains("names ="), "{saved}");
    let click_auc = metrics["valid"][0]["binary"]["auc"].as_f64().unwrap();
    assert!(click_auc > 0.55, "the click signal is learnable: {click_auc}");
    // eval and predict read the saved run alone
    let pred = dir.path().join("p.csv").display().to_string();
    let out = mtl(&[
        "predict",
        "--model",
        &model,
        "--data",
        &valid.display().to_string(),
        "--out",
        &pred,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&pred).unwrap().lines().count(), 601);
    // a pattern that matches no column names the schema, the key and the header's file
    std::fs::write(dir.path().join("schema.toml"), schema.replace("cat_*", "kat_*")).unwrap();
    let out = mtl(&[
        "train",
        "--config",
        &cfg.display().to_string(),
        "--out",
        &dir.path().join("bad").display().to_string(),
    ]);
    assert_user_error(
        &out,
        &[
            "schema.toml",
            "sparse[0].names",
            "`kat_*` matches no column",
            "train.csv",
        ],
    );
}

#[test]
fn parquet_shards_train_and_predict_as_the_csv_does() {
    let dir = tempfile::tempdir().unwrap();
    let (train, valid) = wide_pair(dir.path(), 5);
    let shards = dir.path().join("pq");
    std::fs::create_dir_all(&shards).unwrap();
    let out = mtl(&[
        "convert",
        &train.display().to_string(),
        "--out",
        &shards.join("train.parquet").display().to_string(),
        "--rows-per-file",
        "1000",
        "--codec",
        "snappy",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut written: Vec<String> = std::fs::read_dir(&shards)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written,
        [
            "train-00000.parquet",
            "train-00001.parquet",
            "train-00002.parquet"
        ]
    );
    let valid_pq = dir.path().join("valid.parquet");
    let out = mtl(&[
        "convert",
        &valid.display().to_string(),
        "--out",
        &valid_pq.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // the patterns read the Parquet header as they read the CSV one
    std::fs::write(dir.path().join("schema.toml"), WIDE_PATTERNS).unwrap();
    let mut losses = Vec::new();
    for (name, data) in [
        ("csv", "train = \"train.csv\"\nvalid = \"valid.csv\""),
        (
            "parquet",
            "train = \"pq/train-*.parquet\"\nvalid = \"valid.parquet\"",
        ),
    ] {
        let (_, metrics) = train_in(dir.path(), name, data, ESMM_16, "batch_size = 256\nepochs = 1");
        assert_eq!(metrics["train_rows"], 3000, "{name}");
        assert!(
            metrics["valid"][0]["binary"]["auc"].as_f64().unwrap() > 0.55,
            "{name}"
        );
        losses.push(metrics["valid"].clone());
    }
    // the same rows, encoded the same: the same training, bit for bit (every metric equal)
    assert_eq!(losses[0], losses[1]);
    // streamed from the shards (rows counted from their footers): every row, once an epoch
    let (_, metrics) = train_in(
        dir.path(),
        "stream",
        "train = \"pq/train-*.parquet\"\nvalid = \"valid.parquet\"\nstreaming = true\nshuffle_buffer = 700",
        ESMM_16,
        "batch_size = 256\nepochs = 2",
    );
    assert_eq!(metrics["train_rows"], 3000);
    // 2 epochs of ⌈3000 / 256⌉ batches
    assert_eq!(metrics["steps"], 24);
    assert!(
        metrics["reads"][0]
            .as_str()
            .unwrap()
            .contains("streaming 3 training file(s): 3000 rows")
    );
    // a model predicts a Parquet file as it predicts the CSV one
    let model = dir.path().join("csv").display().to_string();
    let mut predictions = Vec::new();
    for (name, data) in [("csv", &valid), ("parquet", &valid_pq)] {
        let pred = dir.path().join(format!("{name}-pred.csv"));
        let out = mtl(&[
            "predict",
            "--model",
            &model,
            "--data",
            &data.display().to_string(),
            "--out",
            &pred.display().to_string(),
        ]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        predictions.push(std::fs::read_to_string(&pred).unwrap());
    }
    assert_eq!(predictions[0], predictions[1]);
    assert_eq!(predictions[0].lines().count(), 601);
    // schema inference reads Parquet as it reads CSV: the same fields, whatever the comments
    let inferred: Vec<String> = [&valid, &valid_pq]
        .iter()
        .map(|f| {
            let out = mtl(&["schema", "infer", &f.display().to_string()]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    assert_eq!(inferred[0], inferred[1]);
    assert!(inferred[0].contains("name = \"cat_15\""), "{}", inferred[0]);
    // a cell that does not fit the type taken from the first rows is named
    let odd = dir.path().join("odd.csv");
    std::fs::write(&odd, "a,b\n1,x\n2,y\nthree,z\n").unwrap();
    let out = mtl(&[
        "convert",
        &odd.display().to_string(),
        "--out",
        &dir.path().join("odd.parquet").display().to_string(),
        "--infer-rows",
        "2",
    ]);
    assert_user_error(&out, &["odd.csv", "4", "`a`", "three"]);
}

/// `--tensorboard DIR` and `[train] tensorboard = true`: one event file per run, holding the
/// file version and each evaluation's scalars (the format itself is checked by the trainer's
/// unit tests and, with TensorBoard's own reader, by the Python tests).
#[test]
fn tensorboard_events_go_to_the_folder_asked_or_the_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events_in = |folder: &Path| -> Vec<Vec<u8>> {
        let files: Vec<_> = std::fs::read_dir(folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.iter().map(|f| std::fs::read(f).unwrap()).collect()
    };
    let holds = |bytes: &[u8], what: &str| bytes.windows(what.len()).any(|w| w == what.as_bytes());
    let cfg = config(d, "eval_every_steps = 2\n");
    let (model, tb) = (d.join("m"), d.join("tb"));
    let out = mtl(&[
        "train",
        "--config",
        &cfg,
        "--out",
        &model.display().to_string(),
        "--tensorboard",
        &tb.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files = events_in(&tb);
    assert_eq!(files.len(), 1);
    for tag in ["brain.Event:2", "ctr/auc", "ctcvr/log_loss", "valid_loss", "lr"] {
        assert!(holds(&files[0], tag), "{tag}");
    }
    assert!(!model.join("tensorboard").exists());
    let cfg = config(d, "tensorboard = true\n");
    let in_dir = d.join("m2");
    let out = mtl(&["train", "--config", &cfg, "--out", &in_dir.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files = events_in(&in_dir.join("tensorboard"));
    assert!(files.len() == 1 && holds(&files[0], "cvr/auc"));
}
