"""Make a LoRA smaller: a lower rank by SVD, a smaller dtype, no negligible modules.

Resizing keeps, per module, the best rank-k approximation of the update
delta W = (alpha / rank) * B @ A. The SVD is taken in rank space, never on the
(out, in) matrix: with B = Qb Rb and A^T = Qa Ra (Qb, Qa with orthonormal columns),

    delta W = Qb (scale * Rb Ra^T) Qa^T = (Qb U) diag(S) (Vh Qa^T),

where U diag(S) Vh is the SVD of the small rank x rank matrix. Keeping the k largest
singular values keeps the share sum(S[:k]^2) / sum(S^2) of the update's energy. The new
alpha is alpha * k / rank, so the scale alpha / rank (and a user's strengths) stay the same.

Q and R come from the rank x rank Gram matrix (M^T M = R^T R by an eigendecomposition, in
float64) rather than a QR of the tall matrix: only matrix products touch the large side.
The rank x rank decompositions go through NumPy's LAPACK: torch's threaded one can stall for
tens of milliseconds per tiny matrix on a busy CPU, which made a FLUX.1-dev LoRA take minutes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..errors import LoraFileError
from .formats import LoraModule, LoraSet
from .safefile import SafetensorsHeader

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype | None] = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ModuleResult:
    """One module after optimising: its rank before and after, and the energy it kept."""

    name: str
    rank_before: int
    rank_after: int
    energy_kept: float
    norm: float


@dataclass
class OptimizeReport:
    """What `optimize` did: per module, overall energy kept, what was pruned, sizes in bytes."""

    rank: int | None
    energy: float | None
    dtype: str
    prune_below: float
    energy_kept: float
    modules: list[ModuleResult]
    pruned: list[str]
    bytes_before: int
    bytes_after: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def step(self) -> dict:
        """The short record written into the new file's `lora_space.history` metadata."""
        return {
            "op": "optimize",
            "rank": self.rank,
            "energy": self.energy,
            "dtype": self.dtype,
            "prune_below": self.prune_below,
            "energy_kept": round(self.energy_kept, 6),
            "pruned_modules": len(self.pruned),
        }


def svd_work(header: SafetensorsHeader) -> float:
    """The work of `factorise` on every module of a LoRA, read from its header alone: billions of operations.

    A module's A is (rank, in) and its B (out, rank); its factorisation costs about
    (in + out) x rank^2 + rank^3 (Gram matrices, products on the large side, rank x rank
    decompositions). Per tensor of shape (m, n) that is max(m, n) x r^2 + r^3 / 2 with
    r = min(m, n), so no pairing of A with B (which differs by layout) is needed.
    """
    total = 0.0
    for info in header.tensors.values():
        if len(info.shape) < 2:
            continue
        rows, columns = info.shape[0], math.prod(info.shape[1:])
        rank, wide = min(rows, columns), max(rows, columns)
        total += wide * rank**2 + rank**3 / 2
    return total / 1e9


