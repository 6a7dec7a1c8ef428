"""Fetching and decoding task images, with an allow-list and size limits.

Four sources are accepted:
- paths Label Studio serves (`/data/upload/...`, `/data/local-files/?d=...`),
  relative or on LS's own host (that of LABEL_STUDIO_URL, or the public one LS
  writes into task data, LABEL_STUDIO_HOST), also under the sub-path LS is
  served at (`/ls/data/upload/...`): fetched through the LS client at
  LABEL_STUDIO_URL, authenticated;
- cloud-storage URIs (`s3://`, `gs://`, `azure-blob://`) of tasks imported
  from an LS cloud storage: resolved through LS, as its own frontend does. LS
  either proxies the bytes or redirects to a presigned URL; that redirect is
  followed once, and only to a host of the project's storages (or of
  ALLOWED_MEDIA_HOSTS), without credentials;
- http(s) URLs whose host is in ALLOWED_MEDIA_HOSTS: fetched without credentials;
- nothing else (other hosts, other schemes): refused, so a task cannot make the
  backend call arbitrary addresses.
"""

from __future__ import annotations

import base64
import io
import re
import threading
import time
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from .errors import MediaError
from .ls_client import LabelStudioClient
from .ls_media import AWS_S3_HOSTS, STORAGE_SCHEMES, read_limited, storage_hosts_of
from .settings import Settings

LS_MEDIA_PREFIX = "/data/"
#: Where Label Studio serves files, under any sub-path: a refused URL with one of these was likely meant for LS.
LS_MEDIA_PATH = re.compile(r"(/[^?#]*?)?/data/(upload|local-files)/")
#: The port a URL without one is reached at: https://ls.example.org and https://ls.example.org:443 are one address.
DEFAULT_PORTS = {"http": 80, "https": 443}
#: How long a project's storage hosts are trusted before they are listed again.
STORAGE_HOSTS_TTL = 300.0


