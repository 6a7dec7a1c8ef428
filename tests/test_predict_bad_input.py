"""/predict with the real YOLOv5 adapter: one bad task never spoils the others."""

import io

import numpy as np
import pytest
from PIL import Image

from label_studio_ale.app import create_app
from label_studio_ale.media import decode_image
from label_studio_ale.errors import MediaError
from label_studio_ale.settings import Settings
from label_studio_ale.synthetic import make_scene
from label_studio_ale_plugins.yolov5 import YoloV5Adapter
from tests.support.http import serve_files
from tests.support.models import IMAGE_SIZE

pytestmark = pytest.mark.slow

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="label" toName="image"><Label value="bird"/><Label value="nest"/></RectangleLabels></View>'
)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def adapter(trained_weights):
    return YoloV5Adapter(trained_weights, image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def media():
    good = png(make_scene(10_001).image)
    files = {
        "/good.png": good,
        "/corrupt.png": good[: len(good) // 3],  # truncated PNG
        "/text.png": b"<html>this is not an image</html>",
        "/huge.png": png(Image.new("RGB", (3000, 2000))),  # 6 Mpx, compresses to a few KB
        "/heavy.png": png(Image.frombytes("RGB", (600, 600), np.random.default_rng(0).bytes(600 * 600 * 3))),
    }
    with serve_files(files, redirects={"/moved.png": "http://169.254.169.254/latest/meta-data"}) as base:
        yield base


def client_for(adapter, **overrides):
    settings = Settings(
        **(
            {
                "allowed_media_hosts": ("127.0.0.1",),
                "score_threshold": 0.25,
                "image_size": IMAGE_SIZE,
                "max_image_pixels": 4_000_000,
                "max_image_bytes": 500_000,
            }
            | overrides
        )
    )
    return create_app(settings, adapter_factory=lambda: adapter).test_client()


def test_each_bad_task_gets_an_empty_result_with_a_reason(adapter, media):
    tasks = [
        {"id": 1, "data": {"image": f"{media}/good.png"}},
        {"id": 2, "data": {"image": f"{media}/corrupt.png"}},
        {"id": 3, "data": {"image": f"{media}/text.png"}},
        {"id": 4, "data": {"image": f"{media}/huge.png"}},
        {"id": 5, "data": {"image": f"{media}/heavy.png"}},
        {"id": 6, "data": {"image": "http://10.0.0.5/private.png"}},
        {"id": 7, "data": {"image": f"{media}/moved.png"}},
        {"id": 8, "data": {"image": f"{media}/missing.png"}},
        {"id": 9, "data": {"image": "ftp://files.example.org/key.png"}},
        {"id": 10, "data": {"image": "/data/local-files/?d=../../etc/passwd"}},
        {"id": 11, "data": {"other": "x"}},
        {"id": 12, "data": {"image": "http://[127.0.0.1/unbalanced.png"}},
        {"id": 13, "data": {"image": f"{media}/good.png"}},
    ]
    response = client_for(adapter).post("/predict", json={"tasks": tasks, "label_config": CONFIG})
    assert response.status_code == 200
    body = response.get_json()
    results = body["results"]
    assert len(results) == len(tasks)
    for good in (results[0], results[-1]):
        assert good["result"], "the good image must still be predicted"
        assert {r["value"]["rectanglelabels"][0] for r in good["result"]} <= {"bird", "nest"}
        assert all(0.25 <= r["score"] <= 1 for r in good["result"])
        assert 0 <= good["score"] <= 1
    reasons = {e["task"]: e["reason"] for e in body["errors"]}
    assert set(reasons) == set(range(2, 13))
    for bad in results[1:-1]:
        assert bad == [], "no prediction: LS stores none, and predicts the task again once its image can be read"
    assert "corrupt or truncated" in reasons[2]
    assert "not an image" in reasons[3]
    assert "MAX_IMAGE_PIXELS=4000000" in reasons[4]
    assert "MAX_IMAGE_BYTES=500000" in reasons[5]
    assert "'10.0.0.5' is not allowed" in reasons[6] and "ALLOWED_MEDIA_HOSTS" in reasons[6]
    assert "redirects are not followed" in reasons[7]
    assert "answered 404" in reasons[8]
    assert "unsupported image URL scheme 'ftp:'" in reasons[9]
    assert "contains '..'" in reasons[10]
    assert "no data field 'image'" in reasons[11]
    assert "is malformed" in reasons[12]


def test_unknown_labels_are_a_clear_400(adapter, media):
    config = CONFIG.replace('"bird"', '"Cat"').replace('"nest"', '"Dog"')
    response = client_for(adapter).post(
        "/predict", json={"tasks": [{"id": 1, "data": {"image": f"{media}/good.png"}}], "label_config": config}
    )
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert "(bird, nest)" in error and "(Cat, Dog)" in error and "predicted_values" in error


def test_score_threshold_and_iomin_nms_shape_the_output(adapter, media):
    task = {"id": 1, "data": {"image": f"{media}/good.png"}}
    loose = client_for(adapter, score_threshold=0.01).post("/predict", json={"tasks": [task], "label_config": CONFIG})
    strict = client_for(adapter, score_threshold=0.5, nms_metric="iomin", max_tags_per_pixel=1).post(
        "/predict", json={"tasks": [task], "label_config": CONFIG}
    )
    certain = client_for(adapter, score_threshold=0.9999).post("/predict", json={"tasks": [task], "label_config": CONFIG})
    loose_boxes = loose.get_json()["results"][0]["result"]
    strict_boxes = strict.get_json()["results"][0]["result"]
    certain_boxes = certain.get_json()["results"][0]["result"]
    assert len(loose_boxes) >= len(strict_boxes) >= 1
    assert len(certain_boxes) < len(loose_boxes)
    assert all(r["score"] >= 0.5 for r in strict_boxes)
    assert all(r["score"] >= 0.9999 for r in certain_boxes)


def test_decompression_bomb_is_refused_before_decoding():
    # 20000 x 20000 one-bit image: 400 Mpx from ~50 KB of PNG.
    bomb = png(Image.new("1", (20_000, 20_000)))
    assert len(bomb) < 200_000
    with pytest.raises(MediaError, match=r"20000x20000 = 400000000 pixels, over MAX_IMAGE_PIXELS=40000000"):
        decode_image(bomb, max_pixels=40_000_000)
