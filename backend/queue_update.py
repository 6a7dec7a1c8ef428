"""Adding tasks to a served queue without rewriting it.

Label Studio serves ascending prediction scores. A full sync spreads its
queue over (0, 1) with room at both ends (`ranking.ls_scores`); new tasks
then take scores between those of their neighbours, so only their own
predictions are written. Their neighbours are decided by usefulness: a new
task goes right after the last served task (in score order) that is at least
as useful as it. The served head may be reshaped by batch extras, which serve
a few less useful images early (exploration, empty images, diverse picks), so
usefulness is not monotone along the queue; the rule is applied on the running
maximum of usefulness taken from the tail, which is monotone, so each
insertion is a binary search. A new task never goes ahead of a more useful
one: placing it before the first less useful one instead would put it
before the extras' picks, into the head batch, ahead of hundreds of more
useful tasks.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from .detection_store import ServedTasks

#: Below this gap between two neighbouring scores a queue has no room left for a new task: rewrite it.
MIN_SCORE_GAP = 1e-12


def place_new_tasks(served: ServedTasks, task_ids: np.ndarray, usefulness: np.ndarray) -> np.ndarray | None:
    """LS scores for new tasks placed among `served` by usefulness. -> (n,) scores, or None if some gap is full.

    task_ids, usefulness: (n,) new tasks (usefulness -inf: unusable, goes last).
    New tasks sharing a gap are spread evenly across it, most useful first
    (ties: lower task id first), strictly between its two scores; the ends of
    the queue are 0 and 1.
    """
    task_ids = np.asarray(task_ids, dtype=np.int64)
    usefulness = np.asarray(usefulness, dtype=np.float64)
    if task_ids.shape != usefulness.shape or task_ids.ndim != 1:
        raise ValueError(f"task_ids {task_ids.shape} and usefulness {usefulness.shape} must be matching 1-d arrays")
    n = task_ids.size
    if n == 0:
        return np.zeros(0)
    if np.isnan(usefulness).any():
        raise ValueError("usefulness must not be NaN")
    # served is in ascending score order; envelope[i] = greatest usefulness from i to the end of the queue
    envelope = np.maximum.accumulate(served.usefulness[::-1])[::-1] if len(served) else np.zeros(0)
    # after the last i with envelope[i] >= u  ==  number of i with envelope[i] >= u (envelope is non-increasing)
    slots = np.searchsorted(-envelope, -usefulness, side="right")
    bounds = np.concatenate([[0.0], served.scores, [1.0]])
    scores = np.empty(n)
    order = np.lexsort((task_ids, -usefulness, slots))  # by gap, then most useful first
    starts = np.flatnonzero(np.r_[True, slots[order][1:] != slots[order][:-1]])
    for begin, end in zip(starts, np.r_[starts[1:], n]):
        members = order[begin:end]
        slot = int(slots[members[0]])
        low, high = bounds[slot], bounds[slot + 1]
        step = (high - low) / (members.size + 1)
        if step < MIN_SCORE_GAP:
            return None
        scores[members] = low + step * np.arange(1, members.size + 1)
    return scores


def ranking_key(**parts) -> str:
    """A short stable hash of everything besides the model that decides a queue's order and its predictions."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
