"""Images read through Label Studio: the hosts its cloud storages' presigned URLs point to, and a bounded download."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from .errors import MediaError

#: A download still running past FETCH_TIMEOUT must average at least this many bytes a second: a 50 MB frame
#: (MAX_IMAGE_BYTES) on a 2 Mbit/s link finishes, a server trickling bytes is cut off.
MIN_DOWNLOAD_RATE = 256 * 1024


#: URI schemes of Label Studio's cloud storages: LS resolves them for a task (io_storages/proxy_api.py).
STORAGE_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")


def storage_hosts_of(storages: list[dict]) -> set[str]:
    """Hosts that the presigned URLs of these storages point to (lower-case; a leading '.' is a suffix)."""
    hosts: set[str] = set()
    for storage in storages:
        kind = storage.get("type")
        if kind == "s3":
            endpoint = storage.get("s3_endpoint") or storage.get("s3endpoint") or ""  # the SDK names the field s3endpoint
            hosts.add((urlsplit(endpoint).hostname or "").lower() if endpoint else ".amazonaws.com")
        elif kind == "gcs":
            hosts.add("storage.googleapis.com")
        elif kind == "azure":
            account = (storage.get("account_name") or "").lower()
            hosts.add(f"{account}.blob.core.windows.net" if account else ".blob.core.windows.net")
    hosts.discard("")
    return hosts


def read_limited(chunks, max_bytes: int, content_length: str | None = None, timeout: float | None = None) -> bytes:
    """Join byte chunks, refusing more than `max_bytes` (checked before and while reading), or, past `timeout`
    seconds, a download averaging under MIN_DOWNLOAD_RATE."""
    if content_length and content_length.isascii() and content_length.isdigit() and int(content_length) > max_bytes:
        raise MediaError(f"image is {int(content_length)} bytes, over MAX_IMAGE_BYTES={max_bytes}")
    # httpx's timeout bounds each read, not the download: a server that trickles a byte every few seconds
    # would hold a /predict request (or a sync) for as long as it likes
    started = time.monotonic()
    # Kept as parts and joined once: a bytearray grown chunk by chunk is reallocated
    # at every size on the way to 16 MB, which fragments the heap of a long-lived worker.
    parts, size = [], 0
    for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise MediaError(f"image is over MAX_IMAGE_BYTES={max_bytes} bytes")
        elapsed = time.monotonic() - started
        if timeout is not None and elapsed > timeout and size < MIN_DOWNLOAD_RATE * elapsed:
            raise MediaError(
                f"image download stalled: {size} bytes in {elapsed:.1f} s, under {MIN_DOWNLOAD_RATE // 1024} KiB/s once past "
                f"FETCH_TIMEOUT={timeout:g} s; check the link to the image's server, or raise FETCH_TIMEOUT for slow storage"
            )
    return b"".join(parts)
