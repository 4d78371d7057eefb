"""The whole platform on this machine: embedded PostgreSQL and broker, migrations, and the API,
relay, worker, ledger and SMS sender as supervised child processes, each connecting as its own
database role. Used by `gongpei up` and by the test tiers."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from entrypoints.capacity import CapacityWatch
from infra.capacity import CapacityLimits
from infra.db import migrate
from infra.embedded import (
    STATE_FILE,
    EmbeddedBroker,
    EmbeddedError,
    EmbeddedPostgres,
    free_port,
    parent_death_signal,
    pid_running,
    read_state,
    stop_stray_broker,
    write_state,
)
from infra.settings import DEMO_COUNTY, Settings, capacity_from_env

log = logging.getLogger("gongpei.platform")
SERVICES = ("relay", "worker", "ledger", "sms", "api")
# The local SMS gateways, primary and failover, each speaking its provider's SMS API.
GATEWAYS = ("aliyun", "tencent")
RETENTION_EVERY = 3600.0  # seconds between two runs of the phone retention under `gongpei up`
# Restart backoff: a part that dies after running STABLE_AFTER seconds is restarted at once; one
# that dies sooner waits 1, 2, 4 … up to MAX_BACKOFF seconds, so a crash loop does not spin.
STABLE_AFTER = 60.0
MAX_BACKOFF = 30.0
__all__ = ["STATE_FILE", "Platform", "StateNotFound", "pid_running", "read_state"]


class StateNotFound(RuntimeError):
    """No embedded platform is running from the state folders looked at."""


def find_running_state(candidates: list[Path]) -> tuple[Path, dict[str, object]]:
    """The first of `candidates` an embedded platform is running from, with what it wrote
    there; StateNotFound saying what was found instead."""
    seen = []
    for state_dir in candidates:
        state = read_state(state_dir)
        if state is None:
            seen.append(f"{state_dir}: no platform has run there")
        elif state.get("stopped_at") or not pid_running(state.get("supervisor_pid")):  # type: ignore[arg-type]
            seen.append(f"{state_dir}: the platform there is not running"
                        + (f" (stopped {state['stopped_at']})" if state.get("stopped_at") else ""))
        else:
            return state_dir.resolve(), state
    raise StateNotFound("; ".join(seen) or "no state folder to look at")


@dataclass
class Watch:
    """One supervised part's record: restarts, since when it is down, when to try again."""

    restarts: int = 0
    down_since: datetime | None = None
    up_at: float = field(default_factory=time.monotonic)  # monotonic time of the last start
    delay: float = 0.0
    retry_at: float = 0.0
    last_error: str | None = None  # why the last restart failed, while it stays down

    def noticed_down(self, now: float) -> bool:
        """Record that the part is down (True the first time it is noticed)."""
        if self.down_since is not None:
            return False
        self.down_since = datetime.now(UTC)
        self.delay = 0.0 if now - self.up_at >= STABLE_AFTER else self._longer()
        self.retry_at = now + self.delay
        return True

    def _longer(self) -> float:
        return min(MAX_BACKOFF, max(1.0, self.delay * 2))

    def start_failed(self, now: float, error: str) -> None:
        self.delay = self._longer()
        self.retry_at = now + self.delay
        self.last_error = error

    def restarted(self, now: float) -> None:
        self.restarts += 1
        self.down_since = self.last_error = None
        self.up_at = now

    def as_state(self) -> dict[str, object]:
        return {"restarts": self.restarts,
                "down_since": self.down_since.isoformat() if self.down_since else None,
                "last_error": self.last_error}


