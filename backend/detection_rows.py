"""Rows of the detection store: dataclasses, and their encoding as SQL values (numpy arrays as float32/int32 bytes)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from .detections import Detections


@dataclass(frozen=True)
class StoredDetections:
    task_id: int
    detections: Detections | None  # None when the image could not be used
    image_hash: int | None
    error: str | None
    #: which image the row is of (`image_reference`); None in rows stored before it was recorded
    image_ref: str | None = None


def image_reference(data: dict, value_key: str) -> str:
    """A short hash of the image a task's data points at: the field the label config's <Image value="$..."> names, and
    its value. A row stored for another field or URL (the config changed, the task's data was replaced) is not this image's."""
    value = data.get(value_key) if isinstance(data, dict) else None
    text = json.dumps([value_key, value], sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class ServedQueue:
    """What a project's served LS prediction version was ranked with."""

    ls_version: str  # the prediction version LS serves (project.model_version)
    raw_key: str  # the detection store key its detections came from (model version + raw-output settings)
    ranking_key: str  # policy, batch extras, serving filters and label config, hashed (jobs.ranking_key)


@dataclass(frozen=True)
class ServedTasks:
    """(n,) arrays, sorted by ascending LS score: task ids, usefulness (-inf: unusable image), LS scores."""

    task_ids: np.ndarray
    usefulness: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.task_ids.size)


@dataclass(frozen=True)
class LabelledReference:
    """The labelled images a queue was ranked against: (r,) task ids with a stored embedding, and novelty's scale.

    A full sync records it with its queue (novelty and "+coreset" measure the
    pool against these images); the tasks a later sync adds, and the head it
    re-shapes, are measured against it on the same scale, without listing the
    project's labelled tasks again. `scale` is None where no novelty was scored.
    """

    task_ids: np.ndarray
    scale: float | None = None

    def __post_init__(self):
        ids = np.unique(np.asarray(self.task_ids, dtype=np.int64).reshape(-1))
        object.__setattr__(self, "task_ids", ids)
        if self.scale is not None and not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"a labelled reference's scale must be a finite number > 0, got {self.scale}")

    def with_tasks(self, task_ids) -> "LabelledReference":
        """The same reference with more labelled tasks in it (same scale)."""
        return LabelledReference(np.concatenate([self.task_ids, np.asarray(task_ids, dtype=np.int64).reshape(-1)]), self.scale)

    def to_row(self) -> tuple[bytes, float | None]:
        return self.task_ids.astype("<i8").tobytes(), self.scale

    @classmethod
    def from_row(cls, blob, scale) -> "LabelledReference":
        return cls(np.frombuffer(bytes(blob), dtype="<i8"), None if scale is None else float(scale))


def served_from_rows(rows) -> ServedTasks:
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    usefulness = np.fromiter((-np.inf if r[1] is None else r[1] for r in rows), dtype=np.float64, count=len(rows))
    scores = np.fromiter((r[2] for r in rows), dtype=np.float64, count=len(rows))
    return ServedTasks(ids, usefulness, scores)


def served_rows(project: int, task_ids, usefulness, scores) -> list[tuple]:
    task_ids, usefulness, scores = np.asarray(task_ids), np.asarray(usefulness, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if not task_ids.shape == usefulness.shape == scores.shape:
        raise ValueError(f"task_ids {task_ids.shape}, usefulness {usefulness.shape} and scores {scores.shape} must match")
    return [
        (project, int(t), float(u) if np.isfinite(u) else None, float(s))
        for t, u, s in zip(task_ids.tolist(), usefulness.tolist(), scores.tolist())
    ]


def encode(project: int, model_version: str, item: StoredDetections, now: float) -> tuple:
    d = item.detections
    image_hash = None if item.image_hash is None else _to_signed(item.image_hash)
    if d is None:
        return (project, model_version, item.task_id, None, None, None, None, None, None, None, None, image_hash, item.error, now, None, None, item.image_ref)
    return (
        project,
        model_version,
        item.task_id,
        d.image_size[0],
        d.image_size[1],
        d.num_classes,
        d.xyxy.astype(np.float32).tobytes(),
        d.class_probs.astype(np.float32).tobytes(),
        d.labels.astype(np.int32).tobytes(),
        d.scores.astype(np.float32).tobytes(),
        d.background.astype(np.float32).tobytes(),
        image_hash,
        None,
        now,
        # half precision: a vector compared by cosine needs no more, and 50,000 images' stay small
        None if d.embedding is None else d.embedding.astype(np.float16).tobytes(),
        None if d.instability is None else d.instability.astype(np.float32).tobytes(),
        item.image_ref,
    )


def decode(row) -> StoredDetections:
    """A row of DECODED_COLUMNS, optionally followed by the embedding column."""
    task_id, width, height, num_classes, xyxy, probs, labels, scores, background, image_hash, error, instability, image_ref = row[:13]
    embedding = decode_embedding(row[13]) if len(row) > 13 and row[13] is not None else None
    detections = None
    if error is None:
        xyxy, probs, labels, scores, background = (bytes(b) for b in (xyxy, probs, labels, scores, background))
        n_boxes = len(xyxy) // 16
        detections = Detections(
            np.frombuffer(xyxy, dtype=np.float32).reshape(n_boxes, 4).astype(np.float64),
            np.frombuffer(probs, dtype=np.float32).reshape(n_boxes, num_classes).astype(np.float64),
            (width, height),
            np.frombuffer(labels, dtype=np.int32).astype(np.int64),
            np.frombuffer(scores, dtype=np.float32).astype(np.float64),
            np.frombuffer(background, dtype=np.float32).astype(np.float64),
            embedding,
            None if instability is None else np.frombuffer(bytes(instability), dtype=np.float32).astype(np.float64),
        )
    unsigned = None if image_hash is None else _to_unsigned(image_hash)
    return StoredDetections(int(task_id), detections, unsigned, error, image_ref)


def decode_embedding(blob) -> np.ndarray:
    return np.frombuffer(bytes(blob), dtype=np.float16).astype(np.float32)


# Image hashes are unsigned 64-bit; SQL integers are signed 64-bit.
def _to_signed(value: int) -> int:
    value = int(value)
    if not 0 <= value < 2**64:
        raise ValueError(f"image hash must be an unsigned 64-bit integer, got {value}")
    return value - 2**64 if value >= 2**63 else value


def _to_unsigned(value: int) -> int:
    return value + 2**64 if value < 0 else value
