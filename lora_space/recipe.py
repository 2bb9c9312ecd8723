"""Image recipes: what made an image, as A1111/Forge "parameters" text and as JSON.

A PNG made here carries its recipe twice: as A1111/Forge `parameters` text
(`lora_space.parameters`: the prompt with `<lora:NAME:STRENGTH>` tags, the negative prompt and
one line of `Key: value` settings, which A1111, Forge and Civitai read), and as JSON
(`recipe_to_json`) in a second PNG text chunk, `lora_space_recipe`, that `read_png_recipe`
prefers: sources, revisions and trigger words do not fit the A1111 format.

Images and recipe files come from anyone, so reading them is bounded: a PNG's text chunks are
read without decoding its pixels, at most `MAX_TEXT_BYTES` each once inflated; a recipe file
is at most `MAX_TEXT_BYTES`; and `parameters` text is parsed in a separate interpreter that is
killed after `PARSE_SECONDS` (`lora_space.timebox`), so that no image can hold the app.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from . import timebox
from .errors import PromptError
from .parameters import HASH, TYPE_NAMES, check_length, parse_parameters, to_parameters
from .prompts import MAX_STRENGTH, MIN_STRENGTH, check_name
from .settings import FLUX_DEV

PARAMETERS_CHUNK = "parameters"
RECIPE_CHUNK = "lora_space_recipe"
RECIPE_FORMAT = "lora-space-recipe"
RECIPE_VERSION = 1
MAX_TEXT_BYTES = 64 * 1024
"""The most a recipe (a PNG text chunk once inflated, or a .json file) may hold; ours are a few KB."""
MAX_PNG_CHUNKS = 100_000
"""Chunks of a PNG looked at for its text (a 20 MB image in 8 KB chunks has about 2,500)."""
PARSE_SECONDS = 5.0
"""The time `parameters` text may take to parse (it takes milliseconds; the rest is a new interpreter)."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_KEYWORD_BYTES = 80  # a PNG text keyword is 1-79 bytes and a NUL


@dataclass(frozen=True)
class LoraRef:
    """One LoRA in a recipe.

    Attributes:
        name: the name in its `<lora:...>` tag (library name or Hub id).
        strength: -2 to 3; 0 is off.
        source: where it was loaded from (`user/repo/file.safetensors`, a library name).
        revision: the Hub commit it was loaded at, for an exact replay.
        trigger_words: the trigger words inserted for it.
        hash: A1111's short hash of the file (`lora_space.hashes`, 12 hex digits), or "".
    """

    name: str
    strength: float = 1.0
    source: str = ""
    revision: str = ""
    trigger_words: tuple[str, ...] = ()
    hash: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", check_name(self.name))
        object.__setattr__(self, "trigger_words", tuple(self.trigger_words))
        object.__setattr__(self, "hash", _checked_hash(self.hash, f"LoRA {self.name!r}"))
        if not MIN_STRENGTH <= self.strength <= MAX_STRENGTH:
            raise PromptError(
                f"LoRA {self.name!r} has strength {self.strength}, outside {MIN_STRENGTH:g} to {MAX_STRENGTH:g}; "
                "use a strength in that range."
            )


