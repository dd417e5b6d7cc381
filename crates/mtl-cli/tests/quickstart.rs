//! The README's quick start, run verbatim: the shell block after its `quick start` marker, with
//! `mtl` the binary under test, in a folder holding `my_train.csv`, `my_valid.csv` and
//! `my_test.csv` as a user's own files might be (ids, a text category, a price, two labels).

use std::path::Path;
use std::process::Command;

/// The README's fenced block that follows the quick-start marker.
fn quick_start_block() -> String {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let text = std::fs::read_to_string(&readme).unwrap();
    let marker = "<!-- quick start: run verbatim by crates/mtl-cli/tests/quickstart.rs -->";
    let after = &text[text.find(marker).expect("the README marks its quick start") + marker.len()..];
    let body = after
        .trim_start()
        .strip_prefix("```sh\n")
        .expect("a sh block follows the marker");
    body[..body.find("\n```").expect("the block ends")].to_string()
}

/// `rows` rows of a user's kind of table: a click more likely for categories a–c and cheaper
/// items, a purchase only after a click (a small deterministic generator, no randomness crate).
fn table(rows: usize, seed: u64) -> String {
    let mut state = seed;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as f64 / f64::from(1u32 << 31)
    };
    let mut out = String::from("user_id,item_id,category,price,click,purchase\n");
    for _ in 0..rows {
        let (user, item) = ((next() * 300.0) as u32, (next() * 500.0) as u32);
        let category = b"abcdefgh"[(next() * 8.0) as usize] as char;
        let price = 1.0 + next() * 99.0;
        let p_click = if category < 'd' { 0.35 } else { 0.1 } * if price < 30.0 { 1.5 } else { 1.0 };
        let click = next() < p_click;
        let purchase = click && next() < 0.3;
        out += &format!(
            "{user},{item},{category},{price:.2},{},{}\n",
            u8::from(click),
            u8::from(purchase)
        );
    }
    out
}

#[test]
fn the_readmes_quick_start_runs_verbatim_on_a_users_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, rows, seed) in [
        ("my_train.csv", 8000, 1),
        ("my_valid.csv", 1000, 2),
        ("my_test.csv", 500, 3),
    ] {
        std::fs::write(d.join(name), table(rows, seed)).unwrap();
    }
    let script = format!(
        "set -euo pipefail\nmtl() {{ \"$MTL\" --quiet \"$@\"; }}\n{}\n",
        quick_start_block()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(d)
        .env("MTL", env!("CARGO_BIN_EXE_mtl"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the quick start failed:\n{script}\n{stdout}\n{stderr}"
    );
    // step 1 found the labels; step 3's `config show` printed the run; step 4 trained and
    // evaluated; step 5 wrote one score per test row for each output
    let schema = std::fs::read_to_string(d.join("schema.toml")).unwrap();
    assert!(
        schema.contains("name = \"click\"") && schema.contains("kind = \"binary\""),
        "{schema}"
    );
    assert!(stdout.contains("type = \"mmoe\""), "{stdout}");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("model/metrics.json")).unwrap()).unwrap();
    let auc = metrics["valid"][0]["binary"]["auc"].as_f64().unwrap();
    assert!(auc > 0.55, "the click signal was not learned: AUC {auc}");
    let scores = std::fs::read_to_string(d.join("scores.csv")).unwrap();
    let mut lines = scores.lines();
    assert_eq!(lines.next(), Some("click,purchase"));
    assert_eq!(lines.count(), 500);
}
