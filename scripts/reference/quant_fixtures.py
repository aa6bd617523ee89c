"""Record bitsandbytes' quantisation on CPU: tests/fixtures/quant/.

bitsandbytes.safetensors, for each case `<name>.*`:
  * 4-bit (`bitsandbytes.functional.quantize_4bit`, NF4 / FP4, several blocksizes, with and
    without `compress_statistics`): `input` (f32), `packed` (u8, two codes per byte),
    `absmax` (f32) or, double-quantised, `qabsmax` (u8), `absmax2` (f32), `offset` (f32[1]);
    and `dequant` (`dequantize_4bit`, f32).
  * int8 (`int8_vectorwise_quant` / `int8_vectorwise_dequant`): `input`, `codes` (i8),
    `stats` (f32), `dequant`.
  Shapes with an odd element count, a short last block, several blocks of 256 absmax values
  (double quantisation), outliers and an all-zero block.

qlora.safetensors: QLoRA with PEFT on that NF4 + double-quantised model: for the PEFT-saved
adapters tests/fixtures/peft/smolvlm-lora and smolvlm-dora, `<case>.logits`, `<case>.loss`
and `<case>.grad.<adapter key>` (gradients of the masked-label batch).

model-4bit.safetensors: logits of tests/fixtures/tiny-smolvlm loaded by transformers with
`BitsAndBytesConfig` (compute float32, the vision tower, connector and lm_head skipped, as
vlmtune's default) on the padded batch of tests/fixtures/model/smolvlm.safetensors:
`nf4_dq.logits` (NF4 + double quantisation) and `fp4.logits`.

Run from the repository root:  python scripts/reference/quant_fixtures.py
"""

from __future__ import annotations

import torch
import bitsandbytes.functional as F
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
from bitsandbytes.backends.utils import _get_4bit_code
from safetensors.torch import load_file

from common import CHECKPOINTS, FIXTURES, seed_all, write_tensors

OUT = FIXTURES / "quant"


def flat_dequantize_4bit(A, absmax, blocksize, quant_type, shape, dtype):
    """bitsandbytes' reference (default-backend, = CUDA) 4-bit dequantisation: blocks run over
    the flattened tensor. Its native CPU kernel (0.50.2) assumes that every row is a whole
    number of blocks and reads the wrong absmax when `cols % blocksize != 0` (e.g. a 96-wide
    or 32-wide weight with blocksize 64), so the fixtures use this one."""
    code = _get_4bit_code(quant_type, A.device)
    return _dequantize_4bit_compute(A.view(torch.uint8).reshape(-1), absmax, code, blocksize, shape, dtype)


torch.library.register_kernel("bitsandbytes::dequantize_4bit", "cpu", flat_dequantize_4bit)


