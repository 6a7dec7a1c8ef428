"""POST /webhook: what each Label Studio event does.

START_TRAINING queues one training per project; annotation events queue the comparison of the annotations with the
predictions shown (and count towards AUTO_TRAIN_AFTER); deletions forget what they list; TASKS_CREATED queues a sync.
Every id an event acts on is checked before anything is queued or changed.
"""

from __future__ import annotations

import json
import math
from typing import Callable

from flask import jsonify
from werkzeug.exceptions import ServiceUnavailable

from .errors import PayloadError
from .jobqueue import ACTIVE, QUEUE_SYNC, QUEUE_TRAIN
from .ls_format import MAX_LS_ID, ls_id
from .runtime import Runtime
from .settings import Settings

START_TRAINING = "START_TRAINING"
#: Seconds a Start Training waits for another one of the same project to finish queueing.
TRAIN_ENQUEUE_WAIT = 5.0
#: How long Redis remembers a project's latest train job for deduplication.
JOB_MEMORY_SECONDS = 24 * 60 * 60
TASKS_CREATED = "TASKS_CREATED"
ANNOTATION_CREATED = "ANNOTATION_CREATED"
#: LS's bulk form ("Create Annotations From Predictions"): `annotation` is a list.
ANNOTATIONS_CREATED = "ANNOTATIONS_CREATED"
ANNOTATION_UPDATED = "ANNOTATION_UPDATED"
#: Ids only, `annotations: [{"id": ...}]` (plural, whether one annotation was deleted or the Data Manager deleted many).
ANNOTATIONS_DELETED = "ANNOTATIONS_DELETED"
#: Ids only, `tasks: [{"id": ...}]`: their annotations went with them, and no ANNOTATIONS_DELETED says so.
TASKS_DELETED = "TASKS_DELETED"
ID_RULE = f"must be a positive whole number (at most {MAX_LS_ID})"


def event_action(body: dict) -> str:
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise PayloadError("'action' is missing: Label Studio webhooks send e.g. {\"action\": \"ANNOTATION_CREATED\"}")
    return action


def project_from_event(body: dict) -> int:
    project = body.get("project")
    if not isinstance(project, dict) or project.get("id") is None:
        raise PayloadError("webhook event has no project id: expected {\"project\": {\"id\": <int>, ...}}")
    return _checked_id(project["id"], "project.id")


def _checked_id(value, field: str) -> int:
    if ls_id(value) is None:
        shown = json.dumps(value)[:40] if value is None or isinstance(value, (bool, int, float, str)) else f"a JSON {type(value).__name__}"
        raise PayloadError(f"{field} {ID_RULE}, got {shown}; nothing was queued or changed")
    return value


