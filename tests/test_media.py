from PIL import Image, ImageEnhance

from label_studio_ale.media import average_hash
from label_studio_ale.synthetic import make_scene


def test_average_hash_is_close_for_near_duplicates_and_far_otherwise():
    frame = make_scene(1).image
    burst = ImageEnhance.Brightness(frame).enhance(1.05)  # the next frame of a camera-trap burst
    other = make_scene(2).image
    h = average_hash(frame)
    assert 0 <= h < 2**64
    assert (h ^ average_hash(burst)).bit_count() <= 4
    assert (h ^ average_hash(other)).bit_count() > 8
    assert average_hash(Image.new("RGB", (10, 10))) == 0  # flat image: nothing above the mean
    # the last pixel bright: bit 63 set, still a non-negative Python int
    corner = Image.new("L", (8, 8))
    corner.putpixel((7, 7), 255)
    assert average_hash(corner) == 2**63 and type(average_hash(corner)) is int


# Cloud storage: LS resolves s3:// (gs://, azure-blob://) URIs per task. The LS client is faked at its seam here;
# tests/integration/test_cloud_storage.py runs the same path against real LS and a real S3-compatible server.

import base64  # noqa: E402
import io  # noqa: E402

import pytest  # noqa: E402

from label_studio_ale.errors import MediaError  # noqa: E402
from label_studio_ale.ls_media import storage_hosts_of  # noqa: E402
from label_studio_ale.media import MediaFetcher  # noqa: E402
from label_studio_ale.settings import Settings  # noqa: E402
from tests.support.http import serve_files  # noqa: E402


def png_bytes(seed=1) -> bytes:
    buffer = io.BytesIO()
    make_scene(seed).image.save(buffer, format="PNG")
    return buffer.getvalue()


class FakeResolver:
    """LS's resolver: bytes (proxy mode) or a presigned URL (redirect mode); records what was asked."""

    def __init__(self, answer, storages=()):
        self.answer = answer
        self.calls = []
        self._storages = list(storages)
        self.listings = 0

    def resolve(self, task_id, uri, max_bytes, timeout):
        self.calls.append((task_id, uri))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def storages(self, project):
        self.listings += 1
        return self._storages


def fetcher(client, **settings):
    return MediaFetcher(Settings(label_studio_api_key="k", label_studio_url="http://ls.local:8080", **settings), client)


def test_a_storage_uri_is_resolved_through_label_studio_for_its_task():
    client = FakeResolver(png_bytes())
    image = fetcher(client).fetch("s3://birds/colony/frame1.png", task_id=7, project=3)
    assert image.size == (128, 128) and client.calls == [(7, "s3://birds/colony/frame1.png")]


def test_the_resolver_path_ls_hands_out_is_read_as_its_task_and_uri():
    client = FakeResolver(png_bytes())
    encoded = base64.urlsafe_b64encode(b"gs://birds/a b.png").decode()
    for url in (f"/tasks/12/resolve/?fileuri={encoded}", f"http://ls.local:8080/tasks/12/resolve/?fileuri={encoded}"):
        fetcher(client).fetch(url, task_id=None, project=3)
    assert client.calls == [(12, "gs://birds/a b.png")] * 2


def test_a_presigned_redirect_is_followed_once_to_the_storage_endpoint():
    with serve_files({"/birds/frame1.png": png_bytes()}) as base:
        client = FakeResolver(f"{base}/birds/frame1.png?X-Amz-Signature=abc", storages=[{"type": "s3", "s3_endpoint": base}])
        image = fetcher(client).fetch("s3://birds/frame1.png", task_id=7, project=3)
        assert image.size == (128, 128)
        # a presigned URL that redirects again is not followed
        with serve_files({}, redirects={"/birds/frame2.png": f"{base}/birds/frame1.png"}) as hop:
            client = FakeResolver(f"{hop}/birds/frame2.png", storages=[{"type": "s3", "s3_endpoint": hop}])
            with pytest.raises(MediaError, match="redirects are not followed"):
                fetcher(client).fetch("s3://birds/frame2.png", task_id=8, project=3)


