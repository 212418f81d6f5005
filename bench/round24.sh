#!/usr/bin/env bash
# Twenty-fourth round, first device call: build the warpgroup extension alone, its GPU tests, the persistent grid
# against the tuned plain grid (bench/persistent_grid.py), then `sparse-llm tune` of the small-M buckets one shape per
# process into $OUT/tc (a timeout keeps what finished). Usage: OUT=dir bash bench/round24.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
start=$(date +%s)
SPARSE_LLM_BUILD_EXTENSIONS=0 python -m pip install -q -e . --no-deps --no-build-isolation 2>&1 | grep -v WARNING
SPARSE_LLM_BUILD_ONLY=_wgmma python setup.py build_ext --inplace > "$OUT/build.log" 2>&1
echo "build: $(( $(date +%s) - start )) s"; tail -2 "$OUT/build.log"
mkdir -p "$OUT/so" && cp sparse_llm/_wgmma*.so "$OUT/so/"
python -m pytest -q -m gpu tests/backends/test_gpu_backends.py -k "wgmma" -p no:cacheprovider -n 4 2>&1 \
  | tee "$OUT/gpu_tests_wgmma.log" | tail -4
echo "tests: $(( $(date +%s) - start )) s"
python bench/persistent_grid.py --out "$OUT" 2>&1 | tee "$OUT/persistent_grid.log" | tail -36
echo "bench: $(( $(date +%s) - start )) s"
for s in 28672x8192 11008x4096 14336x4096 8192x8192 4096x14336 4096x11008 4096x4096 8192x28672 1024x4096 1024x8192; do
  SPARSE_LLM_CACHE="$OUT/tc" sparse-llm tune --shapes "$s" --ms 1 2 4 8 16 32 64 > /dev/null 2>> "$OUT/tune.err"
  echo "tuned $s: $(( $(date +%s) - start )) s"
done
