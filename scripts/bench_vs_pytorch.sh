#!/usr/bin/env bash
# vlmtune next to PyTorch on this machine, in one invocation: for each benchmark the PyTorch
# reference (scripts/reference/bench_*.py, transformers' default sdpa attention) runs first,
# then the matching vlmtune benchmark, with the same thread count. At the end one line each:
#
#   NAME: vlmtune X s, PyTorch Y s, time ratio vlmtune/PyTorch R, memory ratio M
#
# for forward, sft_step (LoRA r8 text attention, AdamW), sft_step_nf4 (the same on NF4 + double
# quantisation), dpo_step (shared prefix, per pair, against TRL's layout in PyTorch), and the
# gradient-checkpointing pairs on a 17-tile image: sft_step_17tiles[_gc] (LoRA) and
# full_step_17tiles[_gc] (full fine-tune of the text model), PyTorch with
# gradient_checkpointing=True for the _gc lines, and sft_step_17tiles_bf16[_gc] (the LoRA pair
# with the frozen weights stored in bf16; PyTorch's model in bfloat16); and allreduce_256m_lora, one step's gradient
# all-reduce of that LoRA adapter between 2 processes (vlmtune through its orchestrator,
# PyTorch gloo).
# Memory is peak RSS of each run's own process.
#
# Usage: scripts/bench_vs_pytorch.sh [--threads N]
#   PYTHON       the Python with scripts/reference/requirements.txt installed (default python3)
#   THREADS      threads for both sides (default: nproc); also `--threads N`
#   VLMTUNE_BENCH_ATTN=eager   compare against transformers' eager attention instead
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-$(nproc)}
if [ "${1:-}" = "--threads" ]; then
  THREADS=$2
fi
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

mkdir -p target/bench-reference
log=target/bench-reference/bench_vs_pytorch.log
: >"$log"
echo "threads: $THREADS; $($PYTHON -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')" | tee -a "$log"

# Build first, so that compiling does not run beside a measurement.
cargo bench --no-run --bench forward --bench train_step --bench dpo_step --bench epochs --bench data_parallel 2>&1 | tail -1

step() {
  echo "== $*" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
}

step "$PYTHON" scripts/reference/bench_forward.py
step cargo bench --bench forward -- --summary
step "$PYTHON" scripts/reference/bench_train_step.py sft sft-nf4 sft17 sft17-gc full17 full17-gc sft17-bf16 sft17-bf16-gc
step cargo bench --bench train_step -- sft sft-nf4 sft17 sft17-gc full17 full17-gc sft17-bf16 sft17-bf16-gc
step "$PYTHON" scripts/reference/bench_dpo_step.py
step cargo bench --bench dpo_step -- shared
step "$PYTHON" scripts/reference/bench_epochs.py
step cargo bench --bench epochs
step "$PYTHON" scripts/reference/bench_allreduce.py
step cargo bench --bench data_parallel -- allreduce

echo
echo "== side by side ($THREADS threads)"
grep -E '^[a-z0-9_]+: vlmtune [0-9.]+ s, PyTorch [0-9.]+ s, time ratio' "$log"
