"""Dataset readers: the same two labelled images written as YOLO, COCO and VOC read back identically."""

import json

import numpy as np
import pytest
from PIL import Image

from label_studio_ale.datasets import detect_format, read_coco, read_dataset, read_voc, read_yolo

NAMES = ["bird", "nest"]
# (file, size, [(class, x1, y1, x2, y2)])
IMAGES = [
    ("a.png", (64, 48), [(0, 4.0, 6.0, 20.0, 30.0), (1, 30.0, 10.0, 60.0, 40.0)]),
    ("b.png", (32, 32), []),
    ("c.png", (40, 50), [(1, 0.0, 0.0, 10.0, 25.0)]),
]


def _images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, size, _ in IMAGES:
        Image.new("RGB", size, (90, 120, 60)).save(folder / name)


def write_yolo(root, with_yaml=True):
    _images(root / "images" / "train")
    (root / "labels" / "train").mkdir(parents=True)
    for name, (w, h), boxes in IMAGES:
        lines = [f"{c} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}" for c, x1, y1, x2, y2 in boxes]
        (root / "labels" / "train" / name.replace(".png", ".txt")).write_text("\n".join(lines))
    if with_yaml:
        (root / "data.yaml").write_text("names:\n  0: bird\n  1: nest\n")
    else:  # Label Studio's YOLO export
        (root / "classes.txt").write_text("bird\nnest\n")
    return root


def write_coco(root, crowd=False):
    _images(root / "images")
    data = {"images": [], "annotations": [], "categories": [{"id": 7, "name": "bird"}, {"id": 9, "name": "nest"}]}
    for image_id, (name, (w, h), boxes) in enumerate(IMAGES, start=1):
        data["images"].append({"id": image_id, "file_name": f"images/{name}", "width": w, "height": h})
        for c, x1, y1, x2, y2 in boxes:
            data["annotations"].append(
                {"id": len(data["annotations"]) + 1, "image_id": image_id, "category_id": (7, 9)[c], "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": int(crowd)}
            )
    (root / "result.json").write_text(json.dumps(data))
    return root / "result.json"


def write_voc(root, difficult=False):
    _images(root / "JPEGImages")
    (root / "Annotations").mkdir()
    for name, (w, h), boxes in IMAGES:
        objects = "".join(
            f"<object><name>{NAMES[c]}</name><difficult>{int(difficult)}</difficult>"
            f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for c, x1, y1, x2, y2 in boxes
        )
        xml = f"<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height></size>{objects}</annotation>"
        (root / "Annotations" / name.replace(".png", ".xml")).write_text(xml)
    return root


def _check(names, items):
    assert names == NAMES
    by_name = {item.path.name: item for item in items}
    assert sorted(by_name) == [name for name, _, _ in IMAGES]
    for name, size, boxes in IMAGES:
        truth = by_name[name].truth
        assert truth.image_size == size
        expected = np.array([b[1:] for b in boxes], dtype=float).reshape(-1, 4)
        order = np.lexsort((truth.xyxy[:, 0], truth.labels))
        np.testing.assert_allclose(truth.xyxy[order], expected, atol=1e-4)
        assert truth.labels[order].tolist() == [b[0] for b in boxes]


@pytest.mark.parametrize("with_yaml", [True, False], ids=["data.yaml", "classes.txt"])
def test_yolo_reads_the_ultralytics_and_label_studio_layouts(tmp_path, with_yaml):
    root = write_yolo(tmp_path / "yolo", with_yaml)
    assert detect_format(root) == "yolo"
    _check(*read_dataset(root))
    _check(*read_yolo(root, "train"))


def test_coco_reads_categories_in_id_order_and_file_names_relative_to_the_json(tmp_path):
    path = write_coco(tmp_path / "coco")
    assert detect_format(path) == "coco" and detect_format(path.parent) == "coco"
    _check(*read_dataset(path))
    _check(*read_dataset(path.parent))


def test_coco_crowd_boxes_are_difficult_and_voc_difficult_flags_are_kept(tmp_path):
    (tmp_path / "coco").mkdir()
    _, coco_items = read_coco(write_coco(tmp_path / "coco", crowd=True))
    (tmp_path / "voc").mkdir()
    _, voc_items = read_voc(write_voc(tmp_path / "voc", difficult=True))
    for items in (coco_items, voc_items):
        flags = np.concatenate([item.truth.difficult for item in items])
        assert flags.size == 3 and flags.all()


