"""A throwaway PostgreSQL cluster for tests: initdb into a temp dir, a free port, torn down after.

Uses the server binaries on PATH (Debian's ``postgresql`` package; scripts/test.sh installs it
when missing). PostgreSQL refuses to run as root, so under root the cluster runs as the
``postgres`` system user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recstack.tools.procs import free_port


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / name).exists():
            return str(base / name)
    raise FileNotFoundError(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Yield the DSN of a fresh, running cluster; stop and delete it afterwards."""
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    # Directly under the system temp dir: pytest's per-user tmp is not traversable by the
    # postgres user.
    tmp = Path(tempfile.mkdtemp(prefix="recstack-pg-"))
    data = tmp / "pgdata"
    if as_root:
        shutil.chown(tmp, "postgres")
    port = free_port()
    subprocess.run(
        [*prefix, _bin("initdb"), "-D", str(data), "-U", "recstack", "-A", "trust", "--no-sync"],
        check=True,
        capture_output=True,
    )
    log = tmp / "pg.log"
    subprocess.run(
        [
            *prefix,
            _bin("pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-o",
            f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        dsn = f"postgresql://recstack@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 30
        import psycopg

        while True:
            try:
                psycopg.connect(dsn).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield dsn
    finally:
        subprocess.run(
            [*prefix, _bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(tmp, ignore_errors=True)
