#!/usr/bin/env bash
# Run the benchmarks on a CUDA GPU and write their JSON into the folder given as $1.
#
#   benchmarks/gpu_check.sh OUT_DIR [extra run_all.py options, e.g. --quick]
#
# Assumes (nothing is installed or downloaded here):
#   - the repository root is this script's parent folder's parent;
#   - the active Python (or $PYTHON) has this package installed (`pip install -e .`)
#     with a CUDA build of torch, numpy, scipy and rich (the package's dependencies);
#   - Fashion-MNIST is found through $MCEL_DATA, ~/.cache/mcel/datasets or
#     ../shared/datasets next to the repository; otherwise the benchmarks use random
#     tensors of the same shape and say so in their JSON (timings stay valid).
# Runs every benchmark with --device cuda (the full sizes: 10k evaluation images, 10M
# codes) under a 280 s limit, so the whole check stays under 5 minutes; each benchmark
# writes its JSON as soon as it finishes, so a timeout still leaves the finished ones.
# To put the results on docs/performance.md, copy OUT_DIR/*.json to docs/bench/cuda/
# and run `.venv/bin/python benchmarks/run_all.py --doc-only`.
# DEVICE=cpu runs the same plumbing without a GPU (a dry run).
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 OUT_DIR [run_all.py options]" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
LIMIT=${LIMIT:-280}
cd "$ROOT"

"$PY" - "$DEVICE" <<'PYCHECK'
import sys
import torch
import mcel  # noqa: F401  (fails here if the package is not installed)
dev = sys.argv[1]
if dev.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit(f"torch {torch.__version__} sees no CUDA device; install a CUDA build of torch")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
else:
    print(f"torch {torch.__version__} on {dev} (dry run)")
PYCHECK

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
fi

status=0
# stream measures host memory and CPU time: a CPU-only benchmark
timeout "$LIMIT" "$PY" benchmarks/run_all.py --device "$DEVICE" --out-dir "$OUT" --no-doc \
    --only eval train adaptive inject memory batch precision maps "$@" \
    2>&1 | tee "$OUT/gpu_check.log" || status=$?
echo "exit status $status; JSON in $OUT:"
ls -l "$OUT"
exit "$status"
