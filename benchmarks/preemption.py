"""What one preemption of a training chunk costs, part by part, with the trainer's own code.

Used by `bench_preemption.py` (on this CPU, tiny and FLUX-shaped models) and by `gpu_train.py`
(on a GPU, the FLUX.1-dev-sized transformer), so the code the GPU figure runs is run here too.

When a generation waits, the chunk ends at its next step: it saves the full state, as at any
chunk end, and switches its adapter off; the generation runs; the next chunk switches the adapter
on again (the session stayed parked in memory: `warm`). A fresh process (a new ZeroGPU worker, a
restart) instead attaches the adapter again and reads the state back (`cold`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers.optimization import get_scheduler
from peft.tuners.tuners_utils import BaseTunerLayer

from lora_space.train.checkpoint import JobFiles, load_state, save_state
from lora_space.train.config import TrainConfig
from lora_space.train.trainer import attach_adapter, make_optimizer, reactivate_adapter, set_enabled


def preemption_parts(
    transformer, config: TrainConfig, adapter_name: str, parameters: dict, optimizer, scheduler, synchronize: Callable[[], None]
) -> dict[str, float]:
    """Seconds of each part of one preemption on `transformer`, whose adapter `adapter_name` is training.

    Returns:
        `save` (the full state written and synced to disk), `warm` (adapter off for the generation,
        then on and trainable again), `cold` (the adapter deleted, attached again, the state read
        back into it and a new optimizer and schedule).
    """
    with tempfile.TemporaryDirectory() as folder:
        files = JobFiles(Path(folder))
        lora = {name: value.detach() for name, value in parameters.items()}
        rng = {"train0": torch.Generator().manual_seed(0).get_state()}
        synchronize()
        started = time.perf_counter()
        save_state(files, 1, lora, optimizer.state_dict(), scheduler.state_dict(), rng, {})
        synchronize()
        save = time.perf_counter() - started
        layers = [module for module in transformer.modules() if isinstance(module, BaseTunerLayer) and adapter_name in module.lora_A]
        started = time.perf_counter()
        set_enabled(layers, False)
        reactivate_adapter(transformer, layers, adapter_name, parameters)
        synchronize()
        warm = time.perf_counter() - started
        started = time.perf_counter()
        transformer.delete_adapters(adapter_name)
        fresh = attach_adapter(transformer, config, adapter_name, config.seed)
        state = load_state(files)
        with torch.no_grad():
            for name, parameter in fresh.items():
                parameter.copy_(state["lora"][name])
        device = next(iter(fresh.values())).device
        new_optimizer, _ = make_optimizer(list(fresh.values()), config, device)
        new_optimizer.load_state_dict(state["optimizer"])
        new_scheduler = get_scheduler(config.lr_scheduler, optimizer=new_optimizer, num_warmup_steps=0, num_training_steps=config.max_train_steps)
        new_scheduler.load_state_dict(state["scheduler"])
        synchronize()
        cold = time.perf_counter() - started
    return {"save": save, "warm": warm, "cold": cold}


# FLUX.1-dev's T5-XXL encoder, CLIP-L text encoder and VAE, in parameters: what `trainer.Devices` moves off
# the GPU for the training loop (cached latents) and back for a generation.
ENCODER_PARAMETERS = 4_762_310_656 + 123_060_480 + 83_653_863


def encoder_moves(device, synchronize: Callable[[], None], parameters: int = ENCODER_PARAMETERS) -> float:
    """Seconds to move that many bf16 weights off the GPU and back (pageable memory, as `module.to` does):
    what a preemption adds on CUDA, where a chunk parks the encoders while it trains."""
    weights = torch.empty(parameters, dtype=torch.bfloat16, device=device)
    synchronize()
    started = time.perf_counter()
    away = weights.to("cpu")
    del weights
    back = away.to(device)
    synchronize()
    seconds = time.perf_counter() - started
    del away, back
    return seconds
