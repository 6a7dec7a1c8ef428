"""The built-in benchmark dataset: handwritten digits on photographs, generated offline.

Glyphs are scikit-learn's bundled 8x8 handwritten digits (1,797 scans from
the UCI optical digits set), upscaled and inked onto crops of its two bundled
photographs. Nothing is downloaded; the same seed gives the same pixels.

Scenes have a varied number of objects (most have one or two, a few have up
to `max_objects`, some none), like field images, which is where ALE's
sqrt(N) term matters. The pool and the evaluation set draw their glyphs from
disjoint halves of the scans, so the evaluation measures generalisation to
unseen handwriting.

A pool can also come in bursts, as a camera trap fires several frames per
trigger: `frame` 1, 2, ... of a scene is the same scene a moment later, each
object moved by up to BURST_SHIFT pixels, the light changed by up to
BURST_LIGHT and the sensor noise drawn afresh. That is the look-alike pool
that near-duplicate suppression and diversity are meant for.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..synthetic import Scene, overlaps, write_yolo_dataset

#: Bump when the drawing changes, so cached scenes and base models are rebuilt.
GENERATOR_VERSION = 1
#: Default digits, in class-index order; the last is the benchmark's new class.
DEFAULT_DIGITS = (1, 4, 7, 0)
#: Probability of 0, 1, 2, ... objects in a scene.
OBJECT_COUNT_WEIGHTS = (0.05, 0.35, 0.22, 0.14, 0.1, 0.08, 0.06)
#: The new class is rarer than the others, as a newly recognised species is.
NEW_CLASS_SHARE = 0.18
#: Pixels an object moves, at most, along each axis between a scene's first frame and a later one of its burst.
BURST_SHIFT = 3
#: Brightness change, at most, as a share, between a burst's first frame and a later one.
BURST_LIGHT = 0.06
#: Bump when the drawing of later frames changes, so cached burst pools are rebuilt (frame 0 is GENERATOR_VERSION's).
BURST_VERSION = 1


@dataclass(frozen=True)
class DigitScenes:
    """Scene generator over a fixed set of digits. `half` 0 = pool glyphs, 1 = evaluation glyphs."""

    digits: tuple[int, ...] = DEFAULT_DIGITS
    size: int = 128
    #: glyph sides in pixels; by default 14 % to 28 % of the image side
    min_side: int | None = None
    max_side: int | None = None
    new_class: int | None = len(DEFAULT_DIGITS) - 1

    def __post_init__(self):
        if self.min_side is None:
            object.__setattr__(self, "min_side", max(8, round(self.size * 0.14)))
        if self.max_side is None:
            object.__setattr__(self, "max_side", max(self.min_side, round(self.size * 0.28)))
        if len(set(self.digits)) != len(self.digits) or not all(0 <= d <= 9 for d in self.digits):
            raise ValueError(f"digits must be distinct values in 0..9, got {self.digits}")
        if self.size < 2 * self.max_side:
            raise ValueError(f"size {self.size} is too small for digits up to {self.max_side}px; use at least {2 * self.max_side}")
        if self.new_class is not None and not 0 <= self.new_class < len(self.digits):
            raise ValueError(f"new_class must index digits (0..{len(self.digits) - 1}), got {self.new_class}")

    @property
    def key(self) -> str:
        """Names the generator's output in caches: changes whenever a parameter or the drawing changes."""
        text = f"{GENERATOR_VERSION}:{self!r}:{OBJECT_COUNT_WEIGHTS}:{NEW_CLASS_SHARE}"
        return f"{self.size}px-{hashlib.sha256(text.encode()).hexdigest()[:8]}"

    @property
    def class_names(self) -> list[str]:
        return [f"digit-{d}" for d in self.digits]

    def scene(
        self, seed: int, half: int, *, with_new_class: bool = True, frame: int = 0, new_class_share: float = NEW_CLASS_SHARE
    ) -> Scene:
        """One scene; `half` picks the glyph scans (0: even, 1: odd); `with_new_class` False leaves it out.

        `frame` > 0: a later frame of the scene's burst (see the module docstring);
        the same background, objects, glyphs and ink, moved a little.
        `new_class_share`: the chance that an object is of the new class (the
        others share the rest alike); the layout of the scene does not depend on it.
        """
        if frame < 0:
            raise ValueError(f"frame must be 0 (the scene) or a later frame of its burst, got {frame}")
        check_new_class_share(new_class_share)
        rng = np.random.default_rng(seed)
        # its own generator, so that the scene's draws (and so frame 0) are the same in every frame
        later = np.random.default_rng([seed, frame]) if frame else None
        canvas = _background(rng, self.size)
        count = int(rng.choice(len(OBJECT_COUNT_WEIGHTS), p=OBJECT_COUNT_WEIGHTS))
        share = np.full(len(self.digits), 1.0)
        if self.new_class is not None and len(self.digits) > 1:
            share[:] = (1 - new_class_share) / (len(self.digits) - 1)
            share[self.new_class] = new_class_share if with_new_class else 0.0
        boxes, labels = [], []
        first_frame = []  # the boxes where frame 0 has them: placements are checked there, so every frame draws alike
        for _ in range(count * 20):  # rejection sampling for non-overlapping placements
            if len(boxes) == count:
                break
            side = int(rng.integers(self.min_side, self.max_side + 1))
            x1, y1 = (int(v) for v in rng.integers(0, self.size - side, size=2))
            box = [x1, y1, x1 + side, y1 + side]
            if any(overlaps(box, b) for b in first_frame):
                continue
            label = int(rng.choice(len(self.digits), p=share / share.sum()))
            placed = box if later is None else _moved(box, later, self.size)
            xyxy = _ink_digit(canvas, rng, self.digits[label], half, placed)
            dx, dy = placed[0] - box[0], placed[1] - box[1]
            first_frame.append([xyxy[0] - dx, xyxy[1] - dy, xyxy[2] - dx, xyxy[3] - dy])
            boxes.append(xyxy)
            labels.append(label)
        if later is not None:
            canvas = canvas * later.uniform(1 - BURST_LIGHT, 1 + BURST_LIGHT)
        noise = (rng if later is None else later).normal(0, 4, canvas.shape)
        image = Image.fromarray(np.clip(canvas + noise, 0, 255).astype(np.uint8), "RGB")
        return Scene(image, np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64))

    def write(
        self,
        root: str | Path,
        count: int,
        first_seed: int,
        half: int,
        *,
        with_new_class: bool = True,
        burst: int = 1,
        new_class_share: float = NEW_CLASS_SHARE,
    ) -> Path:
        """Write `count` images as a YOLO dataset folder (data.yaml, images/, labels/). Returns `root`.

        `burst` > 1: the images are bursts of that many frames of a scene, one
        after another (the last burst cut short when `count` is not a multiple).
        """
        if burst < 1:
            raise ValueError(f"burst must be 1 (one frame a scene) or more frames a scene, got {burst}")
        root = Path(root)
        scenes = [
            self.scene(first_seed + i // burst, half, with_new_class=with_new_class, frame=i % burst, new_class_share=new_class_share)
            for i in range(count)
        ]
        write_yolo_dataset(root, scenes, self.class_names, split="all")
        names = "".join(f"  {i}: {name}\n" for i, name in enumerate(self.class_names))
        (root / "data.yaml").write_text(f"path: {root}\nnames:\n{names}")
        return root


def check_new_class_share(share: float) -> None:
    """A share of the new class among a scene's objects must be a probability strictly between 0 and 1."""
    if not isinstance(share, (int, float)) or not 0 < share < 1:
        raise ValueError(
            f"the new class's share of the objects must be between 0 and 1 (e.g. 0.04 for a rare class; default {NEW_CLASS_SHARE}), got {share!r}"
        )


@lru_cache(maxsize=1)
def _glyphs() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) float ink in [0, 1] and (1797,) digit of each scan."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images / 16.0, digits.target


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(np.asarray(image, dtype=np.float64) for image in load_sample_images().images)


