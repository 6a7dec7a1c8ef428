"""The /predict pipeline: fetch images, detect in batches, filter, convert to LS results."""

from __future__ import annotations

import logging
import time
from collections import deque
from contextlib import closing
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

from .adapters import Adapter
from .detections import Detections
from .errors import AleError
from .ls_format import RectangleConfig, detections_to_results, match_labels, parse_label_config, task_image_url
from .media import MediaFetcher, decode_image, header_pixels
from .scoring import flip_instability, min_confidence
from .serving import ServingFilters, measures_localization, shown_classes, shown_detections
from .settings import Settings

log = logging.getLogger(__name__)

#: Parallel image downloads per request; I/O bound, so threads are enough.
FETCH_WORKERS = 4
#: Seconds a /predict request starts new work for: Label Studio stops waiting at 100 s, and a request it gave up on would
#: still hold the model (one forward pass at a time) from the annotators opening tasks. Tasks not reached by then get no
#: prediction, and the sync predicts them.
PREDICT_DEADLINE_SECONDS = 90.0


@dataclass
class TaskFailure:
    task_id: object
    reason: str


@dataclass
class PredictOutcome:
    """Per task (same order) its LS prediction, or an empty list where it failed (LS then stores none), and why."""

    predictions: list[dict | list]
    failures: list[TaskFailure] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class ImageChunk:
    """Consecutive tasks from position `start`: their images (None where it failed) and {position: reason}."""

    start: int
    images: list[Image.Image | None] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    pixels: int = 0

    def add(self, loaded: Image.Image | str) -> None:
        if isinstance(loaded, str):
            self.errors[self.start + len(self.images)] = loaded
            self.images.append(None)
        else:
            self.images.append(loaded)
            self.pixels += loaded.width * loaded.height

    def fits(self, pixels: int, max_pixels: int | None) -> bool:
        """Whether a frame of `pixels` can join without the chunk going over `max_pixels` (a failure, 0, always can)."""
        return max_pixels is None or self.pixels + pixels <= max_pixels

    def ready(self) -> list[int]:
        """Positions within the chunk whose image was fetched."""
        return [i for i, image in enumerate(self.images) if image is not None]


