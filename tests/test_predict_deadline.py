"""/predict stops starting work before Label Studio stops waiting (100 s), and runs no pass its answer does not use."""

import io
import threading
import time

import pytest
from PIL import Image

import label_studio_ale.predictor as predictor_module
from label_studio_ale.detections import Detections
from label_studio_ale.predictor import PREDICT_DEADLINE_SECONDS, Predictor
from label_studio_ale.settings import Settings

CONFIG = '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image"><Label value="bird"/></RectangleLabels></View>'


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


class Clock:
    """time.perf_counter for the predictor module, moved on by the model and the downloads rather than by waiting."""

    def __init__(self, monkeypatch):
        self.now = 0.0
        monkeypatch.setattr(predictor_module, "time", self)

    def perf_counter(self) -> float:
        return self.now


class Files:
    def __init__(self, clock=None, seconds=0.0, hold_after=None):
        self.clock, self.seconds, self.hold_after = clock, seconds, hold_after
        self.release = threading.Event()

    def fetch_bytes(self, url, task_id=None, project=None):
        if self.hold_after is not None and task_id > self.hold_after:
            self.release.wait(30)  # a download that hangs until its timeout
        if self.clock is not None:
            self.clock.now += self.seconds
        return png()


class Model:
    classes, version = ("bird",), "m-1"

    def __init__(self, clock=None, seconds=0.0):
        self.clock, self.seconds, self.calls = clock, seconds, []

    def predict(self, images):
        self.calls.append(len(images))
        if self.clock is not None:
            self.clock.now += self.seconds
        return [Detections([[1, 1, 9, 9]], [[0.9]], image.size) for image in images]


def tasks(count):
    return [{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}} for i in range(count)]


def test_tasks_not_reached_within_the_budget_get_no_prediction_and_a_reason_naming_the_sync(monkeypatch):
    clock = Clock(monkeypatch)
    model = Model(clock, seconds=40)  # one image a batch, 40 s each: batches start at 0, 40 and 80 s, none at 120
    outcome = Predictor(Settings(predict_batch_size=1), model, Files()).predict_tasks(tasks(5), CONFIG)
    assert PREDICT_DEADLINE_SECONDS == 90
    assert model.calls == [1, 1, 1]
    assert [bool(p) for p in outcome.predictions] == [True, True, True, False, False]
    assert [f.task_id for f in outcome.failures] == [3, 4]
    assert all("sync" in f.reason and "100 s" in f.reason for f in outcome.failures)


def test_downloads_still_running_at_the_deadline_are_not_waited_for(monkeypatch):
    """The first image takes the whole budget; the others hang: the request answers at once, every task without a prediction."""
    clock = Clock(monkeypatch)
    files = Files(clock, seconds=100, hold_after=0)
    model = Model()
    started = time.monotonic()
    try:
        outcome = Predictor(Settings(), model, files).predict_tasks(tasks(6), CONFIG)
    finally:
        files.release.set()
    assert time.monotonic() - started < 10, "the hanging downloads were waited for"
    assert model.calls == [], "no forward pass starts after the deadline"
    assert outcome.predictions == [[]] * 6 and len(outcome.failures) == 6


def test_a_budget_can_be_given_per_call(monkeypatch):
    Clock(monkeypatch)
    outcome = Predictor(Settings(), Model(), Files()).predict_tasks(tasks(2), CONFIG, budget=0)
    assert outcome.predictions == [[], []]


@pytest.mark.parametrize("policy", ["loc-sum", "ale-loc-max"])
def test_predict_runs_no_mirrored_pass_but_the_pool_prediction_does(policy):
    """A "loc" policy ranks the queue by each box's flip instability; what an annotator is shown needs none."""
    model = Model()
    predictor = Predictor(Settings(policy=policy, predict_batch_size=8), model, Files())
    outcome = predictor.predict_tasks(tasks(3), CONFIG)
    assert model.calls == [3] and all(outcome.predictions)
    found = predictor.raw([Image.new("RGB", (40, 30))] * 3)
    assert model.calls == [3, 3, 3] and all(d.instability is not None for d in found)


class Slow:
    """Real downloads: task id -> seconds it takes (None: it hangs until released); each image is 40 + id pixels wide."""

    def __init__(self, seconds):
        self.seconds, self.release = seconds, threading.Event()

    def fetch_bytes(self, url, task_id=None, project=None):
        if task_id in self.seconds:
            if self.seconds[task_id] is None:
                self.release.wait(5)
            else:
                time.sleep(self.seconds[task_id])
        buffer = io.BytesIO()
        Image.new("RGB", (40 + task_id, 30)).save(buffer, format="PNG")
        return buffer.getvalue()


def predict_with(files, model, count, budget):
    started = time.monotonic()
    try:
        outcome = Predictor(Settings(), model, files).predict_tasks(tasks(count), CONFIG, budget=budget)
    finally:
        files.release.set()
    return outcome, time.monotonic() - started


def widths(outcome):
    return [p["result"][0]["original_width"] if p else None for p in outcome.predictions]


def test_a_download_first_in_line_is_not_waited_for_past_the_deadline():
    outcome, seconds = predict_with(Slow({0: None}), Model(), 3, budget=0.5)
    assert seconds < 1.5, "the request waited for the hanging download"
    assert outcome.predictions == [[]] * 3
    assert all("sync" in f.reason for f in outcome.failures) and len(outcome.failures) == 3


def test_the_images_fetched_in_time_are_predicted_though_the_next_never_arrives():
    model = Model()
    outcome, seconds = predict_with(Slow({1: None}), model, 3, budget=1.0)
    assert seconds < 2.0, "the request waited for the hanging download"
    assert widths(outcome) == [40, None, None] and model.calls == [1]
    assert [f.task_id for f in outcome.failures] == [1, 2]


def test_a_download_that_arrives_after_its_chunk_was_predicted_keeps_its_place():
    """Task 1 comes after half the budget: task 0 is predicted alone, then tasks 1 and 2, each with its own image."""
    model = Model()
    outcome, seconds = predict_with(Slow({1: 1.4}), model, 3, budget=2.0)
    assert model.calls == [1, 2]
    assert widths(outcome) == [40, 41, 42] and outcome.failures == []
    assert seconds < 2.0
