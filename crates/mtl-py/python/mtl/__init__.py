"""mtl — multi-task recommendation models (ESMM, MMOE, PLE, …) from Python.

The same engine as the ``mtl`` command: train from a config file or a dict, predict and
evaluate on a file, a pandas DataFrame or a PyArrow table, infer a schema, list the models.
Errors raise :class:`MtlError` with the message the command prints (file, line, field).

    import mtl
    run = mtl.train("configs/esmm-example.toml", out="out/esmm", epochs=1)
    model = mtl.load("out/esmm")
    scores = model.predict(df)            # a DataFrame: one column per output
    model.evaluate("test.csv")            # {"ctr": {"auc": …, "log_loss": …}, …}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pyarrow as pa

from . import _mtl
from ._mtl import MtlError, __version__
from . import schema

__all__ = ["MtlError", "Model", "Run", "Encoder", "train", "load", "models", "gen_data", "schema", "__version__"]

# the keyword arguments `train` takes, as `mtl train`'s options
_OVERRIDES = ("data", "valid", "epochs", "batch_size", "lr", "seed", "max_steps", "backend", "tensorboard")


def _pandas():
    try:
        import pandas
    except ImportError:  # pragma: no cover - pandas is optional
        return None
    return pandas


def _data(data: Any) -> tuple[Any, str]:
    """What the native module reads: a path as it is, anything Arrow as a stream, and a name
    for messages."""
    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data), os.fspath(data)
    pd = _pandas()
    if pd is not None and isinstance(data, pd.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False), "<DataFrame>"
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data]), "<RecordBatch>"
    if isinstance(data, pa.Table):
        return data, "<Table>"
    if hasattr(data, "__arrow_c_stream__"):
        return data, f"<{type(data).__name__}>"
    raise TypeError(
        f"data must be a path, a pandas DataFrame or an Arrow table (anything with "
        f"__arrow_c_stream__), not {type(data).__name__}"
    )


def _metrics(tasks: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """`mtl`'s per-output metrics as `{output: {metric: value}}` (binary and regression
    outputs alike; missing values left out)."""
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        values: dict[str, Any] = {"rows": task["rows"]}
        binary = task.get("binary") or {}
        for key in ("auc", "log_loss", "ece", "mean_prediction", "observed_rate"):
            if binary.get(key) is not None:
                values[key] = binary[key]
        if binary.get("gauc"):
            values["gauc"] = binary["gauc"]["value"]
        regression = task.get("regression") or {}
        values.update(regression)
        out[task["name"]] = values
    return out


@dataclass
class Run:
    """A finished (or interrupted) training job: where its model is and what it measured."""

    #: the model directory
    dir: str
    #: the job's summary, as ``mtl train`` reports it (every field of its JSON)
    summary: dict[str, Any] = field(repr=False)

    @property
    def metrics(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{"valid": {output: {metric: value}}, "test": {…}}``: the last evaluation's
        validation metrics and the saved model's test metrics."""
        return {"valid": _metrics(self.summary["valid"]), "test": _metrics(self.summary["test"])}

    @property
    def finished(self) -> bool:
        """Whether every epoch ran (or early stopping ended the run)."""
        return bool(self.summary["finished"])

    @property
    def history(self):
        """Every evaluation, one row each: epoch, step, losses, each output's validation
        metrics (``<output>/<metric>``) and learned loss weights (``loss_weight/<term>``,
        ``grad_norm/<term>``): the tags of the TensorBoard events too. A pandas DataFrame (a list of dicts without pandas):
        ``mlflow.log_metrics(row)`` per row is all a tracker needs."""
        rows = []
        for record in self.summary["history"]:
            row: dict[str, Any] = {
                "epoch": record["epoch"],
                "step": record["step"],
                "train_loss": record["train_loss"],
                "valid_loss": record.get("valid_loss"),
                "samples_per_sec": record["samples_per_sec"],
            }
            for name, value in record["train_losses"]:
                row[f"train_loss/{name}"] = value
            for key in ("loss_weight", "grad_norm"):
                for name, value in record.get(key + "s", []):
                    row[f"{key}/{name}"] = value
            for output, values in _metrics(record["valid"]).items():
                for metric, value in values.items():
                    row[f"{output}/{metric}"] = value
            rows.append(row)
        pd = _pandas()
        return pd.DataFrame(rows) if pd is not None else rows

    def load(self, **kwargs: Any) -> "Model":
        """The trained model (see :func:`load`)."""
        return load(self.dir, **kwargs)


