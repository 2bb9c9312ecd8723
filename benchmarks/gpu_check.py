"""Every GPU figure of LoRA Space in one command: generation, training, preemption, compiled generation.

    python benchmarks/gpu_check.py [--out FILE] [--budget-seconds 450]   # one GPU, no network (sized for ~6 min on an H200)
    python benchmarks/gpu_check.py --dry-run [--out FILE]                # the same code, tiny, on the CPU (a CI test)

It builds a FLUX.1-dev-sized pipeline with random weights (the full transformer in bf16, small
random text encoders and VAE: nothing is downloaded), writes random rank-16 LoRAs on the
attention layers (`bench_generate.write_lora`), and measures side by side in one run:

1. Generation (1024x1024, 28 steps) through the engine: the base model, 1 and 3 LoRAs unfused,
   3 LoRAs fused (the engine fuses a repeated mix), and a request that changes the strengths;
   each as a ratio to the base.
2. Compiled generation (`LORA_SPACE_COMPILE`): a different mix on every request, compiled (LoRAs
   hot-swapped into slots) against eager, recompiles counted; the first request's compile time.
3. Preemption: what one interruption of a training chunk by a generation costs (`measure_preemption`).
4. Training (`gpu_train.run`): the bf16, low-memory (nf4 + 8-bit AdamW) and fp8 presets: s/step,
   peak memory, 1000 steps projected, share of the bf16 rate.

The JSON file is written after each section, so a run cut short keeps what it measured; a
section that fails is recorded with its error and the run goes on (exit status 1). Sections
that would start after `--budget-seconds` are skipped and say so.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch._dynamo.utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpu_train  # noqa: E402  (benchmarks/ is this script's folder)
from bench_generate import different_mixes, write_lora  # noqa: E402

from lora_space.core.atomic import write_atomically  # noqa: E402
from lora_space.generate.compiled import CompileOptions  # noqa: E402
from lora_space.generate.engine import Engine  # noqa: E402
from lora_space.generate.request import GenerationRequest, LoraSpec, Options

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO / "examples" / "flat_shapes.zip"  # 12 drawn images with captions


@dataclass(frozen=True)
class Size:
    """What one run measures: FLUX.1-dev at 1024x1024 (`FULL`) or the same code tiny (`DRY`)."""

    train: gpu_train.Scale  # the transformer, and the training batch
    clip_hidden: int  # = the transformer's pooled_projection_dim
    image: int
    steps: int
    lora_rank: int
    slot_rank: int
    repeats: int  # timed requests per generation variant
    train_steps: int  # timed training steps per preset
    chunk_steps: int  # steps of each training chunk in the preemption measurement


FULL = Size(gpu_train.FULL, clip_hidden=768, image=1024, steps=28, lora_rank=16, slot_rank=64, repeats=2, train_steps=10, chunk_steps=4)
DRY = Size(gpu_train.DRY, clip_hidden=32, image=64, steps=2, lora_rank=4, slot_rank=8, repeats=1, train_steps=2, chunk_steps=1)


def build_pipeline(size: Size, device: str, dtype: torch.dtype):
    """A FluxPipeline with the full-size random transformer and small random encoders and VAE.

    The tokenizers and scheduler are the tiny model's; the T5 width is the transformer's
    `joint_attention_dim` and the CLIP width its `pooled_projection_dim`, as in FLUX.1-dev; the
    VAE has FLUX's 16 latent channels and 8x downscaling, with few channels.
    """
    from diffusers import AutoencoderKL, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lora_space.tiny.model import build_tiny_pipeline

    tiny = build_tiny_pipeline()
    transformer = gpu_train.random_transformer(size.train.transformer, device, dtype)
    torch.manual_seed(1)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tiny.tokenizer), hidden_size=size.clip_hidden, intermediate_size=64, projection_dim=size.clip_hidden,
        num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=77, bos_token_id=tiny.tokenizer.bos_token_id,
        eos_token_id=tiny.tokenizer.eos_token_id, pad_token_id=tiny.tokenizer.pad_token_id,
    ))  # fmt: skip
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(tiny.tokenizer_2), d_model=size.train.transformer["joint_attention_dim"], d_kv=16, d_ff=64, num_layers=1,
        num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False, decoder_start_token_id=0,
    ))  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 16, 16), layers_per_block=1, latent_channels=16, norm_num_groups=8,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611,
    )  # fmt: skip
    pipe = FluxPipeline(
        scheduler=tiny.scheduler, vae=vae, text_encoder=clip, tokenizer=tiny.tokenizer, text_encoder_2=t5,
        tokenizer_2=tiny.tokenizer_2, transformer=transformer,
    )  # fmt: skip
    for module in (clip, t5, vae):
        module.to(device=device, dtype=dtype).eval()
    return pipe


def request_for(size: Size, loras: tuple[LoraSpec, ...], seed: int = 1) -> GenerationRequest:
    options = Options(seed=seed, steps=size.steps, width=size.image, height=size.image)
    return GenerationRequest(prompt="a lighthouse at dusk", options=options, loras=loras)


def timed(engine: Engine, request: GenerationRequest, synchronize: Callable[[], None]):
    synchronize()
    start = time.perf_counter()
    result = engine.generate(request)
    synchronize()
    return time.perf_counter() - start, result


def measure_generation(engine: Engine, loras: list[LoraSpec], size: Size, synchronize) -> dict:
    """1. Base, 1 and 3 LoRAs unfused, 3 fused, a strength change: median seconds and ratio to the base."""
    one, three = (loras[0],), tuple(loras[:3])
    engine.fuse_after = 10**9  # unfused while the plain variants take turns
    timed(engine, request_for(size, ()), synchronize)  # warm-up: kernels chosen
    for mix in (one, three):
        timed(engine, request_for(size, mix), synchronize)  # loads the LoRAs
    times: dict[str, list[float]] = {"base": [], "1 LoRA unfused": [], "3 LoRAs unfused": []}
    for _ in range(size.repeats):
        for name, mix in (("base", ()), ("1 LoRA unfused", one), ("3 LoRAs unfused", three)):
            times[name].append(timed(engine, request_for(size, mix), synchronize)[0])
    # Fused through the engine: the same mix asked for again is fused into the weights.
    engine.fuse_after = 2
    timed(engine, request_for(size, three), synchronize)
    times["3 LoRAs fused"] = []
    for _ in range(size.repeats):
        seconds, result = timed(engine, request_for(size, three), synchronize)
        assert result.fused, "the engine did not fuse a repeated mix"
        times["3 LoRAs fused"].append(seconds)
    # A strength change: unfuse (originals copied back), new scales, an unfused run.
    times["strength change"], adapter_steps = [], []
    for index in range(size.repeats):
        changed = tuple(LoraSpec(spec.key, spec.file, spec.name, 0.3 + 0.2 * index + 0.1 * part) for part, spec in enumerate(three))
        seconds, result = timed(engine, request_for(size, changed), synchronize)
        times["strength change"].append(seconds)
        adapter_steps.append(result.timings["load_loras"] + result.timings["set_adapters"])
    base = statistics.median(times["base"])
    figures = {name: {"seconds": statistics.median(values), "ratio_to_base": statistics.median(values) / base} for name, values in times.items()}
    figures["strength change"]["adapter_step_seconds"] = statistics.median(adapter_steps)
    return figures


def measure_compiled(compiled: Engine, eager: Engine, loras: list[LoraSpec], size: Size, synchronize) -> dict:
    """2. A different mix on every request: compiled (hot-swapped slots) against eager, in turns; recompiles counted."""
    mixes = different_mixes(loras, 2 * size.repeats + 1)
    first, result = timed(compiled, request_for(size, mixes[0]), synchronize)  # compiles the blocks
    assert result.compiled, result.warnings
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    times: dict[str, list[float]] = {"compiled": [], "eager": [], "compiled base": [], "eager base": []}
    runs = [(mix, name, engine) for mix in mixes[1:] for name, engine in (("compiled", compiled), ("eager", eager))]
    runs += [((), "compiled base", compiled), ((), "eager base", eager)]  # the slots at strength 0
    for mix, name, engine in runs:
        seconds, result = timed(engine, request_for(size, mix), synchronize)
        assert result.compiled == (engine is compiled), result.warnings
        times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    options = compiled._compiled.options
    return {
        "first_request_seconds": first,
        "compiled_seconds": median["compiled"],
        "eager_seconds": median["eager"],
        "speedup": median["eager"] / median["compiled"],
        "goal_speedup": 2.3,
        "compiled_base_seconds": median["compiled base"],
        "eager_base_seconds": median["eager base"],
        "graphs_compiled_after_first_request": torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs,
        "slots": options.slots, "slot_rank": options.rank, "backend": options.backend, "requests": len(mixes) - 1,
    }  # fmt: skip


def measure_preemption(engine: Engine, folder: Path, size: Size, synchronize, *, device: str) -> dict:
    """3. The cost of one preemption of a training chunk by a generation, with today's API.

    Today a generation gets the pipeline only between chunks (`Engine.lend`): the chunk ends and
    saves the full state, the pipeline goes back to the engine, the generation runs, and the next
    chunk borrows it again, attaches its adapter and loads the state. So the cost is two chunks of
    k steps against one chunk of 2k steps of another job of the same dataset (after a warm-up job),
    less the generation in between. The generation itself is timed too.

    When the preempting lock lands (branch gpu-share: waiting generations stop a chunk at a step
    boundary), replace the first `run_chunk(max_steps=k)` by a chunk with no step limit that a
    generation started from another thread preempts, and add the time from that generation's
    request to its first step (the wait); the split-vs-whole arithmetic stays.
    """
    from lora_space.train.checkpoint import JobFiles
    from lora_space.train.prepare import prepare_job
    from lora_space.train.trainer import run_chunk

    config = {
        "resolution": 8 * size.train.latent_side, "network_dim": 16, "network_alpha": 16, "max_train_steps": 1000,
        "validation_split": 0.0, "sample_every": 0, "checkpoint_every": 0, "optimizer_type": "AdamW",
        "mixed_precision": "bf16" if device == "cuda" else "no", "lr_scheduler": "constant", "trigger_word": "flatshape_style",
    }  # fmt: skip

    def job(name: str) -> JobFiles:
        files = JobFiles(folder / name)
        files.root.mkdir(parents=True)
        prepare_job(files, DATASET, config, is_tiny=False)
        return files

    def chunk(files: JobFiles, steps: int) -> float:
        synchronize()
        start = time.perf_counter()
        with engine.lend() as pipe:
            result = run_chunk(pipe, files.root, adapter_name=f"train_{files.root.name}", max_steps=steps)
        synchronize()
        assert result.step > 0 and not result.finished
        return time.perf_counter() - start

    k = size.chunk_steps
    warm, whole, split = job("warm"), job("whole"), job("split")
    chunk(warm, k)  # warm-up: the latent cache's code path, kernels, allocator
    chunk(warm, k)
    whole_seconds = chunk(whole, 2 * k)
    first = chunk(split, k)
    generation, _ = timed(engine, request_for(size, ()), synchronize)
    second = chunk(split, k)
    steps_seconds = (whole_seconds - first) / k  # about one chunk's steps: the whole ran k more steps than `first`
    return {
        "chunk_steps": k,
        "whole_chunk_seconds": whole_seconds,
        "split_chunks_seconds": first + second,
        "generation_seconds": generation,
        "preemption_cost_seconds": first + second - whole_seconds,
        "seconds_per_step_estimate": steps_seconds,
        "api": "lend + run_chunk(max_steps) (no preempting lock on this branch)",
    }


def measure_training(size: Size, device: str, peak_tflops: float, presets: list[str], folder: Path, over_budget) -> dict:
    """4. gpu_train's presets (its `run`, unchanged): s/step, peak memory, 1000 steps, share of the bf16 rate."""
    figures = {}
    for preset in presets:  # each on its own: a failed preset is recorded and the next one runs
        if over_budget(75 if preset != "bf16" else 30):  # a quantised preset saves and loads the model first
            figures[preset] = {"skipped": "time budget"}
            continue
        try:
            figures[preset] = gpu_train.run(preset, size.train_steps, peak_tflops, scale=size.train, device=device, saved=folder)
        except Exception as error:
            figures[preset] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
            print(figures[preset]["traceback"], file=sys.stderr)
            if device == "cuda":
                torch.cuda.empty_cache()
    bf16 = figures.get("bf16", {}).get("seconds_per_step")
    for values in figures.values():
        if bf16 and "seconds_per_step" in values:
            values["rate_share_of_bf16"] = bf16 / values["seconds_per_step"]
    return figures


