"""The training set: the dataset writer, the split by task id and the training image cache."""

import numpy as np
import pytest
from PIL import Image

from label_studio_ale.errors import TrainingError
from label_studio_ale.settings import Settings
from label_studio_ale.training_set import TrainingSample, is_validation, write_training_set


def _sample(task_id, tmp_path, xyxy, labels, size=(100, 50)):
    path = tmp_path / f"img{task_id}.png"
    Image.new("RGB", size).save(path)
    return TrainingSample(task_id, path, np.asarray(xyxy, dtype=float).reshape(-1, 4), np.asarray(labels))


def test_the_dataset_is_split_by_task_id_and_boxes_are_clipped(tmp_path):
    ids = list(range(1, 21))
    samples = [_sample(i, tmp_path, [[-10, 10, 50, 40], [90, 0, 130, 80], [120, 5, 150, 9]], [0, 1, 1]) for i in ids]
    data_yaml, counts = write_training_set(tmp_path / "ds", samples, ["bird", "nest"])
    val = [i for i in ids if is_validation(i)]
    assert counts == {"train_images": 20 - len(val), "val_images": len(val), "boxes": 40, "skipped_boxes": 20, "tiled_images": 0, "tiles": 0}
    assert sorted(int(p.stem) for p in (tmp_path / "ds" / "images" / "val").iterdir()) == val
    rows = np.loadtxt(tmp_path / "ds" / "labels" / "train" / f"{[i for i in ids if i not in val][0]}.txt", ndmin=2)
    # the first box is clipped at x = 0, the second at the right and bottom edges; the third lies outside
    np.testing.assert_allclose(rows, [[0, 0.25, 0.5, 0.5, 0.6], [1, 0.95, 0.5, 0.1, 1.0]], atol=1e-6)
    assert "names:\n  0: bird\n  1: nest\n" in data_yaml.read_text()


def test_a_folder_written_before_is_written_again(tmp_path):
    """A run killed part-way leaves the folder, its validation images linked to their sources: writing again replaces them."""
    ids = list(range(1, 21))
    samples = [_sample(i, tmp_path, [[10, 10, 50, 40]], [0]) for i in ids]
    first = write_training_set(tmp_path / "ds", samples, ["bird"])
    assert write_training_set(tmp_path / "ds", samples, ["bird"]) == first
    val = next(i for i in ids if is_validation(i))
    assert (tmp_path / "ds" / "images" / "val_full" / f"{val}.png").read_bytes() == samples[val - 1].image.read_bytes()


def test_too_few_images_for_a_validation_split_is_refused(tmp_path):
    train_only = [i for i in range(1, 40) if not is_validation(i)][:5]
    with pytest.raises(TrainingError, match="5 training and 0 validation images; annotate more images"):
        write_training_set(tmp_path / "ds", [_sample(i, tmp_path, [], []) for i in train_only], ["bird"])


