"""Record transformers' outputs on the tiny checkpoints: tests/fixtures/model/<kind>.safetensors.

For each checkpoint (smolvlm, idefics3), in float32 with eager attention:
* partial_*        vision tower output for 2 tiles, the second with a partial pixel mask
                   (exercises NaViT position ids and key masking of padded patches)
* batch_*          a left-padded batch of 2 with 3 tile slots (sample 1 has 2 padding tiles):
                   pixel values/mask, input ids, attention mask, labels (prompt, image tokens and
                   padding set to -100), vision output, connector output, logits, loss
* gen_*            greedy generation (12 new tokens) from a batch of 2 left-padded prompts with
                   images, as `model.generate(do_sample=False)` computes it (position ids from the
                   attention mask), and from a text-only prompt

Run from the repository root:  python scripts/reference/model_fixtures.py
"""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from common import CHECKPOINTS, FIXTURES, load_model, seed_all, write_tensors


def image_span(tok, rows: int, cols: int, seq_len: int) -> list[int]:
    """Expanded prompt tokens of one image, as SmolVLM's processor writes them (SPEC §6)."""
    fake = tok.convert_tokens_to_ids("<fake_token_around_image>")
    image = tok.convert_tokens_to_ids("<image>")
    glob = tok.convert_tokens_to_ids("<global-img>")
    newline = tok.encode("\n", add_special_tokens=False)
    ids: list[int] = []
    if rows == 0 and cols == 0:
        return [fake, glob] + [image] * seq_len + [fake]
    for r in range(1, rows + 1):
        for c in range(1, cols + 1):
            ids += [fake, tok.convert_tokens_to_ids(f"<row_{r}_col_{c}>")] + [image] * seq_len
        ids += newline
    ids += newline + [fake, glob] + [image] * seq_len + [fake]
    return ids


def sample_ids(tok, rows, cols, seq_len, question, answer):
    """(ids, prompt_len): a one-image user turn followed by the assistant's answer."""
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    prompt = [tok.bos_token_id] + enc("User:") + image_span(tok, rows, cols, seq_len)
    prompt += enc(question) + [tok.eos_token_id] + enc("\nAssistant:")
    completion = enc(" " + answer) + [tok.eos_token_id] + enc("\n")
    return prompt + completion, len(prompt)


def left_pad(seqs: list[list[int]], pad: int):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return ids, mask


def record(kind: str) -> None:
    seed_all(10)
    model = load_model(kind)
    tok = AutoTokenizer.from_pretrained(str(CHECKPOINTS[kind]))
    cfg = model.config
    tile = cfg.vision_config.image_size
    patch = cfg.vision_config.patch_size
    seq_len = (tile // patch) ** 2 // cfg.scale_factor**2
    out: dict[str, torch.Tensor] = {}

    # --- vision tower with a partial patch mask -------------------------------------------
    pix = torch.randn(2, 3, tile, tile)
    pmask = torch.ones(2, tile, tile, dtype=torch.long)
    pmask[1, tile * 3 // 4 :, :] = 0
    pmask[1, :, tile // 2 + 1 :] = 0
    pix[1][:, pmask[1] == 0] = 0.0
    sub = pmask.unfold(1, patch, patch).unfold(2, patch, patch)
    patch_mask = sub.sum(dim=(-1, -2)) > 0
    with torch.no_grad():
        vis = model.model.vision_model(pixel_values=pix, patch_attention_mask=patch_mask).last_hidden_state
    out["partial_pixel_values"] = pix
    out["partial_pixel_attention_mask"] = pmask
    out["partial_vision_out"] = vis

    # --- padded batch of 2 with several tiles ----------------------------------------------
    n_tiles = 3
    pixel_values = torch.zeros(2, n_tiles, 3, tile, tile)
    pixel_values[0] = torch.rand(n_tiles, 3, tile, tile) * 2 - 1  # 1x2 grid + global image
    pixel_values[1, 0] = torch.rand(3, tile, tile) * 2 - 1  # one unsplit image, 2 padding tiles
    pixel_attention_mask = torch.zeros(2, n_tiles, tile, tile, dtype=torch.long)
    pixel_attention_mask[0] = 1
    pixel_attention_mask[1, 0] = 1
    s0, p0 = sample_ids(tok, 1, 2, seq_len, "Which bar is the highest?", "The answer is 42.")
    s1, p1 = sample_ids(tok, 0, 0, seq_len, "How many bars?", "five")
    input_ids, attention_mask = left_pad([s0, s1], tok.pad_token_id)
    labels = input_ids.clone()
    labels[attention_mask == 0] = -100
    width = input_ids.shape[1]
    labels[0, : width - len(s0) + p0] = -100
    labels[1, : width - len(s1) + p1] = -100
    with torch.no_grad():
        res = model(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
            pixel_attention_mask=pixel_attention_mask, labels=labels,
        )
        real = pixel_values.view(-1, 3, tile, tile)
        keep = (real == 0).sum(dim=(1, 2, 3)) != real[0].numel()
        feats = model.model.vision_model(
            pixel_values=real[keep],
            patch_attention_mask=torch.ones(int(keep.sum()), tile // patch, tile // patch, dtype=torch.bool),
        ).last_hidden_state
        conn = model.model.connector(feats)
    out["batch_pixel_values"] = pixel_values
    out["batch_pixel_attention_mask"] = pixel_attention_mask
    out["batch_input_ids"] = input_ids
    out["batch_attention_mask"] = attention_mask
    out["batch_labels"] = labels
    out["batch_vision_out"] = feats
    out["batch_connector_out"] = conn
    out["batch_logits"] = res.logits.float()
    out["batch_loss"] = res.loss.reshape(1).float()
    print(kind, "loss", res.loss.item(), "logits", tuple(res.logits.shape))

    # --- greedy generation ------------------------------------------------------------------
    g0 = s0[:p0]
    g1 = s1[:p1]
    gen_ids, gen_mask = left_pad([g0, g1], tok.pad_token_id)
    with torch.no_grad():
        gen = model.generate(
            input_ids=gen_ids, attention_mask=gen_mask, pixel_values=pixel_values,
            pixel_attention_mask=pixel_attention_mask, max_new_tokens=12, do_sample=False,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
    new = gen[:, gen_ids.shape[1]:]
    out["gen_input_ids"] = gen_ids
    out["gen_attention_mask"] = gen_mask
    out["gen_new_tokens"] = new
    print(kind, "generated", new.tolist())

    text_prompt = [tok.bos_token_id] + tok.encode("User: What is the value of the highest bar?", add_special_tokens=False)
    text_prompt += [tok.eos_token_id] + tok.encode("\nAssistant:", add_special_tokens=False)
    with torch.no_grad():
        gen_t = model.generate(
            input_ids=torch.tensor([text_prompt]), max_new_tokens=12, do_sample=False,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
    out["gen_text_input_ids"] = torch.tensor([text_prompt])
    out["gen_text_new_tokens"] = gen_t[:, len(text_prompt):]
    print(kind, "generated (text only)", gen_t[:, len(text_prompt):].tolist())

    write_tensors(FIXTURES / "model" / f"{kind}.safetensors", out)


def main() -> None:
    for kind in CHECKPOINTS:
        record(kind)


if __name__ == "__main__":
    main()
