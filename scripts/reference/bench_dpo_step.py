"""PyTorch side of `cargo bench --bench dpo_step`: one DPO step per preference pair as TRL's
DPOTrainer computes it (batch [chosen; rejected] with the image and prompt in both rows, the
reference forward with adapters disabled under no_grad, sigmoid loss, backward, AdamW) on the
SmolVLM-256M architecture with PEFT LoRA r=8 on the text attention. Writes
target/bench-reference/dpo_step.json.
"""

import torch
import torch.nn.functional as F

from bench_common import lora_256m_model, one_tile_prompt, peak_rss_mib, time_it, write_result

def main() -> None:
    model = lora_256m_model()
    prompt = one_tile_prompt()[0]
    chosen, rejected = torch.arange(200, 208), torch.arange(300, 308)
    ids = torch.stack([torch.cat([prompt, chosen]), torch.cat([prompt, rejected])])
    mask = torch.zeros_like(ids)
    mask[:, len(prompt):] = 1
    labels = ids.masked_fill(mask == 0, -100)
    pixels = (torch.rand(1, 1, 3, 512, 512) * 2 - 1).repeat(2, 1, 1, 1, 1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def logps(out):
        logits = out.logits[:, :-1].float()
        lp = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:, None]).squeeze(-1)
        return (lp * mask[:, 1:]).sum(-1)

    def step():
        pol = logps(model(input_ids=ids, pixel_values=pixels))
        with torch.no_grad(), model.disable_adapter():
            ref = logps(model(input_ids=ids, pixel_values=pixels))
        loss = -F.logsigmoid(0.1 * ((pol[0] - ref[0]) - (pol[1] - ref[1])))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    write_result("dpo_step", {"trl": dict(time_it(step, warmup=1, runs=3), peak_rss_mib=peak_rss_mib())})


if __name__ == "__main__":
    main()
