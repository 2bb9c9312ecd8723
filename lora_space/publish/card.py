"""The model card of a published LoRA: a YAML block the Hub reads, and a body people read.

The YAML carries what the Hub and the popular LoRA Spaces read: `base_model`, `license` (the
base model's terms where the LoRA inherits them, from `base_licenses.json`), `tags` (with
`template:sd-lora`, `base_model:adapter:...` and `lora-space`, the tool), `instance_prompt` and
`widget` entries (each sample image with its prompt). A LoRA of LoRA Space's tiny test model
(`base_model` empty, see `publish.base`) gets a card that names no base model and says so.
It is written with `yaml.safe_dump`, so names and captions with `:`, quotes or line breaks
cannot break it. The body comes from `card_template.md`, a small
file of `%% name` sections with `${field}` slots (`string.Template`: no code in the template);
text that comes from users or the Hub is escaped before it goes into Markdown (`markdown_text`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

import yaml

from ..errors import PublishError
from ..markdown_text import md_code, md_text

HERE = Path(__file__).parent
TEMPLATE_FILE = HERE / "card_template.md"
LICENSE_FILE = HERE / "base_licenses.json"
LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}")
FRONT_MATTER = re.compile(r"\A---\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)


@dataclass(frozen=True)
class CardImage:
    """A sample image in the repo (`path_in_repo`, e.g. `images/sample_01.png`) and its prompt."""

    path_in_repo: str
    prompt: str


@dataclass(frozen=True)
class TrainingFacts:
    """What a training job did (None: unknown). Losses are the final values."""

    images: int | None = None  # trained on
    validation_images: int | None = None  # held out for the validation loss
    steps: int | None = None
    rank: int | None = None
    alpha: float | None = None
    learning_rate: float | None = None
    optimizer: str | None = None
    resolution: int | None = None
    batch_size: int | None = None
    scheduler: str | None = None
    seed: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) of each known fact, in the order of the card's table."""
        labels = [
            ("training images", self.images), ("validation images (held out)", self.validation_images),
            ("steps", self.steps), ("rank (network_dim)", self.rank), ("alpha (network_alpha)", self.alpha),
            ("learning rate", self.learning_rate), ("optimizer", self.optimizer), ("scheduler", self.scheduler), ("resolution", self.resolution),
            ("batch size", self.batch_size), ("seed", self.seed),
            ("final training loss", self.train_loss), ("final validation loss", self.val_loss),
        ]
        return [(label, _number(value)) for label, value in labels if value is not None]


@dataclass(frozen=True)
class CardFacts:
    """Everything a card says about one LoRA.

    Attributes:
        repo_id: where it is published (`user/repo`).
        title: the LoRA's name.
        base_model: the Hub id of the base model it was made for; "" for LoRA Space's tiny test
            model, which the card then names instead of claiming a base.
        weight_file: the diffusers file in the repo.
        trigger_words: the words that switch it on (the first is the `instance_prompt`).
        images: sample images with their prompts (the widget entries).
        license: a licence id the publisher chose; empty: the base model's terms.
        training: facts of the training job, when the LoRA comes from one.
        rank, alpha, num_modules, file_format: what the file holds.
        extra_files: the kohya/ComfyUI copies in the repo.
        description: what the LoRA does, in the publisher's words.
        width: the transformer width the LoRA was made for, when known.
    """

    repo_id: str
    title: str
    base_model: str
    weight_file: str
    trigger_words: tuple[str, ...] = ()
    images: tuple[CardImage, ...] = ()
    license: str = ""
    training: TrainingFacts | None = None
    rank: int | None = None
    alpha: float | None = None
    num_modules: int | None = None
    extra_files: tuple[str, ...] = ()
    description: str = ""
    width: int | None = None

    @property
    def is_test_model(self) -> bool:
        return not self.base_model

    def __post_init__(self) -> None:
        if self.license and not LICENSE_ID.fullmatch(self.license):
            raise PublishError(
                f"license {self.license!r} is not a Hub licence id; use one like 'apache-2.0', 'mit', "
                "'cc-by-nc-4.0' or 'other', or leave it empty to inherit the base model's terms."
            )


