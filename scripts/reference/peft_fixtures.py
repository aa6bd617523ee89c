"""Record PEFT's LoRA / DoRA / rsLoRA behaviour on the tiny checkpoints: tests/fixtures/peft/.

For each adapter case: the adapter folder exactly as `PeftModel.save_pretrained` writes it
(nonzero, seeded A and B; DoRA magnitudes perturbed), and in <case>.safetensors the logits and
loss on the padded batch of tests/fixtures/model/<kind>.safetensors, the gradient of every
adapter weight for that masked-label batch (keyed like the saved file), and the logits of
`merge_and_unload()`.

trainable_counts.json: trainable parameters of `get_peft_model` for vlmtune's target presets
on both tiny checkpoints.

Run from the repository root:  python scripts/reference/peft_fixtures.py
"""

from __future__ import annotations

import shutil

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from common import CHECKPOINTS, FIXTURES, load_model, seed_all, write_json, write_tensors

OUT = FIXTURES / "peft"

TEXT_ATTENTION = r"model\.text_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"
TEXT_ALL_LINEAR = r"model\.text_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
VISION_AND_TEXT = (
    r"model\.(text_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
    r"|vision_model\.encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2)))"
)
PRESETS = {
    "text-attention": TEXT_ATTENTION,
    "text-all-linear": TEXT_ALL_LINEAR,
    "vision-and-text": VISION_AND_TEXT,
    "all-linear": "all-linear",
}

CASES = {
    # name: (checkpoint, LoraConfig kwargs)
    "smolvlm-lora": ("smolvlm", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "out_proj", "fc1", "down_proj"],
                                      modules_to_save=["lm_head"])),
    "smolvlm-dora": ("smolvlm", dict(r=4, lora_alpha=16, use_dora=True, target_modules=VISION_AND_TEXT)),
    "idefics3-rslora": ("idefics3", dict(r=8, lora_alpha=16, use_rslora=True, target_modules="all-linear")),
    "idefics3-layers": ("idefics3", dict(r=2, lora_alpha=4, target_modules=["q_proj", "k_proj", "gate_proj"],
                                         layers_to_transform=[0, 2], exclude_modules=["vision_model.encoder.layers.0.self_attn.q_proj"])),
}


def batch(kind: str):
    from safetensors.torch import load_file as lf

    fx = lf(str(FIXTURES / "model" / f"{kind}.safetensors"))
    return dict(
        input_ids=fx["batch_input_ids"], attention_mask=fx["batch_attention_mask"],
        pixel_values=fx["batch_pixel_values"], pixel_attention_mask=fx["batch_pixel_attention_mask"],
        labels=fx["batch_labels"],
    )


def randomise_adapter(model, seed: int, std: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif "modules_to_save" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
            elif "lora_magnitude_vector" in name:
                p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))


def record_case(name: str, kind: str, kwargs: dict) -> None:
    seed_all(20)
    model = load_model(kind)
    config = LoraConfig(lora_dropout=0.0, **kwargs)
    peft_model = get_peft_model(model, config)
    # Adapter values scaled so that scaling * B @ A stays a fraction of the base weights.
    std = 0.2 / max(peft_model.peft_config["default"].lora_alpha / kwargs["r"] ** (0.5 if kwargs.get("use_rslora") else 1.0), 1.0) ** 0.5
    randomise_adapter(peft_model, seed=len(name), std=std)
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    peft_model.save_pretrained(str(folder))
    (folder / "README.md").unlink(missing_ok=True)
    saved = load_file(str(folder / "adapter_model.safetensors"))

    inputs = batch(kind)
    peft_model.eval()
    out = peft_model(**inputs)
    out.loss.backward()
    grads = {}
    params = dict(peft_model.named_parameters())
    saved_modules = kwargs.get("modules_to_save") or []
    for key in saved:
        # saved key base_model.model.X.lora_A.weight <-> parameter base_model.model.X.lora_A.default.weight;
        # modules_to_save: base_model.model.lm_head.weight <-> ...lm_head.modules_to_save.default.weight
        pname = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight").replace(
            ".lora_magnitude_vector", ".lora_magnitude_vector.default.weight")
        for m in saved_modules:
            prefix = f"base_model.model.{m}."
            if key.startswith(prefix):
                pname = f"{prefix}modules_to_save.default.{key[len(prefix):]}"
        grads[f"grad.{key}"] = params[pname].grad.detach().clone()
    logits = out.logits.detach().float()
    loss = out.loss.detach().reshape(1).float()
    with torch.no_grad():
        merged = peft_model.merge_and_unload()
        merged_logits = merged(**{k: v for k, v in inputs.items() if k != "labels"}).logits.float()
    write_tensors(OUT / f"{name}.safetensors", dict(logits=logits, loss=loss, merged_logits=merged_logits, **grads))
    print(name, "loss", loss.item(), "adapter keys", len(saved),
          "merge max diff", (merged_logits - logits).abs().max().item())


def trainable_counts() -> dict:
    counts = {}
    for kind in CHECKPOINTS:
        for preset, target in PRESETS.items():
            model = load_model(kind)
            peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=target))
            trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
            total = sum(p.numel() for p in peft_model.parameters())
            counts[f"{kind}/{preset}"] = {"trainable": trainable, "total": total}
    return counts


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (kind, kwargs) in CASES.items():
        record_case(name, kind, kwargs)
    write_json(OUT / "trainable_counts.json", trainable_counts())


if __name__ == "__main__":
    main()
