"""PyTorch side of `cargo bench --bench epochs`: three epochs of PEFT LoRA (r=8, text
attention, AdamW, batch 1) on 16 512x512 images with the SmolVLM-256M architecture (random
weights, f32, one tile each, 16 labelled tokens). TRL has no feature cache, so the vision tower
runs every epoch. Writes target/bench-reference/epochs.json (seconds per epoch, peak RSS).
"""

import time

import torch

from bench_common import lora_256m_model, one_tile_prompt, peak_rss_mib, write_result

def main() -> None:
    model = lora_256m_model()
    ids = one_tile_prompt()
    labels = torch.full_like(ids, -100)
    labels[:, -16:] = ids[:, -16:]
    # Pixel content does not change the work; 16 distinct images.
    images = [torch.rand(1, 1, 3, 512, 512) * 2 - 1 for _ in range(16)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)
    epochs = []
    for _ in range(3):
        start = time.perf_counter()
        for pixels in images:
            out = model(input_ids=ids, pixel_values=pixels, labels=labels)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        epochs.append(time.perf_counter() - start)
    write_result("epochs", {"epochs_s": epochs, "peak_rss_mib": peak_rss_mib()})


if __name__ == "__main__":
    main()
