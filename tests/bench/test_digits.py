"""The built-in benchmark scenes: deterministic, boxes on the ink, the new class only where asked."""

import numpy as np
import pytest

from label_studio_ale.bench import digits
from label_studio_ale.bench.digits import DigitScenes, scene_photo
from label_studio_ale.datasets import read_dataset


def test_the_same_seed_gives_the_same_pixels_and_boxes():
    scenes = DigitScenes()
    a, b = scenes.scene(7, 0), scenes.scene(7, 0)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert np.array_equal(a.xyxy, b.xyxy) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(np.asarray(a.image), np.asarray(scenes.scene(8, 0).image))


def test_boxes_lie_inside_the_image_around_visible_ink():
    scenes = DigitScenes(size=128)
    counts = []
    for seed in range(40):
        scene = scenes.scene(seed, 0)
        counts.append(len(scene.labels))
        assert scene.image.size == (128, 128)
        assert ((scene.xyxy >= 0) & (scene.xyxy <= 128)).all()
        assert (scene.xyxy[:, 2] > scene.xyxy[:, 0]).all() and (scene.xyxy[:, 3] > scene.xyxy[:, 1]).all()
        pixels = np.asarray(scene.image, dtype=float)
        for x1, y1, x2, y2 in scene.xyxy.astype(int):
            # ink contrasts with its surroundings: the box is not flat background
            assert pixels[y1:y2, x1:x2].std() > 15
    # field-like counts: mostly one or two objects, some crowded scenes
    assert max(counts) >= 4 and np.mean(counts) > 1.2


def test_the_new_class_is_rare_and_can_be_left_out():
    scenes = DigitScenes()
    new = scenes.new_class
    with_new = np.concatenate([scenes.scene(s, 0).labels for s in range(200)])
    without = np.concatenate([scenes.scene(s, 0, with_new_class=False).labels for s in range(200)])
    share = np.mean(with_new == new)
    assert 0.04 < share < 0.25
    assert new not in without and set(without) == set(range(len(scenes.digits))) - {new}


def test_a_rarer_new_class_changes_the_labels_and_not_the_layout():
    scenes = DigitScenes()
    new = scenes.new_class
    default = [scenes.scene(s, 0) for s in range(300)]
    rare = [scenes.scene(s, 0, new_class_share=0.04) for s in range(300)]
    # the number of objects is drawn before the labels
    assert np.mean([len(a.labels) == len(b.labels) for a, b in zip(default, rare)]) > 0.95
    labels = np.concatenate([b.labels for b in rare])
    assert 0.02 < np.mean(labels == new) < 0.07  # 4 % asked, ~650 objects drawn
    assert np.mean(np.concatenate([a.labels for a in default]) == new) > 0.12
    # the old classes share the rest alike
    old = np.bincount(labels[labels != new], minlength=len(scenes.digits))[: len(scenes.digits) - 1]
    assert old.min() > 0.8 * old.max()
    # leaving the new class out ignores the share
    assert np.array_equal(scenes.scene(5, 0, with_new_class=False, new_class_share=0.5).labels, scenes.scene(5, 0, with_new_class=False).labels)


@pytest.mark.parametrize("share", [0, 1, 1.5, -0.1, True])
def test_a_share_of_the_new_class_outside_0_and_1_is_refused(share):
    with pytest.raises(ValueError, match="share of the objects must be between 0 and 1"):
        DigitScenes().scene(0, 0, new_class_share=share)


def test_written_scenes_read_back_as_a_yolo_dataset(tmp_path):
    scenes = DigitScenes(size=96, max_side=30)
    root = scenes.write(tmp_path / "pool", 5, 0, 0)
    names, items = read_dataset(root)
    assert names == ["digit-1", "digit-4", "digit-7", "digit-0"]
    assert len(items) == 5
    for seed, item in enumerate(items):
        scene = scenes.scene(seed, 0)
        np.testing.assert_allclose(item.truth.xyxy, scene.xyxy, atol=1e-3)
        assert item.truth.labels.tolist() == scene.labels.tolist()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"digits": (1, 1)}, "distinct"), ({"digits": (3, 12)}, "0..9"), ({"size": 40, "max_side": 36}, "too small"), ({"new_class": 9}, "new_class must index")],
)
def test_bad_generator_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DigitScenes(**kwargs)


def test_scene_photo_names_the_photograph_a_scene_is_drawn_on(monkeypatch):
    # two flat photographs, dark and light: a scene's background tells which one it was cut from
    flat = (np.full((200, 300, 3), 20.0), np.full((200, 300, 3), 230.0))
    monkeypatch.setattr(digits, "_photos", lambda: flat)
    seen = set()
    for seed in range(12):
        scene = DigitScenes(size=64).scene(seed, half=0)
        background = np.median(np.asarray(scene.image, dtype=np.float64))  # glyphs cover under a quarter
        seen.add(scene_photo(seed))
        assert (background > 125) == (scene_photo(seed) == 1), seed
    assert seen == {0, 1}


def test_a_later_frame_of_a_burst_is_the_same_scene_moved_a_little():
    from label_studio_ale.media import average_hash

    scenes = DigitScenes()
    seeds = [s for s in range(30) if len(scenes.scene(s, 0).labels) >= 2][:8]
    for seed in seeds:
        first = scenes.scene(seed, 0)
        assert np.array_equal(np.asarray(scenes.scene(seed, 0, frame=0).image), np.asarray(first.image))
        for frame in (1, 2, 3):
            later = scenes.scene(seed, 0, frame=frame)
            assert later.labels.tolist() == first.labels.tolist()
            shift = later.xyxy - first.xyxy
            assert np.abs(shift).max() <= digits.BURST_SHIFT
            # each object keeps its glyph and size: the box moves as a whole
            np.testing.assert_array_equal(shift[:, 0], shift[:, 2])
            np.testing.assert_array_equal(shift[:, 1], shift[:, 3])
            assert not np.array_equal(np.asarray(later.image), np.asarray(first.image))
            # a look-alike for near-duplicate suppression: within a few bits of average hash
            assert bin(average_hash(later.image) ^ average_hash(first.image)).count("1") <= 6
        assert np.abs(scenes.scene(seed, 0, frame=1).xyxy - first.xyxy).sum() + np.abs(
            scenes.scene(seed, 0, frame=2).xyxy - first.xyxy
        ).sum() > 0, "objects move within a burst"
        # another scene is not a look-alike
        other = scenes.scene(seed + 1000, 0)
        assert bin(average_hash(other.image) ^ average_hash(first.image)).count("1") > 6


def test_a_pool_written_in_bursts_holds_each_scene_burst_times_in_a_row(tmp_path):
    scenes = DigitScenes(size=96, max_side=30)
    root = scenes.write(tmp_path / "pool", 7, 0, 0, burst=3)
    _, items = read_dataset(root)
    assert len(items) == 7  # scenes 0 and 1 three frames each, scene 2 one frame
    for index, item in enumerate(items):
        frame = scenes.scene(index // 3, 0, frame=index % 3)
        np.testing.assert_allclose(item.truth.xyxy, frame.xyxy, atol=1e-3)
        assert item.truth.labels.tolist() == frame.labels.tolist()
    with pytest.raises(ValueError, match="burst must be 1"):
        scenes.write(tmp_path / "bad", 4, 0, 0, burst=0)
    with pytest.raises(ValueError, match="frame must be 0"):
        scenes.scene(0, 0, frame=-1)
