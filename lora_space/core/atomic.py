"""`write_atomically`: the one atomic file writer (library entries, sidecars, hash cache, job state)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomically(target: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through a hidden temp file in the same folder, then `os.replace` it into place.

    A reader sees the old file or the new one, never a half-written one, even if the process
    is killed mid-write.
    """
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
