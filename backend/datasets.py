"""Reading labelled detection datasets from disk: YOLO txt folders, COCO json and Pascal VOC xml.

Every reader returns `(class names, [LabelledImage])`; `truth.labels` index
the class names and `truth.xyxy` is (n, 4) in pixels of the image.

- YOLO (ultralytics / LS "YOLO" export): images/[<split>/]*.png|jpg beside
  labels/[<split>/]<same stem>.txt with normalised `class cx cy w h` lines (a
  polygon line: its bounding box), or the folders data.yaml's train/val name;
  class names from data.yaml (`names`) or classes.txt (one per line).
- COCO: one json with `images`, `annotations` (bbox = x, y, w, h in pixels)
  and `categories`; `file_name` is relative to the image root (the json's
  folder unless given). Crowd boxes count as difficult (neither hit nor miss).
- Pascal VOC: Annotations/*.xml, images in JPEGImages/ (or images/, or beside
  the xml); `difficult` objects are kept as difficult.

A box without area is difficult too: training drops it, so evaluation must not count it a miss.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
from PIL import Image

from .coco_dataset import read_coco
from .evaluation import GroundTruth
from .labelled_images import LabelledImage, image_size, no_area
from .media import read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
FORMATS = ("yolo", "coco", "voc")
YOLO_YAML_NAMES = ("data.yaml", "dataset.yaml")
#: The splits a data.yaml may name image folders for (ultralytics' keys).
YOLO_SPLIT_KEYS = ("train", "val", "test")
#: How far outside 0..1 a normalised YOLO coordinate may lie: the rounding of the tool that wrote it.
YOLO_TOLERANCE = 1e-4


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
    return _class_names(Path(data_yaml), _read_yaml(Path(data_yaml)))


def _read_yaml(data_yaml: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(data_yaml.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        # one line: the parser's message spans several, with a pointer under the column
        raise ValueError(f"{data_yaml}: not valid YAML ({' '.join(str(exc).split())}); fix the file, e.g. `names: [bird, nest]`") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{data_yaml}: expected a mapping with 'names' (e.g. `names: [bird, nest]`), got a YAML {type(data).__name__}"
        )
    return data


def _class_names(data_yaml: Path, data: dict) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict) and names:
        # a label file's class index picks the name: keys must be exactly the indices, "10" after "9" and not after "1"
        keys = [int(k) if isinstance(k, int) or (isinstance(k, str) and k.strip().isdigit()) else None for k in names]
        if sorted(k for k in keys if k is not None) != list(range(len(names))):
            raise ValueError(
                f"{data_yaml}: 'names' keys must be the class indices 0..{len(names) - 1}, each once, got "
                f"{', '.join(repr(k) for k in names)}; number the classes as the label files do, without gaps"
            )
        by_index = dict(zip(keys, names.values()))
        return [str(by_index[i]) for i in range(len(names))]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise ValueError(f"{data_yaml} has no 'names' (a list, or a dict of index: name)")


def read_yolo(path: str | Path, split: str | None = None) -> tuple[list[str], list[LabelledImage]]:
    """A YOLO dataset (its folder or its yaml). `split` None reads every split under images/.

    Without images/ beside it, the image folders its data.yaml names (`train`, `val`, `test`, relative to
    `path`, itself relative to the yaml's folder, as ultralytics reads them) are read, labels/ beside each images/.
    """
    path = Path(path)
    root = path.parent if path.is_file() else path
    yaml_file = path if path.is_file() else next((root / n for n in YOLO_YAML_NAMES if (root / n).is_file()), None)
    data = _read_yaml(yaml_file) if yaml_file is not None else {}
    if yaml_file is not None:
        names = _class_names(yaml_file, data)
    elif (root / "classes.txt").is_file():
        names = [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    else:
        raise ValueError(f"{root} has no data.yaml or classes.txt naming the classes")
    image_dir = root / "images" / split if split else root / "images"
    if image_dir.is_dir():
        pairs = [(p, (root / "labels" / p.relative_to(root / "images")).with_suffix(".txt")) for p in _images_in(image_dir)]
        where = str(image_dir)
    else:
        folders = _listed_folders(yaml_file, data, split) if yaml_file is not None else None
        if folders is None:
            raise ValueError(_no_images_note(root, split, image_dir))
        pairs = [(p, _label_file_of(p)) for folder in folders for p in _images_in(folder)]
        pairs = list(dict((p.resolve(), (p, label)) for p, label in pairs).values())  # train and val may name one folder
        where = ", ".join(str(f) for f in folders)
    items = [LabelledImage(image_path, _yolo_truth(image_path, label_file, len(names))) for image_path, label_file in pairs]
    if not items:
        raise ValueError(f"{where} holds no images")
    return names, items


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _label_file_of(image_path: Path) -> Path:
    """Ultralytics' rule: the last /images/ of the path becomes /labels/, the suffix .txt."""
    return Path(f"{os.sep}labels{os.sep}".join(str(image_path).rsplit(f"{os.sep}images{os.sep}", 1))).with_suffix(".txt")


def _listed_folders(yaml_file: Path, data: dict, split: str | None) -> list[Path] | None:
    """The image folders data.yaml names for `split` (None: every split it names); None when it names none."""
    keys = [split] if split else [k for k in YOLO_SPLIT_KEYS if data.get(k)]
    if not keys or not all(data.get(k) for k in keys):
        return None
    base = Path(str(data.get("path") or "."))
    base = base if base.is_absolute() else yaml_file.parent / base
    folders: list[Path] = []
    for key in keys:
        for value in data[key] if isinstance(data[key], list) else [data[key]]:
            folder = base / str(value)
            if not folder.is_dir() and str(value).startswith("../"):  # Roboflow's export, which ultralytics reads from `path` too
                folder = base / str(value)[3:]
            if not folder.is_dir():
                raise ValueError(f"{yaml_file}: {key}: {value} is not a folder of images (looked for {folder}: relative to "
                                 "`path`, itself relative to the yaml's folder); fix the path")  # fmt: skip
            if folder.resolve() not in (f.resolve() for f in folders):
                folders.append(folder)
    return folders


def _no_images_note(root: Path, split: str | None, image_dir: Path) -> str:
    """Why no images were found, and the layout that is read."""
    problem = f"no images{f' for split {split!r}' if split else ''}: {image_dir} does not exist"
    images = root / "images"
    if split and images.is_dir():
        splits = sorted(p.name for p in images.iterdir() if p.is_dir())
        if splits:
            return f"{problem}; {images} holds the splits {', '.join(splits)}"
        return f"{problem}; {images} holds images without splits: read them with an empty split (`ale evaluate --split ''`)"
    return (
        f"{problem}; expected images/[<split>/] and labels/[<split>/] beside the data.yaml (or classes.txt), or a "
        "data.yaml whose train: / val: name the image folders (labels/ beside each images/)"
    )


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
    width, height = image_size(image_path)
    rows = _yolo_rows(label_file, num_classes) if label_file.exists() else np.zeros((0, 5))
    labels = rows[:, 0].astype(np.int64)
    cx, cy, w, h = rows[:, 1] * width, rows[:, 2] * height, rows[:, 3] * width, rows[:, 4] * height
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return GroundTruth(xyxy, labels, (width, height), no_area(xyxy))


def _yolo_rows(label_file: Path, num_classes: int) -> np.ndarray:
    """(n, 5) `class cx cy w h` rows of a label file; a polygon line (`class x1 y1 x2 y2 x3 y3 ...`) as its bounding box."""
    rows, polygons = [], 0
    for number, line in enumerate(label_file.read_text(encoding="utf-8-sig").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_file} line {number}"
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise ValueError(f"{where}: not numeric `class cx cy w h` ({line.strip()[:80]!r}); separate the numbers by spaces") from None
        if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
            raise ValueError(f"{where}: expected 5 columns (class cx cy w h) or a polygon (class x1 y1 x2 y2 x3 y3 ...), got {len(values)}")
        if not values[0].is_integer():
            raise ValueError(f"{where}: class index {fields[0]} is not an integer (an index into the class names)")
        if not 0 <= values[0] < num_classes:
            raise ValueError(f"{where}: class index {fields[0]} outside 0..{num_classes - 1}")
        if not all(-YOLO_TOLERANCE <= v <= 1 + YOLO_TOLERANCE for v in values[1:]):
            raise ValueError(
                f"{where}: coordinates must be normalised to 0..1 (class cx cy w h, w and h not negative), got "
                f"{line.strip()[:80]!r}: pixel coordinates? divide x and w by the image's width, y and h by its height"
            )
        if len(values) > 5:  # ultralytics' segment labels: the box around the polygon
            xs, ys = values[1::2], values[2::2]
            values = [values[0], (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
            polygons += 1
        rows.append(values)
    if 0 < polygons < len(rows):
        raise ValueError(
            f"{label_file}: mixes box lines (class cx cy w h) with polygon lines (class x1 y1 x2 y2 ...), which ultralytics "
            "reads as polygons throughout: write one kind a file"
        )
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


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
        difficult = np.asarray([d for _, _, d in objects], dtype=bool) | no_area(xyxy)
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
        width, height = image_size(image_path)
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
