import numpy as np
import pytest
from PIL import Image, ImageDraw

from label_studio_ale.detections import Detections
from label_studio_ale.settings import Settings
from label_studio_ale.tiling import SlicedAdapter, TileSettings, cut_boxes, merge_mask, sliced, tile_windows


class BrightBoxAdapter:
    """Finds the one bright rectangle in an image (PIL's getbbox); a box touching the image border scores higher.

    The score rule makes a seam's fragment beat the whole box on score alone,
    so the merge must prefer whole boxes; the class vector records which it kept.
    """

    classes = ("bird", "nest")
    version = "bright-box"

    def __init__(self):
        self.calls: list[list[tuple[int, int]]] = []

    def predict(self, images):
        self.calls.append([image.size for image in images])
        found = []
        for image in images:
            box = image.convert("L").point(lambda v: 255 if v > 128 else 0).getbbox()
            if box is None:
                found.append(Detections.empty(2, image.size))
                continue
            x1, y1, x2, y2 = box
            touches = x1 == 0 or y1 == 0 or x2 == image.width or y2 == image.height
            probs = [[0.9, 0.3]] if touches else [[0.6, 0.1]]
            found.append(Detections(np.array([box], dtype=float), np.array(probs), image.size))
        return found


def frame_with_box(size=(1000, 600), box=(370, 100, 430, 140)):
    image = Image.new("RGB", size, (20, 30, 20))
    ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(250, 250, 250))
    return image


def test_windows_cover_the_image_and_the_last_one_ends_at_the_border():
    windows = tile_windows(1000, 600, 400, 0.2)
    # step 320: columns start at 0, 320 and 600 (shifted back from 640); rows at 0 and 200
    assert windows.tolist() == [
        [0, 0, 400, 400], [320, 0, 720, 400], [600, 0, 1000, 400],
        [0, 200, 400, 600], [320, 200, 720, 600], [600, 200, 1000, 600],
    ]
    covered = np.zeros((600, 1000), dtype=bool)
    for x1, y1, x2, y2 in windows:
        covered[y1:y2, x1:x2] = True
    assert covered.all()


def test_an_image_no_larger_than_a_tile_is_one_window():
    assert tile_windows(300, 200, 400, 0.2).tolist() == [[0, 0, 300, 200]]
    assert tile_windows(400, 400, 400, 0.2).tolist() == [[0, 0, 400, 400]]


def test_bad_window_arguments_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        tile_windows(100, 100, 50, 1.0)
    with pytest.raises(ValueError, match="image size"):
        tile_windows(0, 100, 50, 0.2)


def test_a_box_touching_an_inner_tile_edge_is_cut_but_one_on_the_image_border_is_not():
    window = np.array([320, 0, 720, 400])
    boxes = np.array([[320, 50, 350, 80], [400, 0, 450, 30], [500, 100, 720, 130], [400, 100, 450, 150]], dtype=float)
    assert cut_boxes(boxes, window, (1000, 600)).tolist() == [True, False, True, False]


def test_a_box_cut_by_a_seam_comes_back_once_with_the_whole_box_and_its_class_vector():
    # The box spans x 370..430: the first tile (0..400) sees a 30 px fragment, the second (320..720) all of it.
    image = frame_with_box()
    inner = BrightBoxAdapter()
    adapter = SlicedAdapter(inner, TileSettings(400, 0.2, above=500, metric="iomin", full_pass=False), batch_size=4)
    found = adapter.predict([image])[0]
    assert found.image_size == (1000, 600)
    assert len(found) == 1
    assert found.xyxy.tolist() == [[370.0, 100.0, 430.0, 140.0]]
    assert found.class_probs.tolist() == [[0.6, 0.1]], "the survivor is the whole box, with its own class vector"
    assert sorted(len(call) for call in inner.calls) == [2, 4], "six tiles in batches of four"


class FragmentMisreadAdapter(BrightBoxAdapter):
    """As BrightBoxAdapter, but a box touching the border (a seam's fragment) is read as the other class."""

    def predict(self, images):
        found = super().predict(images)
        return [Detections(d.xyxy, d.class_probs[:, ::-1] if d.scores.max(initial=0) > 0.8 else d.class_probs, d.image_size) for d in found]


def test_a_fragment_read_as_another_class_is_still_merged_into_the_whole_box():
    """Half a kittiwake read as 'bird' beside the whole one read as 'kittiwake' is one animal, not two boxes."""
    adapter = SlicedAdapter(FragmentMisreadAdapter(), TileSettings(400, 0.2, above=500, metric="iomin", full_pass=False), 4)
    found = adapter.predict([frame_with_box()])[0]
    assert found.xyxy.tolist() == [[370.0, 100.0, 430.0, 140.0]]
    assert found.class_probs.tolist() == [[0.6, 0.1]]


