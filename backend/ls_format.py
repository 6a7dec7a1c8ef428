"""Label Studio JSON: the only module that knows LS's label config and result formats.

LS rectangles are percentages of the image: x, y, width, height in [0, 100].
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from .detections import Detections
from .errors import LabelConfigError, LabelMismatchError

RECTANGLE_TAG = "RectangleLabels"
IMAGE_TAG = "Image"
RESULT_TYPE = "rectanglelabels"
#: Largest label config accepted, in UTF-8 bytes. A real one is a few KB; each distinct one is parsed once and kept.
MAX_LABEL_CONFIG_BYTES = 1024 * 1024
#: Label Studio's ids (projects, tasks, annotations) are positive 64-bit database keys.
MAX_LS_ID = 2**63 - 1


def ls_id(value) -> int | None:
    """`value` if it can be a Label Studio id (a whole number 1..MAX_LS_ID, not a bool), else None."""
    return value if type(value) is int and 0 < value <= MAX_LS_ID else None


@dataclass(frozen=True)
class RectangleConfig:
    """The parts of a label config that object detection needs.

    `labels` are the names the SDK reports (a label's `alias`, else its `value`).
    `names` maps each label's own names, exactly as written (its `value` and
    its `alias`), to the label: LS's editor finds a label by either, so a
    result may be stored under both. `aliases` maps a lower-cased model class
    name to the config label it means: a label's own names first, then every
    name in its `predicted_values` attribute.
    """

    from_name: str
    to_name: str
    value_key: str
    labels: tuple[str, ...]
    aliases: dict[str, str]
    names: dict[str, str] = field(default_factory=dict)

    def label_for(self, name) -> str | None:
        """The config label a model class `name` means, or None.

        A label's own name, exactly, wins; then one differing in case; then a
        `predicted_values` entry. So `<Label value="bird"/>` keeps model class
        bird even when `<Label value="Kittiwake" predicted_values="bird"/>` starts from its row.
        """
        name = str(name)
        return self.names.get(name) or self.aliases.get(name.lower())


def parse_label_config(xml: str, *, field: str = "label config") -> RectangleConfig:
    """Parse a label config with an <Image> and a <RectangleLabels> bound to it. `field` names it in errors."""
    if not isinstance(xml, str):
        raise LabelConfigError(f"{field} must be the project's XML label config as a string, got {type(xml).__name__}")
    if not xml.strip():
        raise LabelConfigError(f"{field} is empty: send the project's XML label config")
    # len() first: a string over the limit in characters is over it in bytes, and is not encoded to tell
    if len(xml) > MAX_LABEL_CONFIG_BYTES or len(xml.encode("utf-8", "surrogatepass")) > MAX_LABEL_CONFIG_BYTES:
        raise LabelConfigError(
            f"{field} is over {MAX_LABEL_CONFIG_BYTES} bytes, far more than a label config needs: "
            "send the project's XML label config (Settings > Labeling Interface > Code)"
        )
    return _parse_label_config(xml)


@functools.lru_cache(maxsize=64)
def _parse_label_config(xml: str) -> RectangleConfig:
    # Imported here: the SDK import is slow and most modules never need it.
    from label_studio_sdk.label_interface import LabelInterface
    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # the SDK raises several XML error types
        raise LabelConfigError(f"label config is not valid XML: {exc}") from None
    rectangles = [c for c in interface.controls if c.tag == RECTANGLE_TAG]
    if not rectangles:
        raise LabelConfigError(
            "label config has no <RectangleLabels> tag: object detection needs e.g. "
            '<RectangleLabels name="label" toName="image"><Label value="bird"/></RectangleLabels>'
        )
    control = rectangles[0]
    images = {o.name: o for o in interface.objects if o.tag == IMAGE_TAG}
    targets = [name for name in control.to_name if name in images]
    if not targets:
        raise LabelConfigError(
            f'<RectangleLabels name="{control.name}"> must point at an <Image> tag with toName; '
            f"it points at {control.to_name or 'nothing'}"
        )
    others = [c.name for c in rectangles[1:] if targets[0] in c.to_name]
    if others:
        # the backend predicts, trains on and ranks by one tag's boxes: another tag's objects would be trained as background
        raise LabelConfigError(
            f'label config has {len(others) + 1} <RectangleLabels> tags on <Image name="{targets[0]}"> '
            f'("{control.name}", "{others[0]}"{", ..." if len(others) > 1 else ""}): the backend predicts and trains one; '
            "put every <Label> in a single <RectangleLabels>"
        )
    image = images[targets[0]]
    if not image.value or not image.value.startswith("$"):
        raise LabelConfigError(f'<Image name="{image.name}"> needs value="$<data field>", e.g. value="$image"')
    labels = tuple(control.labels)
    if not labels:
        raise LabelConfigError(f'<RectangleLabels name="{control.name}"> has no <Label> children: add one per class')
    attrs = {label: (tag.attr or {}) for label, tag in control.labels_attrs.items()}
    # A label's own names: the one the SDK reports (alias, else value) and its value, which LS's editor also finds it by.
    names: dict[str, str] = {}
    for label in labels:
        names.setdefault(label, label)
    for label in labels:
        value = attrs.get(label, {}).get("value")
        if value:
            names.setdefault(value, label)
    # Own names before predicted_values, each first come first served: another label's
    # predicted_values never takes a label's own name (setdefault, not assignment).
    aliases: dict[str, str] = {}
    for name, label in names.items():
        aliases.setdefault(name.lower(), label)
    for label in labels:
        for alias in attrs.get(label, {}).get("predicted_values", "").split(","):
            if alias.strip():
                aliases.setdefault(alias.strip().lower(), label)
    return RectangleConfig(control.name, image.name, image.value[1:], labels, aliases, names)


def match_labels(model_classes: list[str] | tuple[str, ...], config: RectangleConfig) -> tuple[str | None, ...]:
    """Map each model class index to its config label (None: not in the config).

    Matching is by a label's own name (its value or alias; exact, then case-insensitive),
    then through a label's `predicted_values` (`RectangleConfig.label_for`).
    Raises LabelMismatchError when no class matches at all.
    """
    mapping = tuple(config.label_for(name) for name in model_classes)
    if not any(mapping):
        shown = ", ".join(map(str, model_classes[:20])) + (" ..." if len(model_classes) > 20 else "")
        raise LabelMismatchError(
            f"none of the model's classes ({shown}) match the labels of "
            f'<RectangleLabels name="{config.from_name}"> ({", ".join(config.labels)}). '
            'Fix the label config: add <Label value="<class>"/> for each class the model predicts, '
            'or map a label to model classes with predicted_values, e.g. '
            f'<Label value="{config.labels[0]}" predicted_values="{model_classes[0] if model_classes else "class"}"/>'
        )
    return mapping


def detections_to_results(
    detections: Detections,
    label_map: tuple[str | None, ...],
    config: RectangleConfig,
) -> list[dict]:
    """Detections -> LS `rectanglelabels` results (percent coordinates, per-region score).

    Boxes whose class has no label in the config are left out.
    """
    if detections.num_classes != len(label_map):
        raise ValueError(f"label_map has {len(label_map)} entries for {detections.num_classes} classes")
    width, height = detections.image_size
    xyxy = detections.xyxy.copy()
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, width)
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, height)
    results = []
    for index, (box, class_id, score) in enumerate(zip(xyxy, detections.labels, detections.scores)):
        label = label_map[class_id]
        if label is None:
            continue
        result = rectangle_result(box, label, (width, height), config.from_name, config.to_name)
        results.append({"id": f"r{index}", **result, "image_rotation": 0, "score": float(score)})
    return results


def rectangle_result(box, label: str, image_size: tuple[int, int], from_name: str, to_name: str) -> dict:
    """One pixel box (x1, y1, x2, y2) -> an LS `rectanglelabels` result in percent (the inverse of rectangle_to_xyxy)."""
    width, height = image_size
    x1, y1, x2, y2 = (float(v) for v in box)
    return {
        "from_name": from_name,
        "to_name": to_name,
        "type": RESULT_TYPE,
        "original_width": width,
        "original_height": height,
        "value": {
            "x": 100.0 * x1 / width,
            "y": 100.0 * y1 / height,
            "width": 100.0 * (x2 - x1) / width,
            "height": 100.0 * (y2 - y1) / height,
            "rotation": 0,
            "rectanglelabels": [label],
        },
    }


def rectangle_to_xyxy(result: dict, image_size: tuple[int, int] | None = None) -> tuple[np.ndarray, str]:
    """One LS rectangle result -> ((4,) xyxy pixels, label).

    LS stores percent of the image it shows, and original_width/height only as
    the size it had then. `image_size` (width, height), the image the boxes are
    wanted on, therefore wins: a task whose image was replaced by a resized
    copy (or annotations imported with another copy's size) still lands its
    boxes on the objects. Without it, the result's original_width/height.
    A rotated rectangle (LS turns it clockwise about its top-left corner) gives
    its axis-aligned bounds, which hold the object: dropped, the object would be
    left in the image as background.
    """
    value = result.get("value") or {}
    try:
        if image_size is not None:
            width, height = float(image_size[0]), float(image_size[1])
        else:
            width, height = float(result["original_width"]), float(result["original_height"])
        if not (width > 0 and height > 0):  # also NaN
            raise ValueError("no image size")
        x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
        label = value["rectanglelabels"][0]
    except (KeyError, IndexError, TypeError, ValueError):
        raise LabelConfigError(
            f"result {result.get('id', '?')} is not a rectangle with x, y, width, height, rectanglelabels "
            "and original_width/original_height"
        ) from None
    try:
        rotation = float(value.get("rotation") or 0.0)
    except (TypeError, ValueError):
        raise LabelConfigError(f"result {result.get('id', '?')} has a rotation that is not a number: {value.get('rotation')!r}") from None
    left, top, w_px, h_px = x * width / 100, y * height / 100, w * width / 100, h * height / 100
    if abs(rotation) % 360 < 1e-6:
        return np.array([left, top, left + w_px, top + h_px]), label
    # turned in pixels, not percent: the two axes of a non-square image have different scales
    theta = np.deg2rad(rotation)
    dx, dy = np.array([0.0, w_px, w_px, 0.0]), np.array([0.0, 0.0, h_px, h_px])
    xs, ys = left + dx * np.cos(theta) - dy * np.sin(theta), top + dx * np.sin(theta) + dy * np.cos(theta)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()]), label


def task_image_url(task: dict, config: RectangleConfig) -> str:
    """The image URL of a task, read from the data field the <Image> tag names."""
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        raise LabelConfigError(f"task {_task_id(task)} has no 'data' object")
    url = data.get(config.value_key)
    if not isinstance(url, str) or not url:
        raise LabelConfigError(
            f"task {_task_id(task)} has no data field '{config.value_key}' "
            f'(named by <Image value="${config.value_key}"> in the label config)'
        )
    return url


def _task_id(task) -> str:
    return str(task.get("id", "?")) if isinstance(task, dict) else "?"
