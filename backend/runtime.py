"""What jobs need, built once per process: settings, LS client, adapter, detection store, locks.

Worker processes build it from the environment on first use (`current_runtime`);
the web app and tests pass an explicit `Runtime`.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from .adapters import Adapter, load_adapter
from .detection_store import DetectionStore
from .ls_client import LabelStudioClient
from .settings import Settings

DETECTION_DB = "detections.sqlite"
#: A sync that runs longer than this loses its lock (a crashed worker must not block forever).
LOCK_TIMEOUT = 30 * 60


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        ls: LabelStudioClient | None = None,
        adapter_factory: Callable[[], Adapter] | None = None,
        redis=None,
    ):
        self.settings = settings
        self._ls = ls
        self._adapter_factory = adapter_factory or (lambda: load_adapter(settings))
        self._adapter: Adapter | None = None
        self._adapter_lock = threading.Lock()
        self._local_locks: dict[str, threading.Lock] = {}
        self._project_adapters: dict[int, tuple[str, Adapter]] = {}
        self.redis = redis
        if self.redis is None and settings.redis_url:
            from redis import Redis

            self.redis = Redis.from_url(settings.redis_url)
        self._store: DetectionStore | None = None

    @property
    def store(self) -> DetectionStore:
        if self._store is None:
            self._store = DetectionStore(self.settings.model_dir / DETECTION_DB)
        return self._store

    @property
    def ls(self) -> LabelStudioClient:
        if self._ls is None:
            self._ls = LabelStudioClient(self.settings.label_studio_url, self.settings.label_studio_api_key)
        return self._ls

    @property
    def adapter(self) -> Adapter:
        if self._adapter is None:
            with self._adapter_lock:
                if self._adapter is None:
                    self._adapter = self._adapter_factory()
        return self._adapter

    def adapter_for(self, project: int | None) -> Adapter:
        """The model serving `project`: its current trained version if it has one, else the configured one."""
        if project is None:
            return self.adapter
        from .model_store import ModelStore

        version = ModelStore(self.settings.model_dir, int(project)).current()
        if version is None:
            return self.adapter
        with self._adapter_lock:
            cached = self._project_adapters.get(project)
            if cached is None or cached[0] != version.name:
                adapter = load_adapter(self.settings.replace(model_weights=str(version.weights), model_classes=()))
                adapter.version = version.name  # LS shows the store's version name
                self._project_adapters[project] = cached = (version.name, adapter)
        return cached[1]

    @contextmanager
    def lock(self, name: str, wait: float = 0.0) -> Iterator[bool]:
        """A named lock across processes (Redis) or threads (embedded). Yields whether it was acquired."""
        if self.redis is not None:
            lock = self.redis.lock(f"ale:lock:{name}", timeout=LOCK_TIMEOUT, blocking=wait > 0, blocking_timeout=wait or None)
            acquired = lock.acquire()
            try:
                yield acquired
            finally:
                if acquired:
                    lock.release()
            return
        local = self._local_locks.setdefault(name, threading.Lock())
        acquired = local.acquire(timeout=wait) if wait > 0 else local.acquire(blocking=False)
        try:
            yield acquired
        finally:
            if acquired:
                local.release()


_current: Runtime | None = None
_current_lock = threading.Lock()


def current_runtime() -> Runtime:
    """The process-wide runtime, built from the environment on first use."""
    global _current
    with _current_lock:
        if _current is None:
            _current = Runtime(Settings.from_env())
        return _current


def set_runtime(runtime: Runtime | None) -> None:
    global _current
    with _current_lock:
        _current = runtime
