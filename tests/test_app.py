"""Protocol-level tests of the Flask app, with a fixed-output adapter at the model seam."""

import base64

import pytest
from PIL import Image

from label_studio_ale.app import create_app
from label_studio_ale.detections import Detections
from label_studio_ale.settings import Settings

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="label" toName="image"><Label value="bird"/><Label value="nest"/></RectangleLabels></View>'
)


class FixedAdapter:
    """Two boxes per image: a confident bird and an unsure nest."""

    classes = ("bird", "nest")
    version = "fixed-1"

    def __init__(self):
        self.calls = []

    def predict(self, images):
        self.calls.append(len(images))
        out = []
        for image in images:
            w, h = image.size
            out.append(Detections([[0, 0, w / 2, h / 2], [w / 2, h / 2, w, h]], [[0.9, 0.1], [0.2, 0.4]], (w, h)))
        return out


@pytest.fixture
def adapter():
    return FixedAdapter()


def make_client(adapter, **overrides):
    settings = Settings(**({"allowed_media_hosts": ("127.0.0.1",)} | overrides))
    return create_app(settings, adapter_factory=lambda: adapter).test_client()


def test_health_is_fast_and_does_not_load_the_model(adapter):
    client = make_client(adapter)
    body = client.get("/health").get_json()
    assert body["status"] == "UP" and body["model_loaded"] is False


def test_setup_returns_model_version(adapter):
    client = make_client(adapter)
    response = client.post("/setup", json={"project": "3.1700000000", "schema": CONFIG})
    assert response.status_code == 200 and response.get_json() == {"model_version": "fixed-1"}
    assert client.get("/versions").get_json() == {"versions": ["fixed-1"], "trained": True}


def test_setup_with_unknown_labels_explains_the_fix(adapter):
    client = make_client(adapter)
    config = CONFIG.replace('"bird"', '"cat"').replace('"nest"', '"dog"')
    response = client.post("/setup", json={"project": "3", "schema": config})
    assert response.status_code == 400
    assert "none of the model's classes (bird, nest)" in response.get_json()["error"]


def test_a_request_over_max_request_bytes_says_which_setting_and_why(adapter):
    """LS's Retrieve Predictions on a large selection sends every task at once: the 413 says what to do."""
    tasks = [{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}, "predictions": [{"result": ["x" * 200]}]} for i in range(50)]
    response = make_client(adapter, max_request_bytes=5_000).post("/predict", json={"tasks": tasks, "label_config": CONFIG})
    assert response.status_code == 413
    error = response.get_json()["error"]
    assert "over MAX_REQUEST_BYTES=5000" in error and "select fewer tasks" in error and "raise MAX_REQUEST_BYTES" in error


def test_versions_say_when_the_served_version_cannot_be_read(adapter, tmp_path):
    from label_studio_ale.model_store import ModelStore

    store = ModelStore(tmp_path, 4)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    version = store.add(weights, ["bird"], {}, {})
    store.promote(version.name)
    (version.path / "manifest.json").write_text("{")
    client = make_client(adapter, model_dir=tmp_path)
    body = client.get("/versions?project=4").get_json()
    assert body["current"] is None and "unreadable record" in body["current_error"] and "--promote" in body["current_error"]
    page = client.get("/ui/projects/4").get_data(as_text=True)
    assert 'id="damaged"' in page and "The served version cannot be read" in page and "unreadable record" in page


def test_setup_with_a_mistyped_policy_says_so_rather_than_internal_error(adapter):
    """LS calls /setup before every prediction: an opaque 500 there leaves the backend in its ERROR state."""
    response = make_client(adapter, policy="ale-entropy-summ").post("/setup", json={"project": "3", "schema": CONFIG})
    assert 400 <= response.status_code < 500
    assert "POLICY='ale-entropy-summ' is unknown" in response.get_json()["error"]


@pytest.mark.parametrize(
    "body, content_type, message",
    [
        (b"{not json", "application/json", "not valid JSON"),
        (b"", "application/json", "empty"),
        (b"[1, 2]", "application/json", "must be a JSON object"),
        (b'{"tasks": "x", "label_config": "<View/>"}', "application/json", "'tasks' must be a list"),
        (b'{"tasks": [1], "label_config": "<View/>"}', "application/json", "'tasks' must be a list"),
        (b'{"tasks": []}', "application/json", "'label_config' is missing"),
        (b'{"tasks": [], "label_config": "<View><Image"}', "text/plain", "not valid XML"),
    ],
)
def test_malformed_predict_requests_get_clear_400s(adapter, body, content_type, message):
    response = make_client(adapter).post("/predict", data=body, content_type=content_type)
    assert response.status_code == 400
    assert message in response.get_json()["error"]


