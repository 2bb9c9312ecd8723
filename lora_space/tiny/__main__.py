"""`python -m lora_space.tiny DIR [--random]`: write an offline tiny FLUX pipeline to a folder.

The drawing `tiny` model by default (`draw.py`), the random `tiny-random` one with `--random`
(`model.py`); load either with `LORA_SPACE_BASE_MODEL=DIR`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lora_space.tiny.draw import build_drawing_pipeline
from lora_space.tiny.model import build_tiny_pipeline


def save_tiny(directory: str | Path, *, drawing: bool = False) -> Path:
    """Write the random tiny pipeline (or, with `drawing`, the drawing one) to `directory` with save_pretrained."""
    directory = Path(directory)
    if drawing:
        build_drawing_pipeline().save_pretrained(directory)
    else:
        build_tiny_pipeline().save_pretrained(directory)
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write an offline tiny FLUX pipeline to a folder.")
    parser.add_argument("directory", help="where to write it; load it with LORA_SPACE_BASE_MODEL=DIR")
    parser.add_argument("--random", action="store_true", help="the random tiny-random model instead of the drawing tiny one")
    args = parser.parse_args(argv)
    path = save_tiny(args.directory, drawing=not args.random)
    print(f"tiny FLUX pipeline ({'tiny-random' if args.random else 'tiny'}) written to {path}")


if __name__ == "__main__":
    main()
