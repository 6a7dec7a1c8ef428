"""The `ale` commands about models: evaluate one on a labelled dataset (`ale evaluate`), list and promote a project's
versions (`ale models`), and what their pre-annotations saved (`ale savings`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .errors import ConfigError
from .settings import Settings


def check_output_file(option: str, path: str | Path) -> Path:
    """Refuse an output file that cannot be written before the work that produces it, not after."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise ConfigError(option, f"{path} is a folder: give the name of a file to write")
    if not folder.is_dir():
        raise ConfigError(option, f"the folder {folder} does not exist: create it (mkdir -p {folder}) or write elsewhere")
    if not os.access(folder, os.W_OK):
        raise ConfigError(option, f"the folder {folder} is not writable: write elsewhere")
    return path


def run_evaluate(settings: Settings, args) -> int:
    from .datasets import read_yolo_split
    from .errors import TrainingError
    from .training import evaluate_items

    if args.out:
        check_output_file("--out", args.out)  # before the evaluation, which takes minutes
    if not Path(args.data).exists():
        raise ConfigError(f"--data {args.data}", "no such file or folder")
    weights = local_weights(settings, args.weights, "--weights")
    names, items = read_yolo_split(args.data, args.split)
    try:
        # The same evaluation as a trained version's: what an annotator is shown, every box down to the floor.
        metrics = evaluate_items(settings, weights, items, names)
    except TrainingError as exc:
        print(f"cannot evaluate: {exc}", file=sys.stderr)
        return 2
    print(f"{metrics['images']} images ({metrics['boxes']} boxes) of '{args.split}', model {args.weights}")
    print(f"{'class':<16}{'mAP':>8}{'mAP50':>8}{'VOC07':>8}{'VOC12':>8}")
    for name, row in metrics["per_class"].items():
        print(f"{name:<16}{row.get('map', 0):>8.3f}{row.get('map50', 0):>8.3f}{row.get('voc07_ap50', 0):>8.3f}{row.get('voc12_ap50', 0):>8.3f}")
    print(f"{'all':<16}{metrics['map']:>8.3f}{metrics['map50']:>8.3f}{metrics['voc07_map50']:>8.3f}{metrics['voc12_map50']:>8.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2))
    return 0


def local_weights(settings: Settings, weights: str, option: str) -> str:
    """`weights` as a local file, checked (or fetched, with ALLOW_DOWNLOADS) by the adapter, whose errors name `option`."""
    from .adapters import adapter_class

    factory = adapter_class(settings)
    if hasattr(factory, "local_weights"):
        return factory.local_weights(settings, weights, option)
    return weights


def _promote(settings: Settings, store, project: int, name: str) -> int:
    """Serve a stored version from now on, under the project's training lock (a training promotes under it too; without
    Redis the lock is a file under MODEL_DIR, which `ale serve`'s trainings take as well)."""
    from .runtime import Runtime

    with Runtime(settings).lock(f"train:{project}") as acquired:
        if not acquired:
            print(f"a training of project {project} is running; promote when it ends", file=sys.stderr)
            return 1
        try:
            store.promote(name)
        except LookupError as exc:
            raise ConfigError("--promote", str(exc)) from None
        _record_promoted_by_hand(store, name)
    print(f"project {project}: {name} is served from now on; the next sync ranks the queue by it")
    return 0


def _record_promoted_by_hand(store, name: str) -> None:
    """A version its training did not promote says, from now on, that it was promoted by hand (/versions and the
    admin page show the record): the training's own decision stays in the reason."""
    record = store.get(name).manifest.get("promotion") or {}
    if record.get("promoted"):
        return
    reason = f"promoted by hand (`ale models --promote {name}`); at training: {record.get('reason') or 'no decision recorded'}"
    try:
        store.record_promotion(name, record | {"promoted": True, "by_hand": True, "reason": reason})
    except OSError as exc:  # it is served all the same: only its record is behind
        print(f"{name} is served, but its record could not say so: {exc}", file=sys.stderr)


def run_models(settings: Settings, args) -> int:
    from .model_store import ModelStore

    if args.plot:
        check_output_file("--plot", args.plot)
    store = ModelStore(settings.model_dir, args.project)
    if args.promote:
        return _promote(settings, store, args.project, args.promote)
    versions = store.versions()
    current, damaged = store.readable_current()
    if damaged:
        print(f"the served version cannot be read: {damaged}", file=sys.stderr)
    if not versions:
        print(f"project {args.project} has no trained versions in {store.dir}")
        return 0
    print(f"{'version':<9}{'served':>7}{'mAP':>8}{'mAP50':>8}{'VOC07':>8}{'VOC12':>8}{'train':>7}{'val':>5}  classes")
    for v in versions:
        m, served = v.metrics, "*" if current and current.name == v.name else ""
        print(
            f"{v.name:<9}{served:>7}{m.get('map', 0):>8.3f}{m.get('map50', 0):>8.3f}{m.get('voc07_map50', 0):>8.3f}"
            f"{m.get('voc12_map50', 0):>8.3f}{v.manifest.get('train_images', 0):>7}{v.manifest.get('val_images', 0):>5}  {','.join(v.classes)}"
        )
    _print_savings(settings, args.project)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [v.name for v in versions]
        figure, axes = plt.subplots(figsize=(6, 3.5))
        for key, label in (("map", "COCO mAP@[.5:.95]"), ("map50", "mAP50"), ("voc07_map50", "VOC07 AP50")):
            axes.plot(names, [v.metrics.get(key, 0) for v in versions], marker="o", label=label)
        axes.set_ylim(0, 1)
        axes.set_xlabel("model version")
        axes.set_title(f"project {args.project}")
        axes.legend()
        figure.tight_layout()
        figure.savefig(args.plot, dpi=100)
        print(f"plot written to {args.plot}")
    return 0


def run_savings(settings: Settings, args) -> int:
    from .runtime import Runtime
    from .savings import recompute

    if args.recompute:
        done = recompute(Runtime(settings), args.project)
        print(f"recorded {done['annotations']} annotations of {done['tasks']} annotated tasks; forgot {done['forgotten']} of deleted ones")
    if not _print_savings(settings, args.project):
        print(f"project {args.project} has no annotation recorded against a shown prediction yet")
    return 0


def _print_savings(settings: Settings, project: int) -> bool:
    """The per-model table of what the pre-annotations saved. -> whether there was anything to print."""
    from .detection_store import open_detection_store
    from .savings import savings_by_model

    rows = savings_by_model(open_detection_store(settings.detection_store_url, settings.model_dir), project)
    if not rows:
        return False
    print(f"\n{'pre-annotations of':<24}{'annotations':>12}{'accepted':>9}{'moved':>7}{'relabel':>8}{'deleted':>8}{'added':>7}{'kept':>7}{'lead s':>8}")
    for row in rows:
        c, lead = row.counts, "-" if row.mean_lead_time is None else f"{row.mean_lead_time:.1f}"
        print(
            f"{row.model:<24}{row.annotations:>12}{c.accepted:>9}{c.moved:>7}{c.relabelled:>8}{c.deleted:>8}{c.added:>7}"
            f"{row.accepted_share:>7.0%}{lead:>8}"
        )
    return True
