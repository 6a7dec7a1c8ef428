import os

import pytest

# ultralytics writes its settings file on import; keep it out of the user's home.
os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "ale-tests-yolo-config"))


@pytest.fixture(scope="session")
def trained_weights(tmp_path_factory):
    """Path of a yolov5n .pt trained for the tests on generated bird/nest scenes."""
    from tests.support.models import train_tiny_detector

    return train_tiny_detector(tmp_path_factory.mktemp("tiny-detector"))


@pytest.fixture(scope="session")
def trained_tf_detector(tmp_path_factory):
    """Folder of the tfod RetinaNet trained for the tests on generated bird/nest scenes (TensorFlow runs only)."""
    from tests.support.tf_models import train_tiny_tf_detector

    return train_tiny_tf_detector(tmp_path_factory.mktemp("tiny-tf-detector"))


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server of our own, for the detection store's shared back end."""
    from tests.support.postgres_server import start_postgres

    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture
def redis_url():
    """A real Redis server of the test's own (rq's queues, locks and flags), stopped after it."""
    from tests.support.redis_server import start_redis

    server = start_redis()
    yield server.url
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    """DETECTION_STORE_URL of each back end: SQLite in a temporary folder, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'detections.sqlite'}"
    return request.getfixturevalue("postgres_server").create_database()
