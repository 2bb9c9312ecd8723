"""A job folder from a dataset and a config: what `JobManager.start` and the CLI both do first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checkpoint import JobFiles, write_json
from .config import TrainConfig, merged
from .dataset import DatasetReport, finish, read_zip
from .preview import adopt, is_preview


@dataclass
class PreparedJob:
    config: TrainConfig
    rows: list[dict]
    report: DatasetReport


def prepare_job(files: JobFiles, dataset: str | Path, config: dict | None, *, is_tiny: bool, captions: dict | None = None) -> PreparedJob:
    """Read the dataset into `files.root/dataset`, merge the configs and write `rows.json`, `config.json`, `report.json`.

    The zip is read once: the trigger word, split and seed of the merged config (the call's
    values win over the zip's `config.json`) only finish that reading (`dataset.finish`).

    Args:
        files: the job's folder.
        dataset: a dataset zip, or a preview folder that read one (`preview.is_preview`), whose
            images move into the job.
        config: the call's settings by the course's `config.json` names.
        is_tiny: the app runs the tiny model (its defaults).
        captions: edited captions by image name, replacing the zip's.

    Raises:
        DatasetError: not a readable zip, or no usable image.
        TrainConfigError: a bad setting, named.
    """
    # 1. Read the zip once (or take a preview's reading); the zip's config.json joins the call's values.
    merged(None, config, is_tiny=is_tiny)  # the call's own values, named if bad, before any reading
    read = adopt(Path(dataset), files.root / "dataset") if is_preview(dataset) else read_zip(dataset, files.root / "dataset")
    final = merged(read.zip_config, config, is_tiny=is_tiny)
    result = finish(read, trigger_word=final.trigger_word, validation_split=final.validation_split, seed=final.seed, captions=captions)
    rows, report = [dict(row) for row in result.dataset], result.report
    # 2. The folder: rows (image paths relative to it), config, report.
    for row in rows:
        row["image"] = str(Path(row["image"]).resolve().relative_to(files.root.resolve()))
    write_json(files.rows, rows)
    write_json(files.config, final.to_dict())
    write_json(files.root / "report.json", report.to_dict())
    return PreparedJob(final, rows, report)
