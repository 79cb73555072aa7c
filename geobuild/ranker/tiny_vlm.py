"""Build a tiny, randomly initialised Qwen2-VL model folder, offline (a test and CI fixture).

The folder has the same layout as a downloaded ``Qwen/Qwen2-VL-2B-Instruct`` (``config.json``,
``model.safetensors``, tokenizer, processor and chat template), so it loads through the very same
``--vlm-path`` code users run with real weights. Everything is built locally: a byte-level BPE
tokenizer trained on a few strings with the special tokens Qwen2-VL's processor and chat template
use, a ``Qwen2VLImageProcessor`` with a 4-pixel patch and a small pixel budget (an image becomes a
handful of tokens), and a 2-layer, 64-wide language model with a 1-block vision tower.

The weights are random: the model is for exercising code paths (shapes, padding, multi-image
prompts, LoRA, save/reload), not for ranking anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import require

#: special tokens Qwen2-VL's processor and chat template rely on (pad first, so it gets id 0)
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: Qwen2-VL's chat layout: a default system turn, images as <|vision_start|><|image_pad|><|vision_end|>
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = (
    "You are a helpful assistant.",
    "system user assistant",
    "The first image is a photo. How close is the place at latitude: 48.8566, longitude: 2.3522 "
    "(Paris Ile-de-France France) to where this photo was taken?",
    "The second image was taken at that place. Negative examples: latitude: -33.86, longitude: 151.21 "
    "Sydney New South Wales Australia; latitude: 40.71, longitude: -74.0 New York United States",
    "0123456789 -.,:;() abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
)

#: tiny sizes: hidden 64, 2 layers, 4 heads (2 kv), head_dim 16 -> M-RoPE sections sum to 8
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
VISION = dict(depth=1, embed_dim=32, num_heads=2, mlp_ratio=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2)
#: pixel budget: at most 32x32 pixels -> at most 8x8 patches -> at most 16 image tokens
MIN_PIXELS, MAX_PIXELS = 8 * 8, 32 * 32


def build_tiny_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer (any text encodes) with Qwen2-VL's special tokens."""
    tk = require("tokenizers", "ranker")
    transformers = require("transformers", "ranker")

    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_CORPUS), trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
    )


def build_tiny_processor():
    """A ``Qwen2VLProcessor`` (tokenizer + image/video processors + chat template), built offline."""
    transformers = require("transformers", "ranker")

    vision = dict(
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        patch_size=VISION["patch_size"],
        merge_size=VISION["spatial_merge_size"],
        temporal_patch_size=VISION["temporal_patch_size"],
    )
    return transformers.Qwen2VLProcessor(
        image_processor=transformers.Qwen2VLImageProcessor(**vision),
        video_processor=transformers.Qwen2VLVideoProcessor(**vision),
        tokenizer=build_tiny_tokenizer(),
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(tokenizer):
    """A ``Qwen2VLConfig`` with tiny sizes whose special-token ids match ``tokenizer``."""
    transformers = require("transformers", "ranker")

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]  # temporal, height, width; sums to head_dim/2
    text = dict(
        TEXT,
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(VISION, hidden_size=TEXT["hidden_size"])
    return transformers.Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def build_tiny_vlm(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random Qwen2-VL model + processor to ``out_dir`` (loadable with ``--vlm-path``)."""
    torch = require("torch", "ml")
    transformers = require("transformers", "ranker")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = build_tiny_processor()
    config = tiny_config(processor.tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.Qwen2VLForConditionalGeneration(config)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


__all__ = ["build_tiny_vlm", "build_tiny_processor", "build_tiny_tokenizer", "tiny_config", "SPECIAL_TOKENS", "CHAT_TEMPLATE"]
