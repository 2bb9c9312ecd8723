"""Which LoRAs of a mix compete: where they change the same modules, and how.

For two LoRAs at strengths s1, s2 on a shared module, the updates are
d1 = s1 (alpha1 / r1) B1 A1 and d2 = s2 (alpha2 / r2) B2 A2. Their cosine
<d1, d2> / (|d1| |d2|) says how they relate: near 1 they push the same way (together they
overshoot), near -1 they undo each other, near 0 they are unrelated. Per block the cosine
is that of the block's updates taken together; `norm_ratio` is |d1| / |d2|.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations

from .formats import LoraSet
from .keymap import block_of

logger = logging.getLogger(__name__)

STRONG_COSINE = 0.3  # |cosine| from which two LoRAs are said to reinforce or fight
WARN_OVERLAP = 0.5  # share of the smaller LoRA's modules from which the Generate tab warns


@dataclass
class ModuleOverlap:
    module: str
    block: str
    lora_a: str
    lora_b: str
    cosine: float
    norm_a: float
    norm_b: float


@dataclass
class BlockRow:
    """Two LoRAs in one block: how many modules they share and how their updates relate."""

    block: str
    lora_a: str
    lora_b: str
    shared_modules: int
    cosine: float
    norm_ratio: float | None


@dataclass
class PairSummary:
    """Two LoRAs overall. `overlap` is the share of the smaller LoRA's modules the other changes too."""

    lora_a: str
    lora_b: str
    shared_modules: int
    overlap: float
    cosine: float
    norm_ratio: float | None
    verdict: str  # independent, reinforce, fight, share layers
    suggestion: str = ""


@dataclass
class ConflictReport:
    loras: list[str]
    pairs: list[PairSummary]
    blocks: list[BlockRow]
    modules: list[ModuleOverlap]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Sums:
    """Running sums for a cosine over several modules: <a, b>, |a|^2, |b|^2."""

    count: int = 0
    inner: float = 0.0
    square_a: float = 0.0
    square_b: float = 0.0

    def add(self, inner: float, norm_a: float, norm_b: float) -> None:
        self.count += 1
        self.inner += inner
        self.square_a += norm_a**2
        self.square_b += norm_b**2

    @property
    def cosine(self) -> float:
        denominator = (self.square_a * self.square_b) ** 0.5
        return self.inner / denominator if denominator > 0 else 0.0

    @property
    def norm_ratio(self) -> float | None:
        """|a| / |b|; None when b changes nothing."""
        return (self.square_a / self.square_b) ** 0.5 if self.square_b > 0 else None


def _verdict(shared: int, cosine: float) -> str:
    if shared == 0:
        return "independent"
    if cosine >= STRONG_COSINE:
        return "reinforce"
    if cosine <= -STRONG_COSINE:
        return "fight"
    return "share layers"


def _suggest(summary: PairSummary, strengths: dict[str, float]) -> str:
    """What to do about a pair that reinforces or fights on shared modules.

    Same direction: lower the LoRA whose update dominates, by 1 / (1 + |cosine|), so that the
    two together push about as far as the stronger one alone. Opposite directions: lowering
    either only leaves less of both, so keep one of them (the weaker one undoes the least).
    """
    if summary.verdict not in ("reinforce", "fight"):
        return ""
    stronger = summary.lora_a if (summary.norm_ratio or 0.0) >= 1 else summary.lora_b
    if summary.verdict == "fight":
        weaker = summary.lora_b if stronger == summary.lora_a else summary.lora_a
        return f"remove one of them (e.g. {weaker}, the weaker here) rather than lowering either"
    lowered = round(strengths[stronger] / (1 + abs(summary.cosine)) / 0.05) * 0.05
    return f"try {stronger} at {lowered:.2f}"


