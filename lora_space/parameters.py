"""A1111/Forge `parameters` text: what A1111 and Forge write into a PNG and what Civitai reads.

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
prompt should not start or end a line with spaces). The text comes from images anyone can
send, so reading it is bounded: at most `MAX_PARAMETERS_CHARS` characters (A1111's own texts
are a few hundred to a few thousand), and every repeat of the key/value grammar has a bound,
so that a line without the `:` it looks for costs linear time, not quadratic (A1111's own
pattern, `\\s*(\\w[\\w \\-/]+):...`, takes seconds on 16,000 characters and hours on a
million). This module needs only the standard library and `lora_space.prompts`, so that
`lora_space.timebox` can run `parse_parameters` in a bare interpreter with a deadline.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from .errors import PromptError
from .prompts import find_tags

if TYPE_CHECKING:
    from .recipe import Recipe

MAX_PARAMETERS_CHARS = 16_000
"""The longest `parameters` text read; A1111 and Forge write far less."""
MAX_KEY_CHARS = 64
MAX_QUOTED_CHARS = 4_000
"""The longest quoted value (a prompt of ADetailer and the like); a longer one is read up to its first comma."""

# A1111's `\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)` with a bound on every repeat
# that can fail: a match attempt costs at most about MAX_KEY_CHARS + MAX_QUOTED_CHARS steps.
_PARAM = re.compile(
    r'\s{0,16}(\w[\w \-/]{1,%d}):\s*("(?:\\.|[^\\"]){1,%d}"|[^,]*)(?:,|$)' % (MAX_KEY_CHARS - 1, MAX_QUOTED_CHARS)
)
_SIZE = re.compile(r"(\d{1,9})x(\d{1,9})")
_NEGATIVE = "Negative prompt:"
HASH = re.compile(r"[0-9a-f]{8,64}")
_CIVITAI_HASHES = re.compile(r'(?:^|,)\s{0,16}Hashes:\s{0,16}(\{[^{}\n]{0,8000}\})')  # every repeat bounded
TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", list: "a list", dict: "an object"}
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


def hash_alias(name: str) -> str:
    """A LoRA's name as A1111 writes it in `Lora hashes` (':' and ',' removed)."""
    return name.replace(":", "").replace(",", "")


def check_length(text: str, where: str = "The parameters text") -> None:
    """Refuse a `parameters` text longer than `MAX_PARAMETERS_CHARS`.

    Raises:
        PromptError: names the length, the limit and what to do.
    """
    if len(text) > MAX_PARAMETERS_CHARS:
        raise PromptError(
            f"{where} is {len(text):,} characters long; recipes from A1111, Forge and LoRA Space are far shorter, "
            f"and at most {MAX_PARAMETERS_CHARS:,} are read. Use an image saved by one of them, or a recipe .json."
        )


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
        shown = value if len(value) <= 80 else value[:79] + "…"
        raise PromptError(f"The parameters say '{key}: {shown}', which is not {TYPE_NAMES[kind]}; fix that value.") from None


def parse_parameters(text: str) -> dict[str, Any]:
    """Read A1111/Forge `parameters` text, ours or another tool's, in time linear in its length.

    Returns:
        `prompt` (tags taken out), `negative_prompt`, `loras` (`{"name", "strength"}` from the
        prompt's tags, with `"hash"` where `Lora hashes` names one), the `Recipe` field of each
        known key that is present (`steps`, `sampler`, `schedule`, `true_cfg`, `guidance`, `seed`,
        `width`, `height`, `model_hash`, `model`), and `extra`: every other key with its text
        value (`Lora hashes` included). Plain JSON types only.

    Raises:
        PromptError: the text is longer than `MAX_PARAMETERS_CHARS`, a `<lora:...>` tag is
            malformed, or a number does not parse.
    """
    check_length(text)
    *lines, last = text.strip().split("\n")
    last, civitai = _civitai_hashes(last)
    pairs = _PARAM.findall(last)
    if len(pairs) < 3:
        lines, last, pairs = [*lines, last], "", []
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
    for key, raw in pairs:
        value = _unquote(raw)
        size = _SIZE.fullmatch(value)
        if key == "Size" and size:
            result["width"], result["height"] = int(size.group(1)), int(size.group(2))
        elif key in _KEYS:
            name, kind = _KEYS[key]
            result[name] = _convert(key, value, kind)
        else:
            result["extra"][key] = value
    if "model_hash" in result and not HASH.fullmatch(result["model_hash"].lower()):
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
        if alias.strip() and HASH.fullmatch(value):
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
    if not isinstance(data, dict):
        return line, {}
    hashes = {
        hash_alias(key[len("lora:") :]).strip(): value.strip().lower()
        for key, value in data.items()
        if key.startswith("lora:") and isinstance(value, str) and HASH.fullmatch(value.strip().lower())
    }
    return line[: match.start()] + line[match.end() :], hashes
