"""The full rewrite's switch: only to a version holding a prediction for every pool task that still exists."""

import numpy as np
import pytest

from label_studio_ale import jobs, queue_writes
from label_studio_ale.detection_store import ServedQueue, StoredDetections
from label_studio_ale.detections import Detections
from label_studio_ale.runtime import Runtime
from label_studio_ale.serving import raw_output_key
from label_studio_ale.settings import Settings
from tests.test_jobs import CONFIG, Model, RecordsDiscards, TrainedModel


def rewrite(tmp_path, held, existing):
    """A rewrite of tasks 1 and 2 where LS then counts `held` of their predictions and lists `existing` of them."""
    settings = Settings(model_dir=tmp_path)
    ls = RecordsDiscards([])
    ls.model_versions = lambda project: {item["model_version"]: held for item in ls.created}
    ls.label_states = lambda project, ids: {t: False for t in ids if t in existing}
    rt = Runtime(settings, ls=ls)
    key = raw_output_key(Model.version, settings)
    rt.store.put_many(1, key, [StoredDetections(t, Detections([[0, 0, 9, 9]], [[0.4, 0.0]], (64, 64)), t, None) for t in (1, 2)])
    run = lambda: queue_writes.rewrite_queue(  # noqa: E731
        rt, 1, CONFIG, TrainedModel(), ServedQueue(None, key, "ranking"), None, np.array([1, 2]), lambda *a, **k: None, lambda name: None
    )
    return rt, ls, run


def test_a_rewrite_whose_version_lost_predictions_meanwhile_switches_nothing(tmp_path):
    """Another sync (its lock lost, or a process that took none) removed part of the version: never serve it."""
    rt, ls, run = rewrite(tmp_path, held=1, existing={1, 2})
    with pytest.raises(jobs.SyncError, match=r"the previous order stays: version ale:m-1:.* holds 1 predictions where 2 tasks still want one"):
        run()
    assert ls.switched is None and ls.deleted == [ls.created[0]["model_version"]]
    assert rt.store.served_queue(1) is None


def test_a_task_deleted_in_label_studio_during_the_rewrite_took_only_its_own_prediction(tmp_path):
    """LS deletes a task's predictions with it: one prediction short for a task that is gone is no damage."""
    rt, ls, run = rewrite(tmp_path, held=1, existing={2})
    assert run()["model_version"] == ls.switched
    assert rt.store.served_queue(1).ls_version == ls.switched
