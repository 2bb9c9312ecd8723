"""A training chunk works in pieces (a step, an image encoded, a validation image, a sample image, a
checkpoint) and may end between any two of them: for a waiting generation, at its deadline, or at
random moments. Wherever the chunks end, in memory (the session parked on the engine) or from disk,
the job ends with the same LoRA, checkpoints, losses and samples as one uninterrupted chunk, and the
generations in between see the pipeline exactly as without the job."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from lora_space.engine import Engine, GenerationRequest, LoraSpec, Options
from lora_space.lora.safefile import load_lora_file
from lora_space.tiny import build_tiny_pipeline
from lora_space.train.checkpoint import read_json
from lora_space.train.trainer import run_chunk
from tests.lora_factory import write_lora
from tests.train_factory import job_folder, red_zip  # noqa: F401 (fixture)

# Every kind of piece: 6 images (3 held out), validation and samples at steps 2 and 4, a checkpoint at 2.
PIECES = dict(
    max_train_steps=4, validation_split=0.5, sample_every=2, checkpoint_every=2, validation_prompts=["a red square", "a blue circle"]
)
TINY = Options(seed=5, steps=2, width=64, height=64)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, red_zip):
    """PIECES trained in one chunk."""
    files = job_folder(tmp_path_factory.mktemp("reference") / "job", red_zip, **PIECES)
    result = run_chunk(build_tiny_pipeline(), files.root, adapter_name="reference")
    assert result.finished and result.pieces == {"cache": 12, "step": 4, "validation": 6, "sample": 8, "checkpoint": 1}
    return files


def assert_same_job(files, reference) -> None:
    """Same final LoRA and checkpoints (bit for bit), losses, validation losses and sample images."""
    for name in ["final.safetensors"] + [f"checkpoints/{path.name}" for path in reference.checkpoints.iterdir()]:
        expected, _ = load_lora_file(reference.root / name)
        got, _ = load_lora_file(files.root / name)
        assert expected.keys() == got.keys() and all(torch.equal(expected[key], got[key]) for key in expected), name
    ours, theirs = read_json(files.progress), read_json(reference.progress)
    for key in ("loss", "val_loss", "checkpoints", "warnings"):
        assert ours[key] == theirs[key], key
    assert sorted(ours["samples"]) == sorted(theirs["samples"]) and len(ours["samples"]) == 8
    for name in theirs["samples"]:
        assert np.array_equal(np.asarray(Image.open(files.samples / name)), np.asarray(Image.open(reference.samples / name))), name


def image(engine: Engine, loras=()) -> np.ndarray:
    result = engine.generate(GenerationRequest("a lighthouse", TINY, tuple(loras)))
    return np.asarray(result.images[0], dtype=np.int16)


@pytest.mark.parametrize("parked", [True, False], ids=["session parked between chunks", "session from disk each chunk"])
def test_one_piece_per_chunk_ends_as_one_chunk_and_generations_between_see_the_base(tmp_path, red_zip, reference, parked):
    lora = write_lora(tmp_path / "ink.safetensors", 3)
    ink = LoraSpec(key=str(lora), file=str(lora), name="ink", strength=0.8)
    clean = Engine(build_tiny_pipeline())
    expected = {"base": image(clean), "ink": image(clean, [ink])}
    engine = Engine(build_tiny_pipeline())
    weights = {name: tensor.clone() for name, tensor in engine.pipe.transformer.state_dict().items()}
    files = job_folder(tmp_path / "job", red_zip, **PIECES)
    kinds, resumed, chunks = set(), set(), 0
    while True:
        with engine.turn(), engine.lend() as pipe:
            result = run_chunk(pipe, files.root, adapter_name="train_pieces", should_yield=lambda: True, parking=engine if parked else None)
        chunks += 1
        assert sum(result.pieces.values()) == 1 and (result.yielded or result.finished)  # a waiting generation: one piece, then its turn
        kinds |= set(result.pieces)
        resumed.add(result.resumed)
        # A generation between two pieces sees the base model, or the LoRA mix it asked for, unchanged
        # (the parked session's adapter stays attached, switched off; the mix fuses after two requests).
        assert np.array_equal(image(engine), expected["base"])
        assert np.array_equal(image(engine, [ink]), expected["ink"])
        if result.finished:
            break
    assert chunks == 31 and kinds == {"cache", "step", "validation", "sample", "checkpoint"}
    assert resumed == ({"disk", "memory"} if parked else {"disk"})
    assert_same_job(files, reference)
    # The pipeline is given back as it was: no training adapter, nothing parked, base weights bit for bit.
    assert engine.parked is None and "train_pieces" not in str(engine.pipe.get_list_adapters())
    after = engine.pipe.transformer.state_dict()
    base = {name.replace(".base_layer", ""): tensor for name, tensor in after.items() if "lora_" not in name}
    assert all(torch.equal(weights[name], base[name]) for name in weights)


class Killed(Exception):
    """The process running a chunk died between two pieces: nothing after its last save was saved."""


def test_chunks_ended_at_random_pieces_and_killed_ones_end_bit_equal(tmp_path, red_zip, reference):
    """Preemptions after a random number of pieces, the parked session sometimes lost (a fresh ZeroGPU
    worker), and chunks killed between pieces without saving (their work past the last saved state,
    written to the progress and the samples already, runs again)."""
    chooser = random.Random(15)
    engine = Engine(build_tiny_pipeline())
    files = job_folder(tmp_path / "job", red_zip, **PIECES)
    kills = 0
    while True:
        budget, dies = chooser.randint(1, 5), chooser.random() < 0.25 or (kills == 0 and (read_json(files.progress, {}) or {}).get("step", 0) >= 1)
        done = {"pieces": 0}

        def should_yield() -> bool:
            done["pieces"] += 1
            if done["pieces"] > budget and dies:
                raise Killed
            return done["pieces"] > budget

        if engine.parked is not None and chooser.random() < 0.3:  # a fresh worker: nothing in memory
            engine.parked.close()
            engine.parked = None
        try:
            with engine.turn(), engine.lend() as pipe:
                result = run_chunk(pipe, files.root, adapter_name="train_random", should_yield=should_yield, parking=engine)
        except Killed:
            kills += 1
            assert engine.parked is None  # a chunk that failed parks nothing
            continue
        if result.finished:
            break
    assert kills >= 2
    assert_same_job(files, reference)
