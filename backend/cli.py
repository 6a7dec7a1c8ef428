"""`ale`: the command line. `ale serve` runs the backend under gunicorn."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from .bench import cli as bench_cli
from .errors import AleError, ConfigError
from .settings import Settings, shown_setting, without_password

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 9090
DEFAULT_WORKERS = 1  # each worker holds its own copy of the model
DEFAULT_THREADS = 4
#: Label Studio waits up to 100 s for /predict; give the worker a little more.
DEFAULT_TIMEOUT = 120
#: Commands that load the model: their settings are checked before anything starts.
MODEL_COMMANDS = ("serve", "worker", "sync", "rank")


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (`--workers 0` would listen and never answer, `--limit 0` list everything)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: 0 or more (epochs 0: the training recipe decides)."""
    return _int_at_least(text, 0, "0 or a positive integer")


def _int_at_least(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < least:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def port_number(text: str) -> int:
    """argparse type: a port a server can listen on (gunicorn and the socket module fail on others with a traceback)."""
    from .label_studio_server import PORTS

    try:
        value = int(text)
    except ValueError:
        value = None
    if value not in PORTS:
        raise argparse.ArgumentTypeError(f"must be a port number from {PORTS.start} to {PORTS.stop - 1}, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Every `ale` command and option (no side effects: importing a command's code waits for main)."""
    parser = argparse.ArgumentParser(prog="ale", description="Active-learning ML backend for Label Studio")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the ML backend over HTTP (gunicorn)")
    serve.add_argument("--host", default=DEFAULT_HOST)
    serve.add_argument("--port", type=port_number, default=DEFAULT_PORT)
    serve.add_argument("--workers", type=positive_int, default=DEFAULT_WORKERS, help="processes, each with its own model")
    serve.add_argument("--threads", type=positive_int, default=DEFAULT_THREADS, help="request threads per process")
    serve.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="seconds before a stuck request is killed")

    worker = commands.add_parser("worker", help="run an rq worker for the train, predict and sync queues (needs REDIS_URL)")
    worker.add_argument(
        "--queues", default="train,predict,sync", help="comma-separated job kinds, in priority order (a GPU box: train); the queues are ADAPTER's, e.g. yolov5-train"
    )
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")

    commands.add_parser("cron", help="enqueue the priority sync every SYNC_INTERVAL seconds (rq cron; needs REDIS_URL)")

    sync = commands.add_parser("sync", help="rank a project's unlabeled tasks and write LS's queue now")
    sync.add_argument("--project", type=int, required=True)
    sync.add_argument("--full", action="store_true", help="rewrite the whole queue even if nothing changed since the last sync")

    rank = commands.add_parser("rank", help="print the top of the queue a sync would write (writes nothing to LS)")
    rank.add_argument("--project", type=int, required=True)
    rank.add_argument("--top", type=positive_int, default=20)

    jobs = commands.add_parser("jobs", help="list queued, running, finished and failed jobs (needs REDIS_URL)")
    jobs.add_argument("--limit", type=positive_int, default=20, help="the newest jobs of each queue and status")

    evaluate = commands.add_parser("evaluate", help="COCO and VOC metrics of a model on a labelled YOLO-format dataset")
    evaluate.add_argument("--weights", required=True, help="model weights (.pt)")
    evaluate.add_argument("--data", required=True, help="dataset yaml or folder (ultralytics layout: images/<split>, labels/<split>, or the folders data.yaml's train:/val: name; --split '' for images/ without splits)")
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("--out", help="also write the metrics as JSON here")

    models = commands.add_parser("models", help="list a project's model versions with their metrics")
    models.add_argument("--project", type=int, required=True)
    models.add_argument("--plot", help="also draw mAP per version into this PNG")
    models.add_argument("--promote", metavar="VERSION", help="serve this stored version (e.g. v0003) from now on; the next sync ranks by it")

    savings = commands.add_parser("savings", help="what the pre-annotations saved: shown boxes accepted, moved, relabelled, deleted, added")
    savings.add_argument("--project", type=int, required=True)
    savings.add_argument("--recompute", action="store_true", help="record every annotated task again from Label Studio first")

    bench_cli.add_parser(commands)

    from . import demo as demo_defaults

    demo = commands.add_parser("demo", help="start Label Studio, the backend and jobs with a ready demo project (Ctrl-C stops)")
    demo.add_argument("--workdir", default="ale-demo", help="folder for Label Studio's data, models and logs (reused by later runs)")
    demo.add_argument("--ls-port", type=port_number, default=demo_defaults.DEFAULT_LS_PORT)
    demo.add_argument("--backend-port", type=port_number, default=demo_defaults.DEFAULT_BACKEND_PORT)
    demo.add_argument("--images", type=positive_int, default=demo_defaults.DEFAULT_IMAGES, help="generated images in the project")
    demo.add_argument("--annotated", type=positive_int, default=demo_defaults.DEFAULT_ANNOTATED, help="of which annotated (the base set)")
    demo.add_argument("--epochs", type=non_negative_int, default=demo_defaults.DEFAULT_EPOCHS, help="epochs of each training (0: the training recipe decides)")

    commands.add_parser("config", help="print the effective settings (secrets hidden)")
    commands.add_parser("adapters", help="list installed model adapters")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        _configure_logging(settings)  # before the model checks: their warnings are logged
        if args.command in MODEL_COMMANDS:
            from .adapters import check_adapter_settings
            from .policies import get_policy

            check_adapter_settings(settings)
            get_policy(settings.policy, settings.policy_seed, settings.cost_per_image, settings.novelty_weight)
            if args.command == "serve" and args.workers > 1 and not settings.redis_url:
                raise ConfigError(
                    "REDIS_URL",
                    f"is needed for --workers {args.workers}: without Redis each worker process keeps its own locks, jobs "
                    "and annotation counts, so two could train or sync one project at once; set REDIS_URL or use --workers 1",
                )
    except AleError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(settings, args, argv)
    except (AleError, ValueError) as exc:  # a typed error, or a boundary's ValueError naming the field
        print(f"ale {args.command}: {exc}", file=sys.stderr)
        logging.getLogger("label_studio_ale.cli").debug("where it was raised (LOG_LEVEL=DEBUG)", exc_info=True)
        return 1
    except Exception as exc:
        reason = _unreachable(exc, settings) or _file_problem(exc)
        if reason is None:
            raise  # a fault, not a situation: its traceback is what to report
        print(f"ale {args.command}: {reason}", file=sys.stderr)
        logging.getLogger("label_studio_ale.cli").debug("where it was raised (LOG_LEVEL=DEBUG)", exc_info=True)
        return 1


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # label-studio-sdk's HTTP client logs every request at INFO
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def _file_problem(exc: Exception) -> str | None:
    """What to say about a file or folder that cannot be read or written (the commands check theirs first); None otherwise.

    Only an OSError that names its file: a refused connection is an OSError too, and says nothing about a path.
    """
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc}: check the path, its folder and their permissions"
    return None


