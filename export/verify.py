"""The one comparison of the toolchain: run two artifacts on the same inputs and measure, per output,
relative L2 error, max abs error, cosine similarity and top-1 agreement. Export verification, post-build
engine parity, calibration sensitivity and ``psvit-export compare`` all call :func:`compare` (sensitivity:
:func:`compare_outputs`, one FP32 run against many candidates); both sides are
:class:`psvit.runtime.Runtime` objects, so any artifact the runtime loads can be compared with any other."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import PSViTError
from .errors import VerificationError

if TYPE_CHECKING:
    from ..runtime import Runtime

VERIFY_CHUNK = 32  # images per PyTorch forward in a verification, to bound memory
FP32_MAX_REL_L2 = 1e-5  # ONNX FP32 vs PyTorch
FP16_MAX_REL_L2 = 2e-3  # ONNX FP16 vs PyTorch FP32


@dataclass(frozen=True)
class OutputMetrics:
    """How far ``candidate`` is from ``reference`` on one output."""

    name: str
    shape: tuple[int, ...]
    rel_l2: float  # ||c - r|| / ||r||
    max_abs: float
    cosine: float
    top1_agreement: float | None  # share of rows with the same argmax; None if not (N, classes)


@dataclass
class Comparison:
    reference: str
    candidate: str
    samples: int
    outputs: list[OutputMetrics]
    max_rel_l2: float | None = None  # tolerance applied, if any
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def worst_rel_l2(self) -> float:
        return max(o.rel_l2 for o in self.outputs)

    @property
    def top1_agreement(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    @property
    def passed(self) -> bool | None:
        """None when no tolerance was applied."""
        if self.max_rel_l2 is None:
            return None
        return bool(np.isfinite(self.worst_rel_l2) and self.worst_rel_l2 <= self.max_rel_l2)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["worst_rel_l2"] = self.worst_rel_l2
        d["top1_agreement"] = self.top1_agreement
        d["passed"] = self.passed
        return d


def output_metrics(name: str, reference: np.ndarray, candidate: np.ndarray) -> OutputMetrics:
    """Metrics of one output; computed in float64."""
    if reference.shape != candidate.shape:
        raise PSViTError(f"output {name!r}: shapes differ, {reference.shape} vs {candidate.shape}")
    r = reference.astype(np.float64).ravel()
    c = candidate.astype(np.float64).ravel()
    delta = c - r
    diff = np.linalg.norm(delta)
    norm_r, norm_c = np.linalg.norm(r), np.linalg.norm(c)
    rel = float(diff / norm_r) if norm_r > 0 else float(diff)
    cos = float(r @ c / (norm_r * norm_c)) if norm_r > 0 and norm_c > 0 else float(norm_r == norm_c)
    top1 = None
    if reference.ndim == 2 and reference.shape[1] > 1:
        top1 = float(np.mean(reference.argmax(1) == candidate.argmax(1)))
    max_abs = float(np.max(np.abs(delta))) if r.size else 0.0
    return OutputMetrics(name, tuple(reference.shape), rel, max_abs, cos, top1)


def _pair_outputs(a: list[str], b: list[str]) -> list[tuple[str, str]]:
    common = [n for n in a if n in b]
    if common:
        return [(n, n) for n in common]
    if len(a) == len(b) == 1:
        return [(a[0], b[0])]
    raise PSViTError(f"the artifacts share no output names ({a} vs {b}); nothing to compare")


def outputs_of(runtime: "Runtime", inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of ``runtime`` for ``inputs``, by name."""
    out = runtime.infer(inputs)
    return out if isinstance(out, dict) else {runtime.output_names[0]: out}


def compare(
    reference: "Runtime",
    candidate: "Runtime",
    inputs: np.ndarray,
    *,
    max_rel_l2: float | None = None,
) -> Comparison:
    """Run both artifacts on ``inputs`` (N, C, H, W) and compare their outputs.

    Args:
        max_rel_l2: the tolerance recorded in the result (``passed``); nothing is raised here — see
            :func:`require_close`.
    """
    if tuple(reference.input_shape) != tuple(candidate.input_shape):
        raise PSViTError(
            f"the artifacts take different inputs: {reference.name} {reference.input_shape}, "
            f"{candidate.name} {candidate.input_shape}"
        )
    return compare_outputs(reference.name, outputs_of(reference, inputs), candidate.name,
                           outputs_of(candidate, inputs), len(inputs), max_rel_l2=max_rel_l2)


def compare_outputs(reference: str, ref_out: dict[str, np.ndarray], candidate: str,
                    cand_out: dict[str, np.ndarray], samples: int, *, max_rel_l2: float | None = None
                    ) -> Comparison:
    """:func:`compare` of outputs already computed (:func:`outputs_of`), e.g. one reference against many
    candidates."""
    outputs = [
        output_metrics(nb if na == nb else f"{na} / {nb}", ref_out[na], cand_out[nb])
        for na, nb in _pair_outputs(list(ref_out), list(cand_out))
    ]
    return Comparison(reference, candidate, samples, outputs, max_rel_l2)


def require_close(comparison: Comparison, what: str, hint: str = "") -> None:
    """Raise :class:`VerificationError` when ``comparison`` failed its tolerance; ``hint`` says what next."""
    if comparison.passed is False:
        top1 = comparison.top1_agreement
        agree = f", top-1 agreement {top1:.1%}" if top1 is not None else ""
        raise VerificationError(
            f"{what}: relative L2 error {comparison.worst_rel_l2:.3g} exceeds {comparison.max_rel_l2:g}{agree} "
            f"on {comparison.samples} samples.{(' ' + hint) if hint else ''}"
        )
