"""Publish a LoRA the visitor owns to the Hub, with its card, samples and reproducibility file.

    publish(space, PublishRequest(lora="my_style", repo_id="alice/my-style"), token=..., visitor=...)

The steps, in order; nothing is written to the Hub before every check has passed:

1. The token is the visitor's own (their login, or on a local run `HF_TOKEN`); it is passed
   down per call and never stored, logged, or written into a file or message.
2. `whoami` says who it belongs to; a read-only token, or a fine-grained or OAuth token
   without write access to the namespace, is refused. The namespace must be the user's or an
   organisation they can write to, and the repo name must be valid.
3. An existing repo is refused unless `overwrite=True`; a new one is private unless told.
4. The LoRA's modules are checked against the base the card names (`publish.base`: a LoRA
   of the tiny test model names none), it is written in the diffusers layout (plus
   kohya/ComfyUI copies on request), the sample images are re-saved with their recipes, the
   card is rendered (or the user's edited card is checked), and a reproducibility file is
   written.
5. One `create_commit` sends them all. If it fails on a repo this call created, the repo is
   deleted again, so nothing is left half pushed, and the error says why.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .. import hub
from ..errors import HubError, LoraFileError, PublishError
from ..hashes import LORA_SHORT, lora_file_hash
from ..lora.export import TARGETS, save_lora
from ..lora.tools import read_lora_file
from ..owners import Visitor
from .base import check_card_base, made_for
from .bundle import Bundle, file_bundle, file_sha256, find_bundle, json_text, read_samples
from .card import CardFacts, CardImage, parse_card, render_card

logger = logging.getLogger(__name__)

WEIGHT_FILE = hub.CANONICAL_WEIGHT_NAME
REPRO_FILE = "reproducibility.json"
WRITE_ROLES = {"write", "admin"}
ORG_WRITE_ROLES = {"admin", "write", "contributor"}
OAUTH_WRITE_SCOPES = {"write-repos", "manage-repos"}
VERSIONED = ("torch", "diffusers", "peft", "transformers", "huggingface_hub", "safetensors")
MOCK_OAUTH_TOKEN = "mock-oauth-token-for-local-dev"  # what gradio's local OAuth mock hands handlers
TEST_MODEL_NOTE = (
    "{name} was trained on LoRA Space's tiny test model{width}: it is published as a test artefact whose "
    "card names no base model, since it loads into no FLUX.1 model. Train on FLUX.1-dev for a LoRA to use."
)


@dataclass(frozen=True)
class PublishRequest:
    """What to publish where (the `/publish` endpoint's parameters).

    Args:
        lora: a training job id, a name in the visitor's library, or a path to a file they own.
        repo_id: `namespace/name` on the Hub.
        private: make a new repo private (the default).
        overwrite: commit into an existing repo (files of the same name are replaced).
        trigger_word: overrides the LoRA's trigger words (commas separate several).
        license: a Hub licence id; empty: the base model's terms.
        sample_images: image files or a portfolio zip; empty: a job's own samples.
        extra_formats: also publish `kohya` and/or `comfyui` copies.
        description: what the LoRA does, for the card.
        card: the user's edited README.md; empty: the rendered card.
    """

    lora: str
    repo_id: str
    private: bool = True
    overwrite: bool = False
    trigger_word: str = ""
    license: str = ""
    sample_images: tuple[Path, ...] = ()
    extra_formats: tuple[str, ...] = ()
    description: str = ""
    card: str = ""
    uploaded_file: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "repo_id", self.repo_id.strip())
        object.__setattr__(self, "sample_images", tuple(Path(item) for item in self.sample_images))
        object.__setattr__(self, "extra_formats", tuple(dict.fromkeys(f.strip().lower() for f in self.extra_formats if f.strip())))
        check_repo_id(self.repo_id)
        unknown = [name for name in self.extra_formats if name not in TARGETS or name == "diffusers"]
        if unknown:
            raise PublishError(f"Unknown extra format {unknown[0]!r}; choose 'kohya' (A1111/Forge) or 'comfyui'.")


@dataclass(frozen=True)
class PublishResult:
    """A finished publish: the repo's page, the commit id, the files it holds, and what to know."""

    url: str
    commit: str
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "commit": self.commit, "files": list(self.files), "notes": list(self.notes)}


