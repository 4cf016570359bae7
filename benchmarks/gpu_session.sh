#!/usr/bin/env bash
# The GPU checks of issue 6 in one call, for a session that is lent a GPU machine (its image has
# python3 with torch, triton and pytest; nothing can be installed there). Run from the repository
# root; logs and the CSV go to $OUT (or ./gpu-out). About 8 minutes on one H100:
#
#   1. the triton and flex backends' tests on CUDA (outputs and q/k/v gradients against the
#      float64 reference; bf16/fp16 under the FlashAttention rule);
#   2. benchmarks/fast_ea.py --device cuda: SDPA (flash), triton, flex, chunked, linear and, if
#      installed, flash-linear-attention, bf16, D = 64 and 128, causal and not.
#
# Each stage has its own time limit, so a hang in one still returns the others' logs.
set -uo pipefail
out="${OUT:-gpu-out}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'EOF' 2>&1 | tee "$out/env.txt"
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
EOF
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_triton_backend.py tests/test_flex_backend.py \
    -x -n 4 2>&1 | tee "$out/tests.txt"
timeout 300 python3 benchmarks/fast_ea.py --device cuda --lengths 1024 4096 16384 --dims 64 128 \
    --csv "$out/fast_ea_gpu.csv" 2>&1 | tee "$out/fast_ea_gpu.txt"