@dataclass(frozen=True)
class Recipe:
    """Everything needed to make an image again.

    Attributes:
        prompt: the prompt as sent to the model (tags removed, trigger words inserted).
        negative_prompt: used only when `true_cfg` > 1.
        steps, seed, width, height: as generated; `seed` is the seed used.
        sampler, schedule: the names A1111/Forge show for FLUX's flow-match Euler sampler.
        guidance: FLUX-dev's distilled guidance ("Distilled CFG Scale").
        true_cfg: true classifier-free guidance ("CFG scale"); 1 is off.
        model: the base model's Hub id (or `tiny`, or a local folder).
        loras: the LoRAs, in order: `LoraRef`s, or `(name, strength)` pairs made into them.
        model_hash: A1111's `Model hash` of a single-file base model, or "" (a diffusers folder,
            a Hub id or `tiny` has none).
    """

    prompt: str
    negative_prompt: str = ""
    steps: int = 28
    sampler: str = "Euler"
    schedule: str = "Simple"
    guidance: float = 3.5
    true_cfg: float = 1.0
    seed: int = 0
    width: int = 1024
    height: int = 1024
    model: str = FLUX_DEV
    loras: tuple[LoraRef, ...] = field(default_factory=tuple)
    model_hash: str = ""

    def __post_init__(self) -> None:
        loras = tuple(item if isinstance(item, LoraRef) else LoraRef(*item) for item in self.loras)
        object.__setattr__(self, "loras", loras)
        object.__setattr__(self, "model_hash", _checked_hash(self.model_hash, "The model"))

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON types (no `path` key)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["loras"] = [
            {
                "name": lora.name,
                "strength": lora.strength,
                "source": lora.source,
                "revision": lora.revision,
                "trigger_words": list(lora.trigger_words),
                "hash": lora.hash,
            }
            for lora in self.loras
        ]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        """Build a recipe from `to_dict()`'s shape, refusing unknown keys and wrong types.

        Raises:
            PromptError: names the key that is unknown, missing or of the wrong type.
        """
        values = _checked(data, "The recipe", {f.name: _FIELD_TYPES[f.name] for f in fields(cls)}, required=("prompt",))
        loras = values.get("loras", [])
        values["loras"] = tuple(_lora_from_dict(item, index) for index, item in enumerate(loras))
        return cls(**values)


_FIELD_TYPES: dict[str, type] = {
    "prompt": str, "negative_prompt": str, "steps": int, "sampler": str, "schedule": str, "guidance": float,
    "true_cfg": float, "seed": int, "width": int, "height": int, "model": str, "loras": list, "model_hash": str,
}
_LORA_TYPES: dict[str, type] = {
    "name": str, "strength": float, "source": str, "revision": str, "trigger_words": list, "hash": str,
}


def _checked_hash(value: str, where: str) -> str:
    """A file hash as A1111 writes it: "" or 8 to 64 hex digits (kept lower case)."""
    value = value.strip().lower()
    if value and not HASH.fullmatch(value):
        raise PromptError(f"{where} has the hash {value!r}; a hash is 8 to 64 hex digits, like '0123456789ab'.")
    return value


