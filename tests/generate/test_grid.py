"""The sweep grid's labels: whole strengths, Hub LoRAs named by their repo, no text under the images."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from lora_space.generate.grid import FONT_SIZE, _font, label_lines, labelled_grid
from lora_space.ui.tabs.generate import size_text

HUB_LABEL = "alice/watercolor-flux/pytorch_lora_weights.safetensors"


def cells(rows: int, columns: int, size: int = 64) -> list[list[Image.Image]]:
    return [[Image.new("RGB", (size, size), (240, 180 + 20 * row, 160 + 15 * column)) for column in range(columns)] for row in range(rows)]


def ink(image: Image.Image) -> np.ndarray:
    """Where the grid has dark text pixels (the test cells are light)."""
    return np.asarray(image.convert("L")) < 100


def test_a_long_hub_label_wraps_with_its_repo_and_its_strength_whole():
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = label_lines(draw, f"{HUB_LABEL}\nstrength 0.5", _font(FONT_SIZE), 150)
    assert lines[-1] == "strength 0.5"
    assert "".join(lines[:-1]).replace(" ", "") == HUB_LABEL  # wrapped, nothing cut
    assert lines[0].startswith("alice/")
    assert all(draw.textlength(line, font=_font(FONT_SIZE)) <= 150 for line in lines)
    very_long = "someone/" + "a-very-long-repository-name-" * 6 + "/pytorch_lora_weights.safetensors"
    short = label_lines(draw, f"{very_long}\nstrength 1.2", _font(FONT_SIZE), 150)
    assert len(short) == 4 and short[0].startswith("someone/") and short[2].startswith("…") and short[-1] == "strength 1.2"


def test_row_labels_stay_left_of_the_images_and_column_labels_above_them():
    grid = labelled_grid(
        cells(3, 5),
        [f"wtrclr_style\nstrength {value:g}" for value in (0, 0.4, 0.8, 1.2, 1.6)],
        [f"{HUB_LABEL}\nstrength {value:g}" for value in (0, 0.5, 1)],
        title="seed 42",
    )
    dark = ink(grid)
    columns_with_ink = np.flatnonzero(dark.any(axis=0))
    rows_with_ink = np.flatnonzero(dark.any(axis=1))
    left = grid.width - 5 * 192  # the cells are scaled to 192 px (3 x 64)
    top = grid.height - 3 * 192
    assert left > 150  # the margin grew to the labels (the old one was 90 px, cutting them)
    assert not dark[top:, left:].any(), "no text runs under the images"
    assert columns_with_ink.min() < left and rows_with_ink.min() < top
    title_rows = np.flatnonzero(dark[:top, :left].any(axis=1))
    label_rows = np.flatnonzero(dark[:top, left:].any(axis=1))
    assert title_rows.max() < label_rows.min(), "the seed line stands above the column labels, not among them"


def test_sizes_of_small_files_are_not_zero():
    assert size_text(23) == "23 B" and size_text(7_600) == "7.6 kB"
    assert size_text(150 * 10**6) == "150.0 MB" and size_text(3 * 10**9) == "3.0 GB"
