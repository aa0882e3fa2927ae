#!/usr/bin/env bash
# What one GPU says about the seed's setup, in under 8 minutes on one H200:
#   1. the three models' training-step throughput at the seed's size (batch 32 and 256,
#      float32 and bfloat16), from `python -m benchmarks.perf.model_speed`;
#   2. a shortened seed-style comparison, fixed against gradvar and gns at full size on the offline
#      stand-ins, 1 seed, 3 epochs (`benchmarks/suites/gpu_check.toml`).
#
# Usage, from the repository root:
#   GRADVAR_DATA_DIR=DIR bash benchmarks/gpu_check.sh [OUT]       (default OUT: gpu_check_out)
#
# The machine needs jax (with its GPU plugin), flax, optax and orbax-checkpoint. The suite's other
# modules (grain and its array_record, tokenizers, tensorboardX, ...) can be carried in as wheels
# when it has no network: `make gpu-wheels` downloads cp312 wheels (about 32 MB) into
# dist/gpu-wheels; pass that folder as GPU_WHEELS=dist/gpu-wheels. They are installed into
# OUT/site for this script only.
set -euo pipefail

OUT=${1:-gpu_check_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"

missing=$("$PY" - <<'PYEOF'
import importlib.util
mods = ("grain", "array_record", "cloudpickle", "portpicker", "tokenizers", "tensorboardX",
        "tomli_w", "tqdm", "matplotlib", "scipy")
print(" ".join(m for m in mods if importlib.util.find_spec(m) is None))
PYEOF
)
if [ -n "$missing" ]; then
  if [ -z "${GPU_WHEELS:-}" ]; then
    echo "gpu_check: missing Python modules: $missing" >&2
    echo "gpu_check: run 'make gpu-wheels' where there is network and pass GPU_WHEELS=dist/gpu-wheels" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --target "$OUT/site" "$GPU_WHEELS"/*.whl
  export PYTHONPATH="$PWD/$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
fi

"$PY" -c 'import jax; print("gpu_check: devices", jax.devices())'
echo "gpu_check: 1/2 model throughput at the seed's size"
timeout 230 "$PY" -m benchmarks.perf.model_speed --models bert,resnet,lstm_attention --sizes full \
  --batch-sizes 32,256 --dtype float32,bfloat16 --steps 20 --warmup 3 --out "$OUT/models.json"
echo "gpu_check: 2/2 fixed against gradvar and gns at full size on the stand-ins (3 epochs)"
timeout 230 "$PY" -m benchmarks compare --suite gpu_check --out "$OUT/compare"
echo "gpu_check: results in $OUT/models.json and $OUT/compare/REPORT.md"
