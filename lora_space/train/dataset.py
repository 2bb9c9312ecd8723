"""A dataset zip becomes normalised images, captions, a report and a `datasets.Dataset`.

Layouts (API.md): the course's `images/` + `captions/` (+ `config.json`), flat pairs
(`x.jpg` + `x.txt`), or a `datasets` imagefolder with `metadata.jsonl` (`file_name` + `text`
or `caption`), in the zip's root or under one top folder. Stems match case-insensitively.
Images are opened with a pixel limit and normalised (`images.open_normalised`: EXIF rotation,
RGB, alpha on white, first frame) into PNGs under `dest_dir`; nothing is written anywhere else.
Problems with single files become report entries; a zip that is not a zip, or has no usable
image, raises `DatasetError` (refused at the call). A zip is read once (`read_zip`) and finished
(`finish`: trigger word, split, edited captions) as often as those change.
"""

from __future__ import annotations

import codecs
import copy
import hashlib
import json
import math
import random
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
from PIL import Image

from ..errors import DatasetError, LimitError
from .archive import Member, Skipped, ZipLimits, display_name, is_junk, open_zip, read_members, safe_parts
from .images import open_normalised

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_SUFFIXES = (".txt", ".caption")
ROLE_FOLDERS = ("images", "captions")
MAX_SAVED_SIDE = 2048  # the largest training resolution; bigger images are scaled down when saved
MAX_CAPTION_CHARS = 2000
MAX_CONFIG_BYTES = 64 * 1024
GUIDANCE_SIDE = 1024  # the course: "High resolution (1024x1024+)"
MIN_IMAGES_FOR_VALIDATION = 5
# Aspect-ratio buckets: width:height, nearest in log ratio.
BUCKETS = {"1:1": 1.0, "4:3": 4 / 3, "3:4": 3 / 4, "3:2": 3 / 2, "2:3": 2 / 3, "16:9": 16 / 9, "9:16": 9 / 16, "2:1": 2.0, "1:2": 0.5}


@dataclass
class DatasetReport:
    """What was found in the zip, shown before training. Names are paths inside the zip without suffix."""

    layout: str = ""
    images_found: int = 0
    images_used: int = 0
    captions_found: int = 0
    captions_matched: int = 0
    images_without_captions: list[str] = field(default_factory=list)
    captions_without_images: list[str] = field(default_factory=list)
    captions_missing_trigger: list[str] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)  # {"kept": name, "dropped": name}
    small_images: list[dict] = field(default_factory=list)  # {"name", "width", "height"} below 1024 px
    buckets: dict[str, int] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)  # {"file", "reason"}
    notes: list[str] = field(default_factory=list)
    train_count: int = 0
    validation_count: int = 0
    trigger_word: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class IngestedDataset:
    """The result of `ingest`: the report, the rows as a `datasets.Dataset`, and the zip's config.json."""

    report: DatasetReport
    dataset: datasets.Dataset
    zip_config: dict | None = None

    @property
    def captions(self) -> dict[str, str]:
        return dict(zip(self.dataset["name"], self.dataset["caption"]))


@dataclass
class ZipRead:
    """What a zip held once read (`read_zip`), before a trigger word, a split or edited captions
    (`finish`): read once per job, finished again whenever those change.

    Attributes:
        report: the reading's part of the report (layout, counts, skipped files, duplicates, notes).
        images: one row per usable image, in name order: `key` (matching key), `name`, `image`
            (the saved PNG), `width`, `height`, `bucket`.
        captions: the zip's captions by matching key (`.txt` files, then `metadata.jsonl`).
        zip_config: the zip's config.json, if any.
    """

    report: DatasetReport
    images: list[dict]
    captions: dict[str, str]
    zip_config: dict | None = None