def test_voc_reads_annotations_and_jpegimages(tmp_path):
    root = tmp_path / "voc"
    root.mkdir()
    write_voc(root)
    assert detect_format(root) == "voc"
    _check(*read_dataset(root))


def test_voc_keeps_a_given_class_order_and_rejects_unlisted_names(tmp_path):
    root = tmp_path / "voc"
    root.mkdir()
    write_voc(root)
    names, items = read_voc(root, ["nest", "bird", "egg"])
    assert names == ["nest", "bird", "egg"]
    assert sorted(items[0].truth.labels.tolist()) == [0, 1]
    with pytest.raises(ValueError, match="nest are not among the classes bird"):
        read_voc(root, ["bird"])


def test_the_three_formats_agree_on_the_same_dataset(tmp_path):
    yolo = read_dataset(write_yolo(tmp_path / "yolo"))
    coco = read_dataset(write_coco(tmp_path / "coco"))
    (tmp_path / "voc").mkdir()
    voc = read_dataset(write_voc(tmp_path / "voc"))
    for names, items in (yolo, coco, voc):
        _check(names, items)
        assert sum(len(item.truth.labels) for item in items) == 3


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["annotations"][0].update(category_id=99), "category_id 99, which is not in 'categories'"),
        (lambda d: d["annotations"][0].update(image_id=42), "image_id 42, which is not in 'images'"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), r"bbox must be \[x, y, width, height\]"),
        (lambda d: d["images"][0].update(file_name="images/missing.png"), "images/missing.png not found under"),
        (lambda d: d.pop("categories"), "missing the 'categories' list"),
    ],
)
def test_coco_errors_name_the_annotation_and_the_field(tmp_path, change, message):
    path = write_coco(tmp_path)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        read_coco(path)


def test_coco_that_is_not_json_says_so(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable COCO json"):
        read_coco(path)


@pytest.mark.parametrize(
    "xml, message",
    [
        ("<annotation><size/></annotation>", "no <filename>"),
        ("<annotation><filename>zzz.png</filename></annotation>", "image zzz.png not found"),
        ("<annotation><filename>a.png</filename><object><name>bird</name></object></annotation>", "needs a <name> and a <bndbox>"),
        (
            "<annotation><filename>a.png</filename><object><name>bird</name><bndbox><xmin>9</xmin><ymin>1</ymin>"
            "<xmax>2</xmax><ymax>5</ymax></bndbox></object></annotation>",
            "xmax < xmin",
        ),
        ("<annotation><filename>a.png", "not valid XML"),
    ],
)
def test_voc_errors_name_the_file(tmp_path, xml, message):
    _images(tmp_path / "JPEGImages")
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(xml)
    with pytest.raises(ValueError, match=message):
        read_voc(tmp_path)


def test_yolo_errors_name_the_label_file(tmp_path):
    root = write_yolo(tmp_path / "yolo")
    (root / "labels" / "train" / "a.txt").write_text("5 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ValueError, match=r"a.txt line 1: class index 5 outside 0..1"):
        read_yolo(root)
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5\n")
    with pytest.raises(ValueError, match="expected 5 columns"):
        read_yolo(root)


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("names: [bird, nest\n", r"data.yaml: not valid YAML .*fix the file"),
        ("- bird\n- nest\n", r"data.yaml: expected a mapping with 'names' .*got a YAML list"),
    ],
)
def test_a_broken_data_yaml_is_a_value_error_naming_the_file(tmp_path, yaml_text, message):
    """`ale evaluate` and `ale bench al --data` print a ValueError; a yaml.ParserError or AttributeError was a traceback."""
    root = write_yolo(tmp_path / "yolo")
    (root / "data.yaml").write_text(yaml_text)
    with pytest.raises(ValueError, match=message):
        read_yolo(root / "data.yaml", "train")


