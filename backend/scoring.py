"""Uncertainty metrics and image aggregation: pure numpy, no I/O.

Per kept box (rows of a class-score matrix):
- box confidence: p1, the highest raw class score (the Conservation Metrics pipeline)
- least confidence, the ALE paper's margin form: LC = 1 - (p1 - p2)
- entropy: H = -sum p_i log p_i, optionally divided by log K

Per image, an aggregation A over its boxes' values: sum, max, mean or min;
the ALE extension multiplies by sqrt(N), N = number of boxes. An image with
no boxes scores 0 under every aggregation.

YOLO's class scores are independent sigmoids, not a distribution. LC and
entropy are computed on `box_distribution`: the scores plus a background mass
`1 - max(score)`, renormalised to sum to 1. A box that is confidently one class
becomes a peaked distribution; a box unsure whether it is anything at all keeps
a large background share and scores as uncertain. A model with a real
background class (a softmax TF OD export) passes its own background column,
and then a row that is already a distribution is used as it is.
"""

from __future__ import annotations

import numpy as np

AGGREGATIONS = ("sum", "max", "mean", "min")
_EPS = 1e-12


def box_distribution(class_probs: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """(n, C) raw class scores in [0, 1], optional (n,) background -> (n, C + 1) distribution, background last.

    Without `background` it is `1 - max(score)` (a sigmoid head has none).
    """
    scores = np.asarray(class_probs, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"class_probs must have shape (n, C), got {scores.shape}")
    if background is None:
        background = 1.0 - scores.max(axis=1, initial=0.0)
    background = np.asarray(background, dtype=np.float64).reshape(-1)
    if background.shape != (scores.shape[0],):
        raise ValueError(f"background must have shape ({scores.shape[0]},), got {background.shape}")
    full = np.concatenate([scores, background[:, None]], axis=1)
    total = full.sum(axis=1, keepdims=True)
    return full / np.maximum(total, _EPS)


def box_confidence(class_probs: np.ndarray) -> np.ndarray:
    """(n, C) -> (n,) the highest class score of each box."""
    scores = np.asarray(class_probs, dtype=np.float64)
    return scores.max(axis=1) if scores.shape[0] else np.zeros(0)


def least_confidence(distribution: np.ndarray) -> np.ndarray:
    """(n, K) distributions, K >= 2 -> (n,) 1 - (p1 - p2), in [0, 1]."""
    p = np.asarray(distribution, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"least confidence needs (n, K >= 2) distributions, got {p.shape}")
    if p.shape[0] == 0:
        return np.zeros(0)
    top2 = -np.partition(-p, 1, axis=1)[:, :2]
    return 1.0 - (top2[:, 0] - top2[:, 1])


def entropy(distribution: np.ndarray, normalised: bool = False) -> np.ndarray:
    """(n, K) distributions -> (n,) -sum p log p (natural log); divided by log K when `normalised`."""
    p = np.asarray(distribution, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"entropy needs (n, K) distributions, got {p.shape}")
    h = -(p * np.log(np.maximum(p, _EPS))).sum(axis=1)  # 0 log 0 = 0
    h = np.maximum(h, 0.0)
    if normalised:
        return h / np.log(p.shape[1]) if p.shape[1] > 1 else np.zeros_like(h)
    return h


def most_uncertain_box(class_probs: np.ndarray, background: np.ndarray | None = None) -> float:
    """(n, C) raw class scores, optional (n,) background -> the largest box entropy normalised by log(C + 1), in [0, 1]:
    0 where every box is certain (or there is none), 1 for a box whose classes and background are all alike."""
    scores = np.asarray(class_probs, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"class_probs must have shape (n, C), got {scores.shape}")
    if scores.shape[0] == 0:
        return 0.0
    return float(entropy(box_distribution(scores, background), normalised=True).max())


def aggregate(values: np.ndarray, how: str) -> float:
    """(n,) box values -> one image value. Empty image -> 0."""
    _check_aggregation(how)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return 0.0
    return float({"sum": np.sum, "max": np.max, "mean": np.mean, "min": np.min}[how](values))


def ale(values: np.ndarray, how: str) -> float:
    """The ALE extension: aggregate(values) x sqrt(N). Empty image -> 0."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return aggregate(values, how) * float(np.sqrt(values.size))


def aggregate_segments(values: np.ndarray, counts: np.ndarray, how: str) -> np.ndarray:
    """Aggregate many images at once.

    values: (total,) box values of all images, concatenated in image order
    counts: (m,) boxes per image (0 allowed); sum(counts) == total
    -> (m,) one value per image, 0 where counts == 0
    """
    _check_aggregation(how)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    if (counts < 0).any() or counts.sum() != values.size:
        raise ValueError(f"counts must be >= 0 and sum to {values.size}, got sum {counts.sum()}")
    out = np.zeros(counts.size)
    nonempty = counts > 0
    if not nonempty.any():
        return out
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[nonempty]
    if how == "sum":
        out[nonempty] = np.add.reduceat(values, starts)
    elif how == "mean":
        out[nonempty] = np.add.reduceat(values, starts) / counts[nonempty]
    elif how == "max":
        out[nonempty] = np.maximum.reduceat(values, starts)
    else:
        out[nonempty] = np.minimum.reduceat(values, starts)
    return out


def ale_segments(values: np.ndarray, counts: np.ndarray, how: str) -> np.ndarray:
    """`aggregate_segments` x sqrt(counts): ALE for many images at once."""
    return aggregate_segments(values, counts, how) * np.sqrt(np.asarray(counts, dtype=np.float64))


#: A class predicted nowhere in the pool weighs this much at most: its share is floored, not divided by 0.
MAX_RARITY = 100.0


def class_rarity(class_probs: np.ndarray, shown: np.ndarray | None = None) -> np.ndarray:
    """(n, C) raw class scores of every box in a pool -> (C,) rarity of each class: (1 / C) / its predicted share.

    A box's scores are normalised over the classes (background left out), so
    each box spreads one unit over them; a class's share is its part of all
    units. 1 where the pool is predicted balanced, above 1 for a class the
    model predicts less (it is rare there, or not learnt yet), capped at
    MAX_RARITY. No boxes -> ones. `shown`: (C,) bool, the classes the project
    shows; C counts those only, and the others (no share: their scores are
    zeroed before ranking) get rarity 0.
    """
    scores = np.asarray(class_probs, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(f"class_probs must have shape (n, C) with C >= 1, got {scores.shape}")
    mask = np.ones(scores.shape[1], dtype=bool) if shown is None else np.asarray(shown, dtype=bool).reshape(-1)
    if mask.shape != (scores.shape[1],) or not mask.any():
        raise ValueError(f"shown must be a (C,) mask with at least one class shown, got {mask.shape} for C={scores.shape[1]}")
    if scores.shape[0] == 0:
        return mask.astype(np.float64)
    rarity = np.minimum((1.0 / mask.sum()) / np.maximum(class_shares(scores), _EPS), MAX_RARITY)
    return np.where(mask, rarity, 0.0)


def class_shares(class_probs: np.ndarray) -> np.ndarray:
    """(n, C) raw class scores of n >= 1 boxes -> (C,) each class's share of them, each box's scores spread over the classes."""
    shares = _class_shares(np.asarray(class_probs, dtype=np.float64)).sum(axis=0)
    return shares / max(shares.sum(), _EPS)


def rarity_weights(class_probs: np.ndarray, rarity: np.ndarray) -> np.ndarray:
    """(n, C) raw class scores, (C,) `class_rarity` -> (n,) each box's expected rarity: sum over classes of share x rarity."""
    scores = np.asarray(class_probs, dtype=np.float64)
    rarity = np.asarray(rarity, dtype=np.float64).reshape(-1)
    if scores.ndim != 2 or scores.shape[1] != rarity.size:
        raise ValueError(f"class_probs (n, C) and rarity (C,) must agree, got {scores.shape} and {rarity.shape}")
    return _class_shares(scores) @ rarity


def _class_shares(scores: np.ndarray) -> np.ndarray:
    """(n, C) -> (n, C) each box's scores over the classes summing to 1; uniform where all are 0."""
    total = scores.sum(axis=1, keepdims=True)
    uniform = np.full_like(scores, 1.0 / scores.shape[1])
    return np.where(total > _EPS, scores / np.maximum(total, _EPS), uniform)


def min_confidence(box_scores: np.ndarray) -> float:
    """The Conservation Metrics pipeline's default image confidence: the lowest box confidence.

    box_scores: (n,) in [0, 1]. An image with no boxes gives 1.0: nothing for
    an annotator to correct, so it is served last.
    """
    box_scores = np.asarray(box_scores, dtype=np.float64).reshape(-1)
    if box_scores.size == 0:
        return 1.0
    return float(np.clip(box_scores.min(), 0.0, 1.0))


def _check_aggregation(how: str) -> None:
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {how!r}")


def flip_instability(xyxy: np.ndarray, mirrored_xyxy: np.ndarray, width: float) -> np.ndarray:
    """Localization instability per box (Kao et al. 2018): 1 - IoU with its best match in the mirrored image's prediction.

    (n, 4) boxes of the image, (m, 4) boxes predicted on its horizontal mirror
    (in the mirror's pixels), image width -> (n,) in [0, 1]: 0 for a box the
    model puts in the same place either way, growing as the two disagree, 1
    for a box with no counterpart at all.
    """
    from .boxes import box_iou

    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    mirrored = np.asarray(mirrored_xyxy, dtype=np.float64).reshape(-1, 4)
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    if xyxy.shape[0] == 0:
        return np.zeros(0)
    if mirrored.shape[0] == 0:
        return np.ones(xyxy.shape[0])
    back = np.stack([width - mirrored[:, 2], mirrored[:, 1], width - mirrored[:, 0], mirrored[:, 3]], axis=1)
    return np.clip(1.0 - box_iou(xyxy, back).max(axis=1), 0.0, 1.0)
