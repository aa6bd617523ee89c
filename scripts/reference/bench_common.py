"""Helpers for the PyTorch side of the benchmarks: configs of the presets, timing, peak RSS."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

from common import ROOT

RESULTS = ROOT / "target" / "bench-reference"

# transformers' default attention (what a user gets); `VLMTUNE_BENCH_ATTN=eager` for the
# materialised-scores path.
ATTN_IMPLEMENTATION = os.environ.get("VLMTUNE_BENCH_ATTN", "sdpa")


def smolvlm_256m_config():
    """Idefics3Config of SmolVLM-256M-Instruct (SPEC §9), as vlmtune's `Preset::SmolVlm256M`."""
    from transformers import Idefics3Config

    return Idefics3Config(
        vision_config=dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            image_size=512, patch_size=16,
        ),
        text_config=dict(
            model_type="llama", vocab_size=49280, hidden_size=576, intermediate_size=1536,
            num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
            max_position_embeddings=8192, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
            pad_token_id=2, bos_token_id=1, eos_token_id=49279,
        ),
        scale_factor=4,
        image_token_id=49190,
    )


TEXT_ATTENTION = r"model\.text_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"


def lora_256m_model():
    """SmolVLM-256M (random weights, seed 0, ATTN_IMPLEMENTATION) with PEFT LoRA r=8 on the text
    attention, in train mode: what vlmtune's `common::lora_256m` builds."""
    from peft import LoraConfig, get_peft_model
    from transformers import Idefics3ForConditionalGeneration

    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(smolvlm_256m_config())
    model.config._attn_implementation = ATTN_IMPLEMENTATION
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TEXT_ATTENTION))
    model.train()
    return model


def one_tile_prompt(image_seq_len: int = 64, text_tokens: int = 16):
    """Ids of `<|im_start|>User:<fake><global-img><image>x64<fake>question<eou>\\nAssistant:`,
    the same layout vlmtune's benchmarks use."""
    ids = [1, 11126, 42] + [49189, 49152] + [49190] * image_seq_len + [49189]
    ids += [100 + i for i in range(text_tokens)] + [49279, 198, 9519, 42]
    return torch.tensor([ids])


def tiled_prompt(tiles: int, image_seq_len: int = 64, text_tokens: int = 100):
    """Ids of a prompt with `tiles` image blocks (`<fake><marker><image>xN` each, as the processor
    lays out a split image): vlmtune's `common::tiled_prompt`."""
    ids = [1, 11126, 42]
    for _ in range(tiles):
        ids += [49189, 49152] + [49190] * image_seq_len
    ids += [49189] + [100 + i for i in range(text_tokens)] + [49279, 198, 9519, 42]
    return torch.tensor([ids])


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def time_it(fn, warmup: int = 1, runs: int = 5) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": runs}


def write_result(name: str, result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = dict(result, torch=torch.__version__, threads=torch.get_num_threads())
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
