"""Pool detections kept between jobs, and the queue each project is served.

`detections`, keyed by (project, raw output key, task): what a model produced
for a task (every box above its floor, see `serving.raw_output_key`), written
once per model version by the pool prediction; scoring and the sync read them
and apply the serving filters without re-running the model. Each row records
which image it is of (`image_ref`): a task whose label config or data points at
another image since is predicted again (`pool.is_stored`).

`served_queues` / `served_tasks`: the prediction version a sync last switched
Label Studio to, what decided its order (model, ranking settings), and each
task's usefulness and LS score in it, so that the next sync can tell what
changed and write only that (`queue_update`).

Two back ends, one SQL (`?` placeholders, `ON CONFLICT` upserts, which SQLite
and PostgreSQL both speak):
- SQLite in MODEL_DIR, the default: one machine (WAL mode: one writer and many
  readers across processes; not safe on a network file system);
- PostgreSQL (`DETECTION_STORE_URL=postgresql://...`, psycopg 3): workers on
  several machines share it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .detection_rows import LabelledReference, ServedQueue, ServedTasks, StoredDetections, decode, decode_embedding, encode
from .annotation_edits import EDITS_TABLE, EditStoreMixin
from .errors import ConfigError
from .served_queue_store import ServedQueueStoreMixin
from .url_settings import check_detection_store_url, without_password

# LabelledReference, ServedQueue and ServedTasks are what the store's served-queue reads return: importable from here with it
__all__ = [
    "DEFAULT_SQLITE_NAME",
    "ID_BATCH",
    "LabelledReference",
    "SCHEMA_VERSION",
    "DetectionStore",
    "PostgresDetectionStore",
    "ServedQueue",
    "ServedTasks",
    "SqliteDetectionStore",
    "StoredDetections",
    "open_detection_store",
]

#: Bumped whenever a table changes; older tables are a cache and are dropped (models re-run once, the next sync is full).
SCHEMA_VERSION = 6
#: The tables each schema version changed: an upgrade from a version after OLDEST_UPGRADED drops only those changed since
#: (5 added the served queue's labelled reference, 6 its class rarity: the next sync is full, the stored detections stay).
CHANGED_IN = {5: ("served_queues", "served_tasks"), 6: ("served_queues", "served_tasks")}
OLDEST_UPGRADED = 4
#: Task ids per `IN (...)` query: well under SQLite's 32,766 bound parameters.
ID_BATCH = 500
DETECTION_COLUMNS = (
    "project, model_version, task_id, width, height, num_classes, xyxy, class_probs, labels, scores, background, image_hash, error, created, "
    "embedding, instability, image_ref"
)
#: What `decode` reads of a row; the embedding is read only where asked for (`embeddings`): ranking a pool needs none.
DECODED_COLUMNS = "task_id, width, height, num_classes, xyxy, class_probs, labels, scores, background, image_hash, error, instability, image_ref"
#: Columns added to a table after it was first created, with their type: a store that lacks one gains it (NULL in its
#: rows) instead of being dropped. detections.image_ref: which image a row is of (`detection_rows.image_reference`).
ADDED_COLUMNS = (("detections", "image_ref", "TEXT"),)
TABLES = (
    """CREATE TABLE IF NOT EXISTS detections (
        project BIGINT NOT NULL,
        model_version TEXT NOT NULL,
        task_id BIGINT NOT NULL,
        width INTEGER,
        height INTEGER,
        num_classes INTEGER,
        xyxy {blob},
        class_probs {blob},
        labels {blob},
        scores {blob},
        background {blob},
        image_hash BIGINT,
        error TEXT,
        created DOUBLE PRECISION NOT NULL,
        embedding {blob},
        instability {blob},
        image_ref TEXT,
        PRIMARY KEY (project, model_version, task_id)
    )""",
    """CREATE TABLE IF NOT EXISTS served_queues (
        project BIGINT PRIMARY KEY,
        ls_version TEXT NOT NULL,
        raw_key TEXT NOT NULL,
        ranking_key TEXT NOT NULL,
        updated DOUBLE PRECISION NOT NULL,
        centroids {blob},
        centroid_dims INTEGER,
        reference_ids {blob},
        reference_scale DOUBLE PRECISION,
        class_rarity {blob}
    )""",
    """CREATE TABLE IF NOT EXISTS served_tasks (
        project BIGINT NOT NULL,
        task_id BIGINT NOT NULL,
        usefulness DOUBLE PRECISION,
        score DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (project, task_id)
    )""",
)
# annotation_edits is not a cache: it keeps what LS no longer has (the predictions of deleted versions)
DROPPED_ON_UPGRADE = ("detections", "served_queues", "served_tasks")


def dropped_on_upgrade(found: int) -> tuple[str, ...]:
    """The tables a store of schema version `found` (0: none) drops to become SCHEMA_VERSION's."""
    if OLDEST_UPGRADED <= found < SCHEMA_VERSION:
        return tuple(dict.fromkeys(t for version in range(found + 1, SCHEMA_VERSION + 1) for t in CHANGED_IN.get(version, ())))
    return DROPPED_ON_UPGRADE


