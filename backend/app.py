"""The Flask app: Label Studio's ML-backend protocol.

Routes: GET /health, POST /setup, POST /predict, POST /webhook, GET /versions, GET /ui (admin page),
GET /metrics. `create_app(settings)` builds it; nothing happens at import.
"""

from __future__ import annotations

import base64
import hmac
import logging
import threading
from collections import OrderedDict
from typing import Callable

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException, NotFound, RequestEntityTooLarge

from . import __version__
from .adapters import UNTRAINED_NOTE, Adapter, check_policy_fits, is_trained, load_adapter
from .errors import AdapterError, AleError, PayloadError
from .jobqueue import make_job_queue
from .ls_client import LabelStudioClient
from .ls_format import match_labels, parse_label_config
from .media import MediaFetcher
from .predictor import Predictor
from .runtime import Runtime
from .settings import Settings
from .webhooks import WebhookHandler, event_action

log = logging.getLogger(__name__)

#: Seconds a client is told to wait before retrying while Redis is down.
REDIS_RETRY_AFTER = 30
#: Projects whose label config (from /setup) is kept for a /predict that sends none; the least recently used goes first.
MAX_PROJECT_LABEL_CONFIGS = 1024
#: Longest project whose label config is kept: Label Studio's are ids, a few digits.
MAX_PROJECT_CHARS = 100


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
                    except Exception as exc:
                        self._failed(exc)
        return self._adapter

    def _failed(self, exc: Exception):
        """Keep what went wrong for /health and raise it as an AleError, which the routes answer with 503 naming it."""
        expected = isinstance(exc, AleError)  # a configuration problem the message explains: no traceback
        message = str(exc) if expected else f"the model failed to load: {type(exc).__name__}: {exc}"
        if message != self._error:  # once per failure, not on every request that tries the load again
            if expected:
                log.warning("model failed to load: %s", message)
            else:
                log.exception("model failed to load")
        self._error = message
        if expected:
            raise exc
        raise AdapterError(f"{message}; details are in the backend's log") from exc

    def warm(self) -> threading.Thread:
        """Load in the background so the first request does not wait."""

        def run():
            try:
                self.get()
            except AleError:  # logged by get(); reported on first request and in /health
                pass

        thread = threading.Thread(target=run, name="model-warmup", daemon=True)
        thread.start()
        return thread

    @property
    def error(self) -> str | None:
        return self._error


class LabelConfigs:
    """Project -> the label config /setup last sent, for at most `limit` projects (the least recently used goes first).

    A /predict of a project no longer here is answered as one of a project never set up: LS sends the label config
    with every /predict, and its next /setup stores it again."""

    def __init__(self, limit: int):
        self._limit = limit
        self._configs: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, project: str) -> str | None:
        with self._lock:
            if project in self._configs:
                self._configs.move_to_end(project)
            return self._configs.get(project)

    def put(self, project: str, config: str) -> None:
        if len(project) > MAX_PROJECT_CHARS:  # no LS project: the configured model answers it, with the config it sends
            return
        with self._lock:
            self._configs[project] = config
            self._configs.move_to_end(project)
            while len(self._configs) > self._limit:
                self._configs.popitem(last=False)


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
    label_configs = LabelConfigs(MAX_PROJECT_LABEL_CONFIGS)
    runtime = Runtime(settings, ls=ls_client, adapter_factory=holder.get)
    job_queue = None  # created on first use: the embedded one starts a thread

    def jobs():
        nonlocal job_queue
        if job_queue is None:
            job_queue = make_job_queue(runtime)
        return job_queue

    webhooks = WebhookHandler(settings, runtime, jobs)

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
        config = parse_label_config(schema, field="'schema'")
        project = _project_id(body.get("project"))
        adapter = _adapter(project)
        match_labels(adapter.classes, config)
        check_policy_fits(adapter, settings.policy)
        if project:
            label_configs.put(project, schema)
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
        project = _project_id(body.get("project"))
        label_config = body.get("label_config")
        if label_config not in (None, ""):
            parse_label_config(label_config, field="'label_config'")  # the Predictor's parse of it is then cached
        label_config = label_config or (label_configs.get(project) if project else None)
        if not label_config:
            raise PayloadError("'label_config' is missing: send the project's label config, or call /setup first")
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
        action = event_action(body)
        metrics.add(webhooks=1)
        return webhooks.handle(body, action)

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
        response = _error_response(exc.description or exc.name, exc.code or 500, metrics)
        for name, value in exc.get_headers():  # Allow of a 405, Retry-After of a 503: the body is ours, JSON
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

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
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError:  # json.loads of e.g. "[[[[..." thousands deep
        raise PayloadError("request body nests too deeply: send a flat JSON object") from None
    if body is None:
        raw = request.get_data(cache=True)
        problem = "empty" if not raw else "not valid JSON"
        raise PayloadError(f"request body is {problem}: send a JSON object with Content-Type: application/json")
    if not isinstance(body, dict):
        raise PayloadError(f"request body must be a JSON object, got {type(body).__name__}")
    return body


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
