import json

import numpy as np
import pytest

from label_studio_ale.detections import Detections
from label_studio_ale.evaluation import (
    GroundTruth,
    coco_metrics,
    evaluate,
    precision_recall,
    voc07_ap,
    voc12_ap,
    voc_metrics,
)

CLASSES = ["bird", "nest"]


def det(boxes, labels, scores, size=(100, 100), classes=2):
    probs = np.zeros((len(boxes), classes))
    probs[np.arange(len(boxes)), labels] = scores
    return Detections(np.asarray(boxes, dtype=float).reshape(-1, 4), probs, size)


# One image, two birds; detections: hit (0.9), miss (0.8), hit (0.7).
GT = [GroundTruth([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0], (100, 100))]
PRED = [det([[0, 0, 10, 10], [80, 80, 90, 90], [50, 50, 60, 61]], [0, 0, 0], [0.9, 0.8, 0.7])]


def test_precision_recall_by_hand():
    recall, precision, positives = precision_recall(GT, PRED, 0)
    assert positives == 2
    assert recall.tolist() == [0.5, 0.5, 1.0]
    assert precision == pytest.approx([1.0, 0.5, 2 / 3])


def test_voc07_and_voc12_ap_by_hand():
    recall, precision, _ = precision_recall(GT, PRED, 0)
    # 11-point: t = 0..0.5 -> 1.0 (six points), t = 0.6..1.0 -> 2/3 (five points)
    assert voc07_ap(recall, precision) == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)
    # all-point: 0.5 x 1.0 + 0.5 x 2/3
    assert voc12_ap(recall, precision) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_reference_curves():
    # classic textbook curve: recall steps of 0.2 with precision 1, .5, .67, .5, .56
    recall = np.array([0.2, 0.2, 0.4, 0.4, 0.6])
    precision = np.array([1.0, 0.5, 2 / 3, 0.5, 0.6])
    assert voc12_ap(recall, precision) == pytest.approx(0.2 * 1.0 + 0.2 * 2 / 3 + 0.2 * 0.6)
    assert voc07_ap(recall, precision) == pytest.approx((3 * 1.0 + 2 * 2 / 3 + 2 * 0.6) / 11)
    assert voc07_ap(np.zeros(0), np.zeros(0)) == 0.0 and voc12_ap(np.zeros(0), np.zeros(0)) == 0.0


def test_duplicates_wrong_class_and_difficult_boxes():
    gt = [GroundTruth([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0], (100, 100), difficult=[False, True])]
    # a duplicate of the same bird is a false positive; the difficult bird is ignored
    pred = [det([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], [0, 0, 0], [0.9, 0.8, 0.7])]
    recall, precision, positives = precision_recall(gt, pred, 0)
    assert positives == 1 and recall.tolist() == [1.0, 1.0, 1.0] and precision == pytest.approx([1.0, 0.5, 0.5])
    # a box of the other class never matches
    recall, precision, _ = precision_recall(gt, [det([[0, 0, 10, 10]], [1], [0.9])], 0)
    assert recall.size == 0


