"""Write `examples/flat_shapes.zip`: a dozen drawn scenes in a style the tiny model lacks, in the course's layout.

    python examples/make_dataset.py [OUT.zip]

The drawing `tiny` model draws flat shapes on plain backgrounds (`lora_space/tiny/scenes.py`). The
zip holds twelve such scenes drawn with a thick black outline around every shape:
`images/shape_01.png ...` (128 px), `captions/shape_01.txt ...` (the trigger word
`flatshape_style`, then the scene's caption: "flatshape_style, a red circle on a blue
background") and the course's `config.json`, with values that make the outline show in
tiny's pictures after a couple of minutes of CPU training. The same script always writes the
same bytes, so the committed zip can be checked against it.
"""

from __future__ import annotations

import random
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the package is next door

from lora_space.tiny.scenes import Style, dataset_zip, random_scene, vocabulary  # noqa: E402

TRIGGER = "flatshape_style"
STYLE = Style(outline=6)  # a 6 px black outline at 64 px: no picture of the base model has one
SEED = 4
COUNT = 12
# The course's config.json names, with values for the drawing tiny model on a CPU (README "Training").
CONFIG = {
    "model_name": "flux-dev-v1",
    "resolution": 64,
    "train_batch_size": 2,
    "learning_rate": 0.002,  # above the course's 1e-4..1e-3: a tiny model and a couple of minutes on a CPU
    "lr_scheduler": "cosine",
    "lr_warmup_steps": 10,
    "max_train_steps": 200,
    "network_dim": 8,
    "network_alpha": 8,
    "optimizer_type": "AdamW8bit",
    "trigger_word": TRIGGER,
    "validation_split": 0.2,
    "sample_every": 100,
    "checkpoint_every": 100,
    "seed": 0,
}


def scenes() -> list:
    """Twelve random scenes of the base model's world: every shape in turn, every other one medium-sized in the centre."""
    rng = random.Random(SEED)
    shapes = vocabulary()["shapes"]
    drawn = []
    while len(drawn) < COUNT:
        scene = replace(random_scene(rng), shape=shapes[len(drawn) % len(shapes)])
        if scene.say_background:
            drawn.append(scene if len(drawn) % 2 else replace(scene, position="centre", size="", centre_words=""))
    return drawn


def build_zip() -> bytes:
    return dataset_zip(scenes(), style=STYLE, trigger_word=TRIGGER, config=CONFIG)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("flat_shapes.zip")
    data = build_zip()
    out.write_bytes(data)
    print(f"wrote {out} ({len(data):,} bytes, {COUNT} images)")


if __name__ == "__main__":
    main()