def test_a_redirect_to_a_host_of_no_storage_is_refused_with_the_fix():
    client = FakeResolver("http://169.254.169.254/latest/meta-data", storages=[{"type": "s3", "s3_endpoint": "http://minio.lan:9000"}])
    with pytest.raises(MediaError, match="'169.254.169.254', which is not the endpoint of any cloud storage of project 3") as error:
        fetcher(client).fetch("s3://birds/frame1.png", task_id=7, project=3)
    assert "ALLOWED_MEDIA_HOSTS" in str(error.value) and "pre-signed" in str(error.value)
    assert client.listings == 1, "listed once: the listing was fresh"
    # a host unknown to a cached listing: listed again once before refusing (the storage may be new)
    cached = fetcher(client)
    cached._hosts_for(3, refresh=False)
    client.listings = 0
    with pytest.raises(MediaError, match="not the endpoint"):
        cached.fetch("s3://birds/frame1.png", task_id=7, project=3)
    assert client.listings == 1


def test_an_expired_presigned_url_says_so():
    with serve_files({}) as base:
        client = FakeResolver(f"{base}/birds/gone.png?X-Amz-Expires=60", storages=[{"type": "s3", "s3_endpoint": base}])
        with pytest.raises(MediaError, match="answered 404.*presign TTL"):
            fetcher(client).fetch("s3://birds/gone.png", task_id=7, project=3)


def test_a_storage_uri_without_a_task_or_a_key_is_a_clear_error():
    with pytest.raises(MediaError, match="resolves it only for a task"):
        fetcher(FakeResolver(b"")).fetch("s3://birds/frame1.png", task_id=None, project=3)
    with pytest.raises(MediaError, match="LABEL_STUDIO_API_KEY is not set"):
        MediaFetcher(Settings(), None).fetch("s3://birds/frame1.png", task_id=1)
    with pytest.raises(MediaError, match="does not name a cloud-storage object"):
        fetcher(FakeResolver(b"")).fetch("/tasks/3/resolve/?fileuri=" + base64.urlsafe_b64encode(b"file:///etc/passwd").decode())


def test_storage_hosts_are_the_endpoints_presigned_urls_point_to():
    hosts = storage_hosts_of(
        [
            {"type": "s3", "s3_endpoint": "http://127.0.0.1:9000"},
            {"type": "s3", "s3endpoint": "https://MinIO.lab.org"},
            {"type": "s3", "s3_endpoint": ""},
            {"type": "gcs"},
            {"type": "azure", "account_name": "Camtraps"},
        ]
    )
    assert hosts == {"127.0.0.1", "minio.lab.org", ".amazonaws.com", "storage.googleapis.com", "camtraps.blob.core.windows.net"}


# --- decoding: as a browser shows the image, and one bad image never takes others down ---

import struct  # noqa: E402

import numpy as np  # noqa: E402

from label_studio_ale.media import decode_image  # noqa: E402


def jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def test_exif_orientation_turns_the_image_as_a_browser_does():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    wide = Image.new("RGB", (16, 8), (200, 30, 30))
    assert decode_image(jpeg(wide, exif=exif), 10_000).size == (8, 16)
    assert decode_image(jpeg(wide), 10_000).size == (16, 8)


def test_a_damaged_exif_block_still_decodes_upright():
    """Orientation 6 beside a DateTime stored as a DOUBLE: Pillow's exif_transpose raises on such a block."""
    payload = bytes.fromhex("45786966000049492a0008000000030012010300010000000600000086920100050000002800000032010c00010000002800000000000000c7")
    good = jpeg(Image.new("RGB", (16, 8), (90, 90, 90)))
    damaged = good[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + good[2:]
    image = decode_image(damaged, 10_000)
    assert image.mode == "RGB" and image.size == (8, 16)


def test_16_bit_and_float_images_are_scaled_to_8_bits_not_clipped_to_white():
    """A thermal camera's 16-bit frame: a browser shows its top 8 bits; Pillow's convert alone clips at 255."""
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    grey = np.asarray(decode_image(buffer.getvalue(), 10_000))[..., 0]
    assert grey[0, 0] == 0 and grey[0, -1] == 255 and abs(int(grey[0, 128]) - 128) <= 1
    floats = Image.fromarray(np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (4, 1)), mode="F")
    buffer = io.BytesIO()
    floats.save(buffer, format="TIFF")
    stretched = np.asarray(decode_image(buffer.getvalue(), 10_000))[..., 0]
    assert stretched[0, 0] == 0 and stretched[0, -1] == 255 and 120 <= stretched[0, 128] <= 135