def test_predict_uses_label_config_from_setup_when_request_has_none(adapter):
    client = make_client(adapter)
    client.post("/setup", json={"project": "9.123", "schema": CONFIG})
    response = client.post("/predict", json={"project": "9.456", "tasks": []})
    assert response.status_code == 200 and response.get_json()["results"] == []


def test_webhook_acknowledges_events_and_never_trains_on_project_updates(adapter):
    client = make_client(adapter)
    for action in ("PROJECT_UPDATED", "ANNOTATION_CREATED", "ANNOTATIONS_DELETED", "ANNOTATION_UPDATED"):
        response = client.post("/webhook", json={"action": action, "project": {"id": 1}})
        assert response.status_code == 200 and response.get_json() == {"status": "ignored", "action": action}
    response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"title": "no id"}})
    assert response.status_code == 400 and "no project id" in response.get_json()["error"]
    assert client.post("/webhook", json={"project": {}}).status_code == 400
    response = client.post("/webhook", json={"action": "TASKS_CREATED", "project": "nope"})
    assert response.status_code == 400 and "no project id" in response.get_json()["error"]
    assert client.get("/jobs/unknown").status_code == 404
    assert adapter.calls == []  # no event touches the model


def test_basic_auth_guards_everything_but_health(adapter):
    client = make_client(adapter, basic_auth_user="ls", basic_auth_password="s3cret-pw")
    assert client.get("/health").status_code == 200
    # every route the app has, found from its URL map: a new route cannot slip by unguarded
    routes = [(method, rule.rule.replace("<job_id>", "x")) for rule in client.application.url_map.iter_rules()
              for method in rule.methods - {"HEAD", "OPTIONS"} if rule.endpoint != "static"]
    assert {path for _, path in routes} >= {"/versions", "/metrics", "/setup", "/predict", "/webhook", "/jobs/x", "/health"}
    for method, path in routes:
        if path == "/health":
            continue
        response = client.open(path, method=method, json={})
        assert response.status_code == 401, path
        assert "s3cret-pw" not in response.get_data(as_text=True)
    wrong = base64.b64encode(b"ls:nope").decode()
    assert client.get("/versions", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    right = base64.b64encode(b"ls:s3cret-pw").decode()
    assert client.get("/versions", headers={"Authorization": f"Basic {right}"}).status_code == 200


def test_a_non_ascii_password_is_taken_as_label_studio_and_curl_send_it(adapter):
    """LS's ML client (requests' HTTPBasicAuth) encodes credentials as latin-1; curl and browsers as UTF-8."""
    from requests.auth import _basic_auth_str

    client = make_client(adapter, basic_auth_user="ale", basic_auth_password="pässwort")
    assert client.get("/versions", headers={"Authorization": _basic_auth_str("ale", "pässwort")}).status_code == 200
    utf8 = base64.b64encode("ale:pässwort".encode()).decode()
    assert client.get("/versions", headers={"Authorization": f"Basic {utf8}"}).status_code == 200
    other = base64.b64encode("ale:passwort".encode()).decode()
    assert client.get("/versions", headers={"Authorization": f"Basic {other}"}).status_code == 401


def test_a_webhook_refused_for_lack_of_basic_auth_says_where_to_add_it(adapter, caplog):
    """LS sends webhooks without the model connection's credentials: the log names the header and where it goes."""
    client = make_client(adapter, basic_auth_user="ls", basic_auth_password="s3cret-pw")
    assert client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 1}}).status_code == 401
    assert "add the header 'Authorization: Basic ...' to the project's webhook to this backend (Settings > Webhooks)" in caplog.text
    assert "s3cret-pw" not in caplog.text
    caplog.clear()
    assert client.get("/versions").status_code == 401 and "Webhooks" not in caplog.text


def test_unknown_route_and_method_are_json_errors(adapter):
    client = make_client(adapter)
    response = client.get("/nope")
    assert response.status_code == 404 and "error" in response.get_json()
    assert client.get("/predict").status_code == 405