@dataclass(frozen=True)
class Prepared:
    """The files of one publish, staged locally (path in the repo -> local file), and its card."""

    name: str
    files: dict[str, Path]
    card: str
    folder: Path
    notes: list[str] = field(default_factory=list)


def check_repo_id(repo_id: str) -> None:
    """Refuse a repo id that is not `namespace/name` with a valid Hub name."""
    if repo_id.count("/") != 1:
        raise PublishError(f"Repo id {repo_id!r} must be 'your-name/repo-name' (or 'your-org/repo-name').")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PublishError(
            f"{repo_id!r} is not a valid Hub repo name: use letters, digits, '-', '_' and '.', at most 96 "
            "characters, not starting or ending with '-' or '.', without '--' or '..', e.g. 'alice/watercolor-flux'."
        ) from None


def user_token(oauth_token: str | None, typed: str | None = None, *, on_space: bool, environment_token: str | None = None) -> str:
    """The visitor's own token for this call: their login, else (on a local run only) a typed or `HF_TOKEN` token.

    Raises:
        PublishError: no token.
    """
    for token in (oauth_token, None if on_space else typed, None if on_space else environment_token):
        if token and token.strip() and token != MOCK_OAUTH_TOKEN:
            return token.strip()
    if on_space:
        raise PublishError("Sign in with Hugging Face (the button at the top) to publish to your account.")
    raise PublishError(
        "Publishing needs your Hugging Face token with write access: set HF_TOKEN, paste it in the token field, "
        "or pass oauth_token= to gradio_client's Client."
    )


def writable_namespaces(identity: dict[str, Any], *, oauth_scope: str = "") -> tuple[str, list[str]]:
    """Who the token is (`name`) and the namespaces it may write to, from the Hub's `whoami-v2`.

    - a classic token: role `write` (or `admin`) writes to the user and to organisations where
      the user's role allows it; role `read` writes nowhere;
    - a fine-grained token: only namespaces whose scoped permissions include `repo.write`;
    - an OAuth token (a Space's sign-in) whose scopes are known must hold `write-repos` or
      `manage-repos`; where neither a role nor scopes are given, the Hub's own answer to the
      create/commit call decides (and its refusal is reported).
    """
    name = str(identity.get("name") or "")
    orgs = [
        org["name"] for org in identity.get("orgs") or []
        if isinstance(org, dict) and org.get("name") and str(org.get("roleInOrg") or "write") in ORG_WRITE_ROLES
    ]
    auth = identity.get("auth") or {}
    access = auth.get("accessToken") or {}
    role = access.get("role")
    if role == "fineGrained":
        scoped = (access.get("fineGrained") or {}).get("scoped") or []
        allowed = {
            str((item.get("entity") or {}).get("name")) for item in scoped
            if isinstance(item, dict) and "repo.write" in (item.get("permissions") or [])
        }
        return name, [namespace for namespace in [name, *orgs] if namespace in allowed]
    if role is not None:
        return name, [name, *orgs] if role in WRITE_ROLES else []
    scopes = set(oauth_scope.split()) or set(str(auth.get("scope") or "").split())
    if scopes:
        return name, [name, *orgs] if scopes & OAUTH_WRITE_SCOPES else []
    return name, [name, *orgs]  # neither role nor scopes known: the Hub decides at create/commit time


def check_write_access(repo_id: str, identity: dict[str, Any], *, oauth_scope: str = "") -> None:
    """Refuse a token that cannot write to `repo_id`'s namespace, saying why.

    Raises:
        PublishError: read-only token, or a namespace that is neither the user's nor a writable org's.
    """
    name, namespaces = writable_namespaces(identity, oauth_scope=oauth_scope)
    namespace = repo_id.split("/")[0]
    if not namespaces:
        raise PublishError(
            f"Your token ({name or 'unknown user'}) is read-only; publishing needs a token with write access "
            "(create one with the 'write' role, or sign in again and allow writing to your repos)."
        )
    if namespace not in namespaces:
        raise PublishError(
            f"You ({name}) cannot write to {namespace!r}: publish under your own name ({name}/...) or an "
            f"organisation you can write to ({', '.join(namespaces[1:]) or 'none'})."
        )


