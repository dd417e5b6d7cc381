"""Scores a CSV file with an ONNX model exported by `mtl export` (onnxruntime) and compares the
scores with `mtl predict`'s on the same file.

usage: check_onnx.py MODEL.onnx DATA.csv PREDICT_SCORES.csv [--batch N]

The raw cells are encoded as mtl encodes them, from the sidecar MODEL.onnx.json (schema and
fitted feature state): this checks the exported graph and the encoder description together.
Prints one JSON line: rows, max absolute difference per output.
"""
import csv
import json
import sys
import tomllib

import numpy as np
import onnxruntime as ort


def canonical_id(text):
    t = text.strip()
    # integer-valued floats (`3.0`) are the id 3, as mtl's canonical_id reads them
    if "." in t:
        head, _, tail = t.partition(".")
        if head.lstrip("-").isdigit() and tail.strip("0") == "":
            return head
    return t


def fnv1a(data):
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    model_path, data_path, scores_path = sys.argv[1:4]
    batch = int(sys.argv[sys.argv.index("--batch") + 1]) if "--batch" in sys.argv else 4096
    side = json.load(open(model_path + ".json"))
    schema = tomllib.loads(side["schema"])
    state = side["features"]
    offsets = side["table_offsets"]
    sparse = schema.get("sparse", [])
    dense = schema.get("dense", [])
    if schema.get("sequence"):
        raise SystemExit("sequence fields: not covered by this check")
    rows = list(csv.DictReader(open(data_path, newline="")))

    # per sparse field: its owner's fitted vocabulary (id k is entry k - 1; 0 is unseen), a
    # hash bucket count, or a declared size (the cell is the id)
    names = [f["name"] for f in sparse]
    vocabs = state["vocabularies"]

    def owner(field):
        return sparse[names.index(field.get("shared_with") or field["name"])]

    lookups = []
    for f in sparse:
        table = vocabs[names.index(owner(f)["name"])]
        lookups.append(None if table is None else {v: i + 1 for i, v in enumerate(table)})

    def encode_id(f, text):
        t = canonical_id(text)
        if lookups[f] is not None:
            return lookups[f].get(t, 0)
        buckets = owner(sparse[f]).get("hash_buckets")
        if buckets is not None:
            return fnv1a(t.encode()) % buckets
        return int(t)

    ids = np.zeros((len(rows), len(sparse)), dtype=np.int32)
    for r, row in enumerate(rows):
        for f, field in enumerate(sparse):
            ids[r, f] = encode_id(f, row[field.get("column") or field["name"]]) + offsets[f]
    feeds_all = []
    for inp in side["inputs"]:
        if inp["name"] == "sparse_ids":
            feeds_all.append(ids)
        elif inp["name"] == "dense":
            stats = state["dense"]
            x = np.zeros((len(rows), len(dense)), dtype=np.float32)
            for r, row in enumerate(rows):
                for d, field in enumerate(dense):
                    v = float(row[field.get("column") or field["name"]])
                    if field.get("standardize"):
                        v = (v - stats[d]["mean"]) / stats[d]["std"]
                    x[r, d] = v
            feeds_all.append(x)
        elif inp["name"] == "unused":
            feeds_all.append(np.zeros((1, 1), dtype=np.float32))
        else:
            raise SystemExit(f"input {inp['name']}: not covered by this check")
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    graph_inputs = session.get_inputs()
    fixed = side.get("batch")
    if fixed:
        batch = fixed
    outputs = []
    for start in range(0, len(rows), batch):
        feeds = {}
        n = min(batch, len(rows) - start)
        for gi, inp, value in zip(graph_inputs, side["inputs"], feeds_all):
            if inp["name"] == "unused":
                part = value
            else:
                part = value[start:start + batch]
                if fixed and n < fixed:
                    # a fixed-batch graph takes exactly `fixed` rows: pad, then drop the extra scores
                    pad = np.repeat(part[-1:], fixed - n, axis=0)
                    part = np.concatenate([part, pad])
            if "int64" in gi.type:
                part = part.astype(np.int64)
            feeds[gi.name] = part
        outputs.append([o[:n] for o in session.run(None, feeds)])
    got = [np.concatenate([o[k] for o in outputs]) for k in range(len(side["outputs"]))]
    want = np.loadtxt(scores_path, delimiter=",", skiprows=1, ndmin=2)
    diffs = {name: float(np.max(np.abs(got[k] - want[:, k]))) for k, name in enumerate(side["outputs"])}
    print(json.dumps({"rows": len(rows), "batch": fixed or "symbolic", "max_abs_diff": diffs, "onnxruntime": ort.__version__}))


if __name__ == "__main__":
    main()
