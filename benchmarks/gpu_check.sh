#!/usr/bin/env bash
# The one script a session with a GPU runs: what hopt's GPU paths do on a real GPU, written under $1.
#
#   bash benchmarks/gpu_check.sh RESULTS_FOLDER [--quick]
#
# 1. the machine: nvidia-smi, torch, CUDA, cuDNN;
# 2. benchmarks/throughput.py --device cuda for every torch trainable (full size: ResNet-18, AWD-LSTM);
# 3. synthetic data in the real formats (CIFAR-10 and CIFAR-100 pickles, PTB text), then for each of
#    recipes/cifar10.yaml, cifar100.yaml and ptb.yaml a small `hopt run --gpus all` with `device: cuda`
#    (2 members x 2 intervals: each member's second interval resumes its first's checkpoint on the GPU),
#    hopt status (the device column), hopt best and hopt replay of the best schedule;
# 4. the same for CIFAR-10 with `deterministic: on`, whose replay must be identical.
# Every step's output goes to RESULTS_FOLDER/<step>.log; RESULTS_FOLDER/summary.md collects what to read
# (exit statuses, the replays' last lines, the status tables). A failing step does not stop the others.
# --quick: fewer steps, for a first look when little GPU time is left.
set -uo pipefail

if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh RESULTS_FOLDER [--quick]" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
QUICK=${2:-}
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PYTHON=${PYTHON:-python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STEPS=300 WARMUP=30 RUN_STEPS=200
if [ "$QUICK" = "--quick" ]; then STEPS=60 WARMUP=10 RUN_STEPS=50; fi
SUMMARY="$OUT/summary.md"
echo "# GPU check $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    > "$SUMMARY"

step() {  # step NAME COMMAND...: run it with its output in NAME.log, and its exit status in the summary
    local name=$1
    shift
    local began=$SECONDS
    "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    echo "- $name: exit $status, $((SECONDS - began)) s" >> "$SUMMARY"
    return $status
}

machine() {
    nvidia-smi
    nvidia-smi -L
    "$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN",
        torch.backends.cudnn.version(), "GPUs", torch.cuda.device_count(),
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "capability", torch.cuda.get_device_capability() if torch.cuda.is_available() else None)'
}

make_data() {  # synthetic CIFAR-10, CIFAR-100 and PTB in their real formats under $WORK/data
    "$PYTHON" - "$WORK/data" <<'EOF'
import pickle
import sys
from pathlib import Path

import numpy as np

from benchmarks.throughput import write_cifar10, write_ptb

root = Path(sys.argv[1])
write_cifar10(root / "cifar-10-batches-py", 60_000)
rng = np.random.default_rng(1)
folder = root / "cifar-100-python"
folder.mkdir(parents=True)
for name, n in (("train", 50_000), ("test", 10_000)):
    content = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
               b"fine_labels": rng.integers(0, 100, n).tolist()}
    (folder / name).write_bytes(pickle.dumps(content))
(folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"c%d" % i for i in range(100)]}))
write_ptb(root / "ptb", 10_000, (929_589, 73_760, 82_430))
EOF
}

small_recipe() {  # small_recipe RECIPE OUT [deterministic]: 2 members x 2 intervals of RUN_STEPS, on CUDA only
    "$PYTHON" - "$1" "$2" "$RUN_STEPS" "${3:-}" <<'EOF'
import sys

import yaml

source, target, steps, deterministic = sys.argv[1:]
recipe = yaml.safe_load(open(source))
recipe.update(population=2, intervals=2, steps=int(steps), name=recipe["name"] + "-gpu-check")
recipe["space"]["device"] = {"type": "choice", "values": ["cuda"]}
if deterministic:
    recipe["name"] += "-deterministic"
    recipe["space"]["deterministic"] = {"type": "choice", "values": ["on"]}
open(target, "w").write(yaml.safe_dump(recipe, sort_keys=False))
EOF
}

experiment() {  # experiment NAME RECIPE [deterministic]: run, status, best, replay; the lines to read in the summary
    local name=$1 dir="$WORK/runs/$1"
    small_recipe "$2" "$WORK/$name.yaml" "${3:-}" || return 1
    step "$name-run" "$PYTHON" -m hopt_cli run "$WORK/$name.yaml" --dir "$dir" --workers 1 --gpus all
    step "$name-status" "$PYTHON" -m hopt_cli status --dir "$dir"
    step "$name-best" "$PYTHON" -m hopt_cli best --dir "$dir" --out "$WORK/best-$name"
    step "$name-replay" "$PYTHON" -m hopt_cli replay "$WORK/best-$name/schedule.yaml" --dir "$WORK/replay-$name"
    { echo; echo "## $name"; echo '```'; cat "$OUT/$name-status.log"; tail -n 2 "$OUT/$name-replay.log"; echo '```'; } \
        >> "$SUMMARY"
    cp -r "$dir/logs" "$OUT/$name-worker-logs" 2>/dev/null
}

step machine machine
step throughput "$PYTHON" benchmarks/throughput.py --device cuda --size full --steps "$STEPS" --warmup "$WARMUP" \
    --repeat 2 --out "$OUT/throughput-cuda.md"
step data make_data
export CIFAR_DIR="$WORK/data" PTB_DIR="$WORK/data/ptb"
experiment cifar10 recipes/cifar10.yaml
experiment cifar100 recipes/cifar100.yaml
experiment ptb recipes/ptb.yaml
experiment cifar10-deterministic recipes/cifar10.yaml deterministic
{ echo; echo "## throughput"; cat "$OUT/throughput-cuda.md" 2>/dev/null; } >> "$SUMMARY"
cat "$SUMMARY"
