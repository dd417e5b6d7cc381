#!/usr/bin/env bash
# Makes docs/tensorboard.png: an ESMM run's TensorBoard event files (`mtl train --tensorboard`),
# served by TensorBoard and photographed by headless Chromium.
#   needs: a release `mtl` ($MTL, default target/release/mtl), `tensorboard` on PATH (pip
#   install tensorboard), chromium (Debian's package)
set -euo pipefail
cd "$(dirname "$0")/.."
mtl="${MTL:-target/release/mtl}"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
"$mtl" --quiet gen-data ccp --rows 400000 --small --dense 2 --seed 7 --out "$work/data"
cat > "$work/run.toml" <<TOML
schema = "data/synth_ccp_schema.toml"
[data]
train = "data/synth_ccp_train.csv"
valid = "data/synth_ccp_val.csv"
[model]
type = "esmm"
ctr_tower = { dims = [64, 32] }
cvr_tower = { dims = [64, 32] }
[train]
epochs = 3
batch_size = 1024
eval_every_steps = 25
early_stopping = false
loss_weighting = { kind = "uncertainty" }
TOML
"$mtl" --quiet train --config "$work/run.toml" --out "$work/esmm" --tensorboard "$work/tb/esmm"
tensorboard --logdir "$work/tb" --port 6123 --bind_all >/dev/null 2>&1 &
for _ in $(seq 60); do curl -sf localhost:6123 >/dev/null && break; sleep 1; done
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,1300 \
    --virtual-time-budget=30000 --screenshot="$PWD/docs/tensorboard.png" \
    "http://localhost:6123/?darkMode=false#scalars&tagFilter=auc%7Closs&_smoothingWeight=0" 2>/dev/null
echo "wrote docs/tensorboard.png"
