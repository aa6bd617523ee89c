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
#   unpacks .gpu/vlmtune.xz with python3's lzma (no xz needed there), then runs
#   `.gpu/vlmtune selftest --device cuda` against tests/fixtures, in f32 (the CPU test
#   suite's tolerances) and in bf16 (looser stated ones), writing $OUT/selftest-f32.json,
#   $OUT/selftest-bf16.json and $OUT/gpu_check.log; exits non-zero when a check fails.
#   `--dry-run` prints the commands and checks that every file they need is there.
#
# Not yet in it (issue #16): the 256M benchmarks on CUDA and their PyTorch references.
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
    commands=(
      ".gpu/vlmtune --device cuda selftest --report $out/selftest-f32.json"
      ".gpu/vlmtune --device cuda selftest --bf16 --report $out/selftest-bf16.json"
    )
    needed=(.gpu/vlmtune.xz tests/fixtures/tiny-smolvlm tests/fixtures/tiny-idefics3
      tests/fixtures/model/smolvlm.safetensors tests/fixtures/model/idefics3.safetensors
      tests/fixtures/quant/model-4bit.safetensors tests/fixtures/sft/trl_step.json
      tests/fixtures/sft/trl_step.safetensors tests/fixtures/sft/initial-adapter
      tests/fixtures/sft/data.jsonl tests/fixtures/dpo/trl.json
      tests/fixtures/dpo/trl_step.safetensors tests/fixtures/dpo/data.jsonl)
    missing=0
    for f in "${needed[@]}"; do
      if [ ! -e "$f" ]; then
        echo "missing: $f" >&2
        missing=1
      fi
    done
    if $dry; then
      echo "would unpack: .gpu/vlmtune.xz -> .gpu/vlmtune"
      printf 'would run: %s\n' "${commands[@]}"
      [ -e .gpu/vlmtune.xz ] && ls -l .gpu/vlmtune.xz
      exit $missing
    fi
    [ $missing -eq 0 ] || exit 1
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      .gpu/vlmtune.xz .gpu/vlmtune
    chmod +x .gpu/vlmtune
    mkdir -p "$out"
    status=0
    for c in "${commands[@]}"; do
      echo "== $c" | tee -a "$out/gpu_check.log"
      $c 2>&1 | tee -a "$out/gpu_check.log" || status=1
    done
    exit $status
    ;;
  *)
    echo "usage: scripts/gpu_check.sh build | device [--dry-run]" >&2
    exit 2
    ;;
esac
