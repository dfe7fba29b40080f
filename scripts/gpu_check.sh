#!/usr/bin/env bash
# GPU check of the Fig. 2 experiment (Sec. 5.2) and of the layers, on one CUDA device.
#
#   bash scripts/gpu_check.sh            # from the repository root; about 2-3 minutes on an H100
#   LAYERS=1 bash scripts/gpu_check.sh   # also the layer benchmark on cuda
#
# Runs, each under its own time limit, printing wall times:
#   0. the core API on CUDA tensors (objectives, optimum, k-support prox: same kind out)
#   1. benchmarks/bench_layers.py --device cuda     (only with LAYERS=1)
#   2. benchmarks/bench_deep.py --device cuda       (step time with / without the dropout)
#   3. the digits Fig. 2 run on cuda with bfloat16 autocast (40 epochs)
#   4. a synthetic32 Fig. 2 run on cuda: 5 000 random 32x32 images, batch 256, 3 epochs
# Outputs (logs, fig2*.png, fig2*.json, times.txt) go to $OUT if set, else results/gpu_check.
# Needs a Python with torch (CUDA), torchvision, numpy, scipy and scikit-learn; matplotlib,
# tqdm and numba are optional here (figures are skipped without matplotlib). No network.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEST=${OUT:-results/gpu_check}
mkdir -p "$DEST"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$WORK:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
failures=0

# Stand-ins for optional modules missing on a bare machine (progress bars are off anyway).
if ! "$PY" -c "import tqdm" 2>/dev/null; then
  mkdir -p "$WORK/tqdm"
  cat > "$WORK/tqdm/__init__.py" <<'PYEOF'
class tqdm:  # minimal stand-in: no output
    def __init__(self, iterable=None, *args, **kwargs):
        self.iterable = iterable
    def __iter__(self):
        return iter(self.iterable)
    def update(self, *args, **kwargs): pass
    def set_postfix(self, *args, **kwargs): pass
    def close(self): pass
    def __enter__(self): return self
    def __exit__(self, *args): pass
PYEOF
  echo "from tqdm import tqdm" > "$WORK/tqdm/auto.py"
fi

# The Fig. 2 entry point without the package's other experiments (which need numba), and
# without figures when matplotlib is missing.
cat > "$WORK/fig2_run.py" <<'PYEOF'
import importlib.util, pathlib, sys, types
import structdrop
package = types.ModuleType("structdrop.experiments")
package.__path__ = [str(pathlib.Path(structdrop.__file__).parent / "experiments")]
sys.modules["structdrop.experiments"] = package
from structdrop.experiments import deep
if importlib.util.find_spec("matplotlib") is None:
    print("matplotlib missing: figure skipped")
    deep.plot_fig2 = lambda data, path: None
sys.exit(deep.main(sys.argv[1:]))
PYEOF

run() {  # run NAME LIMIT_S COMMAND...: log to $DEST/NAME.log, record the wall time
  local name=$1 limit=$2
  shift 2
  local start end rc=0
  start=$(date +%s%N)
  timeout "$limit" "$@" > "$DEST/$name.log" 2>&1 || rc=$?
  end=$(date +%s%N)
  tail -n 25 "$DEST/$name.log"
  local line
  local ms=$(((end - start) / 1000000))
  line=$(printf '%-12s %6d.%01d s  exit %d' "$name" $((ms / 1000)) $((ms % 1000 / 100)) "$rc")
  echo "== $line"
  echo "$line" >> "$DEST/times.txt"
  if [ "$rc" -ne 0 ]; then failures=$((failures + 1)); fi
}

: > "$DEST/times.txt"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee "$DEST/device.txt"

cat > "$WORK/core_cuda.py" <<'PYEOF'
import numpy as np, torch
import structdrop as sd
g = torch.Generator().manual_seed(0)
X, Y = torch.randn(20, 200, generator=g, dtype=torch.float64), torch.randn(8, 200, generator=g, dtype=torch.float64)
U, V = torch.randn(8, 10, generator=g, dtype=torch.float64), torch.randn(20, 10, generator=g, dtype=torch.float64)
for scheme in (sd.Bernoulli(0.3), sd.GridBlock(0.5, 5), sd.SlidingBlock(0.3, 3), sd.DropConnect(0.4)):
    cpu = sd.expected_loss(Y, U, V, X, scheme)
    Uc = U.cuda().requires_grad_()
    gpu = sd.expected_loss(Y.cuda(), Uc, V.cuda(), X.cuda(), scheme)
    gpu.backward()
    assert gpu.device.type == "cuda" and Uc.grad is not None
    assert abs(float(gpu) - float(cpu)) <= 1e-10 * abs(float(cpu)), (scheme, float(gpu), float(cpu))
opt_cpu = sd.global_minimum(X, Y, sd.GridBlock(0.5, 5), 10)
opt_gpu = sd.global_minimum(X.cuda(), Y.cuda(), sd.GridBlock(0.5, 5), 10)
assert opt_gpu.prediction.device.type == "cuda" and abs(opt_gpu.value - opt_cpu.value) <= 1e-9 * opt_cpu.value
x = sd.prox_spectral_ksupport_sq(Y.cuda().float(), 1.0, 2)
assert x.device.type == "cuda" and x.dtype == torch.float32
print("core API on CUDA tensors: OK (values equal CPU to 1e-10)")
PYEOF
run core_cuda 40 "$PY" "$WORK/core_cuda.py"
if [ "${LAYERS:-0}" = 1 ] && [ -f benchmarks/bench_layers.py ]; then
  run bench_layers 120 "$PY" benchmarks/bench_layers.py --device cuda
fi
run bench_deep 40 "$PY" benchmarks/bench_deep.py --device cuda --batch-size 256 --image-size 32
run digits 60 "$PY" "$WORK/fig2_run.py" --dataset digits --device cuda --epochs 40 \
  --out "$DEST" --force --no-progress
run synthetic32 50 "$PY" "$WORK/fig2_run.py" --dataset synthetic32 --device cuda \
  --train-size 5000 --batch-size 256 --epochs 3 --out "$DEST" --force --no-progress

echo "times (also in $DEST/times.txt):"
cat "$DEST/times.txt"
for name in fig2 fig2_synthetic32; do
  if [ -f "$DEST/$name.json" ]; then
    "$PY" -c "import json, sys; d = json.load(open(sys.argv[1])); \
t = json.load(open(sys.argv[2]))[sys.argv[3]]; \
print(sys.argv[1], 'train', round(t['train_seconds'], 1), 's,', \
round(t['images_per_second'] or 0), 'images/s, gap', d['gap'])" \
      "$DEST/$name.json" "$DEST/timings.json" "$name"
  fi
done
exit "$failures"