def test_a_file_that_is_no_image_is_a_value_error_naming_it(tmp_path):
    root = write_yolo(tmp_path / "yolo")
    (root / "images" / "train" / "d.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match=r"d.jpg: not a readable image .*replace it or remove it"):
        read_yolo(root, "train")


def test_unrecognised_layouts_say_what_is_expected(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the format"):
        read_dataset(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        read_dataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="format 'csv' is unknown"):
        read_dataset(tmp_path, "csv")


def test_split_label_boxes_counts_each_labels_boxes_from_the_label_files(tmp_path):
    from label_studio_ale.datasets import split_label_boxes

    labels = tmp_path / "labels" / "train"
    labels.mkdir(parents=True)
    (labels / "1.txt").write_text("0 0.5 0.5 0.1 0.1\n2 0.2 0.2 0.1 0.1\n\n")
    (labels / "2.txt").write_text("0 0.4 0.4 0.1 0.1\n")
    (labels / "3.txt").write_text("")  # an image with no objects
    data_yaml = tmp_path / "data.yaml"
    assert split_label_boxes(data_yaml, ["bird", "nest", "egg"]) == {"bird": 2, "nest": 0, "egg": 1}
    assert split_label_boxes(data_yaml, ["bird"], split="val") == {"bird": 0}  # no such split: nothing labelled
    with pytest.raises(ValueError, match=r"1.txt: class index 2 outside 0..1"):
        split_label_boxes(data_yaml, ["bird", "nest"])


def test_a_phone_photo_is_read_and_predicted_upright_as_serving_decodes_it(tmp_path):
    """EXIF orientation 6: stored 400x200, shown (by LS, a browser, serving) 200x400; labels refer to the upright image."""
    from label_studio_ale.datasets import predict_items
    from label_studio_ale.media import decode_image

    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val").mkdir(parents=True)
    (tmp_path / "data.yaml").write_text("names: [bird]\n")
    stored = Image.new("RGB", (400, 200))
    stored.paste((255, 0, 0), (0, 0, 100, 200))  # the stored left edge is the top once turned upright
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "images" / "val" / "a.jpg", exif=exif)
    Image.new("I;16", (30, 20), 32768).save(tmp_path / "images" / "val" / "b.png")  # a 16-bit frame: mid-grey, not clipped to white
    (tmp_path / "labels" / "val" / "a.txt").write_text("0 0.5 0.125 0.5 0.25\n")
    _, items = read_yolo(tmp_path, "val")
    assert [i.truth.image_size for i in items] == [(200, 400), (30, 20)]
    np.testing.assert_allclose(items[0].truth.xyxy, [[50, 0, 150, 100]])

    class Echo:
        def predict(self, images):
            return images

    a, b = predict_items(Echo(), items, 8)
    served = decode_image((tmp_path / "images" / "val" / "a.jpg").read_bytes(), 10**8)
    assert a.size == served.size == (200, 400) and a.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(a), np.asarray(served))
    assert a.getpixel((100, 20))[0] > 200, "the red band is on top"
    assert b.mode == "RGB" and b.getpixel((0, 0)) == (127, 127, 127)


def test_an_upright_rgb_image_stays_readable_after_its_file_is_closed(tmp_path):
    from label_studio_ale.media import read_image

    Image.new("RGB", (8, 6), (1, 2, 3)).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.size == (8, 6) and image.getpixel((7, 5)) == (1, 2, 3)


def _coco_variant(tmp_path, change):
    path = write_coco(tmp_path)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["images"][0].pop("file_name"), r"image #0 \(id 1\) needs a 'file_name', got None"),
        (lambda d: d["images"][1].pop("id"), r"image #1 \(images/b.png\) needs an 'id'"),
        (lambda d: d["categories"][1].pop("name"), r"category #1 \(id 9\) needs a 'name'"),
        (lambda d: d["categories"][0].pop("id"), r"category #0 \('bird'\) needs an integer 'id', got None"),
        (lambda d: d["categories"].append({"id": "12", "name": "egg"}), r"category #2 \('egg'\) needs an integer 'id', got '12'"),
        (lambda d: d.update(categories=[], annotations=[]), r"'categories' is empty"),
        (lambda d: d["annotations"][0].update(bbox=["4", "6", "16", "24"]), r"annotation #0 \(id 1\) bbox must be \[x, y, width, height\]"),
        (lambda d: d["annotations"][1].update(bbox=[1, 2, None, 4]), r"annotation #1 \(id 2\) bbox must be .*got \[1, 2, None, 4\]"),
        (lambda d: d["annotations"][0].update(image_id=[1]), r"annotation #0 \(id 1\) refers to image_id \[1\]"),
    ],
)
def test_malformed_coco_items_are_value_errors_naming_the_item_and_the_field(tmp_path, change, message):
    """Each was a KeyError or TypeError traceback from `ale bench al --data`."""
    with pytest.raises(ValueError, match=r"result.json: " + message):
        read_coco(_coco_variant(tmp_path, change))


