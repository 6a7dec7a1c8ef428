"""What jobs need, built once per process: settings, LS client, adapter, detection store, locks.

Worker processes build it from the environment on first use (`current_runtime`);
the web app and tests pass an explicit `Runtime`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: embedded locks are this process's alone
    fcntl = None

from .adapters import Adapter, load_adapter
from .errors import AdapterError, AleError, ConfigError
from .detection_store import DetectionStore, open_detection_store
from .ls_client import LabelStudioClient
from .settings import Settings

log = logging.getLogger(__name__)

#: A Redis lock is a lease of this many seconds, renewed every third of it while its holder
#: runs: a killed or crashed holder frees it within a minute, a long training never loses it.
LOCK_LEASE = 60
#: A raised flag nobody takes (its holder's machine vanished) is forgotten after this long.
FLAG_TTL = 24 * 60 * 60
#: Seconds a Redis command (or a connection) may take before it fails, unless REDIS_URL sets `socket_timeout` /
#: `socket_connect_timeout`: without one, a Redis that stops answering (a host gone mid-connection) blocks the
#: lock's renewal, and the job's lock checks, forever. Under a renewal round (LOCK_LEASE / 3).
REDIS_SOCKET_TIMEOUT = 10.0
#: What `HeldLock.check` says can be done about a write it refused, unless its caller knows better.
NEXT_RUN_DOES_IT = "the next run does it"
#: Without Redis, a lock is also a file here under MODEL_DIR, locked with flock: `ale serve`, `ale sync` and
#: `ale models --promote` sharing a MODEL_DIR exclude each other. The OS frees it when its holder exits.
LOCKS_DIR = "locks"
#: Seconds between tries while waiting for a lock file another process holds.
FILE_LOCK_POLL = 0.2


class LockLostError(AleError):
    """A job's lock lapsed while it ran (Redis restarted, or unreachable for a whole lease): another job may hold it."""

    status = 503


