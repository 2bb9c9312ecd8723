"""Drawn scenes with plain-word captions: the world the drawing `tiny` model learned.

One shape (circle, square, triangle, star) of one colour on a plain background, at a place and a size,
captioned "a small red circle on a blue background, top left". The words, colours, places and
sizes live in `scenes.json`. The drawing tiny model was pre-trained on random scenes
(`lora_space.train.pretrain_tiny`); the example dataset (`examples/make_dataset.py`) and the tests
draw the same scenes in a `Style` the base model never saw (a thick black outline, a tint), so
what a LoRA learns shows in its pictures.
"""

from __future__ import annotations

import io
import json
import math
import random
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw

SCENES_FILE = Path(__file__).with_name("scenes.json")
SUPERSAMPLE = 4  # drawn this many times larger, then shrunk: smooth edges
MARGIN = 0.03  # the shape keeps this share of the side from the image's edges
JITTER = 0.03  # a scene's place moves by up to this share of the side, its size by up to 3x this
CENTRE_WORDS = ("", "in the centre", "in the middle")  # how a caption may place a shape in the centre
ZIP_STAMP = (2026, 1, 1, 0, 0, 0)


@cache
def vocabulary() -> dict:
    """The scene words and values of `scenes.json`."""
    return json.loads(SCENES_FILE.read_text())


def words() -> list[str]:
    """Every word a scene caption can hold, sorted (the drawing model's word-level tokenizers)."""
    data = vocabulary()
    found = set(data["extra_words"]) | set(data["colours"]) | set(data["shapes"])
    for phrase in list(data["positions"]) + list(data["sizes"]):
        found |= set(phrase.split())
    return sorted(found)


def rgb(colour: str) -> tuple[int, int, int]:
    """A colour word's RGB value."""
    return tuple(vocabulary()["colours"][colour])


@dataclass(frozen=True)
class Style:
    """How a scene is drawn beyond its caption: what a style LoRA's dataset has and the base lacks.

    Args:
        outline: the width in pixels (at 64 px) of a black outline around the shape; 0: none.
        tint: every colour is mixed with this RGB colour by `tint_amount` (0: not at all).
        tint_amount: 0..1.
    """

    outline: float = 0.0
    tint: tuple[int, int, int] = (255, 255, 255)
    tint_amount: float = 0.0

    def paint(self, colour: tuple[int, int, int]) -> tuple[int, int, int]:
        return tuple(round((1 - self.tint_amount) * c + self.tint_amount * t) for c, t in zip(colour, self.tint))


@dataclass(frozen=True)
class Scene:
    """One picture: a shape, its colour, the background, where and how large, and its caption's wording.

    `dx`, `dy` and `scale` are the small random offsets of a drawn example (0, 0, 1 for the
    nominal picture); `centre_words` is how the caption says "centre" (`CENTRE_WORDS`), and
    `say_background` whether it names the background (when not, it is `default_background`).
    """

    shape: str
    colour: str
    background: str
    position: str = "centre"
    size: str = ""
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    centre_words: str = ""
    say_background: bool = True

    @property
    def caption(self) -> str:
        described = f"{self.size} {self.colour}" if self.size else self.colour
        text = f"{_article(described)} {described} {self.shape}"
        if self.say_background:
            text += f" on {_article(self.background)} {self.background} background"
        place = self.centre_words if self.position == "centre" else self.position
        return f"{text}, {place}" if place else text


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def random_scene(rng: random.Random) -> Scene:
    """A random scene of the pre-training distribution (and of the example dataset)."""
    data = vocabulary()
    colours, shapes = sorted(data["colours"]), data["shapes"]
    say_background = rng.random() > 0.1
    background = rng.choice(colours) if say_background else data["default_background"]
    colour = rng.choice([name for name in colours if name != background])
    places = [name for name in data["positions"] if name != "centre"]
    position = "centre" if rng.random() < 0.4 else rng.choice(places)
    size = rng.choices(list(data["sizes"]), weights=[1, 2, 1])[0]
    return Scene(
        shape=rng.choice(shapes), colour=colour, background=background, position=position, size=size,
        dx=rng.uniform(-JITTER, JITTER), dy=rng.uniform(-JITTER, JITTER), scale=rng.uniform(1 - 3 * JITTER, 1 + 3 * JITTER),
        centre_words=rng.choice(CENTRE_WORDS), say_background=say_background,
    )  # fmt: skip