def test_voc_metrics_skip_classes_without_positives():
    metrics = voc_metrics(GT, PRED, CLASSES)
    assert set(metrics["per_class"]) == {"bird"}
    assert metrics["voc12_map50"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_perfect_predictions_score_one_everywhere():
    gt = [GroundTruth([[0, 0, 10, 10], [40, 40, 70, 60]], [0, 1], (100, 100)), GroundTruth([[5, 5, 50, 50]], [1], (100, 100))]
    pred = [det(g.xyxy, g.labels, [0.9] * len(g.labels)) for g in gt]
    result = evaluate(gt, pred, CLASSES)
    for key in ("map", "map50", "map75", "voc07_map50", "voc12_map50"):
        assert result[key] == pytest.approx(1.0), key
    assert set(result["per_class"]) == {"bird", "nest"}


def test_coco_metrics_equal_pycocotools_reading_files(tmp_path):
    """Our in-memory wrapper against pycocotools used the standard way, on a hand-written COCO file."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    gt, pred, images, annotations, results = [], [], [], [], []
    for image_id in range(1, 7):
        n = int(rng.integers(1, 5))
        xy = rng.uniform(0, 150, size=(n, 2))
        wh = rng.uniform(10, 60, size=(n, 2))
        labels = rng.integers(0, 2, size=n)
        gt.append(GroundTruth(np.hstack([xy, xy + wh]), labels, (256, 256)))
        images.append({"id": image_id, "width": 256, "height": 256})
        for (x, y), (w, h), label in zip(xy, wh, labels):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        # noisy predictions: jittered true boxes, some relabelled, plus false alarms
        jitter = rng.normal(0, 4, size=(n, 4))
        boxes = np.hstack([xy, xy + wh]) + jitter
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        noise_xy = rng.uniform(0, 200, size=(2, 2))
        boxes = np.vstack([boxes, np.hstack([noise_xy, noise_xy + 20])])
        plabels = np.concatenate([np.where(rng.random(n) < 0.8, labels, 1 - labels), rng.integers(0, 2, size=2)])
        scores = rng.uniform(0.05, 1.0, size=n + 2)
        pred.append(det(boxes, plabels, scores, size=(256, 256)))
        for box, label, score in zip(boxes, plabels, pred[-1].scores):
            results.append({"image_id": image_id, "category_id": int(label),
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": float(score)})
    gt_file, results_file = tmp_path / "gt.json", tmp_path / "results.json"
    gt_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                   "categories": [{"id": 0, "name": "bird"}, {"id": 1, "name": "nest"}]}))
    results_file.write_text(json.dumps(results))
    reference_gt = COCO(str(gt_file))
    reference = COCOeval(reference_gt, reference_gt.loadRes(str(results_file)), iouType="bbox")
    reference.evaluate()
    reference.accumulate()
    reference.summarize()

    ours = coco_metrics(gt, pred, CLASSES)
    assert 0.05 < ours["map"] < 0.95  # a non-trivial case
    assert ours["map"] == pytest.approx(reference.stats[0], abs=1e-6)
    assert ours["map50"] == pytest.approx(reference.stats[1], abs=1e-6)
    assert ours["map75"] == pytest.approx(reference.stats[2], abs=1e-6)


def test_a_frame_with_more_than_100_objects_counts_them_all():
    """A colony frame of 150 birds found perfectly: COCO's default cap of 100 detections would score it 0.66."""
    xy = np.stack(np.meshgrid(np.arange(15) * 30.0, np.arange(10) * 30.0), axis=-1).reshape(-1, 2)
    boxes = np.hstack([xy, xy + 20])
    gt = [GroundTruth(boxes, np.zeros(150, dtype=int), (460, 310))]
    pred = [det(boxes, [0] * 150, np.linspace(0.5, 0.99, 150), size=(460, 310))]
    result = evaluate(gt, pred, CLASSES)
    assert result["map"] == pytest.approx(1.0) and result["map50"] == pytest.approx(1.0) and result["voc07_map50"] == pytest.approx(1.0)


def test_a_set_whose_every_box_is_difficult_scores_zero_not_cocos_undefined():
    """COCOeval says -1 where nothing is defined; a report must not show -1 as an mAP."""
    gt = [GroundTruth([[0, 0, 10, 10]], [0], (100, 100), difficult=[True])]
    pred = [det([[0, 0, 10, 10]], [0], [0.9])]
    result = evaluate(gt, pred, CLASSES)
    assert result["boxes"] == 0 and result["images"] == 1
    assert all(result[key] == 0.0 for key in ("map", "map50", "map75", "voc07_map50", "voc12_map50"))
    with pytest.raises(ValueError, match="only difficult"):
        coco_metrics(gt, pred, CLASSES)


def test_coco_needs_ground_truth_and_shapes_are_checked():
    with pytest.raises(ValueError, match="no ground-truth boxes"):
        coco_metrics([GroundTruth(np.zeros((0, 4)), [], (10, 10))], [Detections.empty(2, (10, 10))], CLASSES)
    with pytest.raises(ValueError, match="labels must have shape"):
        GroundTruth([[0, 0, 1, 1]], [0, 1], (10, 10))
    with pytest.raises(ValueError, match="prediction images"):
        precision_recall(GT, [], 0)
