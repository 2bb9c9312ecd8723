"""One image from a dataset zip, decoded within bounds and normalised (EXIF rotation, RGB, alpha on white, first frame)."""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

PIL_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG also opens MPO (phone photos)
MAX_PIXELS = 64_000_000  # ~8000 x 8000; more is refused before decoding (below PIL's own bomb limit)
MIN_SIDE = 16


def open_normalised(data: bytes, *, name: str = "", notes: list[str] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode image bytes into an RGB image (EXIF rotation applied, alpha on white, first frame).

    Returns:
        The image and its size before any scaling (after rotation).

    Raises:
        ValueError: not a supported image, too many pixels, too small, or truncated/corrupt;
            the message is the report's reason.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except Image.DecompressionBombError:
        raise ValueError(f"more than {MAX_PIXELS:,} pixels (a decompression bomb?): not decoded") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ValueError("not a readable JPEG, PNG, WebP, BMP, GIF or TIFF image") from None
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ValueError(f"{width}x{height} is more than {MAX_PIXELS:,} pixels (a decompression bomb?): not decoded")
        if min(width, height) < MIN_SIDE:
            raise ValueError(f"{width}x{height} is too small; images need at least {MIN_SIDE} px a side")
        if getattr(image, "n_frames", 1) > 1 and notes is not None:
            notes.append(f"{name}: an animated image; its first frame is used.")
        try:
            image.seek(0)
            image.load()
            rotated = ImageOps.exif_transpose(image)
            rgb = _to_rgb(rotated)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
            raise ValueError(f"truncated or corrupt ({type(error).__name__}): re-export it") from None
    return rgb, rgb.size


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency flattened on white; 16-bit and float scaled to 8-bit; CMYK converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = image.convert("I") if image.mode.startswith("I;16") else image
        high = 65535 if image.mode == "I" and (image.getextrema()[1] or 0) > 255 else 255
        image = image.point(lambda value: value * (255 / high)).convert("L") if image.mode == "I" else image.convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
