"""The detection store's record of the queue a project is served: its version, what ordered it, each task's score in it.

`served_queues` holds one row per project (the prediction version a sync
last switched Label Studio to, its raw output and ranking keys, the cluster
centroids its predictions were written with, the labelled tasks it was ranked
against, the class rarity a `+rare` policy weighted it by, the greatest task
id ever written into it); `served_tasks` each task's usefulness and LS score
in it. The tables themselves are created with the store's others
(`detection_store.TABLES`); `last_task` is added here to a store made before it.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .detection_rows import LabelledReference, ServedQueue, ServedTasks, served_from_rows, served_rows


#: Joined to a served queue's ranking key while a sync writes into its version (`begin_served_write`): a sync
#: killed before it records what it wrote leaves a record that is no longer current, so the next sync rewrites
#: the queue instead of adding the same tasks a second time.
WRITING_MARK = "+writing"


@dataclass(frozen=True)
class ServedRecord:
    """What a served version was ranked and written with, each None where it had none (`replace_served`)."""

    reference: LabelledReference | None  # the labelled tasks it was ranked against
    rarity: np.ndarray | None  # (C,) the class rarity a `+rare` policy weighted it by
    centroids: np.ndarray | None  # (k, D) the cluster centroids its predictions were written with


class ServedQueueStoreMixin:
    """Reads and writes of the served queue, in the store's transactions (`_tx`, `_exec`, `_execmany`)."""

    def served_queue(self, project: int) -> ServedQueue | None:
        with self._tx() as db:
            row = self._exec(db, "SELECT ls_version, raw_key, ranking_key FROM served_queues WHERE project = ?", (project,)).fetchone()
        return None if row is None else ServedQueue(*row)

    def served_record(self, project: int, ls_version: str) -> ServedRecord | None:
        """The reference, rarity and centroids of the served `ls_version`, in one read; None for another version."""
        columns = "reference_ids, reference_scale, class_rarity, centroids, centroid_dims"
        with self._tx() as db:
            row = self._exec(db, f"SELECT {columns} FROM served_queues WHERE project = ? AND ls_version = ?", (project, ls_version)).fetchone()
        if row is None:
            return None
        ids, scale, rarity, centroids, dims = row
        return ServedRecord(
            None if ids is None else LabelledReference.from_row(ids, scale),
            None if rarity is None else np.frombuffer(bytes(rarity), dtype=np.float64).copy(),
            None if centroids is None else np.frombuffer(bytes(centroids), dtype=np.float32).reshape(-1, int(dims)),
        )

    def served_centroids(self, project: int, ls_version: str) -> np.ndarray | None:
        """(k, D) cluster centroids the served `ls_version` was written with; None without (or for another version)."""
        record = self.served_record(project, ls_version)
        return None if record is None else record.centroids

    def served_reference(self, project: int, ls_version: str) -> LabelledReference | None:
        """The labelled tasks the served `ls_version` was ranked against; None without (or for another version)."""
        record = self.served_record(project, ls_version)
        return None if record is None else record.reference

    def served_rarity(self, project: int, ls_version: str) -> np.ndarray | None:
        """(C,) the class rarity a `+rare` policy ranked the served `ls_version` by; None without (or for another version)."""
        record = self.served_record(project, ls_version)
        return None if record is None else record.rarity

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

    def served_gaps(self, project: int, usefulness) -> tuple[np.ndarray, np.ndarray]:
        """(n,) low and high scores of the gap each usefulness goes into (`queue_update.gaps_of`), without reading the
        queue: right after the last served task (by score) at least as useful, before the next; 0 and 1 at the ends.

        Two queries per distinct value, each a scan of the project's rows: for a few new tasks, not for many.
        """
        values = np.asarray(usefulness, dtype=np.float64)
        low, high = np.zeros(values.shape), np.ones(values.shape)
        with self._tx() as db:
            for value in np.unique(values):
                # an unusable image (-inf) goes after every task, those without usefulness (NULL) too
                useful = "" if np.isneginf(value) else " AND usefulness >= ?"
                params = (project,) if np.isneginf(value) else (project, float(value))
                after = self._exec(db, f"SELECT MAX(score) FROM served_tasks WHERE project = ?{useful}", params).fetchone()[0]
                before = self._exec(
                    db, "SELECT MIN(score) FROM served_tasks WHERE project = ? AND score > ?", (project, -1.0 if after is None else after)
                ).fetchone()[0]
                low[values == value] = 0.0 if after is None else after
                high[values == value] = 1.0 if before is None else before
        return low, high

    def served_last_task(self, project: int) -> int | None:
        """The greatest task id ever written into the project's served queue (labelled tasks dropped since count):
        the tasks above it are those created since. None without a served queue."""
        self._served_migrated()
        with self._tx() as db:
            row = self._exec(db, "SELECT last_task FROM served_queues WHERE project = ?", (project,)).fetchone()
            if row is not None and row[0] is None:
                # written by a release before the column (a shared store during an upgrade): its greatest served task
                row = self._exec(db, "SELECT MAX(task_id) FROM served_tasks WHERE project = ?", (project,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def begin_served_write(self, project: int, ls_version: str) -> bool:
        """Mark the served queue as being written into, if it is still `ls_version`, before anything reaches LS.

        Until `add_served` or `rescore_served` records what was written (and
        clears the mark), the record does not match any queue: a sync that dies
        in between (killed, out of memory) makes the next one a full rewrite.
        -> whether it was `ls_version`.
        """
        with self._write_tx() as db:
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
        with self._write_tx() as db:
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
        self._served_migrated()
        with self._write_tx() as db:
            # the last record's, if greater: tasks up to it were listed by a sync, and those above this queue's are labelled
            found = self._exec(db, f"SELECT last_task FROM served_queues WHERE project = ?{_for_update(db)}", (project,)).fetchone()
            last = max([r[1] for r in rows] + ([] if found is None or found[0] is None else [int(found[0])]), default=None)
            self._forget(db, project)
            self._exec(
                db,
                "INSERT INTO served_queues (project, ls_version, raw_key, ranking_key, updated, centroids, centroid_dims, "
                "reference_ids, reference_scale, class_rarity, last_task) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (project, queue.ls_version, queue.raw_key, queue.ranking_key, time.time(), blob, dims, reference_ids, reference_scale,
                 rarity_blob, last),
            )
            self._execmany(db, "INSERT INTO served_tasks (project, task_id, usefulness, score) VALUES (?, ?, ?, ?)", rows)

    def add_served(self, project: int, ls_version: str, task_ids, usefulness, scores) -> bool:
        """Add tasks to the served queue if it is still `ls_version`. -> whether it was (and they were added).

        Clears the mark of `begin_served_write`.
        """
        rows = served_rows(project, task_ids, usefulness, scores)
        last = max((row[1] for row in rows), default=-1)
        self._served_migrated()
        with self._write_tx() as db:
            if not self._serves(db, project, ls_version):
                return False
            self._execmany(
                db,
                "INSERT INTO served_tasks (project, task_id, usefulness, score) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (project, task_id) DO UPDATE SET usefulness = excluded.usefulness, score = excluded.score",
                rows,
            )
            # never lowered: `rescore_served` drops labelled tasks, and the tasks above it must stay those created since
            higher = "CASE WHEN last_task IS NULL OR last_task < ? THEN ? ELSE last_task END"
            self._exec(db, f"UPDATE served_queues SET updated = ?, last_task = {higher} WHERE project = ?",
                       (time.time(), last, last, project))
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
        """Whether the project's recorded queue is `ls_version` (inside the caller's `_write_tx`; PostgreSQL locks the row)."""
        row = self._exec(db, f"SELECT ls_version FROM served_queues WHERE project = ?{_for_update(db)}", (project,)).fetchone()
        return row is not None and row[0] == ls_version

    def _write_tx(self):
        """A transaction that reads the record, then writes by what it read.

        SQLite: BEGIN IMMEDIATE takes the write lock first, waiting its busy
        timeout for it. A deferred transaction that reads first cannot take it
        once another connection has committed meanwhile (WAL), and fails at once
        with "database is locked". PostgreSQL: its reads lock their rows (`_for_update`).
        """
        return self._exclusive() if self.placeholder == "?" else self._tx()

    def _served_migrated(self) -> None:
        """Add `served_queues.last_task` to a store made before it, once per store object, set to what the
        served tasks say (the greatest of them)."""
        if getattr(self, "_has_last_task", False):
            return
        with self._exclusive() as db:  # processes opening an older store add it one at a time
            if isinstance(db, sqlite3.Connection):
                missing = "last_task" not in {row[1] for row in db.execute("PRAGMA table_info(served_queues)")}
            else:
                found = db.execute(
                    "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'served_queues' "
                    "AND column_name = 'last_task'"
                )
                missing = found.fetchone() is None
            if missing:
                self._exec(db, "ALTER TABLE served_queues ADD COLUMN last_task BIGINT")
                greatest = "SELECT MAX(task_id) FROM served_tasks WHERE served_tasks.project = served_queues.project"
                self._exec(db, f"UPDATE served_queues SET last_task = ({greatest})")
        self._has_last_task = True


def _for_update(db) -> str:
    """What locks the rows a `_write_tx` reads: nothing on SQLite (its BEGIN IMMEDIATE locked the database), FOR UPDATE on PostgreSQL."""
    return "" if isinstance(db, sqlite3.Connection) else " FOR UPDATE"