def test_predict_end_to_end_through_the_app(adapter, tmp_path):
    import io

    from tests.support.http import serve_files

    buffer = io.BytesIO()
    Image.new("RGB", (200, 100), (10, 20, 30)).save(buffer, format="PNG")
    with serve_files({"/a.png": buffer.getvalue()}) as base:
        client = make_client(adapter, score_threshold=0.3)
        response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": f"{base}/a.png"}}], "label_config": CONFIG})
    assert response.status_code == 200
    (prediction,) = response.get_json()["results"]
    # the 0.2/0.4 nest box passes the 0.3 threshold with score 0.4
    assert [r["value"]["rectanglelabels"] for r in prediction["result"]] == [["bird"], ["nest"]]
    assert prediction["score"] == pytest.approx(0.4) and prediction["model_version"] == "fixed-1"
    metrics = client.get("/metrics").get_json()
    assert metrics["predict_requests"] == 1 and metrics["tasks_predicted"] == 1 and metrics["tasks_failed"] == 0


def test_batches_follow_predict_batch_size(adapter):
    import io

    from tests.support.http import serve_files

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="PNG")
    with serve_files({"/a.png": buffer.getvalue()}) as base:
        client = make_client(adapter, predict_batch_size=2)
        tasks = [{"id": i, "data": {"image": f"{base}/a.png"}} for i in range(5)]
        response = client.post("/predict", json={"tasks": tasks, "label_config": CONFIG})
    assert len(response.get_json()["results"]) == 5
    assert adapter.calls == [2, 2, 1]


