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

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
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
            let c = mtl_trainer::RunConfig::from_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                name.starts_with(c.model.kind()),
                "{name} holds a {} model",
                c.model.kind()
            );
        }
        n += 1;
    }
    assert!(n >= 7);
}

#[test]
fn ali_ccp_sample_trains_with_the_shipped_config() {
    let dir = tempfile::tempdir().unwrap();
    for model in ["esmm", "mmoe"] {
        let cfg = repo()
            .join(format!("configs/{model}-ali-ccp.toml"))
            .display()
            .to_string();
        let out_dir = dir.path().join(model).display().to_string();
        let out = mtl(&["train", "--config", &cfg, "--out", &out_dir]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("ali_ccp_train_sample.csv: 100 rows"), "{stdout}");
        assert!(Path::new(&out_dir).join("model.bpk").exists());
    }
}
