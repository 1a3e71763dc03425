#!/usr/bin/env bash
# GPU checks for audiocnn, one call on a CUDA machine, under 8 minutes:
#   1. the learning checks (tests/models/test_learning.py) on cuda under fp16 with a gradient
#      scaler, bf16, bf16 + channels-last, and bf16 + torch.compile;
#   2. the training-throughput benchmark (benchmarks/train.py, AMP rows included);
#   3. the tagging benchmark (benchmarks/tag.py --quick) when musicnn's weights are there.
# Usage (repo root): bash benchmarks/gpu_check.sh [OUT_DIR]
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3); the
# checkout is put on PYTHONPATH so no install is needed on a machine without a registry.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/audiocnn-gpu-check}}
mkdir -p "$OUT"
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

"$PY" - <<'PY' || { echo "CUDA or a dependency is missing; nothing to check" >&2; exit 2; }
import importlib, sys
missing = [m for m in ("torch", "numpy", "soundfile", "soxr", "sklearn", "typer", "rich", "yaml", "safetensors",
                       "matplotlib", "pytest") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)}")
import torch
if not torch.cuda.is_available():
    sys.exit("torch.cuda.is_available() is False")
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"

status=0
for variant in "amp=fp16" "amp=bf16" "amp=bf16 channels_last=true" "amp=bf16 compile=true"; do
  log "learning checks on cuda: $variant"
  start=$SECONDS
  AUDIOCNN_LEARNING_DEVICE=cuda AUDIOCNN_LEARNING_SET="$variant" \
    timeout 100 "$PY" -m pytest -q -p no:cacheprovider tests/models/test_learning.py -k test_model_learns_timbre \
    2>&1 | tee "$OUT/learning-${variant// /_}.log" | tail -3 | tee -a "$OUT/summary.txt"
  rc=${PIPESTATUS[0]}
  log "  exit $rc in $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || status=1
done

log "training throughput (benchmarks/train.py --device cuda)"
timeout 90 "$PY" benchmarks/train.py --device cuda --steps 20 --clips 64 --workers 0,4 2>&1 | tee -a "$OUT/summary.txt" || status=1

if "$PY" -c "import musicnn" 2>/dev/null; then
  log "tagging (benchmarks/tag.py --quick)"
  timeout 90 "$PY" benchmarks/tag.py --quick --repeat 1 2>&1 | tee -a "$OUT/summary.txt" || status=1
else
  log "tagging benchmark skipped: the musicnn package (its weights) is not installed"
fi
log "done, exit $status; logs in $OUT"
exit $status