def test_a_cached_training_image_is_fetched_once_and_again_only_when_it_does_not_open(tmp_path):
    from label_studio_ale.training_set import cached_image_size

    fetched = []

    def fetch():
        fetched.append(1)
        return Image.new("RGB", (40, 30), "white")

    cached = tmp_path / "7.png"
    assert cached_image_size(cached, fetch) == (40, 30) and len(fetched) == 1
    assert cached_image_size(cached, fetch) == (40, 30) and len(fetched) == 1, "the cache serves it"
    cached.write_bytes(b"")  # cut to nothing
    assert cached_image_size(cached, fetch) == (40, 30) and len(fetched) == 2
    with Image.open(cached) as image:
        assert image.size == (40, 30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["7.png"], "no temp file left"


def test_a_cached_frame_over_pillows_own_limit_opens(tmp_path, monkeypatch):
    """MAX_IMAGE_PIXELS let it be fetched; a fresh worker reading it from the cache must not refuse it by Pillow's limit."""
    from label_studio_ale.training_set import cached_image_size

    cached = tmp_path / "8.png"
    Image.new("L", (100, 100)).save(cached)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # Pillow's 179 MP hard limit, scaled down
    assert cached_image_size(cached, lambda: pytest.fail("the cached frame is read, not fetched again")) == (100, 100)


def test_a_task_whose_image_changed_is_fetched_again_for_training(tmp_path):
    """The training cache is keyed by task and image URL: new pixels are never trained under the old task's name."""
    import io

    from label_studio_ale.ls_client import TaskRef
    from label_studio_ale.ls_format import parse_label_config
    from label_studio_ale.runtime import Runtime
    from label_studio_ale.training_set import annotated_samples
    from tests.support.http import serve_files

    def png(size):
        buffer = io.BytesIO()
        Image.new("RGB", size).save(buffer, format="PNG")
        return buffer.getvalue()

    config = parse_label_config('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
                                '<Label value="bird"/></RectangleLabels></View>')

    class LS:
        url = ""

        def annotated_tasks(self, project):
            yield TaskRef(3, {"image": self.url}), [{"result": [], "ground_truth": False}]

    ls = LS()
    rt = Runtime(Settings(model_dir=tmp_path, allowed_media_hosts=("127.0.0.1",)), ls=ls)
    with serve_files({"/a.png": png((40, 30)), "/b.png": png((64, 48))}) as base:
        (tmp_path / "5" / "images").mkdir(parents=True)
        Image.new("RGB", (10, 10)).save(tmp_path / "5" / "images" / "3.png")  # a cache named by the task alone
        ls.url = f"{base}/a.png"
        (first,), _ = annotated_samples(rt, 5, config, ["bird"])
        assert Image.open(first.image).size == (40, 30)
        assert not (tmp_path / "5" / "images" / "3.png").exists()
        ls.url = f"{base}/b.png"  # the task's image replaced in LS
        (second,), _ = annotated_samples(rt, 5, config, ["bird"])
    assert Image.open(second.image).size == (64, 48)
    assert list((tmp_path / "5" / "images" / "3").iterdir()) == [second.image], "the image of the old URL is gone"


def _region(label, x=45, y=45, size=(4000, 3000)):
    return {"type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": size[0], "original_height": size[1],
            "value": {"x": x, "y": y, "width": 10, "height": 10, "rotation": 0, "rectanglelabels": [label]}}


def test_annotation_boxes_are_placed_on_the_image_trained_on_not_the_size_recorded():
    """The task's image was replaced by a downscaled copy: LS draws the same percentages on it, so training must too."""
    from label_studio_ale.ls_format import parse_label_config
    from label_studio_ale.training_set import _result_boxes

    config = parse_label_config('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
                                '<Label value="bird"/></RectangleLabels></View>')
    skipped = {"skipped_images": 0, "skipped_boxes": 0}
    boxes, labels = _result_boxes([_region("bird")], config, ["bird"], (1000, 750), skipped)
    np.testing.assert_allclose(boxes, [[450, 337.5, 550, 412.5]])
    assert labels.tolist() == [0] and skipped["skipped_boxes"] == 0


def test_an_annotation_stored_under_an_aliased_labels_value_is_trained_as_that_label():
    """<Label value="Kittiwake" alias="KIWA"/>: boxes drawn before the alias was added say Kittiwake; LS shows them as KIWA."""
    from label_studio_ale.ls_format import parse_label_config
    from label_studio_ale.training_set import _result_boxes

    config = parse_label_config('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
                                '<Label value="Kittiwake" alias="KIWA"/><Label value="Gull"/></RectangleLabels></View>')
    skipped = {"skipped_images": 0, "skipped_boxes": 0}
    regions = [_region("Kittiwake", 10), _region("KIWA", 30), _region("Gull", 50), _region("kittiwake", 70)]
    boxes, labels = _result_boxes(regions, config, list(config.labels), (100, 100), skipped)
    assert labels.tolist() == [0, 0, 1]
    assert skipped["skipped_boxes"] == 1, "a name LS's editor would not find either (another case) is skipped, not guessed"


_CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
           '<Label value="bird"/><Label value="nest"/></RectangleLabels></View>')


