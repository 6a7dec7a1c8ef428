"""From usefulness to Label Studio's queue order.

`select_order` ranks images by usefulness (ties: lower task id first), then
reshapes the head of the queue — the next `batch_size` images annotators will
be served — with the batch extras:

0. diversity (a "+diverse" policy, PPAL's two stages): the batch is chosen
   by k-center over image embeddings among the `diversity_pool` x batch most
   useful images, and the rest of those candidates follow it; given the
   labelled images' embeddings ("+coreset"), k-center counts them as chosen
   already, so the batch also keeps away from what is labelled;
1. near-duplicate suppression: an image whose 64-bit average hash is within
   `duplicate_distance` bits of one already in the batch moves out of it;
2. class balance (the Conservation Metrics pipeline's `ideal_class_balance`): each batch slot goes to
   the first candidate, among the next `balance_window`, whose predicted
   dominant class is furthest below its target share;
3. empty quota: at least this fraction of the batch are images with no
   predictions (the model may be blind to what they contain);
4. exploration: this fraction of the batch is drawn at random from the most
   confident half of the images with predictions outside it (the Conservation
   Metrics pipeline's remedy for confident mistakes); it replaces the least
   useful of the batch, but not the empty images the quota holds there.

Images that are not `usable` (their file could not be fetched or decoded)
take no part in any of this: they follow every usable image, by task id, so no
extra can bring one into the head of the queue.

`ls_scores` maps the final order to LS prediction scores: (position + 1) /
(m + 1), most useful lowest, because LS serves ascending scores. 0 and 1 are
left free, and so is the room between ranks: a later sync places new tasks
between their neighbours without rewriting the others (`queue_update`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .detections import Detections
from .embeddings import k_center

#: Embeddings of images by their indices (None where an image has none); read lazily: only candidates need them.
EmbeddingLookup = Callable[[Sequence[int]], Sequence["np.ndarray | None"]]

DEFAULT_BATCH_SIZE = 50
DEFAULT_BALANCE_WINDOW = 20


@dataclass(frozen=True)
class BatchExtras:
    batch_size: int = DEFAULT_BATCH_SIZE
    exploration: float = 0.0
    empty_quota: float = 0.0
    class_balance: dict[int, float] = field(default_factory=dict)
    duplicate_distance: int = -1  # -1: off; 0: identical hashes only
    balance_window: int = DEFAULT_BALANCE_WINDOW
    seed: int = 0
    diversity_pool: int = 0  # 0: off; else candidates, in batches, that k-center chooses the batch from

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("exploration", "empty_quota"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {getattr(self, name)}")
        if any(v < 0 for v in self.class_balance.values()) or (self.class_balance and sum(self.class_balance.values()) <= 0):
            raise ValueError("class_balance needs non-negative target shares with a positive sum")
        if self.diversity_pool < 0 or self.diversity_pool == 1:
            raise ValueError(f"diversity_pool must be 0 (off) or 2 or more batches, got {self.diversity_pool}")

    @property
    def any(self) -> bool:
        """Whether any extra reshapes the head at all."""
        return bool(
            self.exploration or self.empty_quota or self.class_balance or self.duplicate_distance >= 0 or self.diversity_pool
        )


def rank(usefulness: np.ndarray, task_ids: np.ndarray) -> np.ndarray:
    """(m,), (m,) -> (m,) indices, most useful first; ties broken by ascending task id."""
    usefulness = np.asarray(usefulness, dtype=np.float64)
    task_ids = np.asarray(task_ids)
    if usefulness.shape != task_ids.shape:
        raise ValueError(f"usefulness {usefulness.shape} and task_ids {task_ids.shape} must match")
    return np.lexsort((task_ids, -usefulness))


def ls_scores(order: np.ndarray) -> np.ndarray:
    """(m,) queue order -> (m,) LS score per image index: (position + 1) / (m + 1), strictly inside (0, 1)."""
    order = np.asarray(order)
    m = order.size
    scores = np.zeros(m)
    scores[order] = np.arange(1, m + 1) / (m + 1)
    return scores


#: A spread-out order covers this many images at most; the rest follow by task id.
SPREAD_HEAD = 500


def spread_order(hashes: Sequence[int | None], task_ids: np.ndarray, head: int = SPREAD_HEAD) -> tuple[np.ndarray, np.ndarray]:
    """Farthest-first over 64-bit average hashes: each next image is the one least like those before it.

    For a model that has learnt nothing yet, whose uncertainty is noise: the
    first images served cover the pool's look (sites, light, seasons) instead of
    its import order. (m,) hashes (None: unusable) and task ids -> ((m,) order,
    (m,) spread: bits to the nearest earlier pick, 64 for the first, 0 past
    `head`). Starts at the lowest task id; ties go to the lower task id;
    unusable images come last, by task id. O(head x m).
    """
    task_ids = np.asarray(task_ids)
    m = task_ids.size
    spread = np.zeros(m)
    usable = np.array([h is not None for h in hashes], dtype=bool)
    if len(hashes) != m:
        raise ValueError(f"hashes ({len(hashes)}) and task_ids ({m}) must match")
    candidates = np.flatnonzero(usable)
    candidates = candidates[np.argsort(task_ids[candidates], kind="stable")]
    order: list[int] = []
    if candidates.size:
        values = np.array([int(hashes[i]) for i in candidates], dtype=np.uint64)
        nearest = np.full(candidates.size, 65, dtype=np.int64)  # more than any distance: unpicked
        picked = np.zeros(candidates.size, dtype=bool)
        pick = 0
        for _ in range(min(head, candidates.size)):
            picked[pick] = True
            order.append(int(candidates[pick]))
            spread[candidates[pick]] = min(int(nearest[pick]), 64)
            nearest = np.minimum(nearest, _bit_counts(values ^ values[pick]))
            if picked.all():
                break
            pick = int(np.argmax(np.where(picked, -1, nearest)))  # argmax keeps the first: the lowest task id
        order += [int(i) for i in candidates[~picked]]
    unusable = np.flatnonzero(~usable)
    order += [int(i) for i in unusable[np.argsort(task_ids[unusable], kind="stable")]]
    return np.asarray(order, dtype=np.int64), spread


def _bit_counts(values: np.ndarray) -> np.ndarray:
    """(m,) uint64 -> (m,) int64 set bits each; numpy < 2 has no `bitwise_count`, and setup.cfg admits 1.26."""
    return np.unpackbits(values.astype(np.uint64).view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1, dtype=np.int64)


def select_order(
    usefulness: np.ndarray,
    task_ids: np.ndarray,
    detections: Sequence[Detections] | None = None,
    hashes: Sequence[int | None] | None = None,
    extras: BatchExtras = BatchExtras(),
    usable: np.ndarray | None = None,
    embeddings: EmbeddingLookup | None = None,
    labelled: np.ndarray | None = None,
) -> np.ndarray:
    """Rank, then apply the batch extras to the head of the queue. Returns (m,) indices.

    usable: (m,) bool, False for images that could not be used; they come last, by task id.
    embeddings: image indices -> their embeddings, for `extras.diversity_pool`.
    labelled: (r, D) the labelled images' embeddings, which the diverse batch keeps away from too.
    """
    if usable is not None:
        usable = np.asarray(usable, dtype=bool)
        task_ids = np.asarray(task_ids)
        if usable.shape != task_ids.shape:
            raise ValueError(f"usable {usable.shape} and task_ids {task_ids.shape} must match")
        if not usable.all():
            ok, bad = np.flatnonzero(usable), np.flatnonzero(~usable)
            head = select_order(
                np.asarray(usefulness, dtype=np.float64)[ok],
                task_ids[ok],
                None if detections is None else [detections[i] for i in ok],
                None if hashes is None else [hashes[i] for i in ok],
                extras,
                embeddings=None if embeddings is None else (lambda indices: embeddings([int(ok[i]) for i in indices])),
                labelled=labelled,
            )
            return np.concatenate([ok[head], bad[np.argsort(task_ids[bad], kind="stable")]]).astype(np.int64)
    order = list(rank(usefulness, task_ids))
    m = len(order)
    size = min(extras.batch_size, m)
    if size == 0:
        return np.asarray(order, dtype=np.int64)

    if extras.diversity_pool and embeddings is not None:
        order = diversify(order, embeddings, size, extras.diversity_pool, labelled)
    if extras.duplicate_distance >= 0 and hashes is not None:
        order = _suppress_duplicates(order, hashes, size, extras.duplicate_distance)
    if extras.class_balance and detections is not None:
        order = _balance_classes(order, detections, size, extras)
    quota = 0
    if extras.empty_quota > 0 and detections is not None:
        quota = math.ceil(extras.empty_quota * size)
        order = _ensure_empty(order, detections, size, quota)
    if extras.exploration > 0:
        # the empty images the quota holds in the batch are not exploration's to replace
        held = set([i for i in order[:size] if len(detections[i]) == 0][:quota]) if quota else set()
        order = _explore(order, size, round(extras.exploration * size), extras.seed, detections, held)
    return np.asarray(order, dtype=np.int64)


def diversify(order: list[int], embeddings: EmbeddingLookup, size: int, pool: int, labelled: np.ndarray | None = None) -> list[int]:
    """The batch by k-center among the first `pool` x `size` of `order`, then the other candidates, then the rest.

    Candidates without an embedding follow the chosen batch; with too few
    embeddings to choose from, the order is kept. `labelled`: (r, D)
    embeddings k-center counts as chosen before (`embeddings.k_center`'s `covered`).
    """
    candidates = order[: size * pool]
    vectors = list(embeddings(candidates))
    if len(vectors) != len(candidates):
        raise ValueError(f"the embedding lookup returned {len(vectors)} vectors for {len(candidates)} images")
    have = [i for i, v in enumerate(vectors) if v is not None]
    if len(have) <= size:
        return order
    picked = [candidates[have[p]] for p in k_center(np.stack([vectors[i] for i in have]), size, labelled)]
    chosen = set(picked)
    return picked + [i for i in candidates if i not in chosen] + order[size * pool :]


def _suppress_duplicates(order: list[int], hashes, size: int, distance: int) -> list[int]:
    head: list[int] = []
    moved: list[int] = []
    rest = iter(order)
    for index in rest:
        h = hashes[index]
        if h is not None and any(
            hashes[j] is not None and (int(h) ^ int(hashes[j])).bit_count() <= distance for j in head
        ):
            moved.append(index)
            continue
        head.append(index)
        if len(head) == size:
            break
    return head + moved + list(rest)


def _dominant_class(d: Detections) -> int | None:
    if len(d) == 0:
        return None
    return int(np.bincount(d.labels).argmax())


def _balance_classes(order: list[int], detections, size: int, extras: BatchExtras) -> list[int]:
    total = sum(extras.class_balance.values())
    target = {int(k): v / total for k, v in extras.class_balance.items()}
    counts = {k: 0 for k in target}
    remaining = list(order)
    head: list[int] = []
    while remaining and len(head) < size:
        window = remaining[: extras.balance_window]
        filled = len(head) + 1

        def deficit(index: int) -> float:
            cls = _dominant_class(detections[index])
            return target[cls] * filled - counts[cls] if cls in target else -math.inf

        best = max(window, key=deficit)  # max keeps the first of equal deficits: usefulness order
        if deficit(best) == -math.inf:
            best = window[0]
        remaining.remove(best)
        head.append(best)
        cls = _dominant_class(detections[best])
        if cls in counts:
            counts[cls] += 1
    return head + remaining


def _ensure_empty(order: list[int], detections, size: int, quota: int) -> list[int]:
    head, tail = order[:size], order[size:]
    have = sum(len(detections[i]) == 0 for i in head)
    promote = [i for i in tail if len(detections[i]) == 0][: max(0, quota - have)]
    if not promote:
        return order
    # the least useful non-empty images of the batch make room
    demote = [i for i in reversed(head) if len(detections[i]) > 0][: len(promote)]
    demoted, promoted = set(demote), set(promote)
    head = [i for i in head if i not in demoted] + promote
    tail = demote + [i for i in tail if i not in promoted]
    return head + tail


def _explore(order: list[int], size: int, count: int, seed: int, detections=None, held: set[int] = frozenset()) -> list[int]:
    head, tail = order[:size], order[size:]
    # the least useful of the batch make room, except those `held` there (the empty quota's)
    droppable = [i for i in reversed(head) if i not in held]
    count = min(count, len(droppable))
    if count == 0 or not tail:
        return order
    # Confident mistakes hide among confident predictions: an image with no
    # boxes has usefulness 0 and would fill the confident end of the tail, so
    # images with predictions are drawn from first (empty ones are EMPTY_QUOTA's).
    predicted = tail if detections is None else [i for i in tail if len(detections[i]) > 0]
    pool = predicted if predicted else tail
    # in usefulness order, so its second half is the most confident
    confident = pool[len(pool) // 2 :] if len(pool) > 1 else pool
    rng = np.random.default_rng(seed)
    picks = [confident[i] for i in rng.choice(len(confident), size=min(count, len(confident)), replace=False)]
    dropped = set(droppable[: len(picks)])
    head = [i for i in head if i not in dropped] + picks
    picked = set(picks)
    tail = [i for i in order[:size] if i in dropped] + [i for i in tail if i not in picked]
    return head + tail
