"""The Flask app: Label Studio's ML-backend protocol.

Routes: GET /health, POST /setup, POST /predict, POST /webhook, GET /versions, GET /ui (admin page),
GET /metrics. `create_app(settings)` builds it; nothing happens at import.
"""

from __future__ import annotations

import base64
import hmac
import logging
import threading
from typing import Callable

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException, NotFound, RequestEntityTooLarge, ServiceUnavailable

from . import __version__
from .adapters import UNTRAINED_NOTE, Adapter, check_policy_fits, is_trained, load_adapter
from .errors import AdapterError, AleError, PayloadError
from .jobqueue import ACTIVE, QUEUE_SYNC, QUEUE_TRAIN, make_job_queue
from .ls_client import LabelStudioClient
from .ls_format import match_labels, parse_label_config
from .media import MediaFetcher
from .predictor import Predictor
from .runtime import Runtime
from .settings import Settings

log = logging.getLogger(__name__)

#: Largest request body accepted; a /predict for thousands of tasks is far below it.
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
#: Seconds a client is told to wait before retrying while Redis is down.
REDIS_RETRY_AFTER = 30


class ModelHolder:
    """Loads the adapter once, on first use, shared by all request threads."""

    def __init__(self, factory: Callable[[], Adapter]):
        self._factory = factory
        self._adapter: Adapter | None = None
        self._error: str | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._adapter is not None

    def get(self) -> Adapter:
        if self._adapter is None:
            with self._lock:
                if self._adapter is None:
                    try:
                        self._adapter = self._factory()
                        self._error = None
                    except AleError as exc:
                        self._error = str(exc)
                        raise
        return self._adapter

    def warm(self) -> threading.Thread:
        """Load in the background so the first request does not wait."""

        def run():
            try:
                self.get()
            except Exception:  # reported on first request and in /health
                log.exception("model failed to load")

        thread = threading.Thread(target=run, name="model-warmup", daemon=True)
        thread.start()
        return thread

    @property
    def error(self) -> str | None:
        return self._error


class Metrics:
    """Per-process counters served at /metrics."""

    def __init__(self):
        self._lock = threading.Lock()
        self.values = {
            "predict_requests": 0,
            "tasks_predicted": 0,
            "tasks_failed": 0,
            "predict_seconds_total": 0.0,
            "webhooks": 0,
            "errors_4xx": 0,
            "errors_5xx": 0,
        }

    def add(self, **increments) -> None:
        with self._lock:
            for key, value in increments.items():
                self.values[key] += value

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self.values)


