"""A visitor's dataset zip, read once into a preview within their quota and the disk bounds.

The Train tab shows the preview (report, thumbnails, captions) and *Start* turns it into the
job's dataset (`prepare.prepare_job` adopts it): the zip is read once per job. `/start_training`
goes the same way. A preview lives in `cleanup.preview_root(settings)/<visitor id>/<random id>`,
counts against the visitor's quota (`cleanup.visitor_usage`) and ages out as call outputs do;
the page's session keeps only its id.
"""

from __future__ import annotations

import re
import secrets
import shutil
from pathlib import Path

from ..cleanup import preview_root, quota_left
from ..disk import check_write, free_bytes, record_write, tree_bytes
from ..errors import DatasetError
from ..owners import Visitor
from ..settings import Settings
from .dataset import IngestedDataset, ZipRead, finish, read_zip
from .preview import PREVIEW_FILE, is_preview, load_preview, save_captions, save_preview

_PREVIEW_ID = re.compile(r"[0-9a-f]{32}")


def preview_folder(settings: Settings, visitor: Visitor, preview_id: str) -> Path | None:
    """The folder of `visitor`'s preview `preview_id`, or None when it is gone (or not an id)."""
    if not isinstance(preview_id, str) or not _PREVIEW_ID.fullmatch(preview_id):
        return None
    folder = preview_root(settings) / visitor.id / preview_id
    return folder if is_preview(folder) else None


def room_left(settings: Settings, visitor: Visitor) -> int | None:
    """What a preview may write: the visitor's quota left and, on a Space, the disk above its floor."""
    room = quota_left(settings, visitor)
    if settings.on_space:
        above_floor = max(0, free_bytes(settings.data_dir) - settings.storage.min_free_bytes)
        room = above_floor if room is None else min(room, above_floor)
    return room


def read_preview(settings: Settings, zip_path: str | Path, *, visitor: Visitor) -> tuple[str, IngestedDataset]:
    """Read `zip_path` once into a new preview of `visitor`'s (their earlier previews go).

    Returns:
        the preview's id and the dataset as the report shows it (no trigger word, seed 0).

    Raises:
        DatasetError: not a readable zip, or no usable image.
        LimitError: the disk bounds, or the images would pass the visitor's quota.
    """
    # 1. The disk bounds before anything is written, and the room this reading may take.
    check_write(settings)
    room = room_left(settings, visitor)
    # 2. One preview per visitor: finished earlier ones go (one being read has no preview.json yet).
    root = preview_root(settings) / visitor.id
    for old in root.glob(f"*/{PREVIEW_FILE}") if root.is_dir() else []:
        shutil.rmtree(old.parent, ignore_errors=True)
    preview_id = secrets.token_hex(16)
    folder = root / preview_id
    try:
        read = read_zip(zip_path, folder, max_output_bytes=room)
        save_preview(read, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        record_write(settings, tree_bytes(folder))
    return preview_id, finish(read, seed=0)


def preview_captions(read: ZipRead, edited: dict[str, str]) -> dict[str, str]:
    """Every image's caption as the visitor sees it: their edits, else the zip's ("" when none)."""
    return {image["name"]: edited.get(image["name"], read.captions.get(image["key"], "")) for image in read.images}


def preview_images(settings: Settings, visitor: Visitor, preview_id: str) -> dict[str, str]:
    """Image name -> saved PNG of a preview.

    Raises:
        DatasetError: the preview is gone.
    """
    read, _ = load_preview(_existing(settings, visitor, preview_id))
    return {image["name"]: image["image"] for image in read.images}


def captions_of(settings: Settings, visitor: Visitor, preview_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """(every image's caption as the visitor left it, the zip's own captions), by image name.

    Raises:
        DatasetError: the preview is gone.
    """
    read, edited = load_preview(_existing(settings, visitor, preview_id))
    return preview_captions(read, edited), preview_captions(read, {})


def keep_captions(settings: Settings, visitor: Visitor, preview_id: str, captions: dict[str, str]) -> None:
    """Keep the visitor's captions (by image name) with their preview, for *Start*.

    Raises:
        DatasetError: the preview is gone.
    """
    save_captions(_existing(settings, visitor, preview_id), captions)


def _existing(settings: Settings, visitor: Visitor, preview_id: str) -> Path:
    folder = preview_folder(settings, visitor, preview_id)
    if folder is None:
        raise DatasetError("The dataset preview is gone (previews are kept a day, and Start uses one up); upload the zip again.")
    return folder
