"""Check that an adapter written by vlmtune loads in PEFT and gives vlmtune's logits.

tests/fixtures/peft/saved-by-vlmtune/ is written by the Rust test
`adapter_written_by_vlmtune_is_stable` (with VLMTUNE_WRITE_FIXTURES=1), together with the
logits vlmtune computed (saved-by-vlmtune.safetensors). This script loads the folder with
`PeftModel.from_pretrained` and compares. Run from the repository root:

    python scripts/reference/check_vlmtune_adapter.py
"""

import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file

from common import FIXTURES, load_model


def main() -> int:
    fx = load_file(str(FIXTURES / "model" / "smolvlm.safetensors"))
    want = load_file(str(FIXTURES / "peft" / "saved-by-vlmtune.safetensors"))["logits"]
    model = PeftModel.from_pretrained(load_model("smolvlm"), str(FIXTURES / "peft" / "saved-by-vlmtune")).eval()
    with torch.no_grad():
        logits = model(
            input_ids=fx["batch_input_ids"], attention_mask=fx["batch_attention_mask"],
            pixel_values=fx["batch_pixel_values"], pixel_attention_mask=fx["batch_pixel_attention_mask"],
        ).logits
    mask = fx["batch_attention_mask"].bool()
    err = (logits - want).abs()[mask].max().item()
    trainable = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n or "modules_to_save" in n)
    print(f"PEFT loaded the vlmtune adapter ({trainable} adapter parameters); max abs logit error {err:.2e}")
    return 0 if err <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