def create_app(
    settings: Settings,
    *,
    adapter_factory: Callable[[], Adapter] | None = None,
    ls_client: LabelStudioClient | None = None,
    warm: bool = False,
) -> Flask:
    """Build the backend app. `adapter_factory` defaults to the configured entry point."""
    app = Flask("label_studio_ale")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    if ls_client is None and settings.label_studio_api_key:
        ls_client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key)
    holder = ModelHolder(adapter_factory or (lambda: load_adapter(settings)))
    fetcher = MediaFetcher(settings, ls_client)
    metrics = Metrics()
    label_configs: dict[str, str] = {}  # project id -> label config seen at /setup
    runtime = Runtime(settings, ls=ls_client, adapter_factory=holder.get)
    job_queue = None  # created on first use: the embedded one starts a thread

    def jobs():
        nonlocal job_queue
        if job_queue is None:
            job_queue = make_job_queue(runtime)
        return job_queue

    training_jobs: dict[int, str] = {}  # embedded mode: project -> latest train job

    annotation_counts: dict[int, int] = {}  # embedded mode: new annotations since the last auto-training

    def _start_training(project: int) -> tuple[str, bool]:
        """Enqueue one train job per project. -> (job id, whether a new job was created)."""
        from .training import train_project

        with runtime.lock(f"train-enqueue:{project}", wait=TRAIN_ENQUEUE_WAIT) as acquired:
            if not acquired:  # unlocked, two presses could each queue a training
                raise ServiceUnavailable(
                    f"another Start Training of project {project} is being queued and has not finished within "
                    f"{TRAIN_ENQUEUE_WAIT:g} s; nothing was queued. Press Start Training again in a moment"
                )
            running = training_jobs.get(project) if runtime.redis is None else runtime.redis.get(f"ale:train:{project}")
            running = running.decode() if isinstance(running, bytes) else running
            info = jobs().info(running) if running else None
            if info is not None and info.status in ACTIVE:
                return running, False
            job_id = jobs().enqueue(QUEUE_TRAIN, train_project, project)
            training_jobs[project] = job_id
            if runtime.redis is not None:
                runtime.redis.set(f"ale:train:{project}", job_id, ex=JOB_MEMORY_SECONDS)
            return job_id, True

    def _count_new_annotations(project: int, count: int = 1) -> int:
        if runtime.redis is not None:
            return int(runtime.redis.incrby(f"ale:new-annotations:{project}", count))
        annotation_counts[project] = annotation_counts.get(project, 0) + count
        return annotation_counts[project]

    def _record_savings(body: dict) -> str | None:
        """Queue the comparison of the event's task's annotations with the predictions shown. -> job id, None without a task."""
        from .savings import record_annotations

        project = _project_from_event(body)
        task = body.get("task") if isinstance(body.get("task"), dict) else {}
        annotation = body.get("annotation") if isinstance(body.get("annotation"), dict) else {}
        task_id = task.get("id", annotation.get("task"))
        if not isinstance(task_id, int):
            return None
        return jobs().enqueue(QUEUE_SYNC, record_annotations, project, task_id, retry=True)

    def _record_many(project: int, annotations: list[dict]) -> str | None:
        """One job recording the tasks of a bulk event's annotations. -> its id, None without a task."""
        from .savings import record_tasks

        task_ids = sorted({a["task"] for a in annotations if isinstance(a.get("task"), int)})
        return jobs().enqueue(QUEUE_SYNC, record_tasks, project, task_ids, retry=True) if task_ids else None

    def _count_towards_training(project: int, count: int, action: str, savings: str | None):
        """Count `count` new annotations; once AUTO_TRAIN_AFTER are in, start a training. -> the webhook's answer."""
        if _count_new_annotations(project, count) < settings.auto_train_after:
            return jsonify(status="counted", action=action, savings=savings)
        job_id, started = _start_training(project)
        if started:
            # Only a training queued now takes the counted annotations. One already running exported its tasks
            # before them: they keep counting, and the first annotation after it ends starts the next one.
            _reset_annotation_count(project)
        return jsonify(status="training" if started else "already training", action=action, job=job_id, savings=savings)

    def _forget_deleted(body: dict, action: str):
        """Forget the savings records of the annotations (ANNOTATIONS_DELETED) or tasks (TASKS_DELETED) the event lists,
        and a deleted task's stored detections (the store would otherwise keep them as long as their model's key)."""
        key = "annotations" if action == ANNOTATIONS_DELETED else "tasks"
        listed = body.get(key) if isinstance(body.get(key), list) else []
        ids = sorted({item["id"] for item in listed if isinstance(item, dict) and isinstance(item.get("id"), int)})
        if not ids:  # LS sends a bare event when an annotation is turned back into a draft: `ale savings --recompute` forgets it
            return jsonify(status="ignored", action=action)
        project = _project_from_event(body)
        if action == ANNOTATIONS_DELETED:
            forgotten = runtime.store.delete_edits(project, ids)
        else:
            forgotten = runtime.store.delete_task_edits(project, ids)
            detections = runtime.store.delete_tasks(project, ids)
            return jsonify(status="forgotten", action=action, records=forgotten, detections=detections)
        return jsonify(status="forgotten", action=action, records=forgotten)

    def _reset_annotation_count(project: int) -> None:
        if runtime.redis is not None:
            runtime.redis.delete(f"ale:new-annotations:{project}")
        annotation_counts.pop(project, None)

    def _adapter(project: str | None) -> Adapter:
        number = _project_number(project)
        return holder.get() if number is None else runtime.adapter_for(number)

    app.extensions["ale"] = {"settings": settings, "model": holder, "metrics": metrics, "runtime": runtime, "jobs": jobs}
    if warm:
        holder.warm()

    @app.before_request
    def require_basic_auth():
        if not settings.basic_auth_user or request.path == "/health":
            return None
        if _basic_auth_ok(request.headers.get("Authorization", ""), settings):
            return None
        if request.path == "/webhook":  # LS sends webhooks without the model connection's credentials
            log.warning(
                "a webhook without Basic Auth was refused: in Label Studio, add the header 'Authorization: Basic ...' "
                "to the project's webhook to this backend (Settings > Webhooks)"
            )
        response = jsonify(error="authentication required: configure Basic Auth on the ML backend in Label Studio")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="label-studio-ale"'
        return response

    @app.get("/health")
    def health():
        return jsonify(
            status="UP",
            model_class=settings.adapter,
            model_loaded=holder.loaded,
            model_error=holder.error,
            version=__version__,
        )

    @app.post("/setup")
    def setup():
        body = _json_object()
        schema = body.get("schema")
        config = parse_label_config(schema)
        project = _project_id(body.get("project"))
        adapter = _adapter(project)
        match_labels(adapter.classes, config)
        check_policy_fits(adapter, settings.policy)
        if project:
            label_configs[project] = schema
            if runtime.redis is not None and _project_number(project) is not None:
                from redis.exceptions import RedisError

                from .jobs import projects_key

                try:
                    runtime.redis.sadd(projects_key(settings.adapter), project)
                except RedisError as exc:  # the registry only feeds the scheduled sync: serve anyway
                    log.warning("project %s not registered for scheduled syncs (Redis unavailable: %s)", project, type(exc).__name__)
        return jsonify(model_version=adapter.version)

    @app.post("/predict")
    def predict():
        body = _json_object()
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise PayloadError("'tasks' must be a list of task objects, e.g. {\"tasks\": [{\"id\": 1, \"data\": {...}}]}")
        label_config = body.get("label_config") or label_configs.get(_project_id(body.get("project")) or "")
        if not label_config:
            raise PayloadError("'label_config' is missing: send the project's label config, or call /setup first")
        project = _project_id(body.get("project"))
        adapter = _adapter(project)
        owner = _project_number(project)
        outcome = Predictor(settings, adapter, fetcher, owner).predict_tasks(tasks, label_config)
        metrics.add(
            predict_requests=1,
            tasks_predicted=len(tasks) - len(outcome.failures),
            tasks_failed=len(outcome.failures),
            predict_seconds_total=outcome.seconds,
        )
        return jsonify(
            results=outcome.predictions,
            model_version=adapter.version,
            errors=[{"task": f.task_id, "reason": f.reason} for f in outcome.failures],
        )

    @app.post("/webhook")
    def webhook():
        body = _json_object()
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise PayloadError("'action' is missing: Label Studio webhooks send e.g. {\"action\": \"ANNOTATION_CREATED\"}")
        metrics.add(webhooks=1)
        if action == START_TRAINING:
            job_id, started = _start_training(_project_from_event(body))
            response = jsonify(status="queued" if started else "already training", action=action, job=job_id)
            response.status_code = 201 if started else 200
            return response
        if action == ANNOTATIONS_CREATED:
            project = _project_from_event(body)
            listed = body.get("annotation") if isinstance(body.get("annotation"), list) else []
            made = [a for a in listed if isinstance(a, dict) and not a.get("was_cancelled")]
            recorded = _record_many(project, made)
            if not made:
                return jsonify(status="ignored", action=action, reason="the event lists no submitted annotation")
            if settings.auto_train_after:
                return _count_towards_training(project, len(made), action, savings=recorded)
            return jsonify(status="recording", action=action, savings=recorded)
        if action in (ANNOTATIONS_DELETED, TASKS_DELETED):
            return _forget_deleted(body, action)
        recorded = _record_savings(body) if action in (ANNOTATION_CREATED, ANNOTATION_UPDATED) else None
        if action == ANNOTATION_CREATED and settings.auto_train_after:
            project = _project_from_event(body)
            annotation = body.get("annotation")
            if isinstance(annotation, dict) and annotation.get("was_cancelled"):
                # LS sends every Skip as ANNOTATION_CREATED: nothing was labelled
                return jsonify(status="ignored", action=action, reason="a skipped task is not a new annotation")
            return _count_towards_training(project, 1, action, savings=recorded)
        if recorded is not None:
            return jsonify(status="recording", action=action, savings=recorded)
        if action == TASKS_CREATED:
            from .jobs import request_sync

            project = _project_from_event(body)
            listed = body.get("tasks")
            if listed is not None and not isinstance(listed, list):
                raise PayloadError(
                    f"'tasks' must be a list of task objects, e.g. {{\"tasks\": [{{\"id\": 1}}]}}, got {type(listed).__name__}"
                )
            # The sync predicts the new tasks itself (or fans them out to the predict workers) under the project's
            # lock: a prediction job of its own beside it would predict the same tasks a second time on another worker.
            # A burst of imports (one webhook per request) is covered by the one sync still in the queue.
            sync, queued_now = request_sync(jobs(), runtime, project)
            return jsonify(status="queued", action=action, jobs=[sync], sync="queued" if queued_now else "coalesced")
        return jsonify(status="ignored", action=action)

    from .admin import admin_blueprint

    app.register_blueprint(admin_blueprint(settings, runtime))

    @app.get("/jobs/<job_id>")
    def job_status(job_id: str):
        info = jobs().info(job_id)
        if info is None:
            raise NotFound(f"no job {job_id!r} (finished jobs are kept for a limited time)")
        return jsonify(id=info.id, name=info.name, status=info.status, error=info.error, meta=info.meta, result=info.result)

    @app.get("/versions")
    def versions():
        raw = request.args.get("project")
        if raw is not None:
            from .model_store import ModelStore

            number = _project_number(raw)
            if number is None:
                raise PayloadError(f"'project' must be a project id (a non-negative whole number, e.g. ?project=3), got {raw[:40]!r}")
            store = ModelStore(settings.model_dir, number)
            (served, damaged), stored = store.readable_current(), store.versions()
            return jsonify(
                versions=[v.name for v in stored],
                current=served.name if served else None,
                **({"current_error": damaged} if damaged else {}),
                # until its first version, a project is served the configured model
                **(_training_state(holder) if served is None else {"trained": True}),
                details=[
                    {
                        "version": v.name,
                        "served": served is not None and served.name == v.name,
                        "metrics": v.metrics,
                        "promotion": v.manifest.get("promotion"),
                        "manifest": v.manifest,
                        "classes": list(v.classes),
                    }
                    for v in stored
                ],
            )
        try:
            current = [holder.get().version]
        except AleError:
            current = []
        return jsonify(versions=current, **_training_state(holder))

    @app.get("/metrics")
    def metrics_route():
        return jsonify(metrics.snapshot() | {"model_loaded": holder.loaded})

    @app.errorhandler(AleError)
    def ale_error(exc: AleError):
        status = 503 if isinstance(exc, AdapterError) else exc.status
        return _error_response(str(exc), status, metrics)

    from redis.exceptions import RedisError

    @app.errorhandler(RedisError)
    def redis_down(exc: RedisError):
        # The URL may hold a password: name the host only.
        where = _redis_host(settings.redis_url)
        log.warning("Redis at %s unavailable on %s %s: %s", where, request.method, request.path, type(exc).__name__)
        response = _error_response(
            f"the job queue is unavailable (Redis at {where}: {type(exc).__name__}); nothing was queued. "
            "Predictions still work; retry this once Redis is back",
            503,
            metrics,
        )
        response.headers["Retry-After"] = str(REDIS_RETRY_AFTER)
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        message = (
            f"request body is over MAX_REQUEST_BYTES={settings.max_request_bytes} bytes"
            + (": Label Studio's Retrieve Predictions sends every selected task at once (about 10 KB a task); select fewer "
               "tasks, let the sync predict the pool (ale sync, or the scheduled one), or raise MAX_REQUEST_BYTES"
               if request.path == "/predict" else "")
        )
        log.warning("%s %s refused: %s", request.method, request.path, message)
        return _error_response(message, 413, metrics)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _error_response(exc.description or exc.name, exc.code or 500, metrics)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _error_response("internal error; details are in the backend's log", 500, metrics)

    return app