class MediaFetcher:
    """Turns a task's image URL into a decoded RGB `PIL.Image`, or raises `MediaError`."""

    def __init__(self, settings: Settings, ls_client: LabelStudioClient | None):
        self.settings = settings
        self.ls_client = ls_client
        own = [url for url in (settings.label_studio_url, settings.label_studio_host) if url]
        self.ls_origins = {_origin(urlsplit(url)) for url in own}
        # longest first: /ls/beta before /ls
        self.ls_prefixes = sorted({urlsplit(url).path.rstrip("/") for url in own} - {""}, key=len, reverse=True)
        self._http = httpx.Client(follow_redirects=False, timeout=settings.fetch_timeout)
        self._storage_hosts: dict[int, tuple[float, set[str]]] = {}
        self._hosts_lock = threading.Lock()

    def fetch(self, url: str, task_id: int | None = None, project: int | None = None) -> Image.Image:
        """`task_id` and `project` are needed for cloud-storage URIs only (LS resolves them per task)."""
        return decode_image(self.fetch_bytes(url, task_id, project), self.settings.max_image_pixels)

    def fetch_bytes(self, url: str, task_id: int | None = None, project: int | None = None) -> bytes:
        try:
            return self._fetch_bytes(url, task_id, project)
        except MediaError:
            raise
        except (ValueError, httpx.InvalidURL) as exc:  # a malformed URL: unbalanced brackets, a port that is not a number
            raise MediaError(f"image URL {url[:80]!r} is malformed ({exc}): correct it in the task's data") from None

    def _fetch_bytes(self, url: str, task_id: int | None, project: int | None) -> bytes:
        split = urlsplit(url)
        relative = not split.scheme and not split.netloc
        on_ls = relative or (split.scheme.lower() in DEFAULT_PORTS and _origin(split) in self.ls_origins)
        if on_ls:
            path = self._ls_path(split.path)
            resolved = _storage_reference(path, split.query)
            if resolved is not None:
                # LS's API hands out a cloud-storage URI already wrapped in its resolver path.
                return self._from_storage(resolved[1], resolved[0], project)
            # read at LABEL_STUDIO_URL whichever of LS's addresses the task names: the public one
            # (LABEL_STUDIO_HOST) may not resolve where the backend runs, and gets no API key
            return self._from_label_studio(path + (f"?{split.query}" if split.query else ""))
        if split.scheme.lower() in STORAGE_SCHEMES:
            return self._from_storage(url, task_id, project)
        if split.scheme not in ("http", "https"):
            raise MediaError(
                f"unsupported image URL scheme '{split.scheme}:' in {url[:80]!r}: import the image into "
                "Label Studio, connect its bucket as a Label Studio cloud storage, or serve it over http(s) "
                "from a host in ALLOWED_MEDIA_HOSTS"
            )
        host = (split.hostname or "").lower()
        if host not in self.settings.allowed_media_hosts:
            if LS_MEDIA_PATH.match(split.path):
                public = f"{split.scheme}://{split.netloc.rpartition('@')[2]}{self._served_under(split.path)}"
                raise MediaError(
                    f"image host '{host}' is neither Label Studio's (LABEL_STUDIO_URL, LABEL_STUDIO_HOST) nor in ALLOWED_MEDIA_HOSTS: "
                    f"if {public} is the public address Label Studio writes into task data (its own LABEL_STUDIO_HOST), "
                    f"set LABEL_STUDIO_HOST={public} for the backend too, and these images are read through LABEL_STUDIO_URL "
                    "with the API key; if it is a server of its own, add the host to ALLOWED_MEDIA_HOSTS"
                )
            raise MediaError(
                f"image host '{host}' is not allowed: add it to ALLOWED_MEDIA_HOSTS "
                "(comma-separated host names) or import the image into Label Studio"
            )
        return self._from_allowed_host(url)

    def _ls_path(self, path: str) -> str:
        """A path on Label Studio without the sub-path LS is served under (LABEL_STUDIO_URL's or LABEL_STUDIO_HOST's):
        /ls/data/upload/1/x.png -> /data/upload/1/x.png, as the LS client asks for it below LABEL_STUDIO_URL."""
        for prefix in self.ls_prefixes:
            rest = path[len(prefix) :]
            if path.startswith(prefix + "/") and (rest.startswith(LS_MEDIA_PREFIX) or _RESOLVE_PATH.fullmatch(rest)):
                return rest
        return path

    @staticmethod
    def _served_under(path: str) -> str:
        """The sub-path before /data/ of a Label Studio media path ("" at the root)."""
        match = LS_MEDIA_PATH.match(path)
        return (match.group(1) or "") if match else ""

    def _from_label_studio(self, path: str) -> bytes:
        if not path.startswith(LS_MEDIA_PREFIX):
            raise MediaError(
                f"'{path[:80]}' is not a Label Studio media path (expected {LS_MEDIA_PREFIX}...; for Label Studio served under "
                "a sub-path, LABEL_STUDIO_URL or LABEL_STUDIO_HOST must end with that path)"
            )
        _refuse_traversal(path)
        if self.ls_client is None:
            raise MediaError("LABEL_STUDIO_API_KEY is not set, so images stored in Label Studio cannot be read")
        return self.ls_client.download(path, self.settings.max_image_bytes, self.settings.fetch_timeout)

    def _from_storage(self, uri: str, task_id: int | None, project: int | None) -> bytes:
        if self.ls_client is None:
            raise MediaError(f"LABEL_STUDIO_API_KEY is not set, so {uri[:80]} cannot be resolved through Label Studio")
        if task_id is None:
            raise MediaError(f"{uri[:80]} is a cloud-storage URI: Label Studio resolves it only for a task, and no task id came with it")
        resolved = self.ls_client.resolve(task_id, uri, self.settings.max_image_bytes, self.settings.fetch_timeout)
        if isinstance(resolved, bytes):
            return resolved
        host = (urlsplit(resolved).hostname or "").lower()
        if urlsplit(resolved).scheme not in ("http", "https") or not self._is_storage_host(host, project):
            raise MediaError(
                f"Label Studio redirected {uri[:80]} (task {task_id}) to host '{host}', which is not the endpoint of "
                f"any cloud storage of project {project}{self._no_endpoint_note(host, project)}: add it to ALLOWED_MEDIA_HOSTS "
                "if it is the bucket's presigned host, or turn off 'Use pre-signed URLs' on the storage so Label Studio proxies the bytes"
            )
        try:
            return self._from_allowed_host(resolved, what=f"the presigned URL of {uri[:80]} (task {task_id})")
        except MediaError as exc:
            raise MediaError(f"{exc}; if the URL expired, raise the storage's presign TTL in Label Studio") from None

    def _is_storage_host(self, host: str, project: int | None) -> bool:
        if host in self.settings.allowed_media_hosts:
            return True
        if project is None:
            return False
        hosts, fresh = self._hosts_for(project, refresh=False)
        if not _matches(host, hosts) and not fresh:  # a storage added since the cached listing is found on a second look
            hosts, _ = self._hosts_for(project, refresh=True)
        return _matches(host, hosts)

    def _no_endpoint_note(self, host: str, project: int | None) -> str:
        """Why an S3 host may be missing from the project's storages: one with no endpoint is presigned by LS for its
        environment's S3_ENDPOINT (MinIO, Ceph), which the storage record does not show."""
        if project is None or host.endswith(AWS_S3_HOSTS) or AWS_S3_HOSTS not in self._hosts_for(project, refresh=False)[0]:
            return ""
        return (
            " (an S3 storage of the project has no endpoint of its own, so Label Studio may be presigning for "
            "the S3_ENDPOINT of its own environment)"
        )

    def _hosts_for(self, project: int, refresh: bool) -> tuple[set[str], bool]:
        """-> (the project's storage hosts, whether they were listed just now)."""
        with self._hosts_lock:
            listed, hosts = self._storage_hosts.get(project, (0.0, set()))
            if refresh or time.monotonic() - listed > STORAGE_HOSTS_TTL:
                try:
                    hosts = storage_hosts_of(self.ls_client.storages(project))
                except Exception as exc:
                    raise MediaError(f"cannot list the cloud storages of project {project} in Label Studio: {type(exc).__name__}: {exc}") from None
                self._storage_hosts[project] = (time.monotonic(), hosts)
                return hosts, True
            return hosts, False

    def _from_allowed_host(self, url: str, what: str | None = None) -> bytes:
        what = what or url[:80]
        try:
            with self._http.stream("GET", url) as response:
                if response.is_redirect:
                    raise MediaError(f"{what} redirects; redirects are not followed, use the final URL")
                if response.status_code != 200:
                    raise MediaError(f"{what} answered {response.status_code}")
                return read_limited(
                    response.iter_bytes(), self.settings.max_image_bytes, response.headers.get("content-length"), self.settings.fetch_timeout
                )
        except httpx.HTTPError as exc:
            raise MediaError(f"cannot download {what}: {type(exc).__name__}: {exc}") from None


