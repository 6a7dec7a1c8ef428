"""The queue LS serves means what the backend says, on real projects: real Label Studio 1.23.2, the sync in process.

- a model class the label config does not show is neither drawn nor scored;
- a sync with nothing left to rank keeps the served version;
- a serving setting changed between two syncs shows in the second, with no new model.
"""

import numpy as np
import pytest

from label_studio_ale.detection_store import SqliteDetectionStore
from label_studio_ale.jobs import SYNC_VERSION_PREFIX, sync_priorities
from label_studio_ale.policies import DEFAULT_POLICY, get_policy
from label_studio_ale.ranking import rank
from label_studio_ale.runtime import Runtime
from label_studio_ale.serving import ServingFilters, raw_output_key, shown_detections
from label_studio_ale.settings import Settings
from tests.support.backend import backend_env
from tests.support.projects import LABEL_CONFIG, create_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIRDS_ONLY = LABEL_CONFIG.replace('<Label value="nest"/>', "")
SCENE = {"max_objects": 5, "min_side": 14, "max_side": 30}


def settings_for(label_studio, weights, model_dir, **extra) -> Settings:
    return Settings.from_env(backend_env(label_studio, weights, model_dir, **extra))


def served_predictions(ls, project, version) -> dict:
    return {p.task: p for p in ls.predictions.list(project=project) if p.model_version == version}


def serve_all(ls, project, count) -> list[int]:
    """'Label All Tasks': ask LS for the next task and submit it, `count` times."""
    served = []
    for _ in range(count):
        response = ls._client_wrapper.httpx_client.request(f"api/projects/{project}/next/", method="GET")
        assert response.status_code == 200, response.text[:300]
        served.append(response.json()["id"])
        ls.annotations.create(id=served[-1], result=[], lead_time=1.0)
    return served


def test_a_class_the_config_does_not_show_is_not_scored(ls_sdk, label_studio, trained_weights, tmp_path):
    """A bird/nest checkpoint behind a config that labels birds only: LS serves the ranking of the birds alone."""
    project, task_ids = create_project(ls_sdk, range(90_000, 90_010), "birds only", label_config=BIRDS_ONLY, **SCENE)
    settings = settings_for(label_studio, trained_weights, tmp_path)
    rt = Runtime(settings)
    result = sync_priorities(project, runtime=rt)
    assert result["status"] == "synced" and result["tasks"] == 10 and result["unusable"] == 0

    # What the model produced is stored whole, nests included...
    adapter = rt.adapter_for(project)
    stored = SqliteDetectionStore(tmp_path / "detections.sqlite").get_many(project, raw_output_key(adapter.version, settings))
    ids = np.array(sorted(task_ids))
    raw = [stored[int(t)].detections for t in ids]
    assert sum(int((d.labels == 1).sum()) for d in raw) > 0, "the scenes should hold nests the model finds"
    # ...and the ranking is computed from the birds alone.
    filters = ServingFilters.from_settings(settings)
    policy = get_policy(DEFAULT_POLICY)
    birds = [shown_detections(d, np.array([True, False]), filters) for d in raw]
    expected = [int(ids[i]) for i in rank(policy.usefulness(birds), ids)]
    both = [int(ids[i]) for i in rank(policy.usefulness([shown_detections(d, np.ones(2, dtype=bool), filters) for d in raw]), ids)]
    assert expected != both, "the nests must change the ranking, or this test shows nothing"
    assert result["order"] == expected

    # The pre-annotations hold birds only, and "Label All Tasks" serves that ranking.
    predictions = served_predictions(ls_sdk, project, result["model_version"])
    assert set(predictions) == set(task_ids)
    labels = {region["value"]["rectanglelabels"][0] for p in predictions.values() for region in p.result}
    assert labels == {"bird"}
    assert serve_all(ls_sdk, project, len(task_ids)) == expected


def test_a_sync_with_nothing_left_to_rank_keeps_the_served_version(ls_sdk, label_studio, trained_weights, tmp_path):
    project, task_ids = create_project(ls_sdk, range(91_000, 91_003), "all labelled", **SCENE)
    rt = Runtime(settings_for(label_studio, trained_weights, tmp_path))
    first = sync_priorities(project, runtime=rt)
    served = first["model_version"]
    assert first["status"] == "synced" and served.startswith(SYNC_VERSION_PREFIX)
    serve_all(ls_sdk, project, len(task_ids))  # every task is labelled now

    second = sync_priorities(project, runtime=rt)  # nothing new since the served queue: nothing to look at
    assert second["status"] == "unchanged" and second["new_tasks"] == 0 and second["written"] == 0
    assert second["deleted_versions"] == [] and second["model_version"] == served
    third = sync_priorities(project, runtime=rt, full=True)  # a full sync lists them all: none is left
    assert third["status"] == "nothing to rank" and third["tasks"] == 0 and "no unlabeled task" in third["reason"]
    assert third["deleted_versions"] == [] and third["model_version"] == served
    assert ls_sdk.projects.get(id=project).model_version == served
    assert set(served_predictions(ls_sdk, project, served)) == set(task_ids)


def test_a_changed_score_threshold_shows_in_the_next_sync_without_a_new_model(ls_sdk, label_studio, trained_weights, tmp_path):
    project, task_ids = create_project(ls_sdk, range(92_000, 92_012), "threshold", **SCENE)
    low = sync_priorities(project, runtime=Runtime(settings_for(label_studio, trained_weights, tmp_path, SCORE_THRESHOLD="0.1")))
    low_boxes = {t: p.result for t, p in served_predictions(ls_sdk, project, low["model_version"]).items()}
    high = sync_priorities(project, runtime=Runtime(settings_for(label_studio, trained_weights, tmp_path, SCORE_THRESHOLD="0.6")))
    high_boxes = {t: p.result for t, p in served_predictions(ls_sdk, project, high["model_version"]).items()}
    assert low["status"] == high["status"] == "synced"
    assert set(low_boxes) == set(high_boxes) == set(task_ids)
    # the same model, and it did not run again: the second sync filtered what the first stored
    assert low["served_model"] == high["served_model"]
    assert low["predicted"]["predicted"] == len(task_ids) and high["predicted"]["predicted"] == 0
    assert ls_sdk.projects.get(id=project).model_version == high["model_version"]
    assert all(min(r["score"] for r in regions) >= 0.6 for regions in high_boxes.values() if regions)
    assert sum(map(len, high_boxes.values())) < sum(map(len, low_boxes.values()))
    assert any(r["score"] < 0.6 for regions in low_boxes.values() for r in regions)
    assert high["order"] != low["order"]
