"""Shared helpers for the reference scripts: paths, seeding, fixture writing."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
CHECKPOINTS = {
    "smolvlm": FIXTURES / "tiny-smolvlm",
    "idefics3": FIXTURES / "tiny-idefics3",
}


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Write contiguous CPU tensors to a safetensors fixture (metadata values must be strings)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(clean, str(path), metadata={k: json.dumps(v) for k, v in (meta or {}).items()})
    print(f"wrote {path.relative_to(ROOT)} ({os.path.getsize(path) / 1024:.1f} KiB)")


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


def load_model(kind: str, dtype=torch.float32):
    """Load a tiny checkpoint with eager attention, in eval mode, in `dtype`."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(
        str(CHECKPOINTS[kind]), dtype=dtype, attn_implementation="eager"
    )
    model.eval()
    return model


def adapter_weights(peft_model, scratch: Path) -> dict[str, torch.Tensor]:
    """The adapter tensors exactly as `save_pretrained` writes them (via a scratch folder)."""
    import shutil

    from safetensors.torch import load_file

    shutil.rmtree(scratch, ignore_errors=True)
    peft_model.save_pretrained(str(scratch))
    weights = load_file(str(scratch / "adapter_model.safetensors"))
    shutil.rmtree(scratch)
    return weights
