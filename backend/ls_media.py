"""Images read through Label Studio: its files and cloud-storage objects, the hosts its cloud storages' presigned
URLs point to, and a bounded download."""

from __future__ import annotations

import base64
import logging
import time
from urllib.parse import urlsplit

from .errors import MediaError

log = logging.getLogger(__name__)

#: A download still running past FETCH_TIMEOUT must average at least this many bytes a second: a 50 MB frame
#: (MAX_IMAGE_BYTES) on a 2.5 Mbit/s link finishes, a server trickling bytes is cut off.
MIN_DOWNLOAD_RATE = 256 * 1024


#: Where files uploaded into LS are served from (below the sub-path LS is served at).
UPLOAD_PREFIX = "/data/upload/"
#: URI schemes of Label Studio's cloud storages: LS resolves them for a task (io_storages/proxy_api.py).
STORAGE_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
#: The hosts an S3 storage without an endpoint presigns for, as far as its record tells: LS then uses boto3's default
#: (AWS), or the S3_ENDPOINT of its own environment (io_storages/s3/utils.py), which no listing shows.
AWS_S3_HOSTS = ".amazonaws.com"


class MediaReads:
    """The LS client's reads of images, authenticated at LABEL_STUDIO_URL (`self.url`, `self.sdk`, `self._http()` are
    LabelStudioClient's)."""

    def resolve(self, task_id: int, uri: str, max_bytes: int, timeout: float) -> bytes | str:
        """A cloud-storage URI (s3://bucket/key) of a task, through LS's own resolver, as LS's frontend reads it.

        -> the bytes when LS proxies them, or the presigned URL LS redirects to
        (not followed here: the caller decides whether to trust its host).
        """
        fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
        url = f"{self.url}/tasks/{int(task_id)}/resolve/?fileuri={fileuri}"
        raw = self._http().httpx_client  # the SDK's client follows redirects; this call must not
        try:
            headers = self.sdk._client_wrapper.get_headers()
            with raw.stream("GET", url, headers=headers, follow_redirects=False, timeout=timeout) as response:
                if response.is_redirect and response.headers.get("location"):
                    return response.headers["location"]
                if response.status_code != 200:
                    response.read()
                    raise MediaError(
                        f"Label Studio could not read {uri[:120]} for task {task_id} from its cloud storage "
                        f"(answered {response.status_code}: {response.text[:200].strip()}): check that the key still exists "
                        "and that the storage's credentials can read it (Project settings -> Cloud Storage)"
                    )
                return read_limited(response.iter_bytes(), max_bytes, response.headers.get("content-length"), timeout)
        except MediaError:
            raise
        except Exception as exc:  # httpx transport errors, token refresh failures
            raise MediaError(f"cannot resolve {uri[:120]} for task {task_id} through Label Studio: {type(exc).__name__}: {exc}") from None

    def storages(self, project_id: int) -> list[dict]:
        """The project's import storages (S3, GCS, Azure) as dicts with a `type`: the settings that name their hosts."""
        found = []
        for kind, api in (("s3", self.sdk.import_storage.s3), ("gcs", self.sdk.import_storage.gcs), ("azure", self.sdk.import_storage.azure)):
            try:
                items = api.list(project=project_id)
            except Exception as exc:  # an LS edition without this storage kind
                log.debug("project %s: %s storages not listed: %s", project_id, kind, exc)
                continue
            for item in items or []:
                data = item.dict() if hasattr(item, "dict") else dict(item)
                found.append({**data, "type": kind})
        return found

    def download(self, path_and_query: str, max_bytes: int, timeout: float) -> bytes:
        """GET a file LS serves (e.g. /data/upload/1/x.png), authenticated, at most `max_bytes`."""
        http = self._http()
        try:
            with http.stream(path_and_query.lstrip("/"), method="GET", request_options={"timeout_in_seconds": timeout}) as response:
                if response.status_code in (404, 500) and path_and_query.startswith(UPLOAD_PREFIX):
                    # LS 1.23 answers a missing upload with 500, not 404
                    raise MediaError(
                        f"the file {path_and_query} is missing from Label Studio's upload folder (LS answered "
                        f"{response.status_code}): it was deleted or never stored; re-import the image, or delete the task"
                    )
                if response.status_code != 200:
                    raise MediaError(f"Label Studio answered {response.status_code} for {path_and_query}")
                return read_limited(response.iter_bytes(), max_bytes, response.headers.get("content-length"), timeout)
        except MediaError:
            raise
        except Exception as exc:  # httpx transport errors, token refresh failures
            raise MediaError(f"cannot download {path_and_query} from Label Studio: {type(exc).__name__}: {exc}") from None


def storage_hosts_of(storages: list[dict]) -> set[str]:
    """Hosts that the presigned URLs of these storages point to (lower-case; a leading '.' is a suffix)."""
    hosts: set[str] = set()
    for storage in storages:
        kind = storage.get("type")
        if kind == "s3":
            endpoint = storage.get("s3_endpoint") or storage.get("s3endpoint") or ""  # the SDK names the field s3endpoint
            hosts.add((urlsplit(endpoint).hostname or "").lower() if endpoint else AWS_S3_HOSTS)
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
