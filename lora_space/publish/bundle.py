"""What a publish sends: a LoRA the visitor owns, its sample images and the facts of its making.

A source is one of (API.md "Who owns what"):

- a finished training job, by its id: its LoRA, its samples, the facts of the run;
- a LoRA in the visitor's own library, by name (on a local run the one user owns the shared
  library; on a Space the shared library belongs to the Space's owner and is not offered);
- a file the visitor owns: a path in their own area (a bake, a converted file), or an upload.

Hub LoRAs are not re-published: they already have a home and an author. Sample images (a
Generate batch's portfolio, as PNGs or its zip) become the card's widget entries, each with
the prompt its recipe holds.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image, UnidentifiedImageError

from lora_space.core.errors import LoraSpaceError, PublishError
from lora_space.core.settings import Settings
from lora_space.generate.recipe import Recipe, read_png_recipe, save_png
from lora_space.library import store as library
from lora_space.publish.card import TrainingFacts
from lora_space.train.checkpoint import SAMPLE_PROMPTS, SampleName, read_json
from lora_space.train.status import JobState
from lora_space.visitors.owners import Visitor, visitor_area, visitor_lora_dir

if TYPE_CHECKING:
    from lora_space.train.jobs import JobManager


class PublishSources(Protocol):
    """Where a publish finds the LoRA it names: the settings and the training jobs (a `LoraSpace` has both)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def jobs(self) -> JobManager | None: ...

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
MAX_IMAGES = 24
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096
JOB_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Sample:
    """A sample image ready to publish (`file`, re-saved without local paths) and its prompt."""

    file: Path
    prompt: str
    recipe: dict[str, Any] | None = None


@dataclass
class Bundle:
    """A LoRA to publish and everything the card and the reproducibility file say about it.

    Attributes:
        kind: "job", "library" or "file".
        name: the LoRA's name (the card's title).
        lora_file: the local `.safetensors` file, in any layout.
        trigger_words: the words that switch it on.
        samples: sample images with their prompts.
        training: the facts of the training run (jobs only).
        config: the training config (jobs only).
        dataset_hash: sha256 of the training data, when known.
        seed: the training seed, when known.
    """

    kind: str
    name: str
    lora_file: Path
    trigger_words: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    training: TrainingFacts | None = None
    config: dict[str, Any] = field(default_factory=dict)
    dataset_hash: str = ""
    seed: int | None = None


def own_roots(settings: Settings, visitor: Visitor) -> list[Path]:
    """Folders whose LoRA files `visitor` owns and may publish by path."""
    if visitor.is_local:
        return [settings.lora_dir.resolve(), settings.data_dir.resolve()]
    return [visitor_area(settings.data_dir, visitor).resolve()]


def library_bundle(settings: Settings, name: str, *, visitor: Visitor) -> Bundle | None:
    """The visitor's own library LoRA called `name`, or None.

    Raises:
        PublishError: on a Space, `name` is in the shared library (it belongs to the Space's owner).
    """
    entry = library.find_entry(visitor_lora_dir(settings, visitor), name)
    if entry is not None:
        return Bundle("library", entry.name, entry.path, list(entry.trigger_words))
    if not visitor.is_local and library.find_entry(settings.lora_dir, name) is not None:
        raise PublishError(
            f"{name!r} is in this Space's shared library, which belongs to the Space's owner; you can publish "
            "LoRAs you trained, baked or uploaded here. Upload your own file in the Publish tab to publish it."
        )
    return None


def file_bundle(path: Path, *, settings: Settings, visitor: Visitor, uploaded: bool = False) -> Bundle:
    """A LoRA file by path: inside the visitor's own folders, or one they just uploaded.

    Raises:
        PublishError: outside what the visitor owns, missing, or not `.safetensors`.
    """
    if not uploaded and not _owned(str(path), settings, visitor):
        raise PublishError(
            f"{Path(path).name!r} is not among your files here; publish a LoRA you trained, baked or uploaded "
            "(a training job id, a name in your library, or a file you upload in the Publish tab)."
        )
    resolved = Path(path).expanduser().resolve()
    if resolved.suffix.lower() != ".safetensors" or not resolved.is_file():
        raise PublishError(f"{Path(path).name!r} is not a .safetensors file; only .safetensors LoRAs are published.")
    return Bundle("file", resolved.stem, resolved, library.trigger_words_for(resolved))