def test_regions_that_are_not_trained_on_are_counted_by_why():
    """Another tag's rectangles (e.g. imported under another name), other shapes and a region's second label are
    counted, not dropped unseen; a choice or a text field marks out no object and is not counted."""
    from label_studio_ale.ls_format import parse_label_config
    from label_studio_ale.training_set import EXTRA_LABELS, _result_boxes

    config = parse_label_config(_CONFIG)
    two_labels = _region("bird") | {"value": _region("bird")["value"] | {"rectanglelabels": ["bird", "nest"]}}
    regions = [
        _region("bird", 10),
        _region("bird", 30) | {"from_name": "tag"},
        {"type": "polygonlabels", "from_name": "poly", "to_name": "image", "value": {"points": [[1, 1], [5, 1], [5, 5]], "polygonlabels": ["bird"]}},
        {"type": "keypointlabels", "from_name": "kp", "to_name": "image", "value": {"x": 1, "y": 1, "keypointlabels": ["bird"]}},
        {"type": "choices", "from_name": "quality", "to_name": "image", "value": {"choices": ["good"]}},
        two_labels,
    ]
    skipped = {"skipped_images": 0, "skipped_boxes": 0}
    boxes, labels = _result_boxes(regions, config, ["bird", "nest"], (100, 100), skipped)
    assert labels.tolist() == [0, 0], "the two-label region trains as its first label"
    assert skipped["ignored_regions"] == {"from_name tag": 1, "polygonlabels": 1, "keypointlabels": 1, EXTRA_LABELS: 1}
    assert skipped["skipped_boxes"] == 0


def test_a_training_split_without_a_box_is_refused_with_what_was_left_out(tmp_path):
    """Trained, every object of those images would be learnt as background, and the version promoted."""
    from label_studio_ale.training_set import not_trained_note

    samples = [_sample(i, tmp_path, [], []) for i in range(1, 41)]
    note = not_trained_note({"skipped_boxes": 2, "ignored_regions": {"from_name tag": 40, "polygonlabels": 3}})
    assert note == ("regions not trained on: from_name tag: 40, polygonlabels: 3; 2 boxes skipped, their label not in the "
                    "label config or their values unreadable")
    train = sum(not is_validation(i) for i in range(1, 41))
    with pytest.raises(TrainingError, match=rf"^no box in its {train} training images \(regions not trained on: from_name tag: 40, "
                                            r"polygonlabels: 3; 2 boxes.*\): draw each object as a rectangle of the label config's <RectangleLabels>"):
        write_training_set(tmp_path / "ds", samples, ["bird"], not_trained=note)
    # boxes on validation images only: still nothing to learn from
    val_only = [_sample(i, tmp_path, [[5, 5, 20, 20]] if is_validation(i) else [], [0] if is_validation(i) else []) for i in range(1, 41)]
    with pytest.raises(TrainingError, match=rf"^no box in its {train} training images: draw"):
        write_training_set(tmp_path / "ds2", val_only, ["bird"])


def test_a_ground_truth_annotation_decides_its_task_alone():
    """A reviewer's corrected ground truth is the answer, not one vote that a second annotator's miss out-votes."""
    from label_studio_ale.training_set import trained_results

    reviewed = {"ground_truth": True, "result": ["reviewed"]}
    other = {"ground_truth": False, "result": ["annotator"]}
    assert trained_results([other, reviewed]) == ([["reviewed"]], True)
    assert trained_results([other, {"ground_truth": False, "result": ["b"]}]) == ([["annotator"], ["b"]], False)
    # LS marks every annotation imported with its task as ground truth: several marked are no reviewer's choice
    imported = [{"ground_truth": True, "result": ["a"]}, {"ground_truth": True, "result": ["b"]}]
    assert trained_results(imported) == ([["a"], ["b"]], False)
    assert trained_results([reviewed]) == ([["reviewed"]], False), "a task's only annotation decides as it always did"


