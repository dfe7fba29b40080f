#!/usr/bin/env bash
# GPU check of the layers and of the Fig. 2 experiment (Sec. 5.2), on one CUDA device.
#
#   bash scripts/gpu_check.sh            # layers: CUDA tests + the GPU layer table, <= 5 minutes
#   bash scripts/gpu_check.sh fig2       # the Fig. 2 runs below (about 2-3 minutes on an H100)
#   bash scripts/gpu_check.sh all        # both
#
# layers (each under its own time limit, printing wall times):
#   1. the CUDA-only tests of tests/test_nn_compile.py: every layer's forward + backward without
#      a host sync (torch.cuda.set_sync_debug_mode("error")), capture and replay in a
#      torch.cuda.CUDAGraph (not DropBlock: its seed comes from the host),
#      torch.compile(mode="reduce-overhead"), the dense sampler's law;
#      with pytest when it imports (--noconftest: no Hypothesis needed), else a small runner
#   2. benchmarks/bench_layers.py --device cuda: forward + backward, float32 and bfloat16,
#      (32, 256, 14, 14), (32, 64, 56, 56), (128, 256, 28, 28), block 7, p = 0.1, ours against
#      torchvision, timm and F.dropout, eager and compiled; every goal printed with ok / miss
#      (COMPILED=all also compiles at every shape, about a minute more)
#   3. benchmarks/bench_models.py --device cuda: a training step of timm's and torchvision's
#      ResNets with DropBlock, converted against original, eager and compiled (ratios, goals)
# fig2:
#   0. the core API on CUDA tensors (objectives, optimum, k-support prox: same kind out)
#   1. benchmarks/bench_deep.py --device cuda       (step time with / without the dropout)
#   2. the digits Fig. 2 run on cuda with bfloat16 autocast (40 epochs)
#   3. a synthetic32 Fig. 2 run on cuda: 5 000 random 32x32 images, batch 256, 3 epochs
# Outputs (logs, fig2*.png, fig2*.json, times.txt) go to $OUT if set, else results/gpu_check.
# Needs a Python with torch (CUDA) and numpy; torchvision and timm for their rows of the table
# (missing ones are skipped); scipy, scikit-learn and typer (the command line) for fig2;
# matplotlib, tqdm and numba are optional (figures are skipped without matplotlib). No network.
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${1:-layers}
case "$PART" in layers | fig2 | all) ;; *) echo "usage: $0 [layers|fig2|all]" >&2; exit 2 ;; esac
PY=${PYTHON:-python}
DEST=${OUT:-results/gpu_check}
mkdir -p "$DEST"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$WORK:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
failures=0

run() {  # run NAME LIMIT_S COMMAND...: log to $DEST/NAME.log, record the wall time
  local name=$1 limit=$2
  shift 2
  local start end rc=0
  start=$(date +%s%N)
  timeout "$limit" "$@" > "$DEST/$name.log" 2>&1 || rc=$?
  end=$(date +%s%N)
  tail -n "${TAIL:-25}" "$DEST/$name.log"
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

# ------------------------------------------------------------------------------------------------
# Layers

# A runner for the CUDA tests where pytest is missing: the test module's decorators, recorded.
cat > "$WORK/cuda_tests.py" <<'PYEOF'
import contextlib, importlib.util, itertools, re, sys, traceback, types

class _Mark:
    def skipif(self, condition, reason=""):
        return lambda f: (setattr(f, "_skip", reason) if condition else None) or f
    def parametrize(self, names, values, ids=None):
        def decorate(f):
            f.__dict__.setdefault("_params", []).insert(0, ([n.strip() for n in names.split(",")], values))
            return f
        return decorate

class _Raises(contextlib.AbstractContextManager):
    def __init__(self, kind, match=None):
        self.kind, self.match = kind, match
    def __exit__(self, kind, value, tb):
        assert kind is not None and issubclass(kind, self.kind), f"did not raise {self.kind}"
        assert self.match is None or re.search(self.match, str(value)), str(value)
        return True

fake = types.ModuleType("pytest")
fake.mark = _Mark()
fake.fixture = lambda *a, **k: (a[0] if a and callable(a[0]) else (lambda f: f))
fake.raises = _Raises
fake.importorskip = importlib.import_module
sys.modules["pytest"] = fake
spec = importlib.util.spec_from_file_location("test_nn_compile", "tests/test_nn_compile.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
failed = passed = 0
for name, function in vars(module).items():
    if not (name.startswith("test_cuda") and callable(function)):
        continue
    grids = function.__dict__.get("_params", [])
    keys = [k for names, _ in grids for k in names]
    for combo in itertools.product(*[values for _, values in grids]):
        args = {}
        for (names, _), value in zip(grids, combo):
            args.update(zip(names, value if len(names) > 1 else (value,)))
        label = f"{name}[{'-'.join(str(args[k]) for k in keys)}]"
        fixture = module._fresh_dynamo()  # the autouse fixture, a generator
        next(fixture)
        try:
            function(**args)
            passed += 1
            print("PASSED", label, flush=True)
        except Exception:
            failed += 1
            print("FAILED", label, flush=True)
            traceback.print_exc()
        finally:
            next(fixture, None)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PYEOF

if [ "$PART" != fig2 ]; then
  if "$PY" -c "import pytest" 2>/dev/null; then
    run cuda_tests 150 "$PY" -m pytest -q --noconftest -p no:cacheprovider \
      tests/test_nn_compile.py -k cuda -rf
  else
    run cuda_tests 150 "$PY" "$WORK/cuda_tests.py"
  fi
  TAIL=80 run bench_layers 200 "$PY" benchmarks/bench_layers.py --device cuda --no-rates \
    --compiled-shapes "${COMPILED:-goal}"
  echo "goals (also in $DEST/bench_layers.log):"
  grep -E '\| (ok|miss) \|$' "$DEST/bench_layers.log" || echo "no goal lines: see the log"
  TAIL=60 run bench_models 300 "$PY" benchmarks/bench_models.py --device cuda
fi

# ------------------------------------------------------------------------------------------------
# Fig. 2

if [ "$PART" != layers ]; then
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

  # The Fig. 2 command (structdrop reproduce deep), without the figure when matplotlib is
  # missing (its data and timings are still written).
  cat > "$WORK/fig2_run.py" <<'PYEOF'
import importlib.util
from structdrop.cli import app
if importlib.util.find_spec("matplotlib") is None:
    print("matplotlib missing: figure skipped")
    from structdrop.experiments import plots
    plots.render = lambda name, data, dpi=100: b""
app(["reproduce", "deep", *__import__("sys").argv[1:]], prog_name="structdrop")
PYEOF

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
  run bench_deep 40 "$PY" benchmarks/bench_deep.py --device cuda --batch-size 256 --image-size 32
  run digits 60 "$PY" "$WORK/fig2_run.py" --dataset digits --device cuda --epochs 40 \
    --out "$DEST" --force --no-progress
  run synthetic32 50 "$PY" "$WORK/fig2_run.py" --dataset synthetic32 --device cuda \
    --train-size 5000 --batch-size 256 --epochs 3 --out "$DEST" --force --no-progress
fi

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
