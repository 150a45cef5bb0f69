#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine (see docs/gpu.md). Writes into $OUT.
# Usage (from the repo root, on the GPU machine): OUT=/some/dir bash tools/gpu_checks.sh
set -u
OUT=${OUT:-/tmp/mkeval-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/env.txt"

echo "== 1. BK Triton kernels against the float64 reference, and timings"
PYTHONPATH=plugins:. timeout 240 python3 plugins/mkeval_bk/gpu_check.py > "$OUT/bk_gpu_stdout.txt" 2>&1
echo "bk gpu_check exit code: $?" | tee -a "$OUT/env.txt"
tail -c 2500 "$OUT/bk_gpu_stdout.txt"

echo "== 2. mkeval end to end on CUDA (fp32, bf16, fp16 with loss scaling)"
python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/site . > /tmp/pip.log 2>&1 || cat /tmp/pip.log
export PYTHONPATH=/tmp/site
timeout 200 python3 -m mkeval run --models transformer,bk,mamba --precisions fp32,bf16,fp16 --train-tokens 131072 \
  --device cuda --output-dir /tmp/run > "$OUT/run_stdout.txt" 2>&1
echo "mkeval run exit code: $?" | tee -a "$OUT/env.txt"
python3 -m mkeval report /tmp/run 2>&1 | tee "$OUT/report.txt"
tar czf "$OUT/run.tgz" -C /tmp --exclude=checkpoints run
