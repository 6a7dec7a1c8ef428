"""Images of a pool are fetched in chunks bounded by decoded pixels, in task order, failures in place."""

import io

from PIL import Image

from label_studio_ale.errors import MediaError
from label_studio_ale.ls_format import parse_label_config
from label_studio_ale.predictor import Predictor
from label_studio_ale.settings import Settings

CONFIG = parse_label_config(
    '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image"><Label value="bird"/></RectangleLabels></View>'
)


def png(width, height) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


class Files:
    """A fetcher over named in-memory files."""

    def __init__(self, files):
        self.files = files

    def fetch_bytes(self, url, task_id=None, project=None):
        if url not in self.files:
            raise MediaError(f"{url} answered 404")
        return self.files[url]


def test_chunks_hold_at_most_the_pixel_budget_and_keep_task_order():
    sizes = [(100, 100), (100, 100), (300, 100), (50, 50), (100, 100)]
    files = {f"/data/upload/1/{i}.png": png(*size) for i, size in enumerate(sizes)}
    tasks = [{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}} for i in range(len(sizes))] + [{"id": 9, "data": {"image": "/data/upload/1/gone.png"}}]
    predictor = Predictor(Settings(), adapter=None, fetcher=Files(files))
    chunks = list(predictor.image_chunks(tasks, CONFIG, max_pixels=25_000, max_images=None))
    # 10,000 + 10,000 fit; the 30,000 px image is over the budget alone; 2,500 + 10,000 fit, and the failure joins them
    assert [[None if im is None else im.size for im in c.images] for c in chunks] == [
        [(100, 100), (100, 100)], [(300, 100)], [(50, 50), (100, 100), None],
    ]
    assert [c.start for c in chunks] == [0, 2, 3]
    assert chunks[-1].errors == {5: "/data/upload/1/gone.png answered 404"}
    assert all(c.pixels <= 25_000 or len(c.images) == 1 for c in chunks)


def test_chunks_also_close_at_the_image_count():
    files = {f"/data/upload/1/{i}.png": png(10, 10) for i in range(5)}
    tasks = [{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}} for i in range(5)]
    chunks = list(Predictor(Settings(), None, Files(files)).image_chunks(tasks, CONFIG, max_pixels=None, max_images=2))
    assert [len(c.images) for c in chunks] == [2, 2, 1]


def test_an_image_that_cannot_be_decoded_is_a_failure_in_its_place():
    files = {"/data/upload/1/0.png": b"not an image", "/data/upload/1/1.png": png(10, 10)}
    tasks = [{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}} for i in range(2)]
    (chunk,) = Predictor(Settings(), None, Files(files)).image_chunks(tasks, CONFIG, max_pixels=None, max_images=None)
    assert chunk.images[0] is None and "not an image" in chunk.errors[0] and chunk.images[1].size == (10, 10)
