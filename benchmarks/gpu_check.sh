#!/usr/bin/env bash
# What one GPU says about the seed's setup, in under 10 minutes on one H100 or H200:
#   1. the three models' training-step throughput at the seed's size (batch 32 and 256,
#      float32 and bfloat16), from `python -m benchmarks.perf.model_speed`;
#   2. a shortened seed-style comparison, fixed against gradvar, gns and stationarity at full size
#      on the offline stand-ins, 1 seed, 3 epochs (`benchmarks/suites/gpu_check.toml`), then its
#      report.
# Each part runs under its own time limit (`timeout`, which signals the part's whole process
# group), so that a call limited to 10 minutes returns with whatever finished: a comparison cut
# short still gets the report of its finished runs.
#
# Usage, from the repository root:
#   GRADVAR_DATA_DIR=DIR bash benchmarks/gpu_check.sh [OUT]       (default OUT: gpu_check_out)
#   bash benchmarks/gpu_check.sh --rehearse OUT
#
# --rehearse runs the same steps on the CPU with the tiny presets and a few steps (under 3 minutes
# on 2 cores; `make test` runs it): the missing-module path (its message; the wheels' install when
# GPU_WHEELS is given and this is Python 3.12), model_speed on the three models, the comparison of
# the same strategies on the suite's first task, and its report. It writes OUT/models.json and
# OUT/compare/REPORT.md, and fails if any part fails or overruns its limit.
#
# The machine needs jax (with its GPU plugin), flax, optax and orbax-checkpoint. The suite's other
# modules (grain and its array_record, tokenizers, tensorboardX, ...) can be carried in as wheels
# when it has no network: `make gpu-wheels` downloads cp312 wheels (about 32 MB) into
# dist/gpu-wheels; pass that folder as GPU_WHEELS=dist/gpu-wheels. They are installed into
# OUT/site for this script only.
set -euo pipefail

REHEARSE=0
if [ "${1:-}" = "--rehearse" ]; then
  REHEARSE=1
  shift
  [ -n "${1:-}" ] || { echo "gpu_check: --rehearse needs an output folder" >&2; exit 2; }
