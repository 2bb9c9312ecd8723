"""Hostile recipe text, measured side by side in one run on this CPU. Prints:

1. A1111's `parameters` key/value pattern (the one `infotext_utils.re_param` uses, which LoRA
   Space used until issue 14) against `lora_space.parameters`' bounded one, on lines without the
   `:` they look for, at 4,000 to 16,000 characters: the first grows with the square of the
   length, the second linearly.
2. Reading the recipe of a 1 KB PNG whose `parameters` chunk inflates to 1,048,000 characters
   (refused before parsing), and of a usual PNG (the parse runs in a separate interpreter).

    python benchmarks/bench_hostile_text.py
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lora_space import parameters
from lora_space.errors import PromptError
from lora_space.recipe import Recipe, read_png_recipe

A1111 = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
LINES = {
    "words 'a a a ...'": lambda n: "a " * (n // 2),
    "one word 'aaa...'": lambda n: "a" * n,
    "'a' + spaces + ','": lambda n: "a" + " " * (n - 2) + ",",
}


def seconds(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    print("1. key/value pattern on a line without ':'       A1111 (s)   bounded (s)   ratio")
    for name, make in LINES.items():
        for length in (4_000, 8_000, 16_000):
            line = make(length)
            old = seconds(lambda: A1111.findall(line))
            new = seconds(lambda: parameters.parse_parameters(line))
            print(f"   {name:22s} {length:>6,} chars          {old:8.3f}    {new:10.4f}   {old / new:7.0f}x")
    with tempfile.TemporaryDirectory() as folder:
        bomb = Path(folder) / "bomb.png"
        info = PngInfo()
        info.add_text("parameters", "a " * 524_000, zip=True)
        Image.new("RGB", (8, 8)).save(bomb, pnginfo=info)
        usual = Path(folder) / "usual.png"
        info = PngInfo()
        info.add_text("parameters", parameters.to_parameters(Recipe("a harbour at dawn", loras=(("ink", 0.8),))))
        Image.new("RGB", (8, 8)).save(usual, pnginfo=info)

        def refuse() -> None:
            try:
                read_png_recipe(bomb)
            except PromptError:
                return
            raise AssertionError("the bomb was read")

        print(f"2. {bomb.stat().st_size:,}-byte PNG, 1,048,000-character parameters: refused in {seconds(refuse) * 1000:.2f} ms")
        print(f"   a usual A1111 PNG, parsed in a separate interpreter: {seconds(lambda: read_png_recipe(usual)) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
