"""A private PostgreSQL server for one test session, in a temporary data directory, on a free loopback port.

Made with the system's `initdb` and `postgres` (Debian's `postgresql`
package, which `scripts/test` installs when missing). PostgreSQL refuses to
run as root: as root, the server runs as the `postgres` user the package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.support.label_studio import free_port, stop_process

START_TIMEOUT = 60
USER = "ale"


@dataclass
class PostgresServer:
    port: int
    process: subprocess.Popen
    datadir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database. -> its URL."""
        import psycopg

        name = f"ale_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.datadir, ignore_errors=True)


def binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: install PostgreSQL (e.g. apt-get install postgresql)")
    return found


def start_postgres() -> PostgresServer:
    as_user: list[str] = []
    datadir = Path(tempfile.mkdtemp(prefix="ale-postgres-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(datadir, "postgres")
    subprocess.run(
        [*as_user, binary("initdb"), "-D", str(datadir / "data"), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    port = free_port()
    process = subprocess.Popen(
        [
            *as_user,
            binary("postgres"),
            "-D", str(datadir / "data"),
            "-p", str(port),
            "-h", "127.0.0.1",
            "-k", str(datadir),  # its socket stays in the temporary directory
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = PostgresServer(port, process, datadir)
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            psycopg.connect(server.url(), connect_timeout=2).close()
            return server
        except psycopg.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"PostgreSQL on port {port} did not start")
            time.sleep(0.2)
