"""TRL's bf16=True (torch.autocast, f32 master weights) on the SFT fixture's step:
tests/fixtures/sft/trl_step_bf16.{json,safetensors}.

The batch-2 step of sft_fixtures.py (same data, adapter, seed, learning rate) with
SFTConfig(bf16=True) on the CPU: accelerate runs the forward under
torch.autocast("cpu", torch.bfloat16), so every Linear, the patch convolution and eager
attention's two matmuls compute in bf16, while the weights and AdamW state stay f32. Writes the
logged loss / grad_norm / mean_token_accuracy and the updated adapter weights (`autocast.<key>`).

bf16 rounding makes two correct implementations differ at bf16's noise level, not f32's: one
rounding that goes the other way perturbs everything after it. (Replacing F.linear / F.conv2d by
exactly vlmtune's bf16 products, attention left in f32, lands as far from this run, 3.5e-4 in the
loss, as vlmtune does, 2e-4.) The Rust test therefore uses bf16 tolerances.

Run from the repository root:  python scripts/reference/sft_bf16_fixtures.py
"""

from __future__ import annotations

import sft_fixtures
from common import write_json, write_tensors

KEYS = ["loss", "grad_norm", "learning_rate", "mean_token_accuracy", "num_tokens"]


def main() -> None:
    weights, logs = sft_fixtures.one_step(2, 1, bf16=True)
    metrics = {"autocast": {k: logs[k] for k in KEYS if k in logs}}
    print(metrics)
    out = sft_fixtures.OUT
    write_tensors(out / "trl_step_bf16.safetensors", {f"autocast.{k}": v for k, v in weights.items()})
    write_json(out / "trl_step_bf16.json", {"learning_rate": sft_fixtures.LR, **metrics})


if __name__ == "__main__":
    main()
