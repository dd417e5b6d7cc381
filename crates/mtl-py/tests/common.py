"""What the Python tests share: the `mtl` command they compare with.

The command is `$MTL_BIN`, else `$CARGO_TARGET_DIR/debug/mtl` (or `target/debug/mtl`): the
binary the README's test command builds.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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
