#!/usr/bin/env bash
# One device call of at most LIMIT_S seconds (default 570): build the three extensions in place (in parallel, one
# after the other if that fails), bench/tile_stream.py (at most TILE_STREAM_S seconds, default 150; 0 skips it),
# retune RETUNE_SHAPES of TABLE (default: the committed table of the GPU's name; bench/retune.py, which weighs the
# stream unless RETUNE_ARGS=--no-weigh-stream; no new shape after RETUNE_UNTIL_S seconds, default 330), the whole
# Llama-3-8B body with that table (bench/model_forward.py --tables, at most FORWARD_S seconds, default 0: skipped),
# then the layer grid with the retuned table (bench/layers.py) in the time left (GRID=0 skips it).
# Before the rest, if asked: TESTS_S > 0 runs the GPU test suite (4 workers, at most TESTS_S seconds, log in
# $OUT/gpu_tests.log); VARIANTS="base rot_rows ..." compiles those build-time variants of the warpgroup kernel beside
# the extensions and times them (bench/wgmma_variants.py, at most VARIANTS_S seconds, default 200) on VARIANT_SHAPES
# at VARIANT_MS (defaults: 1024x4096 1024x8192 4096x4096 at M = 512 1024) after the tests.
# Usage: OUT=dir SPARSE_LLM_GIT_SHA=sha RETUNE_SHAPES="4096x4096 ..." bash bench/device_round.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
limit=${LIMIT_S:-570}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv
# TABLE unset: the committed table of the GPU at hand (a call may come on an H100 or an H200)
case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
  *H200*) table=${TABLE:-bench/results/h200/crossover_h200.json} ;;
  *) table=${TABLE:-bench/results/crossover_h100.json} ;;
esac
echo "table: $table"
SPARSE_LLM_BUILD_EXTENSIONS=0 python -m pip install -q -e . --no-deps --no-build-isolation 2>&1 | grep -v WARNING
variants_pid=
if [ -n "${VARIANTS:-}" ]; then
  # shellcheck disable=SC2086
  (python bench/wgmma_variants.py --out "$OUT/wv" --variants $VARIANTS --build-only >"$OUT/wv_build.log" 2>&1) &
  variants_pid=$!
fi
exts=(_cusparselt _mma _wgmma)
pids=()
for e in "${exts[@]}"; do
  (SPARSE_LLM_BUILD_ONLY=$e python setup.py -q build_ext --inplace >"$OUT/build$e.log" 2>&1) &
  pids+=($!)
done
built=1
for p in "${pids[@]}"; do wait "$p" || built=0; done
if [ "$built" -eq 0 ]; then
  echo "parallel build failed (logs in \$OUT/build_*.log): building one after the other"
  for e in "${exts[@]}"; do SPARSE_LLM_BUILD_ONLY=$e python setup.py -q build_ext --inplace || exit 1; done
fi
echo "build: $(elapsed) s"
if [ -n "$variants_pid" ]; then
  wait "$variants_pid" || echo "variant build failed (\$OUT/wv_build.log)"
  echo "variant build: $(elapsed) s"
fi
if [ "${TESTS_S:-0}" -gt 0 ]; then
  timeout "$TESTS_S" python -m pytest -m gpu -q -n 4 -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -5
  echo "gpu tests: $(elapsed) s"
fi
if [ -n "$variants_pid" ]; then
  # shellcheck disable=SC2086
  timeout "${VARIANTS_S:-200}" python bench/wgmma_variants.py --out "$OUT/wv" --variants $VARIANTS \
    --ms ${VARIANT_MS:-512 1024} --shapes ${VARIANT_SHAPES:-1024x4096 1024x8192 4096x4096} 2>&1 |
    grep -v Warn | tail -12
  echo "variants: $(elapsed) s"
fi
if [ "${TILE_STREAM_S:-150}" -gt 0 ]; then
  timeout "${TILE_STREAM_S:-150}" python bench/tile_stream.py --out "$OUT/ts" 2>&1 | tail -8
  echo "tile_stream: $(elapsed) s"
fi
if [ -n "${RETUNE_SHAPES:-}" ]; then
  # shellcheck disable=SC2086
  python bench/retune.py --out "$OUT/rt" --table "$table" --shapes $RETUNE_SHAPES ${RETUNE_ARGS:-} \
    --deadline-s $(( ${RETUNE_UNTIL_S:-330} - $(elapsed) )) 2>&1 | tail -12
  if [ -f "$OUT/rt/crossover.json" ]; then table="$OUT/rt/crossover.json"; fi
  echo "retune: $(elapsed) s (grid table: $table)"
fi
if [ "${FORWARD_S:-0}" -gt 0 ]; then
  timeout "${FORWARD_S}" python bench/model_forward.py --out "$OUT/mf" --tables "$table" --rounds 2 2>&1 | tail -8
  echo "model_forward: $(elapsed) s"
fi
if [ "${GRID:-1}" -ne 0 ]; then
  timeout $(( limit - $(elapsed) )) python bench/layers.py --tables "$table" --out "$OUT/g" 2>&1 | tail -30
fi
echo "device_round: $(elapsed) s"