def test_a_tampered_model_store_is_refused_with_a_503_not_loaded(adapter, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    store = tmp_path / "models" / "3"
    store.mkdir(parents=True)
    (store / "v0001").symlink_to(outside, target_is_directory=True)
    (store / "current").write_text("v0001\n")
    client = make_client(adapter, model_dir=tmp_path / "models")
    answer = client.post("/setup", json={"project": "3.17", "schema": CONFIG})
    assert answer.status_code == 503
    assert "project 3's model store cannot be used" in answer.get_json()["error"] and "outside the model store" in answer.get_json()["error"]


def test_skips_do_not_count_towards_auto_training(adapter):
    """LS sends every Skip as ANNOTATION_CREATED with was_cancelled: nothing was labelled."""
    client = make_client(adapter, auto_train_after=2)
    skip = {"action": "ANNOTATION_CREATED", "project": {"id": 4}, "annotation": {"id": 1, "was_cancelled": True}}
    for _ in range(3):
        body = client.post("/webhook", json=skip).get_json()
        assert body["status"] == "ignored" and "skipped" in body["reason"]
    submit = {"action": "ANNOTATION_CREATED", "project": {"id": 4}, "annotation": {"id": 2, "was_cancelled": False}}
    assert client.post("/webhook", json=submit).get_json()["status"] == "counted"


@pytest.mark.parametrize(
    "host, auth, warned",
    [("0.0.0.0", False, True), ("::", False, True), ("backend.example.org", False, True), ("127.0.0.1", False, False),
     ("127.0.0.5", False, False), ("::1", False, False), ("localhost", False, False), ("0.0.0.0", True, False)],
)
def test_serving_beyond_loopback_without_auth_is_warned_about(host, auth, warned):
    from label_studio_ale.cli import exposure_warning

    settings = Settings(basic_auth_user="ls", basic_auth_password="pw") if auth else Settings()
    warning = exposure_warning(host, settings)
    assert (warning is not None) is warned
    if warned:
        assert host in warning and "BASIC_AUTH_USER" in warning


def test_a_thumbnail_of_another_projects_task_or_of_no_task_is_a_404(adapter, tmp_path):
    from types import SimpleNamespace

    class Tasks:
        def get(self, id):
            if id == "9":
                raise RuntimeError("Label Studio answered 404")  # the SDK's own error type
            return SimpleNamespace(project=8, data={"image": "/data/upload/8/a.png"})

    ls = SimpleNamespace(project=lambda project: SimpleNamespace(label_config=CONFIG), sdk=SimpleNamespace(tasks=Tasks()))
    client = create_app(Settings(model_dir=tmp_path), adapter_factory=lambda: adapter, ls_client=ls).test_client()
    assert client.get("/ui/projects/7/tasks/5/thumbnail.jpg").status_code == 404, "task 5 is project 8's"
    assert client.get("/ui/projects/7/tasks/9/thumbnail.jpg").status_code == 404


def test_the_admin_page_lists_projects_and_says_what_a_new_project_lacks(adapter, tmp_path):
    (tmp_path / "7").mkdir()
    (tmp_path / "\u00b2").mkdir()  # "²" passes str.isdigit() and fails int(): a folder of MODEL_DIR, not a project
    client = make_client(adapter, model_dir=tmp_path, sync_projects=(3,))
    index = client.get("/ui").get_data(as_text=True)
    assert 'href="/ui/projects/3"' in index and 'href="/ui/projects/7"' in index
    page = client.get("/ui/projects/7")
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "No trained version yet" in text and "No queue served yet" in text
    assert "Jobs run inside this server" in text and "<td class=\"l\">POLICY</td><td class=\"l\">ale-entropy-sum</td>" in text
    guarded = make_client(adapter, model_dir=tmp_path, basic_auth_user="u", basic_auth_password="p")
    assert guarded.get("/ui").status_code == 401


def test_the_admin_page_says_how_each_version_was_fine_tuned_and_the_training_settings(adapter, tmp_path):
    from label_studio_ale.model_store import ModelStore

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    store = ModelStore(tmp_path / "models", 7)
    store.add(weights, ["bird"], {"map50": 0.5}, {"epochs": 20})  # a manifest from before plans were recorded
    store.add(weights, ["bird"], {"map50": 0.6}, {"epochs": 30, "plan": {"epochs": 30, "repeat": 4, "steps": 600, "precision": "bf16", "freeze": 10}})
    client = make_client(adapter, model_dir=tmp_path / "models", train_freeze=10, train_precision="fp32")
    text = client.get("/ui/projects/7").get_data(as_text=True)
    cells = [cell.split("</td>")[0] for cell in text.split('<td class="l fine-tune">')[1:]]
    assert cells == ["20 epochs", "600 steps, bf16, layers 0-9 kept"]
    assert '<td class="l">TRAIN_FREEZE</td><td class="l">10</td>' in text
    assert '<td class="l">TRAIN_PRECISION</td><td class="l">fp32</td>' in text
    assert '<td class="l">BASE_MODEL</td><td class="l">unset: a first training starts from yolov5n.yaml</td>' in text
    named = make_client(adapter, model_dir=tmp_path / "models", base_model="models/birds.pt").get("/ui/projects/7").get_data(as_text=True)
    assert '<td class="l">BASE_MODEL</td><td class="l">models/birds.pt</td>' in named


def test_the_admin_page_shows_every_setting_in_force_but_the_secrets(adapter, tmp_path, monkeypatch, capsys):
    """Every Settings field is on the page, except the ones `ale config` masks: no secret value ever appears."""
    import json
    from dataclasses import fields

    from label_studio_ale.admin import SHOWN_SETTINGS, shown_settings
    from label_studio_ale.cli import main

    secrets = {
        "LABEL_STUDIO_API_KEY": "key-s3cret",
        "BASIC_AUTH_USER": "admin",
        "BASIC_AUTH_PASS": "pw-s3cret",
        "REDIS_URL": "redis://:redis-s3cret@redis:6379/0",
        "DETECTION_STORE_URL": "postgresql://ale:pg-s3cret@db:5432/ale?sslpassword=key-pw-s3cret",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    assert main(["config"]) == 0
    masked = {name for name, value in json.loads(capsys.readouterr().out).items() if "***" in str(value)}
    hidden = {spec.name for spec in fields(Settings)} - set(SHOWN_SETTINGS)
    assert hidden == masked == {"label_studio_api_key", "basic_auth_password", "redis_url", "detection_store_url"}
    assert {
        "model_weights", "model_classes", "model_dir", "label_studio_url", "predict_batch_size", "max_image_pixels", "max_image_bytes",
        "fetch_timeout", "predict_chunk_pixels", "tile_merge_metric", "tile_merge_threshold", "tile_min_visible", "tile_empty_share",
        "allowed_media_hosts", "log_level", "sync_projects", "import_chunk_size", "predict_job_tasks", "promotion_min_images",
        "auto_train_after", "allow_downloads", "basic_auth_user",
    } <= set(SHOWN_SETTINGS)  # fmt: skip
    settings = Settings.from_env()
    rows = shown_settings(settings)
    assert [name for name, _ in rows] == list(SHOWN_SETTINGS)
    assert not any(secret in str(value) for _, value in rows for secret in ("s3cret", "key-pw"))

    # the page itself (no Label Studio, Redis or PostgreSQL to reach here: their secrets are checked in the rows above)
    served = settings.replace(
        label_studio_api_key="", redis_url="", detection_store_url="", model_dir=tmp_path, model_classes=("bird", "nest")
    )
    client = create_app(served, adapter_factory=lambda: adapter).test_client()
    auth = {"Authorization": "Basic " + base64.b64encode(b"admin:pw-s3cret").decode()}
    text = client.get("/ui/projects/7", headers=auth).get_data(as_text=True)
    for name in SHOWN_SETTINGS:
        assert f'<td class="l">{name.upper()}</td>' in text, f"{name} is not on the page"
    assert '<td class="l">MODEL_CLASSES</td><td class="l">(&#39;bird&#39;, &#39;nest&#39;)</td>' in text
    assert '<td class="l">BASIC_AUTH_USER</td><td class="l">admin</td>' in text
    assert "s3cret" not in text and "LABEL_STUDIO_API_KEY" not in text and "BASIC_AUTH_PASS" not in text


@pytest.mark.parametrize(
    "manifest, shown",
    [
        ({}, ""),
        ({"epochs": 5, "plan": {"epochs": 5, "repeat": 1, "steps": 40}}, "40 steps"),  # tfod: no precision, nothing kept
        ({"epochs": 30, "plan": {"epochs": 30, "repeat": 4, "steps": 600, "precision": "fp32"}}, "600 steps, fp32"),
    ],
)
def test_a_versions_fine_tune_is_summarised_from_its_manifest(manifest, shown):
    from label_studio_ale.admin import fine_tune_summary

    assert fine_tune_summary(manifest) == shown


def test_start_training_that_cannot_take_the_projects_queueing_lock_queues_nothing(adapter, redis_url, tmp_path, monkeypatch):
    """A press whose lock is held (a stuck press, a slow Redis) answers 503 instead of queueing unguarded."""
    from redis import Redis

    import label_studio_ale.webhooks as webhooks_module
    from label_studio_ale.jobqueue import QUEUE_TRAIN, queue_name

    monkeypatch.setattr(webhooks_module, "TRAIN_ENQUEUE_WAIT", 0.2)
    client = make_client(adapter, redis_url=redis_url, model_dir=tmp_path)
    redis = Redis.from_url(redis_url)
    redis.set("ale:lock:train-enqueue:7", "another-press", px=60_000)
    response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7}})
    assert response.status_code == 503
    assert "another Start Training of project 7 is being queued" in response.get_json()["error"]
    assert redis.llen(f"rq:queue:{queue_name('yolov5', QUEUE_TRAIN)}") == 0 and redis.get("ale:train:7") is None
    redis.delete("ale:lock:train-enqueue:7")
    response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7}})
    assert response.status_code == 201 and redis.get("ale:train:7").decode() == response.get_json()["job"]
    again = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7}})
    assert again.status_code == 200 and again.get_json()["status"] == "already training"


