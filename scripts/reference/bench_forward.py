"""PyTorch side of `cargo bench --bench forward`: one forward pass of the SmolVLM-256M
architecture (random weights, f32, sdpa attention (VLMTUNE_BENCH_ATTN)) on one 512x512 tile.

Writes target/bench-reference/forward.json, which the Rust benchmark reads to print the ratio.
Run from the repository root:  python scripts/reference/bench_forward.py
"""

import torch
from transformers import Idefics3ForConditionalGeneration

from bench_common import ATTN_IMPLEMENTATION, one_tile_prompt, peak_rss_mib, smolvlm_256m_config, time_it, write_result


def main() -> None:
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(smolvlm_256m_config()).eval()
    model.config._attn_implementation = ATTN_IMPLEMENTATION
    ids = one_tile_prompt()
    pixels = torch.rand(1, 1, 3, 512, 512) * 2 - 1
    params = sum(p.numel() for p in model.parameters())

    def forward():
        with torch.no_grad():
            model(input_ids=ids, pixel_values=pixels)

    result = time_it(forward, warmup=1, runs=5)
    write_result("forward", dict(result, peak_rss_mib=peak_rss_mib(), params=params, seq_len=ids.shape[1]))


if __name__ == "__main__":
    main()
