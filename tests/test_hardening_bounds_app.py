"""Hardening (issue 14, holes 3 and 4) against the running app (`python app.py`, tiny) on a Space.

- Three fresh `gradio_client` sessions from one address are three visitors, but one address:
  together they never have more calls running than `LORA_SPACE_ADDRESS_REQUESTS`.
- The CRC-bomb zip (members whose checksums lie, bzip2 members, thousands of members; built in
  code) sent to `/start_training` is refused within 30 s (it inflated 15 GiB in 77 s per read before).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.app_process import SPACE_ENV, running_app
from tests.train_factory import crc_bomb_zip

ADDRESS_REQUESTS = 2


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounds-app")
    env = SPACE_ENV | {"LORA_SPACE_ADDRESS_REQUESTS": str(ADDRESS_REQUESTS), "OMP_NUM_THREADS": "1"}
    with running_app(root, **env) as url:
        yield url, root


def test_three_fresh_sessions_from_one_address_share_its_bound(app):
    url, _ = app
    clients = [Client(url, verbose=False) for _ in range(ADDRESS_REQUESTS + 1)]  # three visitors, one address (127.0.0.1)
    ready = threading.Barrier(len(clients))

    def call(client: Client):
        ready.wait()  # the three calls leave together; each takes seconds on tiny at 128 px and 40 steps
        try:
            return client.predict(prompt="a harbour", seed=1, steps=40, width=128, height=128, api_name="/generate")
        except AppError as error:
            return error

    with ThreadPoolExecutor(len(clients)) as pool:
        outcomes = list(pool.map(call, clients))
    refused = [outcome for outcome in outcomes if isinstance(outcome, AppError)]
    served = [outcome for outcome in outcomes if not isinstance(outcome, AppError)]
    print(f"three fresh sessions from one address: {len(served)} served, {len(refused)} refused")
    assert refused and all("Your address already has 2 requests running" in str(error) for error in refused), outcomes
    assert 1 <= len(served) <= ADDRESS_REQUESTS
    # Once they are done, the address has its turns back.
    assert clients[0].predict(prompt="a harbour", seed=1, steps=2, width=64, height=64, api_name="/generate")["images"]


def test_the_crc_bomb_is_refused_within_30_seconds(app):
    url, root = app
    bomb = crc_bomb_zip(root / "bomb.zip")
    client = Client(url, verbose=False)
    started = time.perf_counter()
    with pytest.raises(AppError) as caught:
        client.predict(dataset=handle_file(str(bomb)), config={"max_train_steps": 2}, api_name="/start_training")
    elapsed = time.perf_counter() - started
    assert elapsed < 30, f"refused after {elapsed:.1f} s"
    assert "no usable image" in str(caught.value) and "only stored and deflate members are read" in str(caught.value)
    assert not any((root / "data" / "jobs").glob("*/job.json")) if (root / "data" / "jobs").exists() else True
    print(f"CRC bomb ({bomb.stat().st_size / 1e6:.1f} MB zip) refused by /start_training in {elapsed:.1f} s")
