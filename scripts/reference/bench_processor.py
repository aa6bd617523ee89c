"""PyTorch side of `cargo bench --bench processor`: transformers' SmolVLM processor with the
SmolVLM-256M image settings (longest edge 2048, 512 tiles, splitting on, LANCZOS) on one
512x512 and one 1024x768 RGB image, PIL and torchvision backends.

Writes target/bench-reference/processor.json. Run from the repository root.
"""

import numpy as np
from PIL import Image
from transformers import AutoTokenizer, SmolVLMImageProcessor, SmolVLMImageProcessorPil, SmolVLMProcessor
from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

from bench_common import time_it, write_result
from common import CHECKPOINTS

SETTINGS = dict(size={"longest_edge": 2048}, max_image_size={"longest_edge": 512}, resample=1,
                do_image_splitting=True)


def image(w: int, h: int) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8))


def main() -> None:
    tok = AutoTokenizer.from_pretrained(str(CHECKPOINTS["smolvlm"]))
    template = open(CHECKPOINTS["smolvlm"] / "chat_template.jinja").read()
    text = "<|im_start|>User:<image>What is the highest bar?<end_of_utterance>\nAssistant:"
    result = {}
    for backend, cls in [("pil", SmolVLMImageProcessorPil), ("torchvision", SmolVLMImageProcessor)]:
        proc = SmolVLMProcessor(image_processor=cls(**SETTINGS), tokenizer=tok,
                                video_processor=SmolVLMVideoProcessor(**SETTINGS), image_seq_len=64,
                                chat_template=template)
        for w, h in [(512, 512), (1024, 768)]:
            img = image(w, h)
            t = time_it(lambda: proc(text=[text], images=[[img]]), warmup=1, runs=5)
            result[f"{backend}_{w}x{h}_images_per_s"] = 1.0 / t["median_s"]
    write_result("processor", result)


if __name__ == "__main__":
    main()