class Model:
    """A trained model directory, opened for prediction and evaluation."""

    def __init__(self, dir: str | os.PathLike, *, backend: str = "flex", allow_unfinished: bool = False):
        self.dir = os.fspath(dir)
        self.backend = backend
        self.allow_unfinished = allow_unfinished
        kind, outputs, schema_text = _mtl.describe(self.dir, allow_unfinished)
        #: the model type (``esmm``, ``mmoe``, …)
        self.kind: str = kind
        #: the outputs, in prediction order
        self.outputs: list[str] = list(outputs)
        #: the schema it was trained with (TOML text)
        self.schema: str = schema_text

    def __repr__(self) -> str:
        return f"Model({self.dir!r}, kind={self.kind!r}, outputs={self.outputs!r})"

    def predict(self, data: Any, *, skip_bad_rows: bool = False, arrow: bool | None = None):
        """Scores every row of ``data`` (a path, a pandas DataFrame or an Arrow table): one
        float32 column per output, calibrated, as ``mtl predict`` writes them; with
        ``skip_bad_rows`` the first column, ``input_line``, says which input row each is.
        A DataFrame comes back for a DataFrame (or with ``arrow=False``), else an Arrow table."""
        source, name = _data(data)
        batch = _mtl.predict(
            self.dir, source, name, backend=self.backend, skip_bad_rows=skip_bad_rows,
            allow_unfinished=self.allow_unfinished,
        )
        table = pa.Table.from_batches([batch])
        pd = _pandas()
        wants_frame = arrow is False or (arrow is None and pd is not None and isinstance(data, pd.DataFrame))
        return table.to_pandas() if wants_frame else table

    def evaluate(
        self, data: Any, *, group_by: str | None = None, weight: str | None = None, skip_bad_rows: bool = False
    ) -> dict[str, dict[str, Any]]:
        """Per-output metrics on ``data`` (labels required), as ``mtl eval`` reports them:
        ``{output: {"auc": …, "log_loss": …, …}}``; ``group_by`` adds each binary output's GAUC
        over that column's groups; ``weight`` counts every row by that column's sample weight
        in every metric."""
        source, name = _data(data)
        text = _mtl.evaluate(
            self.dir, source, name, group_by=group_by, weight=weight, backend=self.backend,
            skip_bad_rows=skip_bad_rows, allow_unfinished=self.allow_unfinished,
        )
        return _metrics(json.loads(text))

    def export_onnx(self, out: str | os.PathLike, *, batch: int | None = None) -> dict[str, Any]:
        """Writes the model as ONNX to ``out`` and its encoder to ``out + ".json"``, as
        ``mtl export`` does: ``{"inputs", "outputs", "batch"}`` (``batch`` None when the batch
        axis is symbolic)."""
        inputs, outputs, fixed = _mtl.export_onnx(self.dir, os.fspath(out), batch, self.allow_unfinished)
        return {"inputs": list(inputs), "outputs": list(outputs), "batch": fixed}


class Encoder:
    """Raw rows into the inputs of a graph ``mtl export`` wrote, from its sidecar
    (``model.onnx.json``) alone, exactly as ``mtl predict`` encodes them::

        enc = mtl.Encoder.from_sidecar("m.onnx.json")
        session = onnxruntime.InferenceSession("m.onnx")
        scores = session.run(None, enc.encode(df))      # one array per output, enc.outputs
    """

    def __init__(self, sidecar: str | os.PathLike):
        self.sidecar = os.fspath(sidecar)
        with open(self.sidecar, encoding="utf-8") as f:
            meta = json.load(f)
        #: the graph's inputs, in order
        self.inputs: list[str] = [i["name"] for i in meta["inputs"]]
        #: the graph's outputs, in order
        self.outputs: list[str] = list(meta["outputs"])
        #: the graph's fixed batch (rows per call), or None when any batch goes
        self.batch: int | None = meta.get("batch")
        #: post-hoc calibration the graph's outputs still need (as ``mtl predict`` applies it), or None
        self.calibration = meta.get("calibration")

    @classmethod
    def from_sidecar(cls, path: str | os.PathLike) -> "Encoder":
        """The encoder of the graph whose sidecar is ``path``."""
        return cls(path)

    def encode(self, data: Any, *, skip_bad_rows: bool = False) -> dict[str, Any]:
        """The graph's inputs for ``data`` (a path, a DataFrame or an Arrow table), by name:
        ``[rows, width]`` numpy arrays, ids int64, values float32."""
        source, name = _data(data)
        arrays = {}
        for input_name, values, width in _mtl.encode(self.sidecar, source, name, skip_bad_rows=skip_bad_rows):
            arrays[input_name] = values.to_numpy(zero_copy_only=False).reshape(-1, width)
        return arrays


