"""bitsandbytes' 8-bit blockwise quantisation and AdamW8bit on the CPU (0.50.2), for
tests/adamw8bit.rs: codes and absmax of `quantize_blockwise` with the signed and unsigned dynamic
maps (blocksize 256), and 5 `AdamW8bit` steps (lr 1e-3, weight decay 0.01) on a 4400-element
tensor (8-bit states, a partial last block) and a 1000-element one (f32 states, under
min_8bit_size), with the parameters and states after every step."""

from pathlib import Path

import bitsandbytes as bnb
import bitsandbytes.functional as F
import torch
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[2] / "tests/fixtures/optim/adamw8bit.safetensors"


def main():
    g = torch.Generator().manual_seed(0)
    out = {}
    signed = F.create_dynamic_map(signed=True)
    unsigned = F.create_dynamic_map(signed=False)
    x = torch.randn(1000, generator=g)
    x[5] = 0.0
    for name, code, values in [("signed", signed, x), ("unsigned", unsigned, x.square())]:
        q, state = F.quantize_blockwise(values, code=code, blocksize=256)
        out[f"quant.{name}.input"] = values.clone()
        out[f"quant.{name}.codes"] = q.to(torch.float32)
        out[f"quant.{name}.absmax"] = state.absmax.clone()
        out[f"quant.{name}.dequant"] = F.dequantize_blockwise(q, state, blocksize=256)
    params = {
        "big": torch.nn.Parameter(torch.randn(4400, generator=g)),
        "small": torch.nn.Parameter(torch.randn(1000, generator=g)),
    }
    for k, p in params.items():
        out[f"adam.{k}.init"] = p.detach().clone()
    opt = bnb.optim.AdamW8bit(list(params.values()), lr=1e-3, weight_decay=0.01)
    for step in range(1, 6):
        for k, p in params.items():
            grad = torch.randn(p.shape, generator=g) * 0.1
            out[f"adam.{k}.grad{step}"] = grad.clone()
            p.grad = grad
        opt.step()
        for k, p in params.items():
            out[f"adam.{k}.param{step}"] = p.detach().clone()
    state = opt.state[params["big"]]
    out["adam.big.state1"] = state["state1"].to(torch.float32)
    out["adam.big.absmax1"] = state["absmax1"].clone()
    out["adam.big.state2"] = state["state2"].to(torch.float32)
    out["adam.big.absmax2"] = state["absmax2"].clone()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(OUT))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes), bitsandbytes {bnb.__version__}")


if __name__ == "__main__":
    main()
