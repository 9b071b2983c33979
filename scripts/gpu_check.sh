#!/usr/bin/env bash
# The GPU check: one command for a machine with a CUDA GPU, at most about 14 minutes (each part has its own timeout: 4, 4 and 6 minutes).
#
#   bash scripts/gpu_check.sh [OUT_DIR]
#
# 1. builds the Cauchy extension with its CUDA half (ssmkit doctor --build, SSMKIT_CAUCHY_CUDA=1 when a GPU
#    is present) into the user cache, and prints `ssmkit doctor`;
# 2. runs the GPU-marked tests: CUDA extension against the CPU half and torch, the mixer contract on CUDA (every
#    registered mixer, the issue-25 ones included), Mamba/Mamba-2 and their scans on CUDA, bf16/fp16 training steps,
#    memory and compile (tests that need no GPU are deselected by -k where possible);
# 3. times the Cauchy backends (extension, pykeops, torch, chunked) at N=64, L=16K, one S4D sCIFAR-shaped
#    training step in fp32/bf16/fp16, each mixer of s4d, mamba, mamba2, hyena, gla, gated_deltanet, rglru at
#    B=8, H=128, L=4096 forward+backward (ms, memory, ratio to s4d) and its step at batch 1, plus 2-GPU DDP when
#    two GPUs exist: one table (scripts/gpu_check.py).
# Without a GPU it runs the parts a CPU can (the C++ build, the CPU rows at smaller sizes) and says plainly
# that no GPU was found. Python: $PYTHON, else .venv/bin/python, else python3 (ssmkit need not be installed:
# the checkout is put on PYTHONPATH). OUT_DIR (default gpu-check/) receives the logs and gpu_check.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-gpu-check}"
mkdir -p "$OUT_DIR"
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0

if "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  GPU=1; export SSMKIT_CAUCHY_CUDA=1
  "$PYTHON" -c 'import torch; print(f"GPU: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")'
else
  GPU=0; export SSMKIT_CAUCHY_CUDA=0
  echo "No CUDA GPU found (torch.cuda.is_available() is False): running the CPU parts only."
fi

echo "== 1. extension build (ssmkit doctor --build)"
COLUMNS=200 timeout 240 "$PYTHON" -m ssmkit doctor --build 2>&1 | tee "$OUT_DIR/doctor.log" || status=1

echo "== 2. GPU tests"
if [ "$GPU" = 1 ]; then
  if "$PYTHON" -c 'import pytest' 2>/dev/null; then
    timeout 240 "$PYTHON" -m pytest -q -x -p no:cacheprovider \
      tests/ops/test_extension.py tests/ops/test_cauchy.py tests/mixers/test_contract.py \
      tests/mixers/test_mamba.py tests/mixers/test_mamba2.py tests/ops/test_selective_scan.py tests/ops/test_ssd.py \
      tests/ops/test_linear_attention.py tests/train/test_precision.py tests/train/test_memory_and_compile.py 2>&1 | tee "$OUT_DIR/pytest.log" || status=1
  else
    echo "pytest is not installed for $PYTHON: GPU tests not run (pip install pytest)"; status=1
  fi
else
  echo "skipped: no GPU (these tests skip themselves without one)"
fi

echo "== 3. timings"
timeout 360 "$PYTHON" scripts/gpu_check.py --out "$OUT_DIR/gpu_check.json" 2>&1 | tee "$OUT_DIR/table.log" || status=1
if [ "$GPU" = 0 ]; then echo "No GPU was found: the table above holds CPU numbers only."; fi
exit $status
