"""Training on large images: an annotated frame becomes tiles at native resolution.

Sliced inference shows the model tiles of a large frame at full resolution
(`tiling.SlicedAdapter`), so the model must learn from the same tiles: a 20 px
bird stays 20 px. Every tile with a box is kept; tiles without any box are
kept up to `empty_share` of those (background the model must learn to leave
alone, without drowning the objects); the whole frame, downscaled to the
model input, is kept too, for the objects larger than a tile that the
whole-image pass finds. A box cut by a tile edge is clipped to the tile and
kept only while `min_visible` of its area is inside: a sliver of a bird is not
a bird.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .boxes import box_area, clip_boxes
from .media import use_own_pixel_limit
from .settings import Settings
from .tiling import TileSettings, tile_windows


@dataclass(frozen=True)
class TrainingTiles:
    """tiles: the inference tiling; min_visible: share of a cut box's area that keeps it;
    empty_share: empty tiles kept per tile with boxes; full_size: the whole frame's longer side."""

    tiles: TileSettings
    min_visible: float
    empty_share: float
    full_size: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "TrainingTiles | None":
        tiles = settings.tiles()
        if tiles is None:
            return None
        return cls(tiles, settings.tile_min_visible, settings.tile_empty_share, settings.image_size)


def yolo_lines(xyxy: np.ndarray, labels: np.ndarray, width: int, height: int) -> list[str]:
    """(n, 4) pixel boxes inside a width x height image -> YOLO label lines (class cx cy w h, normalised)."""
    lines = []
    for (x1, y1, x2, y2), label in zip(xyxy, labels):
        cx, cy, w, h = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{int(label)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


def boxes_in_window(xyxy: np.ndarray, labels: np.ndarray, window, min_visible: float) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to `window` (x1, y1, x2, y2), in its pixels, keeping those with `min_visible` of their area inside."""
    x1, y1, _, _ = (float(v) for v in window)
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    clipped = clip_boxes(xyxy, window)
    area, inside = box_area(xyxy), box_area(clipped)
    visible = np.divide(inside, area, out=np.zeros_like(inside), where=area > 0)
    keep = (inside > 0) & (visible >= min_visible)
    return clipped[keep] - np.array([x1, y1, x1, y1]), np.asarray(labels)[keep]


def write_tiles(image_path: Path, xyxy: np.ndarray, labels: np.ndarray, images_dir: Path, labels_dir: Path, stem: str, tiling: TrainingTiles) -> dict:
    """Cut one annotated frame into training tiles under `images_dir`/`labels_dir`. -> {"tiles", "empty_tiles", "boxes"}.

    xyxy: (n, 4) boxes in pixels of the frame, already clipped to it; labels: (n,) class indices.
    """
    counts = {"tiles": 0, "empty_tiles": 0, "boxes": 0}
    use_own_pixel_limit()  # a cached frame, checked against MAX_IMAGE_PIXELS when it was fetched
    with Image.open(image_path) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    windows = tile_windows(width, height, tiling.tiles.size, tiling.tiles.overlap)
    with_boxes, empty = [], []
    for k, window in enumerate(windows):
        boxes, classes = boxes_in_window(xyxy, labels, window, tiling.min_visible)
        (with_boxes if len(boxes) else empty).append((k, window, boxes, classes))
    # Evenly spread over the frame, so the kept background is not all from one corner.
    wanted = min(len(empty), math.ceil(tiling.empty_share * max(1, len(with_boxes)))) if tiling.empty_share > 0 else 0
    kept_empty = [empty[i] for i in np.linspace(0, len(empty) - 1, wanted).round().astype(int)] if wanted else []
    for k, window, boxes, classes in with_boxes + kept_empty:
        tile = image.crop(tuple(int(v) for v in window))
        tile.save(images_dir / f"{stem}_t{k}.png", compress_level=1)
        lines = yolo_lines(boxes, classes, tile.width, tile.height)
        (labels_dir / f"{stem}_t{k}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        counts["tiles"] += 1
        counts["empty_tiles"] += 0 if len(boxes) else 1
        counts["boxes"] += len(lines)
    # The whole frame at the model input, for the whole-image pass: box coordinates are normalised, so unchanged.
    scale = tiling.full_size / max(width, height)
    whole = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR)
    whole.save(images_dir / f"{stem}.png", compress_level=1)
    lines = yolo_lines(xyxy, labels, width, height)
    (labels_dir / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    return counts
