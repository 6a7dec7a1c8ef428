"""What an annotator sees, in a real browser: Label Studio 1.23.2's own UI in headless Chromium.

"Label All Tasks" must open the top of the backend's ranking, with its
pre-annotated boxes drawn and labelled as the backend predicted them.
"""

import os
import shutil

import pytest
from redis import Redis

from label_studio_ale.jobqueue import RedisJobQueue
from tests.integration.test_incremental_sync import run_sync
from tests.support.backend import backend_env, run_worker
from tests.support.browser import browser_page, sign_in_to_label_studio
from tests.support.label_studio import PASSWORD, USERNAME
from tests.support.projects import create_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: The regions panel of Label Studio's labeling UI: one item per region, its label inside.
REGION = ".lsf-outliner-item"
REGION_LABEL = ".lsf-labels-list .lsf-labels-list"
TASK_ID = ".lsf-current-task__task-id"
#: A folder to copy the run's screenshot into.
KEEP_SCREENSHOTS = "ALE_KEEP_SCREENSHOTS"


def labels_of(result) -> list[str]:
    return sorted(label for region in result for label in region["value"]["rectanglelabels"])


def test_label_all_tasks_opens_the_top_of_the_ranking_with_its_boxes_drawn(ls_sdk, label_studio, redis_server, trained_weights, tmp_path):
    env = backend_env(label_studio, trained_weights, tmp_path / "models", redis_server, SCORE_THRESHOLD="0.25")
    jobs = RedisJobQueue(Redis.from_url(redis_server.url), "yolov5")
    project, _ = create_project(ls_sdk, range(55_000, 55_008), "annotator in a browser", max_objects=5, min_side=14, max_side=30)
    with run_worker(env, tmp_path, queues="predict,sync"):
        result = run_sync(jobs, project)
    assert result["status"] == "synced"
    top = result["order"][0]
    shown = next(p for p in ls_sdk.predictions.list(project=project) if p.task == top and p.model_version == result["model_version"])
    assert shown.result, "the top task should have pre-annotations to draw"

    with browser_page() as page:
        sign_in_to_label_studio(page, label_studio.url, USERNAME, PASSWORD)
        page.goto(f"{label_studio.url}/projects/{project}/data")
        page.get_by_text("Label All Tasks").first.click()
        page.wait_for_selector(REGION, timeout=60_000)
        opened = int(page.locator(TASK_ID).inner_text().split()[0])
        regions = page.locator(REGION)
        drawn = sorted(regions.nth(i).locator(REGION_LABEL).inner_text().strip() for i in range(regions.count()))
        screenshot = tmp_path / "label-all-tasks.png"
        page.screenshot(path=str(screenshot))

    assert opened == top, f"Label Studio opened task {opened}; the backend ranked {top} first ({result['order'][:5]}...)"
    assert drawn == labels_of(shown.result), "the regions drawn are the backend's pre-annotations"
    if os.environ.get(KEEP_SCREENSHOTS):  # how docs/ got its screenshot
        shutil.copy(screenshot, os.environ[KEEP_SCREENSHOTS])
