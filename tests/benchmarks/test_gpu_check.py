"""`benchmarks/gpu_check.py --dry-run`: the GPU check's own code, at tiny sizes on the CPU, so that the
one command a lent GPU runs has not rotted between GPU sessions."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # about 22 s: every section of benchmarks/gpu_check.py at tiny sizes
def test_the_dry_run_measures_every_section_and_prints_one_table(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = os.environ | {"OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    sections = results["sections"]
    assert results["dry_run"] is True and set(sections) == {"generation", "compiled", "preemption", "training"}
    generation = sections["generation"]
    assert set(generation) == {"base", "1 LoRA unfused", "3 LoRAs unfused", "3 LoRAs fused", "strength change"}
    assert generation["base"]["ratio_to_base"] == 1.0
    assert all(math.isfinite(values["ratio_to_base"]) and values["seconds"] > 0 for values in generation.values())
    compiled = sections["compiled"]
    assert compiled["graphs_compiled_after_first_request"] == 0  # a new mix on every request, no recompilation
    assert compiled["speedup"] > 0 and compiled["requests"] == 2
    preemption = sections["preemption"]
    assert preemption["whole_chunk_seconds"] > 0 and preemption["generation_seconds"] > 0
    training = sections["training"]
    assert set(training) == {"bf16", "low-memory", "fp8"}
    assert training["bf16"]["rate_share_of_bf16"] == 1.0
    # On a CPU the quantised bases and 8-bit AdamW fall back, and the figures say so.
    assert "nf4 base needs CUDA: unquantised here" in training["low-memory"]["notes"]
    assert "AdamW8bit needs bitsandbytes on a CUDA GPU; this run uses AdamW." in training["fp8"]["notes"]
    # One table, every section in it.
    table = done.stdout[done.stdout.index("section  ") :]
    for name in ("generation", "compiled", "preemption", "training"):
        assert f"\n{name} " in table
    assert "not measured" not in table
