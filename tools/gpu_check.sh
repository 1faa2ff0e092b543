#!/usr/bin/env bash
# Issue 18's GPU check in one go, for a session lent a GPU: run through the device tool from the repo root, after
# tools/gpu_wheels.sh here, with `.whl` carried:  bash tools/gpu_check.sh [tests|bench|all]   (default all)
# Installs the carried wheels beside the image's torch (as the developers' guide describes), then `make test-cuda`'s
# steps, the demo and every bench, each log under $OUT (the tool brings back at most 8 files: these are 5 or 6).
# Budget: a lease has 15 minutes of device time and 10 per command; `tests` and `bench` fit one command each:
#   run(command="bash tools/gpu_check.sh tests", carry=[".whl"], timeout_s=600), then the same with `bench`.
# Then: the tables of $OUT/BENCHMARKS.md into BENCHMARKS.md, and a note of what failed in test_cuda.log.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}; OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH MPLBACKEND=agg
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/machine.txt" 2>&1
python3 -c "import torch, fastai, timm; print('torch', torch.__version__, 'fastai', fastai.__version__)" \
  >> "$OUT/machine.txt" 2>&1
status=0
if [ "$what" != bench ]; then
  # make test-cuda without make's venv: every notebook (4 at once: 16 cores there), then pytest on 4 workers
  NB_WORKERS=4 PYTHON=python3 timeout 450 tools/test_cuda.sh -n 4 -rfEs > "$OUT/test_cuda.log" 2>&1 || status=1
  tail -5 "$OUT/test_cuda.log"
  timeout 90 python3 -m compkit.demo --out /tmp/demo_out > "$OUT/demo.log" 2>&1 || status=1
  tail -3 "$OUT/demo.log"
fi
if [ "$what" != tests ]; then
  # every bench/*.py once, into a BENCHMARKS.md with the GPU tables (copy it over the repo's if the numbers are sound)
  timeout 540 python3 tools/bench_report.py --out "$OUT/BENCHMARKS.md" > "$OUT/bench.log" 2>&1 || status=1
  tail -5 "$OUT/bench.log"
fi
echo "gpu_check $what: status $status (logs in $OUT)"; exit $status
