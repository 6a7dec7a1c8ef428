import numpy as np
import pytest

from label_studio_ale.detections import Detections


def make(n=3, classes=2):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, size=(n, 2))
    return Detections(np.hstack([xy, xy + 10]), rng.uniform(0, 1, size=(n, classes)), (100, 80))


def test_labels_and_scores_derive_from_class_probs():
    det = Detections([[0, 0, 1, 1], [2, 2, 3, 3]], [[0.2, 0.7, 0.1], [0.5, 0.1, 0.4]], (10, 10))
    assert det.labels.tolist() == [1, 0]
    assert det.scores.tolist() == [0.7, 0.5]
    assert det.num_classes == 3 and len(det) == 2


def test_mask_and_index_give_new_detections():
    det = make(4)
    kept = det[np.array([True, False, True, False])]
    assert len(kept) == 2 and kept.image_size == (100, 80)
    assert np.array_equal(kept.class_probs, det.class_probs[[0, 2]])
    assert len(det[np.array([], dtype=int)]) == 0
    with pytest.raises(ValueError, match="keep-mask"):
        det[np.array([True, False])]


def test_empty_detections():
    det = Detections.empty(3, (20, 10))
    assert len(det) == 0 and det.labels.shape == (0,) and det.scores.shape == (0,)
    assert det.class_probs.shape == (0, 3)


@pytest.mark.parametrize(
    "xyxy, probs, size, match",
    [
        ([[0, 0, 1]], [[0.5]], (10, 10), r"xyxy must have shape"),
        ([[0, 0, 1, 1]], [[0.5], [0.5]], (10, 10), r"class_probs must have shape"),
        ([[0, 0, 1, 1]], np.zeros((1, 0)), (10, 10), "at least one class"),
        ([[0, 0, 1, np.nan]], [[0.5]], (10, 10), "finite"),
        ([[0, 0, 1, 1]], [[1.5]], (10, 10), r"\[0, 1\]"),
        ([[2, 0, 1, 1]], [[0.5]], (10, 10), "x1 <= x2"),
        ([[0, 0, 1, 1]], [[0.5]], (0, 10), "image_size"),
    ],
)
def test_validation_names_the_field(xyxy, probs, size, match):
    with pytest.raises(ValueError, match=match):
        Detections(np.asarray(xyxy, dtype=float), np.asarray(probs, dtype=float), size)


def test_arrays_are_read_only():
    det = make()
    with pytest.raises(ValueError):
        det.xyxy[0, 0] = 5