def _origin(split) -> tuple[str, int | None]:
    """(host, port) of a split URL; None for the scheme's default port, written or not.

    http://ls and https://ls are one Label Studio: behind a TLS proxy LS writes https:// into task data while the
    backend reaches it over http:// under the same name.
    """
    port = split.port
    return (split.hostname or "").lower(), None if port in (None, DEFAULT_PORTS.get(split.scheme.lower())) else port


def _storage_reference(path: str, query: str) -> tuple[int, str] | None:
    """LS's resolver path `/tasks/<id>/resolve/?fileuri=<base64 URI>` (on LS, sub-path removed) -> (task id, URI)."""
    match = _RESOLVE_PATH.fullmatch(path)
    if match is None:
        return None
    encoded = (parse_qs(query).get("fileuri") or [""])[0]
    try:  # as LS decodes it (io_storages/proxy_api.py): url-safe base64, else the URI itself, percent-encoded
        uri = base64.urlsafe_b64decode(encoded.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        uri = unquote(encoded)
    if urlsplit(uri).scheme.lower() not in STORAGE_SCHEMES:
        raise MediaError(f"'{path}?{query[:60]}' does not name a cloud-storage object (fileuri decodes to {uri[:80]!r})")
    return int(match.group(1)), uri


_RESOLVE_PATH = re.compile(r"/tasks/(\d+)/resolve/?")


def _refuse_traversal(path: str) -> None:
    split = urlsplit(path)
    candidates = [unquote(split.path)] + [unquote(v) for values in parse_qs(split.query).values() for v in values]
    for candidate in candidates:
        if ".." in candidate.replace("\\", "/").split("/"):
            raise MediaError(f"path '{path[:80]}' contains '..'; only files inside Label Studio's storage are served")


#: EXIF orientation -> the transpose that shows the image as a browser does (EXIF 2.3, tag 0x0112).
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
EXIF_ORIENTATION = 0x0112
#: Single-channel modes wider than 8 bits (thermal and scientific cameras), and the white each is scaled from.
WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}


def use_own_pixel_limit() -> None:
    """Turn Pillow's process-wide decompression-bomb guard off, for MAX_IMAGE_PIXELS alone to decide.

    Pillow's guard refuses by its own limit (89 MP, or whatever was set last in
    the process), in its own words, and also when a frame already checked is
    opened again from the training cache. Every image from outside passes
    `decode_image`, which checks MAX_IMAGE_PIXELS before any pixel is decoded.
    """
    Image.MAX_IMAGE_PIXELS = None