@cache
def _licence_data() -> dict[str, Any]:
    return json.loads(LICENSE_FILE.read_text())


@cache
def template_sections() -> dict[str, str]:
    """The `%% name` sections of `card_template.md` (the comment before the first is dropped)."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in TEMPLATE_FILE.read_text().splitlines():
        if line.startswith("%% "):
            current = sections.setdefault(line[3:].strip(), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def _fill(section: str, **values: Any) -> str:
    return Template(template_sections()[section]).substitute({key: str(value) for key, value in values.items()})


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return md_text(str(value))


def _fenced(text: str) -> str:
    """Make the ``` fences of a filled section longer than any backtick run inside it."""
    lines = text.split("\n")
    inner = [line for line in lines if not line.startswith("```")]
    longest = max((len(run) for line in inner for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return "\n".join(fence + line[3:] if line.startswith("```") else line for line in lines)


def licence_fields(base_model: str, chosen: str = "") -> dict[str, str]:
    """The card's `license` (and `license_name`/`license_link`) for a LoRA of `base_model`."""
    if chosen:
        return {"license": chosen}
    data = _licence_data()
    terms = data["models"].get(base_model, data["fallback"])
    return {key: terms[key] for key in ("license", "license_name", "license_link") if key in terms}


def card_metadata(facts: CardFacts) -> dict[str, Any]:
    """The YAML block of the card, as a dict (no `base_model` for the tiny test model)."""
    data = _licence_data()
    if facts.is_test_model:
        test_model = data["test_model"]
        metadata: dict[str, Any] = {
            "license": facts.license or test_model["license"],
            "library_name": "diffusers",
            "pipeline_tag": "text-to-image",
            "tags": list(test_model["tags"]),
        }
    else:
        metadata = {
            "base_model": facts.base_model,
            "base_model_relation": "adapter",
            **licence_fields(facts.base_model, facts.license),
            "library_name": "diffusers",
            "pipeline_tag": "text-to-image",
            "tags": list(data["tags"]) + [f"base_model:adapter:{facts.base_model}"],
        }
    if facts.trigger_words:
        metadata["instance_prompt"] = ", ".join(facts.trigger_words)
    if facts.images:
        metadata["widget"] = [
            {"text": " ".join(image.prompt.split()) or ", ".join(facts.trigger_words) or facts.title,
             "output": {"url": image.path_in_repo}}
            for image in facts.images
        ]
    return metadata


def _training_section(training: TrainingFacts | None) -> str:
    if training is None or not training.rows():
        return ""
    rows = "\n".join(f"| {label} | {value} |" for label, value in training.rows())
    return _fill("training", rows=rows)


def _file_facts(facts: CardFacts) -> str:
    lines = [f"- {md_code(facts.weight_file)}: diffusers layout (`load_lora_weights`)."]
    lines += [f"- {md_code(name)}: {'ComfyUI' if 'comfyui' in name else 'kohya (A1111/Forge)'} layout." for name in facts.extra_files]
    known = [
        f"rank {facts.rank}" if facts.rank is not None else "",
        f"alpha {_number(facts.alpha)}" if facts.alpha is not None else "",
        f"{facts.num_modules} modules" if facts.num_modules is not None else "",
    ]
    if facts.is_test_model:
        width = f" ({facts.width} wide)" if facts.width else ""
        known.append(f"made for {md_text(_licence_data()['test_model']['name'])}{width}, not for a FLUX.1 model")
    else:
        known.append(f"base model {md_code(facts.base_model)}")
    lines.append(f"- {', '.join(part for part in known if part)}.")
    lines.append("- `reproducibility.json`: the training config, dataset hash, seed and library versions.")
    return "\n".join(lines)


def _licence_text(facts: CardFacts) -> str:
    if facts.is_test_model:
        test_model = _licence_data()["test_model"]
        note = "" if facts.license else md_text(test_model["note"]) + " "
        return _fill("license_test_model", note=note, license=facts.license or test_model["license"])
    base = f"[{md_text(facts.base_model)}](https://huggingface.co/{facts.base_model})"
    if facts.license:
        return _fill("license_chosen", license=facts.license, base_model_text=base)
    fields = licence_fields(facts.base_model)
    if "license_link" in fields:
        name = fields.get("license_name", fields["license"])
        return _fill("license_inherited", base_model_text=base, license_name=f"`{name}`", license_link=f" ([licence]({fields['license_link']}))")
    if fields["license"] != "other":
        return _fill("license_inherited", base_model_text=base, license_name=f"`{fields['license']}`", license_link="")
    return md_text(_licence_data()["fallback"]["note"])


def render_body(facts: CardFacts) -> str:
    """The Markdown body of the card (below the YAML block)."""
    low, high = _licence_data()["strength_range"]
    words = facts.trigger_words
    trigger_text = (
        _fill("trigger_words", words=", ".join(md_code(word) for word in words)) if words else _fill("no_trigger_words")
    )
    prompt = ", ".join(list(words) + ["a photo of a lighthouse at dusk"])
    strength = f"{(low + high) / 2:g}"
    diffusers = _fenced(
        _fill(
            "diffusers_test_model" if facts.is_test_model else "diffusers",
            base_model=json.dumps(facts.base_model),
            repo_id=json.dumps(facts.repo_id),
            weight_name=json.dumps(facts.weight_file),
            strength=strength,
            prompt=json.dumps(prompt),
        )
    )
    kohya = next((name for name in facts.extra_files if "kohya" in name), "")
    repo_name = facts.repo_id.split("/")[-1]
    tag_stem = Path(kohya).stem if kohya else repo_name
    tag_file = md_code(kohya) if kohya else f"{md_code(facts.weight_file)} (saved as {md_code(repo_name + '.safetensors')})"
    tag_text = _fenced(
        _fill(
            "tags_test_model" if facts.is_test_model else "tags",
            space_tag=f"<lora:{facts.repo_id}:{strength}> a photo of a lighthouse at dusk",
            tag_file=tag_file,
            a1111_tag=f"<lora:{tag_stem}:{strength}> {', '.join(words)}".strip(),
        )
    )
    test_model = _licence_data()["test_model"]["name"]
    made_for = f"LoRA for {md_text(test_model)}" if facts.is_test_model else f"FLUX LoRA for {md_text(facts.base_model)}"
    description = md_text(facts.description) if facts.description.strip() else (
        f"A {made_for}, trained and published with LoRA Space."
    )
    size = f"{facts.width} wide" if facts.width else "far smaller"
    notice = _fill("test_model_notice", test_model=md_text(test_model), size=size) if facts.is_test_model else ""
    return _fill(
        "body",
        title=md_text(facts.title),
        notice=notice,
        description=description,
        trigger_text=trigger_text,
        strength_low=f"{low:g}",
        strength_high=f"{high:g}",
        diffusers_snippet=diffusers,
        tag_text=tag_text,
        training_section=_training_section(facts.training),
        file_facts=_file_facts(facts),
        rights_statement=_fill("rights"),
        license_text=_licence_text(facts),
    ).strip() + "\n"


def render_card(facts: CardFacts) -> str:
    """The whole README.md: the YAML block, then the body."""
    front = yaml.safe_dump(card_metadata(facts), sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{front}---\n\n{render_body(facts)}"


def parse_card(text: str) -> dict[str, Any]:
    """The YAML block of a card (possibly edited by the user), checked before it is published.

    Raises:
        PublishError: no YAML block, YAML that does not parse, or a block that is not a mapping.
    """
    match = FRONT_MATTER.match(text.lstrip("\ufeff"))
    if match is None:
        raise PublishError(
            "The model card has no YAML block at its top; keep the lines between the two '---' at its start."
        )
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 2})" if mark is not None else ""
        raise PublishError(f"The model card's YAML block does not parse{where}; fix it or render the card again.") from None
    if not isinstance(data, dict):
        raise PublishError("The model card's YAML block must be a mapping of keys (base_model: ..., license: ...).")
    return data
