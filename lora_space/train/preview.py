"""A dataset zip read once, kept on disk: the Train tab's preview, which *Start* turns into the job's dataset.

A preview folder holds the normalised images (`images/`) and `preview.json`: the reading
(`dataset.ZipRead`, image paths relative to the folder) and the captions as the visitor last
left them (`captions`: by image name, after *Add trigger word to all*, *Auto-caption* or edits).
The page's session keeps only the preview's id; the folder's place and age are
`cleanup.preview_root`'s. `adopt` moves the images into a job's folder, so the zip is read once
per job however often the trigger word or the split change.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from ..errors import DatasetError
from .checkpoint import read_json, write_json
from .dataset import DatasetReport, ZipRead

PREVIEW_FILE = "preview.json"


def is_preview(path: str | Path) -> bool:
    """Whether `path` is a preview folder (rather than a zip)."""
    return Path(path).is_dir() and (Path(path) / PREVIEW_FILE).is_file()


def save_preview(read: ZipRead, folder: Path, captions: dict[str, str] | None = None) -> None:
    """Write `read` (whose images are under `folder/images`) and the shown captions to `folder/preview.json`."""
    images = [image | {"image": str(Path(image["image"]).resolve().relative_to(folder.resolve()))} for image in read.images]
    values = {"report": asdict(read.report), "images": images, "captions": read.captions, "zip_config": read.zip_config}
    write_json(folder / PREVIEW_FILE, values | {"edited": captions or {}})


def load_preview(folder: Path) -> tuple[ZipRead, dict[str, str]]:
    """The reading kept in `folder`, and the captions the visitor left (by image name; empty: the zip's).

    Raises:
        DatasetError: the preview is gone (cleaned after a day, or used by a job).
    """
    values = read_json(folder / PREVIEW_FILE)
    if not isinstance(values, dict):
        raise DatasetError("The dataset preview is gone (previews are kept a day, and Start uses one up); upload the zip again.")
    images = [image | {"image": str(folder / image["image"])} for image in values["images"]]
    read = ZipRead(DatasetReport(**values["report"]), images, values["captions"], values.get("zip_config"))
    return read, dict(values.get("edited") or {})


def save_captions(folder: Path, captions: dict[str, str]) -> None:
    """Keep the captions the visitor left (by image name) with the preview."""
    read, _ = load_preview(folder)
    save_preview(read, folder, captions)


def adopt(folder: Path, dest_dir: Path) -> ZipRead:
    """Move a preview's images into `dest_dir/images` (a job's dataset folder) and return its reading there.

    The preview folder is removed: its images now belong to the job.
    """
    read, _ = load_preview(folder)
    dest_dir.mkdir(parents=True, exist_ok=True)
    shutil.move(str(folder / "images"), str(dest_dir / "images"))
    images = [image | {"image": str(dest_dir / "images" / Path(image["image"]).name)} for image in read.images]
    shutil.rmtree(folder, ignore_errors=True)
    return ZipRead(read.report, images, read.captions, read.zip_config)
