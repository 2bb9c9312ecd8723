"""Labelled image grids for strength sweeps (pure PIL).

Labels never run under the images: each line of a label is wrapped to the space it has (a
column's width, or a left margin sized to the row labels), a name too long for a few lines
keeps its start and end around an ellipsis, and the last line of a label (the strength) is
always shown whole.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

FONT_SIZE = 14
LINE_HEIGHT = 18
PAD = 6
MIN_CELL = 160  # images are scaled up to at least this, so that labels stay readable beside tiny images
ROW_LABEL_WIDTH = (90, 220)  # the left margin: at least, at most (px)
MAX_NAME_LINES = 3  # lines a name may take before its middle is cut
BREAK_AFTER = "/_-. "


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """`text` in lines of at most `width` px, broken after `/`, `_`, `-`, `.` or a space where one is near."""
    lines: list[str] = []
    rest = text
    while rest:
        if draw.textlength(rest, font=font) <= width:
            lines.append(rest)
            break
        fit = 1
        while fit < len(rest) and draw.textlength(rest[: fit + 1], font=font) <= width:
            fit += 1
        breaks = [index + 1 for index in range(fit) if rest[index] in BREAK_AFTER and index + 1 >= fit // 2]
        cut = breaks[-1] if breaks else fit
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    return lines


def _shorten(draw: ImageDraw.ImageDraw, lines: list[str], font: ImageFont.ImageFont, width: int) -> list[str]:
    """At most MAX_NAME_LINES lines: the first ones and the end of the last, joined by an ellipsis."""
    if len(lines) <= MAX_NAME_LINES:
        return lines
    tail = lines[-1]
    while tail and draw.textlength("…" + tail, font=font) > width:
        tail = tail[1:]
    return lines[: MAX_NAME_LINES - 1] + ["…" + tail]


def label_lines(draw: ImageDraw.ImageDraw, label: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """A label's lines within `width` px: each `\\n`-separated part wrapped, the last part (the
    strength) kept whole, the parts before it shortened when long."""
    *head, last = label.split("\n")
    name_lines = [line for part in head for line in _wrap(draw, part, font, width)]
    return _shorten(draw, name_lines, font, width) + _wrap(draw, last, font, width)


def labelled_grid(
    cells: list[list[Image.Image]],
    column_labels: list[str],
    row_labels: list[str] | None = None,
    *,
    title: str = "",
) -> Image.Image:
    """Put `cells[row][column]` in a grid with a label above each column and left of each row.

    Args:
        cells: the images, all of one size, row by row.
        column_labels, row_labels: one label per column / row; `\\n` separates lines (e.g. the
            LoRA's name, then its strength, which is always shown whole).
        title: a line above the grid (e.g. the seed).

    Returns:
        The grid as one RGB image.
    """
    rows, columns = len(cells), len(cells[0])
    width, height = cells[0][0].size
    scale = max(1, -(-MIN_CELL // max(width, height)))
    cell_w, cell_h = width * scale, height * scale
    font = _font(FONT_SIZE)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    # 1. Lay the labels out: columns wrap to their width, rows to a margin sized to their text.
    column_lines = [label_lines(measure, label, font, cell_w - 2 * PAD) for label in column_labels]
    left, row_lines = 0, []
    if row_labels:
        widest = max(measure.textlength(part, font=font) for label in row_labels for part in label.split("\n"))
        left = int(min(max(widest + 2 * PAD, ROW_LABEL_WIDTH[0]), ROW_LABEL_WIDTH[1]))
        row_lines = [label_lines(measure, label, font, left - 2 * PAD) for label in row_labels]
    title_h = LINE_HEIGHT + 2 * PAD if title else 0
    top = title_h + max(len(lines) for lines in column_lines) * LINE_HEIGHT + 2 * PAD
    # 2. Draw.
    canvas = Image.new("RGB", (left + columns * cell_w, top + rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((PAD, PAD), title, fill="black", font=font)
    for column, lines in enumerate(column_lines):
        for index, line in enumerate(lines):
            draw.text((left + column * cell_w + PAD, title_h + PAD + index * LINE_HEIGHT), line, fill="black", font=font)
    for row in range(rows):
        if row_labels:
            lines = row_lines[row]
            first = top + row * cell_h + (cell_h - len(lines) * LINE_HEIGHT) // 2
            for index, line in enumerate(lines):
                draw.text((PAD, first + index * LINE_HEIGHT), line, fill="black", font=font)
        for column in range(columns):
            image = cells[row][column].resize((cell_w, cell_h), Image.Resampling.NEAREST)
            canvas.paste(image, (left + column * cell_w, top + row * cell_h))
    return canvas