class HeldLock:
    """What `Runtime.lock` yields: true when acquired; `check` refuses once its lease may have lapsed.

    `lock` is the Redis lock held (None for an embedded lock, which only its process can take).
    `elsewhere`: refused because another process holds this embedded lock (its pid in `holder`, if it wrote one):
    that process cannot see this one's flags, so a request it was to cover would be lost.
    """

    def __init__(self, name: str, acquired: bool, lock=None, elsewhere: bool = False, holder: str = ""):
        self.name, self.acquired, self._lock = name, acquired, lock
        self.elsewhere, self.holder = elsewhere, holder
        self.lost = threading.Event()  # set by the renewing thread, or by a check that found the lock gone

    def __bool__(self) -> bool:
        return self.acquired

    def check(self, what: str, remedy: str = NEXT_RUN_DOES_IT) -> None:
        """Before a write that only the lock's holder may make: raise LockLostError naming `what` unless the lock is held.

        A Redis lock is asked of Redis now, and its lease renewed: the renewing thread looks only every third of a
        lease, and another job may have taken the key meanwhile (Redis restarted without it). A Redis that cannot
        answer refuses the write too. `remedy` says what can be done about a refused write.
        """
        if not self.lost.is_set() and self._lock is not None:
            from redis.exceptions import LockNotOwnedError

            try:
                self._lock.reacquire()  # a full lease from now, for the write that follows
            except LockNotOwnedError:
                log.warning("lock %s lapsed while held", self.name)
                self.lost.set()
            except Exception as exc:  # not proven held: another job may hold it
                raise LockLostError(
                    f"{what} was not done: Redis could not confirm that this job still holds the lock {self.name} "
                    f"({type(exc).__name__}: {exc}), so another job may hold it; {remedy}"
                ) from None
        if self.lost.is_set():
            raise LockLostError(
                f"{what} was not done: the lock {self.name} lapsed while this job ran (Redis restarted or could not be "
                f"reached for {LOCK_LEASE:g} s), so another job may hold it; {remedy}"
            )


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
        self._held = threading.local()  # name -> HeldLock, of the locks this thread holds
        self._local_flags: dict[str, tuple[str, float]] = {}  # raised flag -> (the value it holds, when it lapses)
        self._flags_lock = threading.Lock()
        self._project_adapters: dict[int, tuple[str, Adapter]] = {}
        self.redis = redis
        if self.redis is None and settings.redis_url:
            from redis import Redis

            # REDIS_URL's own timeouts win (its query string overrides these)
            self.redis = Redis.from_url(settings.redis_url, socket_timeout=REDIS_SOCKET_TIMEOUT, socket_connect_timeout=REDIS_SOCKET_TIMEOUT)
        self._store: DetectionStore | None = None

    @property
    def store(self) -> DetectionStore:
        if self._store is None:
            self._store = open_detection_store(self.settings.detection_store_url, self.settings.model_dir)
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

        try:
            version = ModelStore(self.settings.model_dir, int(project)).current()
        except (LookupError, ValueError) as exc:  # a damaged or tampered store: refuse, say where
            raise AdapterError(f"project {project}'s model store cannot be used: {exc}") from None
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
    def lock(self, name: str, wait: float = 0.0, wait_elsewhere: float = 0.0) -> Iterator[HeldLock]:
        """A named lock across processes. Yields a HeldLock, true when acquired.

        With Redis, a lease in Redis. Without, a lock of this process's threads and an flock'd file under
        MODEL_DIR/locks shared by every process on that MODEL_DIR. wait: seconds to wait for it; wait_elsewhere:
        seconds to wait only while another process holds it (without Redis its flags are not this process's).
        """
        held_here = self._held_here()
        if self.redis is not None:
            # thread_local=False: the renewing thread must see the lock's token
            lock = self.redis.lock(
                f"ale:lock:{name}", timeout=LOCK_LEASE, blocking=wait > 0, blocking_timeout=wait or None, thread_local=False
            )
            acquired = bool(lock.acquire())
            held = HeldLock(name, acquired, lock if acquired else None)
            stop = threading.Event()
            if held:
                held_here[name] = held
                threading.Thread(target=_renew, args=(lock, stop, held.lost), name=f"ale-lock-{name}", daemon=True).start()
            try:
                yield held
            finally:
                stop.set()
                if held:
                    held_here.pop(name, None)
                    try:
                        lock.release()
                    except Exception:  # lost meanwhile (Redis restarted): nothing left to release
                        log.warning("lock %s was already gone at release", name)
            return
        local = self._local_locks.setdefault(name, threading.Lock())
        held = HeldLock(name, local.acquire(timeout=wait) if wait > 0 else local.acquire(blocking=False))
        handle = None
        if held:
            try:
                handle, holder = self._lock_file(name, max(wait, wait_elsewhere))
            except BaseException:
                local.release()
                raise
            if handle is None:  # another process holds it
                local.release()
                held = HeldLock(name, False, elsewhere=True, holder=holder)
        if held:
            held_here[name] = held
        try:
            yield held
        finally:
            if held:
                held_here.pop(name, None)
                if handle is not None and handle >= 0:
                    os.close(handle)  # closing the file drops its flock
                local.release()

    def lock_path(self, name: str) -> Path:
        """The file an embedded lock `name` is also taken on (e.g. MODEL_DIR/locks/sync-3 for "sync:3")."""
        return Path(self.settings.model_dir) / LOCKS_DIR / re.sub(r"[^A-Za-z0-9_.-]", "-", name)

    def _lock_file(self, name: str, wait: float) -> tuple[int | None, str]:
        """flock the lock's file, waiting up to `wait` s. -> (its descriptor, or -1 where there is no flock; "") or
        (None, the holder's pid if known) when another process holds it."""
        if fcntl is None:
            return -1, ""
        path = self.lock_path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(
                "MODEL_DIR",
                f"cannot create the lock file {path} ({exc.strerror or exc}): without REDIS_URL, every process that "
                "syncs, trains or promotes (ale serve, ale sync, ale models --promote) takes its locks there; make MODEL_DIR "
                "writable, or set REDIS_URL",
            ) from None
        deadline, told = time.monotonic() + wait, False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read_holder(handle)
                if time.monotonic() >= deadline:
                    os.close(handle)
                    return None, holder
                if not told:
                    log.warning("lock %s is held by another process (pid %s, %s); waiting up to %.0f s", name, holder or "?", path, wait)
                    told = True
                time.sleep(FILE_LOCK_POLL)
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)  # for the message of a process refused it
        return handle, ""

    def _held_here(self) -> dict[str, HeldLock]:
        locks = getattr(self._held, "locks", None)
        if locks is None:
            locks = self._held.locks = {}
        return locks

    def check_lock(self, name: str, what: str, remedy: str = NEXT_RUN_DOES_IT) -> None:
        """Raise LockLostError naming `what` if this thread holds lock `name` and it lapsed (nothing when not held here)."""
        held = self._held_here().get(name)
        if held is not None:
            held.check(what, remedy)

    # Flags: a request that something be done, shared like the locks (Redis across processes, or this process).

    def raise_flag(self, name: str, value: str = "1", ttl: int = FLAG_TTL) -> None:
        if self.redis is not None:
            self.redis.set(f"ale:flag:{name}", value, ex=ttl)
            return
        with self._flags_lock:
            self._local_flags[name] = (value, time.monotonic() + ttl)

    def flag_value(self, name: str) -> str | None:
        """What a raised flag holds; None when it is not raised."""
        if self.redis is not None:
            value = self.redis.get(f"ale:flag:{name}")
            return None if value is None else value.decode()
        with self._flags_lock:
            return self._local_flag(name)

    def claim_flag(self, name: str, value: str, ttl: int = FLAG_TTL) -> str | None:
        """Raise the flag holding `value` unless it is raised. -> None when this call raised it, else the value it holds."""
        if self.redis is not None:
            key = f"ale:flag:{name}"
            for _ in range(2):  # the holder may lower it between the two calls: then claim again
                if self.redis.set(key, value, nx=True, ex=ttl):
                    return None
                held = self.redis.get(key)
                if held is not None:
                    return held.decode()
            return None if self.redis.set(key, value, ex=ttl) else value
        with self._flags_lock:
            held = self._local_flag(name)
            if held is not None:
                return held
            self._local_flags[name] = (value, time.monotonic() + ttl)
            return None

    def renew_flag(self, name: str, value: str, ttl: int = FLAG_TTL) -> bool:
        """Give the flag `ttl` s from now while it holds `value` (one raised anew since is left alone). -> whether renewed."""
        if self.redis is not None:
            return bool(self.redis.eval(_RENEW_FLAG, 1, f"ale:flag:{name}", value, int(ttl)))
        with self._flags_lock:
            if self._local_flag(name) != value:
                return False
            self._local_flags[name] = (value, time.monotonic() + ttl)
            return True

    def take_flag(self, name: str) -> bool:
        """Lower the flag; True if it was raised (exactly one taker sees True)."""
        if self.redis is not None:
            return bool(self.redis.delete(f"ale:flag:{name}"))
        with self._flags_lock:
            raised = self._local_flag(name) is not None
            self._local_flags.pop(name, None)
            return raised

    def take_flag_if(self, name: str, value: str) -> bool:
        """Lower the flag only while it holds `value` (one raised anew since is left alone). -> whether lowered."""
        if self.redis is not None:
            return bool(self.redis.eval(_TAKE_FLAG_IF, 1, f"ale:flag:{name}", value))
        with self._flags_lock:
            if self._local_flag(name) != value:
                return False
            del self._local_flags[name]
            return True

    def flag_raised(self, name: str) -> bool:
        if self.redis is not None:
            return bool(self.redis.exists(f"ale:flag:{name}"))
        with self._flags_lock:
            return self._local_flag(name) is not None

    def _local_flag(self, name: str) -> str | None:
        """A flag's value in this process (under `_flags_lock`); one whose time-to-live has passed is lowered, as Redis does."""
        found = self._local_flags.get(name)
        if found is not None and time.monotonic() >= found[1]:
            del self._local_flags[name]
            found = None
        return None if found is None else found[0]


