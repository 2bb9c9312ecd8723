"""The offline `tiny` FLUX pipeline.

A FLUX-architecture pipeline (FluxTransformer2DModel with guidance embeds, CLIP + T5
encoders, AutoencoderKL, flow-match scheduler) built from in-code configs with fixed
seeds. It runs every code path FLUX.1-dev runs (loading, LoRA formats, training,
saving); only the sizes differ, so its images are noise from a random test model.

    python -m lora_space.tiny DIR   # writes it with save_pretrained
"""

from __future__ import annotations

import argparse
import string
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

TINY_SEED = 0
HIDDEN = 32  # transformer inner dim = heads * head dim; also T5 d_model (joint_attention_dim)

TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=16,  # 4 latent channels packed 2x2, as FLUX packs its 16 into 64
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=HIDDEN,
    pooled_projection_dim=HIDDEN,
    guidance_embeds=True,
    axes_dims_rope=(4, 4, 8),
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(8, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=64,
    use_quant_conv=False,
    use_post_quant_conv=False,
    shift_factor=0.0609,
    scaling_factor=1.5035,
)
CLIP_CONFIG = dict(
    hidden_size=HIDDEN,
    intermediate_size=37,
    projection_dim=HIDDEN,
    num_attention_heads=4,
    num_hidden_layers=2,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
)
T5_CONFIG = dict(
    d_model=HIDDEN,
    d_kv=8,
    d_ff=37,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    feed_forward_proj="gated-gelu",
    is_encoder_decoder=False,
    decoder_start_token_id=0,
)
T5_MAX_LENGTH = 64


def _clip_tokenizer() -> CLIPTokenizer:
    """A byte-level BPE tokenizer over letters, digits and punctuation, with no merges."""
    symbols = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
        vocab[symbol + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer() -> T5Tokenizer:
    """A unigram tokenizer whose pieces are single characters (and the word marker)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    for symbol in string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation:
        pieces.append((symbol, -2.0))
        pieces.append(("\u2581" + symbol, -2.5))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def build_tiny_pipeline(dtype: torch.dtype = torch.float32, *, transformer_overrides: dict | None = None) -> FluxPipeline:
    """Build the tiny FLUX pipeline in memory; the same weights on every call.

    `transformer_overrides` changes the transformer's config (benchmarks use a wider,
    deeper one so that the matrix work dominates, as it does in FLUX.1-dev).
    """
    clip_tokenizer = _clip_tokenizer()
    t5_tokenizer = _t5_tokenizer()

    torch.manual_seed(TINY_SEED)
    transformer = FluxTransformer2DModel(**(TRANSFORMER_CONFIG | (transformer_overrides or {})))
    torch.manual_seed(TINY_SEED)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(TINY_SEED)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tokenizer),
            bos_token_id=clip_tokenizer.bos_token_id,
            eos_token_id=clip_tokenizer.eos_token_id,
            pad_token_id=clip_tokenizer.pad_token_id,
            **CLIP_CONFIG,
        )
    )
    torch.manual_seed(TINY_SEED)
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), **T5_CONFIG))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)

    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    for module in (transformer, vae, text_encoder, text_encoder_2):
        module.eval()  # as from_pretrained leaves them: no dropout
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def save_tiny(directory: str | Path) -> Path:
    """Write the tiny pipeline to `directory` with save_pretrained."""
    directory = Path(directory)
    build_tiny_pipeline().save_pretrained(directory)
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the offline tiny FLUX pipeline to a folder.")
    parser.add_argument("directory", help="where to write it; load it with LORA_SPACE_BASE_MODEL=DIR")
    args = parser.parse_args(argv)
    path = save_tiny(args.directory)
    print(f"tiny FLUX pipeline written to {path}")


if __name__ == "__main__":
    main()
