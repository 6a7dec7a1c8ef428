"""Model versions on disk: MODEL_DIR/<project>/<version>/ and an atomically switched pointer.

A version directory holds the weights (`weights.pt`, or a `model/` folder for
adapters whose models are folders, such as a SavedModel), `classes.json`,
`metrics.json` and `manifest.json`. It is written under a temporary name and renamed into place
only when complete, and `current` (a one-line file naming the served version)
is replaced with `os.replace`: a crash at any moment leaves `current` naming a
complete version, or no version at all. `last-version` names the highest
number ever given, so a version folder removed by hand never has its name
given again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

CURRENT = "current"
#: A one-line file naming the highest version number ever given in the project, so that a version folder removed
#: by hand never has its name given again: the adapter cache, the detection store and the served-queue record all
#: know a model by its name, and would take a new model for the removed one.
LAST_VERSION = "last-version"
WEIGHTS = "weights.pt"
#: Where a version keeps weights that are a folder (e.g. a SavedModel export).
WEIGHTS_DIR = "model"
_VERSION_NAME = re.compile(r"^v\d{4,}$")
#: Names in a project's folder that only a running training writes: its work folder, a version being copied
#: in, the pointer or the version mark being replaced. A training killed mid-way leaves them (`remove_leftovers`).
WORK_PREFIX, INCOMING_PREFIX, POINTER_PREFIX, MARK_PREFIX = ".work-", ".incoming-", ".current-", ".last-version-"
LEFTOVER_PREFIXES = (WORK_PREFIX, INCOMING_PREFIX, POINTER_PREFIX, MARK_PREFIX)
#: A running training touches its work folder this often (`kept_in_use`), so that it never looks left over.
IN_USE_TOUCH_S = 60.0
#: Something a training writes counts as left over once untouched this long: ten touches missed. A training whose
#: lock lapsed (Redis restarted) still runs, and the next training, holding the lock now, must not delete its files.
LEFTOVER_AGE_S = 600.0


@dataclass(frozen=True)
class ModelVersion:
    name: str
    path: Path
    classes: tuple[str, ...]
    metrics: dict
    manifest: dict

    @property
    def weights(self) -> Path:
        folder = self.path / WEIGHTS_DIR
        return folder if folder.is_dir() else self.path / WEIGHTS


class ModelStore:
    def __init__(self, root: str | Path, project: int):
        if not isinstance(project, int) or project < 0:
            raise ValueError(f"project must be a non-negative integer id, got {project!r}")
        self.dir = Path(root) / str(project)

    def versions(self) -> list[ModelVersion]:
        """Complete versions that can be loaded, oldest first (an incomplete or tampered one is left out, with a warning)."""
        if not self.dir.is_dir():
            return []
        # by number: "v10000" comes after "v9999", which sorting the names as text would not give
        names = sorted((p.name for p in self.dir.iterdir() if p.is_dir() and not p.is_symlink() and _VERSION_NAME.match(p.name)), key=lambda n: int(n[1:]))
        found = []
        for name in names:
            try:
                found.append(self.get(name))
            except LookupError as exc:
                log.warning("%s", exc)
        return found

    def get(self, name: str) -> ModelVersion:
        if not _VERSION_NAME.match(name or ""):
            raise ValueError(f"not a version name: {name!r}")
        path = self.dir / name
        if path.is_symlink() or (path.exists() and not path.resolve().is_relative_to(self.dir.resolve())):
            # Weights are unpickled when loaded: only files written into the store itself are trusted.
            raise LookupError(f"model version {name} of {self.dir} points outside the model store; refusing to load it")
        try:
            classes = tuple(json.loads((path / "classes.json").read_text()))
            metrics = json.loads((path / "metrics.json").read_text())
            manifest = json.loads((path / "manifest.json").read_text())
        except FileNotFoundError:
            raise LookupError(f"model version {name} of {self.dir} is missing or incomplete") from None
        except ValueError as exc:  # a record cut short (a disk that filled, a copy interrupted)
            raise LookupError(
                f"model version {name} of {self.dir} has an unreadable record ({exc}); train again, or serve another "
                f"version: ale models --project {self.dir.name} --promote vNNNN"
            ) from None
        version = ModelVersion(name, path, classes, metrics, manifest)
        self._refuse_links(version.weights, name)
        return version

    def _refuse_links(self, weights: Path, name: str) -> None:
        """Weights are unpickled when loaded: a link anywhere in them (to outside the store) is refused."""
        root = self.dir.resolve()
        entries = [weights]
        if weights.is_dir() and not weights.is_symlink():
            entries += [Path(folder) / entry for folder, dirs, files in os.walk(weights) for entry in dirs + files]
        for entry in entries:
            if entry.is_symlink() or (entry.exists() and not entry.resolve().is_relative_to(root)):
                raise LookupError(
                    f"model version {name} of {self.dir}: {entry.relative_to(self.dir)} is a link (to "
                    f"{os.path.realpath(entry)}); weights are only loaded from files inside the model store, refusing it"
                )

    def current(self) -> ModelVersion | None:
        pointer = self.dir / CURRENT
        if not pointer.exists():
            return None
        return self.get(pointer.read_text().strip())

    def readable_current(self) -> tuple[ModelVersion | None, str | None]:
        """(the served version, None), or (None, why) when the version it names cannot be read (damaged, tampered)."""
        try:
            return self.current(), None
        except (LookupError, ValueError) as exc:
            return None, str(exc)

    def add(self, weights: str | Path, classes, metrics: dict, manifest: dict | Callable[[str], dict]) -> ModelVersion:
        """Copy `weights` (a file, or a folder such as a SavedModel) in as a new complete version (not yet current).

        `manifest` may be a function of the version's name (a record that names the version, e.g. the command that
        serves it), called once the name is chosen, before the version appears.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=INCOMING_PREFIX, dir=self.dir))
        created = time.time()
        try:
            if Path(weights).is_dir():
                shutil.copytree(weights, staging / WEIGHTS_DIR)
            else:
                shutil.copyfile(weights, staging / WEIGHTS)
            (staging / "classes.json").write_text(json.dumps(list(classes)))
            (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
            if not callable(manifest):
                (staging / "manifest.json").write_text(json.dumps(manifest | {"created": created}, indent=2))
            # On disk before the rename: after a power loss a version is either absent or whole, never empty files.
            _fsync_tree(staging)
            for _ in range(100):  # another writer may take the same number: try the next
                name = self._next_name()
                if callable(manifest):
                    (staging / "manifest.json").write_text(json.dumps(manifest(name) | {"created": created}, indent=2))
                    _fsync_path(staging / "manifest.json")
                    _fsync_path(staging)
                # reserved before the rename: a writer killed between the two leaves a gap, never a name to reuse
                self._write_file(LAST_VERSION, name, MARK_PREFIX)
                try:
                    os.rename(staging, self.dir / name)
                except OSError:
                    if not (self.dir / name).exists():
                        raise
                    continue
                _fsync_path(self.dir)  # after the rename only: its failure is not a name taken
                return self.get(name)
            raise RuntimeError(f"could not allocate a version name in {self.dir}")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def remove_leftovers(self, older_than: float = LEFTOVER_AGE_S) -> list[str]:
        """Delete what a killed training left in the store (a work folder, a version half-copied, a pointer not yet renamed).

        Call it under the project's train lock. Only what was last touched `older_than` seconds ago or more goes:
        a training whose lock lapsed may still run, and touches its work folder (`kept_in_use`). -> the names removed.
        """
        if not self.dir.is_dir():
            return []
        removed = []
        now = time.time()
        for entry in self.dir.iterdir():
            if entry.name.startswith(LEFTOVER_PREFIXES) and not entry.is_symlink():
                try:
                    if now - entry.lstat().st_mtime < older_than:
                        continue
                except FileNotFoundError:  # its writer renamed or removed it meanwhile
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry.name)
        return sorted(removed)

    @staticmethod
    @contextmanager
    def kept_in_use(folder: Path, every: float = IN_USE_TOUCH_S) -> Iterator[Path]:
        """Create `folder` and touch it every `every` seconds until the block ends, so `remove_leftovers` keeps it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        done = threading.Event()

        def touch() -> None:
            while not done.wait(every):
                try:
                    os.utime(folder)
                except OSError:  # gone (the block is ending) or the disk is away: the next touch tries again
                    pass

        toucher = threading.Thread(target=touch, name=f"touch {folder.name}", daemon=True)
        toucher.start()
        try:
            yield folder
        finally:
            done.set()
            toucher.join()

    def promote(self, name: str) -> None:
        """Make `name` the served version, atomically."""
        self.get(name)  # must be complete
        self._write_file(CURRENT, name, POINTER_PREFIX)

    def record_promotion(self, name: str, promotion: dict) -> ModelVersion:
        """Replace the manifest's `promotion` record of stored version `name`, atomically. -> the version as stored now."""
        version = self.get(name)
        manifest = version.manifest | {"promotion": promotion}
        self._write_file(f"{name}/manifest.json", json.dumps(manifest, indent=2), ".manifest-", newline=False)
        return self.get(name)

    def _write_file(self, name: str, text: str, prefix: str, newline: bool = True) -> None:
        """Write `text` as `name` (relative to the project's folder) whole or not at all: a flushed temporary, renamed."""
        target = self.dir / name
        handle, temp = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        try:
            with os.fdopen(handle, "w") as f:
                f.write(text + ("\n" if newline else ""))
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        _fsync_path(target.parent)

    def _next_name(self) -> str:
        """One past the highest number given so far: the high-water mark, or a folder (a store older than the mark)."""
        numbers = [int(p.name[1:]) for p in self.dir.iterdir() if _VERSION_NAME.match(p.name)] if self.dir.is_dir() else []
        mark = self._last_given()
        return f"v{max(numbers + [mark], default=0) + 1:04d}"

    def _last_given(self) -> int:
        """The number in LAST_VERSION; 0 when there is none (a store made before it) or it does not parse."""
        try:
            text = (self.dir / LAST_VERSION).read_text().strip()
        except FileNotFoundError:
            return 0
        if not _VERSION_NAME.match(text):
            # written whole by os.replace, so only a hand edit gets here: the folders still give a lower bound
            log.warning("%s holds %r, not a version name: numbering from the version folders", self.dir / LAST_VERSION, text)
            return 0
        return int(text[1:])


def _fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry list to disk (a folder: so that a rename in it survives a power loss)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _fsync_tree(root: Path) -> None:
    """Every file under `root`, then every folder, deepest first."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_path(Path(folder) / name)
        _fsync_path(Path(folder))
