"""LabelStudioClient's token handling, at the SDK's network seam (no server: the refresh is replaced)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from types import SimpleNamespace

import jwt
import pytest

from label_studio_ale.ls_client import TOKEN_REFRESH_MARGIN, LabelStudioClient

# A port nothing listens on: any request that reaches the network fails the test.
NOWHERE = "http://127.0.0.1:9"


def _jwt(token_type: str, expires_in: float, jti: str) -> str:
    return jwt.encode({"token_type": token_type, "exp": int(time.time() + expires_in), "jti": jti}, "a signing key of thirty-two bytes!", algorithm="HS256")


@pytest.fixture
def client(monkeypatch):
    client = LabelStudioClient(NOWHERE, _jwt("refresh", 3600 * 24, "personal"))
    tokens = client.sdk._client_wrapper._tokens_client
    refreshed = []

    def refresh(refresh_token=None):
        refreshed.append(refresh_token)
        return SimpleNamespace(access=_jwt("access", 300, f"fresh-{len(refreshed)}"))

    monkeypatch.setattr(tokens, "refresh", refresh)
    return client, tokens, refreshed


def _authorization(client: LabelStudioClient) -> str:
    return client.sdk._client_wrapper.get_headers()["Authorization"]


def test_an_access_token_about_to_expire_is_replaced_before_it_is_sent(client):
    client, tokens, refreshed = client
    about_to_expire = _jwt("access", TOKEN_REFRESH_MARGIN.total_seconds() / 3, "old")
    tokens._set_access_token(about_to_expire)
    header = _authorization(client)
    assert refreshed == [None]
    assert header != f"Bearer {about_to_expire}"
    assert jwt.decode(header.split()[1], options={"verify_signature": False})["jti"] == "fresh-1"
    # the fresh token is kept: the next request does not refresh again
    assert _authorization(client) == header
    assert refreshed == [None]


def test_an_access_token_with_time_left_is_kept(client):
    client, tokens, refreshed = client
    valid = _jwt("access", 4 * TOKEN_REFRESH_MARGIN.total_seconds(), "valid")
    tokens._set_access_token(valid)
    assert _authorization(client) == f"Bearer {valid}"
    assert refreshed == []


def test_the_first_request_gets_an_access_token(client):
    client, tokens, refreshed = client
    assert tokens._access_token is None
    assert _authorization(client).startswith("Bearer ")
    assert refreshed == [None]


def test_a_legacy_key_is_sent_as_it_is():
    client = LabelStudioClient(NOWHERE, "0123456789abcdef0123456789abcdef01234567")
    assert _authorization(client) == "Token 0123456789abcdef0123456789abcdef01234567"


def test_wrapping_twice_changes_nothing(client):
    from label_studio_ale.ls_client import refresh_tokens_early

    client, tokens, _ = client
    cls = type(tokens)
    refresh_tokens_early(client.sdk)
    assert type(tokens) is cls


@pytest.fixture
def failing_server():
    """A loopback HTTP server that answers every request 500 and counts them by path."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen[self.path] = seen.get(self.path, 0) + 1
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"detail": "the counters could not be updated"}')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_requests_that_create_predictions_are_sent_once_even_when_answered_500(failing_server):
    """LS may have committed what a failed request created: a retry would create every prediction twice."""
    url, seen = failing_server
    client = LabelStudioClient(url, "a-legacy-token")
    item = {"task": 1, "result": [], "score": 0.5, "model_version": "ale:v1"}
    with pytest.raises(Exception):
        client.import_predictions(7, [item])
    with pytest.raises(Exception):
        client.create_predictions(7, [item], threads=1)
    assert seen == {"/api/projects/7/import/predictions": 1, "/api/predictions/": 1}
    seen.clear()
    with pytest.raises(Exception):  # what the SDK does by default: the same request again
        client.sdk.projects.import_predictions(id=7, request=[item])
    assert seen["/api/projects/7/import/predictions"] > 1


