"""Where the benchmark's runs execute: in this process, or several at once in worker processes.

The (seed, policy) runs are independent once a seed's first model exists, and
on a small CPU one run does not use the cores it is given: a YOLOv5n fine-tune
at 128 px took as long with two torch threads as with one on a 2-core CPU
(78 s each), and two one-thread runs side by side took 78 s each too. So the
CPU default is one run per core, each with one thread.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Callable, Iterable, Iterator


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_jobs(device: str) -> int:
    """One run per core on the CPU; one at a time on an accelerator, which a run keeps busy."""
    return cpu_cores() if str(device).lower() == "cpu" else 1


def check_jobs(jobs: int | None, device: str = "cpu") -> int:
    """`jobs`, or the device's default for None; ValueError naming the option otherwise."""
    jobs = default_jobs(device) if jobs is None else jobs
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer (runs at once), got {jobs!r}")
    return jobs


class RunPool:
    """`submit(fn, *args)` -> Future, run inline (`jobs` 1) or in `jobs` spawned processes.

    Workers are spawned, not forked: a process that has run torch with more
    than one thread hangs its forked children. Each worker gets cores // jobs
    torch threads (at least one). `jobs` None: `default_jobs(device)`.
    """

    def __init__(self, jobs: int | None, device: str = "cpu"):
        self.jobs = jobs = check_jobs(jobs, device)
        self.threads = max(1, cpu_cores() // jobs)
        self._executor = None
        if jobs > 1:
            self._executor = ProcessPoolExecutor(
                max_workers=jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_pin_threads,
                initargs=(self.threads,),
            )

    def submit(self, fn: Callable, *args) -> Future:
        if self._executor is not None:
            return self._executor.submit(fn, *args)
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to .result(), as a process pool would
            future.set_exception(exc)
        return future

    @staticmethod
    def as_completed(futures: Iterable[Future]) -> Iterator[Future]:
        return as_completed(list(futures))

    def __enter__(self) -> "RunPool":
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is not None:
            # on an error, queued runs are dropped rather than run for nothing
            self._executor.shutdown(wait=True, cancel_futures=exc[0] is not None)


def _pin_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
