#!/usr/bin/env bash
# The GPU checks of the training recipe, in one go, on a ~0.94B-parameter random Llama
# (hidden 2048, 16 layers, Llama-2's 32000-entry vocabulary) with 2048-token rows, bf16:
#   throughput  forgetbench vs HF Trainer (one GPU), compiled blocks, FSDP2 under torchrun
#               (NCCL; over every visible GPU, one included): tokens/s, MFU, peak memory
#   memory      the planner against the peak of live tensors and the CUDA allocator's
#               peak: one process, FSDP2, activation checkpointing, EWC (Fisher of 256)
# Usage: benchmarks/gpu_check.sh [OUT_DIR] [throughput|memory|all]   (GPUS=N, PYTHON=python3)
# SMALL=1 runs the same checks on a tiny model, to try the script on a CPU (with GPUS=2);
# STEPS=N trains N optimizer steps in the throughput runs (default 30; the tests run 2).
# Each run's whole output is in OUT_DIR/<name>.log; the figures in OUT_DIR/summary.txt.
# Exit status 1 when a run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check}
what=${2:-all}
mkdir -p "$out"
py=${PYTHON:-python3}
gpus=${GPUS:-$("$py" -c "import torch; print(torch.cuda.device_count())")}
model=(--hidden 2048 --layers 16 --vocab 32000 --seq-len 2048 --dtype bfloat16)
[ "${SMALL:-0}" = 1 ] && model=(--hidden 128 --layers 2 --vocab 1000 --seq-len 128 --dtype bfloat16)
steps=${STEPS:-30}
failed=0
export PYTHONUNBUFFERED=1

run() {
    local name=$1
    shift
    echo "== $name: $*" | tee -a "$out/summary.txt"
    "$@" >"$out/$name.log" 2>&1
    local rc=$?
    grep -E "^(model|forgetbench|HF|ratio|steady|peak|fastest|random)|^  (for|total|measured|CUDA|EWC)" \
        "$out/$name.log" | tee -a "$out/summary.txt"
    if [ $rc -ne 0 ]; then
        failed=1
        { echo "   FAILED (exit $rc), the end of $out/$name.log:"; tail -20 "$out/$name.log"; } | tee -a "$out/summary.txt"
    fi
}

torchrun_=("$py" -m torch.distributed.run --standalone --nproc_per_node "$gpus")
if [ "$what" = throughput ] || [ "$what" = all ]; then
    run throughput "$py" benchmarks/train_throughput.py "${model[@]}" --data long --batch-size 8 --steps "$steps"
    run throughput_compiled "$py" benchmarks/train_throughput.py "${model[@]}" --data long --batch-size 8 \
        --steps "$steps" --compile --skip-trainer
    run throughput_fsdp "${torchrun_[@]}" benchmarks/train_throughput.py "${model[@]}" --data long \
        --batch-size $((8 * gpus)) --steps "$steps"
fi
if [ "$what" = memory ] || [ "$what" = all ]; then
    run memory "$py" benchmarks/memory_plan.py "${model[@]}" --batch-size 8 --steps 3
    run memory_fsdp "${torchrun_[@]}" benchmarks/memory_plan.py "${model[@]}" --batch-size $((8 * gpus)) --steps 3
    run memory_ac "$py" benchmarks/memory_plan.py "${model[@]}" --batch-size 8 --steps 3 --activation-checkpointing
    run memory_ewc "$py" benchmarks/memory_plan.py "${model[@]}" --batch-size 8 --steps 3 --regularizer ewc \
        --fisher-samples 256
fi
exit $failed
