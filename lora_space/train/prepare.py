"""A job folder from a dataset zip and a config: what `JobManager.start` and the CLI both do first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checkpoint import JobFiles, write_json
from .config import TrainConfig, merged
from .dataset import DatasetReport, ingest, split_names


@dataclass
class PreparedJob:
    config: TrainConfig
    rows: list[dict]
    report: DatasetReport


def prepare_job(files: JobFiles, zip_path: str | Path, config: dict | None, *, is_tiny: bool, captions: dict | None = None) -> PreparedJob:
    """Read the zip into `files.root/dataset`, merge the configs and write `rows.json`, `config.json`, `report.json`.

    The call's values win over the zip's `config.json`.

    Raises:
        DatasetError: not a readable zip, or no usable image.
        TrainConfigError: a bad setting, named.
    """
    # 1. Read the zip with the call's trigger word, split and seed; the zip's config.json joins them.
    first = merged(None, config, is_tiny=is_tiny)
    dataset = ingest(
        zip_path, files.root / "dataset", trigger_word=first.trigger_word, validation_split=first.validation_split,
        seed=first.seed, captions=captions,
    )  # fmt: skip
    final = merged(dataset.zip_config, config, is_tiny=is_tiny)
    rows, report = [dict(row) for row in dataset.dataset], dataset.report
    if final.trigger_word != first.trigger_word:  # the report checks captions for the final trigger word
        dataset = ingest(
            zip_path, files.root / "dataset", trigger_word=final.trigger_word, validation_split=final.validation_split,
            seed=final.seed, captions=captions,
        )  # fmt: skip
        rows, report = [dict(row) for row in dataset.dataset], dataset.report
    elif (final.validation_split, final.seed) != (first.validation_split, first.seed):
        for row, split in zip(rows, split_names(len(rows), final.validation_split, final.seed)):
            row["split"] = split
        report.train_count = sum(row["split"] == "train" for row in rows)
        report.validation_count = len(rows) - report.train_count
    # 2. The folder: rows (image paths relative to it), config, report.
    for row in rows:
        row["image"] = str(Path(row["image"]).resolve().relative_to(files.root.resolve()))
    write_json(files.rows, rows)
    write_json(files.config, final.to_dict())
    write_json(files.root / "report.json", report.to_dict())
    return PreparedJob(final, rows, report)
