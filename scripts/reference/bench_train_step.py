"""PyTorch side of `cargo bench --bench train_step`: forward + backward of the SmolVLM-256M
architecture (random weights, f32, sdpa attention (VLMTUNE_BENCH_ATTN), one 512x512 tile, batch 1, 16 labelled
tokens) with PEFT LoRA r=8 on the text attention, and as a full fine-tune; the SFT step on a
17-tile image (`sft17`: LoRA, `full17`: full fine-tune of the text model), each also with
`gradient_checkpointing=True` (`-gc`, non-reentrant as TRL sets it); `sft17-bf16` (`-gc`):
the 17-tile LoRA step with the model loaded in bfloat16 (`dtype=torch.bfloat16`, PEFT's
adapters in float32 as its default `autocast_adapter_dtype` makes them); the SFT step with
the frozen weights quantised by bitsandbytes (`sft-nf4`: NF4 + double quantisation, `sft-int8`;
text projections, vision/connector/lm_head skipped) and forward passes without autograd
(`fwd-f32`, `fwd-nf4`, `fwd-int8`). Quantised modes load the same random weights from a
temporary checkpoint. Each mode runs in its own process. Writes
target/bench-reference/train_step.json.
"""

import json
import os
import subprocess
import sys
import tempfile

import torch
from transformers import Idefics3ForConditionalGeneration

from bench_common import ATTN_IMPLEMENTATION, RESULTS, TEXT_ATTENTION, one_tile_prompt, peak_rss_mib, smolvlm_256m_config, tiled_prompt, time_it, write_result



SKIP = ["model.vision_model", "model.connector", "lm_head"]
CHECKPOINT = os.path.join(tempfile.gettempdir(), "vlmtune-bench-256m")


def quant_config(mode: str):
    from transformers import BitsAndBytesConfig

    if mode.endswith("nf4"):
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=SKIP)
    if mode.endswith("int8"):
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=SKIP)
    return None


def build(mode: str):
    torch.manual_seed(0)
    config = quant_config(mode)
    if config is None:
        model = Idefics3ForConditionalGeneration(smolvlm_256m_config())
        if "bf16" in mode:
            model = model.to(torch.bfloat16)
    else:
        if not os.path.exists(os.path.join(CHECKPOINT, "config.json")):
            Idefics3ForConditionalGeneration(smolvlm_256m_config()).save_pretrained(CHECKPOINT)
        model = Idefics3ForConditionalGeneration.from_pretrained(
            CHECKPOINT, dtype=torch.float32, quantization_config=config, device_map="cpu")
    model.config._attn_implementation = ATTN_IMPLEMENTATION
    return model


def run_forward(mode: str) -> dict:
    model = build(mode)
    model.eval()
    ids = one_tile_prompt()
    pixels = torch.rand(1, 1, 3, 512, 512) * 2 - 1

    def step():
        with torch.no_grad():
            model(input_ids=ids, pixel_values=pixels)

    t = time_it(step, warmup=1, runs=3)
    return dict(t, peak_rss_mib=peak_rss_mib())


def run(mode: str) -> dict:
    if mode.startswith("fwd"):
        return run_forward(mode)
    model = build(mode)
    tiles = 17 if "17" in mode else 1
    if mode.startswith("lora") or mode.startswith("sft"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TEXT_ATTENTION))
    if mode.startswith("full17"):
        for p in list(model.model.vision_model.parameters()) + list(model.model.connector.parameters()):
            p.requires_grad_(False)
    if mode.endswith("-gc"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = one_tile_prompt() if tiles == 1 else tiled_prompt(tiles)
    labels = torch.full_like(ids, -100)
    labels[:, -16:] = ids[:, -16:]
    pixels = torch.rand(1, tiles, 3, 512, 512) * 2 - 1
    if "bf16" in mode:
        pixels = pixels.to(torch.bfloat16)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)

    def step():
        out = model(input_ids=ids, pixel_values=pixels, labels=labels)
        out.loss.backward()
        if mode.startswith("sft") or mode.startswith("full17"):
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
        model.zero_grad(set_to_none=True)

    t = time_it(step, warmup=1, runs=3)
    return dict(t, peak_rss_mib=peak_rss_mib())


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--mode":
        print(json.dumps(run(sys.argv[2])))
        return
    result = {}
    modes = sys.argv[1:] or ["lora", "full", "sft", "sft-gc", "sft17", "sft17-gc", "full17", "full17-gc",
                             "sft-nf4", "sft-int8", "fwd-f32", "fwd-nf4", "fwd-int8"]
    previous = RESULTS / "train_step.json"
    if os.path.exists(previous):
        with open(previous) as f:
            result = json.load(f)
    for mode in modes:
        out = subprocess.run([sys.executable, __file__, "--mode", mode], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{mode}: failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        result[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(mode, result[mode])
    write_result("train_step", result)


if __name__ == "__main__":
    main()
