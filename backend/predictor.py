"""The /predict pipeline: fetch images, detect in batches, filter, convert to LS results."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .adapters import Adapter
from .detections import Detections
from .errors import AleError
from .ls_format import RectangleConfig, detections_to_results, match_labels, parse_label_config, task_image_url
from .media import MediaFetcher
from .scoring import min_confidence
from .serving import ServingFilters, shown_classes, shown_detections
from .settings import Settings

log = logging.getLogger(__name__)

#: Parallel image downloads per request; I/O bound, so threads are enough.
FETCH_WORKERS = 4


@dataclass
class TaskFailure:
    task_id: object
    reason: str


@dataclass
class PredictOutcome:
    """One LS prediction per task (same order), plus why some tasks got an empty result."""

    predictions: list[dict]
    failures: list[TaskFailure] = field(default_factory=list)
    seconds: float = 0.0


class Predictor:
    def __init__(self, settings: Settings, adapter: Adapter, fetcher: MediaFetcher):
        self.settings = settings
        self.adapter = adapter
        self.fetcher = fetcher

    def raw(self, images: list[Image.Image]) -> list[Detections]:
        """The adapter's own output for each image, in batches: every box above the model's floor."""
        step = self.settings.predict_batch_size
        detections: list[Detections] = []
        for start in range(0, len(images), step):
            detections.extend(self.adapter.predict(images[start : start + step]))
        return detections

    def shown(self, raw: Detections, shown: np.ndarray | None = None) -> Detections:
        """One image's raw detections -> what an annotator sees (`shown`: (C,) classes with a label; default all)."""
        mask = np.ones(raw.num_classes, dtype=bool) if shown is None else shown
        return shown_detections(raw, mask, ServingFilters.from_settings(self.settings))

    def detect(self, images: list[Image.Image], shown: np.ndarray | None = None) -> list[Detections]:
        """Run the adapter in batches and keep what an annotator sees (see `shown`)."""
        return [self.shown(d, shown) for d in self.raw(images)]

    def fetch_images(self, tasks: list[dict], config: RectangleConfig) -> tuple[list[Image.Image | None], dict[int, str]]:
        """Fetch each task's image in parallel. -> (image or None per task, {position: reason})."""
        images: list[Image.Image | None] = [None] * len(tasks)
        errors: dict[int, str] = {}

        def load(position: int) -> None:
            try:
                images[position] = self.fetcher.fetch(task_image_url(tasks[position], config))
            except AleError as exc:
                errors[position] = str(exc)

        with ThreadPoolExecutor(max_workers=min(FETCH_WORKERS, max(1, len(tasks)))) as pool:
            list(pool.map(load, range(len(tasks))))
        return images, errors

    def predict_tasks(self, tasks: list[dict], label_config: str) -> PredictOutcome:
        """LS tasks -> one prediction each. A task whose image fails gets an empty result."""
        started = time.perf_counter()
        config = parse_label_config(label_config)
        label_map = match_labels(self.adapter.classes, config)
        images, errors = self.fetch_images(tasks, config)
        failures = {i: TaskFailure(tasks[i].get("id"), reason) for i, reason in errors.items()}

        ready = [i for i in range(len(tasks)) if images[i] is not None]
        detections = dict(zip(ready, self.detect([images[i] for i in ready], shown_classes(label_map))))
        version = self.adapter.version
        predictions = []
        for position, task in enumerate(tasks):
            if position in failures:
                log.warning("task %s: empty prediction: %s", failures[position].task_id, failures[position].reason)
                predictions.append({"result": [], "score": 1.0, "model_version": version})
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
