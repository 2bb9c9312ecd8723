"""Image recipes: what made an image, as A1111/Forge "parameters" text and as JSON.

The `parameters` text is what A1111 and Forge write into a PNG and what Civitai reads:

    wtrclr, portrait of a woman <lora:watercolor_style:0.8> <lora:user/repo:0.6>
    Negative prompt: blurry
    Steps: 28, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5,
      Seed: 42, Size: 1024x1024, Model: black-forest-labs/FLUX.1-dev      (one line in the file)

- line 1 (and more, if the prompt has line breaks): the prompt as sent, then one
  `<lora:NAME:STRENGTH>` tag per LoRA, as A1111 puts LoRAs in the prompt;
- `Negative prompt: ...`, only when there is one;
- one line of `Key: value` pairs with Forge's names for FLUX: `CFG scale` is the true
  (two-pass) CFG, 1 meaning off; `Distilled CFG Scale` is FLUX-dev's guidance. A value holding
  `,` `:` `"` or a line break, or with spaces at its ends, is written as a JSON string
  (`Model: "C:\\\\models\\\\flux"`), as A1111 does.
- `Model hash` (a single-file base model only) and `Lora hashes: "name: 0123456789ab, ..."`, as
  A1111 writes them (`lora_space.hashes`): Civitai links the LoRAs by these, and a recipe whose
  names differ from the library's finds its LoRAs by them. The same hashes follow as the Civitai
  extension writes them, `Hashes: {"model": "...", "lora:name": "..."}` (raw JSON, last), the
  only form some readers (sd-parsers) take; braces in a name are written as `\u007b`/`\u007d`,
  so that readers that look for the first `}` find the end.

`parse_parameters` reads this back exactly (prompt lines are stripped, as in A1111, so a
prompt should not start or end a line with spaces). Sources, revisions and trigger words
do not fit the A1111 format; the full recipe goes as JSON (`recipe_to_json`) in a second PNG
text chunk, `lora_space_recipe`, that `read_png_recipe` prefers.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from .errors import PromptError
from .prompts import MAX_STRENGTH, MIN_STRENGTH, check_name, find_tags
from .settings import FLUX_DEV

PARAMETERS_CHUNK = "parameters"
RECIPE_CHUNK = "lora_space_recipe"
RECIPE_FORMAT = "lora-space-recipe"
RECIPE_VERSION = 1

_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"(\d+)x(\d+)")
_NEGATIVE = "Negative prompt:"
_HASH = re.compile(r"[0-9a-f]{8,64}")
_CIVITAI_HASHES = re.compile(r'(?:^|,)\s*Hashes:\s*(\{[^{}\n]{0,8000}\})')  # bounded, no nested repeats
# `parameters` key -> (Recipe field, type), in the order Forge writes them.
_KEYS: dict[str, tuple[str, type]] = {
    "Steps": ("steps", int),
    "Sampler": ("sampler", str),
    "Schedule type": ("schedule", str),
    "CFG scale": ("true_cfg", float),
    "Distilled CFG Scale": ("guidance", float),
    "Seed": ("seed", int),
    "Model hash": ("model_hash", str),
    "Model": ("model", str),
}


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
_TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", list: "a list", dict: "an object"}


def _checked_hash(value: str, where: str) -> str:
    """A file hash as A1111 writes it: "" or 8 to 64 hex digits (kept lower case)."""
    value = value.strip().lower()
    if value and not _HASH.fullmatch(value):
        raise PromptError(f"{where} has the hash {value!r}; a hash is 8 to 64 hex digits, like '0123456789ab'.")
    return value


def hash_alias(name: str) -> str:
    """A LoRA's name as A1111 writes it in `Lora hashes` (':' and ',' removed)."""
    return name.replace(":", "").replace(",", "")


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
            raise PromptError(f"{where}: {key!r} must be {_TYPE_NAMES[kind]}, not {value!r}.")
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
        PromptError: not JSON, another format or version, unknown keys, or wrong types.
    """
    try:
        data = json.loads(text)
    except ValueError as error:
        raise PromptError(f"The recipe is not valid JSON ({error}); load a file saved by LoRA Space.") from None
    if isinstance(data, dict):
        data = dict(data)
        if data.pop("format", RECIPE_FORMAT) != RECIPE_FORMAT or data.pop("version", RECIPE_VERSION) != RECIPE_VERSION:
            raise PromptError(
                f"The recipe is not a {RECIPE_FORMAT} version {RECIPE_VERSION} file; load a file saved by LoRA Space."
            )
    return Recipe.from_dict(data)


def _number(value: float) -> str:
    """The shortest text that reads back as the same float: 1.0 -> "1", 0.8 -> "0.8"."""
    text = repr(float(value))
    return text.removesuffix(".0")


def _quote(value: str) -> str:
    if value != value.strip() or value.startswith('"') or any(char in value for char in ',:\n"'):
        return json.dumps(value, ensure_ascii=False)
    return value


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value.strip()


def to_parameters(recipe: Recipe) -> str:
    """The A1111/Forge `parameters` text of a recipe (see the module docstring)."""
    tags = [f"<lora:{lora.name}:{_number(lora.strength)}>" for lora in recipe.loras]
    lines = [" ".join(part for part in [recipe.prompt, *tags] if part)]
    if recipe.negative_prompt:
        lines.append(f"{_NEGATIVE} {recipe.negative_prompt}")
    values = {
        "Steps": str(recipe.steps),
        "Sampler": recipe.sampler,
        "Schedule type": recipe.schedule,
        "CFG scale": _number(recipe.true_cfg),
        "Distilled CFG Scale": _number(recipe.guidance),
        "Seed": str(recipe.seed),
        "Size": f"{recipe.width}x{recipe.height}",
        **({"Model hash": recipe.model_hash} if recipe.model_hash else {}),
        "Model": recipe.model,
    }
    hashed = [f"{hash_alias(lora.name)}: {lora.hash}" for lora in recipe.loras if lora.hash]
    if hashed:
        values["Lora hashes"] = ", ".join(hashed)
    civitai = {"model": recipe.model_hash} if recipe.model_hash else {}
    civitai |= {f"lora:{lora.name}": lora.hash for lora in recipe.loras if lora.hash}
    pairs = [f"{key}: {_quote(value)}" for key, value in values.items()]
    if civitai:
        pairs.append(f"Hashes: {_civitai_json(civitai)}")
    lines.append(", ".join(pairs))
    return "\n".join(lines).strip()


def _civitai_json(hashes: dict[str, str]) -> str:
    """`hashes` as one line of JSON whose only braces are its own (braces in names are escaped)."""
    inner = json.dumps(hashes, ensure_ascii=False)[1:-1]
    return "{" + inner.replace("{", "\\u007b").replace("}", "\\u007d") + "}"


def _convert(key: str, value: str, kind: type) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise PromptError(
            f"The parameters say '{key}: {value}', which is not {_TYPE_NAMES[kind]}; fix that value."
        ) from None


def parse_parameters(text: str) -> dict[str, Any]:
    """Read A1111/Forge `parameters` text, ours or another tool's.

    Returns:
        `prompt` (tags taken out), `negative_prompt`, `loras` (`{"name", "strength"}` from the
        prompt's tags, with `"hash"` where `Lora hashes` names one), the `Recipe` field of each
        known key that is present (`steps`, `sampler`, `schedule`, `true_cfg`, `guidance`, `seed`,
        `width`, `height`, `model_hash`, `model`), and `extra`: every other key with its text
        value (`Lora hashes` included).

    Raises:
        PromptError: a malformed `<lora:...>` tag or a number that does not parse.
    """
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines, last = [*lines, last], ""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        line = line.strip()
        if not negative_lines and line.startswith(_NEGATIVE):
            negative_lines.append(line[len(_NEGATIVE) :].strip())
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    prompt = "\n".join(prompt_lines)
    tags = find_tags(prompt)
    for tag in reversed(tags):
        start = tag.span[0] - 1 if tag.span[0] > 0 and prompt[tag.span[0] - 1].isspace() else tag.span[0]
        prompt = prompt[:start] + prompt[tag.span[1] :]
    result: dict[str, Any] = {
        "prompt": prompt.strip(),
        "negative_prompt": "\n".join(negative_lines),
        "loras": [{"name": tag.name, "strength": tag.strength} for tag in tags],
        "extra": {},
    }
    last, civitai = _civitai_hashes(last)
    for key, raw in _PARAM.findall(last):
        value = _unquote(raw)
        size = _SIZE.fullmatch(value)
        if key == "Size" and size:
            result["width"], result["height"] = int(size.group(1)), int(size.group(2))
        elif key in _KEYS:
            name, kind = _KEYS[key]
            result[name] = _convert(key, value, kind)
        else:
            result["extra"][key] = value
    if "model_hash" in result and not _HASH.fullmatch(result["model_hash"].lower()):
        result["extra"]["Model hash"] = result.pop("model_hash")  # another tool's kind of hash: kept as text
    hashes = civitai | _lora_hashes(result["extra"].get("Lora hashes", ""))
    for lora in result["loras"]:
        found = hashes.get(hash_alias(lora["name"]))
        if found:
            lora["hash"] = found
    return result


def _lora_hashes(text: str) -> dict[str, str]:
    """`"a: 0123456789ab, b: ..."` -> {alias: hash}; entries that are not a name and a hash are skipped."""
    hashes = {}
    for item in text.split(","):
        alias, _, value = item.rpartition(":")
        value = value.strip().lower()
        if alias.strip() and _HASH.fullmatch(value):
            hashes[alias.strip()] = value
    return hashes


def _civitai_hashes(line: str) -> tuple[str, dict[str, str]]:
    """Take the Civitai extension's `Hashes: {"lora:NAME": "hash", ...}` out of a parameters line.

    Returns:
        the line without it, and {alias: hash} of its LoRAs (aliases as `Lora hashes` writes them);
        the line as it was and {} when there is none or it is not JSON of names and hashes.
    """
    match = _CIVITAI_HASHES.search(line)
    if match is None:
        return line, {}
    try:
        data = json.loads(match.group(1))
    except ValueError:
        return line, {}
    hashes = {
        hash_alias(key[len("lora:"):]).strip(): value.strip().lower()
        for key, value in data.items()
        if key.startswith("lora:") and isinstance(value, str) and _HASH.fullmatch(value.strip().lower())
    }
    return line[: match.start()] + line[match.end():], hashes


def recipe_from_parameters(text: str) -> Recipe:
    """A recipe from `parameters` text; fields the text lacks keep `Recipe`'s defaults."""
    values = parse_parameters(text)
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


def read_png_recipe(path: Path | str) -> dict[str, Any]:
    """The recipe of a PNG as `Recipe.to_dict()`: from the JSON chunk, else from `parameters`.

    Works for PNGs from A1111, Forge and ComfyUI-with-A1111-metadata too (their LoRAs
    come with names and strengths only).

    Raises:
        PromptError: not a PNG, or a PNG without generation parameters.
    """
    try:
        with Image.open(path) as image:
            chunks = dict(getattr(image, "text", {}))
    except (OSError, UnidentifiedImageError):
        raise PromptError(
            f"'{Path(path).name}' is not a readable PNG image; use a PNG saved by LoRA Space, A1111 or Forge."
        ) from None
    if RECIPE_CHUNK in chunks:
        return recipe_from_json(chunks[RECIPE_CHUNK]).to_dict()
    if PARAMETERS_CHUNK in chunks:
        return recipe_from_parameters(chunks[PARAMETERS_CHUNK]).to_dict()
    raise PromptError(
        f"'{Path(path).name}' holds no generation parameters; use a PNG saved by LoRA Space, A1111 or Forge."
    )
