"""Write `examples/flat_shapes.zip`: a dozen drawn images with captions, in the course's layout.

    python examples/make_dataset.py [OUT.zip]

The zip holds `images/shape_01.png ...`, `captions/shape_01.txt ...` (each caption starts with
the trigger word `flatshape_style`) and the course's `config.json` with values small enough for
the tiny model on a CPU. The same script always writes the same bytes (fixed drawing, fixed
zip timestamps), so the committed zip can be checked against it.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw

TRIGGER = "flatshape_style"
COLOURS = {"red": (220, 50, 47), "blue": (38, 139, 210), "yellow": (238, 200, 40), "green": (70, 160, 60), "white": (245, 245, 240), "black": (20, 20, 24)}
# (shape, shape colour, background colour, width, height): square, landscape and portrait images.
PICTURES = [
    ("circle", "red", "blue", 128, 128),
    ("square", "yellow", "black", 128, 128),
    ("triangle", "white", "green", 128, 128),
    ("circle", "black", "yellow", 128, 96),
    ("square", "blue", "white", 128, 96),
    ("triangle", "red", "yellow", 128, 96),
    ("circle", "green", "white", 96, 128),
    ("square", "red", "green", 96, 128),
    ("triangle", "blue", "yellow", 96, 128),
    ("circle", "white", "red", 128, 128),
    ("square", "green", "blue", 128, 128),
    ("triangle", "black", "white", 128, 128),
]
# The course's config.json names, with values for a quick run of the tiny model (see README "Training").
CONFIG = {
    "model_name": "flux-dev-v1",
    "resolution": 64,
    "train_batch_size": 1,
    "learning_rate": 0.01,  # high for a real model, right for tiny: the LoRA visibly changes the image in 20 steps
    "lr_scheduler": "cosine",
    "lr_warmup_steps": 2,
    "max_train_steps": 20,
    "network_dim": 4,
    "network_alpha": 2,
    "optimizer_type": "AdamW8bit",
    "trigger_word": TRIGGER,
    "validation_split": 0.2,
    "sample_every": 10,
    "checkpoint_every": 10,
    "seed": 0,
}
STAMP = (2026, 1, 1, 0, 0, 0)


def draw(shape: str, colour: str, background: str, width: int, height: int) -> bytes:
    image = Image.new("RGB", (width, height), COLOURS[background])
    pen = ImageDraw.Draw(image)
    size = min(width, height) * 0.6
    left, top = (width - size) / 2, (height - size) / 2
    box = (left, top, left + size, top + size)
    if shape == "circle":
        pen.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        pen.rectangle(box, fill=COLOURS[colour])
    else:
        pen.polygon([(width / 2, top), (left + size, top + size), (left, top + size)], fill=COLOURS[colour])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def caption(shape: str, colour: str, background: str) -> str:
    return f"{TRIGGER}, a flat {colour} {shape} centred on a plain {background} background, simple vector illustration"


def build_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:

        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=STAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)

        for number, (shape, colour, background, width, height) in enumerate(PICTURES, start=1):
            add(f"images/shape_{number:02d}.png", draw(shape, colour, background, width, height))
            add(f"captions/shape_{number:02d}.txt", caption(shape, colour, background).encode("utf-8"))
        add("config.json", (json.dumps(CONFIG, indent=4) + "\n").encode("utf-8"))
    return buffer.getvalue()


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("flat_shapes.zip")
    data = build_zip()
    out.write_bytes(data)
    print(f"wrote {out} ({len(data):,} bytes, {len(PICTURES)} images)")


if __name__ == "__main__":
    main()
