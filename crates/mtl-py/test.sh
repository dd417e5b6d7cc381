#!/usr/bin/env bash
# The Python package's tests: a virtual environment ($MTL_PY_VENV, else .venv-py at the
# repository's root) with the pinned build and test tools from PyPI, the package built into
# it by maturin in the tests' profile, features and target directory (so the README's test
# command's build is reused), then pytest. The tests compare with the `mtl` binary that
# command builds ($CARGO_TARGET_DIR/debug/mtl, or $MTL_BIN).
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
venv="${MTL_PY_VENV:-$root/.venv-py}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r requirements-test.txt
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" \
    maturin develop -q --features mtl-features/ndarray,mtl-features/wgpu
"$venv/bin/python" -m pytest -q tests "$@"
