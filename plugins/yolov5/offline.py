"""ultralytics, imported so that it never reaches the network unless downloads are allowed."""

from __future__ import annotations

import os


def import_ultralytics(allow_downloads: bool = False):
    """Import ultralytics configured never to reach the network (no hub, no pip, no fonts) unless downloads are allowed.

    With ALLOW_DOWNLOADS it may fetch the checkpoints named by hub name; it never pip-installs.
    """
    # read by ultralytics at each download attempt, so the latest caller's choice holds
    os.environ["YOLO_OFFLINE"] = "0" if allow_downloads else "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    import ultralytics

    return ultralytics
