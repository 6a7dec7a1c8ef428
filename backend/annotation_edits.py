"""How much the pre-annotations saved: a submitted annotation compared with the prediction the annotator was shown.

Each shown box is matched one-to-one with a submitted box of IoU >= MATCH_IOU
(greedily, by IoU, highest first; pairs of the same label before pairs of two
labels, so nearby boxes of two classes are not taken for swapped labels). A matched box is *accepted* when it kept
its label and moved by less than 1 - ACCEPT_IOU (IoU >= ACCEPT_IOU), *moved*
when it kept its label but moved more, *relabelled* when its label changed.
Shown boxes left unmatched were *deleted*; submitted boxes left unmatched were
*added* (drawn new). Coordinates are LS's percentages: IoU does not change
when both axes are scaled, so no image size is needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

from .boxes import box_iou
from .ls_format import rectangle_to_xyxy

#: A submitted box this close to a shown one is the shown box, kept.
ACCEPT_IOU = 0.9
#: Below this overlap a submitted box is not the shown one at all.
MATCH_IOU = 0.5
CATEGORIES = ("accepted", "moved", "relabelled", "deleted", "added")
#: Ids per DELETE statement: SQLite builds before 3.32 take at most 999 parameters.
DELETE_BATCH = 500


@dataclass(frozen=True)
class EditCounts:
    """Boxes of one annotation by what became of them (or, summed, of many)."""

    accepted: int = 0
    moved: int = 0
    relabelled: int = 0
    deleted: int = 0
    added: int = 0

    def __add__(self, other: "EditCounts") -> "EditCounts":
        return EditCounts(*(getattr(self, c) + getattr(other, c) for c in CATEGORIES))

    @property
    def shown(self) -> int:
        """Boxes the prediction showed."""
        return self.accepted + self.moved + self.relabelled + self.deleted

    @property
    def submitted(self) -> int:
        return self.accepted + self.moved + self.relabelled + self.added

    @property
    def edited(self) -> int:
        """Boxes the annotator had to draw, fix or remove: all but the accepted ones."""
        return self.moved + self.relabelled + self.deleted + self.added

    @property
    def mistakes(self) -> int:
        """The shown boxes' errors at mAP50's standard: a wrong label, a false box, a missed object (moved boxes match)."""
        return self.relabelled + self.deleted + self.added

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def compare_boxes(shown_xyxy, shown_labels, submitted_xyxy, submitted_labels) -> EditCounts:
    """(n, 4) shown boxes and (n,) labels, (m, 4) submitted boxes and (m,) labels -> what became of them."""
    shown_xyxy = np.asarray(shown_xyxy, dtype=np.float64).reshape(-1, 4)
    submitted_xyxy = np.asarray(submitted_xyxy, dtype=np.float64).reshape(-1, 4)
    shown_labels, submitted_labels = list(shown_labels), list(submitted_labels)
    if len(shown_labels) != len(shown_xyxy) or len(submitted_labels) != len(submitted_xyxy):
        raise ValueError("each box needs one label: shown and submitted boxes and labels must have matching lengths")
    n, m = len(shown_xyxy), len(submitted_xyxy)
    counts = {c: 0 for c in CATEGORIES}
    if n and m:
        iou = box_iou(shown_xyxy, submitted_xyxy)
        # Pairs that kept their label first: a bird on its nest, both nudged, is two moved boxes, not two
        # swapped labels because the bird's box now overlaps the nest's more.
        pairs = sorted(
            ((iou[i, j], i, j) for i in range(n) for j in range(m) if iou[i, j] >= MATCH_IOU),
            key=lambda p: (shown_labels[p[1]] != submitted_labels[p[2]], -p[0], p[1], p[2]),
        )
        used_shown, used_submitted = set(), set()
        for overlap, i, j in pairs:
            if i in used_shown or j in used_submitted:
                continue
            used_shown.add(i)
            used_submitted.add(j)
            if shown_labels[i] != submitted_labels[j]:
                counts["relabelled"] += 1
            elif overlap >= ACCEPT_IOU:
                counts["accepted"] += 1
            else:
                counts["moved"] += 1
        matched = len(used_shown)
    else:
        matched = 0
    counts["deleted"] = n - matched
    counts["added"] = m - matched
    return EditCounts(**counts)


def compare_results(shown: list[dict], submitted: list[dict]) -> EditCounts:
    """LS results of the prediction shown and of the annotation submitted (rectangles only) -> what became of them."""
    a, a_labels = _boxes(shown)
    b, b_labels = _boxes(submitted)
    return compare_boxes(a, a_labels, b, b_labels)


def _boxes(results: list[dict]) -> tuple[np.ndarray, list[str]]:
    boxes, labels = [], []
    for result in results or []:
        if result.get("type") != "rectanglelabels":
            continue
        # in percent of the image: the same frame for both sides, whatever sizes they carry (a rotated box is
        # turned in the image's own pixels, then scaled back)
        width, height = float(result.get("original_width") or 100), float(result.get("original_height") or 100)
        box, label = rectangle_to_xyxy({**result, "original_width": width, "original_height": height})
        boxes.append(box * np.array([100 / width, 100 / height, 100 / width, 100 / height]))
        labels.append(label)
    return np.array(boxes).reshape(-1, 4), labels


EDITS_TABLE = """CREATE TABLE IF NOT EXISTS annotation_edits (
    project BIGINT NOT NULL,
    annotation_id BIGINT NOT NULL,
    task_id BIGINT NOT NULL,
    ls_version TEXT NOT NULL,
    accepted INTEGER NOT NULL,
    moved INTEGER NOT NULL,
    relabelled INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    added INTEGER NOT NULL,
    lead_time DOUBLE PRECISION,
    updated DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (project, annotation_id)
)"""


@dataclass(frozen=True)
class EditRecord:
    """One submitted annotation against the prediction shown with it (`ls_version`: that prediction's version)."""

    annotation_id: int
    task_id: int
    ls_version: str
    counts: EditCounts
    lead_time: float | None


@dataclass(frozen=True)
class VersionEdits:
    """The recorded annotations shown one prediction version, summed (`first_annotation`: the least annotation id)."""

    ls_version: str
    first_annotation: int
    annotations: int
    counts: EditCounts
    lead_time_total: float
    lead_times: int  # annotations with a lead time


class EditStoreMixin:
    """The detection store's table of annotation edits: one row per annotation, replaced when it is updated, deleted with it."""

    def put_edits(self, project: int, records: list[EditRecord]) -> None:
        with self._tx() as db:
            self._put_edits(db, project, records)

    def put_task_edits(self, project: int, task_id: int, records: list[EditRecord], listed: Iterable[int]) -> int:
        """Store a task's records and forget its annotations missing from `listed`, in one transaction. -> rows forgotten.

        listed: the ids of every submitted annotation LS lists for the task now. One listed without a record
        (LS no longer has the prediction it was shown) keeps the row it has.
        """
        listed = {int(a) for a in listed}
        with self._tx() as db:
            found = self._exec(db, "SELECT annotation_id FROM annotation_edits WHERE project = ? AND task_id = ?", (project, int(task_id)))
            gone = sorted({int(r[0]) for r in found.fetchall()} - listed)
            forgotten = self._delete_edits(db, project, "annotation_id", gone)
            self._put_edits(db, project, records)
        return forgotten

    def delete_edits(self, project: int, annotation_ids: Iterable[int]) -> int:
        """Forget these annotations (deleted in LS). -> rows deleted."""
        with self._tx() as db:
            return self._delete_edits(db, project, "annotation_id", sorted({int(a) for a in annotation_ids}))

    def delete_task_edits(self, project: int | None, task_ids: Iterable[int]) -> int:
        """Forget every annotation of these tasks (deleted in LS); project None: in any project. -> rows deleted."""
        with self._tx() as db:
            return self._delete_edits(db, project, "task_id", sorted({int(t) for t in task_ids}))

    def keep_task_edits(self, project: int, task_ids: Iterable[int], before: float) -> int:
        """Forget the annotations of every task but `task_ids` recorded before `before` (a time.time()). -> rows deleted.

        A row written since `before` stays: a webhook recorded it while LS was being listed.
        """
        keep = {int(t) for t in task_ids}
        with self._tx() as db:
            found = self._exec(db, "SELECT DISTINCT task_id FROM annotation_edits WHERE project = ? AND updated < ?", (project, before))
            gone = sorted({int(r[0]) for r in found.fetchall()} - keep)
            return self._delete_edits(db, project, "task_id", gone, before)

    def _put_edits(self, db, project: int, records: list[EditRecord]) -> None:
        import time

        rows = [
            (project, r.annotation_id, r.task_id, r.ls_version, *(getattr(r.counts, c) for c in CATEGORIES), r.lead_time, time.time())
            for r in records
        ]
        columns = "project, annotation_id, task_id, ls_version, accepted, moved, relabelled, deleted, added, lead_time, updated"
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns.split(", ")[2:])
        self._execmany(
            db,
            f"INSERT INTO annotation_edits ({columns}) VALUES ({', '.join('?' * 11)}) "
            f"ON CONFLICT (project, annotation_id) DO UPDATE SET {updates}",
            rows,
        )

    def _delete_edits(self, db, project: int | None, column: str, ids: list[int], before: float | None = None) -> int:
        """Delete the project's rows (project None: any project's) whose `column` is one of `ids` (and, given `before`,
        written before it), in the caller's transaction."""
        deleted = 0
        age = "" if before is None else " AND updated < ?"
        where, scope = ("project = ? AND ", (project,)) if project is not None else ("", ())
        for start in range(0, len(ids), DELETE_BATCH):  # a bounded number of parameters per statement
            batch = ids[start : start + DELETE_BATCH]
            params = (*scope, *batch) + (() if before is None else (before,))
            found = self._exec(db, f"DELETE FROM annotation_edits WHERE {where}{column} IN ({', '.join('?' * len(batch))}){age}", params)
            deleted += max(found.rowcount, 0)
        return deleted

    def edits(self, project: int) -> list[EditRecord]:
        """The project's recorded annotations, by annotation id."""
        with self._tx() as db:
            rows = self._exec(
                db,
                "SELECT annotation_id, task_id, ls_version, accepted, moved, relabelled, deleted, added, lead_time "
                "FROM annotation_edits WHERE project = ? ORDER BY annotation_id",
                (project,),
            ).fetchall()
        return [EditRecord(int(r[0]), int(r[1]), str(r[2]), EditCounts(*(int(v) for v in r[3:8])), r[8]) for r in rows]

    def edit_totals(self, project: int) -> list[VersionEdits]:
        """The project's recorded annotations summed per prediction version, in order of first annotation.

        Summed by the database: one row per version read, however many annotations.
        """
        sums = ", ".join(f"SUM({c})" for c in CATEGORIES)
        with self._tx() as db:
            rows = self._exec(
                db,
                f"SELECT ls_version, MIN(annotation_id), COUNT(*), {sums}, SUM(lead_time), COUNT(lead_time) "
                "FROM annotation_edits WHERE project = ? GROUP BY ls_version ORDER BY MIN(annotation_id)",
                (project,),
            ).fetchall()
        return [
            VersionEdits(str(r[0]), int(r[1]), int(r[2]), EditCounts(*(int(v) for v in r[3:8])), float(r[8] or 0.0), int(r[9]))
            for r in rows
        ]
