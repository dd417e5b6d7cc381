"""The Python package against the `mtl` command on the same files: predictions, metrics and
error messages must be the command's own.

The command is `$MTL_BIN`, else `$CARGO_TARGET_DIR/debug/mtl` (or `target/debug/mtl`): the
binary the README's test command builds.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import mtl

ROOT = Path(__file__).resolve().parents[3]


def mtl_bin() -> str:
    candidates = [os.environ.get("MTL_BIN")]
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    candidates.append(os.path.join(target, "debug", "mtl"))
    for c in candidates:
        if c and os.path.isfile(c):
            return c
    raise RuntimeError(f"no mtl binary (tried {candidates}): build it with `cargo build -p mtl-cli` or set MTL_BIN")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([mtl_bin(), *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """Synthetic click/conversion data with one dense field: 3,000 rows."""
    return mtl.gen_data(tmp_path_factory.mktemp("data"), rows=3000, seed=7, dense=1)


MODELS = {
    "esmm": {"type": "esmm", "ctr_tower": {"dims": [16]}, "cvr_tower": {"dims": [16]}},
    "mmoe": {
        "type": "mmoe",
        "n_experts": 3,
        "expert": {"dims": [16]},
        "tower": {"dims": [8]},
        "tasks": [{"label": "click"}, {"label": "purchase"}],
    },
}


def config(data: dict[str, str], model: str) -> dict:
    return {
        "schema": data["schema"],
        "data": {"train": data["train"], "valid": data["valid"], "test": data["test"]},
        "model": MODELS[model],
        "train": {"epochs": 2, "batch_size": 256, "seed": 3},
    }


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> dict[str, mtl.Run]:
    out = tmp_path_factory.mktemp("runs")
    return {m: mtl.train(config(data, m), out=out / m, progress=False) for m in MODELS}


@pytest.mark.parametrize("model", list(MODELS))
def test_a_dict_config_trains_and_reports_its_metrics_and_history(trained, model):
    run = trained[model]
    assert run.finished
    outputs = mtl.load(run.dir).outputs
    assert sorted(run.metrics["test"]) == sorted(outputs)
    for values in run.metrics["test"].values():
        assert 0.0 < values["auc"] < 1.0 and values["log_loss"] > 0.0
    history = run.history
    assert isinstance(history, pd.DataFrame)
    assert list(history["epoch"]) == [1, 2]
    assert history["step"].is_monotonic_increasing
    assert {f"{o}/auc" for o in outputs} <= set(history.columns)


@pytest.mark.parametrize("model", list(MODELS))
def test_predictions_from_a_frame_and_an_arrow_table_equal_mtl_predicts(trained, data, model, tmp_path):
    m = mtl.load(trained[model].dir)
    out = tmp_path / "p.csv"
    done = cli("predict", "--model", m.dir, "--data", data["test"], "--out", str(out))
    assert done.returncode == 0, done.stderr
    want = pd.read_csv(out)
    assert list(want.columns) == m.outputs
    frame = pd.read_csv(data["test"])
    from_frame = m.predict(frame)
    assert isinstance(from_frame, pd.DataFrame) and list(from_frame.columns) == m.outputs
    table = pa.Table.from_pandas(frame, preserve_index=False)
    from_table = m.predict(table)
    assert isinstance(from_table, pa.Table)
    from_path = m.predict(data["test"], arrow=False)
    for o in m.outputs:
        expected = want[o].to_numpy(dtype=np.float64)
        assert np.max(np.abs(from_frame[o].to_numpy(np.float64) - expected)) <= 1e-6
        assert np.max(np.abs(from_table[o].to_numpy().astype(np.float64) - expected)) <= 1e-6
        assert np.max(np.abs(from_path[o].to_numpy(np.float64) - expected)) <= 1e-6
    # a table in several batches scores as the whole
    batches = pa.Table.from_batches(table.to_batches(max_chunksize=333))
    assert m.predict(batches).equals(from_table)


@pytest.mark.parametrize("model", list(MODELS))
def test_evaluate_equals_mtl_eval(trained, data, model, tmp_path):
    m = mtl.load(trained[model].dir)
    out = tmp_path / "m.json"
    done = cli("eval", "--model", m.dir, "--data", data["test"], "--out", str(out), "--group-by", "u1")
    assert done.returncode == 0, done.stderr
    want = {t["name"]: t for t in json.loads(out.read_text())}
    got = m.evaluate(pd.read_csv(data["test"]), group_by="u1")
    assert sorted(got) == sorted(want)
    for name, values in got.items():
        binary = want[name]["binary"]
        assert values["rows"] == want[name]["rows"]
        assert values["auc"] == pytest.approx(binary["auc"], abs=1e-12)
        assert values["log_loss"] == pytest.approx(binary["log_loss"], abs=1e-12)
        assert values["gauc"] == pytest.approx(binary["gauc"]["value"], abs=1e-12)


def test_a_bad_config_raises_the_clis_message(data, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        textwrap.dedent(
            f"""
            schema = "{data['schema']}"
            [data]
            train = "{data['train']}"
            [model]
            type = "esmm"
            ctr_tower = {{ dims = [16] }}
            cvr_tower = {{ dims = [16] }}
            [train]
            lr = -1.0
            """
        )
    )
    done = cli("train", "--config", str(bad), "--out", str(tmp_path / "cli"))
    assert done.returncode == 1
    cli_message = done.stderr.strip().splitlines()[-1].removeprefix("error: ")
    with pytest.raises(mtl.MtlError) as raised:
        mtl.train(bad, out=tmp_path / "py", progress=False)
    assert str(raised.value) == cli_message
    assert "lr" in cli_message and "bad.toml" in cli_message
    # the same from a dict: the key is named, the dict stands for the file
    with pytest.raises(mtl.MtlError, match=r"<config dict>.*lr"):
        mtl.train({**config(data, "esmm"), "train": {"lr": -1.0}}, out=tmp_path / "d", progress=False)
    assert not (tmp_path / "py").exists() and not (tmp_path / "d").exists()
    with pytest.raises(TypeError, match="unknown options"):
        mtl.train(bad, out=tmp_path / "x", learning_rate=0.1)


def test_a_frame_missing_a_column_raises_naming_it(trained, data):
    m = mtl.load(trained["esmm"].dir)
    frame = pd.read_csv(data["test"]).drop(columns=["u2"])
    with pytest.raises(mtl.MtlError, match=r"<DataFrame>: no column `u2`.*sparse\[2\] `u2`"):
        m.predict(frame)
    # a value outside its vocabulary names the row and column, as in a file
    frame = pd.read_csv(data["test"])
    frame.loc[4, "u0"] = -5
    with pytest.raises(mtl.MtlError, match=r"<DataFrame>:5: column `u0`"):
        m.predict(frame)
    with pytest.raises(TypeError, match="data must be a path"):
        m.predict([1, 2, 3])


def test_the_gil_is_released_while_training(data, tmp_path):
    done = threading.Event()
    result = {}

    def job():
        result["run"] = mtl.train(config(data, "mmoe"), out=tmp_path / "r", progress=False, epochs=3)
        done.set()

    thread = threading.Thread(target=job)
    thread.start()
    spins = 0
    while not done.is_set():
        spins += 1
    thread.join()
    assert result["run"].finished
    # a held GIL would have stopped this thread for the whole run
    assert spins > 10_000, spins


def test_ctrl_c_stops_with_a_checkpoint_that_resumes(data, tmp_path):
    out = tmp_path / "long"
    script = textwrap.dedent(
        f"""
        import sys, mtl
        cfg = {config(data, "esmm")!r}
        cfg["train"]["epochs"] = 500
        print("started", flush=True)
        try:
            mtl.train(cfg, out={str(out)!r}, progress=False)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(3)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "started"
    # once training is under way (its first checkpoint written), Ctrl-C
    state = out / "checkpoint" / "state.json"
    for _ in range(600):
        if state.exists():
            break
        threading.Event().wait(0.05)
    child.send_signal(signal.SIGINT)
    assert child.wait(timeout=120) == 3
    assert child.stdout.read().strip() == "interrupted"
    saved = json.loads(state.read_text())
    assert saved["finished"] is False and saved["global_step"] > 0
    # the run continues from its checkpoint (its config as saved: only the length may change)
    with pytest.raises(TypeError, match="epochs and max_steps only"):
        mtl.train(resume=out, lr=0.5)
    run = mtl.train(resume=out, progress=False, max_steps=saved["global_step"] + 3)
    assert run.summary["steps"] == saved["global_step"] + 3


