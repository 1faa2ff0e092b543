#!/usr/bin/env bash
# `make test-cuda` (issue 18): every notebook and the whole pytest suite with the default device on the GPU
# (COMPKIT_DEVICE=cuda), the GPU-only tests (marked `cuda`) included: where CUDA is missing this fails, it never skips.
# PYTHON: the interpreter that holds compkit's requirements (make passes its venv's, tools/gpu_check.sh the GPU's).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"make test-cuda needs a CUDA GPU, and torch {torch.__version__} (built for CUDA {torch.version.cuda}) "
             "sees none: torch.cuda.is_available() is False. On a machine without one, run `make test`.")
print(f"test-cuda on {torch.cuda.get_device_name()} (torch {torch.__version__})")
PY
# cuBLAS is deterministic only with a fixed workspace set before its first use (tests that compare two fits need it)
export COMPKIT_DEVICE=cuda OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
# TF32 (cuDNN's default for fp32 convolutions) rounds to 10 bits: passes of different batch sizes (tta10's chunks) then
# differ by ~3e-5, more than the tests' fp32 tolerances; cuBLAS and cuDNN read this switch in every process
export NVIDIA_TF32_OVERRIDE=0
status=0
"$PYTHON" -m nbdev.test --n_workers "${NB_WORKERS:-2}" || status=1
"$PYTHON" -m pytest -p no:cacheprovider "$@" || status=1
exit $status
