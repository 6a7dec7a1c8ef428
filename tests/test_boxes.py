import numpy as np
import pytest

from label_studio_ale.boxes import (
    box_area,
    box_intersection,
    box_iomin,
    box_iou,
    filter_detections,
    max_tags_per_pixel_mask,
    nms_mask,
)
from label_studio_ale.detections import Detections

# Two birds on one nest: a 10x10 bird and a 6x6 bird in front of it.
BIG = [0, 0, 10, 10]
SMALL_INSIDE = [2, 2, 8, 8]
HALF_OVERLAP = [5, 0, 15, 10]


def test_area_and_intersection_by_hand():
    assert box_area([BIG, SMALL_INSIDE]).tolist() == [100, 36]
    assert box_area([[5, 5, 4, 9]]).tolist() == [0]  # degenerate box
    assert box_intersection([BIG], [SMALL_INSIDE, HALF_OVERLAP, [20, 20, 30, 30]]).tolist() == [[36, 50, 0]]


def test_iou_vs_iomin_birds_on_one_nest():
    # IoU 36/100 is under a 0.5 threshold, IoMin 36/36 is above it.
    assert box_iou([BIG], [SMALL_INSIDE])[0, 0] == pytest.approx(0.36)
    assert box_iomin([BIG], [SMALL_INSIDE])[0, 0] == pytest.approx(1.0)
    # Side by side: IoU 50/150, IoMin 50/100.
    assert box_iou([BIG], [HALF_OVERLAP])[0, 0] == pytest.approx(1 / 3)
    assert box_iomin([BIG], [HALF_OVERLAP])[0, 0] == pytest.approx(0.5)


def test_overlap_matrices_shapes_and_empty_inputs():
    a = np.array([BIG, SMALL_INSIDE, HALF_OVERLAP], dtype=float)
    assert box_iou(a, a[:2]).shape == (3, 2)
    assert np.allclose(np.diag(box_iou(a, a)), 1.0)
    assert box_iou(np.zeros((0, 4)), a).shape == (0, 3)
    # zero-area boxes do not divide by zero
    assert box_iou([[1, 1, 1, 1]], [[1, 1, 1, 1]])[0, 0] == 0.0
    assert box_iomin([[1, 1, 1, 1]], [BIG])[0, 0] == 0.0


def test_nms_iou_keeps_both_birds_iomin_merges_them():
    boxes = np.array([BIG, SMALL_INSIDE], dtype=float)
    scores = np.array([0.9, 0.8])
    assert nms_mask(boxes, scores, 0.5, "iou").tolist() == [True, True]
    assert nms_mask(boxes, scores, 0.5, "iomin").tolist() == [True, False]
    # the lower score goes, whichever index it has
    assert nms_mask(boxes, scores[::-1].copy(), 0.5, "iomin").tolist() == [False, True]