def _checked(data: Any, where: str, types: dict[str, type], *, required: tuple[str, ...]) -> dict[str, Any]:
    """`data` as a dict whose keys are all in `types` with values of those types."""
    if not isinstance(data, dict):
        raise PromptError(f"{where} must be a JSON object, not {type(data).__name__}.")
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise PromptError(f"{where} has unknown keys {unknown}; the known keys are {sorted(types)}.")
    missing = [key for key in required if key not in data]
    if missing:
        raise PromptError(f"{where} lacks {missing}; add them.")
    values: dict[str, Any] = {}
    for key, value in data.items():
        kind = types[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        wrong = not isinstance(value, kind) or isinstance(value, bool)
        if wrong or (isinstance(value, float) and not math.isfinite(value)):
            raise PromptError(f"{where}: {key!r} must be {TYPE_NAMES[kind]}, not {value!r}.")
        values[key] = value
    return values


def _lora_from_dict(data: Any, index: int) -> LoraRef:
    where = f"LoRA {index + 1} of the recipe"
    values = _checked(data, where, _LORA_TYPES, required=("name",))
    words = values.get("trigger_words", [])
    if not all(isinstance(word, str) for word in words):
        raise PromptError(f"{where}: 'trigger_words' must be a list of strings, not {words!r}.")
    return LoraRef(**values)


def recipe_to_json(recipe: Recipe) -> str:
    """The recipe as JSON text, with a format name and version."""
    data = {"format": RECIPE_FORMAT, "version": RECIPE_VERSION, **recipe.to_dict()}
    return json.dumps(data, indent=2, ensure_ascii=False)


def recipe_from_json(text: str) -> Recipe:
    """Read `recipe_to_json`'s output back.

    Raises:
        PromptError: longer than `MAX_TEXT_BYTES`, not JSON, another format or version, unknown
            keys, or wrong types.
    """
    if len(text) > MAX_TEXT_BYTES:
        raise PromptError(
            f"The recipe is {len(text):,} characters long; recipes saved by LoRA Space are a few thousand, and at "
            f"most {MAX_TEXT_BYTES:,} are read. Load a file saved by LoRA Space."
        )
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise PromptError(f"The recipe is not valid JSON ({reason}); load a file saved by LoRA Space.") from None
    if isinstance(data, dict):
        data = dict(data)
        if data.pop("format", RECIPE_FORMAT) != RECIPE_FORMAT or data.pop("version", RECIPE_VERSION) != RECIPE_VERSION:
            raise PromptError(
                f"The recipe is not a {RECIPE_FORMAT} version {RECIPE_VERSION} file; load a file saved by LoRA Space."
            )
    return Recipe.from_dict(data)


def recipe_from_parameters(text: str) -> Recipe:
    """A recipe from `parameters` text; fields the text lacks keep `Recipe`'s defaults."""
    return _recipe_from_values(parse_parameters(text))


def _recipe_from_values(values: dict[str, Any]) -> Recipe:
    """A recipe from what `parse_parameters` returned."""
    values = dict(values)
    values.pop("extra")
    loras = tuple(LoraRef(name=item["name"], strength=item["strength"], hash=item.get("hash", "")) for item in values.pop("loras"))
    return Recipe(**values, loras=loras)


def save_png(image: Image.Image, path: Path | str, recipe: Recipe) -> Path:
    """Save `image` as a PNG holding the `parameters` text and the JSON recipe."""
    info = PngInfo()
    info.add_text(PARAMETERS_CHUNK, to_parameters(recipe))
    info.add_text(RECIPE_CHUNK, recipe_to_json(recipe), zip=True)
    image.save(path, format="PNG", pnginfo=info)
    return Path(path)


def read_png_text(path: Path | str, keys: tuple[str, ...]) -> dict[str, str]:
    """The text chunks (`tEXt`, `zTXt`, `iTXt`) of a PNG whose keyword is in `keys`, the first of each.

    Only the chunks' headers and the wanted chunks are read: pixels are never decoded (a PNG of
    huge dimensions costs nothing), at most `MAX_PNG_CHUNKS` chunks are looked at, and a wanted
    chunk is inflated to at most `MAX_TEXT_BYTES`. A damaged text chunk is skipped.

    Raises:
        PromptError: not a PNG, or a wanted chunk holds more than `MAX_TEXT_BYTES`.
    """
    name = Path(path).name
    found: dict[str, str] = {}
    try:
        with open(path, "rb") as file:
            if file.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                raise PromptError(f"'{name}' is not a readable PNG image; use a PNG saved by LoRA Space, A1111 or Forge.")
            for _ in range(MAX_PNG_CHUNKS):
                head = file.read(8)
                if len(head) < 8:
                    break
                length, kind = struct.unpack(">I4s", head)
                if kind == b"IEND":
                    break
                if kind in _TEXT_CHUNKS:
                    start = file.read(min(length, _KEYWORD_BYTES))
                    keyword = start.split(b"\0", 1)[0].decode("latin-1")
                    if keyword in keys and keyword not in found:
                        if length > MAX_TEXT_BYTES + _KEYWORD_BYTES:
                            raise _too_long(name, keyword)
                        text = _chunk_text(kind, start + file.read(length - len(start)), name, keyword)
                        if text is not None:
                            found[keyword] = text
                    else:
                        file.seek(length - len(start), os.SEEK_CUR)
                else:
                    file.seek(length, os.SEEK_CUR)
                file.seek(4, os.SEEK_CUR)  # the CRC
    except OSError:
        raise PromptError(f"'{name}' cannot be read; upload the PNG again.") from None
    return found


def _too_long(name: str, keyword: str) -> PromptError:
    return PromptError(
        f"'{name}' holds a '{keyword}' text of more than {MAX_TEXT_BYTES // 1024} KB; recipes from LoRA Space, "
        "A1111 and Forge are a few KB, so it is not read. Use an image saved by one of them."
    )


def _chunk_text(kind: bytes, data: bytes, name: str, keyword: str) -> str | None:
    """The text of one PNG text chunk (`data` from its keyword on), inflated within bounds; None if damaged."""
    _, _, rest = data.partition(b"\0")
    compressed, encoding = False, "latin-1"
    if kind == b"zTXt":
        compressed, rest = True, rest[1:]  # the compression method byte (0: deflate)
    elif kind == b"iTXt":
        if len(rest) < 2:
            return None
        compressed, encoding = rest[0] == 1, "utf-8"
        parts = rest[2:].split(b"\0", 2)  # language tag, translated keyword, text
        if len(parts) < 3:
            return None
        rest = parts[2]
    if compressed:
        inflater = zlib.decompressobj()
        try:
            rest = inflater.decompress(rest, MAX_TEXT_BYTES + 1)
        except zlib.error:
            return None
        if len(rest) > MAX_TEXT_BYTES or inflater.unconsumed_tail:
            raise _too_long(name, keyword)
    if len(rest) > MAX_TEXT_BYTES:
        raise _too_long(name, keyword)
    try:
        return rest.decode(encoding)
    except UnicodeDecodeError:
        return None


def read_png_recipe(path: Path | str) -> dict[str, Any]:
    """The recipe of a PNG as `Recipe.to_dict()`: from the JSON chunk, else from `parameters`.

    Works for PNGs from A1111, Forge and ComfyUI-with-A1111-metadata too (their LoRAs
    come with names and strengths only). The `parameters` text is parsed in a separate
    interpreter, given up after `PARSE_SECONDS`.

    Raises:
        PromptError: not a PNG, a PNG without generation parameters, or parameters too long
            (`lora_space.parameters.MAX_PARAMETERS_CHARS`) or too slow to read.
    """
    name = Path(path).name
    chunks = read_png_text(path, (RECIPE_CHUNK, PARAMETERS_CHUNK))
    if RECIPE_CHUNK in chunks:
        return recipe_from_json(chunks[RECIPE_CHUNK]).to_dict()
    if PARAMETERS_CHUNK in chunks:
        text = chunks[PARAMETERS_CHUNK]
        check_length(text, f"The parameters text of '{name}'")
        values = timebox.run("lora_space.parameters:parse_parameters", text, seconds=PARSE_SECONDS, what=f"The parameters text of '{name}'")
        return _recipe_from_values(values).to_dict()
    raise PromptError(f"'{name}' holds no generation parameters; use a PNG saved by LoRA Space, A1111 or Forge.")


def read_recipe_file(path: Path | str) -> Recipe:
    """A recipe from a file a user gives: a PNG (`read_png_recipe`) or a recipe `.json`.

    Raises:
        PromptError: unreadable, larger than `MAX_TEXT_BYTES` (a .json), or not a recipe.
    """
    path = Path(path)
    if path.suffix.lower() == ".png":
        return Recipe.from_dict(read_png_recipe(path))
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_TEXT_BYTES + 1)
    except OSError:
        raise PromptError(f"'{path.name}' cannot be read; upload the recipe again.") from None
    if len(data) > MAX_TEXT_BYTES:
        raise PromptError(
            f"'{path.name}' is larger than {MAX_TEXT_BYTES // 1024} KB; recipes saved by LoRA Space are a few KB. "
            "Load a recipe .json saved by LoRA Space, or a PNG."
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PromptError(f"'{path.name}' is not UTF-8 text; load a recipe .json saved by LoRA Space, or a PNG.") from None
    return recipe_from_json(text)