def _training_state(holder: ModelHolder) -> dict:
    """{"trained": bool} of the configured model, with the note on what an untrained one means; {} if it cannot load."""
    try:
        trained = is_trained(holder.get())
    except AleError:
        return {}
    return {"trained": True} if trained else {"trained": False, "note": UNTRAINED_NOTE}


def _json_object() -> dict:
    body = request.get_json(force=True, silent=True)
    if body is None:
        raw = request.get_data(cache=True)
        problem = "empty" if not raw else "not valid JSON"
        raise PayloadError(f"request body is {problem}: send a JSON object with Content-Type: application/json")
    if not isinstance(body, dict):
        raise PayloadError(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _project_from_event(body: dict) -> int:
    project = body.get("project")
    project_id = project.get("id") if isinstance(project, dict) else None
    if not isinstance(project_id, int):
        raise PayloadError("webhook event has no project id: expected {\"project\": {\"id\": <int>, ...}}")
    return project_id


def _project_number(text: str | None) -> int | None:
    """A project id written in the ASCII digits 0-9 -> that id; anything else -> None.

    str.isdigit() alone also takes '²', which int() refuses, and '٣', which it reads as 3; a number of more than
    18 digits is no database id (and past 4,300 int() refuses it).
    """
    if not text or len(text) > 18 or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def _project_id(project) -> str | None:
    """LS sends project as "<id>.<created_at timestamp>"; keep the id."""
    if project is None:
        return None
    return str(project).split(".", 1)[0] or None


def _basic_auth_ok(header: str, settings: Settings) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return False
    try:
        user, _, password = base64.b64decode(encoded, validate=True).partition(b":")
    except ValueError:
        return False
    # Label Studio's ML client (requests) encodes the credentials as latin-1; curl and browsers as UTF-8
    for encoding in ("utf-8", "latin-1"):
        try:
            expected_user, expected_password = settings.basic_auth_user.encode(encoding), settings.basic_auth_password.encode(encoding)
        except UnicodeEncodeError:
            continue
        user_ok = hmac.compare_digest(user, expected_user)
        password_ok = hmac.compare_digest(password, expected_password)
        if user_ok and password_ok:
            return True
    return False


def _redis_host(url: str) -> str:
    from urllib.parse import urlsplit

    split = urlsplit(url)
    return f"{split.hostname or '?'}:{split.port or 6379}"


def _error_response(message: str, status: int, metrics: Metrics):
    metrics.add(**({"errors_5xx": 1} if status >= 500 else {"errors_4xx": 1}))
    response = jsonify(error=message)
    response.status_code = status
    return response
