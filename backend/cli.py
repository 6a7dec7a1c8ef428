"""`ale`: the command line. `ale serve` runs the backend under gunicorn."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict

from .errors import AleError
from .settings import Settings

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 9090
DEFAULT_WORKERS = 1  # each worker holds its own copy of the model
DEFAULT_THREADS = 4
#: Label Studio waits up to 100 s for /predict; give the worker a little more.
DEFAULT_TIMEOUT = 120


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ale", description="Active-learning ML backend for Label Studio")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the ML backend over HTTP (gunicorn)")
    serve.add_argument("--host", default=DEFAULT_HOST)
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="processes, each with its own model")
    serve.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="request threads per process")
    serve.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="seconds before a stuck request is killed")

    commands.add_parser("config", help="print the effective settings (secrets hidden)")
    commands.add_parser("adapters", help="list installed model adapters")

    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except AleError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.command == "serve":
        return _serve(settings, args)
    if args.command == "config":
        shown = {k: (str(v) if not isinstance(v, tuple) else list(v)) for k, v in asdict(settings).items()}
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


def _serve(settings: Settings, args) -> int:
    from gunicorn.app.base import BaseApplication

    from .app import create_app

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


if __name__ == "__main__":
    sys.exit(main())