def test_label_studios_own_json_export_is_refused_with_a_pointer_to_its_coco_export(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps([{"id": 1, "data": {"image": "/data/upload/1/a.png"}, "annotations": []}]))
    with pytest.raises(ValueError, match=r"export.json: a JSON list, not a COCO object .*export the project as COCO"):
        read_dataset(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["images"].append({"id": 1, "file_name": "images/c.png"}), r"images #0 and #3 \(images/c.png\) both have id 1"),
        (lambda d: d["categories"].append({"id": 9, "name": "egg"}), r"categories #1 and #2 both have id 9"),
        (lambda d: d["categories"].append({"id": 11, "name": "bird"}), r"categories #0 and #2 \(id 11\) are both named 'bird'"),
        (lambda d: d["images"].append({"id": 4, "file_name": "images/a.png"}), r"images with ids 1 and 4 are both .*a.png"),
    ],
)
def test_coco_ids_names_and_files_listed_twice_are_refused_naming_both(tmp_path, change, message):
    """Read as before, a second image id took the first's boxes and a second category id or name split a class."""
    with pytest.raises(ValueError, match=message):
        read_coco(_coco_variant(tmp_path, change))


def test_coco_file_names_of_label_studio_exports_are_found_under_the_image_folder(tmp_path):
    """LS's COCO export writes /data/upload/... paths or URLs: they are looked for under --images, not at the root."""
    folder = tmp_path / "photos"
    (folder / "data" / "upload" / "1").mkdir(parents=True)
    Image.new("RGB", (64, 48)).save(folder / "data" / "upload" / "1" / "a.png")
    Image.new("RGB", (64, 48)).save(folder / "b.png")
    (folder / "sub").mkdir()
    Image.new("RGB", (64, 48)).save(folder / "sub" / "c.png")
    names = ["/data/upload/1/a.png", "http://localhost:8080/data/upload/7/b.png", "/data/local-files/?d=sub/c.png"]
    data = {
        "images": [{"id": i, "file_name": name, "width": 64, "height": 48} for i, name in enumerate(names)],
        "annotations": [],
        "categories": [{"id": 0, "name": "bird"}],
    }
    path = tmp_path / "result.json"
    path.write_text(json.dumps(data))
    _, items = read_dataset(path, images=folder)
    assert [i.path for i in items] == [folder / "data/upload/1/a.png", folder / "b.png", folder / "sub/c.png"]
    data["images"].append({"id": 9, "file_name": "/data/upload/1/zzz.png"})
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"image #3 \(id 9\) /data/upload/1/zzz.png not found under {folder}: looked for "
                                         rf"{folder}/data/upload/1/zzz.png, {folder}/zzz.png, /data/upload/1/zzz.png; pass the folder"):  # fmt: skip
        read_dataset(path, images=folder)


def test_boxes_without_area_are_difficult_in_every_format(tmp_path):
    """Training drops them (nothing to learn), so evaluation must not count them as misses."""
    coco = _coco_variant(tmp_path / "coco", lambda d: d["annotations"][0].update(bbox=[4, 6, 0, 24]))
    _, items = read_coco(coco)
    assert items[0].truth.difficult.tolist() == [True, False]
    root = write_yolo(tmp_path / "yolo")
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0 0.2\n1 0.5 0.5 0.1 0.1\n")
    _, items = read_yolo(root, "train")
    assert items[0].truth.difficult.tolist() == [True, False]
    assert not np.concatenate([item.truth.difficult for item in items[1:]]).any()


