from pathlib import Path

import pytest

from tests.support.label_studio import start_label_studio

INTEGRATION_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items):
    """Every test here starts real servers (and most train a model): none belongs to `-m "not slow"`."""
    for item in items:
        if INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio 1.23.2 on 127.0.0.1, authenticated with a personal access token."""
    server = start_label_studio(tmp_path_factory.mktemp("label-studio"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ls_sdk(label_studio):
    from label_studio_ale.ls_client import sdk_client

    return sdk_client(label_studio.url, label_studio.token)


@pytest.fixture(scope="session")
def redis_server():
    """A real Redis of our own: isolated state, and free to stop in fault tests."""
    from tests.support.redis_server import start_redis

    server = start_redis()
    yield server
    server.stop()