def test_nms_is_greedy_and_class_aware():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [2, 0, 12, 10], [50, 50, 60, 60]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    # box 1 overlaps box 0 (IoU 9/11), box 2 overlaps box 0 (8/12) -> both suppressed
    assert nms_mask(boxes, scores, 0.5).tolist() == [True, False, False, True]
    # different classes never suppress each other
    assert nms_mask(boxes, scores, 0.5, class_ids=[0, 1, 0, 0]).tolist() == [True, True, False, True]
    assert nms_mask(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_nms_rejects_bad_arguments():
    with pytest.raises(ValueError, match="metric"):
        nms_mask([BIG], [1.0], 0.5, "giou")
    with pytest.raises(ValueError, match="threshold"):
        nms_mask([BIG], [1.0], 1.5)
    with pytest.raises(ValueError, match="scores"):
        nms_mask([BIG, BIG], [1.0], 0.5)


def test_max_tags_per_pixel_by_hand():
    # Three stacked boxes on one nest and a lone one elsewhere.
    boxes = np.array([[0, 0, 10, 10], [2, 2, 12, 12], [1, 1, 9, 9], [30, 30, 40, 40]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.2])
    assert max_tags_per_pixel_mask(boxes, scores, (64, 64), 1).tolist() == [True, False, False, True]
    assert max_tags_per_pixel_mask(boxes, scores, (64, 64), 2).tolist() == [True, True, False, True]
    assert max_tags_per_pixel_mask(boxes, scores, (64, 64), 3).tolist() == [True, True, True, True]
    assert max_tags_per_pixel_mask(boxes, scores, (64, 64), 0).all()  # off


def test_max_tags_per_pixel_counts_only_covered_pixels():
    # Touching edges share no pixel: [0, 10) and [10, 20).
    boxes = np.array([[0, 0, 10, 10], [10, 0, 20, 10]], dtype=float)
    assert max_tags_per_pixel_mask(boxes, np.array([0.9, 0.8]), (32, 32), 1).tolist() == [True, True]
    # A sub-pixel sliver still occupies one pixel, and boxes past the edge are clipped.
    sliver = np.array([[5.2, 5.2, 5.4, 5.4], [5, 5, 6, 6], [-10, -10, 100, 100]], dtype=float)
    assert max_tags_per_pixel_mask(sliver, np.array([0.9, 0.8, 0.7]), (32, 32), 1).tolist() == [True, False, False]


def test_max_tags_per_pixel_truncates_both_ends_as_the_pipeline_does():
    """Side-by-side birds whose boxes meet at x=10.4 share no pixel column: int() of 10.4 ends one and starts the other."""
    boxes = np.array([[0, 0, 10.4, 10], [10.4, 0, 20, 10]], dtype=float)
    assert max_tags_per_pixel_mask(boxes, np.array([0.9, 0.8]), (32, 32), 1).tolist() == [True, True]
    # overlapping by a whole pixel they do
    boxes = np.array([[0, 0, 11.4, 10], [10.4, 0, 20, 10]], dtype=float)
    assert max_tags_per_pixel_mask(boxes, np.array([0.9, 0.8]), (32, 32), 1).tolist() == [True, False]


def test_nms_beyond_the_pair_matrix_keeps_what_the_matrix_keeps(monkeypatch):
    """Past NMS_MATRIX_BOXES the pairs are compared one kept box at a time; the result is the same."""
    from label_studio_ale import boxes as box_ops

    rng = np.random.default_rng(3)
    corner = rng.uniform(0, 200, (300, 2))
    xyxy = np.concatenate([corner, corner + rng.uniform(5, 40, (300, 2))], axis=1)
    scores = rng.choice(np.linspace(0.1, 1, 20), 300)  # ties, kept in index order
    classes = rng.integers(0, 3, 300)
    for metric in ("iou", "iomin"):
        for ids in (None, classes):
            matrix = nms_mask(xyxy, scores, 0.3, metric, ids)
            monkeypatch.setattr(box_ops, "NMS_MATRIX_BOXES", 10)
            assert np.array_equal(nms_mask(xyxy, scores, 0.3, metric, ids), matrix)
            monkeypatch.undo()
            assert 0 < matrix.sum() < 300


def test_nms_of_many_boxes_holds_no_pair_matrix():
    import tracemalloc

    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 20_000, (6000, 2))
    xyxy = np.concatenate([corner, corner + 30], axis=1)
    tracemalloc.start()
    nms_mask(xyxy, rng.uniform(0, 1, 6000), 0.5, "iomin")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50e6, f"{peak / 1e6:.0f} MB"  # the (n, n, 2) corner arrays alone would be 576 MB


def test_filter_detections_applies_threshold_nms_tag_limit_and_top_k():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.05], [0.3, 0.6]])
    det = Detections(np.array([BIG, SMALL_INSIDE, [40, 40, 50, 50], [40, 0, 50, 10]], dtype=float), probs, (64, 64))
    kept = filter_detections(det, score_threshold=0.25, nms_metric="iomin", nms_threshold=0.5)
    assert kept.scores.tolist() == [0.9, 0.6]
    kept = filter_detections(det, score_threshold=0.25, nms_metric="iou", nms_threshold=0.5, max_detections=2)
    assert kept.scores.tolist() == [0.9, 0.8]
    kept = filter_detections(det, score_threshold=0.0, max_tags_per_pixel=1)
    assert kept.scores.tolist() == [0.9, 0.1, 0.6]


def test_filter_detections_suppresses_within_class_groups():
    """Two classes shown as one label (class_groups) suppress each other; by default each class only its own."""
    det = Detections(np.array([BIG, BIG, [40, 40, 50, 50]], dtype=float), [[0.9, 0.1, 0.0], [0.2, 0.7, 0.0], [0.0, 0.0, 0.5]], (64, 64))
    assert filter_detections(det, nms_threshold=0.5).scores.tolist() == [0.9, 0.7, 0.5]
    assert filter_detections(det, nms_threshold=0.5, class_groups=np.array([0, 0, 1])).scores.tolist() == [0.9, 0.5]
    with pytest.raises(ValueError, match=r"class_groups must have shape \(3,\)"):
        filter_detections(det, nms_threshold=0.5, class_groups=np.array([0, 0]))


def test_paired_overlap_is_the_diagonal_of_the_matrix_and_clip_keeps_boxes_inside():
    import numpy as np

    from label_studio_ale.boxes import box_iomin, box_iou, clip_boxes, paired_overlap

    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [0, 0, 4, 4]], dtype=float)
    b = np.array([[5, 0, 15, 10], [6, 6, 8, 8], [10, 10, 12, 12]], dtype=float)
    np.testing.assert_allclose(paired_overlap(a, b, "iou"), np.diagonal(box_iou(a, b)))
    np.testing.assert_allclose(paired_overlap(a, b, "iomin"), np.diagonal(box_iomin(a, b)))
    assert clip_boxes(a, (2, 2, 9, 9)).tolist() == [[2, 2, 9, 9], [5, 5, 9, 9], [2, 2, 4, 4]]
