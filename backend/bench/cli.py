"""`ale bench al`: the label-efficiency benchmark; `ale bench report`: re-render a results.json."""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from ..datasets import FORMATS
from ..settings import TORCH_DEVICE, Settings

DEFAULT_OUT = "bench-al"
DEFAULT_CACHE = Path.home() / ".cache" / "label-studio-ale" / "bench"

#: The CPU preset's policies: random, the Conservation Metrics pipeline's default, entropy-sum and the
#: ALE paper's winner, then what goes beyond uncertainty: diversity, novelty,
#: localization and cost per box, and entropy-mean, the README's choice when
#: boxes cost the money. The large preset runs every policy.
SMALL_POLICIES = (
    "random",
    "min-confidence",
    "entropy-sum",
    "ale-entropy-sum",
    "ale-entropy-sum+diverse",
    "ale-entropy-sum+novelty",
    "ale-loc-sum",
    "entropy-sum+cost",
    "entropy-mean",
)

#: The first-days preset: a team's first labelling sessions.
FIRST_DAYS_POLICIES = ("random", "min-confidence", "entropy-sum", "ale-entropy-sum")

#: small and first-days: a 2-core CPU (times in the README); large: a GPU.
#: Epochs 0: Start Training's recipe decides (TRAIN_RECIPE, small-data by default).
PRESETS = {
    "small": {
        "pool": 320,
        "eval": 120,
        "base_images": 300,
        "base_epochs": 25,
        "policies": SMALL_POLICIES,
        "seeds": (0, 1, 2),
        "initial": 24,
        "budget": 24,
        # the third cycle is where random has labelled ~30 boxes of the new class
        "cycles": 3,
        "image_size": 128,
        "initial_epochs": 0,
        "epochs": 0,
        "batch": 8,
    },
    # tens of labelled images, a rare class the base model never saw, from the base model
    "first-days": {
        "pool": 320,
        "eval": 120,
        "base_images": 300,
        "base_epochs": 25,
        "policies": FIRST_DAYS_POLICIES,
        "seeds": (0, 1, 2),
        "initial": 12,
        "budget": 12,
        "cycles": 3,
        "image_size": 128,
        "initial_epochs": 0,
        "epochs": 0,
        "batch": 8,
    },
    "large": {
        "pool": 3000,
        "eval": 600,
        "base_images": 3000,
        "base_epochs": 60,
        "policies": None,  # every policy
        "seeds": (0, 1, 2, 3, 4),
        "initial": 100,
        "budget": 100,
        "cycles": 5,
        "image_size": 256,
        "initial_epochs": 0,
        "epochs": 0,
        "batch": 32,
    },
}


