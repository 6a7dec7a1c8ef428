"""Training on large images: tiles at native resolution, cut boxes, empty tiles, whole validation frames."""

import numpy as np
from PIL import Image

from label_studio_ale.tile_dataset import TrainingTiles, boxes_in_window
from label_studio_ale.tiling import TileSettings
from label_studio_ale.training import evaluate_weights
from label_studio_ale.training_set import TrainingSample, VAL_FULL, is_validation, write_training_set

TILING = TrainingTiles(TileSettings(400, 0.2, above=500), min_visible=0.5, empty_share=0.5, full_size=200)


def test_a_cut_box_is_clipped_and_kept_only_while_enough_of_it_is_inside():
    boxes = np.array([[350, 10, 450, 30], [380, 50, 480, 70], [10, 10, 30, 30]], dtype=float)
    inside, labels = boxes_in_window(boxes, np.array([0, 1, 2]), (0, 0, 400, 400), 0.5)
    # the first keeps half its area (kept), the second a fifth (dropped), the third is whole
    assert inside.tolist() == [[350, 10, 400, 30], [10, 10, 30, 30]] and labels.tolist() == [0, 2]
    moved, _ = boxes_in_window(boxes[:1], np.array([0]), (320, 0, 720, 400), 0.5)
    assert moved.tolist() == [[30, 10, 130, 30]], "in pixels of the tile"


def test_a_large_frame_becomes_tiles_with_boxes_some_empty_ones_and_the_whole_frame(tmp_path):
    ids = [i for i in range(1, 60) if not is_validation(i)][:2] + [i for i in range(1, 60) if is_validation(i)][:1]
    samples = []
    for task_id in ids:
        path = tmp_path / f"{task_id}.png"
        Image.new("RGB", (1000, 600), (30, 30, 30)).save(path)
        # one bird in the top-left tile only, one across the seam of the first two columns (x 370..430)
        samples.append(TrainingSample(task_id, path, np.array([[20, 20, 40, 40], [370, 450, 430, 470]], dtype=float), np.array([0, 0])))
    data_yaml, counts = write_training_set(tmp_path / "ds", samples, ["bird"], TILING)
    assert counts["tiled_images"] == 3 and counts["train_images"] == 2 and counts["val_images"] == 1
    train = tmp_path / "ds" / "images" / "train"
    stem = str(ids[0])
    tiles = sorted(p.name for p in train.iterdir() if p.name.startswith(f"{stem}_t"))
    # 6 windows (as in test_tiling): tile 0 holds the first bird, 3 (half of it) and 4 the seam bird;
    # of the 3 empty tiles, 0.5 x 3 tiles with boxes -> 2 are kept
    with_boxes = [f"{stem}_t{k}.png" for k in (0, 3, 4)]
    assert set(with_boxes) <= set(tiles) and len(tiles) == 5
    assert Image.open(train / f"{stem}_t0.png").size == (400, 400), "native resolution"
    rows = np.loadtxt(tmp_path / "ds" / "labels" / "train" / f"{stem}_t4.txt", ndmin=2)
    np.testing.assert_allclose(rows, [[0, 80 / 400, 260 / 400, 60 / 400, 20 / 400]], atol=1e-6)
    whole = Image.open(train / f"{stem}.png")
    assert whole.size == (200, 120), "the whole frame at the model input"
    val_full = tmp_path / "ds" / "images" / VAL_FULL
    assert [Image.open(p).size for p in val_full.iterdir()] == [(1000, 600)], "validation keeps the whole frame"
    assert (tmp_path / "ds" / "labels" / VAL_FULL / f"{ids[2]}.txt").read_text().count("\n") == 2


def test_evaluation_reads_the_whole_validation_frames(tmp_path, monkeypatch):
    import label_studio_ale.training as training

    ids = [i for i in range(1, 60) if not is_validation(i)][:2] + [i for i in range(1, 60) if is_validation(i)][:1]
    samples = []
    for task_id in ids:
        path = tmp_path / f"{task_id}.png"
        Image.new("RGB", (1000, 600)).save(path)
        samples.append(TrainingSample(task_id, path, np.array([[20, 20, 40, 40]], dtype=float), np.array([0])))
    data_yaml, _ = write_training_set(tmp_path / "ds", samples, ["bird"], TILING)
    seen = {}

    def fake_evaluate_items(settings, weights, items, names):
        seen["sizes"] = [item.truth.image_size for item in items]
        return {}

    monkeypatch.setattr(training, "evaluate_items", fake_evaluate_items)
    evaluate_weights(None, "w.pt", data_yaml, ["bird"])
    assert seen["sizes"] == [(1000, 600)]