def table(results: dict) -> list[tuple[str, str, str, str]]:
    """(section, measurement, value, ratio) rows for the printed table."""
    rows = []
    sections = results["sections"]
    for name, values in sections.items():
        if "error" in values or "skipped" in values:
            rows.append((name, "not measured", values.get("error") or "skipped: " + values["skipped"], ""))
    for name, values in sections.get("generation", {}).items():
        if isinstance(values, dict):
            extra = f" (adapter step {values['adapter_step_seconds'] * 1000:.0f} ms)" if "adapter_step_seconds" in values else ""
            rows.append(("generation", name + extra, f"{values['seconds']:.3f} s", f"{values['ratio_to_base']:.3f}x base"))
    compiled = sections.get("compiled", {})
    if "speedup" in compiled:
        rows += [
            ("compiled", "first request (compiles)", f"{compiled['first_request_seconds']:.1f} s", ""),
            ("compiled", "a different mix each request", f"{compiled['compiled_seconds']:.3f} s",
             f"{compiled['speedup']:.2f}x eager ({compiled['eager_seconds']:.3f} s; goal {compiled['goal_speedup']}x)"),
            ("compiled", "base, slots at 0", f"{compiled['compiled_base_seconds']:.3f} s", f"eager base {compiled['eager_base_seconds']:.3f} s"),
            ("compiled", "graphs compiled after the first", str(compiled["graphs_compiled_after_first_request"]), "goal 0"),
        ]  # fmt: skip
    preemption = sections.get("preemption", {})
    if "preemption_cost_seconds" in preemption:
        rows += [
            ("preemption", f"one preemption ({preemption['chunk_steps']}-step chunks)", f"{preemption['preemption_cost_seconds']:.2f} s",
             f"{preemption['preemption_cost_seconds'] / preemption['seconds_per_step_estimate']:.1f} steps"),
            ("preemption", "the generation between", f"{preemption['generation_seconds']:.3f} s", ""),
        ]  # fmt: skip
    training = sections.get("training", {})
    for preset, values in training.items() if "error" not in training and "skipped" not in training else ():
        if "skipped" in values or "error" in values:
            rows.append(("training", preset, values.get("error") or "skipped: " + values["skipped"], ""))
            continue
        peak = f"{values['peak_gb']:.1f} GB peak" if values["peak_gb"] is not None else "peak n/a on a CPU"
        rows.append(("training", f"{preset} ({peak}, {values['minutes_per_1000_steps']:.1f} min/1000 steps)",
                     f"{values['seconds_per_step']:.3f} s/step",
                     f"{values.get('rate_share_of_bf16', 0):.2f} of bf16 rate, {values['share_of_peak']:.1%} of peak"))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same code at tiny sizes on the CPU")
    parser.add_argument("--out", help="the JSON file (default: benchmarks/results/gpu_check.json; dry run: a temporary file)")
    parser.add_argument("--budget-seconds", type=float, default=450.0, help="skip sections that would start after this")
    parser.add_argument("--presets", default="bf16,low-memory,fp8", help="training presets, in order")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the card's dense bf16 rate (H100/H200 SXM: 989)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cuda = not args.dry_run
    if cuda and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA GPU; run it with --dry-run on a CPU.")
    size, device, dtype = (FULL, "cuda", torch.bfloat16) if cuda else (DRY, "cpu", torch.float32)
    out = Path(args.out) if args.out else (REPO / "benchmarks" / "results" / "gpu_check.json" if cuda else Path(tempfile.mkdtemp()) / "gpu_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    def over_budget(needed: float = 0.0) -> bool:
        return time.perf_counter() - started + needed > args.budget_seconds

    import diffusers
    import peft

    results: dict = {
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()}), dry run",
        "dry_run": args.dry_run, "image": size.image, "steps": size.steps, "lora_rank": size.lora_rank,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__, "python": platform.python_version()},
        "sections": {},
    }  # fmt: skip

    def save() -> None:
        results["seconds"] = time.perf_counter() - started
        write_atomically(out, lambda file: file.write(json.dumps(results, indent=2).encode()))

    def section(name: str, measure: Callable[[], dict]) -> None:
        if over_budget():
            results["sections"][name] = {"skipped": "time budget"}
        else:
            print(f"[{time.perf_counter() - started:6.1f} s] {name} ...", flush=True)
            try:
                results["sections"][name] = measure()
            except Exception as error:  # recorded, and the other sections still run
                results["sections"][name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
                print(results["sections"][name]["traceback"], file=sys.stderr)
        save()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        # 1-3 on two pipelines with the same random weights: one eager engine, one compiled.
        pipe = build_pipeline(size, device, dtype)
        eager = Engine(pipe, cache_size=8, fuse_after=10**9)
        loras = [write_lora(scratch / f"lora_{index}.safetensors", pipe.transformer, index, rank=size.lora_rank) for index in range(8)]
        section("generation", lambda: measure_generation(eager, loras, size, synchronize))
        eager.fuse_after = 10**9
        compile_options = CompileOptions(slots=3, rank=size.slot_rank, backend="inductor" if cuda else "aot_eager")
        compiled = Engine(build_pipeline(size, device, dtype), cache_size=8, compile=compile_options)
        section("compiled", lambda: measure_compiled(compiled, eager, loras, size, synchronize))
        compiled = None  # its pipeline's memory goes back before training
        section("preemption", lambda: measure_preemption(eager, scratch / "jobs", size, synchronize, device=device))
        eager = pipe = None
        if cuda:
            torch.cuda.empty_cache()
        presets = [preset.strip() for preset in args.presets.split(",") if preset.strip()]
        (scratch / "model").mkdir()
        section("training", lambda: measure_training(size, device, args.peak_tflops, presets, scratch / "model", over_budget))

    print(f"\n{results['device']}: FLUX.1-dev-sized, random weights, {size.image}x{size.image}, {size.steps} steps; "
          f"{results['seconds']:.0f} s; {out}")  # fmt: skip
    rows = [("section", "measurement", "value", "ratio")] + table(results)
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    sections = results["sections"]
    failed = [name for name, values in sections.items() if "error" in values]
    failed += [preset for preset, values in sections.get("training", {}).items() if isinstance(values, dict) and "error" in values]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
