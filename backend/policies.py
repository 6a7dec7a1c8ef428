"""Selection policies: how useful each image is to label. Higher usefulness = served first.

Names (the POLICY setting):
- ale-{entropy,lc}-{sum,max,mean,min}: the ALE paper's A(S) x sqrt(N)
- {entropy,lc}-{sum,max,mean,min}: plain aggregation of box uncertainty
- min-confidence (seed 000's default), mean-confidence, weighted-confidence
  (box-area weighted mean): least confident images first
- random: a seeded shuffle, the baseline every policy must beat
- any of these + "+cost" (e.g. ale-entropy-sum+cost): usefulness per unit of
  expected annotation cost, for teams that pay per box (`CostAwarePolicy`)
- a custom policy: `package.module:function` or an entry point in the
  `label_studio_ale.policies` group. The function takes one image's
  `Detections` and returns its *confidence* (seed 000's `calculate_confidence`
  convention): lower confidence = more useful.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable, Sequence

import numpy as np

from . import scoring
from .detections import Detections
from .settings import DEFAULT_COST_PER_IMAGE

POLICY_ENTRY_POINT_GROUP = "label_studio_ale.policies"
#: The ALE paper's most consistent winner (50 and 100 images, new classes).
DEFAULT_POLICY = "ale-entropy-sum"
METRICS = ("entropy", "lc")
CONFIDENCE_KINDS = ("min", "mean", "weighted")
#: A policy name ending in this divides usefulness by the expected annotation cost.
COST_SUFFIX = "+cost"


@dataclass(frozen=True)
class UncertaintyPolicy:
    """Per-box uncertainty (entropy or least confidence) aggregated per image, optionally x sqrt(N)."""

    metric: str
    aggregation: str
    ale: bool
    needs_class_vectors = True

    @property
    def name(self) -> str:
        return f"{'ale-' if self.ale else ''}{self.metric}-{self.aggregation}"

    def usefulness(self, detections: Sequence[Detections]) -> np.ndarray:
        counts = np.array([len(d) for d in detections], dtype=np.int64)
        if counts.sum() == 0:
            return np.zeros(len(detections))
        probs = np.concatenate([d.class_probs for d in detections if len(d)])
        background = np.concatenate([d.background for d in detections if len(d)])
        return self.usefulness_arrays(probs, counts, background)

    def usefulness_arrays(self, class_probs: np.ndarray, counts: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
        """(total, C) box scores of all images concatenated, (m,) boxes per image, optional (total,) background -> (m,)."""
        distribution = scoring.box_distribution(class_probs, background)
        if self.metric == "entropy":
            values = scoring.entropy(distribution)
        else:
            values = scoring.least_confidence(distribution)
        combine = scoring.ale_segments if self.ale else scoring.aggregate_segments
        return combine(values, counts, self.aggregation)


@dataclass(frozen=True)
class ConfidencePolicy:
    """Seed 000: image confidence from its box confidences; usefulness = 1 - confidence.

    An image with no boxes has usefulness 0 (see the empty-image quota to serve some).
    """

    kind: str
    needs_class_vectors = False

    @property
    def name(self) -> str:
        return f"{self.kind}-confidence"

    def usefulness(self, detections: Sequence[Detections]) -> np.ndarray:
        out = np.zeros(len(detections))
        for i, d in enumerate(detections):
            if len(d) == 0:
                continue
            scores = d.scores
            if self.kind == "min":
                confidence = scores.min()
            elif self.kind == "mean":
                confidence = scores.mean()
            else:
                areas = (d.xyxy[:, 2] - d.xyxy[:, 0]) * (d.xyxy[:, 3] - d.xyxy[:, 1])
                confidence = np.average(scores, weights=areas) if areas.sum() > 0 else scores.mean()
            out[i] = 1.0 - float(confidence)
        return out


@dataclass(frozen=True)
class RandomPolicy:
    seed: int = 0
    name = "random"
    needs_class_vectors = False

    def usefulness(self, detections: Sequence[Detections]) -> np.ndarray:
        return np.random.default_rng(self.seed).random(len(detections))


@dataclass(frozen=True)
class CustomPolicy:
    """Wraps a user function `confidence(detections) -> float` (lower = label first)."""

    name: str
    confidence: Callable[[Detections], float]
    needs_class_vectors = False

    def usefulness(self, detections: Sequence[Detections]) -> np.ndarray:
        values = np.array([float(self.confidence(d)) for d in detections], dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"policy {self.name} returned a non-finite confidence")
        return -values


@dataclass(frozen=True)
class CostAwarePolicy:
    """Another policy's usefulness per unit of expected annotation cost: predicted boxes + `per_image`.

    Annotators pay per box they draw or check, plus a constant per image
    (`per_image`, in boxes). Non-negative usefulness is divided by the cost;
    a negative one (custom policies: -confidence) is multiplied by it, so a
    costlier image always ranks lower at equal usefulness.
    """

    inner: object
    per_image: float = DEFAULT_COST_PER_IMAGE

    def __post_init__(self):
        if not self.per_image > 0:
            raise ValueError(f"the cost per image must be a positive number of boxes, got {self.per_image}")

    @property
    def name(self) -> str:
        return f"{self.inner.name}{COST_SUFFIX}"

    @property
    def needs_class_vectors(self) -> bool:
        return self.inner.needs_class_vectors

    def usefulness(self, detections: Sequence[Detections]) -> np.ndarray:
        """(m,) images -> (m,) usefulness / (boxes + per_image), or x cost where negative."""
        value = np.asarray(self.inner.usefulness(detections), dtype=np.float64)
        cost = np.array([len(d) for d in detections], dtype=np.float64) + self.per_image
        return np.where(value >= 0, value / cost, value * cost)


def single_object_confidence(detections: Detections) -> float:
    """Seed 000's `calculate_confidence` example: exactly one object expected per image.

    Any other count gets confidence 0 (review first); one object gets its score.
    """
    if len(detections) != 1:
        return 0.0
    return float(detections.scores.mean())


def policy_names() -> list[str]:
    names = [f"{prefix}{m}-{a}" for prefix in ("ale-", "") for m in METRICS for a in scoring.AGGREGATIONS]
    names += [f"{k}-confidence" for k in CONFIDENCE_KINDS] + ["random"]
    return names + sorted(ep.name for ep in entry_points(group=POLICY_ENTRY_POINT_GROUP))


def get_policy(name: str, seed: int = 0, cost_per_image: float = DEFAULT_COST_PER_IMAGE):
    """Resolve a policy by name, dotted path (`pkg.mod:function`) or entry point; "<name>+cost" for its cost-aware form."""
    if not isinstance(name, str) or not name:
        raise ValueError("POLICY is empty: use e.g. ale-entropy-sum")
    if name.endswith(COST_SUFFIX) and len(name) > len(COST_SUFFIX):
        return CostAwarePolicy(get_policy(name[: -len(COST_SUFFIX)], seed), cost_per_image)
    parts = name.split("-")
    if parts[0] == "ale" and len(parts) == 3 and parts[1] in METRICS and parts[2] in scoring.AGGREGATIONS:
        return UncertaintyPolicy(parts[1], parts[2], ale=True)
    if len(parts) == 2 and parts[0] in METRICS and parts[1] in scoring.AGGREGATIONS:
        return UncertaintyPolicy(parts[0], parts[1], ale=False)
    if len(parts) == 2 and parts[1] == "confidence" and parts[0] in CONFIDENCE_KINDS:
        return ConfidencePolicy(parts[0])
    if name == "random":
        return RandomPolicy(seed)
    found = {ep.name: ep for ep in entry_points(group=POLICY_ENTRY_POINT_GROUP)}
    if name in found:
        return CustomPolicy(name, found[name].load())
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            function = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"POLICY={name}: cannot import {attr} from {module_name} ({exc})") from None
        if not callable(function):
            raise ValueError(f"POLICY={name}: {attr} is not a function")
        return CustomPolicy(name, function)
    raise ValueError(f"POLICY={name!r} is unknown; choose one of {', '.join(policy_names())} or give module:function")