def train(
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    out: str | os.PathLike | None = None,
    *,
    resume: str | os.PathLike | None = None,
    set: Sequence[str] = (),
    progress: bool = True,
    **overrides: Any,
) -> Run:
    """Trains a model, as ``mtl train`` does, and returns its :class:`Run`.

    ``config`` is a run config file or a dict of the same tables (relative paths against the
    working directory); ``set`` takes ``mtl train --set`` assignments (``"train.lr=0.01"``);
    the keyword arguments are ``mtl train``'s options: data, valid, epochs, batch_size, lr,
    seed, max_steps, backend, tensorboard (a folder for TensorBoard event files: each
    evaluation's scalars, tagged as the :attr:`Run.history` columns, and ``lr``). ``resume=DIR`` continues
    the run in DIR (``epochs`` then trains a
    finished run further). Progress goes to stderr. Ctrl-C stops after the step under way and
    keeps a checkpoint (``train(resume=DIR)`` continues), then raises ``KeyboardInterrupt``."""
    unknown = sorted(set_ for set_ in overrides if set_ not in _OVERRIDES)
    if unknown:
        raise TypeError(f"train() got unknown options {unknown}; it takes {list(_OVERRIDES)}")
    if isinstance(set, str):
        set = [set]
    if resume is not None:
        if config is not None or out is not None:
            raise TypeError("train(resume=DIR) continues the run in DIR: give no config and no out")
        fixed = sorted(k for k in overrides if k not in ("epochs", "max_steps", "tensorboard"))
        if fixed or set:
            raise TypeError(
                f"train(resume=DIR) keeps the run's config: it takes epochs, max_steps and tensorboard only, not {fixed or list(set)}"
            )
        text = _mtl.train(os.fspath(resume), None, None, sets=list(set), resume=True, progress=progress, **overrides)
        return Run(os.path.abspath(resume), json.loads(text))
    if config is None or out is None:
        raise TypeError("train() needs a config (a path or a dict) and out (the model directory)")
    if isinstance(config, Mapping):
        path, table = None, json.dumps(config)
    else:
        path, table = os.fspath(config), None
    text = _mtl.train(os.fspath(out), path, table, sets=list(set), progress=progress, **overrides)
    return Run(os.path.abspath(out), json.loads(text))


def load(model_dir: str | os.PathLike, *, backend: str = "flex", allow_unfinished: bool = False) -> Model:
    """Opens a trained model directory for :meth:`Model.predict` and :meth:`Model.evaluate`
    (an unfinished run only with ``allow_unfinished``)."""
    return Model(model_dir, backend=backend, allow_unfinished=allow_unfinished)


def models() -> dict[str, str]:
    """The registered model types and what each is (``mtl models``)."""
    return {kind: about for kind, about, _ in _mtl.models()}


def gen_data(out: str | os.PathLike, *, rows: int = 10_000, seed: int = 2022, dense: int = 0) -> dict[str, str]:
    """Writes synthetic click/conversion data (``mtl gen-data ccp --small``) under ``out``:
    ``{"train", "valid", "test", "schema"}`` paths."""
    train_, valid, test, schema_ = _mtl.gen_data(os.fspath(out), rows, seed, dense)
    return {"train": os.fspath(train_), "valid": os.fspath(valid), "test": os.fspath(test), "schema": os.fspath(schema_)}
