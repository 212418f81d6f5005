#!/usr/bin/env bash
# One device call: install, time the pack kernel, run every GPU test. Usage: OUT=dir bash bench/gpu_check.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
python -m pip install -q -e . --no-deps --no-build-isolation 2>&1 | grep -v WARNING
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
python bench/pack.py --out "$OUT"
python -m pytest -q -m gpu tests --ignore=tests/backends/test_triton_small.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
python -m pytest -q tests/backends/test_triton_small.py -p no:cacheprovider 2>&1 | tee -a "$OUT/gpu_tests.log" | tail -5
