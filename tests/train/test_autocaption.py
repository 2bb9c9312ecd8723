"""Auto-captioning without the Hub: a clear DatasetError with the fix, and ingestion still works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_space.core.errors import DatasetError
from lora_space.train.autocaption import autocaption
from lora_space.train.dataset import ingest

REPO = Path(__file__).resolve().parents[2]


def test_offline_says_so_and_how_to_fix_it(tmp_path):
    dataset = ingest(REPO / "examples" / "flat_shapes.zip", tmp_path / "dest")
    images = dict(zip(dataset.dataset["name"], dataset.dataset["image"]))
    with pytest.raises(DatasetError) as caught:
        autocaption(images, offline=True)
    message = str(caught.value)
    assert "offline" in message and "Write the captions in the table yourself" in message
    # the rest keeps working: the dataset is intact and can be ingested again
    assert ingest(REPO / "examples" / "flat_shapes.zip", tmp_path / "again").report.images_used == 12


def test_an_unreachable_hub_fails_with_the_same_advice(tmp_path):
    """A real attempt against a Hub that refuses connections (a fresh process: HF_ENDPOINT is read at import)."""
    script = (
        "from lora_space.train.autocaption import autocaption\n"
        "from lora_space.core.errors import DatasetError\n"
        "try:\n"
        "    autocaption({'a': 'examples/make_dataset.py'}, device='cpu', endpoint='http://127.0.0.1:9')\n"
        "except DatasetError as error:\n"
        "    print('DatasetError:', error)\n"
    )
    env = os.environ | {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert "DatasetError: Auto-captioning needs the model" in result.stdout, result.stderr[-2000:]
    assert "cannot be reached" in result.stdout
    assert "hf download" in result.stdout
