"""Prediction throughput from Python against the `mtl` command, and ONNX Runtime against both.

    cd crates/mtl-py && maturin build --release && pip install ../../target/wheels/mtl-*.whl
    pip install onnxruntime pandas
    python bench.py --mtl ../../target/release/mtl [--rows 1000000] [--models esmm-large,mmoe-large]

For each model (the `configs/<model>.toml` model and training tables, one epoch on the test
split of generated click/conversion data (`mtl.gen_data`: small vocabularies; throughput does not depend on
what it learned), on the same `--rows` rows:
- `mtl predict --data FILE --out CSV`: the whole command (read, encode, score, write);
- `Model.predict(path)`, `Model.predict(frame)` (a pandas DataFrame, converted to Arrow by
  pyarrow first: the copy), `Model.predict(table)` (a PyArrow table: no copy);
- ONNX Runtime (CPU, all cores, batches of `--onnx-batch` rows) on inputs encoded once by
  `mtl.Encoder` from the exported graph's sidecar: encoding and scoring timed apart.
Each figure is the best of `--repeat` runs; rows per second, whole numbers. Markdown on stdout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

import mtl

ROOT = Path(__file__).resolve().parents[2]


def best(repeat: int, work) -> float:
    """The fastest of `repeat` runs of `work()`, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def trained(name: str, files: dict, out: Path) -> mtl.Model:
    table = tomllib.loads((ROOT / "configs" / f"{name}.toml").read_text())
    config = {
        "schema": files["schema"],
        "data": {"train": files["test"]},
        "model": table["model"],
        "train": {**table["train"], "epochs": 1},
    }
    return mtl.load(mtl.train(config, out=out, progress=False).dir)


def onnx_rates(model: mtl.Model, table: pa.Table, work: Path, batch: int, repeat: int) -> tuple[float, float]:
    import onnxruntime as ort

    graph = work / "m.onnx"
    model.export_onnx(graph)
    encoder = mtl.Encoder.from_sidecar(str(graph) + ".json")
    inputs = {}
    encode = best(repeat, lambda: inputs.update(encoder.encode(table)))
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    rows = table.num_rows

    def score():
        for start in range(0, rows, batch):
            session.run(None, {k: (v if k == "unused" else v[start : start + batch]) for k, v in inputs.items()})

    return rows / encode, rows / best(repeat, score)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mtl", required=True, help="the release `mtl` binary")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--models", default="esmm-example,esmm-large,mmoe-example,mmoe-large")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--onnx-batch", type=int, default=4096)
    ap.add_argument("--work", default=None, help="a folder for the data and models (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="mtl-py-bench-"))
    # the training split holds 80 % of the rows: it is the file scored
    files = mtl.gen_data(work / "data", rows=args.rows * 5 // 4, seed=2022)
    path = files["train"]
    table = pacsv.read_csv(path)
    frame = table.to_pandas()
    rows = table.num_rows
    print(f"`python crates/mtl-py/bench.py --rows {args.rows}`: {rows} rows of `mtl gen-data ccp --small`, "
          f"best of {args.repeat}, rows/s; {os.cpu_count()} cores\n")
    print("| model | `mtl predict` (command) | `predict(path)` | `predict(DataFrame)` | `predict(Arrow table)` "
          "| DataFrame → Arrow copy | ONNX Runtime: `Encoder.encode` | ONNX Runtime: scoring |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model = trained(name, files, work / name)
        out = work / f"{name}-scores.csv"
        cli = best(args.repeat, lambda: subprocess.run(
            [args.mtl, "--quiet", "predict", "--model", model.dir, "--data", path, "--out", str(out)],
            check=True, stdout=subprocess.DEVNULL))
        by_path = best(args.repeat, lambda: model.predict(path))
        by_frame = best(args.repeat, lambda: model.predict(frame))
        by_table = best(args.repeat, lambda: model.predict(table))
        copy = best(args.repeat, lambda: pa.Table.from_pandas(frame, preserve_index=False))
        # the same scores every way
        want = pd.read_csv(out)
        got = model.predict(table).to_pandas()
        assert all(np.max(np.abs(got[c] - want[c])) <= 1e-6 for c in model.outputs), name
        encode, score = onnx_rates(model, table, work / name, args.onnx_batch, args.repeat)
        rate = lambda secs: f"{rows / secs:,.0f}"
        print(f"| {name} | {rate(cli)} | {rate(by_path)} | {rate(by_frame)} | {rate(by_table)} "
              f"| {copy:.2f} s | {encode:,.0f} | {score:,.0f} |")


if __name__ == "__main__":
    main()