def job_bundle(space: PublishSources, job_id: str) -> Bundle:
    """A finished training job's LoRA, samples and facts (`space.jobs`, the Train tab's jobs).

    The job id is the proof of ownership (API.md: whoever holds it started the job). The samples
    the job kept with the LoRA on (`..._strength1.png`, every sampling step, the newest first)
    are published, each with its validation prompt and the recipe the trainer wrote into it;
    the dataset hash covers the normalised images and captions it trained on.

    Raises:
        PublishError: the job is not finished, or has no LoRA.
        JobError: no such job.
    """
    data = space.jobs.status(job_id).to_dict()
    if data.get("state") != JobState.DONE or not data.get("lora_file"):
        raise PublishError(
            f"Training job {job_id[:8]}... is {data.get('state')}; publish it once it is done (see /training_status)."
        )
    config = dict(data.get("config") or {})
    report = data.get("dataset_report") or {}
    training = TrainingFacts(
        images=report.get("train_count", report.get("images_used")),
        validation_images=report.get("validation_count"),
        steps=data.get("total_steps") or config.get("max_train_steps"),
        rank=config.get("network_dim"),
        alpha=config.get("network_alpha"),
        learning_rate=config.get("learning_rate"),
        optimizer=config.get("optimizer_type"),
        resolution=config.get("resolution"),
        batch_size=config.get("train_batch_size"),
        scheduler=config.get("lr_scheduler"),
        seed=config.get("seed"),
        train_loss=_final(data.get("loss")),
        val_loss=_final(data.get("val_loss")),
    )
    word = config.get("trigger_word") or report.get("trigger_word") or ""
    samples = [Path(item) for item in data.get("samples") or []]
    prompts = read_json(samples[0].parent / SAMPLE_PROMPTS, []) if samples else []  # the trainer's, by number
    return Bundle(
        kind="job",
        name=str(data.get("lora_name") or Path(data["lora_file"]).stem),
        lora_file=Path(data["lora_file"]),
        trigger_words=[word] if word else [],
        samples=_final_samples(samples, [str(prompt) for prompt in prompts or []]),
        training=training,
        config={key: value for key, value in config.items() if key != "notes"},
        dataset_hash=_dataset_hash(space.jobs.root / job_id),
        seed=config.get("seed"),
    )


def _final_samples(paths: list[Path], prompts: list[str]) -> list[Sample]:
    """The samples made with the LoRA on, newest step first, at most `MAX_IMAGES`, each with its validation prompt."""
    found = [(name.step, name.prompt, path) for path in paths
             if (name := SampleName.parse(path.name)) is not None and name.strength == 1 and path.is_file()]
    newest = sorted(found, key=lambda item: (-item[0], item[1]))[:MAX_IMAGES]
    return [Sample(path, prompts[number] if number < len(prompts) else "") for _, number, path in newest]


def _dataset_hash(job_folder: Path) -> str:
    """sha256 over the job's normalised training images and its rows (captions, split)."""
    digest = hashlib.sha256()
    dataset = job_folder / "dataset"
    for path in sorted(dataset.rglob("*")) if dataset.is_dir() else []:
        if path.is_file():
            digest.update(f"{path.relative_to(dataset).as_posix()}\0{file_sha256(path)}\n".encode())
    rows = job_folder / "rows.json"
    if rows.is_file():
        digest.update(b"rows.json\0" + rows.read_bytes())
    return digest.hexdigest()


def _final(values: Any) -> float | None:
    """The last value of a loss curve (`[[step, value], ...]`) or a single number."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        return float(values)
    if isinstance(values, list) and values:
        last = values[-1]
        return float(last[-1]) if isinstance(last, (list, tuple)) else float(last)
    return None


def find_bundle(space: PublishSources, lora: str, *, visitor: Visitor) -> Bundle:
    """The `Bundle` that the API's `lora` names: a job id, a library name, or a path.

    Raises:
        PublishError: nothing the visitor owns goes by that name (a Hub id is refused).
    """
    lora = lora.strip()
    settings: Settings = space.settings
    if not lora:
        raise PublishError("Name the LoRA to publish: a training job id, a name in your library, or a file path.")
    # 1. A training job (ids are 32 hex digits).
    if JOB_ID.fullmatch(lora) and getattr(space, "jobs", None) is not None:
        return job_bundle(space, lora)
    # 2. The visitor's own library; a LoRA one of their jobs trained keeps the job's facts.
    found = library_bundle(settings, lora, visitor=visitor)
    if found is not None:
        job_id = _job_of(space, found.lora_file, visitor)
        return job_bundle(space, job_id) if job_id else found
    # 3. A file the visitor owns. Ownership comes first: a path outside their folders gets the
    #    same answer whether or not it exists, so that nothing tells which server files exist.
    if _owned(lora, settings, visitor):
        return file_bundle(Path(lora), settings=settings, visitor=visitor)
    if lora.count("/") >= 1 and not lora.startswith(("/", ".", "~")):
        raise PublishError(
            f"{lora!r} looks like a Hub repo; publishing takes a LoRA you made here (a training job id, a name in "
            "your library, or a file you upload), not one that is already on the Hub."
        )
    raise PublishError(
        f"No LoRA {lora!r} among yours: give a training job id, a name in your library (see /list_loras), "
        "or upload the file in the Publish tab."
    )


def _owned(lora: str, settings: Settings, visitor: Visitor) -> bool:
    """Whether `lora` is a path inside the visitor's own folders (it may not exist)."""
    try:
        resolved = Path(lora).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # an unknown ~user, a NUL byte, a loop of links
        return False
    return any(resolved.is_relative_to(root) for root in own_roots(settings, visitor))