class RestartCounter:
    """`gongpei_process_restarts_total{process}` for the API's /metrics. The supervisor is no
    multiprocess child itself (prometheus_client picks its mode once, at import, and the folder
    is the platform's), so it writes the family's samples into that folder as a child would."""

    def __init__(self, folder: Path, names: list[str]) -> None:
        from prometheus_client.mmap_dict import MmapedDict

        self._file = MmapedDict(str(folder / f"counter_supervisor-{os.getpid()}.db"))
        for name in names:  # at 0 from the start: increase() then sees the first restart
            self.set(name, 0)

    def set(self, name: str, value: int) -> None:
        from prometheus_client.mmap_dict import mmap_key

        from projections.metrics import PROCESS_RESTARTS as family

        key = mmap_key(family._name, family._name + "_total", list(family._labelnames), [name],
                       family._documentation)
        self._file.write_value(key, float(value), time.time())

    def close(self) -> None:
        self._file.close()


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    watch: Watch = field(default_factory=Watch)

    @property
    def restarts(self) -> int:
        return self.watch.restarts

    def start(self) -> None:
        self._forget_metrics()  # the previous process's, if it died on its own
        with open(self.log_path, "ab") as out:
            # A supervisor that dies without cleaning up (SIGKILL) takes its children along:
            # SIGKILL, because no one is left to escalate a SIGTERM a child does not finish (the
            # worker's shutdown hangs when the broker went with the supervisor). Every service
            # is crash-safe by design: what it acknowledged is committed, what it did not is
            # redone from the journal or the stored offsets.
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=parent_death_signal(signal.SIGKILL))  # noqa: PLW1509

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._forget_metrics()

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(5)
            self._forget_metrics()

    def _forget_metrics(self) -> None:
        """Drop a gone process's live gauges (a worker's lag, …): prometheus_client counts every
        file in the folder until told the process is dead, so a stopped worker's last lag would
        stay in the sum across workers."""
        folder = self.env.get("PROMETHEUS_MULTIPROC_DIR")
        if self.proc is not None and not self.alive() and folder:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(self.proc.pid, folder)


