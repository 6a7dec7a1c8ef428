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


class AliveFrames:
    """Wraps decode_image: how many decoded frames are alive, at most, when the next one is decoded."""

    def __init__(self, monkeypatch):
        import gc
        import weakref

        import label_studio_ale.predictor as predictor_module

        real, self.alive, self.most = predictor_module.decode_image, [], 0

        def decode(data, max_pixels):
            gc.collect()
            self.alive = [ref for ref in self.alive if ref() is not None]
            self.most = max(self.most, len(self.alive))
            image = real(data, max_pixels)
            self.alive.append(weakref.ref(image))
            return image

        monkeypatch.setattr(predictor_module, "decode_image", decode)


class Boxless:
    classes, version = ("bird",), "m-1"

    def __init__(self, alive: AliveFrames | None = None):
        self.alive, self.most_while_predicting = alive, 0

    def predict(self, images):
        import gc

        from label_studio_ale.detections import Detections

        if self.alive is not None:  # the frames alive while the model runs: the chunk's, and nothing decoded ahead
            gc.collect()
            self.most_while_predicting = max(self.most_while_predicting, sum(ref() is not None for ref in self.alive.alive))
        return [Detections.empty(1, image.size) for image in images]


def frames(count):
    files = {f"/data/upload/1/{i}.png": png(100, 100) for i in range(count)}
    return files, [{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}} for i in range(count)]


def test_predict_holds_one_chunk_of_frames_while_it_decodes_the_next(monkeypatch):
    """A budget of two frames: at most two frames (the chunk being filled) are alive when a frame is decoded."""
    alive = AliveFrames(monkeypatch)
    files, tasks = frames(8)
    predictor = Predictor(Settings(predict_chunk_pixels=20_000), Boxless(), Files(files))
    config = '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image"><Label value="bird"/></RectangleLabels></View>'
    outcome = predictor.predict_tasks(tasks, config)
    assert len(outcome.predictions) == 8 and alive.most <= 2


def test_no_frame_is_decoded_ahead_of_the_chunk_being_predicted(monkeypatch):
    """A budget of two frames: the model sees two, and no third is decoded and held beside them."""
    alive = AliveFrames(monkeypatch)
    files, tasks = frames(8)
    model = Boxless(alive)
    predictor = Predictor(Settings(predict_chunk_pixels=20_000, predict_batch_size=8), model, Files(files))
    config = '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image"><Label value="bird"/></RectangleLabels></View>'
    assert len(predictor.predict_tasks(tasks, config).predictions) == 8
    assert model.most_while_predicting == 2


def test_the_pool_prediction_holds_one_chunk_of_frames_while_it_decodes_the_next(monkeypatch, tmp_path):
    import label_studio_ale.pool as pool
    from label_studio_ale.ls_client import TaskRef
    from label_studio_ale.runtime import Runtime

    alive = AliveFrames(monkeypatch)
    files, tasks = frames(8)
    monkeypatch.setattr(pool, "MediaFetcher", lambda settings, ls: Files(files))
    rt = Runtime(Settings(model_dir=tmp_path, predict_chunk_pixels=20_000), ls=object())  # images come from `files`
    done = pool.predict_missing(rt, 1, CONFIG, [TaskRef(t["id"], t["data"]) for t in tasks], lambda *a, **k: None, Boxless())
    assert done["predicted"] == 8 and alive.most <= 2
    again = pool.predict_missing(rt, 1, CONFIG, [TaskRef(t["id"], t["data"]) for t in tasks], lambda *a, **k: None, Boxless())
    assert again["predicted"] == 0, "what is stored is not predicted again"


def test_predicting_an_imports_tasks_lists_from_the_first_of_them_not_the_whole_project(monkeypatch, tmp_path):
    """TASKS_CREATED names the new tasks; ids only grow, so the listing starts just below the smallest."""
    from types import SimpleNamespace

    import label_studio_ale.pool as pool
    from label_studio_ale.ls_client import TaskRef
    from label_studio_ale.runtime import Runtime

    files, tasks = frames(3)

    class LS:
        asked = []

        def project(self, project):
            return SimpleNamespace(label_config='<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image"><Label value="bird"/></RectangleLabels></View>')

        def unlabeled_tasks(self, project, after_id=None):
            self.asked.append(after_id)
            return [TaskRef(100 + t["id"], t["data"]) for t in tasks if after_id is None or 100 + t["id"] > after_id]

    ls = LS()
    monkeypatch.setattr(pool, "MediaFetcher", lambda settings, client: Files(files))
    rt = Runtime(Settings(model_dir=tmp_path), ls=ls, adapter_factory=Boxless)
    assert pool.predict_pool(1, [102, 101], runtime=rt, progress=lambda *a, **k: None)["predicted"] == 2
    assert pool.predict_pool(1, None, runtime=rt, progress=lambda *a, **k: None)["predicted"] == 1  # task 100, not stored yet
    assert ls.asked == [100, None]
