"""The drawing tiny model draws what it is asked, and LoRAs trained on it change what it draws.

Pictures are judged by colour regions: the centre of a 64x64 picture is the shape's colour, its
corners the background's; a black outline shows as a dark ring around the shape, a pastel
palette as colours moved toward white.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lora_space.core.settings import TINY, TINY_STEPS
from lora_space.generate.base_model import load_base_pipeline
from lora_space.generate.engine import Engine
from lora_space.generate.request import Options
from lora_space.service import LoraSpace
from lora_space.tiny.draw import (
    build_drawing_pipeline,
    word_clip_tokenizer,
    word_t5_tokenizer,
)
from lora_space.tiny.scenes import Style, dataset_zip, random_scene, rgb
from lora_space.train.pretrain_tiny import (
    PaddedText,
    PretrainConfig,
    encode_captions,
    pretrain,
)
from tests.train_factory import ALICE, wait_for_job

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "flat_shapes.zip"
DRAW = Options(seed=0, steps=TINY_STEPS[TINY], width=64, height=64)  # the Generate tab's defaults in tiny mode
TOLERANCE = 40  # mean absolute difference per channel, out of 255
DARK = 80  # a pixel whose brightest channel is below this is near-black
PROMPTS = ("a red circle on a blue background", "a yellow square on a green background")
PASTEL = Style(tint=(255, 255, 255), tint_amount=0.6)
# Quick LoRA runs for the tests (the example's own config is measured in benchmarks/bench_tiny_draw.py):
# the outline needs more steps to show than the pastel palette, which 40 steps already paint.
QUICK = {"resolution": 64, "train_batch_size": 2, "learning_rate": 0.005, "lr_scheduler": "constant", "lr_warmup_steps": 0,
         "max_train_steps": 60, "network_dim": 8, "network_alpha": 8, "validation_split": 0.0, "sample_every": 0,
         "checkpoint_every": 0, "mixed_precision": "no", "seed": 0}  # fmt: skip


def picture(output) -> np.ndarray:
    return np.asarray(Image.open(output.files[0]).convert("RGB"), dtype=np.float64)


def centre(image: np.ndarray) -> np.ndarray:
    return image[26:38, 26:38].reshape(-1, 3).mean(axis=0)


def corners(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[:6, :6], image[:6, -6:], image[-6:, :6], image[-6:, -6:]]).reshape(-1, 3).mean(axis=0)


def near(measured: np.ndarray, expected) -> bool:
    return float(np.abs(measured - np.asarray(expected, dtype=np.float64)).mean()) < TOLERANCE


def dark_share(image: np.ndarray) -> float:
    """The share of near-black pixels (every channel below DARK): outline pixels. None of the
    scene colours is that dark but black, so a picture without black in its caption has none."""
    return float((image.max(axis=2) < DARK).mean())


@pytest.fixture(scope="module")
def drawing(tmp_path_factory):
    """A LoraSpace on the drawing tiny model, loaded as the app loads it (`LORA_SPACE_BASE_MODEL=tiny`)."""
    from lora_space.core.settings import Settings

    root = tmp_path_factory.mktemp("drawing")
    settings = Settings.from_env({"LORA_SPACE_BASE_MODEL": TINY, "LORA_SPACE_LORA_DIR": str(root / "loras"),
                                  "LORA_SPACE_DATA_DIR": str(root / "data"), "HF_HUB_OFFLINE": "1"})  # fmt: skip
    space = LoraSpace(settings, Engine(load_base_pipeline(settings)))
    yield space
    space.jobs.close()


@pytest.fixture(scope="module")
def styles(drawing, tmp_path_factory):
    """Two LoRAs trained on the drawing model: black outlines (the example zip) and a pastel palette."""
    folder = tmp_path_factory.mktemp("styles")
    rng = random.Random(3)
    pastel_scenes = [random_scene(rng) for _ in range(12)]
    pastel_zip = folder / "pastel.zip"
    pastel_zip.write_bytes(dataset_zip(pastel_scenes, style=PASTEL, trigger_word="pastel_style", config={}))
    names = {}
    for label, path, trigger, steps in (("outline", EXAMPLE, "flatshape_style", 100), ("pastel", pastel_zip, "pastel_style", 40)):
        status = drawing.jobs.start(path, QUICK | {"trigger_word": trigger, "max_train_steps": steps}, visitor=ALICE)
        done = wait_for_job(drawing, status.job_id, timeout=600)
        assert done.state == "done", done.error
        names[label] = done.lora_name
    return names


def draw_with(space: LoraSpace, prompt: str, loras: dict[str, float], seed: int = 0) -> np.ndarray:
    slots = [{"source": name, "strength": strength} for name, strength in loras.items()]
    return picture(space.generate(prompt, slots, dataclasses.replace(DRAW, seed=seed), visitor=ALICE))


@pytest.mark.parametrize(
    "prompt, shape_colour, background",
    [("a red circle on a blue background", "red", "blue"), ("a yellow square on a green background", "yellow", "green")],
)
def test_the_base_draws_the_shape_colour_at_the_centre_and_the_background_at_the_corners(drawing, prompt, shape_colour, background):
    right = 0
    for seed in range(3):
        image = draw_with(drawing, prompt, {}, seed)
        right += near(centre(image), rgb(shape_colour)) and near(corners(image), rgb(background))
    assert right >= 2, f"{prompt!r}: {right} of 3 seeds drew {shape_colour} at the centre and {background} at the corners"


def pictures(space: LoraSpace, loras: dict[str, float]) -> list[np.ndarray]:
    """The two prompts at seeds 0, 1, 2 with `loras`."""
    return [draw_with(space, prompt, loras, seed) for prompt in PROMPTS for seed in range(3)]


def paler(styled: np.ndarray, base: np.ndarray) -> float:
    """How much brighter the corners (the background) are in `styled` than in `base`, out of 255."""
    return float(corners(styled).mean() - corners(base).mean())


def test_an_outline_lora_draws_black_outline_pixels(drawing, styles):
    base, styled = pictures(drawing, {}), pictures(drawing, {styles["outline"]: 1.0})
    assert max(dark_share(image) for image in base) < 0.005  # red, blue, yellow, green: the base draws no black
    outlined = [dark_share(image) for image in styled]
    assert sum(share > 0.02 for share in outlined) >= 4, f"near-black shares with the outline LoRA: {outlined}"


def test_a_pastel_lora_moves_the_palette_toward_white(drawing, styles):
    base, styled = pictures(drawing, {}), pictures(drawing, {styles["pastel"]: 1.0})
    for index, prompt in enumerate(PROMPTS):
        background = np.asarray(PASTEL.paint(rgb(prompt.split(" on a ")[1].split()[0])), dtype=np.float64)
        for seed in range(3):
            before, after = base[3 * index + seed], styled[3 * index + seed]
            assert paler(after, before) > 40, (prompt, seed)
            assert np.abs(corners(after) - background).mean() < np.abs(corners(before) - background).mean() - 30, (prompt, seed)


def test_a_blend_of_the_two_loras_shows_both_styles(drawing, styles):
    """Outline at 1 and pastel at 0.5 (at 1 each, the palette washes the outline out): over the two
    prompts and three seeds, black outline pixels appear and the background gets paler."""
    base, blend = pictures(drawing, {}), pictures(drawing, {styles["outline"]: 1.0, styles["pastel"]: 0.5})
    outlined = [dark_share(image) for image in blend]
    lighter = [paler(after, before) for after, before in zip(blend, base)]
    assert sum(share > 0.005 for share in outlined) >= 2, f"near-black shares in the blend: {outlined}"
    assert np.mean(lighter) > 15 and sum(value > 0 for value in lighter) >= 4, f"corners paler by {lighter}"


def test_every_caption_word_is_one_token_and_other_words_are_spelled():
    words = ["a", "red", "circle", "background"]
    clip, t5 = word_clip_tokenizer(words), word_t5_tokenizer(words)
    assert clip.convert_ids_to_tokens(clip("a red circle").input_ids)[1:-1] == ["a</w>", "red</w>", "circle</w>"]
    assert t5.convert_ids_to_tokens(t5("a red circle").input_ids)[:-1] == ["\u2581a", "\u2581red", "\u2581circle"]
    assert len(clip("crimson").input_ids) > 3 and len(t5("crimson").input_ids) > 2  # unknown: letters


def test_one_padding_token_with_its_bias_computes_what_all_512_do():
    pipe = build_drawing_pipeline(weights=None)  # random weights: the identity holds for any
    captions = ["a red circle on a blue background", "a small yellow star on a black background, top left"]
    text, bias = encode_captions(pipe, captions)
    embeds, pooled, ids = pipe.encode_prompt(prompt=captions, prompt_2=None, device="cpu", max_sequence_length=512)
    assert text["embeds"].shape[1] < 20 and embeds.shape[1] == 512
    generator = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(2, 256, 16, generator=generator), timestep=torch.full((2,), 0.6), guidance=torch.full((2,), 3.5),
                  img_ids=pipe._prepare_latent_image_ids(2, 16, 16, "cpu", torch.float32), return_dict=False)  # fmt: skip
    with torch.no_grad():
        full = pipe.transformer(pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=ids, **inputs)[0]
        cut = PaddedText(pipe.transformer, bias)(pooled_projections=text["pooled"], encoder_hidden_states=text["embeds"], txt_ids=text["ids"], **inputs)[0]
        unbiased = pipe.transformer(pooled_projections=text["pooled"], encoder_hidden_states=text["embeds"], txt_ids=text["ids"], **inputs)[0]
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=1e-4)
    assert (unbiased - full).abs().max() > 1e-3  # without the bias the cut sequence is another input


def test_pretraining_writes_weights_the_pipeline_loads(tmp_path):
    out = tmp_path / "draw.safetensors"
    history = pretrain(PretrainConfig(steps=3, batch_size=2, warmup_steps=1, log_every=1), out, tmp_path / "log.json")
    assert history["steps"] == [1, 2, 3] and all(np.isfinite(history["loss"]))
    pipe = build_drawing_pipeline(out)
    generator = torch.Generator().manual_seed(0)
    image = pipe("a red circle", num_inference_steps=2, height=64, width=64, generator=generator, output_type="np").images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
