"""Job progress: what a running job publishes in its meta, and the line `ale jobs` shows for it."""

from __future__ import annotations

from typing import Callable

#: (phase, done, total) -> None; jobs report each step through one.
Progress = Callable[[str, int, int], None]


def _job_progress(phase: str, done: int, total: int, metrics: dict | None = None) -> None:
    """Inside a job: publish progress in its meta (read by `ale jobs` and GET /jobs/<id>).

    A training's epoch record is kept apart under "training", so it survives
    the sync that follows it; its figures are the trainer's own for that
    epoch (losses, and the trainer's validation where it ran one), which are
    not the stored version's evaluation (published as "evaluation").
    """
    record = {"progress": {"phase": phase, "done": done, "total": total}}
    if phase == "train":
        record["training"] = {"epoch": done, "epochs": total, "trainer_metrics": metrics or {}, "note": TRAINER_METRICS_NOTE}
    publish(record)


def describe_progress(meta: dict) -> str:
    """One line for `ale jobs`: a training's epochs and its stored evaluation stay visible after its re-sync."""
    progress = meta.get("progress")
    line = f"{progress['phase']} {progress['done']}/{progress['total']}" if progress else ""
    training, evaluation = meta.get("training"), meta.get("evaluation")
    if evaluation:
        verdict = "promoted" if evaluation["promoted"] else "not promoted"
        trained = (
            f"trained {evaluation['version']}: mAP50 {evaluation['map50']:.3f} on {evaluation['images']} validation images "
            f"({evaluation['boxes']} boxes), {verdict}"
        )
        return trained if not progress or progress["phase"] == "train" else f"{trained}; then {line}"
    if training:
        return f"epoch {training['epoch']}/{training['epochs']}" + ("" if progress["phase"] == "train" else f"; {line}")
    return line


TRAINER_METRICS_NOTE = "the trainer's own per-epoch figures; the stored version's evaluation is under 'evaluation'"


def publish(record: dict) -> None:
    """Inside a job (rq or embedded): merge `record` into the job's meta. Outside a job: nothing."""
    from .jobqueue import current_embedded_job

    embedded = current_embedded_job()
    if embedded is not None:
        embedded.meta.update(record)
        return
    try:
        from rq import get_current_job
    except ImportError:
        return
    job = get_current_job()
    if job is not None:
        job.meta.update(record)
        job.save_meta()
