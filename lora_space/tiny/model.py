"""The offline random tiny FLUX pipeline (`tiny-random`), and the colour VAE both tiny models share.

The drawing `tiny` model (`tiny_draw.py`) is built on this one's VAE. This one is
a FLUX-architecture pipeline (FluxTransformer2DModel with guidance embeds, CLIP + T5
encoders, AutoencoderKL, flow-match scheduler) built from in-code configs with fixed
seeds. It runs every code path FLUX.1-dev runs (loading, LoRA formats, training,
saving); only the sizes differ. The transformer and text encoders are random; the VAE is
built to carry colour (`colour_vae`): its latents are a fixed linear map of the image's
colours at half size, and decoding inverts it, so tiny images show colour, and a LoRA
trained on red images makes them red.

    python -m lora_space.tiny DIR            # writes the drawing tiny model with save_pretrained
    python -m lora_space.tiny DIR --random   # ... or this random one
"""

from __future__ import annotations

import string

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
from lora_space.core.tiny_configs import RANDOM_CLIP as CLIP_CONFIG
from lora_space.core.tiny_configs import RANDOM_T5 as T5_CONFIG
from lora_space.core.tiny_configs import RANDOM_TRANSFORMER as TRANSFORMER_CONFIG
from lora_space.core.tiny_configs import RANDOM_VAE as VAE_CONFIG

T5_MAX_LENGTH = 64
# Latent channel j = sum_c LATENT_FROM_RGB[j][c] * colour_c (colours in -1..1): the first three
# columns of a 4x4 Hadamard matrix / 2, so the columns are orthonormal and decoding is the transpose.
LATENT_FROM_RGB = ((0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.5, 0.5, -0.5), (0.5, -0.5, -0.5))
_BIG = 256.0  # the constant channels that dominate each GroupNorm's variance (`colour_vae`)


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
    vae = colour_vae(AutoencoderKL(**VAE_CONFIG))
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


def colour_vae(vae: AutoencoderKL) -> AutoencoderKL:
    """Set the VAE's weights so that encoding is a linear map of the colours and decoding inverts it.

    Every residual branch (resnet `conv2`, attention `to_out`) is zero, so each block passes
    its input on. The encoder carries the channels (R, -R, G, -G, B, -B) through `conv_in`,
    averages 2x2 pixels in its downsampler, and adds two constant channels (+K, -K) in the
    shortcut of its last block. In the final GroupNorm (one group) the mean is then exactly 0
    and the variance is K^2/4 (per channel pair) plus a colour part smaller by a factor of K^2,
    so the norm divides by a near-constant; `silu(x) - silu(-x) = x` undoes the activation
    exactly, and `conv_out` writes `LATENT_FROM_RGB @ colour` as the posterior mean with a
    log-variance of -30. The decoder mirrors it (transpose map, nearest upsampling).
    """
    mix = torch.tensor(LATENT_FROM_RGB)  # (4 latent, 3 colours)
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.zero_()
        for module in vae.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.fill_(1.0)

        def signed_pairs(conv: torch.nn.Conv2d, rows: torch.Tensor) -> None:
            """Output channels 2c and 2c+1 get +rows[c] and -rows[c] (centre tap)."""
            centre = conv.kernel_size[0] // 2
            for colour in range(3):
                conv.weight[2 * colour, :, centre, centre] = rows[colour]
                conv.weight[2 * colour + 1, :, centre, centre] = -rows[colour]

        def constants(conv: torch.nn.Conv2d) -> None:
            conv.bias[6], conv.bias[7] = _BIG, -_BIG

        def identity(conv: torch.nn.Conv2d, channels: int) -> None:
            centre = conv.kernel_size[0] // 2
            for channel in range(channels):
                conv.weight[channel, channel, centre, centre] = 1.0

        def unpair(conv: torch.nn.Conv2d, rows: torch.Tensor, scale: float) -> None:
            """Output j = scale * sum_c rows[j, c] * (x_2c - x_2c+1): undoes `signed_pairs` after silu."""
            centre = conv.kernel_size[0] // 2
            for colour in range(3):
                conv.weight[:, 2 * colour, centre, centre] = scale * rows[:, colour]
                conv.weight[:, 2 * colour + 1, centre, centre] = -scale * rows[:, colour]

        encoder, decoder = vae.encoder, vae.decoder
        latent = vae.config.latent_channels
        # Encoder: colours as signed pairs, 2x2 average, constants, then the latent map.
        signed_pairs(encoder.conv_in, torch.eye(3))
        downsample = encoder.down_blocks[0].downsamplers[0].conv  # pads right/bottom, stride 2
        for channel in range(downsample.out_channels):
            downsample.weight[channel, channel, :2, :2] = 0.25
        shortcut = encoder.down_blocks[-1].resnets[0].conv_shortcut
        identity(shortcut, 6)
        constants(shortcut)
        channels = encoder.conv_norm_out.num_channels
        unpair(encoder.conv_out, torch.cat([mix, torch.zeros(latent, 3)]), _BIG / (channels / 2) ** 0.5)
        encoder.conv_out.bias[latent:] = -30.0  # log-variance: sampling is the mean
        # Decoder: the transpose map as signed pairs, constants, nearest upsampling, colours out.
        signed_pairs(decoder.conv_in, mix.T)
        constants(decoder.conv_in)
        identity(decoder.up_blocks[0].upsamplers[0].conv, decoder.up_blocks[0].upsamplers[0].conv.out_channels)
        identity(decoder.up_blocks[-1].resnets[0].conv_shortcut, 8)
        channels = decoder.conv_norm_out.num_channels
        unpair(decoder.conv_out, torch.eye(3), _BIG / (channels / 2) ** 0.5)
    return vae
