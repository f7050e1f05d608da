#!/usr/bin/env bash
# The prepared GPU check, one command on a lent machine (one GPU; its own Python with torch,
# timm, numpy, pandas, jinja2, pytest, and none of the OpenMMLab stack, which nothing here
# needs): Table 15 at the paper's setting in fp32 and bf16 for every method, the ParaX module
# bench (ours, the straightforward yardstick, static Mona), the CUDA-only tests, and a summary
# of the goals. Each part writes its JSON under OUT (default results/gpu) as soon as it ends,
# so a part cut short by its time limit leaves the others' results.
#
#   bash scripts/gpu-check.sh [OUT]
#
# A try-out on CPU with a tiny setting (tests/test_gpu_check.py runs it so):
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_BACKBONE=swin-micro GPU_CHECK_SIZE=64x64 \
#   GPU_CHECK_BUDGET=14% GPU_CHECK_ITERS=2 GPU_CHECK_BENCH_INPUT=512x512 \
#   GPU_CHECK_BENCH_STAGES=4 bash scripts/gpu-check.sh /tmp/gpu-check
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-results/gpu}"
py="${PYTHON:-python3}"
device="${GPU_CHECK_DEVICE:-cuda}"
backbone="${GPU_CHECK_BACKBONE:-swin-l}"
size="${GPU_CHECK_SIZE:-1280x800}"
batch="${GPU_CHECK_BATCH:-4}"
budget="${GPU_CHECK_BUDGET:-paper}"
iters="${GPU_CHECK_ITERS:-10}"
bench_input="${GPU_CHECK_BENCH_INPUT:-1280x800}"    # Swin-B stage shapes of this input
read -ra bench_stages <<< "${GPU_CHECK_BENCH_STAGES:-1 2 3 4}"
part_limit="${GPU_CHECK_PART_S:-150}"  # seconds per part: the four fit in 8 minutes
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
log() { printf '[gpu-check %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
status=0
part() {  # NAME COMMAND...: run one part under the time limit; a failure is logged, not fatal
  local name="$1"; shift
  log "$name"
  local rc=0
  timeout "$part_limit" "$@" || rc=$?
  if (( rc != 0 )); then
    log "$name: FAILED (exit $rc; 124: cut at ${part_limit}s)"
    status=1
  fi
}

log "device $device, $("$py" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")')"
for amp in none bf16; do
  part "Table 15, $backbone ${size}, batch $batch, amp $amp" \
    "$py" -m benchmark.cli efficiency --backbone "$backbone" --size "$size" --batch "$batch" \
      --budget "$budget" --device "$device" --amp "$amp" --warmup 2 --iters "$iters" \
      --latency-iters "$iters" --format csv --out "$out/table15-$amp.json"
done
part "ParaX module bench" \
  "$py" -m benchmark.bench_parax --device "$device" --inputs "$bench_input" \
    --stages "${bench_stages[@]}" --warmup 2 \
    --iters "$(( iters < 9 ? iters : 9 ))" --out "$out/bench-parax.json"
part "CUDA-only tests" \
  "$py" -m pytest -q -p no:cacheprovider -o addopts="" -rs --junitxml "$out/cuda-tests.xml" \
    tests/test_parax.py tests/test_efficiency.py -k "gpu or cuda"
part "summary" "$py" -m benchmark.gpu_check "$out"
exit "$status"