def _unreachable(exc: Exception, settings: Settings) -> str | None:
    """What to say when Redis or Label Studio cannot be reached; None for any other error."""
    import httpx
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return f"cannot reach Redis at REDIS_URL={without_password(settings.redis_url)}: {exc}; is it running?"
    if isinstance(exc, httpx.TransportError):
        return f"cannot reach Label Studio at LABEL_STUDIO_URL={without_password(settings.label_studio_url)}: {exc}; is it running?"
    return None


def _run(settings: Settings, args, argv: list[str] | None) -> int:
    if args.command == "serve":
        return _serve(settings, args)
    if args.command == "worker":
        return _worker(settings, args)
    if args.command == "cron":
        return _cron(settings)
    if args.command == "sync":
        return _sync(settings, args)
    if args.command == "rank":
        return _rank(settings, args)
    if args.command == "jobs":
        return _jobs(settings, args)
    if args.command in ("evaluate", "models", "savings"):
        from .model_commands import run_evaluate, run_models, run_savings

        return {"evaluate": run_evaluate, "models": run_models, "savings": run_savings}[args.command](settings, args)
    if args.command == "bench":
        return bench_cli.run(settings, args, sys.argv[1:] if argv is None else argv)
    if args.command == "demo":
        from .demo import run_demo

        try:
            return run_demo(
                settings, Path(args.workdir), ls_port=args.ls_port, backend_port=args.backend_port,
                images=args.images, annotated=args.annotated, epochs=args.epochs, log=lambda m: print(m, flush=True),
            )
        except AleError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
    if args.command == "config":
        shown = {k: (str(shown_setting(k, v)) if not isinstance(v, tuple) else list(v)) for k, v in asdict(settings).items()}
        for secret in ("label_studio_api_key", "basic_auth_password"):
            shown[secret] = "***" if shown[secret] else ""
        print(json.dumps(shown, indent=2))
        return 0
    if args.command == "adapters":
        from .adapters import available_adapters

        for name, entry_point in sorted(available_adapters().items()):
            print(f"{name}\t{entry_point.value}")
        return 0
    return 1


