"""Discover benchmarks (issue 7), measured side by side in one run against the local Hub stand-in. Prints:

1. Searching 300 LoRA repos: requests and time for a first page, the same page again (from the
   cache), and the next page (one request).
2. Opening a ~40 MB LoRA: bytes read and time for the evaluation (card + header, ranged reads)
   against downloading the file.
3. Rendering the worst cards we know of at the size read (MAX_CARD_BYTES) against a usual card.

    python benchmarks/bench_discover.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("HF_HUB_OFFLINE", None)  # huggingface_hub reads it once, at import
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from huggingface_hub import constants  # noqa: E402

from lora_space.core.settings import FLUX_DEV, Settings  # noqa: E402
from lora_space.discover.finder import Discover, choose_weight_file  # noqa: E402
from lora_space.hub.cards import render_card  # noqa: E402
from lora_space.hub.client import HubClient  # noqa: E402
from lora_space.hub.search import MAX_CARD_BYTES  # noqa: E402
from tests.hub_standin import HubStandIn, safetensors_bytes  # noqa: E402

REPOS = 300
CARD = "---\nbase_model: {base}\ntags: [lora]\nlicense: apache-2.0\ninstance_prompt: tok{index}\nwidget:\n  - text: tok{index}, a cat\n    output:\n      url: images/{index}.png\n---\n# LoRA {index}\n"


def timed(action):
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        constants.HF_TOKEN_PATH = str(root / "no-saved-token")
        constants.HF_HUB_CACHE = str(root / "hf-cache")
        with HubStandIn(root=root / "hub") as stand_in:
            small = safetensors_bytes(4)
            for index in range(REPOS):
                stand_in.add_model(
                    f"user{index % 17}/lora-{index}",
                    files={"README.md": CARD.format(base=FLUX_DEV, index=index), f"lora-{index}.safetensors": small},
                    downloads=index * 7 % 1000, likes=index % 50,
                )
            big = safetensors_bytes(1000, tensor_bytes=40_000)  # 40 MB, a ~140 kB header (two ranged reads)
            stand_in.add_model("bench/big-lora", files={"README.md": CARD.format(base=FLUX_DEV, index=0) + "x" * 20_000,
                                                        "big-lora.safetensors": big})
            settings = Settings(base_model="tiny", lora_dir=root / "loras", data_dir=root / "data", hf_endpoint=stand_in.endpoint)
            discover = Discover(settings)
            # 1. Search: cold, cached, next page.
            stand_in.reset_log()
            _, cold = timed(lambda: discover.search(limit=24, page=1))
            cold_requests = len(stand_in.requests)
            _, cached = timed(lambda: discover.search(limit=24, page=1))
            cached_requests = len(stand_in.requests) - cold_requests
            _, next_page = timed(lambda: discover.search(limit=24, page=2))
            next_requests = len(stand_in.requests) - cold_requests - cached_requests
            print(f"1. Search {REPOS + 1} LoRA repos on the Hub stand-in, 24 per page")
            print(f"   first page : {cold_requests} request(s), {cold * 1000:7.1f} ms")
            print(f"   same again : {cached_requests} request(s), {cached * 1000:7.1f} ms  ({cold / cached:,.0f}x faster, from the cache)")
            print(f"   next page  : {next_requests} request(s), {next_page * 1000:7.1f} ms")
            # 2. Evaluate against download.
            discover.evaluate("bench/big-lora")  # warm-up: imports, meta-device shapes
            stand_in.reset_log()
            evaluation, evaluate_seconds = timed(lambda: discover.evaluate("bench/big-lora"))
            evaluate_bytes = stand_in.bytes_served("/resolve/")
            ranged = all(request.range for request in stand_in.requests if "/resolve/" in request.path)
            stand_in.reset_log()
            _, download_seconds = timed(lambda: HubClient(stand_in.endpoint).download("bench/big-lora", "big-lora.safetensors"))
            download_bytes = stand_in.bytes_served("/resolve/")
            print(f"2. Open a {len(big) / 1e6:.0f} MB LoRA (card + header) against downloading it")
            print(f"   evaluate : {evaluate_bytes:>12,} bytes in {evaluate_seconds:6.3f} s (ranged reads only: {ranged}; "
                  f"{len(evaluation.verdict)} verdict lines)")
            print(f"   download : {download_bytes:>12,} bytes in {download_seconds:6.3f} s")
            print(f"   ratio    : {download_bytes / max(evaluate_bytes, 1):,.0f}x fewer bytes, "
                  f"{download_seconds / evaluate_seconds:.1f}x less time")

    # 3. Hostile cards: markdown-it scans from each '[' to the end of its paragraph; brackets that
    #    cannot open a link are escaped first, and the card read is bounded.
    usual = (CARD.format(base=FLUX_DEV, index=1) + "Some *text* with [a link](https://example.com).\n\n") * 40
    hostile = {"usual card": usual[:MAX_CARD_BYTES], "'[' x N": "[" * MAX_CARD_BYTES, "'<a' x N": "<div>" + "<a" * (MAX_CARD_BYTES // 2),
               "'![x](' x N": "![x](" * (MAX_CARD_BYTES // 5),
               "'[a' x 200, then '*a'": "[a" * 200 + "*a" * (MAX_CARD_BYTES // 2 - 200),
               "nested '[' x 500 ']' x 500": ("[" * 500 + "]" * 500) * (MAX_CARD_BYTES // 1000)}
    print(f"3. Render a {MAX_CARD_BYTES // 1024} kB card (the most that is read) and pick its weight file")
    for label, text in hostile.items():
        _, seconds = timed(lambda: (render_card(text, repo_id="a/b", endpoint="http://127.0.0.1"), choose_weight_file("a/b", ["x.safetensors"], text)))
        print(f"   {label:<27}: {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