class WebhookHandler:
    """Answers the events of POST /webhook. `jobs` returns the job queue (created on first use)."""

    def __init__(self, settings: Settings, runtime: Runtime, jobs: Callable):
        self.settings, self.runtime, self.jobs = settings, runtime, jobs
        self._training_jobs: dict[int, str] = {}  # embedded mode: project -> latest train job
        self._annotation_counts: dict[int, int] = {}  # embedded mode: new annotations since the last auto-training

    def handle(self, body: dict, action: str):
        if action == START_TRAINING:
            job_id, started = self.start_training(project_from_event(body))
            response = jsonify(status="queued" if started else "already training", action=action, job=job_id)
            response.status_code = 201 if started else 200
            return response
        if action == ANNOTATIONS_CREATED:
            project = project_from_event(body)
            listed = body.get("annotation") if isinstance(body.get("annotation"), list) else []
            made = [a for a in listed if isinstance(a, dict) and not a.get("was_cancelled")]
            recorded = self._record_many(project, made)
            if not made:
                return jsonify(status="ignored", action=action, reason="the event lists no submitted annotation")
            if self.settings.auto_train_after:
                return self._count_towards_training(project, len(made), action, savings=recorded)
            return jsonify(status="recording", action=action, savings=recorded)
        if action in (ANNOTATIONS_DELETED, TASKS_DELETED):
            return self._forget_deleted(body, action)
        recorded = self._record_savings(body) if action in (ANNOTATION_CREATED, ANNOTATION_UPDATED) else None
        if action == ANNOTATION_CREATED and self.settings.auto_train_after:
            project = project_from_event(body)
            annotation = body.get("annotation")
            if isinstance(annotation, dict) and annotation.get("was_cancelled"):
                # LS sends every Skip as ANNOTATION_CREATED: nothing was labelled
                return jsonify(status="ignored", action=action, reason="a skipped task is not a new annotation")
            return self._count_towards_training(project, 1, action, savings=recorded)
        if recorded is not None:
            return jsonify(status="recording", action=action, savings=recorded)
        if action == TASKS_CREATED:
            return self._sync_new_tasks(body, action)
        return jsonify(status="ignored", action=action)

    def start_training(self, project: int) -> tuple[str, bool]:
        """Enqueue one train job per project. -> (job id, whether a new job was created)."""
        from .training import train_project

        runtime = self.runtime
        with runtime.lock(f"train-enqueue:{project}", wait=TRAIN_ENQUEUE_WAIT) as acquired:
            if not acquired:  # unlocked, two presses could each queue a training
                raise ServiceUnavailable(
                    f"another Start Training of project {project} is being queued and has not finished within "
                    f"{TRAIN_ENQUEUE_WAIT:g} s; nothing was queued. Press Start Training again in a moment",
                    retry_after=math.ceil(TRAIN_ENQUEUE_WAIT),
                )
            running = self._training_jobs.get(project) if runtime.redis is None else runtime.redis.get(f"ale:train:{project}")
            running = running.decode() if isinstance(running, bytes) else running
            info = self.jobs().info(running) if running else None
            if info is not None and info.status in ACTIVE:
                return running, False
            job_id = self.jobs().enqueue(QUEUE_TRAIN, train_project, project)
            self._training_jobs[project] = job_id
            if runtime.redis is not None:
                runtime.redis.set(f"ale:train:{project}", job_id, ex=JOB_MEMORY_SECONDS)
            return job_id, True

    def _count_new_annotations(self, project: int, count: int = 1) -> int:
        if self.runtime.redis is not None:
            return int(self.runtime.redis.incrby(f"ale:new-annotations:{project}", count))
        self._annotation_counts[project] = self._annotation_counts.get(project, 0) + count
        return self._annotation_counts[project]

    def _reset_annotation_count(self, project: int) -> None:
        if self.runtime.redis is not None:
            self.runtime.redis.delete(f"ale:new-annotations:{project}")
        self._annotation_counts.pop(project, None)

    def _record_savings(self, body: dict) -> str | None:
        """Queue the comparison of the event's task's annotations with the predictions shown. -> job id, None without a task."""
        from .savings import record_annotations

        project = project_from_event(body)
        task = body.get("task") if isinstance(body.get("task"), dict) else {}
        annotation = body.get("annotation") if isinstance(body.get("annotation"), dict) else {}
        field, task_id = ("task.id", task["id"]) if task.get("id") is not None else ("annotation.task", annotation.get("task"))
        if task_id is None:
            return None
        return self.jobs().enqueue(QUEUE_SYNC, record_annotations, project, _checked_id(task_id, field), retry=True)

    def _record_many(self, project: int, annotations: list[dict]) -> str | None:
        """One job recording the tasks of a bulk event's annotations. -> its id, None without a task."""
        from .savings import record_tasks

        task_ids = sorted({
            _checked_id(a["task"], f"annotation[{i}].task") for i, a in enumerate(annotations) if a.get("task") is not None
        })
        return self.jobs().enqueue(QUEUE_SYNC, record_tasks, project, task_ids, retry=True) if task_ids else None

    def _count_towards_training(self, project: int, count: int, action: str, savings: str | None):
        """Count `count` new annotations; once AUTO_TRAIN_AFTER are in, start a training. -> the webhook's answer."""
        if self._count_new_annotations(project, count) < self.settings.auto_train_after:
            return jsonify(status="counted", action=action, savings=savings)
        job_id, started = self.start_training(project)
        if started:
            # Only a training queued now takes the counted annotations. One already running exported its tasks
            # before them: they keep counting, and the first annotation after it ends starts the next one.
            self._reset_annotation_count(project)
        return jsonify(status="training" if started else "already training", action=action, job=job_id, savings=savings)

    def _forget_deleted(self, body: dict, action: str):
        """Forget the savings records of the annotations (ANNOTATIONS_DELETED) or tasks (TASKS_DELETED) the event lists,
        and a deleted task's stored detections (the store would otherwise keep them as long as their model's key)."""
        key = "annotations" if action == ANNOTATIONS_DELETED else "tasks"
        listed = body.get(key) if isinstance(body.get(key), list) else []
        ids = sorted({
            _checked_id(item.get("id") if isinstance(item, dict) else item, f"{key}[{i}].id") for i, item in enumerate(listed)
        })
        if not ids:  # LS sends a bare event when an annotation is turned back into a draft: `ale savings --recompute` forgets it
            return jsonify(status="ignored", action=action)
        # LS's "delete every task" API sends TASKS_DELETED with no project: task ids are unique across projects
        project = None if action == TASKS_DELETED and body.get("project") is None else project_from_event(body)
        store = self.runtime.store
        if action == ANNOTATIONS_DELETED:
            return jsonify(status="forgotten", action=action, records=store.delete_edits(project, ids))
        forgotten = store.delete_task_edits(project, ids)
        return jsonify(status="forgotten", action=action, records=forgotten, detections=store.delete_tasks(project, ids))

    def _sync_new_tasks(self, body: dict, action: str):
        from .jobs import request_sync

        project = project_from_event(body)
        listed = body.get("tasks")
        if listed is not None and not isinstance(listed, list):
            raise PayloadError(
                f"'tasks' must be a list of task objects, e.g. {{\"tasks\": [{{\"id\": 1}}]}}, got {type(listed).__name__}"
            )
        # The sync predicts the new tasks itself (or fans them out to the predict workers) under the project's
        # lock: a prediction job of its own beside it would predict the same tasks a second time on another worker.
        # A burst of imports (one webhook per request) is covered by the one sync still in the queue.
        sync, queued_now = request_sync(self.jobs(), self.runtime, project)
        return jsonify(status="queued", action=action, jobs=[sync], sync="queued" if queued_now else "coalesced")