class Predictor:
    def __init__(self, settings: Settings, adapter: Adapter, fetcher: MediaFetcher, project: int | None = None):
        self.settings = settings
        self.adapter = adapter
        self.fetcher = fetcher
        self.project = project  # cloud-storage images are resolved through LS per task of a project

    def raw(self, images: list[Image.Image], *, instability: bool = True, deadline: float | None = None) -> list[Detections]:
        """The adapter's own output for each image, in batches: every box above the model's floor.

        instability: run the mirrored second pass where the policy measures localization (a "loc" policy); the queue's
        ranking reads it, what an annotator is shown does not. deadline: a `time.perf_counter()` after which no batch
        starts; the result then covers the images before it only.
        """
        step = self.settings.predict_batch_size
        mirror = instability and measures_localization(self.settings)
        detections: list[Detections] = []
        for start in range(0, len(images), step):
            if deadline is not None and time.perf_counter() >= deadline:
                break
            batch = images[start : start + step]
            found = self.adapter.predict(batch)
            if mirror:  # a "loc" policy: a second pass on the mirrored images gives each box its instability
                mirrored = self.adapter.predict([ImageOps.mirror(image) for image in batch])
                found = [d.with_instability(flip_instability(d.xyxy, m.xyxy, d.image_size[0])) for d, m in zip(found, mirrored)]
            detections.extend(found)
        return detections

    def shown(self, raw: Detections, shown: np.ndarray | None = None) -> Detections:
        """One image's raw detections -> what an annotator sees (`shown`: (C,) classes with a label; default all)."""
        mask = np.ones(raw.num_classes, dtype=bool) if shown is None else shown
        return shown_detections(raw, mask, ServingFilters.from_settings(self.settings))

    def detect(
        self, images: list[Image.Image], shown: np.ndarray | None = None, *, instability: bool = True, deadline: float | None = None
    ) -> list[Detections]:
        """Run the adapter in batches and keep what an annotator sees (see `shown`; `raw` for the rest)."""
        return [self.shown(d, shown) for d in self.raw(images, instability=instability, deadline=deadline)]

    def image_chunks(
        self, tasks: list[dict], config: RectangleConfig, max_pixels: int | None, max_images: int | None, deadline: float | None = None
    ) -> Iterator["ImageChunk"]:
        """Fetch tasks' images in parallel, in order, as consecutive chunks.

        A chunk holds at most `max_pixels` decoded pixels (an image larger than
        that alone) and `max_images` tasks; None: no bound. Downloads run up to
        FETCH_WORKERS ahead as compressed bytes and are decoded here, one at a
        time, so a step holds at most `max_pixels` of decoded frames (or one
        frame larger than that), whatever the task count: a caller drops each
        chunk (`del chunk`) before asking for the next. deadline: a
        `time.perf_counter()` after which no more images are awaited (nor is a
        download waited on past it); the last chunk then ends before the first
        task not reached. A chunk of fetched images waits for the next download
        at most half the time left, then is handed over as it is, so that the
        tasks fetched in time are predicted in time.
        """
        def load(position: int) -> bytes | str:
            try:
                task = tasks[position]
                return self.fetcher.fetch_bytes(task_image_url(task, config), task.get("id"), self.project)
            except AleError as exc:
                return str(exc)

        chunk = ImageChunk(0)
        pool = ThreadPoolExecutor(max_workers=min(FETCH_WORKERS, max(1, len(tasks))))
        try:
            pending: deque[Future] = deque()
            submitted = 0
            while pending or submitted < len(tasks):
                if deadline is not None and time.perf_counter() >= deadline:
                    break
                while submitted < len(tasks) and len(pending) < FETCH_WORKERS:
                    pending.append(pool.submit(load, submitted))
                    submitted += 1
                if deadline is not None and not pending[0].done():
                    if chunk.images:
                        # the images fetched so far can only be predicted before the deadline: a download slow to
                        # come keeps them for half the time left at most, the other half is for predicting them
                        wait([pending[0]], timeout=max(0.0, (deadline - time.perf_counter()) / 2))
                        if not pending[0].done():
                            yield chunk
                            chunk = ImageChunk(chunk.start + len(chunk.images))
                    # the download stays first in line until it is done: the next image never takes its task's place
                    wait([pending[0]], timeout=max(0.0, deadline - time.perf_counter()))
                    if not pending[0].done():
                        break  # not reached: this task and the ones after it get no prediction
                loaded = pending.popleft().result()
                # the chunk is closed on the frame's header, before its pixels are decoded: a frame decoded first
                # would stay alive beside the whole chunk while the caller predicts it
                if chunk.images and not chunk.fits(0 if isinstance(loaded, str) else header_pixels(loaded), max_pixels):
                    yield chunk
                    chunk = ImageChunk(chunk.start + len(chunk.images))
                if isinstance(loaded, bytes):
                    try:
                        loaded = decode_image(loaded, self.settings.max_image_pixels)
                    except AleError as exc:
                        loaded = str(exc)
                chunk.add(loaded)
                if max_images is not None and len(chunk.images) >= max_images:
                    yield chunk
                    chunk = ImageChunk(chunk.start + len(chunk.images))
            if chunk.images:
                yield chunk
        finally:
            # a caller that stops early (a deadline, an error) does not wait for the downloads still running
            pool.shutdown(wait=False, cancel_futures=True)

    def predict_tasks(self, tasks: list[dict], label_config: str, budget: float = PREDICT_DEADLINE_SECONDS) -> PredictOutcome:
        """LS tasks -> one prediction each; a task whose image fails gets none (an empty list) and a reason.

        Work starts for `budget` seconds (PREDICT_DEADLINE_SECONDS): the tasks not reached by then get none either, and
        a reason saying the sync predicts them. No mirrored pass: what an annotator is shown needs none.
        """
        started = time.perf_counter()
        deadline = started + budget
        config = parse_label_config(label_config)
        label_map = match_labels(self.adapter.classes, config)
        shown = shown_classes(label_map)
        failures: dict[int, TaskFailure] = {}
        detections: dict[int, Detections] = {}
        # LS sends every selected task in one request: frames are decoded a bounded number of pixels at a time.
        with closing(self.image_chunks(tasks, config, self.settings.predict_chunk_pixels, None, deadline)) as chunks:
            for chunk in chunks:
                failures.update({i: TaskFailure(tasks[i].get("id"), reason) for i, reason in chunk.errors.items()})
                ready = chunk.ready()
                found = self.detect([chunk.images[i] for i in ready], shown, instability=False, deadline=deadline)
                detections.update({chunk.start + i: d for i, d in zip(ready, found)})
                del chunk  # its frames go before the next chunk's are decoded
        late = {position for position in range(len(tasks)) if position not in failures and position not in detections}
        if late:
            reason = (
                f"not predicted within this request's {budget:g} s (Label Studio stops waiting at 100 s): the backend's sync "
                "predicts it; select fewer tasks to have them predicted at once"
            )
            log.warning("/predict: %d of %d tasks not reached within %g s; the sync predicts them", len(late), len(tasks), budget)
            failures.update({position: TaskFailure(tasks[position].get("id"), reason) for position in late})
        version = self.adapter.version
        predictions = []
        for position, task in enumerate(tasks):
            if position in failures:
                # No prediction (an empty list): LS stores none, and predicts the task again once the cause is fixed.
                # An empty prediction would stay: LS skips a task that has one of the model's version.
                if position not in late:
                    log.warning("task %s: not predicted: %s", failures[position].task_id, failures[position].reason)
                predictions.append([])
                continue
            found = detections[position]
            predictions.append(
                {
                    "result": detections_to_results(found, label_map, config),
                    "score": min_confidence(found.scores),
                    "model_version": version,
                }
            )
        return PredictOutcome(predictions, [failures[i] for i in sorted(failures)], time.perf_counter() - started)
