"""Sliced inference for images larger than the model's input.

A 6000x4000 drone frame shrunk to a 640 px model input turns a 20 px bird into
two pixels. `SlicedAdapter` wraps any adapter: a large image is cut into
overlapping tiles at native resolution, every tile goes through the adapter in
batches, boxes are moved back into full-image pixels, and the copies of one
object that neighbouring tiles (and one whole-image pass, for objects larger
than a tile) produce are merged. Serving, the pool, ranking and evaluation see
one `Detections` per image, as from any adapter, with every box's own class
vector.

The window grid is the one `sahi.slicing.get_slice_bboxes` computes (fixed
stride, the last window shifted back inside the image). sahi itself is not a
dependency: it requires `opencv-python`, which cannot share an environment with
the `opencv-python-headless` that label-studio-sdk pins (both install `cv2`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .boxes import OVERLAP_METRICS, paired_overlap
from .detections import Detections

#: Tiles overlap by this share of their side: an object smaller than the
#: overlap lies wholly inside at least one tile.
DEFAULT_TILE_OVERLAP = 0.2
#: Images whose longer side is above this many pixels are tiled: drone and
#: 20+ MP frames, and 12 MP phone frames too (4032x3024); a 4000x3000
#: camera-trap frame is not.
DEFAULT_TILE_ABOVE = 4000
#: Copies of one object from different tiles overlap by more than this.
DEFAULT_TILE_MERGE_THRESHOLD = 0.5
DEFAULT_TILE_MERGE_METRIC = "iomin"
#: A box this close (pixels) to a tile edge inside the image was cut by that edge.
CUT_MARGIN = 2.0

@dataclass(frozen=True)
class TileSettings:
    """size: tile side in pixels; overlap: share of `size` shared by neighbours;
    above: longer side (pixels) above which an image is tiled, 0 = never;
    metric/threshold: how copies of one object across tiles are recognised;
    full_pass: also run the whole (downscaled) image, for objects larger than a tile."""

    size: int
    overlap: float = DEFAULT_TILE_OVERLAP
    above: int = DEFAULT_TILE_ABOVE
    metric: str = DEFAULT_TILE_MERGE_METRIC
    threshold: float = DEFAULT_TILE_MERGE_THRESHOLD
    full_pass: bool = True

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"size must be a positive number of pixels, got {self.size}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.above < 0:
            raise ValueError(f"above must be 0 (never tile) or a number of pixels, got {self.above}")
        if self.metric not in OVERLAP_METRICS:
            raise ValueError(f"metric must be one of {sorted(OVERLAP_METRICS)}, got {self.metric!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")

    def applies(self, image_size: tuple[int, int]) -> bool:
        """Whether an image of (width, height) is tiled."""
        return self.above > 0 and max(image_size) > self.above and max(image_size) > self.size

    def key(self) -> str:
        """What the tiling adds to a detection-store key (what the model produced depends on it)."""
        full = "" if self.full_pass else ",nofull"
        return f"tile={self.size}/{self.overlap:g}/{self.above}/{self.metric}{self.threshold:g}{full}"


def tile_windows(width: int, height: int, size: int, overlap: float) -> np.ndarray:
    """(k, 4) int windows x1, y1, x2, y2 covering a width x height image, row by row.

    Windows are `size` square (smaller only where the image is), step
    `size - int(overlap * size)`; the last one in a row or column is shifted
    back so it ends at the image border instead of hanging over it.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if size <= 0 or not 0.0 <= overlap < 1.0:
        raise ValueError(f"size must be positive and overlap in [0, 1), got {size}, {overlap}")
    step = max(1, size - int(overlap * size))

    def starts(length: int) -> list[int]:
        if length <= size:
            return [0]
        found = list(range(0, length - size, step))
        return found + [length - size]

    return np.array([(x, y, min(x + size, width), min(y + size, height)) for y in starts(height) for x in starts(width)], dtype=np.int64).reshape(-1, 4)