def ingest(
    zip_path: str | Path,
    dest_dir: str | Path,
    *,
    trigger_word: str = "",
    validation_split: float = 0.2,
    seed: int = 0,
    captions: Mapping[str, str] | None = None,
    limits: ZipLimits = ZipLimits(),
) -> IngestedDataset:
    """Read a dataset zip into normalised PNGs under `dest_dir/images` (`read_zip`, then `finish`).

    Args:
        zip_path: the uploaded zip.
        dest_dir: the job's dataset folder (created); nothing is written outside it.
        trigger_word: reported for each caption that lacks it (not added: see `add_trigger_word`).
        validation_split: share of images held out (none when fewer than 5 images).
        seed: makes the split deterministic.
        captions: edited captions by image name (case-insensitive); they replace the zip's.
        limits: bounds on members and bytes.

    Returns:
        `IngestedDataset` with `.report`, `.dataset` (columns `name`, `image`, `caption`, `split`,
        `width`, `height`, `bucket`) and `.zip_config`.

    Raises:
        DatasetError: not a zip, too many members, a bad config.json, or no usable image.
    """
    read = read_zip(zip_path, dest_dir, limits=limits)
    return finish(read, trigger_word=trigger_word, validation_split=validation_split, seed=seed, captions=captions)


def read_zip(zip_path: str | Path, dest_dir: str | Path, *, limits: ZipLimits = ZipLimits(), max_output_bytes: int | None = None) -> ZipRead:
    """Read a dataset zip once: its images normalised into PNGs under `dest_dir/images`, its captions and config.

    Args:
        zip_path: the uploaded zip.
        dest_dir: the dataset folder (created); nothing is written outside it.
        limits: bounds on members and bytes inflated.
        max_output_bytes: the most the saved PNGs may take (the room a visitor has left); None: no bound.

    Raises:
        DatasetError: not a zip, too many members, a bad config.json, or no usable image.
        LimitError: the saved images would take more than `max_output_bytes`.
    """
    report = DatasetReport()
    skipped: list[Skipped] = []
    images_dir = Path(dest_dir) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)

    # 1. Read the members one at a time within the bounds (one common top folder is stripped);
    #    images are decoded, checked and saved as they come, so only one is in memory at a time.
    saved: dict[str, dict | None] = {}  # key -> row (None: unusable or a duplicate)
    image_members: dict[str, str] = {}  # key -> member name
    text_captions: dict[str, tuple[str, bytes]] = {}
    metadata: dict[str, str] = {}
    seen_pixels: dict[str, str] = {}
    all_parts: list[tuple[str, ...]] = []
    zip_config = None
    written = 0
    with open_zip(zip_path) as archive:
        top = _common_top(archive.namelist())
        for member in read_members(archive, limits=limits, skipped=skipped, notes=report.notes):
            parts = member.parts[1:] if top and member.parts[0] == top else member.parts
            all_parts.append(parts)
            lower, key, name = parts[-1].lower(), _key(parts), _display_key(parts)
            # 2. Sort each member: config.json, metadata.jsonl, an image, a caption, or something else.
            if len(parts) == 1 and lower == "config.json":
                zip_config = _read_config(member.data)
            elif lower == "metadata.jsonl":
                metadata.update(_read_metadata(Member(parts, member.data), skipped))
            elif lower.endswith(IMAGE_SUFFIXES):
                if key in image_members:
                    skipped.append(Skipped(member.name, f"another image has the same name ({image_members[key]}); rename one"))
                    continue
                image_members[key] = member.name
                saved[key] = _save_image(member.data, name=name, member_name=member.name, folder=images_dir, index=len(saved), seen=seen_pixels, report=report, skipped=skipped)
                written += Path(saved[key]["image"]).stat().st_size if saved[key] else 0
                if max_output_bytes is not None and written > max_output_bytes:
                    raise LimitError(
                        f"The zip's images take more than {max_output_bytes / 2**20:.0f} MB once saved as PNGs, more than the "
                        "room left for your files here; upload fewer or smaller images, or delete some of your jobs or LoRAs first."
                    )
            elif lower.endswith(CAPTION_SUFFIXES):
                text_captions[key] = (name, member.data)
            else:
                suffix = Path(lower).suffix or "no suffix"
                skipped.append(Skipped(member.name, f"not an image or caption ({suffix}); images: {', '.join(IMAGE_SUFFIXES)}"))
    report.layout = _layout(all_parts, bool(metadata))
    report.images_found = len(image_members)
    report.captions_found = len(text_captions) + len(metadata)

    # 3. Captions: .txt files, then metadata.jsonl for the rest.
    decoded: dict[str, str] = {}
    for key, (name, data) in text_captions.items():
        decoded[key] = decode_caption(data, name=name, notes=report.notes)
    for key, text in metadata.items():
        decoded.setdefault(key, _clean_caption(text, name=key, notes=report.notes))
    report.captions_without_images = sorted(text_captions[key][0] if key in text_captions else key for key in decoded if key not in image_members)
    report.skipped = [{"file": display_name(item.file), "reason": item.reason} for item in skipped]
    images = [{"key": key} | saved[key] for key in sorted(key for key, row in saved.items() if row is not None)]  # type: ignore[operator]
    if not images:
        reasons = "; ".join(f"{item['file']}: {item['reason']}" for item in report.skipped[:5]) or "the zip holds no files"
        raise DatasetError(
            f"The zip has no usable image ({reasons}). Put JPEG/PNG/WebP images in an `images/` folder "
            "(with captions as `captions/NAME.txt`) or as `NAME.jpg` + `NAME.txt` pairs, then zip it again."
        )
    return ZipRead(report=report, images=images, captions=decoded, zip_config=zip_config)


