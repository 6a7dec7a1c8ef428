"""Where a benchmark's images come from: the built-in digit scenes or a user's labelled dataset."""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..datasets import detect_format, read_dataset
from ..settings import DEFAULT_TRAIN_BATCH, Settings
from .digits import BURST_VERSION, NEW_CLASS_SHARE, DigitScenes, check_new_class_share
from .simulation import LOAD_CHUNK, BenchData

#: Seeds of the evaluation scenes and of the base model's scenes start here, far from the pool's.
EVAL_SEED_OFFSET = 1_000_000
BASE_SEED_OFFSET = 2_000_000
DEFAULT_EVAL_PERCENT = 25
#: The built-in base model's training batch, whatever TRAIN_BATCH the caller runs with: TRAIN_BATCH's default,
#: what `ale bench al` trained it with. Taken from the caller, the cached model depended on which benchmark
#: trained it first (`benchmarks/finetune_recipe.py` runs at the preset's batch of 8).
BASE_BATCH = DEFAULT_TRAIN_BATCH


def builtin_data(
    cache: str | Path, pool_size: int, eval_size: int, image_size: int = 128, *, burst: int = 1, new_class_share: float = NEW_CLASS_SHARE
) -> tuple[BenchData, str]:
    """Generate (or reuse) the digit scenes under `cache`. -> (data, name of its new class).

    `burst` > 1: the pool's images are bursts of that many frames of a scene
    (a camera trap's look-alike frames); the evaluation set stays one frame a scene.
    `new_class_share`: the chance that a pool object is of the new class
    (a rare species: a few percent). The evaluation set keeps the default
    share, so the new class's AP is measured on as many objects whatever the pool.
    """
    if burst < 1:
        raise ValueError(f"--burst must be 1 (one frame a scene) or more frames a scene, got {burst}")
    check_new_class_share(new_class_share)
    scenes = DigitScenes(size=image_size)
    root = Path(cache) / f"digits-{scenes.key}"
    rare = new_class_share != NEW_CLASS_SHARE
    parts = {}
    for part, count, first_seed, half, frames, share in (
        ("pool", pool_size, 0, 0, burst, new_class_share),
        ("eval", eval_size, EVAL_SEED_OFFSET, 1, 1, NEW_CLASS_SHARE),
    ):
        folder = root / (
            f"{part}-{count}"
            + (f"-burst{frames}-v{BURST_VERSION}" if frames > 1 else "")
            + (f"-new{share:g}" if share != NEW_CLASS_SHARE else "")
        )
        if not (folder / "data.yaml").is_file():  # data.yaml is written last: its presence means complete
            scenes.write(folder, count, first_seed, half, burst=frames, new_class_share=share)
        parts[part] = read_dataset(folder, "yolo")[1]
    pool = f"{pool_size} pool" if burst == 1 else f"{pool_size} pool ({-(-pool_size // burst)} scenes in bursts of {burst} frames)"
    if rare:
        pool += f" (the new class drawn for {new_class_share:.0%} of its objects, the evaluation scenes' {NEW_CLASS_SHARE:.0%})"
    description = f"built-in: scikit-learn handwritten digits on photographs, {image_size}px, {pool} + {eval_size} evaluation scenes"
    return BenchData(scenes.class_names, parts["pool"], parts["eval"], description, burst), scenes.class_names[scenes.new_class]


def base_model_dir(cache: str | Path, settings: Settings, images: int, epochs: int, image_size: int) -> Path:
    """Where the built-in base model for these settings is cached.

    The recipe and TRAIN_PRECISION are part of the key: a base model trained
    another way is another model, and a run must not start from one trained
    in a precision it did not ask for. The batch (BASE_BATCH) is in it too, so
    that no model cached before it was fixed, at whatever batch its caller had,
    is taken for one trained at BASE_BATCH.
    """
    scenes = DigitScenes(size=image_size)
    key = f"base-{images}-{epochs}ep-b{BASE_BATCH}-{settings.train_recipe}-{settings.train_precision}"
    return Path(cache) / f"digits-{scenes.key}" / key