def test_a_download_that_trickles_past_the_timeout_is_refused_whatever_each_read_takes():
    from label_studio_ale.errors import MediaError
    from label_studio_ale.ls_media import read_limited

    def trickle(pieces, pause, size=10):
        for _ in range(pieces):
            time.sleep(pause)  # each read well within an httpx read timeout of the same seconds
            yield b"x" * size

    assert read_limited(trickle(3, 0.0), 100, timeout=1.0) == b"x" * 30
    assert read_limited(trickle(1, 0.0), 100, content_length="\u00b2") == b"x" * 10  # no number: the size is counted as read
    started = time.monotonic()
    with pytest.raises(MediaError, match=r"image download stalled: \d+ bytes in [\d.]+ s, under 256 KiB/s once past FETCH_TIMEOUT=0.3 s"):
        read_limited(trickle(50, 0.1), 10_000, timeout=0.3)
    assert time.monotonic() - started < 1.0  # stopped past the timeout, not after the 5 s the server would take
    # a large frame on a slow but steady link runs past the timeout and still arrives: 8 MB at about 16 MB/s
    assert len(read_limited(trickle(8, 0.06, 1 << 20), 10 << 20, timeout=0.2)) == 8 << 20


@contextmanager
def refusing_label_studio(known_projects=()):
    """A loopback stand-in for Label Studio: the key "refused-key" gets 401 (and any refresh token too), project
    ids other than `known_projects` 404, as LS answers them. -> its URL."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlsplit

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.headers.get("Authorization") == "Token refused-key":
                return self._answer(401, {"detail": "Invalid token."})
            split = urlsplit(self.path)
            project = parse_qs(split.query).get("project", [None])[0] or split.path.rstrip("/").rsplit("/", 1)[-1]
            if int(project) not in known_projects:
                return self._answer(404, {"detail": "Not found."})
            return self._answer(200, {"id": int(project), "label_config": "<View/>"})

        def do_POST(self):  # the token refresh of a personal access token
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._answer(401, {"detail": "Token is invalid or expired", "code": "token_not_valid"})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()  # a quick shutdown
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_unknown_projects_message_masks_credentials_in_the_url():
    from label_studio_ale.ls_client import refusal_message

    exc = type("ApiError", (), {"status_code": 404, "body": None})()
    said = refusal_message(exc, 9, "http://admin:s3cret@ls.example:8080")
    assert "s3cret" not in said and "ls.example:8080" in said


def test_an_unknown_project_and_a_refused_key_say_what_to_fix_not_the_sdk_api_error():
    """`ale sync`, `ale rank` and `ale savings --recompute` print these; the SDK's ApiError was a traceback."""
    from label_studio_ale.ls_client import LabelStudioError

    with refusing_label_studio() as url:
        client = LabelStudioClient(url, "a-legacy-token")
        missing = rf"project 999 not found in Label Studio at {url}: check --project / the project id"
        with pytest.raises(LabelStudioError, match=missing):
            client.project(999)
        with pytest.raises(LabelStudioError, match=missing):  # what savings --recompute asks first
            list(client.task_annotations(999))
        with pytest.raises(LabelStudioError, match=missing):
            list(client.unlabeled_tasks(999))
        refused = r"Label Studio refused LABEL_STUDIO_API_KEY \(401\): use a personal access token or legacy token from Account & Settings"
        with pytest.raises(LabelStudioError, match=refused + r" \(Label Studio said: Invalid token.\)"):
            LabelStudioClient(url, "refused-key").project(1)
        revoked = LabelStudioClient(url, _jwt("refresh", 3600, "revoked"))  # its exchange for an access token is refused
        with pytest.raises(LabelStudioError, match=refused + r" \(Label Studio said: Token is invalid or expired\)"):
            list(revoked.task_annotations(1))


def test_the_names_other_modules_import_from_ls_client_stay_importable_there():
    """Refusal messages live in ls_refusals and image reads in ls_media; importers of ls_client see no change."""
    from label_studio_ale import ls_client, ls_media, ls_refusals

    assert ls_client.LabelStudioError is ls_refusals.LabelStudioError and ls_client.refusal_message is ls_refusals.refusal_message
    assert all(callable(getattr(ls_client, name)) for name in ("upload_images", "sdk_client", "refresh_tokens_early"))
    assert ls_client.UPLOAD_CHUNK_FILES > 0 and ls_client.TaskRef and ls_client.TOKEN_REFRESH_MARGIN
    assert issubclass(ls_client.LabelStudioClient, ls_media.MediaReads)
    assert all(callable(getattr(ls_client.LabelStudioClient, name)) for name in ("download", "resolve", "storages", "create_project"))
