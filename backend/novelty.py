"""Novelty: how unlike the labelled set an image is, in the detector's own feature space.

The Conservation Metrics pipeline's remedy for confident mistakes, usable as a policy of its own
(`NoveltyPolicy`, POLICY=novelty) and as a factor on any other
(`policy_suffixes.NoveltyMix`, the "+novelty" suffix). The distances are
`embeddings.novelty`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import embeddings
from .detections import Detections

NOVELTY_POLICY = "novelty"


def embedding_matrix(detections: Sequence[Detections]) -> np.ndarray:
    """(m,) images -> (m, D) their embeddings; a row of NaN for an image without one. (m, 0) when none has one."""
    dims = {d.embedding.size for d in detections if d.embedding is not None}
    if len(dims) > 1:
        raise ValueError(f"images carry embeddings of different sizes {sorted(dims)}: were they predicted by one model?")
    out = np.full((len(detections), dims.pop() if dims else 0), np.nan)
    for i, d in enumerate(detections):
        if d.embedding is not None:
            out[i] = d.embedding
    return out


def image_novelty(detections: Sequence[Detections], reference: np.ndarray) -> np.ndarray:
    """(m,) images, (r, D) the labelled images' embeddings -> (m,) novelty (`embeddings.novelty`; 1 without embeddings)."""
    vectors = embedding_matrix(detections)
    reference = np.asarray(reference, dtype=np.float64)
    if vectors.shape[1] == 0 or reference.size == 0:
        return np.ones(len(detections))
    return embeddings.novelty(vectors, reference)


def checked_novelty(novelty, n: int, name: str) -> np.ndarray:
    """(n,) novelty given to policy `name`, checked: finite and >= 0. Raises ValueError naming what is wrong."""
    if novelty is None:
        raise ValueError(f"policy {name} needs each image's novelty (image_novelty of the labelled set), and none was given")
    novelty = np.asarray(novelty, dtype=np.float64)
    if novelty.shape != (n,) or not (np.isfinite(novelty).all() and (novelty >= 0).all()):
        raise ValueError(f"novelty must be ({n},) finite values >= 0, got shape {novelty.shape}")
    return novelty


@dataclass(frozen=True)
class NoveltyPolicy:
    """How unlike the labelled set an image is (`embeddings.novelty`): the Conservation Metrics pipeline's remedy for confident mistakes.

    The distance to the nearest labelled images in the detector's own feature
    space, not an autoencoder's reconstruction error: no second model to train
    and keep in step with the detector, and it follows the labelled set at
    once. Images without an embedding, or a project with nothing labelled,
    get 1 (neutral).
    """

    name = NOVELTY_POLICY
    needs_class_vectors = False
    needs_novelty = True

    def usefulness(self, detections: Sequence[Detections], novelty: np.ndarray | None = None) -> np.ndarray:
        """(m,) images and their (m,) novelty (`image_novelty`) -> (m,) the novelty itself."""
        return checked_novelty(novelty, len(detections), self.name).copy()

