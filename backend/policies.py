"""Selection policies: how useful each image is to label. Higher usefulness = served first.

Names (the POLICY setting):
- ale-{entropy,lc}-{sum,max,mean,min}: the ALE paper's A(S) x sqrt(N)
- {entropy,lc}-{sum,max,mean,min}: plain aggregation of box uncertainty
- min-confidence (the Conservation Metrics pipeline's default), mean-confidence, weighted-confidence
  (box-area weighted mean): least confident images first
- random: a seeded shuffle, the baseline every policy must beat
- novelty: how unlike the labelled set an image is (`novelty.NoveltyPolicy`)
- any of these + "+cost" (e.g. ale-entropy-sum+cost): usefulness per unit of
  expected annotation cost, for teams that pay per box (`CostAwarePolicy`)
- + "+novelty": usefulness x novelty ** NOVELTY_WEIGHT (`NoveltyMix`)
- + "+diverse": the same usefulness; the batch is chosen by k-center over
  image embeddings among the DIVERSITY_POOL most useful batches
  (`DiversePolicy`, `ranking.select_order`)
- + "+coreset": "+diverse" whose k-center counts the labelled images as
  chosen already, so the batch keeps away from what is labelled too
  (`CoresetPolicy`)
- + "+rare" (right after a per-box uncertainty policy): each box's value x
  how rare its class is in the pool's predictions (`RarityWeighted`)
  Suffixes combine, e.g. ale-entropy-sum+novelty+diverse, entropy-mean+rare+cost
  (the wrappers are in `policy_suffixes`).
- a custom policy: `package.module:function` or an entry point in the
  `label_studio_ale.policies` group. The function takes one image's
  `Detections` and returns its *confidence* (the Conservation Metrics pipeline's `calculate_confidence`
  convention): lower confidence = more useful.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable, Sequence

import numpy as np

from . import scoring
from .errors import PolicyError
from .detections import Detections
from .novelty import NOVELTY_POLICY, NoveltyPolicy
from .policy_suffixes import (
    CORESET_SUFFIX,
    COST_SUFFIX,
    DIVERSE_SUFFIX,
    NOVELTY_SUFFIX,
    RARE_SUFFIX,
    CoresetPolicy,
    CostAwarePolicy,
    DiversePolicy,
    NoveltyMix,
    RarityWeighted,
)
from .settings import DEFAULT_COST_PER_IMAGE, DEFAULT_NOVELTY_WEIGHT

POLICY_ENTRY_POINT_GROUP = "label_studio_ale.policies"
#: The ALE paper's most consistent winner (50 and 100 images, new classes).
DEFAULT_POLICY = "ale-entropy-sum"
#: Per-box metrics: entropy and least confidence of the class scores; loc, the box's flip instability.
METRICS = ("entropy", "lc", "loc")
CONFIDENCE_KINDS = ("min", "mean", "weighted")


@dataclass(frozen=True)
class UncertaintyPolicy:
    """Per-box uncertainty (entropy or least confidence) aggregated per image, optionally x sqrt(N)."""

    metric: str
    aggregation: str
    ale: bool

    @property
    def needs_class_vectors(self) -> bool:
        return self.metric != "loc"

    @property
    def needs_localization(self) -> bool:
        return self.metric == "loc"

    @property
    def name(self) -> str:
        return f"{'ale-' if self.ale else ''}{self.metric}-{self.aggregation}"

    def usefulness(self, detections: Sequence[Detections], novelty: np.ndarray | None = None) -> np.ndarray:
        counts = np.array([len(d) for d in detections], dtype=np.int64)
        if counts.sum() == 0:
            return np.zeros(len(detections))
        return self.combine(self.box_values(detections), counts)

    def box_values(self, detections: Sequence[Detections]) -> np.ndarray:
        """(m,) images -> (total,) the per-box metric of all their boxes, concatenated in image order."""
        if not any(len(d) for d in detections):
            return np.zeros(0)
        if self.metric == "loc":
            if any(d.instability is None for d in detections if len(d)):
                raise ValueError(f"policy {self.name} needs each box's flip instability; these detections were predicted without it")
            return np.concatenate([d.instability for d in detections if len(d)])
        probs = np.concatenate([d.class_probs for d in detections if len(d)])
        background = np.concatenate([d.background for d in detections if len(d)])
        return self._class_values(probs, background)

    def _class_values(self, class_probs: np.ndarray, background: np.ndarray | None) -> np.ndarray:
        distribution = scoring.box_distribution(class_probs, background)
        return scoring.entropy(distribution) if self.metric == "entropy" else scoring.least_confidence(distribution)

    def combine(self, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """(total,) box values, (m,) boxes per image -> (m,) this policy's aggregation (x sqrt(N) for ale-)."""
        combine = scoring.ale_segments if self.ale else scoring.aggregate_segments
        return combine(values, counts, self.aggregation)

    def usefulness_arrays(self, class_probs: np.ndarray, counts: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
        """(total, C) box scores of all images concatenated, (m,) boxes per image, optional (total,) background -> (m,)."""
        if self.metric == "loc":
            raise ValueError("usefulness_arrays scores class vectors; a loc policy scores each box's flip instability")
        return self.combine(self._class_values(class_probs, background), counts)


@dataclass(frozen=True)
class ConfidencePolicy:
    """The Conservation Metrics pipeline: image confidence from its box confidences; usefulness = 1 - confidence.

    An image with no boxes has usefulness 0 (see the empty-image quota to serve some).
    """

    kind: str
    needs_class_vectors = False

    @property
    def name(self) -> str:
        return f"{self.kind}-confidence"

    def usefulness(self, detections: Sequence[Detections], novelty: np.ndarray | None = None) -> np.ndarray:
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
    """Uniform draws from a stream seeded by `seed` (and `stream`, when set: a draw of its own for another set of images)."""

    seed: int = 0
    stream: int | None = None
    name = "random"
    needs_class_vectors = False

    def usefulness(self, detections: Sequence[Detections], novelty: np.ndarray | None = None) -> np.ndarray:
        seed = self.seed if self.stream is None else [self.seed, self.stream]
        return np.random.default_rng(seed).random(len(detections))


@dataclass(frozen=True)
class CustomPolicy:
    """Wraps a user function `confidence(detections) -> float` (lower = label first)."""

    name: str
    confidence: Callable[[Detections], float]
    needs_class_vectors = False

    def usefulness(self, detections: Sequence[Detections], novelty: np.ndarray | None = None) -> np.ndarray:
        values = np.array([float(self.confidence(d)) for d in detections], dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"policy {self.name} returned a non-finite confidence")
        return -values


def single_object_confidence(detections: Detections) -> float:
    """The Conservation Metrics pipeline's `calculate_confidence` example: exactly one object expected per image.

    Any other count gets confidence 0 (review first); one object gets its score.
    """
    if len(detections) != 1:
        return 0.0
    return float(detections.scores.mean())


def policy_names() -> list[str]:
    names = [f"{prefix}{m}-{a}" for prefix in ("ale-", "") for m in METRICS for a in scoring.AGGREGATIONS]
    names += [f"{k}-confidence" for k in CONFIDENCE_KINDS] + ["random", NOVELTY_POLICY]
    return names + sorted(ep.name for ep in entry_points(group=POLICY_ENTRY_POINT_GROUP))


#: What each suffix wraps the policy before it in: (inner, cost per image, novelty weight) -> policy.
_SUFFIXES = {
    COST_SUFFIX: lambda inner, cost, _: CostAwarePolicy(inner, cost),
    NOVELTY_SUFFIX: lambda inner, _, weight: NoveltyMix(inner, weight),
    DIVERSE_SUFFIX: lambda inner, *_: DiversePolicy(inner),
    CORESET_SUFFIX: lambda inner, *_: CoresetPolicy(inner),
    RARE_SUFFIX: lambda inner, *_: RarityWeighted(inner),
}


def split_suffixes(name: str) -> tuple[str, list[str]]:
    """'entropy-mean+rare+cost' -> ('entropy-mean', ['+rare', '+cost']): the base name and its suffixes, innermost first."""
    suffixes: list[str] = []
    while True:
        found = next((s for s in _SUFFIXES if name.endswith(s) and len(name) > len(s)), None)
        if found is None:
            return name, suffixes
        suffixes.insert(0, found)
        name = name[: -len(found)]


def get_policy(name: str, seed: int = 0, cost_per_image: float = DEFAULT_COST_PER_IMAGE, novelty_weight: float = DEFAULT_NOVELTY_WEIGHT):
    """Resolve a policy by name, dotted path (`pkg.mod:function`) or entry point, with its suffixes (+rare, +cost, +novelty,
    +diverse, +coreset)."""
    if not isinstance(name, str) or not name:
        raise PolicyError("POLICY is empty: use e.g. ale-entropy-sum")
    base, suffixes = split_suffixes(name)
    for suffix in set(suffixes):
        if suffixes.count(suffix) > 1:
            raise PolicyError(f"POLICY={name}: {suffix} appears {suffixes.count(suffix)} times; each suffix applies once")
    if DIVERSE_SUFFIX in suffixes and CORESET_SUFFIX in suffixes:
        raise PolicyError(
            f"POLICY={name}: {CORESET_SUFFIX} is {DIVERSE_SUFFIX} that also keeps away from the labelled images; use one of them"
        )
    policy = _base_policy(base, seed, name)
    for suffix in suffixes:
        try:
            policy = _SUFFIXES[suffix](policy, cost_per_image, novelty_weight)
        except PolicyError:
            raise
        except ValueError as exc:
            raise PolicyError(f"POLICY={name}: {exc}") from None
    return policy


def _base_policy(name: str, seed: int, full_name: str):
    """The policy a name without suffixes names; `full_name` (with them) is what errors quote."""
    if name == NOVELTY_POLICY:
        return NoveltyPolicy()
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
            raise PolicyError(f"POLICY={name}: cannot import {attr} from {module_name} ({exc})") from None
        if not callable(function):
            raise PolicyError(f"POLICY={name}: {attr} is not a function")
        return CustomPolicy(name, function)
    if "+" in name:
        part = name[name.index("+") :]
        raise PolicyError(
            f"POLICY={full_name!r}: {part!r} is not a suffix, or {name!r} is no policy; a policy is one of "
            f"{', '.join(policy_names())} or module:function, followed by any of the suffixes {', '.join(_SUFFIXES)}"
        )
    if name != full_name:
        raise PolicyError(f"POLICY={full_name!r}: {name!r} is unknown; choose one of {', '.join(policy_names())} or give module:function")
    raise PolicyError(f"POLICY={name!r} is unknown; choose one of {', '.join(policy_names())} or give module:function, and any of the suffixes {', '.join(_SUFFIXES)}")
