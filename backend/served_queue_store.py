"""The detection store's record of the queue a project is served: its version, what ordered it, each task's score in it.

`served_queues` holds one row per project (the prediction version a sync
last switched Label Studio to, its raw output and ranking keys, the cluster
centroids its predictions were written with, the labelled tasks it was ranked
against, the class rarity a `+rare` policy weighted it by); `served_tasks` each task's
usefulness and LS score in it. The tables themselves are created with the
store's others (`detection_store.TABLES`).
"""

from __future__ import annotations

import time
from typing import Iterable

import numpy as np

from .detection_rows import LabelledReference, ServedQueue, ServedTasks, served_from_rows, served_rows


#: Joined to a served queue's ranking key while a sync writes into its version (`begin_served_write`): a sync
#: killed before it records what it wrote leaves a record that is no longer current, so the next sync rewrites
#: the queue instead of adding the same tasks a second time.
WRITING_MARK = "+writing"


class ServedQueueStoreMixin:
    """Reads and writes of the served queue, in the store's transactions (`_tx`, `_exec`, `_execmany`)."""

    def served_queue(self, project: int) -> ServedQueue | None:
        with self._tx() as db:
            row = self._exec(db, "SELECT ls_version, raw_key, ranking_key FROM served_queues WHERE project = ?", (project,)).fetchone()
        return None if row is None else ServedQueue(*row)

    def served_centroids(self, project: int, ls_version: str) -> np.ndarray | None:
        """(k, D) cluster centroids the served `ls_version` was written with; None without (or for another version)."""
        row = self._served_columns(project, ls_version, "centroids, centroid_dims")
        return None if row is None else np.frombuffer(bytes(row[0]), dtype=np.float32).reshape(-1, int(row[1]))

    def served_reference(self, project: int, ls_version: str) -> LabelledReference | None:
        """The labelled tasks the served `ls_version` was ranked against; None without (or for another version)."""
        row = self._served_columns(project, ls_version, "reference_ids, reference_scale")
        return None if row is None else LabelledReference.from_row(row[0], row[1])

    def served_rarity(self, project: int, ls_version: str) -> np.ndarray | None:
        """(C,) the class rarity a `+rare` policy ranked the served `ls_version` by; None without (or for another version)."""
        row = self._served_columns(project, ls_version, "class_rarity, ls_version")
        return None if row is None else np.frombuffer(bytes(row[0]), dtype=np.float64).copy()

    def _served_columns(self, project: int, ls_version: str, columns: str) -> tuple | None:
        """Two columns of the served queue's row if it is `ls_version` and the first is set; None otherwise."""
        with self._tx() as db:
            row = self._exec(db, f"SELECT {columns} FROM served_queues WHERE project = ? AND ls_version = ?", (project, ls_version)).fetchone()
        return None if row is None or row[0] is None else row

    def served_tasks(self, project: int, limit: int | None = None) -> ServedTasks:
        """The served queue's tasks by ascending score: all, or the first `limit` (its head)."""
        query = "SELECT task_id, usefulness, score FROM served_tasks WHERE project = ? ORDER BY score, task_id"
        params: tuple = (project,)
        if limit is not None:
            query, params = f"{query} LIMIT ?", (project, int(limit))
        with self._tx() as db:
            rows = self._exec(db, query, params).fetchall()
        return served_from_rows(rows)

    def served_unusable(self, project: int, limit: int, after: int = 0) -> list[int]:
        """Up to `limit` task ids of the served queue whose image could not be used (no usefulness), in id order from
        the first above `after`, then from the lowest (a caller that passes the last id it got goes round them all)."""
        query = "SELECT task_id FROM served_tasks WHERE project = ? AND usefulness IS NULL AND task_id > ? ORDER BY task_id LIMIT ?"
        with self._tx() as db:
            found = [int(row[0]) for row in self._exec(db, query, (project, int(after), int(limit))).fetchall()]
            if len(found) < limit and after > 0:
                more = self._exec(db, query, (project, 0, int(limit) - len(found))).fetchall()
                found += [int(row[0]) for row in more if int(row[0]) <= after]
        return found

    def served_last_task(self, project: int) -> int | None:
        """The greatest task id in the project's served queue; None when it has none."""
        with self._tx() as db:
            row = self._exec(db, "SELECT MAX(task_id) FROM served_tasks WHERE project = ?", (project,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def begin_served_write(self, project: int, ls_version: str) -> bool:
        """Mark the served queue as being written into, if it is still `ls_version`, before anything reaches LS.

        Until `add_served` or `rescore_served` records what was written (and
        clears the mark), the record does not match any queue: a sync that dies
        in between (killed, out of memory) makes the next one a full rewrite.
        -> whether it was `ls_version`.
        """
        with self._tx() as db:
            if not self._serves(db, project, ls_version):
                return False
            self._exec(
                db, "UPDATE served_queues SET ranking_key = ranking_key || ? WHERE project = ? AND ranking_key NOT LIKE ?",
                (WRITING_MARK, project, f"%{WRITING_MARK}"),
            )
        return True

    def rescore_served(
        self, project: int, ls_version: str, drop: Iterable[int], task_ids, scores, reference: LabelledReference | None = None
    ) -> bool:
        """Drop tasks from the served queue and give others new scores, if it is still `ls_version`. -> whether it was.

        `reference`: the labelled tasks the new scores were measured against, replacing the recorded ones.
        Clears the mark of `begin_served_write`.
        """
        drop = [(project, int(t)) for t in drop]
        updates = [(float(s), project, int(t)) for t, s in zip(np.asarray(task_ids).tolist(), np.asarray(scores, dtype=np.float64).tolist())]
        with self._tx() as db:
            if not self._serves(db, project, ls_version):
                return False
            self._execmany(db, "DELETE FROM served_tasks WHERE project = ? AND task_id = ?", drop)
            self._execmany(db, "UPDATE served_tasks SET score = ? WHERE project = ? AND task_id = ?", updates)
            if reference is not None:
                self._exec(
                    db, "UPDATE served_queues SET reference_ids = ?, reference_scale = ? WHERE project = ?", (*reference.to_row(), project)
                )
            self._written(db, project)
        return True

    def replace_served(
        self, project: int, queue: ServedQueue, task_ids, usefulness, scores, centroids: np.ndarray | None = None,
        reference: LabelledReference | None = None, rarity: np.ndarray | None = None,
    ) -> None:
        """Record a full sync's queue, replacing the last; with the (k, D) cluster centroids its predictions were
        written with, the labelled tasks it was ranked against and the (C,) class rarity it was weighted by, where it had them."""
        rows = served_rows(project, task_ids, usefulness, scores)
        blob, dims = (None, None) if centroids is None else (np.asarray(centroids, dtype=np.float32).tobytes(), int(np.shape(centroids)[1]))
        reference_ids, reference_scale = (None, None) if reference is None else reference.to_row()
        rarity_blob = None if rarity is None else np.asarray(rarity, dtype=np.float64).reshape(-1).tobytes()
        with self._tx() as db:
            self._forget(db, project)
            self._exec(
                db,
                "INSERT INTO served_queues (project, ls_version, raw_key, ranking_key, updated, centroids, centroid_dims, "
                "reference_ids, reference_scale, class_rarity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (project, queue.ls_version, queue.raw_key, queue.ranking_key, time.time(), blob, dims, reference_ids, reference_scale,
                 rarity_blob),
            )
            self._execmany(db, "INSERT INTO served_tasks (project, task_id, usefulness, score) VALUES (?, ?, ?, ?)", rows)

    def add_served(self, project: int, ls_version: str, task_ids, usefulness, scores) -> bool:
        """Add tasks to the served queue if it is still `ls_version`. -> whether it was (and they were added).

        Clears the mark of `begin_served_write`.
        """
        rows = served_rows(project, task_ids, usefulness, scores)
        with self._tx() as db:
            if not self._serves(db, project, ls_version):
                return False
            self._execmany(
                db,
                "INSERT INTO served_tasks (project, task_id, usefulness, score) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (project, task_id) DO UPDATE SET usefulness = excluded.usefulness, score = excluded.score",
                rows,
            )
            self._exec(db, "UPDATE served_queues SET updated = ? WHERE project = ?", (time.time(), project))
            self._written(db, project)
        return True

    def forget_served(self, project: int) -> None:
        """Drop the project's served record: its next sync rewrites the whole queue."""
        with self._tx() as db:
            self._forget(db, project)

    def _forget(self, db, project: int) -> None:
        self._exec(db, "DELETE FROM served_tasks WHERE project = ?", (project,))
        self._exec(db, "DELETE FROM served_queues WHERE project = ?", (project,))

    def _written(self, db, project: int) -> None:
        """Clear the mark of `begin_served_write` (inside the caller's transaction): the record says what LS serves."""
        self._exec(db, "UPDATE served_queues SET ranking_key = REPLACE(ranking_key, ?, '') WHERE project = ?", (WRITING_MARK, project))

    def _serves(self, db, project: int, ls_version: str) -> bool:
        """Whether the project's recorded queue is `ls_version` (inside the caller's transaction)."""
        row = self._exec(db, "SELECT ls_version FROM served_queues WHERE project = ?", (project,)).fetchone()
        return row is not None and row[0] == ls_version
