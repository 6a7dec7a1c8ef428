"""The /predict pipeline: fetch images, detect in batches, filter, convert to LS results."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .adapters import Adapter
from .boxes import filter_detections
from .detections import Detections
from .errors import AleError
from .ls_format import RectangleConfig, detections_to_results, match_labels, parse_label_config, task_image_url
from .media import MediaFetcher
from .scoring import min_confidence
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

    def detect(self, images: list[Image.Image]) -> list[Detections]:
        """Run the adapter in batches and apply the serving filters from the settings."""
        s = self.settings
        detections: list[Detections] = []
        for start in range(0, len(images), s.predict_batch_size):
            detections.extend(self.adapter.predict(images[start : start + s.predict_batch_size]))
        return [
            filter_detections(
                d,
                score_threshold=s.score_threshold,
                nms_metric=s.nms_metric,
                nms_threshold=s.nms_threshold,
                max_tags_per_pixel=s.max_tags_per_pixel,
                max_detections=s.max_detections,
            )
            for d in detections
        ]

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
        detections = dict(zip(ready, self.detect([images[i] for i in ready])))
        # Boxes of classes the config has no label for are neither shown nor scored.
        in_config = np.array([label is not None for label in label_map])
        version = self.adapter.version
        predictions = []
        for position, task in enumerate(tasks):
            if position in failures:
                log.warning("task %s: empty prediction: %s", failures[position].task_id, failures[position].reason)
                predictions.append({"result": [], "score": 1.0, "model_version": version})
                continue
            found = detections[position]
            found = found[in_config[found.labels]]
            predictions.append(
                {
                    "result": detections_to_results(found, label_map, config),
                    "score": min_confidence(found.scores),
                    "model_version": version,
                }
            )
        return PredictOutcome(predictions, [failures[i] for i in sorted(failures)], time.perf_counter() - started)
