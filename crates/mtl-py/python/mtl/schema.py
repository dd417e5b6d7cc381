"""Schemas: :func:`infer` guesses a starting one from data, as ``mtl schema infer`` does."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from . import _mtl


def infer(data: Any, *, rows: int = 100_000, max_categories: int = 10_000) -> str:
    """A starting schema (TOML text, a comment on every guess) for ``data``: a path, a list of
    paths, a pandas DataFrame or an Arrow table (written to a temporary Parquet file first)."""
    if isinstance(data, (str, os.PathLike)):
        return _mtl.infer_schema([os.fspath(data)], rows, max_categories)
    if isinstance(data, (list, tuple)):
        return _mtl.infer_schema([os.fspath(p) for p in data], rows, max_categories)
    import pyarrow as pa
    import pyarrow.parquet as pq

    from . import _data

    table, name = _data(data)
    if not isinstance(table, pa.Table):
        table = pa.table(table)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.parquet")
        pq.write_table(table, path)
        text = _mtl.infer_schema([path], rows, max_categories)
    # the text names its source: the table, not the temporary file
    return text.replace(path, name, 1)
