"""Pool detections kept between jobs, keyed by (project, raw output key, task).

predict_pool writes what the model produced (every box above its floor, see
`serving.raw_output_key`) once per model version; scoring and the priority sync
read them and apply the serving filters without re-running the model. Stored in
SQLite inside MODEL_DIR (WAL mode: one writer and many readers across processes
on the same machine).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .detections import Detections

#: Bumped whenever the table changes; an older table is a cache and is dropped (its models re-run once).
SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS detections (
    project INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    width INTEGER,
    height INTEGER,
    num_classes INTEGER,
    xyxy BLOB,
    class_probs BLOB,
    labels BLOB,
    scores BLOB,
    background BLOB,
    image_hash INTEGER,
    error TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (project, model_version, task_id)
)
"""


@dataclass(frozen=True)
class StoredDetections:
    task_id: int
    detections: Detections | None  # None when the image could not be used
    image_hash: int | None
    error: str | None


class DetectionStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self._connect()
        db.execute("PRAGMA journal_mode=WAL")
        # One writer at a time checks and migrates: two processes opening a fresh store race otherwise.
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                db.execute("DROP TABLE IF EXISTS detections")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute(SCHEMA)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30)
            self._local.db = db
        return db

    def put_many(self, project: int, model_version: str, items: list[StoredDetections]) -> None:
        """Insert or replace, in one transaction (all items or none)."""
        rows = []
        now = time.time()
        for item in items:
            d = item.detections
            image_hash = None if item.image_hash is None else _to_signed(item.image_hash)
            if d is None:
                rows.append((project, model_version, item.task_id, None, None, None, None, None, None, None, None, image_hash, item.error, now))
            else:
                rows.append(
                    (
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
                    )
                )
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO detections VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    def get_many(self, project: int, model_version: str, task_ids: list[int] | None = None) -> dict[int, StoredDetections]:
        db = self._connect()
        query = (
            "SELECT task_id, width, height, num_classes, xyxy, class_probs, labels, scores, background, image_hash, error "
            "FROM detections WHERE project=? AND model_version=?"
        )
        rows = db.execute(query, (project, model_version)).fetchall()
        wanted = None if task_ids is None else set(task_ids)
        out = {}
        for task_id, width, height, num_classes, xyxy, probs, labels, scores, background, image_hash, error in rows:
            if wanted is not None and task_id not in wanted:
                continue
            detections = None
            if error is None:
                n_boxes = len(xyxy) // 16
                detections = Detections(
                    np.frombuffer(xyxy, dtype=np.float32).reshape(n_boxes, 4).astype(np.float64),
                    np.frombuffer(probs, dtype=np.float32).reshape(n_boxes, num_classes).astype(np.float64),
                    (width, height),
                    np.frombuffer(labels, dtype=np.int32).astype(np.int64),
                    np.frombuffer(scores, dtype=np.float32).astype(np.float64),
                    np.frombuffer(background, dtype=np.float32).astype(np.float64),
                )
            unsigned = None if image_hash is None else _to_unsigned(image_hash)
            out[task_id] = StoredDetections(task_id, detections, unsigned, error)
        return out

    def delete_version(self, project: int, model_version: str) -> int:
        with self._connect() as db:
            return db.execute("DELETE FROM detections WHERE project=? AND model_version=?", (project, model_version)).rowcount


# Image hashes are unsigned 64-bit; SQLite integers are signed 64-bit.
def _to_signed(value: int) -> int:
    value = int(value)
    if not 0 <= value < 2**64:
        raise ValueError(f"image hash must be an unsigned 64-bit integer, got {value}")
    return value - 2**64 if value >= 2**63 else value


def _to_unsigned(value: int) -> int:
    return value + 2**64 if value < 0 else value
