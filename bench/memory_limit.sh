#!/bin/bash
# The issue-10 acceptance: run / eval / predict on a 12M x 24 CSV inside a 768 MiB memory
# cgroup (v1 controller, as root). Prints each command's wall time, /usr/bin/time's peak
# RSS (mapped cache pages included) and the group's memory.max_usage_in_bytes, which counts
# page cache too (so it sits at the limit once the table has been read: reclaimable, not an
# OOM; an OOM kill shows as a non-zero exit and "Killed").
#   bash bench/memory_limit.sh [ROWS] [WORKDIR]     # default 12000000 rows in /tmp/mse-accept
set -euo pipefail
ROWS=${1:-12000000}; WORK=${2:-/tmp/mse-accept}; LIMIT_MIB=768
BIN=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin
mkdir -p "$WORK"
export MSE_TRAIN_CACHE_DIR=$WORK/cache
[ -f "$WORK/big.csv" ] || "$BIN/python" - "$ROWS" "$WORK/big.csv" <<'PY'
import sys
import numpy as np
rows, path = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
w = rng.normal(size=23)
with open(path, "w") as f:
    f.write(",".join([f"x{i}" for i in range(23)] + ["y"]) + "\n")
    for start in range(0, rows, 200_000):
        n = min(200_000, rows - start)
        x = rng.normal(size=(n, 23)).astype(np.float32)
        np.savetxt(f, np.column_stack([x, x @ w + 0.1 * rng.normal(size=n)]), fmt="%.4f", delimiter=",")
PY
cat > "$WORK/big.yaml" <<Y
data: {train: $WORK/big.csv, target: y, val_fraction: 0.05}
model: {type: mlp, hidden: [64]}
optimizer: {name: adam, lr: 0.001}
train: {epochs: 1, batch_size: 1024}
output: {plot: false, dir: $WORK/run}
Y
limited() {  # NAME COMMAND...: COMMAND in a fresh group of LIMIT_MIB
  local cg=/sys/fs/cgroup/memory/mse_accept_$1; shift
  [ -d "$cg" ] && rmdir "$cg"
  mkdir "$cg" && echo $((LIMIT_MIB << 20)) > "$cg/memory.limit_in_bytes"
  bash -c "echo \$\$ > $cg/cgroup.procs; exec /usr/bin/time -f '%e s wall, peak RSS %M KiB' $*" 2>&1 \
    | grep -v "batch" | tail -4
  echo "memory.max_usage_in_bytes $(cat "$cg/memory.max_usage_in_bytes") (limit $((LIMIT_MIB << 20)))"
  rmdir "$cg"
}
limited run "$BIN/mse-train" run "$WORK/big.yaml" --overwrite
limited eval "$BIN/mse-train" eval "$WORK/run/best.pt" "$WORK/big.csv" --json
limited predict "$BIN/mse-train" predict "$WORK/run/best.pt" "$WORK/big.csv" -o "$WORK/pred.csv"
echo "delete $WORK when done (the CSV, its cache and the predictions: ~7 GB at 12M rows)"
