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
from tests.support.label_studio import PASSWORD, USERNAME, create_personal_access_token
from tests.support.projects import create_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: The regions panel of Label Studio's labeling UI: one item per region, its label inside.
REGION = ".lsf-outliner-item"
REGION_LABEL = ".lsf-labels-list .lsf-labels-list"
TASK_ID = ".lsf-current-task__task-id"
SECOND_EMAIL, SECOND_PASSWORD = "browser-annotator@example.com", "browser-annotator-pw-1"
#: A folder to copy the run's screenshot into.
KEEP_SCREENSHOTS = "ALE_KEEP_SCREENSHOTS"


def label_all_tasks(page, url: str, project: int) -> tuple[int, list[str]]:
    """Press "Label All Tasks" -> (the task opened, the labels of the regions drawn, sorted)."""
    page.goto(f"{url}/projects/{project}/data")
    page.get_by_text("Label All Tasks").first.click()
    page.wait_for_selector(TASK_ID, timeout=60_000)
    page.wait_for_load_state("networkidle")
    opened = int(page.locator(TASK_ID).inner_text().split()[0])
    regions = page.locator(REGION)
    return opened, sorted(regions.nth(i).locator(REGION_LABEL).inner_text().strip() for i in range(regions.count()))


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
        opened, drawn = label_all_tasks(page, label_studio.url, project)
        screenshot = tmp_path / "label-all-tasks.png"
        page.screenshot(path=str(screenshot))
        assert opened == top, f"Label Studio opened task {opened}; the backend ranked {top} first ({result['order'][:5]}...)"
        assert drawn == labels_of(shown.result), "the regions drawn are the backend's pre-annotations"


    # The check reads what LS serves, not what the backend wrote: with LS serving in task order, another
    # annotator (the first keeps their open task locked) is opened the first task by id, not the backend's top.
    ls_sdk.projects.update(id=project, sampling="Sequential sampling")
    assert top != min(result["order"]), "the backend's top should not be the first task by id here"
    create_personal_access_token(label_studio.url, SECOND_EMAIL, SECOND_PASSWORD, signup=True)
    with browser_page() as page:
        sign_in_to_label_studio(page, label_studio.url, SECOND_EMAIL, SECOND_PASSWORD)
        assert label_all_tasks(page, label_studio.url, project)[0] == min(result["order"])
    if os.environ.get(KEEP_SCREENSHOTS):  # how docs/ got its screenshot
        shutil.copy(screenshot, os.environ[KEEP_SCREENSHOTS])


def test_the_admin_page_shows_the_versions_the_queue_head_and_the_settings_as_the_api_and_ale_rank_do(
    ls_sdk, label_studio, redis_server, trained_weights, tmp_path
):
    import subprocess
    import sys

    import httpx

    from label_studio_ale.model_store import ModelStore
    from tests.support.backend import process_env, run_backend

    models = tmp_path / "models"
    auth = ("admin", "admin-page-pw-1")
    env = backend_env(
        label_studio, trained_weights, models, redis_server, SCORE_THRESHOLD="0.25", BASIC_AUTH_USER=auth[0], BASIC_AUTH_PASS=auth[1]
    )
    project, _ = create_project(ls_sdk, range(55_100, 55_110), "admin page", max_objects=5, min_side=14, max_side=30)
    store = ModelStore(models, project)
    for map50, reason in ((0.412, "first version"), (0.637, "better on the same validation images")):
        plan = {"epochs": 30, "repeat": 4, "steps": 600, "precision": "bf16"}
        version = store.add(trained_weights, ["bird", "nest"], {"map": map50 / 2, "map50": map50, "voc07_map50": map50, "voc12_map50": map50}, {"train_images": 8, "val_images": 2, "epochs": 30, "plan": plan, "promotion": {"promoted": True, "reason": reason}})
        store.promote(version.name)
    jobs = RedisJobQueue(Redis.from_url(redis_server.url), "yolov5")
    with run_worker(env, tmp_path, queues="predict,sync"):
        synced = run_sync(jobs, project)
    assert synced["status"] == "synced"
    ranked = subprocess.run(
        [sys.executable, "-m", "label_studio_ale.cli", "rank", "--project", str(project), "--top", "12"],
        env=process_env(env), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ranked.returncode == 0, ranked.stderr
    rows = [line.split() for line in ranked.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    rank_tasks, rank_boxes = [int(r[1]) for r in rows], [int(r[3]) for r in rows]

    with run_backend(env, tmp_path) as url:
        api = httpx.get(f"{url}/versions", params={"project": project}, auth=auth, timeout=30).json()
        assert httpx.get(f"{url}/ui/projects/{project}", timeout=30).status_code == 401, "behind the same basic auth"
        with browser_page(http_credentials={"username": auth[0], "password": auth[1]}) as page:
            page.goto(f"{url}/ui/projects/{project}")
            versions = page.locator("#versions tr[data-version]")
            shown = {
                versions.nth(i).get_attribute("data-version"): (versions.nth(i).locator(".map50").inner_text(), "★" in versions.nth(i).inner_text())
                for i in range(versions.count())
            }
            expected = {d["version"]: (f"{d['metrics']['map50']:.3f}", d["served"]) for d in api["details"]}
            assert shown == expected and page.locator("svg.plot polyline").count() == 2
            assert [versions.nth(i).locator(".fine-tune").inner_text() for i in range(versions.count())] == ["600 steps, bf16"] * 2
            head = page.locator("#queue figure")
            page_tasks = [int(head.nth(i).get_attribute("data-task")) for i in range(head.count())]
            page_boxes = [int(head.nth(i).locator(".boxes").inner_text()) for i in range(head.count())]
            assert page_tasks == rank_tasks and page_boxes == rank_boxes, "the queue head is what ale rank computes"
            assert page_tasks == synced["order"][: len(page_tasks)]
            page.wait_for_function("[...document.querySelectorAll('#queue img')].every(i => i.complete && i.naturalWidth > 0)", timeout=60_000)
            settings_text = page.locator("#settings").inner_text()
            assert "POLICY\tale-entropy-sum" in settings_text and "SCORE_THRESHOLD\t0.25" in settings_text
            assert "TRAIN_FREEZE\t0" in settings_text and "TRAIN_RECIPE\tsmall-data" in settings_text
            assert "BASE_MODEL\tunset: a first training starts from yolov5n.yaml" in settings_text
            screenshot = tmp_path / "admin-page.png"
            page.screenshot(path=str(screenshot), full_page=True)
    if os.environ.get(KEEP_SCREENSHOTS):
        shutil.copy(screenshot, os.environ[KEEP_SCREENSHOTS])