def weights(rows: int, cols: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen) * 0.02
    flat = w.view(-1)
    # A few outliers and, when large enough, an all-zero block of 64.
    idx = torch.randint(0, flat.numel(), (max(flat.numel() // 500, 1),), generator=gen)
    flat[idx] *= 40.0
    if flat.numel() >= 4 * 64:
        flat[128:192] = 0.0
    return w


def four_bit_cases() -> dict[str, torch.Tensor]:
    out = {}
    shapes = {"small": (7, 45), "mid": (64, 96), "big": (96, 200)}
    cases = [
        ("small", "nf4", 64, False), ("small", "fp4", 64, True), ("small", "nf4", 32, True),
        ("mid", "nf4", 64, True), ("mid", "fp4", 64, False), ("mid", "nf4", 128, False),
        ("big", "nf4", 64, True), ("big", "fp4", 64, True), ("big", "nf4", 4096, True),
        ("big", "fp4", 32, False),
    ]
    for i, (shape_name, kind, blocksize, dq) in enumerate(cases):
        w = weights(*shapes[shape_name], seed=100 + i)
        packed, state = F.quantize_4bit(w, blocksize=blocksize, compress_statistics=dq, quant_type=kind)
        name = f"{shape_name}_{kind}_{blocksize}{'_dq' if dq else ''}"
        out[f"{name}.input"] = w
        out[f"{name}.packed"] = packed.reshape(-1)
        if dq:
            out[f"{name}.qabsmax"] = state.absmax
            out[f"{name}.absmax2"] = state.state2.absmax
            out[f"{name}.offset"] = state.offset.reshape(1).float()
        else:
            out[f"{name}.absmax"] = state.absmax
        out[f"{name}.dequant"] = F.dequantize_4bit(packed, state)
        print(name, "blocks", (w.numel() + blocksize - 1) // blocksize,
              "max err", (out[f"{name}.dequant"] - w).abs().max().item())
    return out


def int8_cases() -> dict[str, torch.Tensor]:
    out = {}
    for i, (rows, cols) in enumerate([(7, 45), (64, 96)]):
        w = weights(rows, cols, seed=200 + i)
        codes, stats, _ = torch.ops.bitsandbytes.int8_vectorwise_quant.default(w.clone())
        name = f"int8_{rows}x{cols}"
        out[f"{name}.input"] = w
        out[f"{name}.codes"] = codes
        out[f"{name}.stats"] = stats
        out[f"{name}.dequant"] = torch.ops.bitsandbytes.int8_vectorwise_dequant.default(codes, stats)
    return out


# transformers matches skip patterns from the start of the module name (or as a suffix).
SKIP = ["model.vision_model", "model.connector", "lm_head"]


def model_logits() -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    fx = load_file(str(FIXTURES / "model" / "smolvlm.safetensors"))
    inputs = dict(
        input_ids=fx["batch_input_ids"], attention_mask=fx["batch_attention_mask"],
        pixel_values=fx["batch_pixel_values"], pixel_attention_mask=fx["batch_pixel_attention_mask"],
    )
    out = {}
    configs = {
        "f32": None,
        "nf4_dq": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                     bnb_4bit_compute_dtype=torch.float32,
                                     llm_int8_skip_modules=SKIP),
        "fp4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=False,
                                  bnb_4bit_compute_dtype=torch.float32,
                                  llm_int8_skip_modules=SKIP),
    }
    for name, config in configs.items():
        model = AutoModelForImageTextToText.from_pretrained(
            str(CHECKPOINTS["smolvlm"]), dtype=torch.float32, attn_implementation="eager",
            quantization_config=config, device_map="cpu" if config else None,
        )
        model.eval()
        quantised = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
        for m in quantised:
            # Keep bitsandbytes' plain dequantise-then-matmul path: its AVX512-bf16 CPU kernel
            # repacks the statistics in bf16 first, which is a CPU speed trade, not the format.
            m.support_avx512bf16_for_cpu = False
        with torch.no_grad():
            out[f"{name}.logits"] = model(**inputs).logits.float()
        print(name, "4-bit linears", len(quantised))
    mask = inputs["attention_mask"].bool()
    for name in ("nf4_dq", "fp4"):
        print(name, "vs f32 max abs logit diff",
              (out[f"{name}.logits"] - out["f32.logits"])[mask].abs().max().item(),
              "f32 logit range", out["f32.logits"][mask].abs().max().item())
    del out["f32.logits"]  # tests/fixtures/model/smolvlm.safetensors has them
    return out


def load_4bit(config):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(
        str(CHECKPOINTS["smolvlm"]), dtype=torch.float32, attn_implementation="eager",
        quantization_config=config, device_map="cpu",
    )
    for m in model.modules():
        if type(m).__name__ == "Linear4bit":
            m.support_avx512bf16_for_cpu = False
    return model


def qlora_grads() -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import BitsAndBytesConfig

    fx = load_file(str(FIXTURES / "model" / "smolvlm.safetensors"))
    inputs = dict(
        input_ids=fx["batch_input_ids"], attention_mask=fx["batch_attention_mask"],
        pixel_values=fx["batch_pixel_values"], pixel_attention_mask=fx["batch_pixel_attention_mask"],
        labels=fx["batch_labels"],
    )
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=SKIP)
    out = {}
    for case in ("smolvlm-lora", "smolvlm-dora"):
        model = load_4bit(config)
        peft_model = PeftModel.from_pretrained(model, str(FIXTURES / "peft" / case), is_trainable=True)
        peft_model.eval()
        saved = load_file(str(FIXTURES / "peft" / case / "adapter_model.safetensors"))
        result = peft_model(**inputs)
        result.loss.backward()
        params = dict(peft_model.named_parameters())
        for key in saved:
            pname = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight").replace(
                ".lora_magnitude_vector", ".lora_magnitude_vector.default.weight")
            if key.startswith("base_model.model.lm_head."):
                pname = "base_model.model.lm_head.modules_to_save.default." + key[len("base_model.model.lm_head."):]
            out[f"{case}.grad.{key}"] = params[pname].grad.detach().clone()
        out[f"{case}.logits"] = result.logits.detach().float()
        out[f"{case}.loss"] = result.loss.detach().reshape(1).float()
        print(case, "QLoRA loss", result.loss.item(), "adapter tensors", len(saved))
    return out


def main() -> None:
    seed_all(7)
    write_tensors(OUT / "bitsandbytes.safetensors", {**four_bit_cases(), **int8_cases()})
    write_tensors(OUT / "model-4bit.safetensors", model_logits())
    write_tensors(OUT / "qlora.safetensors", qlora_grads())


if __name__ == "__main__":
    main()
