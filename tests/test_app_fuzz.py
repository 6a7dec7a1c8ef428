"""Property-based fuzzing of /predict, /setup and /webhook: any payload gets a JSON answer, never a 500.

The adapter is the fixed-output one of test_app (the model seam); media URLs
can only point at refused hosts or at Label Studio without a key, so nothing
leaves the process.
"""

import json
import os

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from label_studio_ale.app import create_app
from label_studio_ale.settings import Settings
from tests.test_app import CONFIG, FixedAdapter

#: ALE_FUZZ_EXAMPLES=3000 for a deeper run (3000 per route passed here in ~50 s).
FUZZ = settings(max_examples=int(os.environ.get("ALE_FUZZ_EXAMPLES", "300")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: What a well-behaved backend may answer; 5xx never.
ALLOWED = {200, 201, 400, 404, 405, 409, 413, 415}

client = create_app(Settings(), adapter_factory=FixedAdapter).test_client()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=15,
)
label_configs = st.sampled_from(
    [
        CONFIG,
        CONFIG.replace("bird", "cat"),
        "<View></View>",
        "<View><Image name='i' value='$image'/></View>",
        "<View><Image name=",
        "not xml at all",
        "",
        '<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]><View>&a;</View>',
    ]
) | st.text(max_size=60) | json_values
image_urls = st.sampled_from(
    [
        "/data/upload/1/a.png",
        "/data/local-files/?d=../../etc/passwd",
        "/data/local-files/?d=%2e%2e/secret.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x.png",
        "file:///etc/passwd",
        "gopher://localhost:6379/_FLUSHALL",
        "data:image/png;base64,iVBORw0KGgo=",
        "",
    ]
) | st.text(max_size=40) | json_values
tasks = st.lists(
    st.fixed_dictionaries({"id": st.integers(0, 10**6) | json_values, "data": st.fixed_dictionaries({"image": image_urls}) | json_values}),
    max_size=4,
) | json_values
projects = st.sampled_from(["1", "1.1700000000", "abc", "", "../1", "²", "-1"]) | json_values


def check(response):
    assert response.status_code in ALLOWED, (response.status_code, response.get_data(as_text=True)[:500])
    body = response.get_json(silent=True)
    assert isinstance(body, dict), response.get_data(as_text=True)[:200]
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and 'File "' not in text
    if response.status_code >= 400:
        assert isinstance(body.get("error"), str) and body["error"]


@FUZZ
@given(st.fixed_dictionaries({}, optional={"tasks": tasks, "label_config": label_configs, "project": projects, "params": json_values}))
def test_predict_answers_any_payload_without_a_server_error(payload):
    check(client.post("/predict", json=payload))


@FUZZ
@given(st.fixed_dictionaries({}, optional={"project": projects, "schema": label_configs, "hostname": json_values, "access_token": json_values}))
def test_setup_answers_any_payload_without_a_server_error(payload):
    check(client.post("/setup", json=payload))


@FUZZ
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "action": st.sampled_from(["PROJECT_UPDATED", "ANNOTATION_CREATED", "START_TRAINING", "TASKS_CREATED", ""]) | json_values,
            "project": projects | st.fixed_dictionaries({"id": json_values}),
            "tasks": json_values,
        },
    )
)
def test_webhook_answers_any_payload_without_a_server_error(payload):
    project = payload.get("project")
    # A well-formed training or new-tasks event starts a real job; those paths have their own tests.
    assume(not (payload.get("action") in ("START_TRAINING", "TASKS_CREATED") and isinstance(project, dict) and isinstance(project.get("id"), int)))
    check(client.post("/webhook", json=payload))


@FUZZ
@given(st.binary(max_size=200), st.sampled_from(["/predict", "/setup", "/webhook"]), st.sampled_from(["application/json", "text/plain", ""]))
def test_any_bytes_as_a_body_get_a_clear_answer(body, route, content_type):
    check(client.post(route, data=body, content_type=content_type or None))


@FUZZ
@given(st.sampled_from(["3", "-1", "abc", "", "²", "1e3", " 4"]) | st.text(max_size=12))
def test_versions_answers_any_project_parameter_without_a_server_error(project):
    check(client.get("/versions", query_string={"project": project}))


def test_a_tasks_created_event_with_tasks_of_any_other_type_than_a_list_is_a_400():
    for tasks in (5, "x", {"id": 1}, 1.5, True):
        response = client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 3}, "tasks": tasks})
        check(response)
        assert response.status_code == 400 and "'tasks'" in response.get_json()["error"]


def test_the_fuzzer_reaches_the_interesting_answers():
    """Sanity: the payload space holds 200s and each kind of 400 the routes give."""
    ok = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": "http://10.0.0.1/x.png"}}], "label_config": CONFIG})
    assert ok.status_code == 200 and "not allowed" in json.dumps(ok.get_json()["errors"])
    traversal = client.post("/predict", json={"tasks": [{"id": 2, "data": {"image": "/data/local-files/?d=../../etc/passwd"}}], "label_config": CONFIG})
    assert traversal.status_code == 200 and "contains '..'" in traversal.get_json()["errors"][0]["reason"]
    assert client.post("/setup", json={"schema": "<View><Image name="}).status_code == 400
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": "x"}}).status_code == 400
