"""A throw-away PostgreSQL cluster (initdb + pg_ctl on a free port in a temporary folder), for tests and benchmarks.

    with PgCluster.start() as pg:          # PgUnavailable (with the reason) when it cannot be started
                                           # durable=True: fsync on, as a real server (for benchmarks)
        url = pg.create_database("t1")     # postgresql+psycopg://digitlab@127.0.0.1:PORT/t1

PostgreSQL refuses to run as root: as root the cluster runs as the `postgres` user (what Debian's package makes),
else as `nobody`, through runuser. The binaries are found on $PATH, then in /usr/lib/postgresql/<version>/bin.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER = "digitlab"  # the cluster's superuser (trust authentication, on 127.0.0.1 only)


class PgUnavailable(RuntimeError):
    """PostgreSQL cannot be started here; the message says why."""


def find_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]), reverse=True)
    return versions[0].parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgCluster:
    root: Path
    port: int
    bin: Path
    prefix: list[str]  # runuser -u USER -- (as root), else nothing
    durable: bool = False  # fsync on (off by default: a test's data need not survive a power cut)

    @classmethod
    def start(cls, *, durable: bool = False) -> PgCluster:
        bindir = find_binaries()
        if bindir is None:
            raise PgUnavailable("no initdb and pg_ctl on $PATH or in /usr/lib/postgresql/*/bin (install postgresql)")
        prefix: list[str] = []
        root = Path(tempfile.mkdtemp(prefix="digitlab-pg-"))  # under /tmp: readable by the cluster's user
        if os.geteuid() == 0:
            user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
            if user is None or shutil.which("runuser") is None:
                raise PgUnavailable("running as root with neither a postgres nor a nobody user (or no runuser)")
            os.chown(root, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
            prefix = ["runuser", "-u", user, "--"]
        cluster = cls(root, _free_port(), bindir, prefix, durable)
        try:
            cluster._initdb_and_start()
        except PgUnavailable:
            cluster.stop()
            raise
        return cluster

    def _run(self, *args: str, timeout: float = 120) -> None:
        try:
            res = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise PgUnavailable(f"{Path(args[0]).name} failed: {e}") from None
        if res.returncode != 0:
            raise PgUnavailable(f"{Path(args[0]).name} failed ({res.returncode}): {(res.stderr or res.stdout)[-1500:]}")

    def _initdb_and_start(self) -> None:
        data = self.root / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        opts += "" if self.durable else " -c fsync=off"
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.root / "log"), "-o", opts, "-w",
                      "-t", "60", "start")  # fmt: skip
        except PgUnavailable as e:
            log = self.root / "log"
            raise PgUnavailable(f"{e} {log.read_text()[-1500:] if log.is_file() else ''}") from None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        data = self.root / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