def header_pixels(data: bytes) -> int:
    """The pixels of an encoded image, read from its header without decoding; 0 where the header cannot be read
    (`decode_image` then says why)."""
    use_own_pixel_limit()
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:  # whatever Pillow raises on bytes that are not an image
        return 0
    return width * height


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode bytes to an RGB image as a browser shows it (EXIF orientation applied), refusing more than
    `max_pixels` before decoding pixels. Raises MediaError saying what is wrong."""
    use_own_pixel_limit()
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise MediaError(
                f"image is {width}x{height} = {width * height} pixels, over MAX_IMAGE_PIXELS={max_pixels}: "
                "raise MAX_IMAGE_PIXELS to take frames this large (a decoded frame holds 3 bytes a pixel)"
            )
        image.load()
        image = _upright(image)
        return _rgb(image)
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's guard, set again by other code
        raise MediaError(f"image refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise MediaError("file is not an image Pillow can read (PNG, JPEG, TIFF, WebP, ...)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise MediaError(f"image is corrupt or truncated: {exc}") from None
    except Exception as exc:  # third-party decoder plugins raise their own types
        raise MediaError(f"image cannot be decoded: {type(exc).__name__}: {exc}") from None


def _upright(image: Image.Image) -> Image.Image:
    """The image turned by its EXIF orientation, as browsers show it to the annotator; as stored where EXIF is unreadable.

    Not `ImageOps.exif_transpose`: it rewrites the whole EXIF block, and raises on tags a camera wrote
    with odd types (a date stored as a number), which would lose a good image.
    """
    method = turning(image)
    return image if method is None else image.transpose(method)


def turning(image: Image.Image) -> Image.Transpose | None:
    """How an opened image must be turned to show as browsers show it (its EXIF orientation); None: as stored."""
    return ORIENTATION_TRANSPOSE.get(_orientation(image))


def _orientation(image: Image.Image) -> int | None:
    """The orientation tag of an opened image's EXIF block (a TIFF's own header); None where absent or unreadable
    (browsers then show it as stored).

    Not `image.getexif()`: without the tag in the EXIF block it takes XMP's tiff:Orientation, which browsers
    ignore, so the model would see the image turned while the annotator sees it as stored.
    """
    try:
        raw = image.info.get("exif")
        if raw is None and image.format == "PNG":  # an eXIf chunk after the pixels is read with them
            image.load()
            raw = image.info.get("exif")
        if raw is not None:
            exif = Image.Exif()
            exif.load(raw)
            orientation = exif.get(EXIF_ORIENTATION)
        else:
            orientation = getattr(image, "tag_v2", {}).get(EXIF_ORIENTATION)
    except Exception:  # a damaged EXIF block
        return None
    return orientation if isinstance(orientation, int) else None


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as a browser shows it (EXIF orientation applied), without decoding pixels."""
    return turned_size(image.size, turning(image))


def turned_size(size: tuple[int, int], method: Image.Transpose | None) -> tuple[int, int]:
    """(width, height) of an image of `size` once turned by `method` (`turning`)."""
    width, height = size
    turned = method in (Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270)
    return (height, width) if turned else (width, height)


def read_image(path) -> Image.Image:
    """An image file decoded as `decode_image` decodes a task's image (upright, RGB), with the file closed.

    For local datasets (`ale evaluate`): no MAX_IMAGE_PIXELS check.
    """
    with Image.open(path) as image:
        image.load()
        shown = _rgb(_upright(image))
        # an upright RGB file comes back as itself, which closing the file would leave without pixels
        return image.copy() if shown is image else shown


def _rgb(image: Image.Image) -> Image.Image:
    """An RGB image of any mode; 16-bit and float images scaled to 8 bits rather than clipped at 255 (all white)."""
    import numpy as np

    if image.mode in WIDE_MODES:
        # as a browser shows a 16-bit PNG: its top 8 bits
        values = np.asarray(image, dtype=np.int32)
        image = Image.fromarray((np.clip(values, 0, WIDE_MODES[image.mode]) * 255 // WIDE_MODES[image.mode]).astype(np.uint8))
    elif image.mode == "F":
        # no fixed white for floats: the image's own range, stretched to 0..255
        values = np.nan_to_num(np.asarray(image, dtype=np.float32))
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        image = Image.fromarray(scaled.astype(np.uint8))
    return image.convert("RGB") if image.mode != "RGB" else image


def average_hash(image: Image.Image, size: int = 8) -> int:
    """64-bit average hash: bit i is set where the 8x8 grey thumbnail is above its mean.

    Near-duplicate images (burst frames of a camera trap) differ in few bits.
    """
    import numpy as np

    pixels = np.asarray(image.convert("L").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64).ravel()
    bits = pixels > pixels.mean()
    return sum(1 << int(i) for i in np.flatnonzero(bits))  # Python ints: bit 63 must not wrap


def _matches(host: str, hosts: set[str]) -> bool:
    """`host` is one of `hosts`, or ends with one of them that starts with '.' (a domain suffix)."""
    return host in hosts or any(h.startswith(".") and host.endswith(h) for h in hosts)