def test_a_job_id_rq_could_not_have_made_is_not_found(adapter, redis_url, tmp_path):
    client = make_client(adapter, redis_url=redis_url, model_dir=tmp_path)
    response = client.get("/jobs/a.b")
    assert response.status_code == 404 and "no job 'a.b'" in response.get_json()["error"]


def test_annotations_created_in_bulk_count_towards_auto_training_and_are_recorded_in_one_job(adapter, redis_url, tmp_path):
    """LS's "Create Annotations From Predictions" sends ANNOTATIONS_CREATED, its `annotation` a list."""
    from redis import Redis
    from rq import Queue

    from label_studio_ale.jobqueue import QUEUE_SYNC, QUEUE_TRAIN, queue_name

    client = make_client(adapter, redis_url=redis_url, model_dir=tmp_path, auto_train_after=3)
    bulk = {
        "action": "ANNOTATIONS_CREATED",
        "project": {"id": 5},
        "annotation": [{"id": 1, "task": 11}, {"id": 2, "task": 12}, {"id": 3, "task": 13, "was_cancelled": True}],
    }
    body = client.post("/webhook", json=bulk).get_json()
    assert body["status"] == "counted"
    redis = Redis.from_url(redis_url)
    recording = Queue(queue_name("yolov5", QUEUE_SYNC), connection=redis).fetch_job(body["savings"])
    assert recording.func_name.endswith("record_tasks") and recording.args == (5, [11, 12])
    body = client.post("/webhook", json=bulk | {"annotation": [{"id": 4, "task": 14}]}).get_json()
    assert body["status"] == "training"
    assert Queue(queue_name("yolov5", QUEUE_TRAIN), connection=redis).fetch_job(body["job"]).args == (5,)
    nothing = client.post("/webhook", json=bulk | {"annotation": [{"id": 5, "task": 15, "was_cancelled": True}]}).get_json()
    assert nothing["status"] == "ignored" and "no submitted annotation" in nothing["reason"]
    assert client.post("/webhook", json=bulk | {"annotation": "not a list"}).get_json()["status"] == "ignored"


