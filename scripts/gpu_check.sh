#!/usr/bin/env bash
# The CUDA check, prepared here and run in one command on the GPU machine (which has CUDA 13
# and python3 with torch, but no Rust toolchain and no registry).
#
# Step 1, here:
#     scripts/gpu_check.sh build
#   builds `vlmtune` with `--release --features cuda` (18 min on 2 cores), strips it (57 MiB)
#   and stages it xz-compressed as .gpu/vlmtune.xz (11 MiB; .gpu/ is git-ignored). Carry it to
#   the device machine with the working tree (12 MiB): the device tool's `carry: [".gpu"]`,
#   64 MiB in all.
#
# Step 2, on the GPU machine, from the repository root (the device tool's `run`):
#     bash scripts/gpu_check.sh device            # or `device --dry-run` to list and check
#   unpacks .gpu/vlmtune.xz with python3's lzma (no xz needed there), then
#   1. `.gpu/vlmtune --device cuda selftest --bench` in f32 and with `--bf16`: the fidelity
#      checks against tests/fixtures (f32: the CPU test suite's tolerances; bf16: looser stated
#      ones) and the SmolVLM-256M benchmarks (forward, LoRA SFT step, DPO step of 8 pairs,
#      17-tile SFT step; f32 + NF4, bf16) -> $OUT/selftest-f32.json, $OUT/selftest-bf16.json;
#   2. the same benchmarks in PyTorch with the machine's python3
#      (scripts/reference/bench_device.py: transformers + peft, bf16 as TRL's bf16=True,
#      NF4 when bitsandbytes is there) -> $OUT/torch-{f32,bf16,nf4}.json;
#   3. one line per benchmark found on both sides, also in $OUT/ratios.txt:
#      NAME: vlmtune X s, PyTorch Y s, time ratio vlmtune/PyTorch R, memory ratio M
#   Everything is logged to $OUT/gpu_check.log; each step has a time limit (the whole run
#   stays under 8 minutes); the exit status is non-zero when a check or a step failed.
#   `--dry-run` prints the commands and checks that every file they need is there.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
dry=false
if [ "${2:-}" = "--dry-run" ]; then
  dry=true
fi

case "$mode" in
  build)
    cargo build --release --features cuda --bin vlmtune
    mkdir -p .gpu
    cp target/release/vlmtune .gpu/vlmtune
    strip .gpu/vlmtune
    xz -T0 -6 -f .gpu/vlmtune
    ls -l .gpu/vlmtune.xz
    ;;
  device)
    out=${OUT:-target/gpu-check}
    bench="python3 scripts/reference/bench_device.py"
    # "<time limit in s> <command>", run in this order.
    commands=(
      "200 .gpu/vlmtune --device cuda selftest --bench --report $out/selftest-f32.json"
      "120 .gpu/vlmtune --device cuda selftest --bf16 --bench --report $out/selftest-bf16.json"
      "50 $bench run --precision f32 --out $out/torch-f32.json"
      "50 $bench run --precision bf16 --out $out/torch-bf16.json"
      "50 $bench run --precision nf4 --out $out/torch-nf4.json"
    )
    compare="$bench compare $out/selftest-f32.json $out/selftest-bf16.json $out/torch-f32.json $out/torch-bf16.json $out/torch-nf4.json"
    needed=(.gpu/vlmtune.xz tests/fixtures/tiny-smolvlm tests/fixtures/tiny-idefics3
      tests/fixtures/model/smolvlm.safetensors tests/fixtures/model/idefics3.safetensors
      tests/fixtures/quant/model-4bit.safetensors tests/fixtures/quant/qlora.safetensors
      tests/fixtures/quant/bitsandbytes.safetensors tests/fixtures/peft/smolvlm-lora
      tests/fixtures/peft/smolvlm-dora tests/fixtures/peft/idefics3-rslora
      tests/fixtures/peft/idefics3-layers tests/fixtures/sft/trl_step.json
      tests/fixtures/sft/trl_step.safetensors tests/fixtures/sft/initial-adapter
      tests/fixtures/sft/data.jsonl tests/fixtures/dpo/trl.json
      tests/fixtures/dpo/trl_step.safetensors tests/fixtures/dpo/data.jsonl
      scripts/reference/bench_device.py scripts/reference/bench_common.py
      scripts/reference/common.py)
    missing=0
    for f in "${needed[@]}"; do
      if [ ! -e "$f" ]; then
        echo "missing: $f" >&2
        missing=1
      fi
    done
    if $dry; then
      echo "would unpack: .gpu/vlmtune.xz -> .gpu/vlmtune"
      for c in "${commands[@]}"; do
        echo "would run (limit ${c%% *} s): ${c#* }"
      done
      echo "would run: $compare"
      [ -e .gpu/vlmtune.xz ] && ls -l .gpu/vlmtune.xz
      python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read())' scripts/reference/bench_device.py || missing=1
      exit $missing
    fi
    [ $missing -eq 0 ] || exit 1
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      .gpu/vlmtune.xz .gpu/vlmtune
    chmod +x .gpu/vlmtune
    mkdir -p "$out"
    log="$out/gpu_check.log"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$log" 2>&1 || true
    status=0
    for c in "${commands[@]}"; do
      limit=${c%% *}
      echo "== (limit $limit s) ${c#* }" | tee -a "$log"
      start=$(date +%s)
      RUST_LOG=warn,vlmtune::selftest=info timeout "$limit" ${c#* } 2>&1 | tee -a "$log" || status=1
      echo "== took $(($(date +%s) - start)) s" | tee -a "$log"
    done
    echo "== side by side" | tee -a "$log"
    $compare 2>&1 | tee "$out/ratios.txt" | tee -a "$log" || status=1
    exit $status
    ;;
  *)
    echo "usage: scripts/gpu_check.sh build | device [--dry-run]" >&2
    exit 2
    ;;
esac