#: Renews KEYS[1] for ARGV[2] s only while it holds ARGV[1]: in one step, so a flag raised anew keeps its own TTL.
_RENEW_FLAG = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end
return 0
"""

#: Deletes KEYS[1] only while it holds ARGV[1]: in one step, so a flag raised anew between a read and the delete stays.
_TAKE_FLAG_IF = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def _read_holder(handle: int) -> str:
    """The pid the lock file's holder wrote ("" if none yet)."""
    try:
        return os.pread(handle, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _renew(lock, stop: threading.Event, lost: threading.Event) -> None:
    """Keep renewing `lock`'s lease until `stop` is set; set `lost` once the lease has lapsed, or may have."""
    from redis.exceptions import LockNotOwnedError

    renewed = time.monotonic()
    while not stop.wait(LOCK_LEASE / 3):
        try:
            lock.reacquire()
            renewed = time.monotonic()
        except LockNotOwnedError:  # the key expired or was replaced (Redis restarted): another job may hold it
            log.warning("lock %s lapsed while held", lock.name)
            lost.set()
            return
        except Exception as exc:  # Redis away for a moment: try again next round
            log.warning("could not renew lock %s: %s", lock.name, type(exc).__name__)
            if time.monotonic() - renewed >= LOCK_LEASE:  # unrenewed for a whole lease: it has lapsed in Redis
                lost.set()


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