def exposure_warning(host: str, settings: Settings) -> str | None:
    """The warning `ale serve` logs when it listens beyond loopback with no basic auth, else None."""
    import ipaddress

    if settings.basic_auth_user:
        return None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it resolves to whatever the machine says
        loopback = False
    if loopback:
        return None
    return (
        f"listening on {host} without basic auth: anyone who reaches this port can POST /webhook (start trainings, "
        "write predictions into every project the LABEL_STUDIO_API_KEY reaches) and /setup. Set BASIC_AUTH_USER and "
        "BASIC_AUTH_PASS (and the same in Label Studio's model settings), or listen on 127.0.0.1"
    )


def _serve(settings: Settings, args) -> int:
    from gunicorn.app.base import BaseApplication

    from .app import create_app
    from .memory import return_large_buffers_to_os

    return_large_buffers_to_os()  # before the fork: gunicorn's workers inherit it

    warning = exposure_warning(args.host, settings)
    if warning:
        logging.getLogger("label_studio_ale.serve").warning(warning)

    class Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{args.host}:{args.port}")
            self.cfg.set("workers", args.workers)
            self.cfg.set("threads", args.threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("timeout", args.timeout)
            self.cfg.set("accesslog", "-")

        def load(self):
            # Built in each worker after the fork: torch must not be loaded pre-fork.
            return create_app(settings, warm=True)

    Server().run()
    return 0


def _need_redis(settings: Settings):
    if not settings.redis_url:
        raise SystemExit("REDIS_URL is not set: workers and the scheduler share jobs through Redis, e.g. redis://localhost:6379/0")
    from redis import Redis

    return Redis.from_url(settings.redis_url)


def _worker(settings: Settings, args) -> int:
    from rq import Queue

    from .memory import return_large_buffers_to_os
    from .worker import AleWorker, wait_for_redis

    return_large_buffers_to_os()
    redis = _need_redis(settings)
    from .jobqueue import QUEUES, queue_name

    kinds = [kind.strip() for kind in args.queues.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in QUEUES]
    if unknown or not kinds:
        raise SystemExit(f"--queues takes job kinds among {','.join(QUEUES)}, got {args.queues!r}")
    # The worker takes this stack's queues only (ADAPTER): jobs load its framework.
    queues = [Queue(queue_name(settings.adapter, kind), connection=redis) for kind in kinds]
    wait_for_redis(redis)
    # A SimpleWorker runs jobs in this process: no fork after torch has started
    # its threads (a forked child would hang), and the model stays loaded.
    worker = AleWorker(queues, connection=redis)
    worker.work(burst=args.burst, with_scheduler=True)
    return 0


def _cron(settings: Settings) -> int:
    cron_scheduler(settings, _need_redis(settings)).start()
    return 0


def cron_scheduler(settings: Settings, connection):
    """`ale cron`'s scheduler: sync_all every SYNC_INTERVAL seconds, never a second one while one still waits."""
    from .jobqueue import JOB_TIMEOUT, QUEUE_SYNC, queue_name
    from .jobs import sync_all
    from .worker import AleCronScheduler

    scheduler = AleCronScheduler(connection=connection, logging_level=settings.log_level)
    # Without a job_timeout rq gives the job its queue's 180 s, and kills a full sync of a large project part-way.
    # named per adapter: rq keeps a cron job's history by name, and two adapters' stacks may share one Redis
    scheduler.register(
        sync_all, queue_name=queue_name(settings.adapter, QUEUE_SYNC), interval=settings.sync_interval, job_timeout=JOB_TIMEOUT,
        name=f"sync_all:{settings.adapter}",
    )
    return scheduler


class _Bars:
    """tqdm progress bars, one per job phase."""

    def __init__(self):
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bars = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        bar = self._bars.get(phase)
        if bar is None:
            bar = self._bars[phase] = self._tqdm(total=total, desc=f"{phase:>8}", unit="task", leave=True)
        bar.total = total
        bar.n = done
        bar.refresh()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


def _with_bars(job, project: int, settings: Settings):
    """Run a job function in the foreground with progress bars."""
    from .runtime import Runtime

    bars = _Bars()
    try:
        return job(project, runtime=Runtime(settings), progress=bars)
    finally:
        bars.close()


def _sync(settings: Settings, args) -> int:
    from functools import partial

    from .jobs import sync_priorities

    result = _with_bars(partial(sync_priorities, full=args.full), args.project, settings)
    status = result["status"]
    if status not in ("synced", "updated", "unchanged", "reshaped"):
        print(f"project {args.project}: {status}: {result.get('reason', '')}")
        return 0
    runs = f" ({result['runs']} runs: requests came in while it ran)" if result.get("runs", 1) > 1 else ""
    if status == "unchanged":
        print(f"project {args.project}: nothing changed since {result['model_version']} was served; nothing written (--full rewrites it)")
    elif status == "reshaped":
        print(f"project {args.project}: the head batch was labelled; {result['written']} of the next tasks re-ordered by the batch extras")
    elif status == "updated":
        print(f"project {args.project}: {len(result['added'])} new tasks added to {result['model_version']} by {result['policy']}{runs}")
    else:
        print(f"project {args.project}: {result['tasks']} tasks ranked by {result['policy']}, now served as {result['model_version']}{runs}")
    if result.get("unusable"):
        print(f"  {result['unusable']} images could not be used and are last in the queue (see the log for why)")
    print("  ".join(f"{name} {seconds:.2f}s" for name, seconds in result["phases"].items()))
    return 0


def _rank(settings: Settings, args) -> int:
    from .jobs import preview_ranking

    preview = _with_bars(preview_ranking, args.project, settings)
    if not preview["trained"]:
        from .adapters import UNTRAINED_NOTE

        print(f"note: {UNTRAINED_NOTE}")
    # entropy: the least certain box's, over classes and background, normalised by log K (design: reported normalised)
    print(f"{'rank':>5} {'task':>8} {'score':>10} {'boxes':>6} {'entropy':>7}  image   (policy {preview['policy']}, model {preview['model']})")
    for row in preview["rows"][: args.top]:
        print(f"{row['rank']:>5} {row['task']:>8} {row['usefulness']:>10.4f} {row['boxes']:>6} {row['entropy']:>7.3f}  {row['image']}")
    return 0


def _jobs(settings: Settings, args) -> int:
    from .jobqueue import recent_jobs

    jobs = recent_jobs(_need_redis(settings), settings.adapter, args.limit)  # an unreachable Redis: no table header
    print(f"{'queue':<14} {'status':<9} {'job':<36} {'function':<40} progress / error")
    for job in jobs:
        print(f"{job['queue']:<14} {job['status']:<9} {job['id']:<36} {job['function']:<40} {job['detail']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
