"""Record transformers' processor (PIL image backend) and end-to-end generations on the tiny
checkpoints: tests/fixtures/processor/*.

* images/        small test images: RGB PNG (landscape, portrait, tiny, exactly one tile), JPEG,
                 WebP, RGBA PNG (alpha composited on white) and grayscale PNG
* <kind>.json    the cases: messages, image files, split flag; and greedy generations
* <kind>.safetensors  per case: input_ids, attention_mask, pixel_values (float16 to keep the
                 files small; the tolerance is 100x the f16 rounding), pixel_attention_mask,
                 rows, cols

Run from the repository root:  python scripts/reference/processor_fixtures.py
"""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoTokenizer,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    SmolVLMImageProcessorPil,
    SmolVLMProcessor,
)
from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

from common import CHECKPOINTS, FIXTURES, seed_all, write_json, write_tensors

OUT = FIXTURES / "processor"
IMAGES = OUT / "images"


def pattern(w: int, h: int, seed: int) -> np.ndarray:
    """Gradients, stripes and noise: content that exercises the resampling filter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 / max(w - 1, 1)).astype(np.int64)
    g = ((np.sin(x / 3.0) + np.cos(y / 2.0)) * 60 + 128).astype(np.int64)
    b = ((x // 4 + y // 4) % 2 * 200 + rng.integers(0, 55, (h, w))).astype(np.int64)
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def make_images() -> dict[str, str]:
    IMAGES.mkdir(parents=True, exist_ok=True)
    files = {
        "landscape.png": Image.fromarray(pattern(80, 48, 1)),
        "portrait.png": Image.fromarray(pattern(37, 90, 2)),
        "tiny.png": Image.fromarray(pattern(5, 3, 3)),
        "one_tile.png": Image.fromarray(pattern(32, 32, 4)),
        "photo.jpg": Image.fromarray(pattern(150, 100, 5)),
        "chart.webp": Image.fromarray(pattern(70, 70, 6)),
        "gray.png": Image.fromarray(pattern(50, 30, 7)[..., 1], mode="L"),
    }
    rgba = np.concatenate([pattern(40, 60, 8), np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (60, 1))[..., None]], -1)
    files["alpha.png"] = Image.fromarray(rgba, mode="RGBA")
    for name, img in files.items():
        if name.endswith(".jpg"):
            img.save(IMAGES / name, quality=90)
        elif name.endswith(".webp"):
            img.save(IMAGES / name, lossless=True)
        else:
            img.save(IMAGES / name)
    return {name: str(IMAGES / name) for name in files}


def pil_processor(kind: str):
    """The checkpoint's processor with the PIL image backend (SPEC §5)."""
    path = str(CHECKPOINTS[kind])
    tok = AutoTokenizer.from_pretrained(path)
    if kind == "smolvlm":
        ip = SmolVLMImageProcessorPil.from_pretrained(path)
        vp = SmolVLMVideoProcessor.from_pretrained(path)
        return SmolVLMProcessor(image_processor=ip, tokenizer=tok, video_processor=vp,
                                image_seq_len=16, chat_template=open(f"{path}/chat_template.jinja").read())
    ip = Idefics3ImageProcessorPil.from_pretrained(path)
    template = json.load(open(f"{path}/chat_template.json"))["chat_template"]
    return Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=template)


def user(n_images: int, text: str) -> dict:
    return {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}


CASES = [
    # name, images, split, conversations (one per sample), add_generation_prompt
    ("landscape_split", [["landscape.png"]], True, [[user(1, "What is the highest bar?")]], True),
    ("landscape_nosplit", [["landscape.png"]], False, [[user(1, "What is the highest bar?")]], True),
    ("portrait_split", [["portrait.png"]], True, [[user(1, "Describe it.")]], True),
    ("tiny_split", [["tiny.png"]], True, [[user(1, "Hi")]], True),
    ("one_tile_split", [["one_tile.png"]], True, [[user(1, "Hi")]], True),
    ("jpeg_split", [["photo.jpg"]], True, [[user(1, "Photo?")]], True),
    ("webp_nosplit", [["chart.webp"]], False, [[user(1, "Chart?")]], True),
    ("alpha_split", [["alpha.png"]], True, [[user(1, "Transparent?")]], True),
    ("gray_split", [["gray.png"]], True, [[user(1, "Gray?")]], True),
    ("two_images", [["landscape.png", "portrait.png"]], True,
     [[user(2, "Compare the two charts.")]], True),
    ("multi_turn", [["one_tile.png"]], True,
     [[{"role": "system", "content": [{"type": "text", "text": "You read charts."}]},
       user(1, "How many bars?"),
       {"role": "assistant", "content": [{"type": "text", "text": "Five."}]},
       user(0, "And the highest?")]], False),
    ("batch_of_two", [["landscape.png"], ["one_tile.png", "gray.png"]], True,
     [[user(1, "First?")], [user(2, "Second?")]], True),
]


def record(kind: str, paths: dict[str, str]) -> None:
    proc = pil_processor(kind)
    tensors: dict[str, torch.Tensor] = {}
    cases = []
    for name, image_names, split, conversations, gen_prompt in CASES:
        texts = [proc.apply_chat_template(c, add_generation_prompt=gen_prompt) for c in conversations]
        images = [[Image.open(paths[n]) for n in sample] for sample in image_names]
        enc = proc(text=texts, images=images, do_image_splitting=split, padding=True, return_tensors="pt")
        grid = proc.image_processor(images, do_image_splitting=split, return_row_col_info=True)
        tensors[f"{name}_input_ids"] = enc["input_ids"]
        tensors[f"{name}_attention_mask"] = enc["attention_mask"]
        tensors[f"{name}_pixel_values"] = enc["pixel_values"].to(torch.float16)
        tensors[f"{name}_pixel_attention_mask"] = enc["pixel_attention_mask"]
        cases.append({
            "name": name, "images": image_names, "split": split, "conversations": conversations,
            "add_generation_prompt": gen_prompt, "texts": texts,
            "rows": grid["rows"], "cols": grid["cols"], "padding_side": proc.tokenizer.padding_side,
        })

    # End to end: chat + image -> greedy generation -> decoded text.
    model = AutoModelForImageTextToText.from_pretrained(str(CHECKPOINTS[kind]), dtype=torch.float32,
                                                       attn_implementation="eager").eval()
    generations = []
    for image_name, question, split in [("landscape.png", "What is the highest bar?", True),
                                        ("photo.jpg", "Describe this image.", False),
                                        ("alpha.png", "Which year?", True)]:
        text = proc.apply_chat_template([user(1, question)], add_generation_prompt=True)
        enc = proc(text=[text], images=[[Image.open(paths[image_name])]], do_image_splitting=split,
                   return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=12, do_sample=False)
        new = out[0, enc["input_ids"].shape[1]:]
        generations.append({
            "image": image_name, "prompt": question, "split": split, "new_tokens": new.tolist(),
            "text": proc.decode(new, skip_special_tokens=True),
        })
        print(kind, image_name, repr(generations[-1]["text"]))

    write_tensors(OUT / f"{kind}.safetensors", tensors)
    write_json(OUT / f"{kind}.json", {"cases": cases, "generations": generations})


def main() -> None:
    seed_all(0)
    paths = make_images()
    for kind in CHECKPOINTS:
        record(kind, paths)


if __name__ == "__main__":
    main()
