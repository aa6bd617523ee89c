"""One TRL SFTTrainer step on the tiny SmolVLM checkpoint with a LoRA adapter:
tests/fixtures/sft/.

* data.jsonl            3 prompt/completion examples with images (paths relative to the file)
* initial-adapter/      the LoRA adapter both sides start from (seeded, nonzero)
* trl_step.safetensors  after one optimizer step on the first 2 examples: every adapter weight
                        (keys as saved), for batch 2 and for batch 1 x gradient accumulation 2
* trl_step.json         TRL's logged loss, grad_norm, learning_rate, mean_token_accuracy, num_tokens

Run from the repository root:  python scripts/reference/sft_fixtures.py
"""

from __future__ import annotations

import json
import shutil

import torch
from datasets import Dataset
from PIL import Image
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from trl import SFTConfig, SFTTrainer

from common import adapter_weights, FIXTURES, load_model, seed_all, write_json, write_tensors
from processor_fixtures import pil_processor

OUT = FIXTURES / "sft"
TEXT_ATTENTION = r"model\.text_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"
EXAMPLES = [
    ("landscape.png", "Which bar is the highest?", "The red one."),
    ("one_tile.png", "How many bars are there?", "5"),
    ("gray.png", "What is shown?", "A gray chart."),
]
LR = 1e-2


def write_dataset() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "images").mkdir(exist_ok=True)
    lines = []
    for image, question, answer in EXAMPLES:
        shutil.copy(FIXTURES / "processor" / "images" / image, OUT / "images" / image)
        lines.append(json.dumps({
            "images": [f"images/{image}"],
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
        }))
    (OUT / "data.jsonl").write_text("\n".join(lines) + "\n")


def initial_adapter() -> None:
    seed_all(5)
    model = get_peft_model(load_model("smolvlm"), LoraConfig(r=4, lora_alpha=8, target_modules=TEXT_ATTENTION))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    folder = OUT / "initial-adapter"
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(str(folder))
    (folder / "README.md").unlink(missing_ok=True)


def dataset() -> Dataset:
    rows = []
    for image, question, answer in EXAMPLES[:2]:
        rows.append({
            "images": [Image.open(OUT / "images" / image).convert("RGB")],
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
        })
    return Dataset.from_list(rows)


def one_step(batch: int, accumulation: int, bf16: bool = False) -> tuple[dict, dict]:
    seed_all(0)
    model = PeftModel.from_pretrained(load_model("smolvlm"), str(OUT / "initial-adapter"), is_trainable=True)
    processor = pil_processor("smolvlm")  # the PIL image backend, which vlmtune matches
    args = SFTConfig(
        output_dir="/tmp/vlmtune-sft-fixture", per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=LR, lr_scheduler_type="linear",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
        report_to=[], bf16=bf16, gradient_checkpointing=False, use_cpu=True, seed=0,
        dataloader_drop_last=False, max_length=1024,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset(), processing_class=processor)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h][0]
    weights = adapter_weights(trainer.model, OUT / ".tmp-adapter")
    return weights, logs


def main() -> None:
    write_dataset()
    initial_adapter()
    tensors, metrics = {}, {}
    for name, (batch, accumulation) in {"batch2": (2, 1), "accum2": (1, 2)}.items():
        weights, logs = one_step(batch, accumulation)
        for k, v in weights.items():
            tensors[f"{name}.{k}"] = v
        metrics[name] = {k: logs[k] for k in ["loss", "grad_norm", "learning_rate", "mean_token_accuracy", "num_tokens"] if k in logs}
        print(name, metrics[name])
    write_tensors(OUT / "trl_step.safetensors", tensors)
    write_json(OUT / "trl_step.json", {"learning_rate": LR, **metrics})


if __name__ == "__main__":
    main()