def test_annotated_samples_train_on_the_ground_truth_and_report_what_they_left_out(tmp_path, caplog):
    import io

    from label_studio_ale.ls_client import TaskRef
    from label_studio_ale.ls_format import parse_label_config
    from label_studio_ale.runtime import Runtime
    from label_studio_ale.training_set import annotated_samples
    from tests.support.http import serve_files

    buffer = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buffer, format="PNG")
    config = parse_label_config(_CONFIG)
    birds = [_region("bird", x) for x in (10, 40, 70)]

    class LS:
        url = ""

        def annotated_tasks(self, project):
            reviewed = {"id": 1, "ground_truth": True, "updated_at": "2025-01-01", "result": birds}
            yield TaskRef(3, {"image": self.url}), [reviewed, {"id": 2, "ground_truth": False, "result": birds[:1]}]
            yield TaskRef(4, {"image": self.url}), [{"result": birds[:1], "ground_truth": False}, {"result": birds[:1] + [birds[1] | {"from_name": "tag"}], "ground_truth": False}]

    ls = LS()
    rt = Runtime(Settings(model_dir=tmp_path, allowed_media_hosts=("127.0.0.1",)), ls=ls)
    with serve_files({"/a.png": buffer.getvalue()}) as base:
        ls.url = f"{base}/a.png"
        samples, skipped = annotated_samples(rt, 5, config, ["bird", "nest"])
    assert [len(s.labels) for s in samples] == [3, 1], "task 3: the reviewer's three birds, not the one both drew"
    assert skipped["ground_truth_tasks"] == 1 and skipped["consensus_tasks"] == 1
    assert skipped["ignored_regions"] == {"from_name tag": 1}
    assert 'regions not trained on (from_name tag: 1): training reads the rectangles of <RectangleLabels name="label">' in caplog.text


@pytest.mark.parametrize("orientation", [6, 3])
def test_a_photo_stored_turned_trains_on_the_image_its_boxes_were_drawn_on(tmp_path, orientation):
    """A phone photo (EXIF orientation) is read upright, its boxes in the upright image's pixels: the training set gets
    an upright copy, its labels normalised by the upright size, whole and tiled alike."""
    from label_studio_ale.tile_dataset import TrainingTiles
    from label_studio_ale.tiling import TileSettings

    stored = Image.new("RGB", (400, 200))
    stored.paste((255, 0, 0), (0, 0, 100, 200))  # the stored left edge: the top once turned by 6, the right by 3
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright = (200, 400) if orientation == 6 else (400, 200)
    ids = [1, 2, 3, next(i for i in range(4, 40) if is_validation(i))]
    samples = []
    for i in ids:
        stored.save(tmp_path / f"{i}.jpg", exif=exif)
        samples.append(TrainingSample(i, tmp_path / f"{i}.jpg", np.array([[20.0, 10.0, 60.0, 50.0]]), np.array([0])))
    write_training_set(tmp_path / "ds", samples, ["bird"])
    for split, i in (("train", 1), ("val", ids[-1]), ("val_full", ids[-1])):
        with Image.open(tmp_path / "ds" / "images" / split / f"{i}.png") as written:
            assert written.size == upright
            red = (100, 20) if orientation == 6 else (380, 100)
            assert written.convert("RGB").getpixel(red)[0] > 200, "the pixels are turned as the photo is shown"
        line = (tmp_path / "ds" / "labels" / split / f"{i}.txt").read_text().split()
        assert float(line[1]) == pytest.approx(40 / upright[0]) and float(line[4]) == pytest.approx(40 / upright[1])
    tiles = TrainingTiles(TileSettings(128, 0.2, 300), 0.5, 0.0, 128)
    write_training_set(tmp_path / "tiled", samples, ["bird"], tiles)
    with Image.open(tmp_path / "tiled" / "images" / "train" / "1.png") as whole:  # the whole frame beside its tiles
        assert whole.size == ((64, 128) if orientation == 6 else (128, 64))


def test_start_trainings_cached_images_are_trained_as_stored(tmp_path):
    """The training cache holds upright PNGs (decoded as served): a sample marked upright is copied without a look at its EXIF."""
    exif = Image.Exif()
    exif[0x0112] = 6
    ids = [1, 2, next(i for i in range(3, 40) if is_validation(i))]
    samples = []
    for i in ids:
        Image.new("RGB", (100, 50)).save(tmp_path / f"{i}.png", exif=exif)
        samples.append(TrainingSample(i, tmp_path / f"{i}.png", np.array([[10.0, 10.0, 30.0, 30.0]]), np.array([0]), upright=True))
    write_training_set(tmp_path / "ds", samples, ["bird"])
    assert (tmp_path / "ds" / "images" / "train" / "1.png").read_bytes() == (tmp_path / "1.png").read_bytes()
    assert (tmp_path / "ds" / "labels" / "train" / "1.txt").read_text() == "0 0.200000 0.400000 0.200000 0.400000\n"