@dataclass
class Platform:
    """Start with `start()`, stop with `stop()`; everything lives under `state_dir`."""

    state_dir: Path
    county_file: Path = DEMO_COUNTY
    api_port: int = 0
    services: tuple[str, ...] = SERVICES
    topic_partitions: int = 4
    pg: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None
    settings: Settings | None = None
    children: dict[str, Child] = field(default_factory=dict)
    gateway_args: tuple[str, ...] = ()   # extra options for the local SMS gateways (failure rates…)
    primary_gateway_args: tuple[str, ...] = ()  # and for the primary only (failover drills)
    # How long the local gateways take to answer, "min,max" seconds: Aliyun and Tencent answer
    # a county server in ~0.1–0.3 s. None: GONGPEI_SMS_GATEWAY_LATENCY, else that.
    sms_gateway_latency: str | None = None
    gateway_ports: dict[str, int] = field(default_factory=dict)
    settings_changes: dict[str, object] = field(default_factory=dict)  # e.g. a test's horizon
    # Stream workers in the consumer group ("worker", "worker-2", …): they split the partitions.
    workers: int = 1
    # Another county's platform whose PostgreSQL server and broker this one uses (side by side:
    # its own database `database`, its own Kafka namespace); the owner starts and stops them.
    share_with: Platform | None = None
    database: str = "gongpei"
    _retention_at: float = field(default=float("-inf"), repr=False)  # monotonic; -inf: due now
    started_at: datetime | None = None
    # PostgreSQL's and the broker's records (the children keep their own).
    watches: dict[str, Watch] = field(default_factory=lambda: {"postgres": Watch(),
                                                               "broker": Watch()})
    restart_counter: RestartCounter | None = None
    capacity: CapacityWatch | None = None  # disk and memory, sampled by supervise_once

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _secret(self, name: str) -> str:
        path = self.state_dir / name
        if not path.exists():
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        return path.read_text().strip()

    def _pii_master_key(self) -> tuple[str, str]:
        """The master keypair phones are sealed to (public, private; base64), generated once
        into the state folder, readable by its owner only."""
        import base64

        from infra.pii import generate_keypair, public_of

        path = self.state_dir / "pii-master-key"
        if not path.exists():
            _, private = generate_keypair()
            path.touch(mode=0o600)
            path.write_text(base64.b64encode(private).decode())
        private = base64.b64decode(path.read_text().strip())
        return base64.b64encode(public_of(private)).decode(), base64.b64encode(private).decode()

    def _app_password(self) -> str:
        # The service roles are the server's, not a database's: one password for all counties.
        return self.share_with._app_password() if self.share_with else self._secret("app-password")

    @property
    def worker_names(self) -> list[str]:
        """The stream workers' child names: "worker", then "worker-2" … "worker-N"."""
        if "worker" not in self.services:
            return []
        return ["worker", *(f"worker-{i}" for i in range(2, self.workers + 1))]

    def assignment(self, worker: str) -> list[tuple[str, int]] | None:
        """The partitions a worker said it holds at its last assignment (None: none yet)."""
        from streams.assignment import read_assignment

        return read_assignment(self.state_dir / f"{worker}.ready")

    @property
    def receipt_url(self) -> str:
        assert self.settings is not None
        return f"{self.api_url}/v1/sms/receipts/aliyun?key={self.settings.sms_receipt_key}"

    def gateway_log(self, name: str) -> Path:
        """The JSON-lines log of every SMS the local gateway `name` accepted."""
        return self.state_dir / "logs" / f"sms-gateway-{name}.jsonl"

    def _clear_earlier_run(self) -> None:
        """Refuse to start over a state folder a live supervisor runs from; stop what a dead one
        left behind (its broker; PostgreSQL's leftovers are EmbeddedPostgres.start's to stop)."""
        earlier = read_state(self.state_dir)
        if not earlier:
            return
        pid = earlier.get("supervisor_pid")
        if not earlier.get("stopped_at") and pid != os.getpid() and pid_running(pid):  # type: ignore[arg-type]
            raise RuntimeError(f"a platform is already running from {self.state_dir} (supervisor"
                               f" pid {pid}); stop it first")
        broker = earlier.get("broker")
        if earlier.get("shared_with"):
            broker = None  # another platform's broker, which may well still be serving it
        if isinstance(broker, dict) and stop_stray_broker(broker.get("pid"), broker.get("port")):
            log.warning("stopped the broker (pid %s) an earlier run left behind", broker["pid"])
        processes = earlier.get("processes")
        for name, info in (processes.items() if isinstance(processes, dict) else ()):
            if isinstance(info, dict) and self._stop_stray_child(info.get("pid")):
                log.warning("stopped %s (pid %s) an earlier run left behind", name, info["pid"])

    def _stop_stray_child(self, pid: object) -> bool:
        """SIGKILL a child an earlier supervisor of this state folder left running, if that pid
        is still one (its environment names this folder; a reused pid is left alone)."""
        if not pid_running(pid):
            return False
        assert isinstance(pid, int)
        try:
            environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            return False
        if f"GONGPEI_STATE_DIR={self.state_dir}".encode() not in environ:
            return False
        os.kill(pid, signal.SIGKILL)
        return True

    def start(self, timeout: float = 60.0) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        self._clear_earlier_run()
        metrics_dir = self.state_dir / "metrics"
        metrics_dir.mkdir(exist_ok=True)
        for stale in metrics_dir.glob("*.db"):
            stale.unlink()
        if self.share_with is not None:
            self.pg, self.broker = self.share_with.pg, self.share_with.broker
            assert self.pg is not None and self.broker is not None, "start the owner first"
            asyncio.run(_create_database(self.pg.superuser_dsn, self.database))
        else:
            self.pg = EmbeddedPostgres(self.state_dir / "pg")
            self.pg.start()
            self.broker = EmbeddedBroker(log_path=self.state_dir / "logs" / "broker.log")
            self.broker.start()
        self.api_port = self.api_port or free_port()
        self.gateway_ports = {name: self.gateway_ports.get(name) or free_port() for name in GATEWAYS}
        pii_public, pii_private = self._pii_master_key()
        self.settings = Settings(
            database_url=self.pg.superuser_dsn.rsplit("/", 1)[0] + "/" + self.database,
            app_password=self._app_password(),
            kafka_bootstrap_servers=self.broker.bootstrap, county_file=self.county_file,
            profile="embedded", topic_partitions=self.topic_partitions,
            sms_providers=",".join(f"{name}=http://127.0.0.1:{port}"
                                   for name, port in self.gateway_ports.items()),
            sms_access_key_id="LTAI" + self._secret("sms-access-key-id")[:16],
            sms_access_key_secret=self._secret("sms-access-key-secret"),
            sms_tencent_secret_id="AKID" + self._secret("sms-access-key-id")[:16],
            sms_tencent_secret_key=self._secret("sms-access-key-secret"),
            sms_tencent_app_id="1400000001",
            sms_receipt_key=self._secret("sms-receipt-key"),
            sms_query_after_seconds=2.0,  # the local gateways record before they answer
            # The platform keeps the private key for the commands it runs itself (tests, CLI);
            # of its children only `sms` gets it (to_env withholds it).
            pii_public_key=pii_public, pii_private_keys=pii_private,
        ).with_(**capacity_from_env(dict(os.environ)), **self.settings_changes)
        asyncio.run(migrate(self.settings.database_url, self.settings.app_password))
        # The keys that open phone numbers go to the SMS service alone, never by inheritance.
        base = {**{k: v for k, v in os.environ.items() if k != "GONGPEI_PII_PRIVATE_KEYS"},
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
                "GONGPEI_STATE_DIR": str(self.state_dir), "PYTHONUNBUFFERED": "1"}

        def env_for(service: str | None) -> dict[str, str]:
            # Each child holds its own database role's password and no other, as in production.
            env = {**base, **self.settings.for_service(service).to_env()}  # type: ignore[union-attr]
            return {**env, **self.settings.pii_private_env()} if service == "sms" else env  # type: ignore[union-attr]

        latency = self.sms_gateway_latency or os.environ.get("GONGPEI_SMS_GATEWAY_LATENCY",
                                                             "0.1,0.3")
        # Each gateway enforces its account's rate, the one the sender paces itself to.
        qps = self.settings.sms_qps_by_provider()
        for name, port in self.gateway_ports.items():
            argv = [sys.executable, "-m", "entrypoints.sms_gateway", "--port", str(port),
                    "--latency", latency, "--qps", str(qps[name]),
                    "--county", str(self.county_file), "--log", str(self.gateway_log(name)),
                    "--callback", self.receipt_url, "--callback-tencent",
                    self.receipt_url.replace("/aliyun?", "/tencent?"),
                    "--tencent-app-id", self.settings.sms_tencent_app_id, *self.gateway_args,
                    *(self.primary_gateway_args if name == GATEWAYS[0] else ())]
            self.children[f"sms-gateway-{name}"] = Child(
                f"sms-gateway-{name}", argv, env_for(None), self.state_dir / "logs" / f"sms-gateway-{name}.log")
        for service in self.services:
            for name in self.worker_names if service == "worker" else [service]:
                argv = [sys.executable, "-m", "entrypoints.cli", service]
                if service == "api":
                    argv += ["--port", str(self.api_port)]
                if service == "worker":
                    argv += ["--name", name]
                    (self.state_dir / f"{name}.ready").unlink(missing_ok=True)
                self.children[name] = Child(name, argv, env_for(service),
                                            self.state_dir / "logs" / f"{name}.log")
        self.restart_counter = RestartCounter(metrics_dir, [*self.watches, *self.children])
        self.capacity = CapacityWatch(metrics_dir, CapacityLimits(
            self.settings.disk_warn_free_mb, self.settings.broker_memory_warn_percent))
        self.check_capacity()
        for child in self.children.values():
            child.start()
        self.wait_ready(timeout)
        self.started_at = datetime.now(UTC)
        self.write_state()

    def write_state(self, stopped: bool = False) -> None:
        """Tell the operator's commands where this platform is and how its processes are
        (STATE_FILE, owner-only: it holds the schema owner's URL and the roles' secret)."""
        assert self.settings is not None and self.pg is not None and self.broker is not None
        state = {
            "supervisor_pid": os.getpid(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "stopped_at": datetime.now(UTC).isoformat() if stopped else None,
            "api_url": self.api_url,
            "county_file": str(self.county_file),
            # PostgreSQL and the broker below are this platform's, or the one it shares them with.
            "shared_with": str(self.share_with.state_dir) if self.share_with else None,
            "env": self.settings.to_env(),
            "postgres": {"pid": self.pg.proc.pid if self.pg.proc else None, "port": self.pg.port,
                         **self.watches["postgres"].as_state()},
            "broker": {"pid": self.broker.proc.pid if self.broker.proc else None,
                       "port": self.broker.port, **self.watches["broker"].as_state()},
            "processes": {name: {"pid": c.proc.pid if c.proc else None, **c.watch.as_state(),
                                 "log": str(c.log_path)} for name, c in self.children.items()},
            "capacity": self.capacity.as_state() if self.capacity else None,
        }
        write_state(self.state_dir, state)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the API answers and the worker has its partitions."""
        deadline = time.monotonic() + timeout
        pending = set(self.children)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                child = self.children[name]
                if not child.alive():
                    raise RuntimeError(f"{name} exited during start-up; see {child.log_path}")
                if self._ready(name):
                    pending.discard(name)
            time.sleep(0.1)
        if pending:
            raise RuntimeError(f"not ready within {timeout:.0f} s: {', '.join(sorted(pending))}")

    def _ready(self, name: str) -> bool:
        if name == "api":
            return self._api_healthy()
        if name in self.worker_names:
            return bool(self.assignment(name))  # it holds partitions, at their stored offsets
        if name.startswith("sms-gateway-"):
            return self._healthy(f"http://127.0.0.1:{self.gateway_ports[name[12:]]}/_gateway/sent")
        return True  # relay and ledger are ready once running: they catch up from PostgreSQL

    def _api_healthy(self) -> bool:
        return self._healthy(f"{self.api_url}/healthz")

    @staticmethod
    def _healthy(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def apply_retention(self, now: datetime | None = None) -> list[str]:
        """Destroy the phone keys of every month older than the county's retention (crypto-
        shredding, as `gongpei pii shred` does); returns the months shredded. The supervisor runs
        it at start and hourly, so a number becomes unreadable on time without anyone's cron."""
        from infra.county_file import load_county
        from infra.db import _init_connection
        from projections.pii_admin import retention_cutoff, shred

        assert self.settings is not None
        county = load_county(self.county_file)
        at = now or datetime.now(UTC)

        async def go() -> list[str]:
            import asyncpg

            assert self.settings is not None
            conn = await asyncpg.connect(self.settings.database_url)  # the schema owner
            try:
                await _init_connection(conn)
                cutoff = retention_cutoff(at, county.phone_retention_days,
                                          county.utc_offset_minutes)
                done = await shred(conn, cutoff, at, county.utc_offset_minutes)
            finally:
                await conn.close()
            if done.periods:
                log.info("retention (%s days): %s", county.phone_retention_days,
                         "; ".join(done.lines()))
            return done.periods

        self._retention_at = time.monotonic()
        return asyncio.run(go())

    def supervise_once(self) -> list[str]:
        """Restart whatever died — PostgreSQL, the broker, any child — with backoff, and apply
        the phone retention hourly; returns the names restarted. Never raises: a part that will
        not start is tried again later, and the rest keep running."""
        restarted = []
        for name, watch, alive, restart in self._parts():
            if alive():
                continue
            now = time.monotonic()
            if watch.noticed_down(now):
                log.warning("%s is down after running %.0f s; restarting%s", name,
                            now - watch.up_at, f" in {watch.delay:.0f} s" if watch.delay else "")
                self._write_state_quietly()  # the operator sees it down while we restart it
            if now < watch.retry_at:
                continue
            try:
                restart()
            except Exception as exc:  # noqa: BLE001 - whatever it was, try again later
                watch.start_failed(time.monotonic(), f"{type(exc).__name__}: {exc}")
                log.warning("%s did not start (%s); next try in %.0f s", name, watch.last_error,
                            watch.delay)
                self._write_state_quietly()
                continue
            watch.restarted(time.monotonic())
            if self.restart_counter is not None:
                self.restart_counter.set(name, watch.restarts)
            restarted.append(name)
        if self.check_capacity() or restarted:
            self._write_state_quietly()
        if "postgres" not in restarted and time.monotonic() - self._retention_at > RETENTION_EVERY:
            try:
                self.apply_retention()
            except Exception as exc:  # noqa: BLE001 - a database away for a moment: next hour
                self._retention_at = time.monotonic()
                log.warning("retention not applied this hour: %s", type(exc).__name__)
        return restarted

    def check_capacity(self, now: bool = False) -> bool:
        """Sample disk and memory when due (or `now`); True if the state file should say it
        anew (when `now`, it is written here)."""
        if self.capacity is None or self.pg is None or not (
                now or self.capacity.due(time.monotonic())):
            return False
        broker = self.broker.proc.pid if self.broker and self.broker.alive() and \
            self.broker.proc else None
        changed = self.capacity.check(self.pg.data_dir, broker)
        if now:
            self._write_state_quietly()
        return changed

    def _parts(self) -> list[tuple[str, Watch, Callable[[], bool], Callable[[], None]]]:
        """What is supervised, in the order to restart it: PostgreSQL and the broker before the
        processes that use them."""
        assert self.pg is not None and self.broker is not None
        own = [("postgres", self.watches["postgres"], self.pg.alive, self._start_postgres),
               ("broker", self.watches["broker"], self.broker.alive, self._start_broker)]
        return [*(own if self.share_with is None else []),  # shared ones: the owner's to restart
                *((c.name, c.watch, c.alive, c.start) for c in self.children.values())]

    def _start_postgres(self) -> None:
        """A new server over the same data folder and port: it runs crash recovery itself."""
        assert self.pg is not None
        pg = EmbeddedPostgres(self.pg.data_dir, port=self.pg.port)
        try:
            pg.start()
        except (EmbeddedError, OSError, subprocess.SubprocessError):
            pg.kill()  # half started: the next try starts from nothing
            raise
        self.pg = pg

    def _start_broker(self) -> None:
        """A new, empty broker on the same port: the relay notices the loss and re-publishes."""
        assert self.broker is not None
        broker = EmbeddedBroker(port=self.broker.port, log_path=self.broker.log_path)
        try:
            broker.start()
        except (EmbeddedError, OSError, subprocess.SubprocessError):
            broker.kill()
            raise
        self.broker = broker

    def _write_state_quietly(self, stopped: bool = False) -> None:
        try:
            self.write_state(stopped)
        except OSError as exc:  # a full disk must not stop the supervisor
            log.warning("could not write %s: %s", STATE_FILE, exc)

    def restart_service(self, name: str, *, kill: bool = False) -> None:
        child = self.children[name]
        child.kill() if kill else child.stop()
        if name in self.worker_names:
            (self.state_dir / f"{name}.ready").unlink(missing_ok=True)
        child.start()
        self._write_state_quietly()

    def restart_broker(self) -> None:
        """Crash the in-memory broker and start a new, empty one on the same port."""
        assert self.broker is not None and self.share_with is None, "the owner's to restart"
        self.broker.kill()
        self.broker = EmbeddedBroker(port=self.broker.port, log_path=self.broker.log_path)
        self.broker.start()
        self._write_state_quietly()

    def restart_postgres(self) -> None:
        """Crash PostgreSQL (SIGKILL) and start it again over the same data folder."""
        assert self.pg is not None and self.share_with is None, "the owner's to restart"
        self.pg.kill()
        self.pg = EmbeddedPostgres(self.pg.data_dir, port=self.pg.port)
        self.pg.start()
        self._write_state_quietly()

    def stop(self) -> None:
        if self.settings is not None and self.pg is not None and self.broker is not None:
            self._write_state_quietly(stopped=True)
        for name in ("api", "sms", *self.worker_names, "ledger", "relay",
                     *(f"sms-gateway-{g}" for g in GATEWAYS)):
            if name in self.children:
                self.children[name].stop()
        if self.broker and self.share_with is None:
            self.broker.stop()
        if self.pg and self.share_with is None:
            self.pg.stop()
        if self.restart_counter is not None:
            self.restart_counter.close()
            self.restart_counter = None
        if self.capacity is not None:
            self.capacity.close()
            self.capacity = None


async def _create_database(owner_dsn: str, name: str) -> None:
    """Create database `name` on the server of `owner_dsn` unless it exists (a county of its own
    beside others on one PostgreSQL server)."""
    import asyncpg

    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a plain database name: {name!r}")
    conn = await asyncpg.connect(owner_dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
