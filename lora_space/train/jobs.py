"""Training jobs: on disk, one at a time, chunk by chunk, restart-safe (API.md `/start_training`).

`JobManager` (reachable as `space.jobs`) takes a dataset zip and a config, checks both at the
call (bad input, and a job whose work as a whole passes the Space's bounds, are refused there;
so is a job past the Space's number of jobs waiting and running), and queues the job. Jobs
train one at a time, chunk after chunk; each chunk takes a turn on the engine's pipeline
(`Engine.turn`, then `Engine.lend`) and ends at its next step when a generation waits, so
generations wait about one step. On ZeroGPU each chunk is one `@gpu` call; the chunk reads its
state from the job folder and writes it back, so nothing depends on which worker ran it.

Who trains: off ZeroGPU (a dedicated GPU, the CPU) one worker thread trains the queued jobs.
On ZeroGPU every GPU call must run inside a Gradio request of the visitor who owns the job, so
that their quota pays (`spaces` schedules a call with the request current in its context): the
job trains inside its owner's request (`follow`, a streaming event), and pauses, its state
saved, when that request goes away, until its owner resumes it.

A job's folder is `data_dir/jobs/<job id>` (the files of `checkpoint.JobFiles`, plus
`job.json`, written atomically, and `report.json`). Job ids are 128 random bits: whoever holds
one can follow and cancel the job; `list_jobs` shows a visitor only their own (the state keeps
`visitor.id`, never a token). After a restart, jobs that were queued or running are marked
`interrupted` and can be resumed from their last state.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import GpuUnavailableError, JobError, LimitError, LoraSpaceError
from ..gpu import on_zerogpu
from ..owners import Visitor
from . import chunk
from .checkpoint import JobFiles, log_line, read_json, write_json
from .config import check_job_bounds, merged
from .prepare import prepare_job
from .samples import lora_name_for
from .status import JobStatus
from .trainer import ChunkResult, check_rank

if TYPE_CHECKING:
    from ..service import LoraSpace

logger = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
RESUMABLE = ("interrupted", "cancelled", "failed")
QUEUE_POLL_SECONDS = 2.0  # a job waiting for its turn inside its owner's request reports its place this often
_JOB_ID = re.compile(r"[0-9a-f]{32}")


class JobManager:
    """Training jobs of one `LoraSpace`.

    Args:
        space: the app (settings, engine, `add_lora`).
        chunk_steps: at most this many steps per chunk (None: bounded by time only).
        chunk_seconds: training seconds per chunk (default: 90 on ZeroGPU, else 60).
        in_requests: jobs train inside their owners' requests (`follow`), as ZeroGPU needs; else
            a worker thread trains them (default: on ZeroGPU).
    """

    def __init__(
        self, space: LoraSpace, *, chunk_steps: int | None = None, chunk_seconds: float | None = None, in_requests: bool | None = None
    ) -> None:
        self.space = space
        self.root = space.settings.data_dir / "jobs"
        self.chunk_steps = chunk_steps
        self.chunk_seconds = chunk_seconds or (chunk.ZEROGPU_CHUNK_SECONDS if on_zerogpu() else chunk.CHUNK_SECONDS)
        self.in_requests = on_zerogpu() if in_requests is None else in_requests
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[str] = deque()
        self._running: str | None = None
        self._followers: Counter[str] = Counter()  # requests following each job (`in_requests`: here to train it)
        self._visitors: dict[str, Visitor] = {}
        self._closing = False
        self._worker: threading.Thread | None = None
        self._chunks = 0
        self._mark_interrupted()

    # -- public -------------------------------------------------------------------------

    def start(self, zip_path: str | Path, config: dict | None = None, *, visitor: Visitor, captions: dict | None = None) -> JobStatus:
        """Check the zip and config, then queue the job; training runs in the background.

        Args:
            zip_path: the dataset zip (any layout of API.md).
            config: training settings by the course's `config.json` names; they win over the zip's.
            visitor: the job's owner.
            captions: edited captions by image name, replacing the zip's.

        Returns:
            The job's status (`queued`, with its place in the queue). On ZeroGPU it trains once its
            owner's request follows it (`follow`).

        Raises:
            DatasetError: not a readable zip, or no usable image.
            TrainConfigError: a bad setting, or the job's work past a bound of the Space (named).
            JobError: the visitor already has a job queued or running, or the Space has its most jobs.
        """
        self.check_room(visitor)  # at once, before any file work
        settings = self.space.settings
        merged(None, config, is_tiny=settings.is_tiny)  # the call's own values, before any file work
        job_id = secrets.token_hex(16)
        files = JobFiles(self.root / job_id)
        files.root.mkdir(parents=True)
        try:
            prepared = prepare_job(files, zip_path, config, is_tiny=settings.is_tiny, captions=captions)
            final, rows = prepared.config, prepared.rows
            check_rank(self.space.engine.pipe.transformer, final)  # the bound of the base this Space runs
            held_out = sum(row["split"] == "validation" for row in rows)
            check_job_bounds(final, images=len(rows), validation_images=held_out, bounds=settings.training)
            notes = list(final.notes)
            if final.quantize_base != "none":
                notes.append(
                    f"quantize_base {final.quantize_base}: the Space trains on the one copy of the base model it holds for "
                    "generation, unquantised; a quantised base is for `python -m lora_space.train` on your own GPU."
                )
            if not settings.is_tiny and final.model_name != settings.base_model:
                notes.append(f"model_name {final.model_name!r}: this Space trains the base model it runs, {settings.base_model}.")
            state = {
                "job_id": job_id, "owner": visitor.id, "state": "queued", "created": time.time(), "error": "",
                "total_steps": final.max_train_steps, "notes": notes, "trigger_word": final.trigger_word,
                "lora_name": "", "lora_file": "",
            }  # fmt: skip
            self._write_state(files, state)
            with self._lock:
                self._refuse_when_full()
                self._enqueue(job_id, visitor)
        except BaseException:
            shutil.rmtree(files.root, ignore_errors=True)
            raise
        log_line(files, f"job created: {len(rows)} images, {final.max_train_steps} steps")
        return self.status(job_id)

    def check_room(self, visitor: Visitor) -> None:
        """Refuse at once, before a zip is read, what `start` would refuse for the visitor and the Space.

        Raises:
            JobError: the visitor has a job queued or running, or the Space has its most jobs.
        """
        self._refuse_second_job(visitor)
        with self._lock:
            self._refuse_when_full()

    def status(self, job_id: str) -> JobStatus:
        """The job's state, progress, files and warnings.

        Raises:
            JobError: no such job.
        """
        files, state = self._load(job_id)
        progress = read_json(files.progress, {}) or {}
        with self._lock:
            position = self._queue.index(job_id) + 1 if job_id in self._queue else 0
            ahead = list(self._queue)[: max(position - 1, 0)] + ([self._running] if self._running and position else [])
        step = progress.get("step", 0)
        if state["state"] == "interrupted":  # killed between saving its state and its progress: the state is the truth
            step = max([step] + [int(path.name[5:]) for path in files.states.glob("step_*") if path.name[5:].isdigit()])
        per_step = progress.get("seconds_per_step")
        eta = None
        if per_step and state["state"] in ACTIVE:
            eta = per_step * (state["total_steps"] - step)
            eta += sum(per_step * self._steps_left(other) for other in ahead if other)
        lora_file = Path(state["lora_file"]) if state.get("lora_file") else None
        return JobStatus(
            job_id=job_id, state=state["state"], step=step, total_steps=state["total_steps"],
            loss=progress.get("loss", []), val_loss=progress.get("val_loss", []),
            samples=[files.samples / name for name in progress.get("samples", [])],
            checkpoints=[files.checkpoints / name for name in progress.get("checkpoints", [])],
            lora_file=lora_file, lora_name=state.get("lora_name", ""),
            dataset_report=read_json(files.root / "report.json", {}), error=state.get("error", ""),
            queue_position=position, eta_seconds=round(eta, 1) if eta is not None else None,
            warnings=list(state.get("notes", [])) + progress.get("warnings", []),
            config=read_json(files.config, {}),
        )  # fmt: skip

    def cancel(self, job_id: str) -> JobStatus:
        """Stop the job within one step (a queued one at once); its last state is kept for `resume`.

        Raises:
            JobError: no such job.
        """
        files, state = self._load(job_id)
        with self._lock:
            if job_id in self._queue:
                self._queue.remove(job_id)
                state["state"] = "cancelled"
                self._write_state(files, state)
            elif state["state"] == "running":
                files.stop_flag.write_text("cancel")
        if state["state"] == "running":
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self._load(job_id)[1]["state"] == "running":
                time.sleep(0.05)
        return self.status(job_id)

    def resume(self, job_id: str, *, visitor: Visitor) -> JobStatus:
        """Queue an interrupted, cancelled or failed job again; it continues from its last state
        (on ZeroGPU once its owner's request follows it, `follow`).

        Raises:
            JobError: no such job, not this visitor's, not resumable, the visitor has a job running,
                or the Space has its most jobs.
        """
        files, state = self._load(job_id)
        if state["owner"] != visitor.id:
            raise JobError("Only the visitor who started this job can resume it; start a new job with the same zip instead.")
        if state["state"] not in RESUMABLE:
            raise JobError(f"Job {job_id} is {state['state']}; only an interrupted, cancelled or failed job can be resumed.")
        self._refuse_second_job(visitor)
        files.stop_flag.unlink(missing_ok=True)
        with self._lock:
            self._refuse_when_full()
            state.update(state="queued", error="")
            self._write_state(files, state)
            self._enqueue(job_id, visitor)
        log_line(files, "job resumed")
        return self.status(job_id)

    def follow(self, job_id: str) -> Iterator[JobStatus]:
        """The job's status as it goes: first at once, then after each chunk.

        On ZeroGPU (`in_requests`) the job trains here, inside the caller's request, so that every
        GPU call of the job is scheduled with that request (the owner's quota pays): it waits for
        its turn among the queued jobs, then runs chunk after chunk. When the caller goes away
        (the generator is closed: the page or script disconnected) the job pauses: it is
        `interrupted`, its state saved at its last chunk, until its owner resumes it. Elsewhere the
        worker thread trains the job, and this yields its status once.

        Raises:
            JobError: no such job.
        """
        files, _ = self._load(job_id)
        if not self.in_requests:
            yield self.status(job_id)
            return
        driver: Iterator[ChunkResult] | None = None
        with self._lock:
            self._followers[job_id] += 1
        try:
            yield self.status(job_id)
            # 1. Wait for the job's turn: one job trains at a time, in the order they were queued.
            while True:
                with self._lock:
                    if job_id not in self._queue:  # cancelled meanwhile, or not queued
                        break
                    head = next((queued for queued in self._queue if queued in self._followers), None)
                    if self._running is None and head == job_id:
                        self._queue.remove(job_id)
                        self._running = job_id
                        driver = self._run(job_id)
                        break
                    self._wake.wait(QUEUE_POLL_SECONDS)
                yield self.status(job_id)
            # 2. Chunk after chunk, inside this request.
            for _ in driver or ():
                yield self.status(job_id)
            yield self.status(job_id)
        finally:
            if driver is not None:
                driver.close()  # closed mid-job: the running slot is given back
            self._leave(files, job_id, trained_here=driver is not None)

    def list_jobs(self, visitor: Visitor) -> list[JobStatus]:
        """The visitor's own jobs, newest first."""
        found = []
        for path in self.root.glob("*/job.json") if self.root.exists() else []:
            state = read_json(path, {})
            if state.get("owner") == visitor.id:
                found.append((state.get("created", 0), state["job_id"]))
        return [self.status(job_id) for _, job_id in sorted(found, reverse=True)]

    def close(self, *, timeout: float = 60) -> None:
        """Stop the worker within one step, as an app shutdown does; the job shows as interrupted on the next start."""
        with self._lock:
            self._closing = True
            running = self._running
            self._wake.notify_all()
        if running:
            JobFiles(self.root / running).stop_flag.write_text("shutdown")
        if self._worker is not None:
            self._worker.join(timeout)

    # -- the worker -------------------------------------------------------------------------

    def _enqueue(self, job_id: str, visitor: Visitor) -> None:
        """Queue the job (call under the lock); off ZeroGPU the worker thread picks it up."""
        self._visitors[job_id] = visitor
        self._queue.append(job_id)
        if not self.in_requests:
            self._ensure_worker()
        self._wake.notify_all()

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="lora-space-trainer", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if self._closing:
                    return
                job_id = self._running = self._queue.popleft()
            try:
                for _ in self._run(job_id):
                    pass
            except Exception:  # a bug: the job fails, the worker lives on
                logger.exception("training job %s failed", job_id)

    def _run(self, job_id: str) -> Iterator[ChunkResult]:
        """Train the job (claimed as running) chunk after chunk, each in a turn on the engine; yields
        between chunks, outside the turn. The running slot is given back when it ends or is closed."""
        try:
            files, state = self._load(job_id)
            state["state"] = "running"
            self._write_state(files, state)
            log_line(files, "running")
            adapter_name = f"train_{job_id[:12]}"
            engine = self.space.engine
            try:
                while True:
                    # One chunk: at most chunk_seconds (or chunk_steps); it ends sooner when a generation waits.
                    self._chunks += 1
                    with engine.turn():
                        result = chunk.train_chunk(id(engine), str(files.root), adapter_name, self.chunk_steps, self.chunk_seconds)
                    if result.finished or result.stopped:
                        break
                    yield result
            except GpuUnavailableError as error:  # ZeroGPU gave no GPU (the owner's quota is spent): pause, not fail
                state.update(state="interrupted", error=f"{error} The job is paused with its state saved; resume it later.")
                self._write_state(files, state)
                log_line(files, f"paused: {error}")
                return
            except Exception as error:
                message = str(error) if isinstance(error, (LoraSpaceError, FloatingPointError)) else f"internal error ({type(error).__name__})"
                if not isinstance(error, (LoraSpaceError, FloatingPointError)):
                    logger.exception("training job %s failed", job_id)
                state.update(state="failed", error=message)
                self._write_state(files, state)
                log_line(files, f"failed: {message}")
                return
            if result.stopped:
                reason = files.stop_flag.read_text() if files.stop_flag.exists() else "cancel"
                files.stop_flag.unlink(missing_ok=True)
                if reason == "shutdown":
                    return  # left as running on disk: the next start marks it interrupted
                state["state"] = "cancelled"
                self._write_state(files, state)
                log_line(files, f"cancelled at step {result.step}")
                return
            self._finish(files, state)
        finally:
            with self._lock:
                if self._running == job_id:
                    self._running = None
                self._wake.notify_all()

    def _leave(self, files: JobFiles, job_id: str, *, trained_here: bool) -> None:
        """A request that followed the job went away: a job it was training, or one queued that no
        request follows any more, pauses (`interrupted`, its state saved at its last chunk)."""
        with self._lock:
            self._followers[job_id] -= 1
            if self._followers[job_id] <= 0:
                del self._followers[job_id]
            unfollowed = job_id in self._queue and job_id not in self._followers
            if unfollowed:
                self._queue.remove(job_id)
            if trained_here and self._running == job_id:
                self._running = None
            self._wake.notify_all()
        state = read_json(files.root / "job.json", {})
        if (trained_here or unfollowed) and state.get("state") in ACTIVE:
            state["state"] = "interrupted"
            self._write_state(files, state)
            log_line(files, "paused: the request that trained it went away; resume it to go on")

    def _finish(self, files: JobFiles, state: dict) -> None:
        """Put the final LoRA into the owner's library; its name is then a Generate source."""
        visitor = self._visitors.get(state["job_id"])
        name = lora_name_for(state.get("trigger_word", ""), state["job_id"])
        try:
            if visitor is None:
                raise JobError("The job's owner is unknown after a restart; resume it to add the LoRA to your library.")
            trigger = [state["trigger_word"]] if state.get("trigger_word") else []
            entry = self.space.add_lora(files.final, visitor=visitor, name=name, trigger_words=trigger, overwrite=True)
        except LimitError as error:
            # The LoRA is trained and kept with the job; only the library was full: say so and how to add it.
            note = (
                f"Training finished, but the LoRA could not join your library: {error} The LoRA is kept with this job: "
                "download it as lora_file, make room in your library, then upload it there (Library tab)."
            )
            state.update(state="done", lora_name="", lora_file=str(files.final), finished=time.time())
            state["notes"] = list(state.get("notes", [])) + [note]
            self._write_state(files, state)
            shutil.rmtree(files.states, ignore_errors=True)
            shutil.rmtree(files.cache, ignore_errors=True)
            log_line(files, "done: kept in the job folder (library quota)")
            return
        except LoraSpaceError as error:
            state.update(state="failed", error=f"Training finished, but the LoRA could not join your library: {error}")
            state["lora_file"] = str(files.final)
            self._write_state(files, state)
            return
        state.update(state="done", lora_name=entry.name, lora_file=str(entry.path), finished=time.time())
        self._write_state(files, state)
        # A finished job cannot resume: its training state and encodings only took disk space.
        shutil.rmtree(files.states, ignore_errors=True)
        shutil.rmtree(files.cache, ignore_errors=True)
        log_line(files, f"done: {entry.name}")

    # -- helpers ----------------------------------------------------------------------------

    def _steps_left(self, job_id: str) -> int:
        try:
            files, state = self._load(job_id)
        except JobError:
            return 0
        return state["total_steps"] - (read_json(files.progress, {}) or {}).get("step", 0)

    def _refuse_when_full(self) -> None:
        """Refuse one more job past the Space's jobs waiting and running (call under the lock)."""
        active = len(self._queue) + (self._running is not None)
        limit = self.space.settings.training.max_jobs
        if active >= limit:
            raise JobError(
                f"This Space already has {active} training jobs waiting or running, the most it takes at once; "
                "try again when one has finished."
            )

    def _refuse_second_job(self, visitor: Visitor) -> None:
        for path in self.root.glob("*/job.json") if self.root.exists() else []:
            state = read_json(path, {})
            if state.get("owner") == visitor.id and state.get("state") in ACTIVE:
                raise JobError(
                    f"You already have a training job {state['state']} ({state['job_id']}); wait for it to finish "
                    "or cancel it before starting another."
                )

    def _load(self, job_id: str) -> tuple[JobFiles, dict]:
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id.strip()):
            raise JobError(f"There is no such job: {str(job_id)[:40]!r}. Use the job_id that /start_training returned.")
        files = JobFiles(self.root / job_id.strip())
        state = read_json(files.root / "job.json")
        if state is None:
            raise JobError(f"There is no such job: {job_id!r}. Use the job_id that /start_training returned.")
        return files, state

    def _write_state(self, files: JobFiles, state: dict) -> None:
        write_json(files.root / "job.json", state)

    def _mark_interrupted(self) -> None:
        """At start: jobs that were queued or running when the app stopped are interrupted."""
        for path in self.root.glob("*/job.json") if self.root.exists() else []:
            state = read_json(path, {})
            if state.get("state") in ACTIVE:
                state["state"] = "interrupted"
                write_json(path, state)
