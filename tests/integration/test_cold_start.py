"""An untrained model's queue: real Label Studio 1.23.2 serves a spread-out order, not the import order."""

import io
import subprocess
import sys

import pytest

from label_studio_ale.app import create_app
from label_studio_ale.jobs import SPREAD_POLICY, sync_priorities
from label_studio_ale.runtime import Runtime
from label_studio_ale.settings import Settings
from label_studio_ale.synthetic import make_scene
from tests.support.backend import backend_env, process_env
from tests.support.label_studio import upload_images
from tests.support.projects import LABEL_CONFIG

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SITES = 4
PER_SITE = 10


def test_an_untrained_model_serves_every_site_early(ls_sdk, label_studio, tmp_path):
    project = ls_sdk.projects.create(title="four sites", label_config=LABEL_CONFIG).id
    site_of = {}
    for site in range(SITES):  # imported site by site, as a team uploads one camera's folder after another
        files = []
        for frame in range(PER_SITE):
            buffer = io.BytesIO()
            make_scene(96_000 + 100 * site + frame, site=site).image.save(buffer, format="PNG")
            files.append((f"site{site}-{frame}.png", buffer.getvalue()))
        site_of |= {task: site for task in upload_images(ls_sdk, project, files)}
    env = backend_env(label_studio, "yolov5n.yaml", tmp_path, MODEL_CLASSES="bird,nest")
    settings = Settings.from_env(env)

    result = sync_priorities(project, runtime=Runtime(settings))
    assert result["status"] == "synced" and result["policy"] == SPREAD_POLICY
    assert [site_of[t] for t in result["order"][:SITES]] != [0] * SITES

    # "Label All Tasks": the first 20 tasks come from at least three of the four sites
    served = []
    for _ in range(20):
        response = ls_sdk._client_wrapper.httpx_client.request(f"api/projects/{project}/next/", method="GET")
        assert response.status_code == 200, response.text[:300]
        served.append(response.json()["id"])
        ls_sdk.annotations.create(id=served[-1], result=[], lead_time=1.0)
    assert len({site_of[t] for t in served}) >= 3, [site_of[t] for t in served]
    assert len({site_of[t] for t in served[:SITES]}) == SITES  # one of each before any repeats

    # ale rank and /versions say the model is untrained
    rank = subprocess.run(
        [sys.executable, "-m", "label_studio_ale.cli", "rank", "--project", str(project), "--top", "3"],
        env=process_env(env), capture_output=True, text=True, timeout=300,
    )
    assert rank.returncode == 0, rank.stderr[-2000:]
    assert rank.stdout.startswith("note: the model is untrained") and SPREAD_POLICY in rank.stdout
    client = create_app(settings).test_client()
    for query in ("", f"?project={project}"):
        listed = client.get(f"/versions{query}").get_json()
        assert listed["trained"] is False and "untrained" in listed["note"]
