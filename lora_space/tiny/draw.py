"""The drawing `tiny` model: FLUX's classes, small, pre-trained to draw simple scenes.

`LORA_SPACE_BASE_MODEL=tiny` (the default off a GPU) runs this model: a FluxPipeline with a
FluxTransformer2DModel, CLIP and T5 text encoders, the colour-carrying VAE of `tiny.py` and a
flow-match scheduler, whose transformer and text encoders were pre-trained with the trainer's
own flow-matching loss on drawn scenes ("a red circle on a blue background, top left";
`lora_space.tiny.scenes`, `lora_space.train.pretrain_tiny`). Its weights ship in the repo
(`tiny_draw.safetensors` beside this module, fp16, a few MB) and load with no network and no training.
The random `tiny-random` model (`tiny.build_tiny_pipeline`) stays for tests that need no weights.

Two choices keep it small and quick to pre-train on a CPU:
- Word-level tokenizers: every caption word is one token of both tokenizers (a BPE whose
  merges spell each word, and a unigram model whose pieces are the words); other text falls
  back to single characters, as a real tokenizer does with rare words.
- A T5 that reads each word on its own: its attention output projections are zero (and are
  not trained), so each position's output depends on its token alone and the 500-odd padding
  tokens FluxPipeline adds are all alike. Word order reaches the transformer through CLIP,
  whose pooled vector (caption-level, position-aware) conditions every block. That the
  padding tokens are alike lets pre-training stand one of them in for all
  (`tiny_pretrain.PaddedText`), at a thirtieth of the cost of 512 T5 tokens; generation
  runs the ordinary pipeline over all 512.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from lora_space.lora.export import save_tensors
from lora_space.lora.safefile import load_lora_file
from lora_space.tiny.model import VAE_CONFIG, colour_vae
from lora_space.tiny.scenes import words

WEIGHTS_FILE = Path(__file__).with_name("tiny_draw.safetensors")
DRAW_SEED = 0
DEFAULT_STEPS = 8  # the Generate tab's default in this mode: sharp shapes in about a second on 2 cores
from lora_space.core.tiny_configs import DRAWING_CLIP as CLIP_CONFIG
from lora_space.core.tiny_configs import DRAWING_T5 as T5_CONFIG
from lora_space.core.tiny_configs import DRAWING_TRANSFORMER as TRANSFORMER_CONFIG

T5_MAX_LENGTH = 512
CHARACTERS = string.ascii_lowercase + string.digits + string.punctuation  # the fallback for unknown words


def bpe_merges(vocabulary: list[str]) -> list[tuple[str, str]]:
    """BPE merges that spell each word of `vocabulary` as one token (`word</w>`), learned as BPE
    learns them: the most frequent adjacent pair first (ties by the pair's text)."""
    spelled = [list(word[:-1]) + [word[-1] + "</w>"] for word in vocabulary if word]
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(pair for symbols in spelled for pair in zip(symbols, symbols[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for index, symbols in enumerate(spelled):
            merged, position = [], 0
            while position < len(symbols):
                if position + 1 < len(symbols) and (symbols[position], symbols[position + 1]) == best:
                    merged.append(symbols[position] + symbols[position + 1])
                    position += 2
                else:
                    merged.append(symbols[position])
                    position += 1
            spelled[index] = merged


def word_clip_tokenizer(vocabulary: list[str]) -> CLIPTokenizer:
    """A CLIP BPE tokenizer in which each word of `vocabulary` is one token; other words are spelled."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in sorted(set(CHARACTERS)):
        vocab.setdefault(symbol, len(vocab))
        vocab.setdefault(symbol + "</w>", len(vocab))
    merges = bpe_merges(vocabulary)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def word_t5_tokenizer(vocabulary: list[str]) -> T5Tokenizer:
    """A unigram tokenizer in which each word of `vocabulary` is one piece; other words are spelled."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -8.0)]
    pieces += [("\u2581" + word, -1.0) for word in vocabulary]
    for symbol in CHARACTERS:
        pieces += [(symbol, -8.0), ("\u2581" + symbol, -9.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def build_drawing_pipeline(weights: str | Path | None = WEIGHTS_FILE, *, dtype: torch.dtype = torch.float32) -> FluxPipeline:
    """The drawing tiny pipeline, with the shipped weights (or random ones for pre-training: `weights=None`).

    The vocabulary and the configs come from the weights file's metadata when there is one, so a
    file always meets the tokenizers and shapes it was trained with.

    Raises:
        LoraFileError, UnsafeFileError: the weights file is missing, not safetensors, or broken.
    """
    tensors, metadata = load_lora_file(weights) if weights is not None else ({}, {})
    vocabulary = json.loads(metadata["words"]) if "words" in metadata else words()
    configs = json.loads(metadata["configs"]) if "configs" in metadata else model_configs()
    clip_tokenizer, t5_tokenizer = word_clip_tokenizer(vocabulary), word_t5_tokenizer(vocabulary)

    torch.manual_seed(DRAW_SEED)
    transformer = FluxTransformer2DModel(**configs["transformer"])
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tokenizer), bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
            pad_token_id=clip_tokenizer.pad_token_id, **configs["clip"],
        )
    )  # fmt: skip
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), **configs["t5"]))
    with torch.no_grad():
        for block in text_encoder_2.encoder.block:
            block.layer[0].SelfAttention.o.weight.zero_()  # each word on its own (module docstring)
    vae = colour_vae(AutoencoderKL(**VAE_CONFIG))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    pipe = FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=t5_tokenizer, transformer=transformer,
    )  # fmt: skip
    if tensors:
        for prefix, module in trained_modules(pipe).items():
            state = {key[len(prefix) + 1 :]: value.float() for key, value in tensors.items() if key.startswith(prefix + ".")}
            module.load_state_dict(state, strict=True)
    for module in (transformer, vae, text_encoder, text_encoder_2):
        module.eval()
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def model_configs() -> dict:
    return {"transformer": TRANSFORMER_CONFIG, "clip": CLIP_CONFIG, "t5": T5_CONFIG}


def trained_modules(pipe: FluxPipeline) -> dict[str, torch.nn.Module]:
    """The modules pre-training changes and the weights file holds, by key prefix (the VAE is built)."""
    return {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}


def save_drawing_weights(pipe: FluxPipeline, path: str | Path, *, vocabulary: list[str], extra: dict[str, str]) -> Path:
    """Write the trained modules in fp16 (the T5's zero projections too) with the vocabulary and configs."""
    tensors = {
        f"{prefix}.{key}": value.detach().to(torch.float16)
        for prefix, module in trained_modules(pipe).items()
        for key, value in module.state_dict().items()
    }
    configs = {"transformer": dict(pipe.transformer.config), "clip": {k: CLIP_CONFIG[k] for k in CLIP_CONFIG}, "t5": T5_CONFIG}
    configs["transformer"] = {key: configs["transformer"][key] for key in TRANSFORMER_CONFIG}
    metadata = {"words": json.dumps(vocabulary), "configs": json.dumps(configs)} | extra
    return save_tensors(path, tensors, metadata)
