#!/usr/bin/env bash
# GPU checks and benchmarks of densitylearn in one run, for a CUDA machine.
#
#   bash examples/run_gpu_benchmarks.sh DATA.h5 RESULTS_DIR [ARCHIVE.tgz]
#
# DATA.h5 is any fit-basis dataset of QM9-sized molecules (its structures and sizes set
# the training and prediction cost). Each step has its own time limit and log under
# RESULTS_DIR; a failing step does not stop the others. Steps:
#   1. the CUDA-dependent tests (grid, model, prediction, training),
#   2. grid evaluation vs PySCF eval_gto on all CPU cores, water boxes up to ~5000 atoms,
#      float64 (fused Triton kernels), the torch path, float32,
#   3. with WITH_TRAINING=1: training throughput, float32 and bfloat16 autocast,
#   4. prediction throughput, coefficients and density on Becke grids.
# Without network access, missing Python packages (pyscf, ase) can be installed from
# wheels in .whl/ (see the device notes in docs/benchmarks.rst).
set -u
DATA=$1
RES=${2:-gpu_results}
ARCHIVE=${3:-}
mkdir -p "$RES"
export PYTHONUNBUFFERED=1
NCPU=$(nproc)
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$RES/install.log" 2>&1 \
  || echo "editable install failed (see install.log); using PYTHONPATH"
export PYTHONPATH=${PYTHONPATH:-$PWD}

step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  local t0=$(date +%s)
  timeout "$secs" "$@" > "$RES/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc, $(( $(date +%s) - t0 )) s" | tee -a "$RES/steps.log"
  if [ -n "$ARCHIVE" ]; then tar czf "$ARCHIVE" -C "$RES" .; fi  # survives a kill of a later step
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader
  python3 -c "import torch, e3nn, pyscf, ase, numpy; print('torch', torch.__version__, 'e3nn', e3nn.__version__, 'pyscf', pyscf.__version__, 'ase', ase.__version__, 'numpy', numpy.__version__)"
  echo "CPU cores: $NCPU"
} > "$RES/env.log" 2>&1
cat "$RES/env.log"

step tests 110 python3 -m pytest -q -p no:cacheprovider -rs tests/test_grid.py tests/test_model.py \
  tests/test_predict.py tests/test_train.py
step grid_f64 90 python3 examples/benchmark_grid.py --device cuda --dtype float64 --max-atoms 5000 \
  --threads "$NCPU" --repeat 3 --pyscf-max-values 1e8
step grid_f64_torch 40 python3 examples/benchmark_grid.py --device cuda --dtype float64 --max-atoms 5000 \
  --skip-pyscf --repeat 2 --no-triton
step grid_f32 30 python3 examples/benchmark_grid.py --device cuda --dtype float32 --max-atoms 5000 \
  --skip-pyscf --repeat 3
if [ -n "${WITH_TRAINING:-}" ]; then
  for bs in 16 48; do
    step "train_bs$bs" 40 python3 examples/benchmark_training.py "$DATA" --device cuda --batch-size $bs --steps 20
    step "train_bs${bs}_amp" 40 python3 examples/benchmark_training.py "$DATA" --device cuda --batch-size $bs \
      --steps 20 --amp
  done
fi
step predict 70 python3 examples/benchmark_prediction.py "$DATA" --device cuda --n 4096 \
  --batch-sizes 64,256,1024 --grid-molecules 128 --threads "$NCPU"
# the short tables, last, so they end up in the tail of the output
for f in "$RES"/grid_*.log "$RES"/train_*.log "$RES"/predict.log; do
  [ -f "$f" ] || continue
  echo "---- $f"; grep -v "^\s*$" "$f" | tail -14
done
tail -5 "$RES/tests.log"