def finish(
    read: ZipRead, *, trigger_word: str = "", validation_split: float = 0.2, seed: int = 0, captions: Mapping[str, str] | None = None
) -> IngestedDataset:
    """The dataset of a zip read once (`read_zip`), for a trigger word, a split and edited captions.

    `read` is left as it was, so the same reading can be finished again with other values.

    Args:
        read: what `read_zip` returned.
        trigger_word: reported for each caption that lacks it (not added: see `add_trigger_word`).
        validation_split: share of images held out (none when fewer than 5 images).
        seed: makes the split deterministic.
        captions: edited captions by image name (case-insensitive); they replace the zip's.
    """
    report = copy.deepcopy(read.report)
    report.trigger_word = trigger_word.strip()
    overrides = {str(name).lower(): str(text) for name, text in (captions or {}).items()}

    # 4. The rows in name order, each with its caption.
    rows = []
    for image in read.images:
        key, row = image["key"], {name: value for name, value in image.items() if name != "key"}
        caption = overrides.get(key, read.captions.get(key))
        if caption is None:
            report.images_without_captions.append(row["name"])
        elif key in overrides:
            caption = _clean_caption(caption, name=row["name"], notes=report.notes)
        rows.append(row | {"caption": caption or "", "has_caption": caption is not None})

    # 5. The report's counts, then a split that is the same for the same seed.
    report.images_used = len(rows)
    report.captions_matched = sum(row.pop("has_caption") for row in rows)
    report.buckets = dict(sorted(Counter(row["bucket"] for row in rows).items()))
    if report.trigger_word:
        report.captions_missing_trigger = [row["name"] for row in rows if not has_word(row["caption"], report.trigger_word)]
    for row, split in zip(rows, split_names(len(rows), validation_split, seed, notes=report.notes)):
        row["split"] = split
    report.train_count = sum(row["split"] == "train" for row in rows)
    report.validation_count = len(rows) - report.train_count
    if report.small_images:
        report.notes.append(f"{len(report.small_images)} image(s) are under the course's {GUIDANCE_SIDE} px guidance; they are used, but fine detail suffers.")
    dataset = datasets.Dataset.from_list(rows)
    return IngestedDataset(report=report, dataset=dataset, zip_config=read.zip_config)


