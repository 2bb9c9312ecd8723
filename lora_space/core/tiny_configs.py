"""The configs of the two offline tiny FLUX models: plain data, read by the models (`tiny/`) and by the
shape checks (`lora.shapes`) alike.

`RANDOM_*`: `tiny-random`, random weights, for tests (`tiny.model`). `DRAWING_*`: `tiny`, the model
pre-trained to draw simple scenes (`tiny.draw`, weights shipped beside it). Both use `RANDOM_VAE`,
the colour-carrying VAE.
"""

from __future__ import annotations

HIDDEN = 32  # transformer inner dim = heads * head dim; also T5 d_model (joint_attention_dim)

RANDOM_TRANSFORMER = dict(
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
RANDOM_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(8, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=1,  # one group: the colour channels pass the last norm unscaled (`colour_vae`)
    sample_size=64,
    use_quant_conv=False,
    use_post_quant_conv=False,
    shift_factor=0.0609,
    scaling_factor=1.5035,
)
RANDOM_CLIP = dict(
    hidden_size=HIDDEN,
    intermediate_size=37,
    projection_dim=HIDDEN,
    num_attention_heads=4,
    num_hidden_layers=2,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
)
RANDOM_T5 = dict(
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

WIDTH = 128  # transformer inner dim = heads * head dim
TEXT_WIDTH = 64  # T5 d_model (the transformer's joint_attention_dim) and CLIP's width (pooled_projection_dim)

DRAWING_TRANSFORMER = dict(
    patch_size=1,
    in_channels=16,  # the colour VAE's 4 latent channels packed 2x2
    num_layers=3,
    num_single_layers=3,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=TEXT_WIDTH,
    pooled_projection_dim=TEXT_WIDTH,
    guidance_embeds=True,
    axes_dims_rope=(8, 12, 12),
)
DRAWING_CLIP = dict(
    hidden_size=TEXT_WIDTH,
    intermediate_size=128,
    projection_dim=TEXT_WIDTH,
    num_attention_heads=4,
    num_hidden_layers=3,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
)
DRAWING_T5 = dict(
    d_model=TEXT_WIDTH,
    d_kv=16,
    d_ff=128,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
    is_encoder_decoder=False,
    decoder_start_token_id=0,
)
