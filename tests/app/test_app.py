"""The app as a user starts it: `python app.py` on a free port, called with gradio_client."""

from __future__ import annotations

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from lora_space.generate.recipe import parse_parameters
from tests.app_process import LORA_NAMES, running_app, write_library

pytestmark = pytest.mark.slow  # each test here starts the app (`python app.py`)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """`python app.py` in tiny mode, as the README starts it, with four LoRAs and a broken file."""
    root = tmp_path_factory.mktemp("app")
    write_library(root / "loras")
    with running_app(root) as url:
        yield url


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def generate(client: Client, prompt: str, loras: list[dict] | None = None, seed: int = 7) -> dict:
    return client.predict(prompt=prompt, loras=loras or [], seed=seed, steps=2, width=64, height=64, api_name="/generate")


def test_app_answers_and_lists_its_library(app_url):
    client = Client(app_url, verbose=False)
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name in ("/list_loras", "/inspect_lora", "/generate", "/strength_sweep", "/batch_generate", "/convert_lora", "/resize_lora", "/compare_loras"):
        assert name in endpoints
    library = {item["name"]: item for item in client.predict(api_name="/list_loras")}
    assert set(library) == set(LORA_NAMES) | {"broken"}
    assert library["wtrclr_style"]["format"] == "diffusers"
    assert library["wtrclr_style"]["trigger_words"] == ["wtrclr"]
    assert library["broken"]["format"] == "invalid"


def test_generate_returns_pngs_with_their_recipe(app_url):
    client = Client(app_url, verbose=False)
    result = generate(client, "a red fox <lora:wtrclr_style:0.8>", [{"source": "neon", "strength": 0.4}])
    metadata = result["metadata"]
    assert metadata["seed"] == 7
    assert metadata["prompt"] == "wtrclr, a red fox"  # tag removed, trigger word inserted
    assert [(lora["name"], lora["strength"]) for lora in metadata["loras"]] == [("neon", 0.4), ("wtrclr_style", 0.8)]
    (image_path,) = result["images"]
    image = Image.open(image_path)
    assert image.size == (64, 64)
    parameters = parse_parameters(image.info["parameters"])
    assert parameters["seed"] == 7 and parameters["steps"] == 2
    assert parameters["prompt"] == "wtrclr, a red fox"
    assert {(lora["name"], lora["strength"]) for lora in parameters["loras"]} == {("neon", 0.4), ("wtrclr_style", 0.8)}


def test_eight_concurrent_calls_each_get_their_own_mix(app_url):
    mixes = [
        [],
        [{"source": "wtrclr_style", "strength": 1.0}],
        [{"source": "detailed_eyes", "strength": 0.8}],
        [{"source": "wtrclr_style", "strength": 0.8}, {"source": "detailed_eyes", "strength": 0.4}],
        [{"source": "film_look", "strength": 1.2}],
        [{"source": "neon", "strength": -0.6}],
        [{"source": "neon", "strength": 0.6}, {"source": "film_look", "strength": 0.3}],
        [{"source": "detailed_eyes", "strength": 0.2}],
    ]
    client = Client(app_url, verbose=False)
    alone = [pixels(generate(client, "a castle", mix)["images"][0]) for mix in mixes]
    for first in range(len(alone)):  # every mix gives its own image, so a leak would show
        for second in range(first):
            assert np.abs(alone[first] - alone[second]).max() > 2, (first, second)
    jobs = [Client(app_url, verbose=False).submit(prompt="a castle", loras=mix, seed=7, steps=2, width=64, height=64, api_name="/generate") for mix in mixes]
    for index, job in enumerate(jobs):
        together = pixels(job.result(timeout=120)["images"][0])
        assert np.abs(together - alone[index]).max() <= 1, index  # fused and unfused agree to 8-bit rounding


