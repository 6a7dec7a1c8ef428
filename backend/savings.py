"""What the pre-annotations save, recorded per annotation and summed per model.

An annotation is compared with the prediction shown with it
(`annotation_edits`): the one LS says it was created from
(`parent_prediction`), else the task's latest prediction created before the
task was opened (the submit less its lead time). The record is kept in the detection store, so it outlives the
prediction version the sync deletes later. An `ANNOTATION_CREATED` or
`ANNOTATION_UPDATED` webhook records its task at once, `ANNOTATIONS_DELETED`
and `TASKS_DELETED` forget what they list; `ale savings --recompute` records
every annotated task again from Label Studio (an annotation LS has no shown
prediction for any more keeps its earlier record) and forgets the annotations
and tasks LS no longer has.
"""

from __future__ import annotations

import time

import logging
from dataclasses import dataclass
from datetime import timedelta

from .annotation_edits import EditCounts, EditRecord, compare_results
from .jobs import SYNC_VERSION_PREFIX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSavings:
    """The annotations made on one model's pre-annotations, summed."""

    model: str
    annotations: int
    counts: EditCounts
    mean_lead_time: float | None

    @property
    def accepted_share(self) -> float:
        """Shown boxes the annotators kept as they were."""
        return self.counts.accepted / self.counts.shown if self.counts.shown else 0.0

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "annotations": self.annotations,
            **self.counts.as_dict(),
            "accepted_share": round(self.accepted_share, 4),
            "mean_lead_time": self.mean_lead_time,
        }


def model_of(ls_version: str) -> str:
    """"ale:v0003-1a2b3c4d:20261202T..." -> "v0003-1a2b3c4d"; another version names itself."""
    if ls_version.startswith(SYNC_VERSION_PREFIX):
        return ls_version[len(SYNC_VERSION_PREFIX) :].rsplit(":", 1)[0]
    return ls_version


def task_records(annotations, predictions) -> list[EditRecord]:
    """A task's LS annotations and predictions (SDK objects) -> one record per submitted annotation that had a prediction shown."""
    by_id = {p.id: p for p in predictions}
    records = []
    for annotation in annotations:
        if annotation.was_cancelled:
            continue
        shown = by_id.get(annotation.parent_prediction)
        if shown is None and annotation.created_at is not None:
            # LS forgot what was shown (not recorded, or that version deleted since): the latest prediction that
            # existed when the task was opened, `lead_time` before the submit. One written later, by a sync that
            # ran while the annotator worked, was never shown: then nothing is recorded rather than a wrong record.
            opened = annotation.created_at - timedelta(seconds=float(annotation.lead_time or 0))
            before = [p for p in predictions if p.created_at is not None and p.created_at <= opened]
            shown = max(before, key=lambda p: (p.created_at, p.id), default=None)
        if shown is None:
            continue
        counts = compare_results(list(shown.result or []), list(annotation.result or []))
        records.append(EditRecord(int(annotation.id), int(annotation.task), str(shown.model_version or ""), counts, annotation.lead_time))
    return records


def record_task(rt, project: int, task_id: int) -> list[EditRecord]:
    """Compare every annotation of `task_id` with the prediction it was shown with, and store the result.

    The task's records of annotations LS no longer lists as submitted (deleted, or skipped since) go.
    """
    return record_listed(rt, project, [task_id])[1]


def record_listed(rt, project: int, task_ids: list[int] | None = None) -> tuple[set[int], list[EditRecord]]:
    """Record the annotations of `task_ids` (None: of every task with a submitted annotation) from one listing of
    their annotations and predictions, TASK_PAGE_SIZE tasks a request. -> (the tasks LS listed, the records).

    A task of `task_ids` LS no longer has (deleted meanwhile) keeps no records.
    """
    listed: set[int] = set()
    records: list[EditRecord] = []
    for task in rt.ls.task_annotations(project, task_ids):
        listed.add(task.id)
        found = task_records(task.annotations, task.predictions)
        rt.store.put_task_edits(project, task.id, found, [int(a.id) for a in task.annotations if not a.was_cancelled])
        records += found
    for gone in sorted({int(t) for t in task_ids or ()} - listed):
        rt.store.put_task_edits(project, gone, [], [])
    return listed, records


def record_annotations(project: int, task_id: int, *, runtime=None) -> dict:
    """The job an annotation webhook queues: record `task_id`'s annotations. -> {"task", "annotations"} recorded."""
    from .runtime import current_runtime

    records = record_task(runtime or current_runtime(), project, task_id)
    return {"task": int(task_id), "annotations": len(records)}


def record_tasks(project: int, task_ids: list[int], *, runtime=None) -> dict:
    """The job a bulk annotation webhook (ANNOTATIONS_CREATED) queues: record each task's annotations. -> {"tasks", "annotations"}."""
    from .runtime import current_runtime

    _, records = record_listed(runtime or current_runtime(), project, list(task_ids))
    return {"tasks": len(task_ids), "annotations": len(records)}


def recompute(rt, project: int) -> dict:
    """Record every task with a submitted annotation again, and forget the tasks LS no longer lists.

    -> {"tasks", "annotations"} recorded, "forgotten": rows of tasks no longer annotated (or deleted).
    A task counts with its first annotation, whether or not it has all the project asks for (overlap > 1).
    """
    started = time.time()
    listed, records = record_listed(rt, project)
    # only once LS has listed every task: a listing that failed half way forgets nothing
    forgotten = rt.store.keep_task_edits(project, listed, before=started)
    return {"tasks": len(listed), "annotations": len(records), "forgotten": forgotten}


def savings_by_model(store, project: int) -> list[ModelSavings]:
    """The project's recorded annotations summed per model, in order of first appearance (the store sums per version)."""
    totals: dict[str, list] = {}
    for version in store.edit_totals(project):
        total = totals.setdefault(model_of(version.ls_version), [0, EditCounts(), 0.0, 0])
        total[0] += version.annotations
        total[1] = total[1] + version.counts
        total[2] += version.lead_time_total
        total[3] += version.lead_times
    return [
        ModelSavings(model, n, counts, round(lead_total / timed, 2) if timed else None)
        for model, (n, counts, lead_total, timed) in totals.items()
    ]
