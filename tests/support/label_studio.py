"""A real Label Studio 1.23.2 server for integration tests (label_studio_ale.label_studio_server).

The server runs on 127.0.0.1 with a fresh SQLite data directory, legacy tokens
off: tests authenticate with a personal access token, as a user of LS 1.23 does.
"""

from __future__ import annotations

from pathlib import Path

from label_studio_ale import label_studio_server as server
from label_studio_ale.label_studio_server import LABEL_STUDIO_VERSION, LabelStudioServer, free_port, stop_process, wait_for_http
from label_studio_ale.ls_client import upload_images

USERNAME = "admin@example.com"
PASSWORD = "ale-test-password-1"

__all__ = [
    "LABEL_STUDIO_VERSION",
    "LabelStudioServer",
    "create_personal_access_token",
    "free_port",
    "start_label_studio",
    "stop_process",
    "upload_images",
    "wait_for_http",
]


def start_label_studio(data_dir: Path) -> LabelStudioServer:
    return server.start_label_studio(data_dir, USERNAME, PASSWORD)


def create_personal_access_token(url: str, email: str = USERNAME, password: str = PASSWORD, signup: bool = False) -> str:
    return server.create_personal_access_token(url, email, password, signup=signup)
