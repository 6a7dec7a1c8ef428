"""Generated detection scenes: images with known boxes, for demos, tests and benchmarks.

Nothing is downloaded: every scene is drawn from a seed, so the same seed always
gives the same pixels and the same ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

#: Default class names, in class-index order.
DEFAULT_CLASSES = ("bird", "nest", "egg")

# One fill colour per class index; shapes differ too, so colour alone is not the cue.
_COLOURS = ((220, 60, 40), (40, 90, 200), (240, 230, 120), (60, 180, 80), (170, 60, 200))


@dataclass(frozen=True)
class Scene:
    """One generated image and its ground truth.

    `xyxy` is (n, 4) float pixels, `labels` (n,) int indices into the class names.
    """

    image: Image.Image
    xyxy: np.ndarray
    labels: np.ndarray


def make_scene(
    seed: int,
    *,
    size: tuple[int, int] = (128, 128),
    num_classes: int = 2,
    max_objects: int = 3,
    min_side: int = 18,
    max_side: int = 40,
    site: int | None = None,
) -> Scene:
    """Draw a noisy background with 1..max_objects non-overlapping shapes.

    Class 0 is an ellipse, 1 a rectangle, 2 a triangle, further classes repeat
    the shapes with other colours. With `site` (0..3), the background carries
    that site's light gradient (from the left, right, top or bottom), as the
    frames of one camera trap or transect share their scenery.
    """
    if num_classes < 1 or num_classes > len(_COLOURS):
        raise ValueError(f"num_classes must be in 1..{len(_COLOURS)}, got {num_classes}")
    width, height = size
    if min(width, height) < 2 * max_side:
        raise ValueError(f"size {size} is too small for objects up to {max_side}px; use at least {2 * max_side}px")
    rng = np.random.default_rng(seed)
    base = rng.integers(90, 150, size=3)
    noise = rng.normal(0, 12, size=(height, width, 3))
    if site is not None:
        if site not in range(len(_SITE_GRADIENTS)):
            raise ValueError(f"site must be in 0..{len(_SITE_GRADIENTS) - 1}, got {site}")
        axis, flip = _SITE_GRADIENTS[site]
        ramp = np.linspace(-SITE_CONTRAST, SITE_CONTRAST, width if axis == 1 else height)[:: -1 if flip else 1]
        noise = noise + (ramp[None, :, None] if axis == 1 else ramp[:, None, None])
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    count = int(rng.integers(1, max_objects + 1))
    return _place_shapes(image, rng, count, count * 10, (min_side, max_side), num_classes)


def _place_shapes(image: Image.Image, rng, count: int, attempts: int, sides: tuple[int, int], num_classes: int, gap: int = 0) -> Scene:
    """Draw up to `count` shapes at random places `gap` pixels apart or more (rejection sampling, `attempts` tries)."""
    width, height = image.size
    draw = ImageDraw.Draw(image)
    boxes: list[list[float]] = []
    labels: list[int] = []
    for _ in range(attempts):
        if len(boxes) == count:
            break
        w, h = (int(v) for v in rng.integers(sides[0], sides[1] + 1, size=2))
        x1 = int(rng.integers(0, width - w))
        y1 = int(rng.integers(0, height - h))
        box = [x1, y1, x1 + w, y1 + h]
        if any(overlaps([x1 - gap, y1 - gap, x1 + w + gap, y1 + h + gap], other) for other in boxes):
            continue
        label = int(rng.integers(0, num_classes))
        _draw_shape(draw, box, label)
        boxes.append([float(v) for v in box])
        labels.append(label)
    return Scene(image=image, xyxy=np.asarray(boxes, dtype=np.float64).reshape(-1, 4), labels=np.asarray(labels, dtype=np.int64))


def make_large_scene(
    seed: int,
    *,
    size: tuple[int, int] = (6000, 4000),
    objects: int = 48,
    min_side: int = 16,
    max_side: int = 32,
    num_classes: int = 1,
) -> Scene:
    """A drone-like frame: `make_scene`'s background over a large area, with `objects` small shapes spread over it.

    The noise is drawn in bands of rows, so a 45 MP frame needs its own
    pixels in memory (3 bytes each), not eight times as many.
    """
    if num_classes < 1 or num_classes > len(_COLOURS):
        raise ValueError(f"num_classes must be in 1..{len(_COLOURS)}, got {num_classes}")
    width, height = size
    if min(width, height) < 4 * max_side:
        raise ValueError(f"size {size} is too small for objects up to {max_side}px")
    rng = np.random.default_rng(seed)
    base = rng.integers(90, 150, size=3)
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    for top in range(0, height, LARGE_SCENE_BAND):
        rows = min(LARGE_SCENE_BAND, height - top)
        pixels[top : top + rows] = np.clip(base + rng.normal(0, 12, size=(rows, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    del pixels
    # objects keep a few pixels apart
    return _place_shapes(image, rng, objects, objects * 20, (min_side, max_side), num_classes, gap=4)


#: Rows of noise drawn at once for a large scene (float64 while drawn: ~70 MB for 6000 px wide).
LARGE_SCENE_BAND = 512

#: (axis the light changes along, reversed) per site, and the gradient's half-range in grey levels.
_SITE_GRADIENTS = ((1, False), (1, True), (0, False), (0, True))
SITE_CONTRAST = 60


def overlaps(a: list[float], b: list[float]) -> bool:
    """Whether two [x1, y1, x2, y2] boxes share any area (touching edges do not count)."""
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def _draw_shape(draw: ImageDraw.ImageDraw, box: list[float], label: int) -> None:
    colour = _COLOURS[label]
    shape = label % 3
    if shape == 0:
        draw.ellipse(box, fill=colour, outline=(20, 20, 20))
    elif shape == 1:
        draw.rectangle(box, fill=colour, outline=(20, 20, 20))
    else:
        x1, y1, x2, y2 = box
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=colour, outline=(20, 20, 20))


def write_yolo_dataset(root, scenes: list[Scene], class_names: list[str] | tuple[str, ...], split: str = "train"):
    """Write scenes as an ultralytics/YOLO dataset split under `root`.

    Layout: root/images/<split>/NNNN.png and root/labels/<split>/NNNN.txt with
    normalised `class cx cy w h` lines. Returns the list of image paths.
    """
    from pathlib import Path

    root = Path(root)
    image_dir = root / "images" / split
    label_dir = root / "labels" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, scene in enumerate(scenes):
        path = image_dir / f"{index:04d}.png"
        scene.image.save(path)
        width, height = scene.image.size
        lines = []
        for (x1, y1, x2, y2), label in zip(scene.xyxy, scene.labels):
            if label >= len(class_names):
                raise ValueError(f"scene {index} has label {label} but only {len(class_names)} class names")
            cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
            lines.append(f"{label} {cx:.6f} {cy:.6f} {(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
        (label_dir / f"{index:04d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        paths.append(path)
    return paths