def test_a_tasks_created_event_whose_tasks_is_no_list_is_a_400_naming_the_field(adapter):
    client = make_client(adapter)
    for tasks in (5, "1,2", {"id": 1}):
        response = client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 3}, "tasks": tasks})
        assert response.status_code == 400, response.get_json()
        assert "'tasks' must be a list" in response.get_json()["error"]
    assert client.application.extensions["ale"]["metrics"].snapshot()["errors_5xx"] == 0


@pytest.mark.parametrize("query", ["-1", "abc", "", "1.5", "²", "٣", "9" * 5000])
def test_versions_of_a_project_that_is_no_id_is_a_400_naming_the_parameter(adapter, tmp_path, query):
    response = make_client(adapter, model_dir=tmp_path).get("/versions", query_string={"project": query})
    assert response.status_code == 400 and "'project' must be a project id" in response.get_json()["error"]


def test_versions_of_a_project_without_versions_list_none(adapter, tmp_path):
    body = make_client(adapter, model_dir=tmp_path).get("/versions?project=3").get_json()
    assert body["versions"] == [] and body["current"] is None


@pytest.mark.parametrize("project", ["²", "².1700000000", "٣", "1" * 5000])
def test_a_project_id_of_non_ascii_digits_is_not_a_server_error(adapter, project):
    """'²'.isdigit() is true but int('²') fails: such a project is no id, and the configured model answers."""
    client = make_client(adapter)
    response = client.post("/setup", json={"project": project, "schema": CONFIG})
    assert response.status_code == 200 and response.get_json() == {"model_version": "fixed-1"}
    response = client.post("/predict", json={"project": project, "tasks": [], "label_config": CONFIG})
    assert response.status_code == 200 and response.get_json()["results"] == []


def test_deleted_annotations_and_tasks_leave_the_savings(adapter, tmp_path):
    """LS 1.23 sends ANNOTATIONS_DELETED (plural) and TASKS_DELETED with ids only: their records go at once."""
    from label_studio_ale.annotation_edits import EditCounts, EditRecord

    client = make_client(adapter, model_dir=tmp_path)
    store = client.application.extensions["ale"]["runtime"].store
    store.put_edits(5, [EditRecord(a, task, "ale:v1:t", EditCounts(accepted=1), None) for a, task in ((1, 10), (2, 10), (3, 11), (4, 12))])
    store.put_edits(6, [EditRecord(1, 10, "ale:v1:t", EditCounts(deleted=1), None)])
    deleted = {"action": "ANNOTATIONS_DELETED", "project": {"id": 5}, "annotations": [{"id": 1}, {"id": 3}, {"id": 99}]}
    assert client.post("/webhook", json=deleted).get_json() == {"status": "forgotten", "action": "ANNOTATIONS_DELETED", "records": 2}
    assert [r.annotation_id for r in store.edits(5)] == [2, 4] and len(store.edits(6)) == 1
    # task 10's detections under two models, and task 11's, are stored; so are project 6's of its task 10
    from label_studio_ale.detection_store import StoredDetections

    found = StoredDetections(10, None, None, "any")
    for key in ("m-1", "m-2"):
        store.put_many(5, key, [found, StoredDetections(11, None, None, "any")])
    store.put_many(6, "m-1", [found])
    gone = {"action": "TASKS_DELETED", "project": {"id": 5}, "tasks": [{"id": 10}]}
    answer = {"status": "forgotten", "action": "TASKS_DELETED", "records": 1, "detections": 2}
    assert client.post("/webhook", json=gone).get_json() == answer
    assert [r.annotation_id for r in store.edits(5)] == [4] and len(store.edits(6)) == 1
    assert store.versions(5) == {"m-1": 1, "m-2": 1} and store.versions(6) == {"m-1": 1}
    # an annotation turned back into a draft: LS sends the action alone
    assert client.post("/webhook", json={"action": "ANNOTATIONS_DELETED"}).get_json() == {"status": "ignored", "action": "ANNOTATIONS_DELETED"}
    response = client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 4}]})
    assert response.status_code == 400 and "no project id" in response.get_json()["error"]
    assert len(store.edits(5)) == 1
    # LS's "delete every task" API sends TASKS_DELETED without a project: its task ids are unique across projects
    store.put_edits(5, [EditRecord(5, 11, "ale:v1:t", EditCounts(accepted=1), None)])
    everywhere = {"action": "TASKS_DELETED", "project": None, "tasks": [{"id": 11}]}
    answer = {"status": "forgotten", "action": "TASKS_DELETED", "records": 1, "detections": 2}
    assert client.post("/webhook", json=everywhere).get_json() == answer
    assert [r.annotation_id for r in store.edits(5)] == [4] and store.versions(5) == {} and store.versions(6) == {"m-1": 1}


