"""Policy suffixes: what "+cost", "+novelty", "+rare", "+diverse" and "+coreset" do to the policy they follow.

Each wraps another policy (`inner`) and keeps its name plus the suffix and
what it needs (class vectors, flip instability, novelty, a diverse batch);
suffixes combine, e.g. ale-entropy-sum+novelty+diverse, entropy-mean+rare+cost.
`policies.get_policy` builds them from a name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from . import scoring
from .detections import Detections
from .novelty import checked_novelty
from .settings import DEFAULT_COST_PER_IMAGE, DEFAULT_NOVELTY_WEIGHT

#: A policy name ending in this divides usefulness by the expected annotation cost.
COST_SUFFIX = "+cost"
#: ... multiplies usefulness by novelty ** NOVELTY_WEIGHT.
NOVELTY_SUFFIX = "+novelty"
#: ... chooses each batch for diversity among the most useful candidates.
DIVERSE_SUFFIX = "+diverse"
#: ... weights each box's uncertainty by how rare its class is in the pool's predictions.
RARE_SUFFIX = "+rare"
#: ... chooses each batch for diversity from each other and from the labelled images.
CORESET_SUFFIX = "+coreset"


def needs_localization(policy) -> bool:
    """Whether the policy scores boxes by their flip instability (predicted twice, once mirrored)."""
    return bool(getattr(policy, "needs_localization", False))


def needs_novelty(policy) -> bool:
    """Whether the policy compares images with the labelled set (it takes each image's novelty)."""
    return bool(getattr(policy, "needs_novelty", False))


def is_diverse(policy) -> bool:
    return bool(getattr(policy, "diverse", False))


def is_coreset(policy) -> bool:
    """Whether the policy's diverse batch keeps away from the labelled images (it needs their embeddings)."""
    return bool(getattr(policy, "coreset", False))


def with_inner(policy, kind: type, change):
    """`policy` with its part of type `kind` (itself, or one a suffix wraps) replaced by `change(part)`; as it is
    without one."""
    if isinstance(policy, kind):
        return change(policy)
    if isinstance(policy, WrappedPolicy):
        return replace(policy, inner=with_inner(policy.inner, kind, change))
    return policy


def rarity_weighted(policy) -> "RarityWeighted | None":
    """The `+rare` part of a policy (suffixes wrap one another); None without one."""
    while policy is not None:
        if isinstance(policy, RarityWeighted):
            return policy
        policy = getattr(policy, "inner", None)
    return None


def with_rarity(policy, rarity: np.ndarray):
    """`policy` with its `+rare` part weighting by the given (C,) class rarity rather than the images ranked together."""
    if isinstance(policy, RarityWeighted):
        return replace(policy, rarity=tuple(float(r) for r in np.asarray(rarity, dtype=np.float64).reshape(-1)))
    if isinstance(policy, WrappedPolicy):
        return replace(policy, inner=with_rarity(policy.inner, rarity))
    raise ValueError(f"policy {getattr(policy, 'name', policy)} has no {RARE_SUFFIX} part to give a class rarity to")


class WrappedPolicy:
    """What a policy suffix keeps of the policy it wraps (`inner`): its name plus the suffix, and what it needs."""

    inner: object
    suffix = ""

    @property
    def name(self) -> str:
        return f"{self.inner.name}{self.suffix}"

    @property
    def needs_class_vectors(self) -> bool:
        return self.inner.needs_class_vectors

    @property
    def needs_localization(self) -> bool:
        return needs_localization(self.inner)

    @property
    def needs_novelty(self) -> bool:
        return needs_novelty(self.inner)

    @property
    def diverse(self) -> bool:
        return is_diverse(self.inner)

    @property
    def coreset(self) -> bool:
        return is_coreset(self.inner)


@dataclass(frozen=True)
class CostAwarePolicy(WrappedPolicy):
    """Another policy's usefulness per unit of expected annotation cost: predicted boxes + `per_image`.

    Annotators pay per box they draw or check, plus a constant per image
    (`per_image`, in boxes). Non-negative usefulness is divided by the cost;
    a negative one (custom policies: -confidence) is multiplied by it, so a
    costlier image always ranks lower at equal usefulness.
    """

    inner: object
    per_image: float = DEFAULT_COST_PER_IMAGE
    suffix = COST_SUFFIX

    def __post_init__(self):
        if not self.per_image > 0:
            raise ValueError(f"the cost per image must be a positive number of boxes, got {self.per_image}")

    def usefulness(self, detections: Sequence[Detections], novelty: np.ndarray | None = None) -> np.ndarray:
        """(m,) images -> (m,) usefulness / (boxes + per_image), or x cost where negative."""
        value = np.asarray(self.inner.usefulness(detections, novelty), dtype=np.float64)
        cost = np.array([len(d) for d in detections], dtype=np.float64) + self.per_image
        return np.where(value >= 0, value / cost, value * cost)


@dataclass(frozen=True)
class NoveltyMix(WrappedPolicy):
    """Another policy's usefulness x novelty ** weight (divided where negative): uncertain *and* unlike what is labelled.

    weight 0 is the policy alone; 1 makes an image twice as far from the
    labelled set count twice as useful. Multiplying keeps the mix free of the
    policy's own scale (entropy sums and confidences mix alike).
    """

    inner: object
    weight: float = DEFAULT_NOVELTY_WEIGHT
    suffix = NOVELTY_SUFFIX
    needs_novelty = True

    def __post_init__(self):
        if not self.weight >= 0:
            raise ValueError(f"the novelty weight must be 0 or a positive exponent, got {self.weight}")

    def usefulness(self, detections: Sequence[Detections], novelty: np.ndarray | None = None) -> np.ndarray:
        value = np.asarray(self.inner.usefulness(detections, novelty), dtype=np.float64)
        factor = np.maximum(checked_novelty(novelty, len(detections), self.name), 1e-6) ** self.weight
        return np.where(value >= 0, value * factor, value / factor)


@dataclass(frozen=True)
class RarityWeighted(WrappedPolicy):
    """A per-box uncertainty policy whose box values are weighted by how rare the box's class is in the pool's predictions.

    Each box's value (entropy, least confidence or flip instability) is
    multiplied by its expected rarity (`scoring.rarity_weights`: its class
    scores spread over the classes, each class weighted by (1 / C) / its share
    of the pool's predicted boxes) before the inner policy aggregates. A class
    the model predicts little, because it is rare in the pool or not learnt
    yet, weighs more. The shares are those of the images ranked together.
    On the built-in benchmark (docs/benchmarks/al-small-mean-rare) it buys a
    new class faster than the model needs it, at the old classes' cost; where
    the new class stays rare in the pool (al-small-rare-class) it finds
    nearly all of it and lifts the policy it weights.

    `rarity`: (C,) class rarity to weight by instead (`with_rarity`): tasks
    added to a served queue, or its head re-shaped, are weighted as the whole
    pool was when it was ranked, not by their own few boxes.
    """

    inner: object  # a policies.UncertaintyPolicy
    rarity: tuple[float, ...] | None = None
    suffix = RARE_SUFFIX

    def __post_init__(self):
        # box_values and combine: what a per-box policy (policies.UncertaintyPolicy) has, and what this needs
        if not all(callable(getattr(self.inner, attr, None)) for attr in ("box_values", "combine")):
            raise ValueError(
                f"{RARE_SUFFIX} weights the boxes of a per-box uncertainty policy ({{ale-,}}{{entropy,lc,loc}}-{{sum,max,mean,min}}); "
                f"{getattr(self.inner, 'name', self.inner)} has none: put {RARE_SUFFIX} right after it, e.g. entropy-mean{RARE_SUFFIX}+cost"
            )

    @property
    def needs_class_vectors(self) -> bool:
        return True  # the weights read every box's class scores, whatever the inner metric

    def usefulness(self, detections: Sequence[Detections], novelty: np.ndarray | None = None) -> np.ndarray:
        """(m,) images -> (m,) the inner aggregation of box value x box rarity."""
        counts = np.array([len(d) for d in detections], dtype=np.int64)
        if counts.sum() == 0:
            return np.zeros(len(detections))
        probs = np.concatenate([d.class_probs for d in detections if len(d)])
        rarity = scoring.class_rarity(probs) if self.rarity is None else np.asarray(self.rarity)
        weights = scoring.rarity_weights(probs, rarity)
        return self.inner.combine(self.inner.box_values(detections) * weights, counts)

    def pool_rarity(self, detections: Sequence[Detections], num_classes: int, shown: np.ndarray | None = None) -> np.ndarray:
        """(C,) the class rarity of these images' boxes, as `usefulness` weights them (ones without a box); `shown`:
        (C,) the classes the project shows, the only ones counted (`scoring.class_rarity`)."""
        found = [d.class_probs for d in detections if len(d)]
        return scoring.class_rarity(np.concatenate(found) if found else np.zeros((0, num_classes)), shown)


@dataclass(frozen=True)
class DiversePolicy(WrappedPolicy):
    """Another policy's usefulness; its batches are chosen by k-center over embeddings (`ranking.diversify`)."""

    inner: object
    suffix = DIVERSE_SUFFIX
    diverse = True

    def usefulness(self, detections: Sequence[Detections], novelty: np.ndarray | None = None) -> np.ndarray:
        return self.inner.usefulness(detections, novelty)


@dataclass(frozen=True)
class CoresetPolicy(DiversePolicy):
    """`DiversePolicy` whose k-center starts from the labelled images (the core-set form, Sener & Savarese 2018).

    The batch is chosen among the same candidates, but a candidate is as
    good as covered when a labelled image is like it: a frame of a burst
    whose sibling was labelled, or a scene labelled before, gives way to
    candidates unlike anything labelled (`embeddings.k_center`'s `covered`).
    The ranking reads the labelled images' embeddings for it.
    """

    suffix = CORESET_SUFFIX
    coreset = True
