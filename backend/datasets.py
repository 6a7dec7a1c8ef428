"""Reading labelled detection datasets from disk: YOLO txt folders, COCO json and Pascal VOC xml.

Every reader returns `(class names, [LabelledImage])`; `truth.labels` index
the class names and `truth.xyxy` is (n, 4) in pixels of the image.

- YOLO (ultralytics / LS "YOLO" export): images/[<split>/]*.png|jpg beside
  labels/[<split>/]<same stem>.txt with normalised `class cx cy w h` lines;
  class names from data.yaml (`names`) or classes.txt (one per line).
- COCO: one json with `images`, `annotations` (bbox = x, y, w, h in pixels)
  and `categories`; `file_name` is relative to the image root (the json's
  folder unless given). Crowd boxes count as difficult (neither hit nor miss).
- Pascal VOC: Annotations/*.xml, images in JPEGImages/ (or images/, or beside
  the xml); `difficult` objects are kept as difficult.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .evaluation import GroundTruth
from .media import read_image, upright_size

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
FORMATS = ("yolo", "coco", "voc")
YOLO_YAML_NAMES = ("data.yaml", "dataset.yaml")


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    truth: GroundTruth


def read_dataset(
    path: str | Path,
    format: str | None = None,
    *,
    split: str | None = None,
    images: str | Path | None = None,
    classes: list[str] | None = None,
):
    """Read a dataset in any supported format, detected from its layout unless `format` is given.

    `classes`: the class order a VOC folder (whose files name only the classes they hold) is read with.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"dataset {path} does not exist")
    format = format or detect_format(path)
    if format == "yolo":
        return read_yolo(path, split)
    if format == "coco":
        return read_coco(path if path.is_file() else path / "result.json", images)
    if format == "voc":
        return read_voc(path, classes)
    raise ValueError(f"dataset format {format!r} is unknown; use one of {', '.join(FORMATS)}")


def detect_format(path: Path) -> str:
    if path.is_file():
        if path.suffix == ".json":
            return "coco"
        if path.suffix in (".yaml", ".yml"):
            return "yolo"
    elif (path / "Annotations").is_dir():
        return "voc"
    elif any((path / name).is_file() for name in (*YOLO_YAML_NAMES, "classes.txt")):
        return "yolo"
    elif (path / "result.json").is_file():
        return "coco"
    raise ValueError(
        f"cannot tell the format of {path}: expected a COCO .json, a YOLO data.yaml (or a folder with data.yaml "
        "or classes.txt and images/ + labels/), or a VOC folder with Annotations/; or name the format explicitly"
    )


def read_class_names(data_yaml: str | Path) -> list[str]:
    import yaml

    try:
        data = yaml.safe_load(Path(data_yaml).read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        # one line: the parser's message spans several, with a pointer under the column
        raise ValueError(f"{data_yaml}: not valid YAML ({' '.join(str(exc).split())}); fix the file, e.g. `names: [bird, nest]`") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{data_yaml}: expected a mapping with 'names' (e.g. `names: [bird, nest]`), got a YAML {type(data).__name__}"
        )
    names = data.get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise ValueError(f"{data_yaml} has no 'names' (a list, or a dict of index: name)")


