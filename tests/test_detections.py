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


def test_a_model_may_name_each_boxs_label_score_and_background():
    """Per-class NMS (TF OD API): one anchor, two detections sharing its row, each with its own class and score."""
    row = [0.6, 0.3]
    det = Detections([[0, 0, 5, 5], [0, 0, 5, 5]], [row, row], (10, 10), labels=[0, 1], scores=[0.6, 0.3], background=[0.1, 0.1])
    assert det.labels.tolist() == [0, 1] and det.scores.tolist() == [0.6, 0.3] and det.background.tolist() == [0.1, 0.1]
    second = det[np.array([False, True])]
    assert second.labels.tolist() == [1] and second.scores.tolist() == [0.3] and second.background.tolist() == [0.1]
    # without them: argmax, max and 1 - max
    plain = Detections([[0, 0, 5, 5]], [row], (10, 10))
    assert plain.labels.tolist() == [0] and plain.scores.tolist() == [0.6] and plain.background.tolist() == [pytest.approx(0.4)]


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("labels", [2], r"labels must have shape \(1,\) with class indices in \[0, 2\)"),
        ("labels", [0, 1], "labels must have shape"),
        ("scores", [1.5], r"scores must be finite and lie in \[0, 1\]"),
        ("background", [np.nan], "background must be finite"),
        ("scores", [0.5, 0.5], r"scores must have shape \(1,\)"),
    ],
)
def test_explicit_labels_scores_and_background_are_validated(field, value, match):
    with pytest.raises(ValueError, match=match):
        Detections([[0, 0, 1, 1]], [[0.5, 0.2]], (10, 10), **{field: value})


def test_an_image_embedding_is_checked_and_kept_through_filters():
    from label_studio_ale.boxes import filter_detections

    d = Detections([[0, 0, 4, 4], [1, 1, 5, 5]], [[0.9], [0.2]], (8, 8), embedding=[0.6, 0.8])
    assert d.embedding.dtype == np.float32 and not d.embedding.flags.writeable
    kept = filter_detections(d, score_threshold=0.5)
    assert len(kept) == 1 and np.array_equal(kept.embedding, d.embedding)
    assert d[np.array([False, False])].embedding is not None, "an image with no boxes left still has its embedding"
    for bad in ([], [[0.5, 0.5]], [np.nan, 1.0]):
        with pytest.raises(ValueError, match="embedding must be a finite"):
            Detections.empty(1, (8, 8)).with_embedding(bad)