def add_trigger_word(captions, word: str):
    """Put `word` in front of each caption that lacks it ("add trigger word to all").

    Args:
        captions: a dict (name -> caption) or a list of captions.
        word: the trigger word; empty leaves the captions as they are.

    Returns:
        The same kind of container with the new captions.
    """
    word = word.strip()

    def fixed(text: str) -> str:
        text = (text or "").strip()
        if not word or has_word(text, word):
            return text
        return f"{word}, {text}" if text else word

    if isinstance(captions, Mapping):
        return {name: fixed(text) for name, text in captions.items()}
    return [fixed(text) for text in captions]


def has_word(text: str, word: str) -> bool:
    """`word` appears in `text` as a whole word, ignoring case."""
    return bool(word) and re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text or "", flags=re.IGNORECASE) is not None


def bucket_of(width: int, height: int) -> str:
    """The aspect-ratio bucket nearest (in log ratio) to width:height."""
    ratio = math.log(width / height)
    return min(BUCKETS, key=lambda name: abs(math.log(BUCKETS[name]) - ratio))


def bucket_size(bucket: str, resolution: int, *, multiple: int = 16) -> tuple[int, int]:
    """(width, height) of a bucket at a training resolution: about resolution² pixels, multiples of `multiple`."""
    ratio = BUCKETS[bucket]
    width = round(resolution * math.sqrt(ratio) / multiple) * multiple
    height = round(resolution / math.sqrt(ratio) / multiple) * multiple
    return max(multiple, width), max(multiple, height)


def split_names(count: int, validation_split: float, seed: int, *, notes: list[str] | None = None) -> list[str]:
    """"train"/"validation" for `count` rows; deterministic for a seed; at least one train row."""
    if count < MIN_IMAGES_FOR_VALIDATION or validation_split <= 0:
        if validation_split > 0 and notes is not None:
            notes.append(f"With {count} image(s) no validation split is held out (it needs at least {MIN_IMAGES_FOR_VALIDATION}); validation loss is not measured.")
        return ["train"] * count
    held = min(count - 1, max(1, round(count * validation_split)))
    order = list(range(count))
    random.Random(seed).shuffle(order)
    validation = set(order[:held])
    return ["validation" if index in validation else "train" for index in range(count)]


def decode_caption(data: bytes, *, name: str = "", notes: list[str] | None = None) -> str:
    """Caption bytes as one line of text: UTF-8 (with or without BOM), UTF-16 with BOM, else Latin-1."""
    text, latin1 = decode_text(data)
    if latin1 and notes is not None:
        notes.append(f"Caption {name!r} is not UTF-8; it was read as Latin-1. Save captions as UTF-8.")
    return _clean_caption(text, name=name, notes=notes)


def decode_text(data: bytes) -> tuple[str, bool]:
    """Bytes as text: UTF-8 (BOM stripped), UTF-16 with a BOM, else Latin-1; returns (text, was_latin1)."""
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8) :].decode("utf-8", errors="replace"), False
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace"), False
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("latin-1"), True


def _clean_caption(text: str, *, name: str, notes: list[str] | None) -> str:
    text = " ".join(text.replace("\x00", "").split())
    if len(text) > MAX_CAPTION_CHARS:
        text = text[:MAX_CAPTION_CHARS]
        if notes is not None:
            notes.append(f"Caption {name!r} was cut to {MAX_CAPTION_CHARS} characters (FLUX reads about 512 tokens).")
    return text