def _outline_points(shape: str, grow: float) -> list[tuple[float, float]] | None:
    """A polygon shape's corners around (0, 0) for a half-size of 1 (+ `grow`); None for the circle."""
    if shape == "circle":
        return None
    if shape == "square":
        half = 0.85 + grow
        return [(-half, -half), (half, -half), (half, half), (-half, half)]
    if shape == "triangle":
        radius = 1.15 + 2 * grow  # an equilateral triangle's outline of width w moves its corners by 2w
        return [(radius * math.cos(math.radians(a)), radius * math.sin(math.radians(a)) + 0.12) for a in (-90, 30, 150)]
    if shape == "star":
        outer, inner = 1.15 + 2.5 * grow, 0.5 + 1.2 * grow
        return [
            ((outer if i % 2 == 0 else inner) * math.cos(math.radians(-90 + 36 * i)),
             (outer if i % 2 == 0 else inner) * math.sin(math.radians(-90 + 36 * i)) + 0.05)
            for i in range(10)
        ]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}; the shapes are {', '.join(vocabulary()['shapes'])}")


def draw(scene: Scene, width: int = 64, height: int = 64, style: Style = Style()) -> Image.Image:
    """Draw `scene` as an RGB image of `width` x `height` pixels in `style`."""
    data = vocabulary()
    big_w, big_h = width * SUPERSAMPLE, height * SUPERSAMPLE
    side = min(big_w, big_h)
    image = Image.new("RGB", (big_w, big_h), style.paint(rgb(scene.background)))
    pen = ImageDraw.Draw(image)
    half = data["sizes"][scene.size] * scene.scale * side / 2
    reach = half * 1.2 + style.outline * side / 64  # how far the shape (and its outline) reaches from its centre
    fx, fy = data["positions"][scene.position]
    cx = min(max((fx + scene.dx) * big_w, reach + MARGIN * side), big_w - reach - MARGIN * side)
    cy = min(max((fy + scene.dy) * big_h, reach + MARGIN * side), big_h - reach - MARGIN * side)
    layers = [(style.outline * side / 64 / half, (0, 0, 0))] if style.outline else []
    for grow, fill in layers + [(0.0, style.paint(rgb(scene.colour)))]:
        points = _outline_points(scene.shape, grow)
        if points is None:
            radius = half * (1 + grow)
            pen.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        else:
            pen.polygon([(cx + x * half, cy + y * half) for x, y in points], fill=fill)
    return image.resize((width, height), Image.Resampling.BOX)


def dataset_zip(scenes: list[Scene], *, style: Style, trigger_word: str, config: dict, side: int = 128) -> bytes:
    """A training zip in the course's layout: `images/NAME.png`, `captions/NAME.txt` and `config.json`.

    Each caption is the trigger word and the scene's caption; the same arguments give the same
    bytes (fixed drawing, fixed zip timestamps).
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:

        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=ZIP_STAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)

        for number, scene in enumerate(scenes, start=1):
            picture = io.BytesIO()
            draw(scene, side, side, style).save(picture, format="PNG", optimize=True)
            add(f"images/shape_{number:02d}.png", picture.getvalue())
            add(f"captions/shape_{number:02d}.txt", f"{trigger_word}, {scene.caption}".encode())
        add("config.json", (json.dumps(config, indent=4) + "\n").encode())
    return buffer.getvalue()
