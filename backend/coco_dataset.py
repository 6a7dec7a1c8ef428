"""COCO json datasets: `images`, `annotations` (bbox = x, y, w, h in pixels) and `categories`, checked item by item.

`file_name` is relative to the image root (the json's folder unless given); Label Studio's COCO export names
`/data/upload/...` paths or URLs, looked for under the root. Crowd boxes count as difficult (neither hit nor miss).
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from .evaluation import GroundTruth
from .labelled_images import LabelledImage, image_size


def read_coco(json_path: str | Path, images: str | Path | None = None) -> tuple[list[str], list[LabelledImage]]:
    """A COCO detection json. Class order = ascending category id.

    Checked whole before anything is used: an error names the json, the item (#position and id) and the field.
    """
    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{json_path}: not a readable COCO json ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{json_path}: a JSON {type(data).__name__}, not a COCO object with 'images', 'annotations' and 'categories' "
            "(Label Studio's own JSON export lists tasks: export the project as COCO instead)"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{json_path}: missing the '{key}' list of a COCO detection file")
    names, index_of = _coco_categories(json_path, data["categories"])
    root = Path(images) if images is not None else json_path.parent
    files = _coco_images(json_path, data["images"], root)
    boxes: dict = {image_id: ([], [], []) for image_id in files}
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            raise ValueError(f"{json_path}: annotation #{i} is not an object: {str(a)[:80]}")
        what = f"annotation #{i} (id {a.get('id')})"
        if not _is_id(a.get("image_id")) or a["image_id"] not in boxes:
            raise ValueError(f"{json_path}: {what} refers to image_id {a.get('image_id')!r}, which is not in 'images'")
        if not _is_id(a.get("category_id")) or a["category_id"] not in index_of:
            raise ValueError(f"{json_path}: {what} has category_id {a.get('category_id')!r}, which is not in 'categories'")
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_is_number, bbox)) or bbox[2] < 0 or bbox[3] < 0:
            raise ValueError(f"{json_path}: {what} bbox must be [x, y, width, height], numbers of pixels with width, height >= 0, got {bbox}")
        x, y, w, h = (float(v) for v in bbox)
        xyxy, labels, ignored = boxes[a["image_id"]]
        xyxy.append([x, y, x + w, y + h])
        labels.append(index_of[a["category_id"]])
        ignored.append(bool(a.get("iscrowd", 0)) or w == 0 or h == 0)  # a box without area: as `no_area`
    items = []
    for image_id, (path, size) in files.items():
        xyxy, labels, ignored = boxes[image_id]
        items.append(LabelledImage(path, GroundTruth(np.asarray(xyxy).reshape(-1, 4), labels, size, np.asarray(ignored, dtype=bool))))
    if not items:
        raise ValueError(f"{json_path} lists no images")
    return names, items


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _coco_categories(json_path: Path, categories: list) -> tuple[list[str], dict]:
    """-> (class names in ascending id order, {category id: class index}); ids and names each once."""
    if not categories:
        raise ValueError(f"{json_path}: 'categories' is empty: list each class, e.g. {{\"id\": 1, \"name\": \"bird\"}}")
    with_id: dict = {}
    named: dict = {}
    for i, c in enumerate(categories):
        cid, name = (c.get("id"), c.get("name")) if isinstance(c, dict) else (None, None)
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise ValueError(f"{json_path}: category #{i} ({name!r}) needs an integer 'id', got {cid!r}")
        if not _is_id(name) or not str(name).strip():
            raise ValueError(f"{json_path}: category #{i} (id {cid}) needs a 'name', got {name!r}")
        if cid in with_id:  # an annotation's category_id would not say which class it is
            raise ValueError(f"{json_path}: categories #{with_id[cid]} and #{i} both have id {cid}: give each category its own id")
        if str(name) in named:  # two classes of one name: a model could not tell them apart in LS
            raise ValueError(f"{json_path}: categories #{named[str(name)]} and #{i} (id {cid}) are both named {str(name)!r}: merge them")
        with_id[cid], named[str(name)] = i, i
    ordered = sorted(categories, key=lambda c: c["id"])
    return [str(c["name"]) for c in ordered], {c["id"]: i for i, c in enumerate(ordered)}


def _coco_images(json_path: Path, images: list, root: Path) -> dict:
    """{image id: (file, (width, height))} in the json's order; ids and files each once."""
    files: dict = {}
    position: dict = {}  # image id -> its # in the list
    owner: dict = {}  # resolved file -> the id that lists it
    for i, image in enumerate(images):
        image_id, file_name = (image.get("id"), image.get("file_name")) if isinstance(image, dict) else (None, None)
        if not _is_id(image_id):
            raise ValueError(f"{json_path}: image #{i} ({file_name}) needs an 'id' (what its annotations' image_id names), got {image_id!r}")
        if not isinstance(file_name, str) or not file_name.strip():
            raise ValueError(f"{json_path}: image #{i} (id {image_id}) needs a 'file_name', got {file_name!r}")
        if image_id in files:  # their annotations could not be told apart
            raise ValueError(f"{json_path}: images #{position[image_id]} and #{i} ({file_name}) both have id {image_id!r}: give each its own id")
        path = _coco_image_file(json_path, root, f"image #{i} (id {image_id})", file_name)
        if path.resolve() in owner:
            raise ValueError(f"{json_path}: images with ids {owner[path.resolve()]!r} and {image_id!r} are both {path}: list each image once")
        size = _coco_size(image) if image.get("width") and image.get("height") else image_size(path)
        if size is None:
            raise ValueError(f"{json_path}: image #{i} (id {image_id}) width and height must be pixels, got {image['width']!r}, {image['height']!r}")
        files[image_id], position[image_id], owner[path.resolve()] = (path, size), i, image_id
    return files


def _coco_size(image: dict) -> tuple[int, int] | None:
    try:
        size = (int(image["width"]), int(image["height"]))
    except (TypeError, ValueError):
        return None
    return size if min(size) > 0 else None


def _coco_image_file(json_path: Path, root: Path, what: str, file_name: str) -> Path:
    """The file a COCO file_name names under `root` (see `_coco_candidates`); the error lists where it was looked for."""
    tried = _coco_candidates(root, file_name)
    found = next((candidate for candidate in tried if candidate.is_file()), None)
    if found is not None:
        return found
    raise ValueError(
        f"{json_path}: {what} {file_name} not found under {root}: looked for {', '.join(str(t) for t in tried)}; "
        "pass the folder the images are in (--images)"
    )


def _coco_candidates(root: Path, file_name: str) -> list[Path]:
    """Where a file_name may be: relative to `root`, without a leading / or a URL's host (Label Studio's COCO export
    writes /data/upload/1/a.jpg, or a URL; a local-files URL's ?d= path), the bare file name in `root`, an absolute path."""
    url = urlsplit(file_name)
    paths = [unquote(d) for d in parse_qs(url.query).get("d", [])] if "/data/local-files" in url.path else []
    paths = paths or [unquote(url.path) if url.scheme in ("http", "https") else file_name]
    candidates = [root / p.lstrip("/") for p in paths] + [root / PurePosixPath(p).name for p in paths]
    return list(dict.fromkeys(candidates + ([Path(file_name)] if Path(file_name).is_absolute() else [])))