def test_the_admin_page_lists_its_projects_jobs_and_the_sync_of_every_project(adapter, redis_url, tmp_path):
    from redis import Redis
    from rq import Queue

    from label_studio_ale.jobqueue import QUEUE_SYNC, QUEUE_TRAIN, queue_name

    redis = Redis.from_url(redis_url)
    sync, train = (Queue(queue_name("yolov5", kind), connection=redis) for kind in (QUEUE_SYNC, QUEUE_TRAIN))
    mine = [train.enqueue("label_studio_ale.training.train_project", args=(5,)).id, sync.enqueue("label_studio_ale.savings.record_annotations", args=(5, 1)).id]
    every = sync.enqueue("label_studio_ale.jobs.sync_all").id
    others = [train.enqueue("label_studio_ale.training.train_project", args=(6,)).id, sync.enqueue("label_studio_ale.jobs.queued_sync", args=(6,)).id]
    page = make_client(adapter, redis_url=redis_url, model_dir=tmp_path).get("/ui/projects/5").get_data(as_text=True)
    assert all(job in page for job in (*mine, every)) and not any(job in page for job in others)
    assert "This project's jobs, and the scheduled sync of every project." in page


def test_annotations_made_while_a_training_runs_count_towards_the_next_one(adapter, redis_url, tmp_path, monkeypatch):
    """AUTO_TRAIN_AFTER: the count is reset only when a training is queued, not when one is running or the press is refused."""
    from redis import Redis
    from rq.job import Job

    import label_studio_ale.webhooks as webhooks_module

    monkeypatch.setattr(webhooks_module, "TRAIN_ENQUEUE_WAIT", 0.2)
    client = make_client(adapter, redis_url=redis_url, model_dir=tmp_path, auto_train_after=3)
    redis = Redis.from_url(redis_url)

    def annotate(n):
        task = n + 1  # LS ids start at 1
        event = {"action": "ANNOTATION_CREATED", "project": {"id": 5}, "task": {"id": task}, "annotation": {"id": task, "task": task}}
        return client.post("/webhook", json=event)

    assert [annotate(t).get_json()["status"] for t in range(3)] == ["counted", "counted", "training"]
    training = Job.fetch(redis.get("ale:train:5").decode(), connection=redis)
    training.set_status("started")  # a worker took it: it exported tasks 0-2
    assert [annotate(t).get_json()["status"] for t in range(3, 6)] == ["counted", "counted", "already training"]
    assert int(redis.get("ale:new-annotations:5")) == 3
    training.set_status("finished")
    redis.set("ale:lock:train-enqueue:5", "another-press", px=60_000)
    assert annotate(6).status_code == 503 and int(redis.get("ale:new-annotations:5")) == 4, "a refused press keeps the count"
    redis.delete("ale:lock:train-enqueue:5")
    answer = annotate(7).get_json()
    assert answer["status"] == "training" and answer["job"] != training.id and redis.get("ale:new-annotations:5") is None
    assert annotate(8).get_json()["status"] == "counted"


def test_tasks_created_queues_only_the_sync_which_predicts_the_new_tasks_itself(adapter, monkeypatch):
    """A prediction job beside the sync would predict the same new tasks again on another worker (each reads the
    store once, before the other has stored anything): the sync predicts them, or fans them out, under its lock."""
    from label_studio_ale import app as app_module

    enqueued = []

    class Recording:
        def enqueue(self, kind, func, *args, job_id=None, **options):
            enqueued.append((kind, func.__name__, args))
            return job_id or f"job-{len(enqueued)}"

    monkeypatch.setattr(app_module, "make_job_queue", lambda runtime: Recording())
    client = make_client(adapter)
    event = {"action": "TASKS_CREATED", "project": {"id": 3}, "tasks": [{"id": 7}, {"id": 8}]}
    first, second = client.post("/webhook", json=event).get_json(), client.post("/webhook", json=event).get_json()
    assert enqueued == [("sync", "queued_sync", (3,))]
    assert first["sync"] == "queued" and second["sync"] == "coalesced" and first["jobs"] == second["jobs"] == [first["jobs"][0]]


