"""Check that a checkpoint written by `vlmtune merge` loads in transformers and gives the
logits PEFT gives with the adapter on the base model.

    cargo run -- merge --model tests/fixtures/tiny-smolvlm --adapter tests/fixtures/peft/smolvlm-dora --out /tmp/merged
    python scripts/reference/check_merged_checkpoint.py /tmp/merged smolvlm-dora
"""

import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from common import FIXTURES


def main(merged_dir: str, case: str) -> int:
    kind = case.split("-")[0]
    fx = load_file(str(FIXTURES / "model" / f"{kind}.safetensors"))
    want = load_file(str(FIXTURES / "peft" / f"{case}.safetensors"))["logits"]
    model = AutoModelForImageTextToText.from_pretrained(merged_dir, dtype=torch.float32,
                                                        attn_implementation="eager").eval()
    with torch.no_grad():
        logits = model(
            input_ids=fx["batch_input_ids"], attention_mask=fx["batch_attention_mask"],
            pixel_values=fx["batch_pixel_values"], pixel_attention_mask=fx["batch_pixel_attention_mask"],
        ).logits
    err = (logits - want).abs()[fx["batch_attention_mask"].bool()].max().item()
    print(f"transformers loaded {merged_dir} ({type(model).__name__}); max abs logit error vs PEFT adapter {err:.2e}")
    return 0 if err <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