class DetectionStore(ServedQueueStoreMixin, EditStoreMixin):
    """The SQL both back ends share; subclasses open connections and transactions."""

    placeholder = "?"
    blob_type = "BLOB"

    def _setup(self) -> None:
        with self._exclusive() as db:
            found = self._schema_version(db)
            if found != SCHEMA_VERSION:
                for table in dropped_on_upgrade(found):
                    self._exec(db, f"DROP TABLE IF EXISTS {table}")
                self._exec(db, "CREATE TABLE IF NOT EXISTS store_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
                self._exec(
                    db,
                    "INSERT INTO store_meta VALUES ('schema', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (SCHEMA_VERSION,),
                )
            for table in (*TABLES, EDITS_TABLE):
                self._exec(db, table.format(blob=self.blob_type))
            for table, column, kind in ADDED_COLUMNS:
                if column not in self._columns(db, table):
                    self._exec(db, f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def _schema_version(self, db) -> int:
        raise NotImplementedError

    def _columns(self, db, table: str) -> set[str]:
        raise NotImplementedError

    @contextmanager
    def _tx(self) -> Iterator:
        """One transaction on this thread's connection."""
        raise NotImplementedError

    @contextmanager
    def _exclusive(self) -> Iterator:
        """A transaction no other process runs at the same time (schema checks)."""
        raise NotImplementedError

    def _sql(self, query: str) -> str:
        return query if self.placeholder == "?" else query.replace("?", self.placeholder)

    def _exec(self, db, query: str, params=()):
        return db.execute(self._sql(query), params)

    def _execmany(self, db, query: str, rows: list) -> None:
        if rows:
            db.cursor().executemany(self._sql(query), rows)

    # Detections

    def put_many(self, project: int, model_version: str, items: Iterable[StoredDetections]) -> None:
        """Insert or replace, in one transaction (all items or none)."""
        now = time.time()
        rows = [encode(project, model_version, item, now) for item in items]
        updates = ", ".join(f"{c} = excluded.{c}" for c in DETECTION_COLUMNS.split(", ")[3:])
        query = (
            f"INSERT INTO detections ({DETECTION_COLUMNS}) VALUES ({', '.join('?' * len(DETECTION_COLUMNS.split(', ')))}) "
            f"ON CONFLICT (project, model_version, task_id) DO UPDATE SET {updates}"
        )
        with self._tx() as db:
            self._execmany(db, query, rows)

    def get_many(
        self, project: int, model_version: str, task_ids: Iterable[int] | None = None, *, embeddings: bool = False
    ) -> dict[int, StoredDetections]:
        """Stored detections of `task_ids` (all of the version's when None) -> {task id: item}, with image embeddings if asked."""
        columns = f"{DECODED_COLUMNS}, embedding" if embeddings else DECODED_COLUMNS
        select = f"SELECT {columns} FROM detections WHERE project = ? AND model_version = ?"
        out: dict[int, StoredDetections] = {}
        with self._tx() as db:
            if task_ids is None:
                batches = [self._exec(db, select, (project, model_version)).fetchall()]
            else:
                ids = [int(t) for t in task_ids]
                batches = (
                    self._exec(db, f"{select} AND task_id IN ({', '.join('?' * len(part))})", (project, model_version, *part)).fetchall()
                    for part in _batches(ids)
                )
            for rows in batches:
                for row in rows:
                    item = decode(row)
                    out[item.task_id] = item
        return out

    def embeddings(self, project: int, model_version: str, task_ids: Iterable[int]) -> dict[int, np.ndarray]:
        """(D,) float32 image embeddings of those `task_ids` that have one -> {task id: vector}."""
        select = "SELECT task_id, embedding FROM detections WHERE project = ? AND model_version = ? AND embedding IS NOT NULL"
        out: dict[int, np.ndarray] = {}
        with self._tx() as db:
            for part in _batches([int(t) for t in task_ids]):
                query = f"{select} AND task_id IN ({', '.join('?' * len(part))})"
                for task_id, blob in self._exec(db, query, (project, model_version, *part)).fetchall():
                    out[int(task_id)] = decode_embedding(blob)
        return out

    def embedding_chunks(self, project: int, model_version: str, task_ids, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`task_ids` read `chunk` at a time -> ((k,) positions in `task_ids` of those with an embedding, (k, D) their vectors)."""
        task_ids = [int(t) for t in task_ids]
        for start in range(0, len(task_ids), chunk):
            part = task_ids[start : start + chunk]
            found = self.embeddings(project, model_version, part)
            rows = [i for i, t in enumerate(part) if t in found]
            if rows:
                yield start + np.asarray(rows, dtype=np.int64), np.stack([found[part[i]] for i in rows])

    def usable_ids(self, project: int, model_version: str, task_ids: Iterable[int] | None = None) -> np.ndarray:
        """(n,) ids of the tasks (of `task_ids`; all when None) the version has detections for (not an error), ascending."""
        select = "SELECT task_id FROM detections WHERE project = ? AND model_version = ? AND error IS NULL"
        with self._tx() as db:
            if task_ids is None:
                rows = self._exec(db, select, (project, model_version)).fetchall()
            else:
                rows = [
                    row
                    for part in _batches([int(t) for t in task_ids])
                    for row in self._exec(db, f"{select} AND task_id IN ({', '.join('?' * len(part))})", (project, model_version, *part)).fetchall()
                ]
        return np.sort(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)))

    def usable_refs(
        self, project: int, model_version: str, task_ids: Iterable[int] | None = None, *, num_classes: int | None = None
    ) -> dict[int, str | None]:
        """{task id: image reference (None in rows stored before it was recorded)} of the tasks (of `task_ids`; all when
        None) the version has detections for (not an error), with `num_classes` class columns if given."""
        select = "SELECT task_id, image_ref FROM detections WHERE project = ? AND model_version = ? AND error IS NULL"
        params: tuple = (project, model_version)
        if num_classes is not None:
            select += " AND num_classes = ?"
            params += (int(num_classes),)
        with self._tx() as db:
            if task_ids is None:
                rows = self._exec(db, select, params).fetchall()
            else:
                rows = [
                    row
                    for part in _batches([int(t) for t in task_ids])
                    for row in self._exec(db, f"{select} AND task_id IN ({', '.join('?' * len(part))})", (*params, *part)).fetchall()
                ]
        return {int(task_id): ref for task_id, ref in rows}

    def delete_version(self, project: int, model_version: str) -> int:
        with self._tx() as db:
            return self._exec(db, "DELETE FROM detections WHERE project = ? AND model_version = ?", (project, model_version)).rowcount

    def delete_tasks(self, project: int | None, task_ids: Iterable[int]) -> int:
        """Delete the detections of these tasks (deleted in LS) under every key; project None: in any project (LS's
        task ids are unique across projects). -> rows deleted."""
        deleted = 0
        where, scope = ("project = ? AND ", (project,)) if project is not None else ("", ())
        with self._tx() as db:
            for part in _batches(sorted({int(t) for t in task_ids})):
                found = self._exec(db, f"DELETE FROM detections WHERE {where}task_id IN ({', '.join('?' * len(part))})", (*scope, *part))
                deleted += max(found.rowcount, 0)
        return deleted

    def prune(self, project: int, keep: Iterable[str]) -> int:
        """Delete the project's detections of every key not in `keep`. -> rows deleted."""
        keep = sorted(set(keep))
        if not keep:
            raise ValueError("prune needs at least one key to keep")
        with self._tx() as db:
            return self._exec(
                db,
                f"DELETE FROM detections WHERE project = ? AND model_version NOT IN ({', '.join('?' * len(keep))})",
                (project, *keep),
            ).rowcount

    def versions(self, project: int) -> dict[str, int]:
        """Keys stored for a project -> rows each."""
        with self._tx() as db:
            rows = self._exec(db, "SELECT model_version, COUNT(*) FROM detections WHERE project = ? GROUP BY model_version", (project,)).fetchall()
        return {str(k): int(n) for k, n in rows}


class SqliteDetectionStore(DetectionStore):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connect().execute("PRAGMA journal_mode=WAL")
        self._setup()

    def __repr__(self) -> str:
        return f"SqliteDetectionStore({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            # isolation_level=None: transactions are the explicit BEGIN/COMMIT below
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._local.db = db
        return db

    def _tx(self):
        return self._transaction("BEGIN")

    def _exclusive(self):
        return self._transaction("BEGIN IMMEDIATE")  # one writer at a time: two processes opening a fresh store race otherwise

    @contextmanager
    def _transaction(self, begin: str):
        db = self._connect()
        db.execute(begin)
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            # SQLite ends the transaction itself on some errors (a full disk): a ROLLBACK then fails and hides the cause
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _schema_version(self, db) -> int:
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'store_meta'").fetchone() is None:
            return 0
        row = db.execute("SELECT value FROM store_meta WHERE name = 'schema'").fetchone()
        return 0 if row is None else int(row[0])

    def _columns(self, db, table: str) -> set[str]:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})").fetchall()}


class PostgresDetectionStore(DetectionStore):
    placeholder = "%s"
    blob_type = "BYTEA"
    #: pg_advisory_xact_lock key of the schema check: processes starting together check one at a time.
    SCHEMA_LOCK = 0x616C6500

    def __init__(self, url: str):
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - psycopg is a dependency
            raise ConfigError("DETECTION_STORE_URL", f"a PostgreSQL store needs psycopg 3 (pip install 'psycopg[binary]'): {exc}") from None
        self._psycopg = psycopg
        self.url = url
        self._local = threading.local()
        try:
            self._create_database_if_missing()
            self._setup()
        except psycopg.OperationalError as exc:
            raise ConfigError(
                "DETECTION_STORE_URL",
                f"cannot connect to the PostgreSQL detection store at {without_password(url)}: {str(exc).strip()}; "
                "check that the server runs, the database exists and the user may create tables in it",
            ) from None

    def __repr__(self) -> str:
        return f"PostgresDetectionStore({without_password(self.url)!r})"

    def _create_database_if_missing(self) -> None:
        """Create the URL's database through the server's `postgres` database when it does not exist yet."""
        from psycopg import conninfo, errors, sql

        try:
            self._psycopg.connect(self.url, autocommit=True).close()
            return
        except self._psycopg.OperationalError as exc:
            name = conninfo.conninfo_to_dict(self.url).get("dbname")
            if not name or "does not exist" not in str(exc):
                raise
        with self._psycopg.connect(conninfo.make_conninfo(self.url, dbname="postgres"), autocommit=True) as admin:
            try:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except errors.DuplicateDatabase:  # another process created it meanwhile
                pass

    def _connect(self):
        db = getattr(self._local, "db", None)
        if db is None or db.closed:
            db = self._psycopg.connect(self.url, autocommit=True)
            self._local.db = db
        return db

    @contextmanager
    def _tx(self):
        db = self._connect()
        with db.transaction():
            yield db

    @contextmanager
    def _exclusive(self):
        with self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (self.SCHEMA_LOCK,))
            yield db

    def _schema_version(self, db) -> int:
        if db.execute("SELECT to_regclass('store_meta')").fetchone()[0] is None:
            return 0
        row = db.execute("SELECT value FROM store_meta WHERE name = 'schema'").fetchone()
        return 0 if row is None else int(row[0])

    def _columns(self, db, table: str) -> set[str]:
        query = "SELECT column_name FROM information_schema.columns WHERE table_name = %s AND table_schema = current_schema()"
        return {row[0] for row in db.execute(query, (table,)).fetchall()}


#: The store's file in MODEL_DIR when DETECTION_STORE_URL is empty.
DEFAULT_SQLITE_NAME = "detections.sqlite"


def open_detection_store(url: str, model_dir: str | Path) -> DetectionStore:
    """DETECTION_STORE_URL -> a store. Empty: SQLite in `model_dir`; `sqlite:///path`; `postgresql://...`."""
    if not url:
        return SqliteDetectionStore(Path(model_dir) / DEFAULT_SQLITE_NAME)
    # as Settings checks it: a password libpq would misread is refused before libpq quotes a piece of it as the host
    check_detection_store_url(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDetectionStore(url)
    if url.startswith("sqlite:///"):
        return SqliteDetectionStore(url[len("sqlite:///") :])
    raise ConfigError(
        "DETECTION_STORE_URL",
        f"must be empty (SQLite in MODEL_DIR), sqlite:///<path> or postgresql://user:password@host:5432/database, got {without_password(url)!r}",
    )


def _batches(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), ID_BATCH):
        yield ids[start : start + ID_BATCH]