@pytest.mark.parametrize("route", ["/webhook", "/predict", "/setup"])
def test_a_body_nested_too_deeply_is_a_400_not_a_server_error(adapter, route):
    response = make_client(adapter).post(route, data="[" * 100_000, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json() == {"error": "request body nests too deeply: send a flat JSON object"}


@pytest.mark.parametrize(
    "route, body, message",
    [
        ("/setup", {"project": "1.2"}, "'schema' must be the project's XML label config as a string, got NoneType"),
        ("/predict", {"tasks": [], "label_config": ["<View/>"]}, "'label_config' must be the project's XML label config as a string, got list"),
        ("/setup", {"project": "1.2", "schema": CONFIG.replace("<View>", "<View><!--" + "x" * 2**20 + "-->")}, "'schema' is over 1048576 bytes"),
        ("/predict", {"tasks": [], "label_config": CONFIG + "é" * (2**19 + 1)}, "'label_config' is over 1048576 bytes"),
    ],
)
def test_a_label_config_that_is_no_string_or_too_large_is_a_400_naming_the_field(adapter, route, body, message):
    response = make_client(adapter).post(route, json=body)
    assert response.status_code == 400 and response.get_json()["error"].startswith(message)


def test_label_configs_of_the_least_recently_used_projects_are_let_go(adapter, monkeypatch):
    """Past MAX_PROJECT_LABEL_CONFIGS projects, the oldest one's /predict without a label config is answered as a
    project never set up; with one (as Label Studio sends) it is served."""
    import label_studio_ale.app as app_module

    monkeypatch.setattr(app_module, "MAX_PROJECT_LABEL_CONFIGS", 2)
    client = make_client(adapter)
    for project in ("1.1", "2.1", "1.1", "3.1"):  # 1 used again: 2 is the least recently used
        assert client.post("/setup", json={"project": project, "schema": CONFIG}).status_code == 200
    kept = [client.post("/predict", json={"project": f"{p}.1", "tasks": []}).status_code for p in (1, 2, 3)]
    assert kept == [200, 400, 200]
    response = client.post("/predict", json={"project": "2.1", "tasks": []})
    assert "'label_config' is missing: send the project's label config, or call /setup first" in response.get_json()["error"]
    assert client.post("/predict", json={"project": "2.1", "tasks": [], "label_config": CONFIG}).status_code == 200
    long = "1" * 5000  # no LS project id: its config is not kept, and it takes no place from one
    assert client.post("/setup", json={"project": long, "schema": CONFIG}).status_code == 200
    assert client.post("/predict", json={"project": long, "tasks": []}).status_code == 400
    assert client.post("/predict", json={"project": "3.1", "tasks": []}).status_code == 200


def test_a_405_says_which_methods_the_route_allows(adapter):
    response = make_client(adapter).get("/predict")
    assert response.status_code == 405 and response.content_type == "application/json"
    assert set(response.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}


def test_a_model_misconfigured_is_logged_as_one_warning_without_a_traceback(caplog):
    """An untrained model without MODEL_CLASSES starts with a warning, as the README says: the message is the fix."""
    import logging

    from label_studio_ale.errors import AdapterError

    def misconfigured():
        raise AdapterError("MODEL_CLASSES: an untrained model needs its class names")

    app = create_app(Settings(), adapter_factory=misconfigured, warm=True)
    app.extensions["ale"]["model"].warm().join(5)
    client = app.test_client()
    assert client.post("/setup", json={"project": "1.2", "schema": CONFIG}).status_code == 503
    loaded = [r for r in caplog.records if r.name == "label_studio_ale.app" and "model failed to load" in r.getMessage()]
    assert [(r.levelno, r.exc_info) for r in loaded] == [(logging.WARNING, None)], "once, for the warm-up and the request"
    assert client.get("/health").get_json()["model_error"] == "MODEL_CLASSES: an untrained model needs its class names"


def test_a_model_that_fails_to_load_unexpectedly_is_named_in_health_and_a_503(caplog):
    """E.g. DEVICE=cuda on a machine without the driver: the cause, not "internal error"."""
    def no_driver():
        raise RuntimeError("Found no NVIDIA driver on your system")

    client = create_app(Settings(), adapter_factory=no_driver).test_client()
    for response in (client.post("/setup", json={"project": "1.2", "schema": CONFIG}),
                     client.post("/predict", json={"tasks": [], "label_config": CONFIG})):
        assert response.status_code == 503
        assert "the model failed to load: RuntimeError: Found no NVIDIA driver on your system" in response.get_json()["error"]
    assert client.get("/health").get_json()["model_error"] == "the model failed to load: RuntimeError: Found no NVIDIA driver on your system"
    tracebacks = [r for r in caplog.records if r.exc_info and "model failed to load" in r.getMessage()]
    assert len(tracebacks) == 1, "the traceback is logged once, not on every request"
