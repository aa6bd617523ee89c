"""TRL's DPOTrainer on the tiny SmolVLM checkpoint: tests/fixtures/dpo/.

The policy is the base model with a nonzero LoRA adapter (tests/fixtures/sft/initial-adapter);
the reference is the same model with adapters disabled (TRL's default for PEFT models).

* data.jsonl            2 preference pairs with images (prompt, chosen, rejected)
* trl.json              per loss configuration: TRL's logged metrics of one step
                        (loss, rewards/*, logps/*, logits/*) and the learning rate
* trl_step.safetensors  per configuration: the adapter after that step

Run from the repository root (after sft_fixtures.py):  python scripts/reference/dpo_fixtures.py
"""

from __future__ import annotations

import json
import shutil

from datasets import Dataset
from PIL import Image
from peft import LoraConfig, set_peft_model_state_dict
from safetensors.torch import load_file
from trl import DPOConfig, DPOTrainer

from common import adapter_weights, FIXTURES, load_model, seed_all, write_json, write_tensors
from processor_fixtures import pil_processor

OUT = FIXTURES / "dpo"
PAIRS = [
    ("landscape.png", "Which bar is the highest?", "The red one.", "The blue one."),
    ("one_tile.png", "How many bars are there?", "5", "three"),
]
CONFIGS = {
    "sigmoid": dict(loss_type=["sigmoid"]),
    "ipo": dict(loss_type=["ipo"]),
    "hinge": dict(loss_type=["hinge"], beta=0.5),
    "robust": dict(loss_type=["robust"], label_smoothing=0.1),
    "sft": dict(loss_type=["sft"]),
    "sigmoid_norm": dict(loss_type=["sigmoid_norm"]),
    "sigmoid+sft": dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5]),
}
METRICS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", "learning_rate", "grad_norm"]
LR = 1e-2


def user(q: str) -> list:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]


def assistant(a: str) -> list:
    return [{"role": "assistant", "content": [{"type": "text", "text": a}]}]


def write_dataset() -> None:
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for image, q, chosen, rejected in PAIRS:
        shutil.copy(FIXTURES / "processor" / "images" / image, OUT / "images" / image)
        lines.append(json.dumps({"images": [f"images/{image}"], "prompt": user(q),
                                 "chosen": assistant(chosen), "rejected": assistant(rejected)}))
    (OUT / "data.jsonl").write_text("\n".join(lines) + "\n")


def dataset() -> Dataset:
    return Dataset.from_list([
        {"images": [Image.open(OUT / "images" / image).convert("RGB")], "prompt": user(q),
         "chosen": assistant(c), "rejected": assistant(r)}
        for image, q, c, r in PAIRS
    ])


def run(kwargs: dict):
    seed_all(0)
    # A fresh adapter through `peft_config` makes TRL use the base model (adapters disabled) as
    # the reference; its weights are then set to the nonzero initial adapter.
    initial = FIXTURES / "sft" / "initial-adapter"
    lora = LoraConfig.from_pretrained(str(initial))
    lora.inference_mode = False
    args = DPOConfig(
        output_dir="/tmp/vlmtune-dpo-fixture", per_device_train_batch_size=2, max_steps=1, learning_rate=LR,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1,
        save_strategy="no", report_to=[], bf16=False, gradient_checkpointing=False, use_cpu=True, seed=0,
        max_length=1024, **kwargs,
    )
    trainer = DPOTrainer(model=load_model("smolvlm"), args=args, train_dataset=dataset(),
                         processing_class=pil_processor("smolvlm"), peft_config=lora)
    assert "ref" not in trainer.model.peft_config
    set_peft_model_state_dict(trainer.model, load_file(str(initial / "adapter_model.safetensors")))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h][0]
    weights = adapter_weights(trainer.model, OUT / ".tmp-adapter")
    return {k: logs[k] for k in METRICS if k in logs}, weights


def main() -> None:
    write_dataset()
    metrics, tensors = {}, {}
    for name, kwargs in CONFIGS.items():
        m, w = run(kwargs)
        metrics[name] = dict(m, **{k: v for k, v in kwargs.items()})
        for k, v in w.items():
            tensors[f"{name}.{k}"] = v
        print(name, m)
    write_json(OUT / "trl.json", metrics)
    write_tensors(OUT / "trl_step.safetensors", tensors)


if __name__ == "__main__":
    main()