def _job_of(space: PublishSources, lora_file: Path, visitor: Visitor) -> str:
    """The id of the visitor's finished job that produced `lora_file`, or ""."""
    jobs = getattr(space, "jobs", None)
    if jobs is None:
        return ""
    for status in jobs.list_jobs(visitor):
        if status.state == JobState.DONE and status.lora_file and Path(status.lora_file).resolve() == lora_file.resolve():
            return status.job_id
    return ""


def read_samples(
    files: list[Path],
    staging: Path,
    *,
    settings: Settings,
    default_prompt: str,
    published: tuple[str, str, str] = ("", "", ""),
    prompts: list[str] | None = None,
) -> list[Sample]:
    """Sample images (PNG/JPEG/WebP files, or a portfolio zip from Generate's batch) ready to publish.

    Each image is re-saved into `staging` (PNGs with their recipe, local paths dropped); its
    prompt is the recipe's, else its entry in `prompts` (one per file, for images only), else
    `default_prompt`. `published` is `(name, repo_id, hash)`: the recipe's LoRA of that name is
    pointed at its new home on the Hub, so the image replays from there, with the A1111 hash of
    the published file (when given), by which Civitai links the image to it.

    Raises:
        PublishError: not an image, too large, or too many.
    """
    images: list[tuple[str, bytes, str]] = []
    for index, file in enumerate(Path(item) for item in files):
        if file.suffix.lower() == ".zip":
            images += [(name, data, default_prompt) for name, data in _zip_images(file)]
        elif file.suffix.lower() in IMAGE_SUFFIXES:
            images.append((file.name, _bounded_read(file), (prompts[index] if prompts else "") or default_prompt))
        else:
            raise PublishError(f"{file.name!r} is not a sample image; give PNG, JPEG or WebP images, or a portfolio zip.")
    if len(images) > MAX_IMAGES:
        raise PublishError(f"{len(images)} sample images given; publish at most {MAX_IMAGES} (the course's portfolio is 6).")
    staging.mkdir(parents=True, exist_ok=True)
    return [_sample(name, data, staging / f"sample_{index + 1:02d}.png", settings, prompt, published)
            for index, (name, data, prompt) in enumerate(images)]


def _bounded_read(file: Path) -> bytes:
    if file.stat().st_size > MAX_IMAGE_BYTES:
        raise PublishError(f"{file.name!r} is larger than {MAX_IMAGE_BYTES // 2**20} MB; use a smaller sample image.")
    return file.read_bytes()


def _zip_images(archive: Path) -> list[tuple[str, bytes]]:
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [info for info in bundle.infolist()
                       if not info.is_dir() and PurePosixPath(info.filename).suffix.lower() in IMAGE_SUFFIXES
                       and not PurePosixPath(info.filename).name.startswith(".")]
            if len(members) > MAX_IMAGES:
                raise PublishError(f"{archive.name} holds {len(members)} images; publish at most {MAX_IMAGES}.")
            if any(info.file_size > MAX_IMAGE_BYTES for info in members):
                raise PublishError(f"{archive.name} holds an image over {MAX_IMAGE_BYTES // 2**20} MB; use smaller images.")
            return [(PurePosixPath(info.filename).name, bundle.read(info)) for info in sorted(members, key=lambda i: i.filename)]
    except zipfile.BadZipFile:
        raise PublishError(f"{archive.name} is not a readable zip; use the portfolio zip from Generate's batch.") from None


def _sample(name: str, data: bytes, target: Path, settings: Settings, default_prompt: str, published: tuple[str, str, str]) -> Sample:
    """Re-save one image as PNG; keep its recipe without local paths."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise PublishError(f"{name!r} is {image.width}x{image.height}; use a sample image of at most 4096x4096.")
            picture = image.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        raise PublishError(f"{name!r} is not a readable image; give PNG, JPEG or WebP sample images.") from None
    recipe = None
    source = target.with_name(f".{target.name}.source.png")
    try:
        source.write_bytes(data)
        recipe = _public_recipe(Recipe.from_dict(read_png_recipe(source)), settings, published)
    except LoraSpaceError:
        recipe = None  # an image without a recipe (a photo, a JPEG): published as it is
    finally:
        source.unlink(missing_ok=True)
    if recipe is not None:
        save_png(picture, target, recipe)
        return Sample(target, recipe.prompt, recipe.to_dict())
    picture.save(target, format="PNG")
    return Sample(target, default_prompt)


def _public_recipe(recipe: Recipe, settings: Settings, published: tuple[str, str, str]) -> Recipe:
    """The recipe without paths of this machine: LoRAs by name (the published one by its repo id,
    at no fixed revision, with the published file's hash), the base model by Hub id."""
    name, repo_id, published_hash = published
    loras = tuple(
        replace(lora, source=repo_id, revision="", hash=published_hash or lora.hash) if name and lora.name == name
        else replace(lora, source=lora.name) if _is_local_path(lora.source) else lora
        for lora in recipe.loras
    )
    model = settings.hub_base_model if _is_local_path(recipe.model) else recipe.model
    return replace(recipe, loras=loras, model=model)


def _is_local_path(value: str) -> bool:
    return value.startswith(("/", "~", ".")) or "\\" in value or (len(value) > 1 and value[1] == ":")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