def test_a_frame_over_max_image_pixels_is_refused_by_the_setting_whatever_pillows_own_limit(monkeypatch):
    """Pillow's guard is process-wide (89 MP by default, or whatever code set last): the message names the setting."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    buffer = io.BytesIO()
    Image.new("L", (100, 100)).save(buffer, format="PNG")
    with pytest.raises(MediaError, match=r"100x100 = 10000 pixels, over MAX_IMAGE_PIXELS=4000: raise MAX_IMAGE_PIXELS"):
        decode_image(buffer.getvalue(), 4_000)
    assert decode_image(buffer.getvalue(), 20_000).size == (100, 100), "allowed by the setting, Pillow's lower limit aside"


@pytest.mark.parametrize("url", ["https://example.com]/a.jpg", "http://[2001:db8::1/img.jpg", "http://127.0.0.1:port/x.png"])
def test_a_malformed_url_is_the_tasks_error_not_the_batchs(url):
    with pytest.raises(MediaError, match="is malformed .*correct it in the task's data"):
        fetcher(None, allowed_media_hosts=("example.com", "127.0.0.1")).fetch_bytes(url)


# --- Label Studio's own addresses: LABEL_STUDIO_URL, its public LABEL_STUDIO_HOST, a sub-path ---

from contextlib import contextmanager  # noqa: E402

from label_studio_ale.ls_client import LabelStudioClient  # noqa: E402

LEGACY_KEY = "0123456789abcdef0123456789abcdef01234567"


@contextmanager
def label_studio_files(body: bytes):
    """A loopback stand-in for LS's file views: every GET answers `body`; yields (base URL, [(path, Authorization)])."""
    seen: list = []
    with serve_files({}, default=body, seen=seen) as base:
        yield base, seen


def ls_fetcher(url: str, host: str = "") -> MediaFetcher:
    settings = Settings(label_studio_url=url, label_studio_host=host, label_studio_api_key=LEGACY_KEY)
    return MediaFetcher(settings, LabelStudioClient(url, LEGACY_KEY))


def test_images_on_label_studios_public_host_are_read_through_label_studio_url_with_the_key():
    """LS with LABEL_STUDIO_HOST=https://ls.example.org writes that host into local-files links; in compose the backend
    reaches LS as http://label-studio:8080, and the public name need not resolve there."""
    with label_studio_files(png_bytes()) as (base, seen):
        fetcher_ = ls_fetcher(base, host="https://ls.example.org")
        for url in ("https://ls.example.org/data/local-files/?d=images/a.png", "https://LS.example.org:443/data/upload/1/x.png"):
            assert fetcher_.fetch(url).size == (128, 128)
        assert seen == [("/data/local-files/?d=images/a.png", f"Token {LEGACY_KEY}"), ("/data/upload/1/x.png", f"Token {LEGACY_KEY}")]
        with pytest.raises(MediaError, match="not allowed"):  # another port of the same name: not LS's
            fetcher_.fetch("https://ls.example.org:8443/elsewhere.png")
        seen.clear()
        # behind a TLS proxy LS writes https:// into task data while the backend reaches it over http:// by that name
        behind_proxy = ls_fetcher(base, host="http://ls.example.org")
        for url in ("https://ls.example.org/data/upload/1/x.png", "http://ls.example.org:80/data/upload/1/y.png"):
            assert behind_proxy.fetch(url).size == (128, 128)
        assert [path for path, _ in seen] == ["/data/upload/1/x.png", "/data/upload/1/y.png"]