def add_parser(commands) -> None:
    from ..cli import non_negative_int, positive_int  # called from cli.build_parser: that module is loaded by then
    from .digits import NEW_CLASS_SHARE

    bench = commands.add_parser("bench", help="label-efficiency benchmarks of the selection policies")
    kinds = bench.add_subparsers(dest="bench_command", required=True)
    al = kinds.add_parser(
        "al",
        help="simulated active-learning cycles (the ground truth plays the annotator): mAP per policy and cycle",
        description="Simulate labelling cycles with each policy and compare the models. Without --data it uses "
        "a built-in dataset (handwritten digits on photographs) whose last class appears only in the pool.",
    )
    al.add_argument("--preset", choices=sorted(PRESETS), default="small", help="defaults for everything below (default: small)")
    al.add_argument("--data", help="your labelled dataset: a COCO .json, a YOLO folder or data.yaml, or a VOC folder")
    al.add_argument("--format", choices=FORMATS, help="--data's format (default: detected)")
    al.add_argument("--images", help="COCO: the folder file_name is relative to (default: the json's folder)")
    al.add_argument("--eval-data", help="a separate evaluation dataset (default: a fixed share of --data)")
    al.add_argument("--eval-format", choices=FORMATS, help="--eval-data's format (default: detected, else --format)")
    al.add_argument("--eval-percent", type=int, default=25, help="share of --data held out for evaluation (default 25)")
    al.add_argument("--new-class", help="a class left out of the initial labelled set (built-in: its last class; 'none' for no such class)")
    al.add_argument("--policies", help="comma-separated policy names (default: the preset's); oracle-new-class, oracle-new-class-per-box, oracle-errors, oracle-errors-per-box: references that read the ground truth")
    al.add_argument("--seeds", help="comma-separated seeds; each draws its own initial set (default: the preset's)")
    for name, what in (
        ("initial", "images labelled before the first cycle"),
        ("budget", "images labelled per cycle"),
        ("cycles", "labelling cycles"),
        ("image-size", "training and inference image size"),
        ("initial-epochs", "epochs of the first model (base model fine-tuned on the initial set)"),
        ("epochs", "epochs of each cycle's fine-tuning"),
        ("batch", "training batch size"),
        ("pool", "built-in dataset: pool images"),
        ("eval", "built-in dataset: evaluation images"),
        ("base-images", "built-in dataset: images of the base model's own training set (no new class)"),
        ("base-epochs", "built-in dataset: epochs of the base model"),
    ):
        # refused by argparse, not by BenchConfig after the data is read and a base model trained
        kind = non_negative_int if name.endswith("epochs") else positive_int
        al.add_argument(f"--{name}", type=kind, help=f"{what} (default: the preset's)")
    al.add_argument(
        "--burst",
        type=int,
        default=1,
        help="built-in dataset: frames per scene in the pool, a scene moved a little from frame to frame, as a camera "
        "trap fires in bursts (default 1: every pool image its own scene)",
    )
    al.add_argument(
        "--new-class-share",
        type=float,
        default=NEW_CLASS_SHARE,
        help="built-in dataset: the chance that a pool object is of the new class, e.g. 0.04 for a rare species "
        f"(default {NEW_CLASS_SHARE}; the evaluation scenes keep the default)",
    )
    al.add_argument(
        "--budget-cost",
        type=float,
        help="instead of --budget images, annotation cost labelled per cycle, in boxes: each cycle labels the policy's queue "
        "until the boxes drawn plus COST_PER_IMAGE per image reach it (for teams that pay per box)",
    )
    al.add_argument("--base-model", help="weights every seed starts from (default: BASE_MODEL; built-in: a base model trained once and cached)")
    al.add_argument(
        "--jobs",
        type=int,
        help="runs trained at once, in worker processes (default: one per CPU core on the CPU, 1 on an accelerator)",
    )
    al.add_argument("--promotion", choices=("always", "if-not-worse"), default="always", help="keep every cycle's model, or gate like the server")
    al.add_argument("--device", help="torch device (default: DEVICE)")
    al.add_argument("--out", default=DEFAULT_OUT, help=f"folder for results.json, table.md and learning_curve.png (default {DEFAULT_OUT})")
    al.add_argument("--cache", default=str(DEFAULT_CACHE), help="where built-in datasets and base models are kept between runs")

    report = kinds.add_parser("report", help="write the table and the plot of a results.json again")
    report.add_argument("results", help="a results.json written by `ale bench al`")
    report.add_argument("--out", help="folder for table.md and learning_curve.png (default: beside the results)")


def run(settings: Settings, args, argv: list[str]) -> int:
    if args.bench_command == "report":
        path = Path(args.results)
        if not path.is_file():
            print(f"{path}: no such file", file=sys.stderr)
            return 2
        out = Path(args.out) if args.out else path.parent
        try:
            _check_out_folder(out)
        except ValueError as exc:
            print(f"ale bench report: {exc}", file=sys.stderr)
            return 2
        _render(json.loads(path.read_text()), out)
        return 0
    return _run_al(settings, args, argv)