def test_a_broken_lora_fails_its_request_only(app_url):
    client = Client(app_url, verbose=False)
    before = pixels(generate(client, "a bridge", [{"source": "film_look", "strength": 0.9}])["images"][0])
    with pytest.raises(AppError, match="broken"):
        generate(client, "a bridge", [{"source": "film_look", "strength": 0.9}, {"source": "broken", "strength": 1.0}])
    after = pixels(generate(client, "a bridge", [{"source": "film_look", "strength": 0.9}])["images"][0])
    assert np.abs(after - before).max() <= 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"width": 65}, "multiple of 16"),
        ({"steps": 500}, "steps=500"),
        ({"prompt": "x <lora:neon:9>"}, "<lora:neon:9>"),
        ({"prompt": "x <lora:no_such_lora>"}, "no_such_lora"),
        ({"loras": [{"source": "model.ckpt"}]}, "pickle"),
    ],
)
def test_bad_input_is_an_app_error_that_says_how_to_fix_it(app_url, kwargs, message):
    client = Client(app_url, verbose=False)
    arguments = {"prompt": "x", "steps": 2, "width": 64, "height": 64} | kwargs
    with pytest.raises(AppError, match=message):
        client.predict(**arguments, api_name="/generate")


def test_sweep_and_batch_over_the_api(app_url):
    import zipfile

    client = Client(app_url, verbose=False)
    sweep = client.predict(
        prompt="a tree", x_source="neon", x_strengths=[0, 0.5, 1], y_source="film_look", y_strengths=[0, 1],
        seed=3, steps=2, width=64, height=64, api_name="/strength_sweep",
    )
    assert len(sweep["images"]) == 6 and Image.open(sweep["grid"]).size[0] > 3 * 64
    base = pixels(generate(client, "a tree", seed=3)["images"][0])
    assert np.abs(pixels(sweep["images"][0]) - base).max() <= 1  # the 0/0 cell is the base image
    batch = client.predict(prompts=["a tree", "a boat"], loras=[{"source": "neon", "strength": 0.7}], seed=3, steps=2, width=64, height=64, api_name="/batch_generate")
    names = zipfile.ZipFile(batch["zip"]).namelist()
    assert len([name for name in names if name.endswith(".png")]) == 2
    assert len([name for name in names if name.endswith(".json")]) == 2


def test_the_readme_client_example_runs(app_url):
    import subprocess
    import sys

    from tests.app_process import REPO

    done = subprocess.run([sys.executable, "examples/client.py", app_url], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "sweep grid:" in done.stdout and "portfolio zip:" in done.stdout


def test_inspect_lora_over_the_api(app_url):
    client = Client(app_url, verbose=False)
    report = client.predict(source="wtrclr_style", api_name="/inspect_lora")
    assert report["format"] == "diffusers" and report["rank"] == 4
    assert report["compatible"] is True and report["coverage"] == 1.0
    assert report["trigger_words"] == ["wtrclr"]
    with pytest.raises(AppError, match="broken"):
        client.predict(source="broken", api_name="/inspect_lora")
    assert client.predict(api_name="/list_loras")  # and the app keeps serving


def test_lora_tools_over_the_api(app_url):
    from safetensors import safe_open

    client = Client(app_url, verbose=False)
    converted = client.predict(source="wtrclr_style", target="kohya", api_name="/convert_lora")
    assert converted["source_format"] == "diffusers" and converted["num_modules"] == 6
    with safe_open(converted["file"], "pt") as handle:
        assert all(key.startswith("lora_unet_") for key in handle.keys())
    resized = client.predict(source="wtrclr_style", rank=2, dtype="bf16", api_name="/resize_lora")
    assert resized["report"]["energy_kept"] < 1
    with safe_open(resized["file"], "pt") as handle:
        assert {handle.get_slice(key).get_shape()[0] for key in handle.keys() if "lora_A" in key} == {2}
    report = client.predict(sources=["wtrclr_style", "neon"], strengths=[0.8, 0.6], api_name="/compare_loras")
    assert report["loras"] == ["wtrclr_style", "neon"] and report["pairs"][0]["shared_modules"] == 6
    with pytest.raises(AppError, match="Give 2 to 6 LoRAs"):
        client.predict(sources=["neon"], api_name="/compare_loras")
