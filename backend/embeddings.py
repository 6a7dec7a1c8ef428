"""Image embeddings compared: k-center selection (diversity) and distance to the labelled set (novelty). Pure numpy.

Embeddings are the detector's own pooled features (`Detections.embedding`),
unit length, so euclidean distance orders pairs as cosine distance does.
"""

from __future__ import annotations

import numpy as np

#: Pool rows compared with the labelled set at a time, against this many labelled rows at a time:
#: (DISTANCE_CHUNK x REFERENCE_CHUNK) distances in memory (32 MB of float64), however large the labelled set.
DISTANCE_CHUNK = 1024
REFERENCE_CHUNK = 4096


def k_center(vectors: np.ndarray, count: int, covered: np.ndarray | None = None) -> np.ndarray:
    """Greedy k-center: (k, D) candidates in usefulness order -> (min(count, k),) indices, picked first to last.

    Without `covered` it starts from candidate 0; each next pick is the
    candidate farthest from every pick so far (ties: the more useful, lower
    index). The picks cover the candidates' spread instead of one crowded
    corner of it. `covered`: (r, D) images already labelled, counted as picks
    made before (the core-set form, Sener & Savarese 2018): the first pick is
    then the candidate farthest from them, and a candidate like a labelled
    image comes last.
    """
    vectors = _matrix("vectors", vectors)
    k = vectors.shape[0]
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    count = min(count, k)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    covered = None if covered is None else _matrix("covered", covered)
    if covered is not None and covered.shape[0]:
        nearest = nearest_distance(vectors, covered)
        picks = [int(np.argmax(nearest))]
    else:
        picks = [0]
        nearest = np.full(k, np.inf)
    nearest = np.minimum(nearest, np.linalg.norm(vectors - vectors[picks[0]], axis=1))
    nearest[picks] = -1.0
    while len(picks) < count:
        pick = int(np.argmax(nearest))  # argmax keeps the first of equals: the more useful
        picks.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(vectors - vectors[pick], axis=1))
        nearest[picks] = -1.0
    return np.asarray(picks, dtype=np.int64)


def nearest_distance(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(m, D), (r, D) with r >= 1 -> (m,) euclidean distance of each row to its nearest reference row."""
    vectors, reference = _matrix("vectors", vectors), _matrix("reference", reference)
    if reference.shape[0] == 0:
        raise ValueError("reference is empty: nearest_distance needs at least one row")
    if vectors.shape[1] != reference.shape[1]:
        raise ValueError(f"vectors have {vectors.shape[1]} dimensions, reference {reference.shape[1]}")
    out = np.empty(vectors.shape[0])
    ref_sq = (reference**2).sum(axis=1)
    for start in range(0, vectors.shape[0], DISTANCE_CHUNK):
        part = vectors[start : start + DISTANCE_CHUNK]
        out[start : start + DISTANCE_CHUNK] = np.sqrt(np.maximum(_nearest_squared(part, reference, ref_sq), 0.0))
    return out


def _nearest_squared(part: np.ndarray, reference: np.ndarray, ref_sq: np.ndarray, first_row: int | None = None) -> np.ndarray:
    """(p, D) rows, (r, D) reference with its (r,) squared norms -> (p,) squared distance to the nearest reference row.

    The reference is read REFERENCE_CHUNK rows at a time, keeping the running
    minimum. `first_row`: `part` is reference[first_row:first_row + p], and a
    row is not compared with itself.
    """
    part_sq = (part**2).sum(axis=1)[:, None]
    nearest = np.full(part.shape[0], np.inf)
    rows = np.arange(part.shape[0])
    for begin in range(0, reference.shape[0], REFERENCE_CHUNK):
        block = reference[begin : begin + REFERENCE_CHUNK]
        squared = part_sq + ref_sq[None, begin : begin + REFERENCE_CHUNK] - 2.0 * part @ block.T
        if first_row is not None:
            itself = first_row + rows - begin
            inside = (itself >= 0) & (itself < block.shape[0])
            squared[rows[inside], itself[inside]] = np.inf
        np.minimum(nearest, squared.min(axis=1), out=nearest)
    return nearest


def novelty(vectors: np.ndarray, reference: np.ndarray, scale: float | None = None) -> np.ndarray:
    """How unlike the labelled set each image is: (m, D) pool, (r, D) labelled -> (m,) >= 0; NaN rows -> 1.

    Distance to the nearest labelled image, in units of `scale`, by default
    the labelled set's own `spacing`: 1 is "as far from the labelled set as
    labelled images are from each other", whatever the model's feature scale.
    With no labelled image every image is equally novel (1); a row of NaN (no
    embedding) is 1 too. Rows are independent: a pool may be scored in chunks.
    """
    vectors, reference = _matrix("vectors", vectors, allow_nan=True), _matrix("reference", reference)
    out = np.ones(vectors.shape[0])
    known = ~np.isnan(vectors).any(axis=1)
    if reference.shape[0] == 0 or not known.any():
        return out
    out[known] = nearest_distance(vectors[known], reference) / (spacing(reference) if scale is None else scale)
    return out


def spacing(reference: np.ndarray) -> float:
    """(r, D) -> the median distance of a row to its nearest other row; 1 without two distinct rows."""
    reference = _matrix("reference", reference)
    r = reference.shape[0]
    if r < 2:
        return 1.0
    within = np.empty(r)
    ref_sq = (reference**2).sum(axis=1)
    for start in range(0, r, DISTANCE_CHUNK):
        part = reference[start : start + DISTANCE_CHUNK]
        within[start : start + DISTANCE_CHUNK] = np.sqrt(np.maximum(_nearest_squared(part, reference, ref_sq, first_row=start), 0.0))
    median = float(np.median(within))
    return median if median > 0 else 1.0


def _matrix(name: str, values, allow_nan: bool = False) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (n, D), got {array.shape}")
    finite = np.isfinite(array) | (np.isnan(array) if allow_nan else False)
    if not finite.all():
        raise ValueError(f"{name} must be finite" + (" (NaN rows allowed)" if allow_nan else ""))
    return array
