#!/usr/bin/env bash
# One command for the day a GPU machine is lent (e.g. one NVIDIA H200, 16 cores): the CUDA tests, then every
# zoo model on the PyTorch CUDA backend at fp32/fp16/bf16, batch 1 and the best batch, and CUDA graphs where
# shapes are fixed. Writes OUT_DIR/gpu-check.json, gpu-check.md, gpu-tests.log. Installs nothing.
#
#   scripts/gpu-check.sh [OUT_DIR]          (default: $OUT if set, else runs/gpu-check)
#
# Python: $PYTHON if set, else the first of python3 / .venv/bin/python whose torch sees a CUDA device (the
# repository's .venv usually holds a CPU-only torch; a GPU machine's own python3 holds a CUDA one). The
# package is used from this checkout (PYTHONPATH), not installed. Time: tests <= 150 s, measurements within
# a 330 s budget (each hard-stopped by `timeout`), about 8 minutes at most in all.
# Extra arguments for the measurement go in GPU_CHECK_ARGS (e.g. "--models refinedet320-vgg16-voc").
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-runs/gpu-check}}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

has_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' >/dev/null 2>&1; }
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3 .venv/bin/python; do
    if command -v "$candidate" >/dev/null 2>&1 && has_cuda "$candidate"; then PY="$candidate"; break; fi
  done
fi
if [ -z "$PY" ] || ! has_cuda "$PY"; then
  echo "gpu-check: no Python here has a torch that sees a CUDA device (torch.cuda.is_available() is False for" >&2
  for candidate in ${PYTHON:-} python3 .venv/bin/python; do
    command -v "$candidate" >/dev/null 2>&1 && echo "  $candidate: $("$candidate" -c 'import torch; print("torch", torch.__version__, "CUDA build", torch.version.cuda)' 2>&1 | tail -1)" >&2
  done
  echo "); nothing was measured. On a GPU machine set PYTHON=/path/to/python with a CUDA build of torch." >&2
  exit 2
fi
echo "gpu-check: $PY, $("$PY" -c 'import torch; print("torch", torch.__version__, "on", torch.cuda.get_device_name(0))')"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

# What deployzoo needs at import (pycocotools, openvino are imported only where used): fail with names, not a traceback.
if ! "$PY" -c 'import numpy, onnx, cv2, tqdm, PIL; import deployzoo.registry, deployzoo.backends.pytorch_backend, deployzoo.bench.pure' 2>"$OUT_DIR/import-error.log"; then
  echo "gpu-check: deployzoo cannot be imported with $PY (a package is missing; installing is not this script's job):" >&2
  tail -3 "$OUT_DIR/import-error.log" >&2
  exit 2
fi

status=0
echo "== CUDA tests (pytest -m gpu) =="
gpu_tests=$(grep -l "pytest.mark.gpu" tests/test_*.py | tr '\n' ' ')
if "$PY" -c 'import pytest' 2>/dev/null; then
  # shellcheck disable=SC2086
  timeout 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider $gpu_tests 2>&1 | tee "$OUT_DIR/gpu-tests.log"
  test_status=${PIPESTATUS[0]}
  [ "$test_status" -eq 0 ] || { echo "gpu-check: CUDA tests exited with $test_status (124 = timed out)"; status=1; }
else
  echo "gpu-check: pytest is not installed for $PY; CUDA tests not run" | tee "$OUT_DIR/gpu-tests.log"; status=1
fi

echo "== PyTorch CUDA backend: every model, fp32/fp16/bf16, batch 1 and best, CUDA graphs where shapes are fixed =="
# shellcheck disable=SC2086
timeout 360 "$PY" -m deployzoo.bench.gpu_check --out "$OUT_DIR" --device cuda --budget-s 330 ${GPU_CHECK_ARGS:-}
bench_status=$?
[ "$bench_status" -eq 0 ] || { echo "gpu-check: measurements exited with $bench_status (124 = stopped at the limit; the files keep what was measured)"; status=1; }
echo "gpu-check: wrote $OUT_DIR/gpu-check.md, $OUT_DIR/gpu-check.json, $OUT_DIR/gpu-tests.log"
[ -f "$OUT_DIR/gpu-check.md" ] && cat "$OUT_DIR/gpu-check.md"
exit $status
