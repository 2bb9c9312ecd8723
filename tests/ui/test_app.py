"""`build_demo()` in process: the four tabs in order, exactly the README's public endpoints, the header;
what a page session holds, and who it is."""

from __future__ import annotations

import asyncio
import hashlib
import io
import pickle
import re
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio.state_holder import SessionState
from PIL import Image

from lora_space.core.settings import Settings
from lora_space.generate.engine import Engine
from lora_space.service import LoraSpace
from lora_space.tiny.model import build_tiny_pipeline
from lora_space.ui.app import build_demo, header_markdown
from lora_space.visitors import cleanup
from lora_space.visitors.owners import Visitor, is_browser_id
from tests.app_process import SPACE_ENV

REPO = Path(__file__).resolve().parents[2]


API_MD_ENDPOINTS = {
    "search_loras", "inspect_lora", "list_loras", "generate", "start_training", "training_status",
    "cancel_training", "resume_training", "bake_lora", "publish",
}
"""The endpoint table of the public contract (shared/design/API.md, outside this repo): every row is served."""


def readme_endpoints() -> set[str]:
    """The api_names of the README's endpoint table (its rows start with a `/name` in backticks)."""
    rows = re.findall(r"^\| `/(\w+)` \|", (REPO / "README.md").read_text(), flags=re.M)
    assert len(rows) == len(set(rows)), rows
    return set(rows)


def test_build_demo_has_the_tabs_and_endpoints(settings):
    space = LoraSpace(settings, Engine(build_tiny_pipeline()))
    demo = build_demo(space)
    assert isinstance(demo, gr.Blocks)
    tabs = [block.label for block in demo.blocks.values() if isinstance(block, gr.Tab) and block.id in {"discover", "generate", "train", "publish"}]
    assert tabs == ["Discover", "Generate", "Train", "Publish"]
    public = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert public == readme_endpoints()  # exactly the documented endpoints: none missing, none undocumented
    assert API_MD_ENDPOINTS <= readme_endpoints()  # the README documents the contract's rows, and the app's additions
    assert "tiny" in header_markdown(space) and "blocks of colour" in header_markdown(space)


# --------------------------------------------------------------------------------------------------
# Hardening (issue 14, holes 8 and 10): what a page session holds, and who it is.
#
# - Session memory: one 5.5 MB zip of 5,000 images left about 1.2 MB (pickled; 4 MB of Python
#   objects) in the session: the preview's captions and image paths in a `gr.State`, and every
#   caption in the table. The preview stays on disk in the visitor's own folder (counted in their
#   quota) and the session keeps its id and the first rows of the table.
# - Browser ids: the first id was derived from gradio's session hash (`Math.random`, about 52
#   bits, sent with every request). It is now 128 random bits made on the server for each page
#   session, which the load event stores in the browser; an event before the load gets the same.
#
# Both run the app's real event handlers in-process (`Blocks.process_api`, as gradio's queue does).
ALICE_ID = "a" * 32


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The whole app as on a Space, built in this process."""
    root = tmp_path_factory.mktemp("session")
    import gradio.oauth

    with pytest.MonkeyPatch.context() as patch:
        for name, value in SPACE_ENV.items():
            patch.setenv(name, value)
            if hasattr(gradio.oauth, name):  # gradio read these when it was imported
                patch.setattr(gradio.oauth, name, value)
        env = {"LORA_SPACE_BASE_MODEL": "tiny-random", "LORA_SPACE_DATA_DIR": str(root / "data"), "LORA_SPACE_LORA_DIR": str(root / "loras"),
               "HF_HUB_OFFLINE": "1", "SPACE_ID": SPACE_ENV["SPACE_ID"]}  # fmt: skip
        space = LoraSpace(Settings.from_env(env), Engine(build_tiny_pipeline()))
        yield build_demo(space), space, root


def run_event(demo, fn, state: SessionState, values: dict, session: str = "session-1"):
    """Run one of the page's events as the queue does; inputs not in `values` get what a fresh page sends."""
    inputs = [values.get(block._id, None if block.stateful else getattr(block, "default_value", getattr(block, "value", None))) for block in fn.inputs]
    request = gr.Request(session_hash=session)  # what the queue hands the handlers: the page's gradio session hash
    return asyncio.run(demo.process_api(fn, inputs, state=state, session_hash=session, request=request))


def element(demo, elem_id: str):
    return next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == elem_id)


def state_bytes(state: SessionState) -> int:
    """What the session keeps: its `gr.State` values and the component values gradio stores for it, pickled."""
    return len(pickle.dumps(state.state_data)) + len(pickle.dumps(state.config_values))


def many_images_zip(path, count: int = 5000):
    """About 5.5 MB: `count` small images with captions (the issue's zip)."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(count):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buffer, "PNG")
            archive.writestr(f"images/img_{index:05d}.png", buffer.getvalue())
            archive.writestr(f"captions/img_{index:05d}.txt", f"mystyle, picture {index} of a quiet harbour")
    return path


def test_a_5000_image_upload_keeps_the_session_small_and_the_preview_on_disk(demo):
    app, space, root = demo
    upload = element(app, "train-zip")
    fn = next(fn for fn in app.fns.values() if any(target[0] == upload._id and target[1] == "upload" for target in fn.targets))
    zip_path = many_images_zip(root / "many.zip")
    assert 5_000_000 < zip_path.stat().st_size < 6_500_000
    state = SessionState(app)
    before = state_bytes(state)
    stored = next(block for block in fn.inputs if block.__class__.__name__ == "BrowserState")
    run_event(app, fn, state, {upload._id: {"path": str(zip_path), "orig_name": "many.zip", "meta": {"_type": "gradio.FileData"}}, stored._id: ALICE_ID})
    grown = state_bytes(state) - before
    print(f"session state after a 5,000-image upload: {grown / 1e3:.0f} kB more")
    assert grown < 150_000  # before: 1,150 kB
    # The preview is on disk, in alice's own folder, and counts against her quota.
    alice = Visitor("browser", ALICE_ID)
    previews = list((cleanup.preview_root(space.settings) / alice.id).glob("*/images/*.png"))
    assert len(previews) == 5000 and cleanup.visitor_usage(space.settings, alice) >= sum(path.stat().st_size for path in previews)


def test_a_new_browser_gets_128_random_bits_made_on_the_server(demo):
    app, space, _ = demo
    load = next(fn for fn in app.fns.values() if fn.name == "fill_browser_id")
    stored = next(block for block in load.inputs if block.__class__.__name__ == "BrowserState")
    ids = []
    for _ in range(2):  # two page loads with the same gradio session hash (which the browser makes and sends)
        state = SessionState(app)
        ids.append(run_event(app, load, state, {stored._id: ""}, session="same-hash")["data"][0])
    assert all(is_browser_id(value) for value in ids) and ids[0] != ids[1]
    assert hashlib.sha256(b"browser-id:same-hash").hexdigest()[:32] not in ids  # nothing derived from the session hash
    assert not any(value in str(app.get_config_file()) for value in ids)  # never in the page's /config
    # A browser that has an id keeps it.
    assert run_event(app, load, SessionState(app), {stored._id: ALICE_ID})["data"][0] == ALICE_ID