def test_whole_boxes_of_two_classes_from_two_tiles_are_both_kept():
    """A bird on its nest: both whole, different classes, IoMin 1 — two objects."""
    nest, bird = [0, 0, 40, 40], [10, 10, 20, 20]
    keep = merge_mask(np.array([nest, bird], dtype=float), np.array([0.9, 0.8]), np.array([1, 0]), np.array([0, 1]), np.zeros(2, dtype=bool))
    assert keep.tolist() == [True, True]
    # the bird cut by a tile edge, inside the whole nest from another tile, is taken for a fragment of it
    keep = merge_mask(np.array([nest, bird], dtype=float), np.array([0.9, 0.8]), np.array([1, 0]), np.array([0, 1]), np.array([False, True]))
    assert keep.tolist() == [True, False]


def test_iou_merge_keeps_the_seam_fragment_as_a_second_box():
    # Why the default is IoMin: the fragment is wholly inside the box (IoMin 1) but its IoU is only 0.5.
    adapter = SlicedAdapter(BrightBoxAdapter(), TileSettings(400, 0.2, above=500, metric="iou", threshold=0.5, full_pass=False), 4)
    found = adapter.predict([frame_with_box()])[0]
    assert len(found) == 2


def test_the_whole_image_pass_finds_an_object_larger_than_a_tile():
    image = frame_with_box(box=(100, 100, 900, 500))  # 800 px wide: every tile holds only a cut of it
    adapter = SlicedAdapter(BrightBoxAdapter(), TileSettings(400, 0.2, above=500), batch_size=8)
    found = adapter.predict([image])[0]
    assert [[100.0, 100.0, 900.0, 500.0]] in [[box] for box in found.xyxy.tolist()]
    whole = found[(found.xyxy == [100, 100, 900, 500]).all(axis=1)]
    assert whole.class_probs.tolist() == [[0.6, 0.1]]


def test_small_images_pass_straight_through_in_one_call():
    inner = BrightBoxAdapter()
    adapter = SlicedAdapter(inner, TileSettings(400, above=500), batch_size=4)
    small = [frame_with_box(size=(480, 320), box=(10, 10, 30, 30)) for _ in range(3)]
    found = adapter.predict(small)
    assert inner.calls == [[(480, 320)] * 3]
    assert [d.xyxy.tolist() for d in found] == [[[10.0, 10.0, 30.0, 30.0]]] * 3


def test_merge_drops_only_copies_from_other_sources_of_the_same_label():
    xyxy = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 9, 9]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    labels = np.array([0, 0, 1, 0])
    sources = np.array([0, 0, 1, 1])
    keep = merge_mask(xyxy, scores, labels, sources, np.zeros(4, dtype=bool))
    # 1 shares box 0's tile (the model's own NMS kept both), 2 has another label, 3 is box 0's copy from tile 1
    assert keep.tolist() == [True, True, True, False]


def test_the_wrapper_delegates_everything_but_predict():
    inner = BrightBoxAdapter()
    inner.trained = False
    adapter = sliced(inner, TileSettings(400), 4)
    assert adapter.classes == inner.classes and adapter.version == "bright-box" and adapter.trained is False
    assert sliced(inner, None, 4) is inner


def test_tile_settings_are_validated():
    with pytest.raises(ValueError, match="overlap"):
        TileSettings(640, overlap=1.5)
    with pytest.raises(ValueError, match="metric"):
        TileSettings(640, metric="giou")
    assert not TileSettings(640, above=4000).applies((4000, 3000))
    assert TileSettings(640, above=4000).applies((6000, 4000))
    assert Settings(tile_size=512).tiles().size == 512


def test_the_grid_merge_equals_the_full_comparison_and_scales_to_a_colony():
    rng = np.random.default_rng(3)
    centres = rng.uniform(0, 4000, size=(3000, 2))
    sides = rng.uniform(10, 40, size=(3000, 2))
    xyxy = np.concatenate([centres - sides / 2, centres + sides / 2], axis=1)
    # every box seen by two tiles, slightly moved in the second
    xyxy = np.concatenate([xyxy, xyxy + rng.uniform(-2, 2, size=xyxy.shape)])
    scores = rng.uniform(0.3, 1, size=len(xyxy))
    labels = np.tile(rng.integers(0, 2, size=3000), 2)
    sources = np.concatenate([np.zeros(3000), np.ones(3000)])
    cut = rng.uniform(size=len(xyxy)) < 0.1
    gridded = merge_mask(xyxy, scores, labels, sources, cut, cell=640)
    full = merge_mask(xyxy, scores, labels, sources, cut, cell=None)
    assert np.array_equal(gridded, full)
    assert 2900 <= gridded.sum() <= 3100, "one box per object"
