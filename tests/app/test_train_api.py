"""The training endpoints from gradio_client against the running app (`python app.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.app_process import running_app
from tests.train_factory import ACTIVE, colour_zip, wait_for_job

pytestmark = pytest.mark.slow  # each test here starts the app (`python app.py`)

CONFIG = {"max_train_steps": 6, "resolution": 64, "network_dim": 4, "network_alpha": 4, "learning_rate": 0.01,
          "mixed_precision": "no", "trigger_word": "redstyle", "sample_every": 3}  # fmt: skip


def test_start_follow_and_use_a_training_job_from_a_script(tmp_path):
    dataset = colour_zip(tmp_path / "red.zip")
    with running_app(tmp_path) as url:
        client = Client(url, verbose=False)
        started = client.predict(dataset=handle_file(str(dataset)), config=CONFIG, api_name="/start_training")
        assert len(started["job_id"]) == 32 and started["state"] in ("queued", "running")
        assert started["dataset_report"]["images_used"] == 6
        status = wait_for_job(client, started["job_id"], leaving=ACTIVE, timeout=60, every=0.2)
        assert status["state"] == "done", status["error"]
        assert status["step"] == status["total_steps"] == 6 and len(status["loss"]) == 6
        assert Path(status["lora_file"]).read_bytes()[:8]  # downloaded by the client
        assert len(status["samples"]) == 4 and all(Path(file).exists() for file in status["samples"])
        made = client.predict(prompt="a harbour", loras=[{"source": status["lora_name"], "strength": 1.0}],
                              seed=1, steps=2, width=64, height=64, api_name="/generate")  # fmt: skip
        assert made["metadata"]["loras"][0]["name"] == status["lora_name"]
        for api_name in ("/training_status", "/cancel_training"):
            with pytest.raises(AppError, match="no such job"):
                client.predict(job_id="0123456789abcdef0123456789abcdef", api_name=api_name)
        with pytest.raises(AppError, match="network_dim"):
            client.predict(dataset=handle_file(str(dataset)), config={"network_dim": 0}, api_name="/start_training")
        cancelled = client.predict(job_id=started["job_id"], api_name="/cancel_training")
        assert cancelled["state"] == "done"  # a finished job stays finished