def read_yolo(path: str | Path, split: str | None = None) -> tuple[list[str], list[LabelledImage]]:
    """A YOLO dataset (its folder or its yaml). `split` None reads every split under images/."""
    path = Path(path)
    root = path.parent if path.is_file() else path
    yaml_file = path if path.is_file() else next((root / n for n in YOLO_YAML_NAMES if (root / n).is_file()), None)
    if yaml_file is not None:
        names = read_class_names(yaml_file)
    elif (root / "classes.txt").is_file():
        names = [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    else:
        raise ValueError(f"{root} has no data.yaml or classes.txt naming the classes")
    image_dir = root / "images" / split if split else root / "images"
    if not image_dir.is_dir():
        raise ValueError(f"no images{f' for split {split!r}' if split else ''}: {image_dir} does not exist")
    items = []
    for image_path in sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        relative = image_path.relative_to(root / "images")
        label_file = (root / "labels" / relative).with_suffix(".txt")
        items.append(LabelledImage(image_path, _yolo_truth(image_path, label_file, len(names))))
    if not items:
        raise ValueError(f"{image_dir} holds no images")
    return names, items


def split_size(data_yaml: str | Path, split: str = "train") -> int:
    """Images in one split of a YOLO dataset (beside its data.yaml), counted without opening them."""
    image_dir = Path(data_yaml).parent / "images" / split
    if not image_dir.is_dir():
        raise ValueError(f"no images for split {split!r}: {image_dir} does not exist")
    return sum(1 for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def split_label_boxes(data_yaml: str | Path, classes: list[str], split: str = "train") -> dict[str, int]:
    """{label: boxes} in one split of a YOLO dataset (beside its data.yaml), read from its label files alone."""
    label_dir = Path(data_yaml).parent / "labels" / split
    counts = dict.fromkeys(classes, 0)
    for label_file in label_dir.rglob("*.txt") if label_dir.is_dir() else ():
        for line in label_file.read_text().splitlines():
            if line.strip():
                index = int(line.split()[0])
                if not 0 <= index < len(classes):
                    raise ValueError(f"{label_file}: class index {index} outside 0..{len(classes) - 1}")
                counts[classes[index]] += 1
    return counts


def read_yolo_split(data_yaml: str | Path, split: str = "val") -> tuple[list[str], list[LabelledImage]]:
    """-> (class names, labelled images of `split`). An image without a label file has no objects."""
    return read_yolo(data_yaml, split)


def _yolo_truth(image_path: Path, label_file: Path, num_classes: int) -> GroundTruth:
    width, height = _image_size(image_path)
    rows = np.zeros((0, 5))
    if label_file.exists() and label_file.read_text().strip():
        try:
            rows = np.loadtxt(label_file, ndmin=2)
        except ValueError as exc:
            raise ValueError(f"{label_file}: not numeric `class cx cy w h` rows ({exc})") from None
        if rows.shape[1] != 5:
            raise ValueError(f"{label_file}: expected 5 columns (class cx cy w h), got {rows.shape[1]}")
    labels = rows[:, 0].astype(np.int64)
    if (labels < 0).any() or (labels >= num_classes).any():
        raise ValueError(f"{label_file}: class index outside 0..{num_classes - 1}")
    cx, cy, w, h = rows[:, 1] * width, rows[:, 2] * height, rows[:, 3] * width, rows[:, 4] * height
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return GroundTruth(xyxy, labels, (width, height))


def read_coco(json_path: str | Path, images: str | Path | None = None) -> tuple[list[str], list[LabelledImage]]:
    """A COCO detection json. Class order = ascending category id."""
    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{json_path}: not a readable COCO json ({exc})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{json_path}: missing the '{key}' list of a COCO detection file")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    names = [str(c["name"]) for c in categories]
    index_of = {c["id"]: i for i, c in enumerate(categories)}
    root = Path(images) if images is not None else json_path.parent
    boxes: dict = {image["id"]: ([], [], []) for image in data["images"]}
    for a in data["annotations"]:
        if a.get("image_id") not in boxes:
            raise ValueError(f"{json_path}: annotation {a.get('id')} refers to image_id {a.get('image_id')}, which is not in 'images'")
        if a.get("category_id") not in index_of:
            raise ValueError(f"{json_path}: annotation {a.get('id')} has category_id {a.get('category_id')}, which is not in 'categories'")
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or bbox[2] < 0 or bbox[3] < 0:
            raise ValueError(f"{json_path}: annotation {a.get('id')} bbox must be [x, y, width, height] with width, height >= 0, got {bbox}")
        x, y, w, h = (float(v) for v in bbox)
        xyxy, labels, crowd = boxes[a["image_id"]]
        xyxy.append([x, y, x + w, y + h])
        labels.append(index_of[a["category_id"]])
        crowd.append(bool(a.get("iscrowd", 0)))
    items = []
    for image in data["images"]:
        path = root / str(image["file_name"])
        if not path.is_file():
            raise ValueError(f"{json_path}: image {image['file_name']} not found under {root} (pass the image folder)")
        size = (int(image["width"]), int(image["height"])) if image.get("width") and image.get("height") else _image_size(path)
        xyxy, labels, crowd = boxes[image["id"]]
        items.append(LabelledImage(path, GroundTruth(np.asarray(xyxy).reshape(-1, 4), labels, size, np.asarray(crowd, dtype=bool))))
    if not items:
        raise ValueError(f"{json_path} lists no images")
    return names, items


def read_voc(root: str | Path, classes: list[str] | None = None) -> tuple[list[str], list[LabelledImage]]:
    """A Pascal VOC folder. Class order = `classes`, else the sorted names found."""
    root = Path(root)
    xml_dir = root / "Annotations" if (root / "Annotations").is_dir() else root
    files = sorted(xml_dir.glob("*.xml"))
    if not files:
        raise ValueError(f"{xml_dir} holds no VOC .xml annotation files")
    parsed = [_parse_voc(path, root) for path in files]
    found = sorted({name for _, _, objects in parsed for name, _, _ in objects})
    names = list(classes) if classes else found
    unknown = set(found) - set(names)
    if unknown:
        raise ValueError(f"{root}: objects named {', '.join(sorted(unknown))} are not among the classes {', '.join(names)}")
    items = []
    for image_path, size, objects in parsed:
        xyxy = np.asarray([box for _, box, _ in objects], dtype=np.float64).reshape(-1, 4)
        labels = [names.index(name) for name, _, _ in objects]
        difficult = np.asarray([d for _, _, d in objects], dtype=bool)
        items.append(LabelledImage(image_path, GroundTruth(xyxy, labels, size, difficult)))
    return names, items


def _parse_voc(xml_path: Path, root: Path):
    try:
        tree = ElementTree.parse(xml_path).getroot()
    except ElementTree.ParseError as exc:
        raise ValueError(f"{xml_path}: not valid XML ({exc})") from None
    filename = (tree.findtext("filename") or "").strip()
    if not filename:
        raise ValueError(f"{xml_path}: no <filename>")
    candidates = [root / "JPEGImages" / filename, root / "images" / filename, xml_path.parent / filename, root / filename]
    image_path = next((c for c in candidates if c.is_file()), None)
    if image_path is None:
        raise ValueError(f"{xml_path}: image {filename} not found in JPEGImages/, images/ or beside the xml")
    width, height = (int(float(tree.findtext(f"size/{k}") or 0)) for k in ("width", "height"))
    if width <= 0 or height <= 0:
        width, height = _image_size(image_path)
    objects = []
    for obj in tree.iter("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            raise ValueError(f"{xml_path}: every <object> needs a <name> and a <bndbox>")
        try:
            coords = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise ValueError(f"{xml_path}: object {name!r} needs numeric xmin, ymin, xmax, ymax") from None
        if coords[2] < coords[0] or coords[3] < coords[1]:
            raise ValueError(f"{xml_path}: object {name!r} has xmax < xmin or ymax < ymin: {coords}")
        objects.append((name, coords, (obj.findtext("difficult") or "0").strip() == "1"))
    return image_path, (width, height), objects


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image as shown (EXIF orientation applied): what labels drawn in LS or a browser refer to."""
    try:
        with Image.open(path) as image:
            return upright_size(image)
    except OSError as exc:  # PIL.UnidentifiedImageError is one: a file named .jpg that is no image, or cut short
        raise ValueError(f"{path}: not a readable image ({exc}); replace it or remove it from the dataset") from None


def predict_items(adapter, items: list[LabelledImage], batch_size: int, max_pixels: int | None = None) -> list:
    """Run `adapter` over the images of `items`, `batch_size` at a time. -> one Detections per item.

    max_pixels: a batch closes early once its decoded images reach this many pixels (large frames).
    """
    predictions = []
    images: list[Image.Image] = []
    pixels = 0
    for item in items:
        # decoded as serving decodes a task's image (EXIF orientation, 16-bit scaling): boxes land where the labels are
        images.append(read_image(item.path))
        pixels += images[-1].width * images[-1].height
        if len(images) >= batch_size or (max_pixels is not None and pixels >= max_pixels):
            predictions.extend(adapter.predict(images))
            images, pixels = [], 0
    if images:
        predictions.extend(adapter.predict(images))
    return predictions