def _run_al(settings: Settings, args, argv: list[str]) -> int:
    from .digits import NEW_CLASS_SHARE
    from .runs import check_jobs
    from .simulation import DEFAULT_POLICIES, _write_json, simulate
    from .sources import builtin_data, builtin_base_model, user_data

    preset = PRESETS[args.preset]

    def pick(name):
        value = getattr(args, name)
        return preset[name] if value is None else value

    out = Path(args.out)
    cache = Path(args.cache)
    device = args.device or settings.device
    started = time.monotonic()
    try:
        if not TORCH_DEVICE.fullmatch(device):
            raise ValueError(f"--device must be a torch device: cpu, cuda, cuda:N or mps, got {device!r}")
        jobs = check_jobs(args.jobs, device)  # before a base model is trained for nothing
        if args.budget is not None and args.budget_cost:
            raise ValueError("--budget (images a cycle) and --budget-cost (annotation cost a cycle) both size a cycle: give one")
        if args.data and args.burst != 1:
            raise ValueError("--burst shapes the built-in dataset's pool; a --data pool is used as it is")
        if args.eval_format and not args.eval_data:
            raise ValueError("--eval-format is the format of --eval-data: give --eval-data too, or leave --eval-format out")
        if args.data and args.new_class_share != NEW_CLASS_SHARE:
            raise ValueError("--new-class-share shapes the built-in dataset's pool; a --data pool is used as it is")
        # Every option of the runs is checked here, before the data is read and a base model trained (minutes on a CPU);
        # the new class and the base model are filled in once known.
        config = _bench_config(
            policies=_policies(args.policies) if args.policies else (preset["policies"] or DEFAULT_POLICIES),
            seeds=_seeds(args.seeds) if args.seeds else preset["seeds"],
            initial=pick("initial"),
            budget=pick("budget"),
            cycles=pick("cycles"),
            image_size=pick("image_size"),
            initial_epochs=pick("initial_epochs"),
            epochs=pick("epochs"),
            batch=pick("batch"),
            promotion=args.promotion,
            device=device,
            budget_cost=args.budget_cost or 0.0,
        )
        _check_out_folder(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"--out {out}: cannot create the folder ({exc}); give another one") from None
        if args.data:
            data = user_data(
                args.data, args.format, images=args.images, eval_path=args.eval_data, eval_percent=args.eval_percent, eval_format=args.eval_format
            )
            new_class = args.new_class
            base_model = args.base_model or settings.base_model
        else:
            data, new_class = builtin_data(
                cache, pick("pool"), pick("eval"), pick("image_size"), burst=args.burst, new_class_share=args.new_class_share
            )
            new_class = args.new_class or new_class
            base_model = args.base_model or str(
                builtin_base_model(cache, settings, pick("base_images"), pick("base_epochs"), pick("image_size"), device, log=_log)
            )
        if new_class is not None and new_class.lower() == "none":
            new_class = None
        config = dataclasses.replace(config, new_class=new_class, base_model=base_model)
    except ValueError as exc:
        print(f"ale bench al: {exc}", file=sys.stderr)
        return 2
    _log(f"{data.description}; classes {', '.join(data.names)}; new class: {config.new_class or 'none'}")
    _log(
        f"{len(config.policies)} policies x {len(config.seeds)} seeds x {config.cycles} cycles: "
        f"{config.initial} initial + {_per_cycle(config, settings)} per cycle, "
        f"{f'{config.epochs} epochs' if config.epochs else 'the recipe' + chr(39) + 's epochs'} each"
        f"{f' (TRAIN_MIN_STEPS={settings.train_min_steps})' if settings.train_min_steps else ''}"
        f"{f' (TRAIN_CONTINUE_STEPS={settings.train_continue_steps})' if settings.train_continue_steps else ''}, base {config.base_model}; "
        f"{jobs} run{'s' if jobs > 1 else ''} at once"
    )
    with tempfile.TemporaryDirectory(prefix="ale-bench-", dir=out) as work:
        try:
            results = simulate(config, data, settings, work, log=_log, results_path=out / "results.json", jobs=jobs)
        except ValueError as exc:
            print(f"ale bench al: {exc}", file=sys.stderr)
            return 2
    results["command"] = " ".join(["ale", *argv])
    results["seconds"] = round(time.monotonic() - started, 1)
    _write_json(out / "results.json", results)  # atomically, as after each run: a kill mid-write keeps the last whole file
    _render(results, out)
    _log(f"done in {results['seconds'] / 60:.1f} min")
    return 0


def _render(results: dict, out: Path) -> None:
    from .report import markdown_table, plot, summarise

    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(results)
    table = markdown_table(summary)
    (out / "table.md").write_text(table + "\n")
    plot(summary, results, out / "learning_curve.png")
    print(table)
    print(f"\nwritten: {out / 'results.json'}, {out / 'table.md'}, {out / 'learning_curve.png'}")


def _per_cycle(config, settings: Settings) -> str:
    if config.budget_cost:
        return f"images costing {config.budget_cost:g} boxes (COST_PER_IMAGE={settings.cost_per_image:g})"
    return str(config.budget)


def _check_out_folder(out: Path) -> None:
    """--out must be a folder (or not exist yet): refused before the work, not as a FileExistsError after it."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder for results.json, table.md and learning_curve.png")


def _policies(raw: str) -> tuple[str, ...]:
    """--policies' names (BenchConfig checks each)."""
    names = tuple(_csv(raw))
    if not names:
        raise ValueError(f"--policies names no policy: give at least one, e.g. random,ale-entropy-sum; got {raw!r}")
    return names


def _bench_config(**fields):
    """BenchConfig(**fields), an unknown policy named as this option (BenchConfig's check names POLICY=, the server's)."""
    from ..errors import PolicyError
    from .null import RANDOM_NULL
    from .oracle import REFERENCE_POLICIES
    from .simulation import BenchConfig

    try:
        return BenchConfig(**fields)
    except PolicyError as exc:
        problem = str(exc).replace("POLICY=", "--policies ", 1)
        raise ValueError(f"{problem}; the bench also takes {', '.join((*REFERENCE_POLICIES, RANDOM_NULL))}") from None


def _seeds(raw: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in _csv(raw))
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, e.g. 0,1,2; got {raw!r}") from None
    # a negative seed fails in numpy's generator, after the base model is trained
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct integers of 0 or more, e.g. 0,1,2; got {raw!r}")
    return seeds


def _csv(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
