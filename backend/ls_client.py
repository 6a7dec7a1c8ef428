"""The only code that talks to Label Studio, through `label-studio-sdk`.

The SDK handles both key kinds: a personal access token (a JWT refresh token,
exchanged for short-lived access tokens) and a legacy `Token` key.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .errors import MediaError

DEFAULT_TIMEOUT = 30.0


class LabelStudioClient:
    """A thin wrapper over `label_studio_sdk.LabelStudio` for the calls the backend makes."""

    def __init__(self, url: str, api_key: str, timeout: float = DEFAULT_TIMEOUT):
        if not api_key:
            raise ValueError(
                "LABEL_STUDIO_API_KEY is empty: create a personal access token in Label Studio "
                "(Account & Settings -> Personal Access Token) and set LABEL_STUDIO_API_KEY"
            )
        from label_studio_sdk import LabelStudio

        self.url = url.rstrip("/")
        split = urlsplit(self.url)
        self.netloc = split.netloc.lower()
        # api_key is passed explicitly: the SDK otherwise falls back to an
        # environment variable read at its import time.
        self.sdk = LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout)

    def download(self, path_and_query: str, max_bytes: int, timeout: float) -> bytes:
        """GET a file LS serves (e.g. /data/upload/1/x.png), authenticated, at most `max_bytes`."""
        http = self.sdk._client_wrapper.httpx_client  # the SDK's authenticated HTTP client
        try:
            with http.stream(path_and_query.lstrip("/"), method="GET", request_options={"timeout_in_seconds": timeout}) as response:
                if response.status_code != 200:
                    raise MediaError(f"Label Studio answered {response.status_code} for {path_and_query}")
                return read_limited(response.iter_bytes(), max_bytes, response.headers.get("content-length"))
        except MediaError:
            raise
        except Exception as exc:  # httpx transport errors, token refresh failures
            raise MediaError(f"cannot download {path_and_query} from Label Studio: {type(exc).__name__}: {exc}") from None


def read_limited(chunks, max_bytes: int, content_length: str | None = None) -> bytes:
    """Join byte chunks, refusing more than `max_bytes` (checked before and while reading)."""
    if content_length and content_length.isdigit() and int(content_length) > max_bytes:
        raise MediaError(f"image is {int(content_length)} bytes, over MAX_IMAGE_BYTES={max_bytes}")
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        if len(buffer) > max_bytes:
            raise MediaError(f"image is over MAX_IMAGE_BYTES={max_bytes} bytes")
    return bytes(buffer)
