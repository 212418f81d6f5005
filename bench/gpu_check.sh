#!/usr/bin/env bash
# One device call: install (the build's seconds into $OUT/build_seconds.txt), time the pack kernel, run every GPU
# test; the built extensions are copied to $OUT/so. Usage: OUT=dir bash bench/gpu_check.sh   (GPU_TEST_WORKERS=n runs the tests in n processes, pytest-xdist)
set -uo pipefail
export PYTHONUNBUFFERED=1
start=$(date +%s)
python -m pip install -q -e . --no-deps --no-build-isolation 2>&1 | grep -v WARNING
echo "$(( $(date +%s) - start ))" | tee "$OUT/build_seconds.txt"
mkdir -p "$OUT/so" && cp sparse_llm/_*.so "$OUT/so/" 2>/dev/null  # a later call can carry them and skip the build
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
python bench/pack.py --out "$OUT"
workers=()
if [ "${GPU_TEST_WORKERS:-1}" -gt 1 ]; then workers=(-n "$GPU_TEST_WORKERS"); fi
python -m pytest -v -m gpu tests --ignore=tests/backends/test_triton_small.py -p no:cacheprovider "${workers[@]}" 2>&1 \
  | tee "$OUT/gpu_tests.log" | tail -15
python -m pytest -q tests/backends/test_triton_small.py -p no:cacheprovider "${workers[@]}" 2>&1 \
  | tee -a "$OUT/gpu_tests.log" | tail -5
echo "gpu_check: $(( $(date +%s) - start )) s"