def prepare(space: Any, request: PublishRequest, *, visitor: Visitor) -> Prepared:
    """Stage everything one publish sends (step 4), in a fresh folder under the data folder.

    Raises:
        PublishError: the source is not the visitor's, or the edited card is not valid.
        LoraFileError: the LoRA file cannot be read.
    """
    settings = space.settings
    if request.uploaded_file is not None:
        bundle = file_bundle(request.uploaded_file, settings=settings, visitor=visitor, uploaded=True)
    else:
        bundle = find_bundle(space, request.lora, visitor=visitor)
    if request.trigger_word.strip():
        bundle.trigger_words = [word.strip() for word in request.trigger_word.split(",") if word.strip()]
    folder = settings.data_dir / "outputs" / f"publish-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    try:
        return _stage(space, request, bundle, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _stage(space: Any, request: PublishRequest, bundle: Bundle, folder: Path) -> Prepared:
    settings = space.settings
    repo_name = request.repo_id.split("/")[1]
    # 1. The LoRA in the diffusers layout (bit for bit), plus the copies asked for.
    lora = read_lora_file(bundle.lora_file)
    if not lora.modules:
        raise LoraFileError(f"{bundle.name} has no module that fits FLUX; there is nothing to publish.")
    base = made_for(bundle.name, lora, settings)
    files: dict[str, Path] = {WEIGHT_FILE: folder / WEIGHT_FILE}
    save_lora(lora, files[WEIGHT_FILE], target="diffusers")
    extra = []
    for target in request.extra_formats:
        name = f"{repo_name}-{target}.safetensors"
        save_lora(lora, folder / name, target=target)
        files[name] = folder / name
        extra.append(name)
    # 2. Sample images: the ones given (a portfolio), else the job's own samples.
    default_prompt = ", ".join(bundle.trigger_words) or bundle.name
    given = list(request.sample_images) or [sample.file for sample in bundle.samples]
    samples = read_samples(
        given,
        folder / "images",
        settings=settings,
        default_prompt=default_prompt,
        published=(bundle.name, request.repo_id, lora_file_hash(files[WEIGHT_FILE])[:LORA_SHORT]),
        prompts=None if request.sample_images else [sample.prompt for sample in bundle.samples],
    )
    for sample in samples:
        files[f"images/{sample.file.name}"] = sample.file
    # 3. The card: the user's edited one (checked), or rendered from the facts.
    ranks = [module.rank for module in lora.modules.values()]
    alphas = {module.alpha for module in lora.modules.values()}
    facts = CardFacts(
        repo_id=request.repo_id,
        title=bundle.name,
        base_model=base.hub_id,
        weight_file=WEIGHT_FILE,
        trigger_words=tuple(bundle.trigger_words),
        images=tuple(CardImage(f"images/{sample.file.name}", sample.prompt) for sample in samples),
        license=request.license.strip(),
        training=bundle.training,
        rank=max(set(ranks), key=ranks.count),
        alpha=next(iter(alphas)) if len(alphas) == 1 and None not in alphas else None,
        num_modules=len(lora.modules),
        extra_files=tuple(extra),
        description=request.description,
        width=base.width,
    )
    card = request.card if request.card.strip() else render_card(facts)
    check_card_base(bundle.name, lora, parse_card(card), settings)
    files["README.md"] = folder / "README.md"
    files["README.md"].write_text(card, encoding="utf-8")
    # 4. The reproducibility file: config, dataset hash, seed, versions, the samples' recipes.
    repro = {
        "format": "lora-space-publish",
        "version": 1,
        "lora": {
            "name": bundle.name,
            "source": bundle.kind,
            "file": WEIGHT_FILE,
            "sha256": file_sha256(files[WEIGHT_FILE]),
            "source_format": lora.format,
            "rank": facts.rank,
            "num_modules": facts.num_modules,
            "trigger_words": bundle.trigger_words,
        },
        "base_model": base.label,
        "config": bundle.config,
        "dataset_sha256": bundle.dataset_hash,
        "seed": bundle.seed,
        "samples": [{"file": f"images/{sample.file.name}", "recipe": sample.recipe} for sample in samples],
        "versions": library_versions(),
    }
    files[REPRO_FILE] = folder / REPRO_FILE
    files[REPRO_FILE].write_text(json_text(repro), encoding="utf-8")
    notes = [TEST_MODEL_NOTE.format(name=bundle.name, width=f" ({base.width} wide)" if base.width else "")] if base.is_test_model else []
    return Prepared(name=bundle.name, files=files, card=card, folder=folder, notes=notes)


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that made and load the LoRA."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def preview_card(space: Any, request: PublishRequest, *, visitor: Visitor) -> str:
    """The card a publish would send (nothing is sent; the staged files are removed)."""
    prepared = prepare(space, request, visitor=visitor)
    shutil.rmtree(prepared.folder, ignore_errors=True)
    return prepared.card


def publish(space: Any, request: PublishRequest, *, token: str, visitor: Visitor, oauth_scope: str = "", progress=None) -> PublishResult:
    """Check, stage and push one LoRA in one commit (see the module docstring).

    Raises:
        PublishError: a refused check (read-only token, foreign namespace, existing repo, not yours).
        HubError: the Hub cannot be reached or refuses; the message says why.
    """
    settings = space.settings
    where = {"endpoint": settings.hf_endpoint, "token": token, "offline": settings.hf_offline}
    # 1-2. Who is publishing, and may they write there?
    _progress(progress, 0.05, "checking your login")
    identity = hub.whoami(token, endpoint=settings.hf_endpoint, offline=settings.hf_offline)
    check_write_access(request.repo_id, identity, oauth_scope=oauth_scope)
    # 3. An existing repo is kept unless the user said to overwrite it.
    exists = hub.repo_exists(request.repo_id, **where)
    if exists and not request.overwrite:
        raise PublishError(
            f"{request.repo_id} already exists on the Hub; choose another name, or set overwrite=True to commit "
            "into it (files of the same name are replaced)."
        )
    # 4. Stage the files (before the repo is created, so a bad source creates nothing).
    _progress(progress, 0.2, "writing the LoRA, images and card")
    prepared = prepare(space, request, visitor=visitor)
    try:
        typed = (request.card, request.description, request.trigger_word, request.license)
        written = (prepared.files[name].read_text(encoding="utf-8") for name in ("README.md", REPRO_FILE))
        if any(token in text for text in (*typed, *written)):
            raise PublishError(
                "The model card contains your Hub token (in the card, the description or the trigger words); "
                "remove it before publishing."
            )
        _progress(progress, 0.5, f"uploading {len(prepared.files)} files")
        created = None if exists else hub.create_repo(request.repo_id, private=request.private, **where)
        # 5. One commit; undo a repo this call created if it fails.
        try:
            commit = hub.create_commit(
                request.repo_id,
                prepared.files,
                message=f"Publish the LoRA {prepared.name} with LoRA Space",
                **where,
            )
        except HubError as error:
            left = "" if created is None or _undo(request.repo_id, where) else (
                f" The empty repo {request.repo_id} could not be removed; delete it on the Hub.")
            raise HubError(f"Publishing to {request.repo_id} failed and nothing was published: {error}{left}") from None
    finally:
        shutil.rmtree(prepared.folder, ignore_errors=True)
    logger.info("published a LoRA to %s (commit %s, %d files)", request.repo_id, commit.oid[:8], len(prepared.files))
    url = f"{settings.hf_endpoint.rstrip('/')}/{request.repo_id}"
    return PublishResult(url=url, commit=commit.oid, files=sorted(prepared.files), notes=prepared.notes)


def _undo(repo_id: str, where: dict[str, Any]) -> bool:
    """Delete the repo this publish created; whether that worked."""
    try:
        hub.delete_repo(repo_id, **where)
    except HubError as error:
        logger.warning("could not delete the empty repo %s after a failed commit: %s", repo_id, error)
        return False
    return True


def _progress(progress, share: float, text: str) -> None:
    if progress is not None:
        progress(share, desc=text)