fi
OUT=${1:-gpu_check_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# Seconds each part may take on the GPU: 9 minutes in all, under a 10-minute call (each part has
# 20 s more to stop after its SIGTERM). The rehearsal's own limits (4 minutes in all) bound its
# 2 CPU-minutes of work on 2 cores.
GPU_LIMITS=(60 210 240 30)
if [ "$REHEARSE" = 1 ]; then
  export JAX_PLATFORMS=cpu
  # GPU_CHECK_LIMITS="S0 S1 S2 S3" overrides them (a busy machine).
  read -r -a LIMITS <<< "${GPU_CHECK_LIMITS:-30 75 105 30}"
  SPEED_ARGS=(--sizes tiny --batch-sizes 8 --dtype float32 --steps 2 --warmup 1)
  MODE="rehearsal on the CPU: the same steps with tiny presets and a few steps"
else
  LIMITS=("${GPU_LIMITS[@]}")
  SPEED_ARGS=(--sizes full --batch-sizes 32,256 --dtype float32,bfloat16 --steps 20 --warmup 3)
  MODE="one GPU"
fi
# Before anything slow: what runs, and how long each part may take on one H100 or H200. No GPU
# has run it yet, so these are the budgets that the limits enforce, not measured times.
cat <<PLAN
gpu_check: $MODE; output in $OUT
gpu_check: the parts, with the time each may take on one H100/H200 (a budget that its limit
  enforces; not measured on a GPU yet) and its limit in this run:
  0. modules and devices                                       GPU ${GPU_LIMITS[0]} s, here ${LIMITS[0]} s
  1. model_speed: bert, resnet, lstm_attention at full size, batch 32 and 256, float32 and
     bfloat16 (12 processes, 3 + 20 steps each)                GPU ${GPU_LIMITS[1]} s, here ${LIMITS[1]} s
  2. compare: fixed, gradvar, gns, stationarity on 3 stand-in tasks, full size, 3 epochs of
     8,000 examples (12 runs; cut short at its limit, the finished runs keep their records)
                                                               GPU ${GPU_LIMITS[2]} s, here ${LIMITS[2]} s
  3. the report of the comparison's finished runs              GPU ${GPU_LIMITS[3]} s, here ${LIMITS[3]} s
PLAN

FAILED=0
# part NAME LIMIT CMD...: runs CMD under LIMIT seconds, says how it ended, and goes on either way.
part() {
  local name=$1 limit=$2 t0=$SECONDS rc=0
  shift 2
  timeout -k 20 "$limit" "$@" || rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "gpu_check: $name stopped at its limit of $limit s" >&2
  elif [ "$rc" != 0 ]; then
    echo "gpu_check: $name failed (exit $rc) after $((SECONDS - t0)) s" >&2
  else
    echo "gpu_check: $name done in $((SECONDS - t0)) s"
  fi
  if [ "$rc" != 0 ]; then FAILED=$((FAILED + 1)); fi
}

MODULES=(grain array_record cloudpickle portpicker tokenizers tensorboardX tomli_w tqdm matplotlib
         scipy)
missing_modules() {
  "$PY" -c 'import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' "$@"
}
# provide MODULES: installs the wheels of $GPU_WHEELS into OUT/site, or says what to do (exit 2).
provide() {
  if [ -z "${GPU_WHEELS:-}" ]; then
    echo "gpu_check: missing Python modules: $1" >&2
    echo "gpu_check: run 'make gpu-wheels' where there is network and pass GPU_WHEELS=dist/gpu-wheels" >&2
    return 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --target "$OUT/site" "$GPU_WHEELS"/*.whl
  export PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
}

missing=$(missing_modules "${MODULES[@]}")
if [ "$REHEARSE" = 1 ]; then
  # The missing-module path, as far as this machine allows: its message for a module that no
  # machine has, and the wheels' install where they fit this Python (cp312).
  rc=0
  (unset GPU_WHEELS; provide "gpu_check_no_such_module") 2>"$OUT/missing_message.txt" || rc=$?
  if [ "$rc" != 2 ] || ! grep -q "make gpu-wheels" "$OUT/missing_message.txt"; then
    echo "gpu_check: the missing-module path did not stop with its message" >&2
    exit 1
  fi
  if [ -z "${GPU_WHEELS:-}" ]; then
    echo "gpu_check: missing-module path: its message checked; no GPU_WHEELS, so no install"
  elif "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    provide "(rehearsal)"
    echo "gpu_check: missing-module path: the wheels of $GPU_WHEELS installed into $OUT/site"
  else
    echo "gpu_check: missing-module path: the cp312 wheels do not fit $("$PY" -V); not installed"
  fi
fi
if [ -n "$missing" ]; then
  provide "$missing"
fi
part "0. devices" "${LIMITS[0]}" "$PY" -c 'import jax; print("gpu_check: devices", jax.devices())'

SUITE=gpu_check
if [ "$REHEARSE" = 1 ]; then
  # The same suite and strategies, shrunk: its first task, the tiny preset, 3 steps of one epoch.
  SUITE="$OUT/gpu_check_rehearsal.toml"
  "$PY" - "$SUITE" <<'PYEOF'
import pathlib, sys, tomllib
import tomli_w
suite = tomllib.loads(pathlib.Path("benchmarks/suites/gpu_check.toml").read_text())
suite.update(name="gpu_check_rehearsal", epochs=1)
suite["defaults"].update(model_size="tiny", batch_size=16, eval_examples=32)
first = next(iter(suite["tasks"]))
suite["tasks"] = {first: {**suite["tasks"][first], "train_examples": 48}}
pathlib.Path(sys.argv[1]).write_text(tomli_w.dumps(suite))
PYEOF
fi

echo "gpu_check: 1/3 model throughput"
part "1. model_speed" "${LIMITS[1]}" "$PY" -m benchmarks.perf.model_speed \
  --models bert,resnet,lstm_attention "${SPEED_ARGS[@]}" --out "$OUT/models.json"
echo "gpu_check: 2/3 fixed against gradvar, gns and stationarity on the stand-ins"
part "2. compare" "${LIMITS[2]}" "$PY" -m benchmarks compare --suite "$SUITE" \
  --out "$OUT/compare" --no-report --no-progress
echo "gpu_check: 3/3 the comparison's report"
part "3. report" "${LIMITS[3]}" "$PY" -m benchmarks report "$OUT/compare"
echo "gpu_check: results in $OUT/models.json and $OUT/compare/REPORT.md" \
     "($FAILED parts failed or were cut short)"
if [ "$REHEARSE" = 1 ] && [ "$FAILED" != 0 ]; then
  exit 1
fi