@pytest.mark.parametrize(
    "line, message",
    [
        ("0 32 16 10 10", r"a.txt line 2: coordinates must be normalised to 0..1 \(class cx cy w h.*pixel coordinates\?"),
        ("0 0.5 0.5 -0.2 0.2", r"a.txt line 2: coordinates must be normalised to 0..1"),
        ("0.7 0.5 0.5 0.2 0.2", r"a.txt line 2: class index 0.7 is not an integer"),
        ("0 0.5 0.5 0.2 0.2 0.9", r"a.txt line 2: expected 5 columns \(class cx cy w h\) or a polygon .*got 6"),
        ("0,0.5,0.5,0.2,0.2", r"a.txt line 2: not numeric .*separate the numbers by spaces"),
        ("0 0.1 0.1 0.5 0.1 0.5 0.5", r"a.txt: mixes box lines .*with polygon lines"),
    ],
)
def test_yolo_label_lines_that_are_not_normalised_boxes_are_refused_naming_the_file_and_line(tmp_path, line, message):
    root = write_yolo(tmp_path / "yolo")
    (root / "labels" / "train" / "a.txt").write_text(f"0 0.5 0.5 0.1 0.1\n{line}\n")
    with pytest.raises(ValueError, match=message):
        read_yolo(root, "train")


def test_yolo_polygon_lines_are_read_as_their_bounding_box_and_rounding_past_one_is_kept(tmp_path):
    root = write_yolo(tmp_path / "yolo")
    (root / "labels" / "train" / "a.txt").write_text("1 0.25 0.5 0.75 0.25 0.5 1.00005\n")  # a segment label of a 64x48 image
    (root / "labels" / "train" / "c.txt").write_text("1.0 0.5 0.5 1.00001 1\n")  # a class written as a float, a width rounded up
    _, items = read_yolo(root, "train")
    np.testing.assert_allclose(items[0].truth.xyxy, [[16, 12, 48, 48.0024]])
    assert items[0].truth.labels.tolist() == [1]
    np.testing.assert_allclose(items[2].truth.xyxy, [[-0.0002, 0, 40.0002, 50]])


def test_data_yaml_names_as_a_dict_must_number_the_classes_without_gaps(tmp_path):
    root = write_yolo(tmp_path / "yolo")
    # keys as strings, in the order a string sort gives: read by their numbers, "10" last
    (root / "data.yaml").write_text("names:\n" + "".join(f"  '{i}': c{i}\n" for i in sorted(range(11), key=str)))
    assert read_yolo(root, "train")[0] == [f"c{i}" for i in range(11)]
    (root / "data.yaml").write_text("names:\n  0: bird\n  2: nest\n")
    with pytest.raises(ValueError, match=r"data.yaml: 'names' keys must be the class indices 0..1, each once, got 0, 2"):
        read_yolo(root, "train")


def test_a_data_yaml_naming_its_image_folders_is_read_as_ultralytics_reads_it(tmp_path):
    """Roboflow's export: train/images, valid/images, a data.yaml with train: ../train/images (read from its own folder)."""
    root = tmp_path / "roboflow"
    for split, name in (("train", "a.png"), ("valid", "b.png")):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir()
        Image.new("RGB", (64, 48)).save(root / split / "images" / name)
        (root / split / "labels" / name.replace(".png", ".txt")).write_text("1 0.5 0.5 0.25 0.5\n")
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnames: [bird, nest]\n")
    names, items = read_dataset(root)
    assert names == NAMES and [i.path.name for i in items] == ["a.png", "b.png"]
    np.testing.assert_allclose(items[0].truth.xyxy, [[24, 12, 40, 36]])
    assert [i.path.name for i in read_yolo(root / "data.yaml", "val")[1]] == ["b.png"]
    (root / "data.yaml").write_text("path: elsewhere\ntrain: train/images\nnames: [bird, nest]\n")
    with pytest.raises(ValueError, match=r"train: train/images is not a folder of images \(looked for .*elsewhere/train/images"):
        read_dataset(root)


def test_a_missing_split_says_which_layout_is_read(tmp_path):
    flat = tmp_path / "flat"
    _images(flat / "images")
    (flat / "classes.txt").write_text("bird\nnest\n")
    with pytest.raises(ValueError, match=r"no images for split 'val': .*holds images without splits.*--split ''"):
        read_yolo(flat, "val")
    assert len(read_yolo(flat, "")[1]) == 3
    with pytest.raises(ValueError, match=r"no images for split 'val': .*holds the splits train$"):
        read_yolo(write_yolo(tmp_path / "yolo"), "val")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "data.yaml").write_text("names: [bird]\n")
    with pytest.raises(ValueError, match=r"expected images/\[<split>/\] and labels/\[<split>/\] beside the data.yaml"):
        read_yolo(bare)