def _save_image(data: bytes, *, name: str, member_name: str, folder: Path, index: int, seen: dict[str, str], report: DatasetReport, skipped: list[Skipped]) -> dict | None:
    """Normalise one image and save it as a PNG; None (with a report entry) when unusable or a duplicate."""
    try:
        image, original_size = open_normalised(data, notes=report.notes, name=name)
    except ValueError as error:
        skipped.append(Skipped(member_name, str(error)))
        return None
    digest = hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()
    if digest in seen:
        report.duplicates.append({"kept": seen[digest], "dropped": name})
        return None
    seen[digest] = name
    if min(original_size) < GUIDANCE_SIDE:
        report.small_images.append({"name": name, "width": original_size[0], "height": original_size[1]})
    if max(image.size) > MAX_SAVED_SIDE:
        image.thumbnail((MAX_SAVED_SIDE, MAX_SAVED_SIDE), Image.Resampling.LANCZOS)
    target = folder / f"{index:05d}_{_safe_stem(name)}.png"
    image.save(target, format="PNG", compress_level=1)  # about 4x faster than the default level 6
    return {"name": name, "image": str(target), "width": image.width, "height": image.height, "bucket": bucket_of(image.width, image.height)}


def _common_top(names: list[str]) -> str | None:
    """The one top folder every usable member sits in (`dataset/images/...`), or None."""
    paths = [parts for parts in (safe_parts(name) for name in names if not name.endswith("/")) if parts and not is_junk(parts)]
    if not paths or any(len(parts) < 2 for parts in paths):
        return None
    tops = {parts[0] for parts in paths}
    top = tops.pop() if len(tops) == 1 else None
    return None if top is None or top.lower() in ROLE_FOLDERS else top


def _key(parts: tuple[str, ...]) -> str:
    """The matching key: the path without the role folder and suffix, lowercased."""
    return _display_key(parts).lower()


def _display_key(parts: tuple[str, ...]) -> str:
    if len(parts) > 1 and parts[0].lower() in ROLE_FOLDERS:
        parts = parts[1:]
    return str(Path(*parts).with_suffix("")) if Path(parts[-1]).suffix else "/".join(parts)


def _layout(paths: list[tuple[str, ...]], has_metadata: bool) -> str:
    if has_metadata:
        return "metadata.jsonl"
    if any(len(parts) > 1 and parts[0].lower() in ROLE_FOLDERS for parts in paths):
        return "course (images/ + captions/)"
    return "flat pairs (x.jpg + x.txt)"


def _read_config(data: bytes) -> dict:
    if len(data) > MAX_CONFIG_BYTES:
        raise DatasetError(f"config.json in the zip is {len(data):,} bytes; a training config is at most {MAX_CONFIG_BYTES:,}. Remove it or trim it.")
    try:
        values = json.loads(decode_text(data)[0])
    except (json.JSONDecodeError, RecursionError) as error:
        raise DatasetError(f"config.json in the zip is not valid JSON ({getattr(error, 'msg', 'too deeply nested')}); fix it or leave it out.") from None
    if not isinstance(values, dict):
        raise DatasetError('config.json in the zip must be a JSON object such as {"max_train_steps": 500}.')
    return values


def _read_metadata(member: Member, skipped: list[Skipped]) -> dict[str, str]:
    """`metadata.jsonl`: one JSON object a line with `file_name` and `text` (or `caption`/`prompt`)."""
    folder = member.parts[:-1]
    captions = {}
    for number, line in enumerate(decode_text(member.data)[0].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            skipped.append(Skipped(f"{member.name} line {number}", "not valid JSON"))
            continue
        file_name = row.get("file_name") if isinstance(row, dict) else None
        text = next((row[key] for key in ("text", "caption", "prompt") if isinstance(row, dict) and isinstance(row.get(key), str)), None)
        parts = tuple(part for part in str(file_name or "").split("/") if part not in ("", "."))
        if not isinstance(file_name, str) or text is None or not parts or ".." in parts:
            skipped.append(Skipped(f"{member.name} line {number}", 'needs "file_name" and "text" (or "caption")'))
            continue
        captions[_key(folder + parts)] = text
    return captions


def _safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:60].strip("_") or "image"