def builtin_base_model(cache: str | Path, settings: Settings, images: int, epochs: int, image_size: int, device: str, log=print) -> Path:
    """The built-in dataset's base model, trained once and cached: `images` scenes without the new class.

    It plays the model a user brings from earlier work (BASE_MODEL): it knows
    the old classes and has never seen the new one.
    """
    from ..model_store import ModelStore
    from ..training import train_version
    from ..training_set import TrainingSample, write_training_set

    scenes = DigitScenes(size=image_size)
    store = ModelStore(base_model_dir(cache, settings, images, epochs, image_size), 0)
    if store.current() is not None:
        return store.current().weights
    folder = store.dir.parent / "scenes"
    if not (folder / "data.yaml").is_file():
        scenes.write(folder, images, BASE_SEED_OFFSET, 0, with_new_class=False)
    names, items = read_dataset(folder, "yolo")
    # The base model's classes are the old ones only: the new class joins the
    # label config later, and training grows the head for it.
    known = [name for i, name in enumerate(names) if i != scenes.new_class]
    log(f"training the built-in base model once: {images} scenes of {', '.join(known)}, {epochs} epochs (cached in {store.dir})")
    remap = np.array([known.index(name) if name in known else -1 for name in names])
    samples = [TrainingSample(i + 1, item.path, item.truth.xyxy, remap[item.truth.labels]) for i, item in enumerate(items)]
    work = store.dir.parent / "work"
    shutil.rmtree(work, ignore_errors=True)  # what a run killed part-way left
    try:
        dataset, _ = write_training_set(work, samples, known)
        # from a yaml every layer trains, whatever TRAIN_FREEZE the loop's fine-tunes use, at one batch whatever theirs
        trained = settings.replace(
            image_size=image_size, train_epochs=epochs, train_batch=BASE_BATCH, base_model="yolov5n.yaml", device=device,
            promotion="always", train_freeze=0,
        )
        train_version(trained, store, dataset, known, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    return store.current().weights


def user_data(
    path: str | Path,
    format: str | None = None,
    *,
    images: str | Path | None = None,
    eval_path: str | Path | None = None,
    eval_percent: int = DEFAULT_EVAL_PERCENT,
    eval_format: str | None = None,
) -> BenchData:
    """A user's dataset; its evaluation set is `eval_path`, else a fixed `eval_percent` of it (by file-name hash).

    `eval_path` is read as `eval_format`, else in the format its layout shows (`format` where it shows none): a COCO
    pool may be evaluated on a YOLO folder.
    """
    names, items = read_dataset(path, format, images=images)
    if eval_path is not None:
        # a VOC evaluation folder without an object of a rare class is read in the pool's class order
        eval_names, evaluation = read_dataset(eval_path, _eval_format(eval_path, format, eval_format), images=images, classes=names)
        if eval_names != names:
            raise ValueError(f"the evaluation set's classes ({', '.join(eval_names)}) differ from the pool's ({', '.join(names)})")
        shared = sorted({item.path.resolve() for item in items} & {item.path.resolve() for item in evaluation})
        if shared:
            raise ValueError(
                f"the evaluation set holds {len(shared)} of the pool's images (e.g. {shared[0]}): a model is then "
                "scored on images it may have trained on; give --eval-data images that are not in --data"
            )
        pool = items
    else:
        if not 0 < eval_percent < 100:
            raise ValueError(f"eval percent must be in 1..99, got {eval_percent}")
        held_out = [zlib.crc32(item.path.name.encode()) % 100 < eval_percent for item in items]
        pool = [item for item, out in zip(items, held_out) if not out]
        evaluation = [item for item, out in zip(items, held_out) if out]
    return BenchData(names, pool, evaluation, f"{path}: {len(pool)} pool + {len(evaluation)} evaluation images")


def _eval_format(eval_path, format: str | None, eval_format: str | None) -> str | None:
    if eval_format or not Path(eval_path).exists():  # a path that is not there: read_dataset says so
        return eval_format
    try:
        return detect_format(Path(eval_path))
    except ValueError:
        if format is None:
            raise
        return format


def load_chunks(paths: list[Path], max_pixels: int) -> list[list[int]]:
    """Positions in `paths`, LOAD_CHUNK at a time, a chunk closed early once its images' pixels reach `max_pixels`.

    Sizes from the files' headers, nothing decoded: user photos can be large, and never LOAD_CHUNK of them in memory
    (as `datasets.predict_items` chunks an evaluation).
    """
    chunks: list[list[int]] = [[]]
    pixels = 0
    for k, path in enumerate(paths):
        if len(chunks[-1]) >= LOAD_CHUNK or pixels >= max_pixels:
            chunks.append([])
            pixels = 0
        chunks[-1].append(k)
        with Image.open(path) as image:
            pixels += image.width * image.height
    return chunks if chunks[-1] else []