def test_schema_infer_models_and_frames(data):
    frame = pd.read_csv(data["test"])
    text = mtl.schema.infer(frame)
    assert text.startswith("# Inferred by `mtl schema infer` from 300 rows of <DataFrame>")
    assert 'name = "u0"' in text and "[[labels]]" in text
    assert text == mtl.schema.infer(frame) and mtl.schema.infer(data["test"]).count("[[sparse]]") == text.count("[[sparse]]")
    kinds = mtl.models()
    assert {"esmm", "mmoe", "ple", "aitm"} <= set(kinds) and "Mixture-of-Experts" in kinds["mmoe"]


def score_onnx(path: Path, inputs: dict, rows: int, batch: int) -> list:
    """onnxruntime's scores of every row, `batch` rows a call (a fixed-batch graph's last call
    padded with its last row, the extra scores dropped)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fixed = json.loads(Path(str(path) + ".json").read_text())["batch"]
    step = fixed or batch
    parts = []
    for start in range(0, rows, step):
        n = min(step, rows - start)
        feeds = {}
        for name, values in inputs.items():
            part = values if name == "unused" else values[start : start + n]
            if fixed and n < fixed and name != "unused":
                part = np.concatenate([part, np.repeat(part[-1:], fixed - n, axis=0)])
            feeds[name] = part
        parts.append([o[:n] for o in session.run(None, feeds)])
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


@pytest.fixture(scope="module")
def ids_only(tmp_path_factory) -> tuple[mtl.Run, dict[str, str]]:
    """ESMM on id fields only (the graph whose batch axis burn's exporter makes symbolic), and
    its files."""
    files = mtl.gen_data(tmp_path_factory.mktemp("ids"), rows=3000, seed=8)
    run = mtl.train(config(files, "esmm"), out=tmp_path_factory.mktemp("r") / "esmm", progress=False)
    return run, files


@pytest.mark.parametrize("which", ["esmm", "mmoe", "esmm-ids"])
def test_onnx_with_the_encoder_scores_as_mtl_predict(trained, ids_only, data, which, tmp_path):
    import onnxruntime as ort

    run, files = ids_only if which == "esmm-ids" else (trained[which], data)
    model = mtl.load(run.dir)
    test_file = files["test"]
    graph = tmp_path / "m.onnx"
    exported = model.export_onnx(graph)
    encoder = mtl.Encoder.from_sidecar(str(graph) + ".json")
    # named inputs and outputs; ids as int64
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == encoder.inputs == exported["inputs"]
    assert [o.name for o in session.get_outputs()] == encoder.outputs == model.outputs
    kinds = {i.name: i.type for i in session.get_inputs()}
    assert kinds["sparse_ids"] == "tensor(int64)"
    assert ("dense" in kinds) == (which != "esmm-ids")
    frame = pd.read_csv(test_file)
    inputs = encoder.encode(frame)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**json.loads(Path(str(graph) + ".json").read_text()), "inputs": []}))
    with pytest.raises(mtl.MtlError, match="broken.json: no `inputs`"):
        mtl.Encoder.from_sidecar(broken).encode(frame)
    assert inputs["sparse_ids"].dtype == np.int64 and inputs["sparse_ids"].shape == (len(frame), 7)
    out = tmp_path / "p.csv"
    done = cli("predict", "--model", model.dir, "--data", test_file, "--out", str(out))
    assert done.returncode == 0, done.stderr
    want = pd.read_csv(out)
    batches = [1, 7, 1000] if exported["batch"] is None else [exported["batch"]]
    if which == "esmm-ids":
        assert exported["batch"] is None
    for batch in batches:
        got = score_onnx(graph, inputs, len(frame), batch)
        for k, name in enumerate(model.outputs):
            diff = np.max(np.abs(got[k].astype(np.float64) - want[name].to_numpy(np.float64)))
            assert diff <= 1e-6, (which, batch, name, diff)