def orthonormal_basis(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(Q, R)` with M = Q @ R, Q (n, p) with orthonormal columns, p <= r; from M's Gram matrix.

    M^T M = V diag(lam) V^T gives R = diag(sqrt(lam)) V^T and Q = M V diag(1 / sqrt(lam));
    directions with (numerically) zero lam are dropped, so a rank-deficient M is fine.
    """
    values, vectors = (torch.from_numpy(array) for array in np.linalg.eigh((M.T @ M).numpy()))
    keep = values > values.max().clamp(min=0) * 1e-12
    root, vectors = values[keep].sqrt(), vectors[:, keep]
    return M @ (vectors / root), root[:, None] * vectors.T


def factorise(module: LoraModule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(left, S, right)` with delta W = left @ diag(S) @ right, S sorted large to small (float64).

    S is empty when the update is zero.
    """
    Qb, Rb = orthonormal_basis(module.B.double())  # (out, p), (p, r)
    Qa, Ra = orthonormal_basis(module.A.double().T)  # (in, q), (q, r)
    U, S, Vh = (torch.from_numpy(array) for array in np.linalg.svd((module.scale * (Rb @ Ra.T)).numpy(), full_matrices=False))
    return Qb @ U, S, Vh @ Qa.T


def pick_rank(S: torch.Tensor, *, rank: int | None, energy: float | None) -> int:
    """The smallest k that keeps `energy` (if given), at most `rank` (if given), at least 1."""
    k = len(S)
    if energy is not None:
        cumulative = torch.cumsum(S.double() ** 2, 0) / max(float((S.double() ** 2).sum()), 1e-300)
        k = int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-9, dtype=torch.float64))) + 1
    if rank is not None:
        k = min(k, rank)
    return max(1, min(k, len(S)))


def truncate(module: LoraModule, left: torch.Tensor, S: torch.Tensor, right: torch.Tensor, k: int) -> LoraModule:
    """The rank-k module with the same scale: B' A' = (delta W)_k / scale, split evenly by sqrt(S)."""
    scale = module.scale
    root = torch.sqrt(S[:k] / (abs(scale) or 1.0))
    B = left[:, :k] * root * (1.0 if scale >= 0 else -1.0)
    A = root[:, None] * right[:k]  # float64 until here
    alpha = None if module.alpha is None else module.alpha * k / module.rank
    return LoraModule(A.to(module.A.dtype).contiguous(), B.to(module.B.dtype).contiguous(), alpha)


def _bytes(modules: dict[str, LoraModule]) -> int:
    return sum(m.A.numel() * m.A.element_size() + m.B.numel() * m.B.element_size() for m in modules.values())


def optimize(
    lora: LoraSet,
    *,
    rank: int | None = None,
    energy: float | None = None,
    dtype: str = "keep",
    prune_below: float = 0.0,
) -> tuple[LoraSet, OptimizeReport]:
    """Resize (by `rank` and/or target `energy`), change dtype and prune a LoRA.

    Args:
        lora: the LoRA as read (`formats.read_lora`).
        rank: the most rank a module keeps (None: no cap).
        energy: keep the smallest rank holding this share (0..1] of each module's energy.
        dtype: `keep`, `fp32`, `bf16` or `fp16`.
        prune_below: drop modules whose update norm is below this share of the largest one.

    Returns:
        the new LoRA (same module names) and the report.

    Raises:
        LoraFileError: an argument out of range, or values that overflow the new dtype.
    """
    # 1. Check the arguments.
    if rank is not None and rank < 1:
        raise LoraFileError(f"rank={rank} is not allowed; use a rank of 1 or more.")
    if energy is not None and not 0 < energy <= 1:
        raise LoraFileError(f"energy={energy} is not allowed; use a share between 0 (excluded) and 1, e.g. 0.9.")
    if dtype not in DTYPES:
        raise LoraFileError(f"dtype={dtype!r} is not allowed; use one of {', '.join(DTYPES)}.")
    if not 0 <= prune_below < 1:
        raise LoraFileError(f"prune_below={prune_below} is not allowed; use a share from 0 to 1, e.g. 0.01.")
    # 2. Resize each module by SVD in rank space (or only measure its norm).
    resize = rank is not None or energy is not None
    results: dict[str, ModuleResult] = {}
    modules: dict[str, LoraModule] = {}
    kept_energy = total_energy = 0.0
    for name, module in lora.modules.items():
        left, S, right = factorise(module) if resize else (None, None, None)
        if S is not None and len(S):
            k = pick_rank(S, rank=rank, energy=energy)
            total, kept = float((S**2).sum()), float((S[:k] ** 2).sum())
            modules[name] = truncate(module, left, S, right, k)
        else:  # no resize asked, or a zero update: keep the module as it is
            total = kept = module.inner(module)
            modules[name], k = module, module.rank
        kept_energy, total_energy = kept_energy + kept, total_energy + total
        results[name] = ModuleResult(name, module.rank, k, kept / total if total > 0 else 1.0, total**0.5)
    # 3. Prune modules whose update is negligible next to the largest one.
    largest = max((result.norm for result in results.values()), default=0.0)
    pruned = [name for name, result in results.items() if prune_below > 0 and result.norm < prune_below * largest]
    for name in pruned:
        del modules[name]
        result = results[name]
        kept_energy -= result.energy_kept * result.norm**2
        result.rank_after, result.energy_kept = 0, 0.0
    # 4. Change the dtype; refuse values the new dtype cannot hold.
    target = DTYPES[dtype]
    if target is not None:
        for name, module in modules.items():
            A, B = module.A.to(target), module.B.to(target)
            if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
                raise LoraFileError(f"{name} has values too large for {dtype}; use bf16 or fp32 instead.")
            modules[name] = LoraModule(A, B, module.alpha)
    report = OptimizeReport(
        rank=rank,
        energy=energy,
        dtype=dtype,
        prune_below=prune_below,
        energy_kept=kept_energy / total_energy if total_energy > 0 else 1.0,
        modules=[results[name] for name in lora.modules],
        pruned=pruned,
        bytes_before=_bytes(lora.modules),
        bytes_after=_bytes(modules),
        warnings=list(lora.warnings),
    )
    logger.info("optimized %d modules: energy kept %.4f, %d pruned", len(results), report.energy_kept, len(pruned))
    return LoraSet(modules=modules, format=lora.format, metadata=dict(lora.metadata), warnings=list(lora.warnings)), report