def cut_boxes(xyxy: np.ndarray, window: np.ndarray, image_size: tuple[int, int], margin: float = CUT_MARGIN) -> np.ndarray:
    """(n, 4) full-image boxes found in `window` -> (n,) bool: touches an edge of the window that is not the image's."""
    x1, y1, x2, y2 = (float(v) for v in window)
    width, height = image_size
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    cut = np.zeros(len(boxes), dtype=bool)
    if x1 > 0:
        cut |= boxes[:, 0] <= x1 + margin
    if y1 > 0:
        cut |= boxes[:, 1] <= y1 + margin
    if x2 < width:
        cut |= boxes[:, 2] >= x2 - margin
    if y2 < height:
        cut |= boxes[:, 3] >= y2 - margin
    return cut


def merge_mask(
    xyxy: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    sources: np.ndarray,
    cut: np.ndarray,
    metric: str = DEFAULT_TILE_MERGE_METRIC,
    threshold: float = DEFAULT_TILE_MERGE_THRESHOLD,
    cell: float | None = None,
) -> np.ndarray:
    """Which boxes survive merging tiles: (n,) keep-mask.

    Boxes are visited whole ones first (`cut` False), then by descending score;
    a box is dropped when a kept box from another source (tile, or the
    whole-image pass) overlaps it by more than `threshold` and either has the
    same label or one of the two is cut by a tile edge: a fragment's class is
    read from part of an animal, so a whole copy of another class (two model
    classes a project shows as one label, or a plain misreading) is the same
    animal, while two whole boxes of different classes (a bird on its nest)
    are two. Boxes of one source never suppress each other: the model's own
    NMS already decided between them. A survivor keeps its own class vector.

    Only boxes that share a cell of a `cell`-pixel grid (default: one cell)
    are compared: a colony frame yields tens of thousands of boxes, and their
    full n x n overlap matrix would not fit in memory.
    """
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    n = len(xyxy)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    scores, labels, sources, cut = (np.asarray(a).reshape(-1) for a in (scores, labels, sources, cut))
    cut = cut.astype(bool)
    order = np.lexsort((np.arange(n), -scores, cut.astype(np.int8)))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    first, second = _pairs_sharing_a_cell(xyxy, cell)
    same = ((labels[first] == labels[second]) | cut[first] | cut[second]) & (sources[first] != sources[second])
    first, second = first[same], second[same]
    close = paired_overlap(xyxy[first], xyxy[second], metric) > threshold
    first, second = first[close], second[close]
    # Each pair as (earlier, later) in visiting order: the earlier one, if kept, suppresses the later.
    earlier = np.where(rank[first] < rank[second], first, second)
    later = np.where(rank[first] < rank[second], second, first)
    by_earlier = np.argsort(earlier, kind="stable")
    earlier, later = earlier[by_earlier], later[by_earlier]
    starts = np.searchsorted(earlier, np.arange(n + 1))
    suppressed = np.zeros(n, dtype=bool)
    for i in order:
        if suppressed[i]:
            continue
        keep[i] = True
        suppressed[later[starts[i] : starts[i + 1]]] = True
    return keep


