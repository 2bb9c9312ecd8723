"""Labelled image grids for strength sweeps (pure PIL)."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

MARGIN = 28


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def labelled_grid(
    cells: list[list[Image.Image]],
    column_labels: list[str],
    row_labels: list[str] | None = None,
    *,
    title: str = "",
) -> Image.Image:
    """Put `cells[row][column]` in a grid with a label above each column and left of each row.

    Images are scaled up to at least 160 px so that labels stay readable beside tiny images.
    """
    rows, columns = len(cells), len(cells[0])
    width, height = cells[0][0].size
    scale = max(1, -(-160 // max(width, height)))
    cell_w, cell_h = width * scale, height * scale
    left = 90 if row_labels else 0
    top = MARGIN * (2 if title else 1)
    canvas = Image.new("RGB", (left + columns * cell_w, top + rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    if title:
        draw.text((4, 4), title, fill="black", font=font)
    for column, label in enumerate(column_labels):
        draw.text((left + column * cell_w + 4, top - MARGIN + 6), label, fill="black", font=font)
    for row in range(rows):
        if row_labels:
            draw.text((4, top + row * cell_h + cell_h // 2 - 7), row_labels[row], fill="black", font=font)
        for column in range(columns):
            image = cells[row][column].resize((cell_w, cell_h), Image.Resampling.NEAREST)
            canvas.paste(image, (left + column * cell_w, top + row * cell_h))
    return canvas
