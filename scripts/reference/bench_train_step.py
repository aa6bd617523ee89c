"""PyTorch side of `cargo bench --bench train_step`: forward + backward of the SmolVLM-256M
architecture (random weights, f32, eager attention, one 512x512 tile, batch 1, 16 labelled
tokens) with PEFT LoRA r=8 on the text attention, and as a full fine-tune. Each mode runs in
its own process. Writes target/bench-reference/train_step.json.
"""

import json
import subprocess
import sys

import torch
from transformers import Idefics3ForConditionalGeneration

from bench_common import one_tile_prompt, peak_rss_mib, smolvlm_256m_config, time_it, write_result

TEXT_ATTENTION = r"model\.text_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"


def run(mode: str) -> dict:
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(smolvlm_256m_config())
    model.config._attn_implementation = "eager"
    if mode.startswith("lora") or mode.startswith("sft"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TEXT_ATTENTION))
    if mode.endswith("-gc"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = one_tile_prompt()
    labels = torch.full_like(ids, -100)
    labels[:, -16:] = ids[:, -16:]
    pixels = torch.rand(1, 1, 3, 512, 512) * 2 - 1

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)

    def step():
        out = model(input_ids=ids, pixel_values=pixels, labels=labels)
        out.loss.backward()
        if mode.startswith("sft"):
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
    for mode in ["lora", "full", "sft", "sft-gc"]:
        out = subprocess.run([sys.executable, __file__, "--mode", mode], capture_output=True, text=True, check=True)
        result[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    write_result("train_step", result)


if __name__ == "__main__":
    main()
