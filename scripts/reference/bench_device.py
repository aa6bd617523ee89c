"""PyTorch side of `vlmtune selftest --bench` on a GPU (scripts/gpu_check.sh runs both): the
SmolVLM-256M benchmarks (random weights, seed 0, sdpa attention) on `--device` with
transformers + PEFT, in the same layout as vlmtune's `selftest::bench`:

* forward: one forward pass under no_grad, one 512x512 tile;
* sft_step: forward + backward + clip_grad_norm(1.0) + AdamW with PEFT LoRA r=8 (alpha 16) on
  the text attention, one tile, batch 1, the last 16 tokens labelled;
* dpo_step_batch8: one DPO step as TRL's DPOTrainer computes it on 8 pairs (rows [chosen;
  rejected], image and prompt in both, 8-token answers; reference = adapters disabled under
  no_grad; sigmoid loss, beta 0.1), clip, AdamW;
* sft_step_17tiles: the SFT step on a 17-tile image (1230 tokens).

Precisions: f32; bf16 as TRL's `bf16=True` runs it (f32 weights and optimizer, the forward and
backward under torch.autocast(bfloat16)); nf4: bitsandbytes NF4 + double quantisation of the
text projections (vision, connector and lm_head skipped, compute dtype f32), skipped when
bitsandbytes is not installed. Each case warms up once and reports the median of 3 steps,
tokens per second (the batch's input tokens in TRL's layout) and torch.cuda.max_memory_reserved
over the case (the caching allocator's pool: what vlmtune reports from its own pool).

    python scripts/reference/bench_device.py run --precision f32 --out torch-f32.json
    python scripts/reference/bench_device.py compare vlmtune-f32.json torch-f32.json ...

`compare` reads vlmtune's selftest reports and these files and prints one line per benchmark
found on both sides:
    NAME: vlmtune X s, PyTorch Y s, time ratio vlmtune/PyTorch R, memory ratio M
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from bench_common import ATTN_IMPLEMENTATION, TEXT_ATTENTION, one_tile_prompt, smolvlm_256m_config, tiled_prompt

CASES = ["forward", "sft_step", "dpo_step_batch8", "sft_step_17tiles"]
SKIP = ["model.vision_model", "model.connector", "lm_head"]
PAIRS = 8
RUNS = 3


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_s(step, device: str) -> float:
    step()
    sync(device)
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(precision: str, device: str):
    from transformers import Idefics3ForConditionalGeneration

    torch.manual_seed(0)
    if precision != "nf4":
        model = Idefics3ForConditionalGeneration(smolvlm_256m_config()).to(device)
    else:
        from transformers import BitsAndBytesConfig

        checkpoint = os.path.join(tempfile.gettempdir(), "vlmtune-bench-256m")
        if not os.path.exists(os.path.join(checkpoint, "config.json")):
            Idefics3ForConditionalGeneration(smolvlm_256m_config()).save_pretrained(checkpoint)
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=SKIP)
        model = Idefics3ForConditionalGeneration.from_pretrained(
            checkpoint, dtype=torch.float32, quantization_config=quant, device_map={"": device})
    model.config._attn_implementation = ATTN_IMPLEMENTATION
    return model


def with_lora(model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TEXT_ATTENTION))
    model.train()
    return model


def autocast(precision: str, device: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_case(case: str, precision: str, device: str) -> dict:
    model = build(precision, device)
    amp = lambda: autocast(precision, device)  # noqa: E731
    if case == "forward":
        model.eval()
        ids = one_tile_prompt().to(device)
        pixels = (torch.rand(1, 1, 3, 512, 512) * 2 - 1).to(device)

        def step():
            with torch.no_grad(), amp():
                model(input_ids=ids, pixel_values=pixels)

        return {"median_s": median_s(step, device), "tokens": ids.shape[1]}

    model = with_lora(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if case in ("sft_step", "sft_step_17tiles"):
        tiles = 1 if case == "sft_step" else 17
        ids = (one_tile_prompt() if tiles == 1 else tiled_prompt(tiles)).to(device)
        labels = torch.full_like(ids, -100)
        labels[:, -16:] = ids[:, -16:]
        pixels = (torch.rand(1, tiles, 3, 512, 512) * 2 - 1).to(device)
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

        def step():
            with amp():
                out = model(input_ids=ids, pixel_values=pixels, labels=labels)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return {"median_s": median_s(step, device), "tokens": ids.shape[1]}

    # dpo_step_batch8: TRL's layout, chosen rows then rejected rows.
    prompt = one_tile_prompt()[0]
    chosen = [torch.arange(200 + 16 * k, 208 + 16 * k) for k in range(PAIRS)]
    rejected = [torch.arange(208 + 16 * k, 216 + 16 * k) for k in range(PAIRS)]
    ids = torch.stack([torch.cat([prompt, a]) for a in chosen + rejected]).to(device)
    mask = torch.zeros_like(ids)
    mask[:, len(prompt):] = 1
    pixels = (torch.rand(1, 1, 3, 512, 512) * 2 - 1).repeat(2 * PAIRS, 1, 1, 1, 1).to(device)
    optimizer = torch.optim.AdamW(params, lr=1e-6)

    def logps(out):
        logits = out.logits[:, :-1].float()
        lp = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:, None]).squeeze(-1)
        return (lp * mask[:, 1:]).sum(-1)

    def step():
        with amp():
            pol = logps(model(input_ids=ids, pixel_values=pixels))
            with torch.no_grad(), model.disable_adapter():
                ref = logps(model(input_ids=ids, pixel_values=pixels))
        ratio = (pol[:PAIRS] - ref[:PAIRS]) - (pol[PAIRS:] - ref[PAIRS:])
        loss = -F.logsigmoid(0.1 * ratio).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {"median_s": median_s(step, device), "tokens": ids.numel()}


def run(args) -> None:
    if args.precision == "nf4":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            print("nf4: skipped (bitsandbytes is not installed)")
            json.dump({}, open(args.out, "w"))
            return
    results = {}
    for case in args.cases:
        name = f"{case}_{args.precision}"
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            result = run_case(case, args.precision, args.device)
        except Exception as e:  # one case's failure (out of memory) must not hide the others
            print(f"{name}: failed: {type(e).__name__}: {e}")
            continue
        result["tokens_per_s"] = result["tokens"] / result["median_s"]
        if args.device.startswith("cuda"):
            result["peak_device_mib"] = torch.cuda.max_memory_reserved() / 2**20
        results[name] = result
        print(name, json.dumps(result), flush=True)
    with open(args.out, "w") as f:
        json.dump(dict(results, torch=torch.__version__, device=args.device), f, indent=1)


def compare(args) -> None:
    ours, theirs = {}, {}
    for path in args.files:
        with open(path) as f:
            data = json.load(f)
        if "benchmarks" in data:  # a vlmtune selftest report
            for b in data["benchmarks"]:
                if b.get("error") is None:
                    ours[b["name"]] = b
        else:
            theirs.update({k: v for k, v in data.items() if isinstance(v, dict)})
    for name in [n for n in ours if n in theirs]:
        a, b = ours[name], theirs[name]
        mem = "n/a"
        if a.get("peak_device_mib") and b.get("peak_device_mib"):
            mem = f"{a['peak_device_mib'] / b['peak_device_mib']:.2f}"
        print(f"{name}: vlmtune {a['median_s']:.4f} s, PyTorch {b['median_s']:.4f} s, "
              f"time ratio vlmtune/PyTorch {a['median_s'] / b['median_s']:.2f}, memory ratio {mem}")
    for name in sorted(set(ours) ^ set(theirs)):
        print(f"{name}: only on the {'vlmtune' if name in ours else 'PyTorch'} side")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--precision", choices=["f32", "bf16", "nf4"], required=True)
    r.add_argument("--device", default="cuda")
    r.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    r.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("files", nargs="+")
    args = parser.parse_args()
    run(args) if args.command == "run" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
