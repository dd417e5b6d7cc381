"""ONNX export against `mtl predict`: every model type (experts, bottoms and towers of two
layers; MMOE's experts in one group and in two) on id, sequence and dense fields, encoded by `mtl.Encoder` from the sidecar alone and
scored by onnxruntime at several batch sizes (the batch axis is symbolic), within 1e-6 of the
command's own scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mtl
from common import cli

TASKS = [{"label": "click"}, {"label": "purchase"}]
KINDS = {
    "esmm": {"ctr_tower": {"dims": [8, 4]}, "cvr_tower": {"dims": [8, 4]}},
    "escm2": {"ctr_tower": {"dims": [8, 4]}, "cvr_tower": {"dims": [8, 4]}, "variant": "dr"},
    "esmm_chain": {"tower": {"dims": [8, 4]}, "tasks": [{"label": "click"}, {"label": "cart"}, {"label": "purchase"}]},
    "mmoe": {"n_experts": 3, "expert": {"dims": [8, 6]}, "tower": {"dims": [4]}, "tasks": TASKS},
    "mmoe_groups": {"type": "mmoe", "n_experts": 4, "expert_groups": 2, "expert": {"dims": [8, 6]}, "tower": {"dims": [4]}, "tasks": TASKS},
    "omoe": {"n_experts": 3, "expert": {"dims": [8, 6]}, "tower": {"dims": [4]}, "tasks": TASKS},
    "shared_bottom": {"bottom": {"dims": [8, 6]}, "tower": {"dims": [4]}, "tasks": TASKS},
    "ple": {
        "n_level": 2,
        "n_expert_specific": 2,
        "n_expert_shared": 1,
        "expert": {"dims": [8, 6]},
        "tower": {"dims": [4]},
        "tasks": TASKS,
    },
    "aitm": {"bottom": {"dims": [8, 6]}, "tower": {"dims": [4]}, "tasks": TASKS},
    "dbmtl": {"bottom": {"dims": [8]}, "tower": {"dims": [6, 4]}, "relation": {"dims": [3]}, "tasks": TASKS},
    "pepnet": {
        "epnet": {"gate_fields": ["item"]},
        "ppnet": {"gate_fields": ["user", "hist", "score"], "dims": [6, 4]},
        "tower": {"dims": [3]},
        "tasks": TASKS,
    },
}

SCHEMA = """
embed_dim = 4
[[sparse]]
name = "user"
fit = true
[[sparse]]
name = "item"
fit = true
[[sequence]]
name = "hist"
max_len = 4
pooling = "mean"
fit = true
[[sequence]]
name = "tags"
max_len = 3
pooling = "sum"
delimiter = ";"
fit = true
[[sequence]]
name = "recent"
max_len = 5
shared_with = "item"
pooling = { attention = "target", query = ["item"], softmax = true }
[[dense]]
name = "price"
standardize = true
[[dense]]
name = "score"
[[labels]]
name = "click"
kind = "binary"
[[labels]]
name = "cart"
kind = "binary"
[[labels]]
name = "purchase"
kind = "binary"
"""


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> dict[str, str]:
    """2,000 training and 500 test rows: two id fields, three sequence fields (one mean-, one
    sum-pooled, one pooled by target attention queried by the item; empty and over-long cells
    included), two dense fields (one standardised) and a click → cart → purchase funnel."""
    rng = np.random.default_rng(11)
    out = tmp_path_factory.mktemp("mixed")

    def frame(n: int) -> pd.DataFrame:
        user, item = rng.integers(0, 40, n), rng.integers(0, 25, n)
        cells = lambda hi, most, sep: [sep.join(map(str, rng.integers(0, hi, rng.integers(0, most)))) for _ in range(n)]
        price, score = rng.lognormal(3, 1, n), rng.normal(size=n)
        logit = 0.8 * score + (user % 3 == 0) - 1.0
        click = rng.random(n) < 1 / (1 + np.exp(-logit))
        cart = click & (rng.random(n) < 0.5)
        purchase = cart & (rng.random(n) < 0.5)
        return pd.DataFrame(
            {
                "user": user,
                "item": item,
                "hist": cells(15, 7, "|"),
                "tags": cells(6, 5, ";"),
                "recent": cells(25, 8, "|"),
                "price": price,
                "score": score,
                "click": click.astype(int),
                "cart": cart.astype(int),
                "purchase": purchase.astype(int),
            }
        )

    files = {"train": out / "train.csv", "test": out / "test.csv", "schema": out / "schema.toml"}
    frame(2000).to_csv(files["train"], index=False)
    frame(500).to_csv(files["test"], index=False)
    files["schema"].write_text(SCHEMA)
    return {k: str(v) for k, v in files.items()}


def score(graph: Path, inputs: dict, rows: int, batch: int) -> list:
    """onnxruntime's scores of every row, `batch` rows a call (a fixed-batch graph's last call
    padded with its last row, the extra scores dropped)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    fixed = json.loads(Path(str(graph) + ".json").read_text())["batch"]
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


