import numpy as np

from label_studio_ale.detection_store import DetectionStore, StoredDetections
from label_studio_ale.detections import Detections


def test_round_trip_by_project_version_and_task(tmp_path):
    store = DetectionStore(tmp_path / "d.sqlite")
    det = Detections([[1, 2, 30, 40], [5, 5, 9, 9]], [[0.25, 0.5], [0.75, 0.125]], (64, 48))
    store.put_many(
        1,
        "v1",
        [
            StoredDetections(10, det, 2**64 - 1, None),
            StoredDetections(11, Detections.empty(2, (8, 8)), 2**63, None),
            StoredDetections(12, None, None, "image is corrupt"),
        ],
    )
    store.put_many(2, "v1", [StoredDetections(10, Detections.empty(2, (8, 8)), 5, None)])
    got = store.get_many(1, "v1")
    assert set(got) == {10, 11, 12}
    assert np.allclose(got[10].detections.xyxy, det.xyxy) and np.allclose(got[10].detections.class_probs, det.class_probs)
    assert got[10].detections.image_size == (64, 48) and got[10].image_hash == 2**64 - 1
    assert len(got[11].detections) == 0 and got[11].detections.num_classes == 2 and got[11].image_hash == 2**63
    assert got[12].detections is None and got[12].error == "image is corrupt"
    assert set(store.get_many(1, "v1", [11, 99])) == {11}
    assert store.get_many(1, "v2") == {}
    assert store.delete_version(1, "v1") == 3 and store.get_many(1, "v1") == {}
    assert set(store.get_many(2, "v1")) == {10}
