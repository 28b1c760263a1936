#!/usr/bin/env bash
# One call on a lent GPU machine: the GPU tests, the kernel tests on the GPU, then the benchmark suite.
# SUITE_ARGS selects part of the suite (a call has a 10-minute limit), e.g. SUITE_ARGS="--configs base".
# The machine's Python already has torch and Triton; the package is put on the path, not installed.
# Results go to bench/results/<device>/ and, when $OUT is set (the device tool), to $OUT as well.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
slug=$($PY -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-').lower())")
dest="bench/results/$slug"
mkdir -p "$dest"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.limit --format=csv | tee "$dest/nvidia-smi.csv"
$PY -m pip install --quiet --no-deps pytest safetensors matplotlib pytest-benchmark 2>/dev/null || true
$PY -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_attention.py tests/test_temporal_attention.py \
    tests/test_linear.py tests/test_patch_embed.py tests/test_triton_backend.py tests/test_triton_fast_path.py \
    tests/test_cuda_graphs.py 2>&1 | tail -40 | tee "$dest/gpu_tests.txt"
$PY -m bench --out "$dest" ${SUITE_ARGS:-} 2>&1 | tee "$dest/suite.txt"
if [ -n "${OUT:-}" ]; then cp -r "$dest" "$OUT/"; fi