def _pairs_sharing_a_cell(xyxy: np.ndarray, cell: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of boxes that touch a common cell of a `cell`-pixel grid, each pair once."""
    n = len(xyxy)
    if cell is None or cell <= 0:
        i, j = np.triu_indices(n, k=1)
        return i, j
    lo = np.floor(xyxy[:, :2] / cell).astype(np.int64)
    hi = np.floor(xyxy[:, 2:] / cell).astype(np.int64)
    boxes, cells = [], []
    columns = int(hi[:, 0].max()) + 2
    for index in range(n):
        xs = np.arange(lo[index, 0], hi[index, 0] + 1)
        ys = np.arange(lo[index, 1], hi[index, 1] + 1)
        ids = (ys[:, None] * columns + xs[None, :]).ravel()
        boxes.append(np.full(len(ids), index))
        cells.append(ids)
    boxes, cells = np.concatenate(boxes), np.concatenate(cells)
    by_cell = np.lexsort((boxes, cells))
    boxes, cells = boxes[by_cell], cells[by_cell]
    bounds = np.flatnonzero(np.diff(cells)) + 1
    firsts, seconds = [], []
    for members in np.split(boxes, bounds):
        if len(members) > 1:
            i, j = np.triu_indices(len(members), k=1)
            firsts.append(members[i])
            seconds.append(members[j])
    if not firsts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pairs = np.unique(np.concatenate(firsts) * n + np.concatenate(seconds))
    return pairs // n, pairs % n


def concatenate(parts: list[Detections], num_classes: int, image_size: tuple[int, int]) -> Detections:
    """Several `Detections` already in pixels of one image -> one.

    The image embedding is the mean of the parts' (tiles and the full pass),
    re-normalised: what the model saw of the whole frame.
    """
    embedding = mean_embedding([p.embedding for p in parts])
    parts = [p for p in parts if len(p)]
    if not parts:
        return Detections.empty(num_classes, image_size).with_embedding(embedding)
    return Detections(
        np.concatenate([p.xyxy for p in parts]),
        np.concatenate([p.class_probs for p in parts]),
        image_size,
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.scores for p in parts]),
        np.concatenate([p.background for p in parts]),
        embedding,
    )


def mean_embedding(embeddings: list[np.ndarray | None]) -> np.ndarray | None:
    """(D,) vectors -> their unit-length mean; None if any part has none (a model gives all or none)."""
    if not embeddings or any(e is None for e in embeddings):
        return None
    mean = np.mean(np.stack(embeddings), axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32)


def shifted(detections: Detections, dx: float, dy: float, image_size: tuple[int, int]) -> Detections:
    """Boxes of a tile whose top-left corner is (dx, dy) -> pixels of the full image."""
    offset = np.array([dx, dy, dx, dy], dtype=np.float64)
    return Detections(
        detections.xyxy + offset, detections.class_probs, image_size, detections.labels, detections.scores, detections.background,
        detections.embedding,
    )


class SlicedAdapter:
    """An adapter that tiles large images (see the module doc); small images pass straight through.

    Everything but `predict` is the wrapped adapter's (classes, version, trained, ...).
    batch_size: tiles per call of the wrapped adapter.
    """

    def __init__(self, inner, tiles: TileSettings, batch_size: int):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.inner = inner
        self.tiles = tiles
        self.batch_size = batch_size

    def __getattr__(self, name):
        # Only reached for attributes this wrapper lacks: classes, version, trained, ...
        return getattr(self.__dict__["inner"], name)

    def predict(self, images: list[Image.Image]) -> list[Detections]:
        results: list[Detections | None] = [None] * len(images)
        small = [i for i, image in enumerate(images) if not self.tiles.applies(image.size)]
        if small:
            for i, found in zip(small, self.inner.predict([images[i] for i in small])):
                results[i] = found
        for i, image in enumerate(images):
            if results[i] is None:
                results[i] = self.predict_tiled(image)
        return results

    def predict_tiled(self, image: Image.Image) -> Detections:
        """One large image -> its merged detections in full-image pixels."""
        size = image.size
        windows = tile_windows(size[0], size[1], self.tiles.size, self.tiles.overlap)
        parts, sources, cut = [], [], []
        for start in range(0, len(windows), self.batch_size):
            batch = windows[start : start + self.batch_size]
            # Crops are copies of tile size: the batch, not the frame, is what is added to memory.
            crops = [image.crop(tuple(int(v) for v in w)) for w in batch]
            for offset, (window, found) in enumerate(zip(batch, self.inner.predict(crops))):
                moved = shifted(found, window[0], window[1], size)
                parts.append(moved)
                sources.append(np.full(len(moved), start + offset))
                cut.append(cut_boxes(moved.xyxy, window, size))
        if self.tiles.full_pass:
            whole = self.inner.predict([image])[0]
            parts.append(whole)
            sources.append(np.full(len(whole), -1))
            cut.append(np.zeros(len(whole), dtype=bool))
        merged = concatenate(parts, len(self.inner.classes), size)
        if not len(merged):
            return merged
        keep = merge_mask(
            merged.xyxy, merged.scores, merged.labels, np.concatenate(sources), np.concatenate(cut),
            self.tiles.metric, self.tiles.threshold, cell=self.tiles.size,
        )
        return merged[keep]


def sliced(adapter, tiles: TileSettings | None, batch_size: int):
    """`adapter` wrapped for tiled inference, or `adapter` itself when `tiles` is None or never applies."""
    if tiles is None or tiles.above == 0:
        return adapter
    return SlicedAdapter(adapter, tiles, batch_size)
