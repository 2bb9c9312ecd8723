"""Parse untrusted text with a deadline: in a fresh interpreter that is killed when time is up.

A parser written in Python, or a regular expression, holds the GIL while it runs, so running it
in a thread bounds nothing: every other request of the app waits with it. The parsers of text
that visitors send are written to run in linear time (see `lora_space.parameters`); this is
the second line: the parse runs in its own process, `python -I -S` (no site-packages, no
environment), which is killed after `seconds`. The target must need only the standard library
and `lora_space` modules that do (its input and result are JSON).

    values = run("lora_space.parameters:parse_parameters", text, seconds=5, what="The parameters text")

Starting the interpreter costs about 50 ms.
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import errors

logger = logging.getLogger(__name__)

ROOT = str(Path(__file__).resolve().parents[1])
_CHILD = "import sys; sys.path.insert(0, sys.argv[1]); from lora_space.timebox import serve; serve(sys.argv[2])"


def run(target: str, text: str, *, seconds: float, what: str) -> Any:
    """`target(text)` in a separate interpreter, given up after `seconds`.

    Args:
        target: `"lora_space.module:function"`; the function takes one string and returns JSON types.
        text: its input.
        seconds: the deadline; the process is killed when it passes.
        what: the input as the user knows it, for messages ("The parameters text of 'a.png'").

    Returns:
        What the function returned.

    Raises:
        PromptError: the deadline passed.
        LoraSpaceError: the one the function raised (same class, same message).
        RuntimeError: the process failed otherwise (logged; the user sees an internal error).
    """
    command = [sys.executable, "-I", "-S", "-c", _CHILD, ROOT, target]
    try:
        done = subprocess.run(
            command, input=text.encode("utf-8", "surrogatepass"), capture_output=True, timeout=seconds, env={}, check=False
        )
    except subprocess.TimeoutExpired:
        logger.warning("%s took longer than %g s to parse; the parser was stopped", target, seconds)
        raise errors.PromptError(
            f"{what} took longer than {seconds:g} s to read and was given up; it is not what A1111, Forge or "
            "LoRA Space write. Use an image or recipe saved by one of them."
        ) from None
    if done.returncode != 0:
        logger.error("%s failed in its worker (exit %s): %s", target, done.returncode, done.stderr.decode(errors="replace")[-2000:])
        raise RuntimeError(f"the worker for {target} failed")
    reply = json.loads(done.stdout)
    if "error" in reply:
        kind = getattr(errors, str(reply.get("kind")), None)
        kind = kind if isinstance(kind, type) and issubclass(kind, errors.LoraSpaceError) else errors.LoraSpaceError
        raise kind(reply["error"])
    return reply["result"]


def serve(target: str) -> None:
    """The worker's side: read the text from stdin, write `{"result": ...}` or `{"error", "kind"}` to stdout."""
    module, _, name = target.partition(":")
    if not module.startswith("lora_space."):
        raise SystemExit(f"not a lora_space function: {target}")
    function = getattr(importlib.import_module(module), name)
    text = sys.stdin.buffer.read().decode("utf-8", "surrogatepass")
    try:
        reply = {"result": function(text)}
    except errors.LoraSpaceError as error:
        reply = {"error": str(error), "kind": type(error).__name__}
    sys.stdout.buffer.write(json.dumps(reply, ensure_ascii=True).encode())
