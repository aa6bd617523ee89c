"""Build the two tiny random SmolVLM-architecture checkpoints used by the Rust tests.

* tests/fixtures/tiny-smolvlm   model_type "smolvlm", v5-style config (rope_parameters), f32,
                                one model.safetensors, chat_template.jinja, SmolVLMProcessor files.
* tests/fixtures/tiny-idefics3  model_type "idefics3", v4-style config (rope_theta inside
                                text_config), bf16, sharded safetensors + index, chat template in
                                chat_template.json, Idefics3Processor files.

Both share one small byte-level BPE tokenizer (trained here on chart-QA-like text) with the
SmolVLM special tokens. Weights are seeded and scaled so logits are peaked (greedy decoding is
then stable against float noise).

Run from the repository root:  python scripts/reference/make_tiny_checkpoints.py
"""

from __future__ import annotations

import json
import math
import shutil

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    PreTrainedTokenizerFast,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
    SmolVLMProcessor,
)
from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

from common import CHECKPOINTS, FIXTURES, seed_all

CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'] is string %}{{': ' + message['content']}}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

CORPUS = [
    "What is the value of the highest bar? Which bar is the highest? How many bars are there?",
    "What is the value of the lowest point in the line chart? The answer is 42.",
    "Which year had the largest share of sales? In 2019 the revenue was 3.5 million.",
    "Describe this image. A red square on a blue background. A bar chart with five bars.",
    "The chart shows apples, bananas, cherries, dates and figs. Green, blue, orange, purple.",
    "Yes No True False zero one two three four five six seven eight nine ten percent",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 40 50 60 70 80 90 100",
    "User: Assistant: System: You are a helpful assistant that reads charts and plots.",
    "Question: what is shown in the picture? Answer briefly with a single word or number.",
]

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
IMAGE_TOKENS = (
    ["<global-img>"]
    + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    + ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        model_max_length=8192,
    )
    fast.add_special_tokens({"additional_special_tokens": IMAGE_TOKENS})
    fast.eos_token = "<end_of_utterance>"
    return fast


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Re-draw every parameter so activations are O(1) and logits peaked."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name or "position_embedding" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif "lm_head" in name:
                p.copy_(3.0 * torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def smolvlm_checkpoint(tokenizer: PreTrainedTokenizerFast) -> None:
    out = CHECKPOINTS["smolvlm"]
    shutil.rmtree(out, ignore_errors=True)
    tile, patch, scale = 32, 4, 2
    config = SmolVLMConfig(
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=tile, patch_size=patch,
        ),
        text_config=dict(
            model_type="llama", vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
            num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
            max_position_embeddings=2048, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        scale_factor=scale,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    config.eos_token_id = tokenizer.eos_token_id
    model = SmolVLMForConditionalGeneration(config)
    randomise(model, seed=1)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out)
    seq_len = (tile // patch) ** 2 // scale**2
    image_processor = SmolVLMImageProcessorPil(
        size={"longest_edge": 3 * tile}, max_image_size={"longest_edge": tile}, resample=1,
        do_image_splitting=True,
    )
    video_processor = SmolVLMVideoProcessor(
        size={"longest_edge": 3 * tile}, max_image_size={"longest_edge": tile}
    )
    processor = SmolVLMProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        image_seq_len=seq_len, chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)


def idefics3_checkpoint(tokenizer: PreTrainedTokenizerFast) -> None:
    out = CHECKPOINTS["idefics3"]
    shutil.rmtree(out, ignore_errors=True)
    tile, patch, scale = 32, 5, 3  # 32 is not a multiple of 5: the last 2 pixel rows/cols drop
    config = Idefics3Config(
        vision_config=dict(
            hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
            image_size=tile, patch_size=patch,
        ),
        text_config=dict(
            model_type="llama", vocab_size=len(tokenizer) + 4, hidden_size=32, intermediate_size=64,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, head_dim=8,
            max_position_embeddings=1024, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 273768.0},
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        scale_factor=scale,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Idefics3ForConditionalGeneration(config).to(torch.bfloat16)
    randomise(model, seed=2)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, max_shard_size="60KB")
    to_v4_config(out / "config.json")
    seq_len = (tile // patch) ** 2 // scale**2
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile}, resample=1,
        do_image_splitting=True,
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    to_v4_processor_files(out)


def to_v4_processor_files(out) -> None:
    """Lay the processor files out as transformers 4.x did: the image processor in
    preprocessor_config.json, processor_config.json with image_seq_len only, and the chat
    template in chat_template.json."""
    proc = json.loads((out / "processor_config.json").read_text())
    image = proc.pop("image_processor")
    image["processor_class"] = proc["processor_class"]
    (out / "preprocessor_config.json").write_text(json.dumps(image, indent=2, sort_keys=True) + "\n")
    (out / "processor_config.json").write_text(json.dumps(proc, indent=2, sort_keys=True) + "\n")
    jinja = out / "chat_template.jinja"
    if jinja.exists():
        (out / "chat_template.json").write_text(
            json.dumps({"chat_template": jinja.read_text()}, indent=2) + "\n"
        )
        jinja.unlink()


def to_v4_config(path) -> None:
    """Rewrite a v5 config.json the way transformers 4.x wrote it: rope_theta in text_config."""
    cfg = json.loads(path.read_text())
    text = cfg["text_config"]
    rope = text.pop("rope_parameters")
    text["rope_theta"] = rope["rope_theta"]
    text["rope_scaling"] = None
    cfg["transformers_version"] = "4.46.0"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def main() -> None:
    seed_all(0)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    print("vocab", len(tokenizer), "image id", tokenizer.convert_tokens_to_ids("<image>"))
    smolvlm_checkpoint(tokenizer)
    idefics3_checkpoint(build_tokenizer())
    for kind, path in CHECKPOINTS.items():
        size = sum(f.stat().st_size for f in path.iterdir())
        print(f"{kind}: {path} {size / 1024:.0f} KiB: {sorted(f.name for f in path.iterdir())}")


if __name__ == "__main__":
    main()