def scene_photo(seed: int) -> int:
    """Index of the bundled photograph that scene `seed` is drawn on (whatever its other parameters)."""
    return _draw_photo(np.random.default_rng(seed))


def _draw_photo(rng: np.random.Generator) -> int:
    # a scene's first random draw, so that scene_photo can repeat it
    return int(rng.integers(len(_photos())))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random crop of a bundled photograph, rescaled to size x size, softened in contrast. (size, size, 3)."""
    photo = _photos()[_draw_photo(rng)]
    height, width = photo.shape[:2]
    side = int(rng.integers(size, min(height, width) + 1))
    y, x = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    crop = Image.fromarray(photo[y : y + side, x : x + side].astype(np.uint8)).resize((size, size), Image.BILINEAR)
    pixels = np.asarray(crop, dtype=np.float64)
    return pixels.mean() + (pixels - pixels.mean()) * rng.uniform(0.5, 0.9)


def _moved(box: list[int], rng: np.random.Generator, size: int) -> list[int]:
    """`box` moved by up to BURST_SHIFT pixels along each axis, kept inside a size x size image."""
    x1, y1, x2, y2 = box
    side = x2 - x1
    dx, dy = (int(v) for v in rng.integers(-BURST_SHIFT, BURST_SHIFT + 1, size=2))
    x1, y1 = min(max(x1 + dx, 0), size - side), min(max(y1 + dy, 0), size - side)
    return [x1, y1, x1 + side, y1 + side]


def _ink_digit(canvas: np.ndarray, rng: np.random.Generator, digit: int, half: int, box: list[int]) -> list[float]:
    """Blend one scan of `digit` into `box` of `canvas` (in place); -> its tight box [x1, y1, x2, y2]."""
    ink, targets = _glyphs()
    candidates = np.flatnonzero(targets == digit)
    candidates = candidates[candidates % 2 == half]
    glyph = ink[int(rng.choice(candidates))]
    x1, y1, x2, y2 = box
    side = x2 - x1
    alpha = np.asarray(
        Image.fromarray((glyph * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC), dtype=np.float64
    ) / 255.0
    alpha = np.clip(alpha * 1.3, 0, 1)[..., None]
    patch = canvas[y1:y2, x1:x2]
    # Dark ink on light ground or light ink on dark ground, in a random hue.
    light = patch.mean() < 110
    colour = rng.uniform(190, 255, 3) if light else rng.uniform(0, 70, 3)
    canvas[y1:y2, x1:x2] = patch * (1 - alpha) + colour * alpha
    rows, cols = np.nonzero(alpha[..., 0] > 0.25)
    if rows.size == 0:
        return [float(x1), float(y1), float(x2), float(y2)]
    return [float(x1 + cols.min()), float(y1 + rows.min()), float(x1 + cols.max() + 1), float(y1 + rows.max() + 1)]