def _warning(summary: PairSummary) -> str:
    how = (
        "in the same direction: together they overshoot"
        if summary.verdict == "reinforce"
        else "in opposite directions: each undoes the other"
    )
    return (
        f"{summary.lora_a} and {summary.lora_b} change the same {summary.shared_modules} layers "
        f"({summary.overlap:.0%} overlap) {how} (cosine {summary.cosine:.2f}); {summary.suggestion}."
    )


def mix_warnings(pairs: list[PairSummary], strengths: dict[str, float]) -> list[str]:
    """Warnings for a mix from pair summaries taken at strength 1 each, with no file read.

    A strength scales its LoRA's updates: the overall cosine only flips sign with
    s1 * s2, and the norm ratio scales by |s1| / |s2|. LoRAs at strength 0 are left out.
    """
    warnings = []
    for pair in pairs:
        s_a, s_b = strengths.get(pair.lora_a, 0.0), strengths.get(pair.lora_b, 0.0)
        if s_a == 0 or s_b == 0:
            continue
        cosine = pair.cosine if s_a * s_b > 0 else -pair.cosine
        ratio = None if pair.norm_ratio is None else pair.norm_ratio * abs(s_a) / abs(s_b)
        scaled = replace(pair, cosine=cosine, norm_ratio=ratio, verdict=_verdict(pair.shared_modules, cosine))
        scaled.suggestion = _suggest(scaled, strengths)
        if scaled.suggestion and scaled.overlap >= WARN_OVERLAP:
            warnings.append(_warning(scaled))
    return warnings


def compare_loras(loras: dict[str, LoraSet], strengths: dict[str, float] | None = None) -> ConflictReport:
    """Compare every pair of LoRAs on the modules they share, per module, per block and overall.

    Args:
        loras: name -> LoRA as read (`formats.read_lora`); two or more.
        strengths: name -> strength in the mix (default 1.0 each); a negative one flips the cosine.

    Returns:
        the report; `warnings` names the pairs that fight or overshoot, with a suggestion.
    """
    strengths = {name: (strengths or {}).get(name, 1.0) for name in loras}
    report = ConflictReport(loras=list(loras), pairs=[], blocks=[], modules=[])
    for name_a, name_b in combinations(loras, 2):
        # 1. Per shared module of the same shape: cosine and norms of the scaled updates.
        a, b = loras[name_a], loras[name_b]
        s_a, s_b = strengths[name_a], strengths[name_b]
        total, per_block = _Sums(), {}
        for module in sorted(set(a.modules) & set(b.modules)):
            m_a, m_b = a.modules[module], b.modules[module]
            if (m_a.out_features, m_a.in_features) != (m_b.out_features, m_b.in_features):
                continue
            inner = s_a * s_b * m_a.inner(m_b)
            norm_a, norm_b = abs(s_a) * m_a.norm(), abs(s_b) * m_b.norm()
            denominator = norm_a * norm_b
            cosine = inner / denominator if denominator > 0 else 0.0
            block = block_of(module)
            report.modules.append(ModuleOverlap(module, block, name_a, name_b, cosine, norm_a, norm_b))
            per_block.setdefault(block, _Sums()).add(inner, norm_a, norm_b)
            total.add(inner, norm_a, norm_b)
        # 2. Per block, then overall, with a verdict and a suggestion.
        for block, sums in per_block.items():
            report.blocks.append(BlockRow(block, name_a, name_b, sums.count, sums.cosine, sums.norm_ratio))
        smaller = min(len(a.modules), len(b.modules))
        summary = PairSummary(
            lora_a=name_a,
            lora_b=name_b,
            shared_modules=total.count,
            overlap=total.count / smaller if smaller else 0.0,
            cosine=total.cosine,
            norm_ratio=total.norm_ratio,
            verdict=_verdict(total.count, total.cosine),
        )
        summary.suggestion = _suggest(summary, strengths)
        report.pairs.append(summary)
        if summary.suggestion and summary.overlap >= WARN_OVERLAP:
            report.warnings.append(_warning(summary))
    logger.info("compared %d LoRAs: %d warnings", len(loras), len(report.warnings))
    return report