def test_images_of_label_studio_under_a_sub_path_are_read_once_below_it():
    """LABEL_STUDIO_HOST=http://host/ls makes LS serve uploads at /ls/data/upload/...: the sub-path is LABEL_STUDIO_URL's
    (LS reached through the same proxy path) or LABEL_STUDIO_HOST's alone (a proxy that strips it)."""
    with label_studio_files(png_bytes()) as (base, seen):
        fetcher_ = ls_fetcher(f"{base}/ls")
        for url in ("/ls/data/upload/1/x.png", f"{base}/ls/data/upload/1/x.png", "/data/upload/1/x.png"):
            assert fetcher_.fetch(url).size == (128, 128)
        assert [path for path, _ in seen] == ["/ls/data/upload/1/x.png"] * 3, "the sub-path once, not /ls/ls"
        seen.clear()
        fetcher_ = ls_fetcher(base, host="https://ls.example.org/ls")
        for url in ("/ls/data/upload/1/x.png", "https://ls.example.org/ls/data/local-files/?d=a.png"):
            fetcher_.fetch(url)
        assert [path for path, _ in seen] == ["/data/upload/1/x.png", "/data/local-files/?d=a.png"]
    client = FakeResolver(png_bytes())
    encoded = base64.urlsafe_b64encode(b"s3://birds/a.png").decode()
    fetcher(client, label_studio_host="http://ls.local:8080/ls").fetch(f"/ls/tasks/12/resolve/?fileuri={encoded}", project=3)
    assert client.calls == [(12, "s3://birds/a.png")]


def test_a_label_studio_path_on_an_unknown_host_says_to_set_label_studio_host():
    with pytest.raises(MediaError) as refused:
        fetcher(None).fetch("https://ls.example.org/ls/data/local-files/?d=images/a.png")
    message = str(refused.value)
    assert "set LABEL_STUDIO_HOST=https://ls.example.org/ls for the backend too" in message and "ALLOWED_MEDIA_HOSTS" in message
    with pytest.raises(MediaError, match="not allowed: add it to ALLOWED_MEDIA_HOSTS") as other:
        fetcher(None).fetch("https://img.example.org/a.png")
    assert "LABEL_STUDIO_HOST" not in str(other.value)


def test_a_presigned_host_from_label_studios_s3_endpoint_is_explained():
    """An S3 storage saved without an endpoint: LS presigns for the S3_ENDPOINT of its environment (MinIO), which the
    storage record does not name."""
    with serve_files({"/birds/a.png": png_bytes()}) as base:
        client = FakeResolver(f"{base}/birds/a.png?X-Amz-Signature=x", storages=[{"type": "s3", "s3_endpoint": None}])
        with pytest.raises(MediaError) as refused:
            fetcher(client).fetch("s3://birds/a.png", task_id=7, project=3)
        message = str(refused.value)
        assert "has no endpoint of its own" in message and "S3_ENDPOINT" in message and "ALLOWED_MEDIA_HOSTS" in message
        assert fetcher(client, allowed_media_hosts=("127.0.0.1",)).fetch("s3://birds/a.png", task_id=7, project=3).size == (128, 128)


# XMP's tiff:Orientation="6", as photo editors write it beside (or instead of) the EXIF tag
XMP_ORIENTATION_6 = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


def test_orientation_comes_from_the_exif_block_alone_as_browsers_read_it():
    """Browsers ignore XMP's orientation, so the annotator sees such an image as stored: turning it would put every
    box the model predicts, and every box it trains on, in the wrong place."""
    from label_studio_ale.media import upright_size

    wide = Image.new("RGB", (16, 8), (200, 30, 30))
    xmp_only = jpeg(wide, xmp=XMP_ORIENTATION_6)
    assert decode_image(xmp_only, 10_000).size == (16, 8)
    assert upright_size(Image.open(io.BytesIO(xmp_only))) == (16, 8)
    exif = Image.Exif()
    exif[0x0112] = 6
    assert decode_image(jpeg(wide, exif=exif, xmp=XMP_ORIENTATION_6), 10_000).size == (8, 16)
    for fmt in ("PNG", "WEBP"):  # PNG's eXIf chunk, WebP's EXIF chunk: browsers apply both
        buffer = io.BytesIO()
        wide.save(buffer, format=fmt, exif=exif)
        assert decode_image(buffer.getvalue(), 10_000).size == (8, 16), fmt
