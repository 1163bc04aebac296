#!/usr/bin/env bash
# The GPU checks of the speed work in one device call (device tool: kind "nvidia-h200", carry [".whl"], command
# "bash bench/gpu_check.sh", timeout_s 400). Prepare with bench/gpu_wheels.sh first. A task is lent 15 device minutes
# in all, a fresh machine takes 1-2 of them to start, so this call stays well under 10 minutes to leave room for a rerun.
#  1. the CUDA cases of the tests of every GPU code path (the CUDA-graphed step alone and with folds on their own
#     streams, dropout and stochastic depth, bf16, channels_last, Grad-CAM in a run with folds together, each step's
#     loss read one step late);
#  2. python -m core bench --device cuda: the study's sizes, the H200 targets judged met or not met, the pack again
#     reading each loss at once, and (d) a fold's heat maps against pytorch-grad-cam (not yet measured on a GPU).
# Everything it prints and writes lands in $OUT (the tool brings it back).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
{ nvidia-smi; python3 -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name())'; } \
  2>&1 | tee "$out/machine.txt"
# Only the CUDA cases (CI runs the CPU ones): device minutes are scarce.
echo "tests start $(date +%T)"
timeout 80 python3 -m pytest -q -p no:cacheprovider -k "cuda or gpu" tests/test_cudagraph.py tests/test_foldstack.py tests/test_speed.py 2>&1 \
  | tee "$out/tests.txt" | tail -15
echo "bench start $(date +%T)"
timeout 290 python3 -m core bench --device cuda --out "$out/bench_cuda.json" 2>&1 | tee "$out/bench_cuda.txt" | tail -40
echo "end $(date +%T)"
