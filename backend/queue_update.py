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

from .detection_rows import ServedTasks

#: Below this gap between two neighbouring scores a queue has no room left for a new task: rewrite it.
MIN_SCORE_GAP = 1e-12
#: Up to this many distinct usefulness values, the store finds each one's gap (`served_gaps`: two scans of the
#: project's rows in SQL); past it, reading the served queue whole once is cheaper.
GAP_QUERIES_MAX = 4


def place_new_tasks(served: ServedTasks, task_ids: np.ndarray, usefulness: np.ndarray) -> np.ndarray | None:
    """LS scores for new tasks placed among `served` by usefulness. -> (n,) scores, or None if some gap is full.

    task_ids, usefulness: (n,) new tasks (usefulness -inf: unusable, goes last).
    New tasks sharing a gap are spread evenly across it, most useful first
    (ties: lower task id first), strictly between its two scores; the ends of
    the queue are 0 and 1.
    """
    task_ids, usefulness = _checked(task_ids, usefulness)
    return spread_in_gaps(task_ids, usefulness, *gaps_of(served, usefulness))


def place_in_store(store, project: int, task_ids: np.ndarray, usefulness: np.ndarray) -> np.ndarray | None:
    """`place_new_tasks` among the project's served queue in the detection store, without reading the whole queue
    for a few new tasks (GAP_QUERIES_MAX)."""
    task_ids, usefulness = _checked(task_ids, usefulness)
    if np.unique(usefulness).size <= GAP_QUERIES_MAX:
        gaps = store.served_gaps(project, usefulness)
    else:
        gaps = gaps_of(store.served_tasks(project), usefulness)
    return spread_in_gaps(task_ids, usefulness, *gaps)


def gaps_of(served: ServedTasks, usefulness: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n,) low and high scores of the gap of `served` each usefulness goes into: right after the last served task
    (in score order) at least as useful, before the next; 0 and 1 at the ends."""
    # served is in ascending score order; envelope[i] = greatest usefulness from i to the end of the queue
    envelope = np.maximum.accumulate(served.usefulness[::-1])[::-1] if len(served) else np.zeros(0)
    # after the last i with envelope[i] >= u  ==  number of i with envelope[i] >= u (envelope is non-increasing)
    slots = np.searchsorted(-envelope, -np.asarray(usefulness, dtype=np.float64), side="right")
    bounds = np.concatenate([[0.0], served.scores, [1.0]])
    return bounds[slots], bounds[slots + 1]


def spread_in_gaps(task_ids: np.ndarray, usefulness: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray | None:
    """Scores for new tasks in their gaps (`low`, `high`): spread evenly, most useful first. -> None if a gap is full."""
    n = task_ids.size
    if n == 0:
        return np.zeros(0)
    scores = np.empty(n)
    order = np.lexsort((task_ids, -usefulness, high, low))  # by gap, then most useful first
    low, high = low[order], high[order]
    starts = np.flatnonzero(np.r_[True, (low[1:] != low[:-1]) | (high[1:] != high[:-1])])
    for begin, end in zip(starts, np.r_[starts[1:], n]):
        members = order[begin:end]
        step = (high[begin] - low[begin]) / (members.size + 1)
        if step < MIN_SCORE_GAP:
            return None
        scores[members] = low[begin] + step * np.arange(1, members.size + 1)
    return scores


def _checked(task_ids, usefulness) -> tuple[np.ndarray, np.ndarray]:
    task_ids = np.asarray(task_ids, dtype=np.int64)
    usefulness = np.asarray(usefulness, dtype=np.float64)
    if task_ids.shape != usefulness.shape or task_ids.ndim != 1:
        raise ValueError(f"task_ids {task_ids.shape} and usefulness {usefulness.shape} must be matching 1-d arrays")
    if np.isnan(usefulness).any():
        raise ValueError("usefulness must not be NaN")
    return task_ids, usefulness


def ranking_key(**parts) -> str:
    """A short stable hash of everything besides the model that decides a queue's order and its predictions."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
