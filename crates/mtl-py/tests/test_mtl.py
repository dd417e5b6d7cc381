"""The Python package against the `mtl` command on the same files: predictions, metrics and
error messages must be the command's own.

The command is `common.mtl_bin()`: the binary the README's test command builds.
"""

from __future__ import annotations

import json
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
from common import cli


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
@pytest.mark.parametrize("weight", [None, "p_click"])
def test_evaluate_equals_mtl_eval(trained, data, model, weight, tmp_path):
    """GAUC by a column, and (the generator's click probability as sample weights) every
    metric weighted, as `mtl eval --weight` weighs them."""
    m = mtl.load(trained[model].dir)
    out = tmp_path / "m.json"
    extra = ("--weight", weight) if weight else ()
    done = cli("eval", "--model", m.dir, "--data", data["test"], "--out", str(out), "--group-by", "u1", *extra)
    assert done.returncode == 0, done.stderr
    want = {t["name"]: t for t in json.loads(out.read_text())}
    frame = pd.read_csv(data["test"])
    got = m.evaluate(frame, group_by="u1", weight=weight)
    assert sorted(got) == sorted(want)
    for name, values in got.items():
        binary = want[name]["binary"]
        assert values["rows"] == want[name]["rows"]
        assert values["auc"] == pytest.approx(binary["auc"], abs=1e-12)
        assert values["log_loss"] == pytest.approx(binary["log_loss"], abs=1e-12)
        assert values["gauc"] == pytest.approx(binary["gauc"]["value"], abs=1e-12)
    if weight:
        # the weighted observed click rate by hand: Σ w·click / Σ w
        first = next(iter(got.values()))
        w, click = frame[weight].to_numpy(), frame["click"].to_numpy()
        # (the weights are read as 32-bit floats, as labels are)
        assert first["observed_rate"] == pytest.approx((w * click).sum() / w.sum(), rel=1e-6)
        assert first["observed_rate"] != pytest.approx(click.mean(), rel=1e-3)


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
        import signal, sys, mtl
        # a job started in the background (`.ci/run &`) passes SIGINT on ignored, and Python
        # then leaves it so: Ctrl-C must reach Python's handler here
        signal.signal(signal.SIGINT, signal.default_int_handler)
        cfg = {config(data, "esmm")!r}
        cfg["train"]["epochs"] = 500
        cfg["train"]["early_stopping"] = False  # else it may end on its own before Ctrl-C lands
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
    with pytest.raises(TypeError, match="takes epochs, max_steps and tensorboard only"):
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


def test_tensorboard_events_hold_every_evaluation_as_run_history_does(data, tmp_path):
    """`tensorboard=DIR`: tensorboard's own reader finds one scalar per `Run.history` column
    (and `lr`) at every evaluation's step, with its value; `[train] tensorboard = true` writes
    them under the model directory; a run that fails before its first step leaves none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config(data, "esmm")
    cfg["train"].update({"eval_every_steps": 4, "loss_weighting": {"kind": "uncertainty"}, "lr": 0.002})
    run = mtl.train(cfg, out=tmp_path / "run", tensorboard=tmp_path / "tb", progress=False)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    history = run.history
    steps = history["step"].tolist()
    assert len(steps) >= 4 and steps == sorted(steps)
    columns = [c for c in history.columns if c not in ("epoch", "step") and history[c].notna().all()]
    assert {"train_loss", "valid_loss", "ctr/auc", "cvr/ece", "ctcvr/log_loss", "loss_weight/ctr"} <= set(columns)
    assert set(events.Tags()["scalars"]) == set(columns) | {"lr"}
    for column in columns:
        got = events.Scalars(column)
        assert [e.step for e in got] == steps, column
        want = history[column].to_numpy(np.float64)
        assert np.allclose([e.value for e in got], want, rtol=1e-6, atol=1e-7), column
    assert {e.value for e in events.Scalars("lr")} == {np.float32(0.002)}
    # in the model directory, from the config
    cfg["train"]["tensorboard"] = True
    mtl.train(cfg, out=tmp_path / "in-dir", progress=False)
    inside = EventAccumulator(str(tmp_path / "in-dir" / "tensorboard"))
    inside.Reload()
    assert [e.step for e in inside.Scalars("ctr/auc")] == steps
    # a run that fails after its events were opened, before its first checkpoint (a bad label
    # on the training file's last line): no event file left, nor the folders it made
    bad = tmp_path / "bad.csv"
    lines = Path(data["train"]).read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[-1].split(",")
    cells[header.index("click")] = "7"
    bad.write_text("\n".join(lines[:-1] + [",".join(cells)]) + "\n")
    cfg["data"]["train"] = str(bad)
    kept = tmp_path / "kept"
    kept.mkdir()
    for folder in [tmp_path / "tb-failed", kept]:
        with pytest.raises(mtl.MtlError, match=f"bad.csv:{len(lines)}"):
            mtl.train(cfg, out=tmp_path / "failed", tensorboard=folder, progress=False)
        assert not (tmp_path / "failed").exists()
    assert not (tmp_path / "tb-failed").exists()
    assert kept.is_dir() and list(kept.iterdir()) == []