def predicted(model: mtl.Model, test: str, tmp_path: Path) -> pd.DataFrame:
    out = tmp_path / "p.csv"
    done = cli("predict", "--model", model.dir, "--data", test, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return pd.read_csv(out)


def assert_scores_equal(graph: Path, inputs: dict, want: pd.DataFrame, outputs: list, batches: list) -> None:
    for batch in batches:
        got = score(graph, inputs, len(want), batch)
        for k, name in enumerate(outputs):
            diff = np.max(np.abs(got[k].astype(np.float64) - want[name].to_numpy(np.float64)))
            assert diff <= 1e-6, (graph, batch, name, diff)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_model_type_exports_a_symbolic_batch_that_scores_as_mtl_predict(mixed, kind, tmp_path):
    import onnxruntime as ort

    config = {
        "schema": mixed["schema"],
        "data": {"train": mixed["train"]},
        "model": {"type": kind, **KINDS[kind]},
        "train": {"epochs": 1, "batch_size": 128, "seed": 5},
    }
    model = mtl.load(mtl.train(config, out=tmp_path / "run", progress=False).dir)
    graph = tmp_path / "m.onnx"
    exported = model.export_onnx(graph)
    assert exported["batch"] is None, exported
    encoder = mtl.Encoder.from_sidecar(str(graph) + ".json")
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    # one input per sequence field; ids int64; every input's first axis the symbolic batch
    names = ["sparse_ids", "hist.ids", "tags.ids", "recent.ids", "hist.mask", "tags.mask", "recent.mask", "dense"]
    assert [i.name for i in session.get_inputs()] == names == encoder.inputs == exported["inputs"]
    assert [o.name for o in session.get_outputs()] == encoder.outputs == model.outputs
    shapes = {i.name: (i.shape, i.type) for i in session.get_inputs()}
    assert shapes["sparse_ids"] == (["batch", 2], "tensor(int64)")
    assert shapes["hist.ids"] == (["batch", 4], "tensor(int64)")
    assert shapes["tags.mask"] == (["batch", 3], "tensor(float)")
    assert shapes["dense"] == (["batch", 2], "tensor(float)")
    frame = pd.read_csv(mixed["test"], keep_default_na=False)
    inputs = encoder.encode(frame)
    assert inputs["tags.ids"].dtype == np.int64 and inputs["tags.ids"].shape == (500, 3)
    # an empty cell is a row of padding: mask 0
    empty = (frame["hist"] == "").to_numpy()
    assert empty.any() and (inputs["hist.mask"][empty] == 0).all()
    want = predicted(model, mixed["test"], tmp_path)
    assert_scores_equal(graph, inputs, want, model.outputs, [1, 7, 1000])


def test_a_fixed_batch_is_kept_when_asked_and_ids_alone_export(mixed, tmp_path):
    """`batch=64`: every input `[64, width]`, the last call padded; a schema of id fields alone
    (whose batch held labels only: a `[1, 1]` stand-in input) exports with a symbolic batch."""
    files = mtl.gen_data(tmp_path / "ids", rows=3000, seed=8)
    config = {
        "schema": files["schema"],
        "data": {"train": files["train"]},
        "model": {"type": "mmoe", **KINDS["mmoe"]},
        "train": {"epochs": 1, "batch_size": 256, "seed": 3},
    }
    model = mtl.load(mtl.train(config, out=tmp_path / "run", progress=False).dir)
    frame = pd.read_csv(files["test"])
    want = predicted(model, files["test"], tmp_path)
    for batch, name in [(64, "fixed.onnx"), (None, "symbolic.onnx")]:
        graph = tmp_path / name
        exported = model.export_onnx(graph, batch=batch)
        assert exported["batch"] == batch
        encoder = mtl.Encoder.from_sidecar(str(graph) + ".json")
        assert encoder.inputs == ["sparse_ids", "unused"]
        inputs = encoder.encode(frame)
        assert inputs["sparse_ids"].shape == (len(frame), 7) and inputs["unused"].shape == (1, 1)
        assert_scores_equal(graph, inputs, want, model.outputs, [1, 7, 1000])
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**json.loads((tmp_path / "symbolic.onnx.json").read_text()), "inputs": []}))
    with pytest.raises(mtl.MtlError, match="broken.json: no `inputs`"):
        mtl.Encoder.from_sidecar(broken).encode(frame)
