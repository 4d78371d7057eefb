"""`gongpei`: the single entry point for operators (and for the platform's own child processes)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from infra.settings import DEMO_COUNTY, SERVICE_ROLES, Settings, SettingsError

log = logging.getLogger("gongpei.cli")
POOL_CLOSE_SECONDS = 10  # a service's database pool, closing: then its connections are cut


def _log_to_stderr(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("httpx", "aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        sys.exit(f"gongpei: {exc}")


def _county(settings: Settings):
    from domain.county import CountyConfigError
    from infra.county_file import load_county

    try:
        return load_county(settings.county_file)
    except CountyConfigError as exc:
        sys.exit(f"gongpei: county configuration is invalid: {exc}")


def cmd_api(args: argparse.Namespace) -> None:
    import uvicorn

    from api.main import create_app

    settings = _settings()
    try:
        settings.pii_public_key_bytes()  # phones are sealed to it before they are journalled
    except SettingsError as exc:
        sys.exit(f"gongpei: {exc}")
    # X-Forwarded-For is believed only from the proxies the settings name (uvicorn would
    # otherwise trust it from loopback): the public lookup's and the limits' client address.
    uvicorn.run(create_app(settings, _county(settings)), host=args.host, port=args.port,
                log_level="warning", access_log=False, limit_concurrency=200,
                forwarded_allow_ips=settings.trusted_proxies or "")


def _serve(settings: Settings, role: str,
           service: Callable[[Any, asyncio.Event], Awaitable[object]], pool_size: int = 3) -> None:
    """Run a database-backed service until SIGTERM or SIGINT, with a pool of its own role."""
    from infra.db import create_pool

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        pool = await create_pool(settings.database_url_for(role), max_size=pool_size)
        try:
            await service(pool, stop)
        finally:
            # A graceful close waits for every connection to be released; one held by a task that
            # died with the service would keep this process alive, doing nothing, and never
            # restarted by the supervisor. So: a bounded wait, then the connections are cut.
            try:
                await asyncio.wait_for(pool.close(), POOL_CLOSE_SECONDS)
            except TimeoutError:
                log.warning("%s: the database pool did not close in %d s; terminated", role,
                            POOL_CLOSE_SECONDS)
                pool.terminate()

    asyncio.run(main())


def cmd_relay(args: argparse.Namespace) -> None:
    from streams.relay import Relay

    settings = _settings()
    _log_to_stderr()
    _serve(settings, "relay", lambda pool, stop: Relay(pool, settings).run(stop))


def cmd_ledger(args: argparse.Namespace) -> None:
    from streams import ledger_service

    settings = _settings()
    county = _county(settings)
    _log_to_stderr()
    if county.settlement is None:
        # Idle rather than exit: a supervisor would only restart it, over and over.
        logging.getLogger("gongpei.ledger").warning("no [settlement] in the county file; idle")
        _serve(settings, "ledger", lambda pool, stop: stop.wait())
    else:
        _serve(settings, "ledger", lambda pool, stop: ledger_service.run(pool, county, stop))


def cmd_sms(args: argparse.Namespace) -> None:
    from datetime import timedelta

    from streams import sms_service
    from streams.sms_providers import AliyunSms, Provider, TencentSms

    settings = _settings()
    county = _county(settings)
    _log_to_stderr()
    providers: list[Provider] = []
    try:
        for name, kind, scheme, host in settings.sms_provider_list():
            if county.sms is None:
                break
            providers.append(
                AliyunSms(name, host, settings.sms_access_key_id, settings.sms_access_key_secret,
                          protocol=scheme) if kind == "aliyun" else
                TencentSms(name, host, settings.sms_tencent_secret_id,
                           settings.sms_tencent_secret_key, settings.sms_tencent_app_id,
                           county.sms, protocol=scheme, threads=settings.sms_concurrency))
    except SettingsError as exc:
        sys.exit(f"gongpei: {exc}")
    if county.sms is None or not providers:
        # Idle rather than exit: a supervisor would only restart it, over and over.
        logging.getLogger("gongpei.sms").warning("no [sms] in the county file or no provider; idle")
        _serve(settings, "sms", lambda pool, stop: stop.wait())
        return
    from infra.pii import Keyring

    keys = Keyring.from_settings(settings, county.utc_offset_minutes, sealing=False)
    if not keys.can_open:
        sys.exit("gongpei: the SMS service needs GONGPEI_PII_PRIVATE_KEYS to open phone numbers")
    try:
        qps = settings.sms_qps_by_provider()
    except SettingsError as exc:
        sys.exit(f"gongpei: {exc}")
    sender = sms_service.Sender(
        county, providers, keys=keys,
        query_after=timedelta(seconds=settings.sms_query_after_seconds),
        concurrency=settings.sms_concurrency, qps=qps)
    _serve(settings, "sms", lambda pool, stop: sms_service.run(pool, county, sender, stop),
           pool_size=sms_service.pool_size(settings.sms_concurrency))


def cmd_sms_gateway(args: argparse.Namespace) -> None:
    from entrypoints import sms_gateway

    sms_gateway.main(args.gateway_args)


def cmd_worker(args: argparse.Namespace) -> None:
    import faust

    from streams.app import create_app

    settings = _settings()
    state = Path(os.environ.get("GONGPEI_STATE_DIR", ".state"))
    # Several workers of one county share its consumer group and split the partitions; each
    # keeps its own Faust folder and says in `<name>.ready` which partitions it holds.
    name = args.name
    app = create_app(settings, _county(settings),
                     data_dir=state / ("faust" if name == "worker" else f"faust-{name}"),
                     ready_file=state / f"{name}.ready")
    worker = faust.Worker(app, loglevel=os.environ.get("GONGPEI_WORKER_LOGLEVEL", "WARN"),
                          quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def cmd_migrate(args: argparse.Namespace) -> None:
    from infra.db import MigrationError, migrate

    settings = _settings()
    try:
        applied = asyncio.run(migrate(settings.database_url, settings.app_password,
                                      role_passwords=settings.role_passwords))
    except (ValueError, MigrationError) as exc:
        sys.exit(f"gongpei: {exc}")
    print("applied: " + (", ".join(applied) or "nothing (up to date)"))


def cmd_role_password(args: argparse.Namespace) -> None:
    """Print one service's database role password, to hand that service alone (as
    GONGPEI_DB_PASSWORD_<SERVICE>) instead of the secret every role's is derived from."""
    try:
        password = _settings().role_password(args.service)
    except SettingsError as exc:
        sys.exit(f"gongpei: {exc}")
    print(f"GONGPEI_DB_PASSWORD_{args.service.upper()}={password}")
    print(f"role {SERVICE_ROLES[args.service]}; shown on request, never stored", file=sys.stderr)


def _when(value: Any) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M")


def _state_candidates(state_dir: str | None) -> list[Path]:
    """Where a running embedded platform may keep its state: --state-dir, else
    GONGPEI_STATE_DIR, ./.state and the repository's .state."""
    if state_dir:
        return [Path(state_dir)]
    found: list[Path] = []
    for path in (os.environ.get("GONGPEI_STATE_DIR"), Path.cwd() / ".state",
                 Path(__file__).resolve().parents[1] / ".state"):
        if path and Path(path).resolve() not in found:
            found.append(Path(path).resolve())
    return found


def _running_platform(state_dir: str | None) -> tuple[Path, dict[str, Any]]:
    from entrypoints.platform import StateNotFound, find_running_state

    try:
        return find_running_state(_state_candidates(state_dir))
    except StateNotFound as exc:
        sys.exit(f"gongpei: no running embedded platform found ({exc}); start one with"
                 " ./bin/up, or set DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS and GONGPEI_APP_PASSWORD")


def _admin_settings(state_dir: str | None) -> Settings:
    """The settings of an operator's command: the environment's when DATABASE_URL is set (and
    no --state-dir is given), else those of the embedded platform running from the state folder
    (`gongpei up` writes them there, owner-only), so nothing needs exporting."""
    if state_dir is None and os.environ.get("DATABASE_URL"):
        return _settings()
    _, state = _running_platform(state_dir)
    try:
        return Settings.from_env(dict(state["env"]))
    except (SettingsError, KeyError, TypeError) as exc:
        sys.exit(f"gongpei: the running platform's state is unreadable: {exc}")


def cmd_token(args: argparse.Namespace) -> None:
    import asyncpg

    from api import auth

    settings = _admin_settings(args.state_dir)
    try:
        expires_in = None if args.action != "create" or args.expires_in is None else (
            auth.parse_expires_in(args.expires_in))
    except ValueError as exc:
        sys.exit(f"gongpei: {exc}")

    async def main() -> None:
        conn = await asyncpg.connect(settings.database_url)  # the schema owner
        try:
            if args.action == "create":
                try:
                    if args.node is not None and args.node not in _county(settings).nodes:
                        raise ValueError(f"--node {args.node!r} is not a node of the county")
                    token_id, token = await auth.create(conn, role=args.role, name=args.name,
                                                        brands=args.brand or [],
                                                        expires_in=expires_in, node_id=args.node)
                except ValueError as exc:
                    sys.exit(f"gongpei: {exc}")
                expires = await conn.fetchval("SELECT expires_at FROM tokens WHERE id = $1",
                                              token_id)
                print(f"token {token_id} ({args.role}, {args.name}, expires "
                      f"{_when(expires) if expires else 'never'} UTC): {token}")
                print("shown once; only its hash is stored", file=sys.stderr)
            elif args.action == "revoke":
                ok = await auth.revoke(conn, args.id)
                print("revoked" if ok else f"no active token {args.id}")
            else:
                print(f"{'id':>5}  {'role':<13} {'name':<24} {'brands':<12} {'state':<8} "
                      f"{'expires (UTC)':<17} last used (UTC)")
                for r in await auth.listing(conn):
                    print(f"{r['id']:>5}  {r['role']:<13} {r['name']:<24} "
                          f"{','.join(r['brands']) or '*':<12} {r['state']:<8} "
                          f"{_when(r['expires_at']) if r['expires_at'] else 'never':<17} "
                          f"{_when(r['last_used_at'])}")
        finally:
            await conn.close()

    asyncio.run(main())


def cmd_access_log(args: argparse.Namespace) -> None:
    import asyncpg

    settings = _settings()

    async def main() -> None:
        conn = await asyncpg.connect(settings.database_url)
        try:
            if args.prune:
                n = await conn.fetchval("SELECT prune_access_log($1)",
                                        settings.access_log_retention_days)
                print(f"pruned {n} access-log entries older than "
                      f"{settings.access_log_retention_days} days")
                return
            rows = await conn.fetch(
                "SELECT at, token_id, token_name, role, method, route, status, duration_ms, client,"
                " requests FROM access_log WHERE ($1::bigint IS NULL OR token_id = $1)"
                " ORDER BY at DESC LIMIT $2", args.token, args.limit)
            for r in reversed(rows):
                who = f"{r['token_id']}:{r['token_name']}({r['role']})" if r["token_id"] else "-"
                print(f"{r['at']:%Y-%m-%dT%H:%M:%S.%f}Z {r['client']:<15} {who:<32} "
                      f"{r['method']:<6} {r['route']:<36} {r['status']} {r['duration_ms']:.1f} ms"
                      + (f" ×{r['requests']}" if r["requests"] > 1 else ""))
        finally:
            await conn.close()

    asyncio.run(main())


def cmd_rebuild(args: argparse.Namespace) -> None:
    """Replay the journal into a projection beside the live one, report the differences table by
    table, and (but for the ledger, or with --check) make it the live model."""
    from streams.rebuild import rebuild_projection, rebuild_sms

    settings = _admin_settings(args.state_dir)
    if args.projection == "sms" and args.check:
        sys.exit("gongpei: the SMS state is rebuilt in place (its decisions are journal events);"
                 " --check is for tracking, sla and ledger")
    if args.projection == "sms":
        report = asyncio.run(rebuild_sms(settings, _county(settings)))
        print("sms: rebuilt in place; the log of provider calls is kept")
    else:
        report = asyncio.run(rebuild_projection(settings, _county(settings), args.projection,
                                                swap=not args.check))
    print(f"{report.projection}: replayed {report.events} journal events"
          + (f", {report.set_aside} set aside (gongpei projections)" if report.set_aside else ""))
    print(f"  {'table':<20} {'live':>9} {'rebuilt':>9} {'only live':>10} {'only rebuilt':>13}")
    for t in report.tables:
        print(f"  {t.table:<20} {t.live:>9} {t.rebuilt:>9} {t.only_live:>10} {t.only_rebuilt:>13}")
    verdict = "identical" if not report.differing else f"{report.differing} rows differ"
    print(f"  {verdict}; " + ("the rebuilt model is now live" if report.swapped
                              else "the live model is unchanged"))
    if report.differing and not report.swapped:
        sys.exit(1)  # a compare-only replay that disagrees with the live model is a finding


def _retry_projection(args: argparse.Namespace) -> None:
    from streams.rebuild import retry_projection

    if args.name is None:
        sys.exit("gongpei: projections retry NAME (tracking, sla or ledger)")
    settings = _admin_settings(args.state_dir)
    report = asyncio.run(retry_projection(settings, _county(settings), args.name))
    print(f"{report.projection}: {report.applied} set-aside events applied"
          f" ({report.duplicate} already in the model), {report.still} still failing")
    if report.still:
        sys.exit(1)  # still set aside, with the new reason: `gongpei projections` lists them


def cmd_projections(args: argparse.Namespace) -> None:
    """Where each projection is, how far behind, and what it set aside (and why); `retry NAME`
    re-applies what NAME set aside (once its reducer is fixed)."""
    if getattr(args, "action", None) == "retry":
        _retry_projection(args)
        return

    async def main() -> None:
        import asyncpg

        settings = _admin_settings(args.state_dir)
        conn = await asyncpg.connect(settings.database_url_for("owner"))
        try:
            last = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM journal")
            rows = await conn.fetch(
                "SELECT consumer, topic, count(*) AS partitions, sum(next_offset) AS next,"
                " max(updated_at) AS at FROM consumer_offsets GROUP BY 1, 2 ORDER BY 1, 2")
            print(f"journal: last seq {last}")
            for r in rows:
                where = (f"journal seq {r['next'] - 1} ({last - r['next'] + 1} behind)"
                         if r["topic"] == "journal"
                         else f"{r['topic']}: {r['partitions']} partitions, {r['next']} read")
                print(f"  {r['consumer']:<10} {where}  (moved {r['at']:%Y-%m-%d %H:%M:%S})")
            aside = await conn.fetch(
                "SELECT projection, topic, partition, position, event_id, reason, set_aside_at"
                " FROM projection_set_aside ORDER BY set_aside_at DESC LIMIT $1", args.limit)
            total = await conn.fetchval("SELECT count(*) FROM projection_set_aside")
            print(f"set aside: {total}")
            for r in aside:
                print(f"  {r['set_aside_at']:%Y-%m-%d %H:%M:%S} {r['projection']:<10}"
                      f" {r['topic']}/{r['partition']}/{r['position']} {r['event_id'] or '-'}:"
                      f" {r['reason']}")
        finally:
            await conn.close()

    asyncio.run(main())


def cmd_topic(args: argparse.Namespace) -> None:
    """Show a topic's messages: partition, offset, key and the decoded event, phones masked."""
    from streams.topic_tail import tail
    from streams.topics import namespaced

    settings = _admin_settings(args.state_dir)
    # A county under a namespace: `parcel-events` is its `<namespace>.parcel-events`.
    ns = settings.kafka_namespace
    topic = args.topic if not ns or args.topic.startswith(f"{ns}.") else namespaced(args.topic, ns)
    try:
        n = asyncio.run(tail(settings.kafka_bootstrap_servers, topic, args.last, args.follow,
                             print))
    except LookupError as exc:
        sys.exit(f"gongpei: {exc}")
    except KeyboardInterrupt:
        return
    print(f"({n} messages)", file=sys.stderr)


def cmd_topics(args: argparse.Namespace) -> None:
    """Show how the cluster's topics differ from the registry, then make them match."""
    from aiokafka.errors import KafkaError

    from streams.topic_admin import topics_apply

    settings = _admin_settings(args.state_dir)
    try:
        code = asyncio.run(topics_apply(settings, dry_run=args.dry_run, tiered=args.tiered,
                                        out=print))
    except (OSError, KafkaError) as exc:
        sys.exit(f"gongpei: cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc}")
    sys.exit(code)


def cmd_status(args: argparse.Namespace) -> None:
    """What an embedded platform runs, where, and how healthy; exit 1 if any part is down."""
    import urllib.error
    import urllib.request

    import asyncpg

    from infra.embedded import parts_down

    state_dir, state = _running_platform(args.state_dir)
    env: dict[str, str] = dict(state["env"])
    api = str(state["api_url"])
    healthy = True
    print(f"Gongpei (embedded) is running since {state['started_at']} (supervisor pid"
          f" {state['supervisor_pid']})")
    print(f"  state     {state_dir}")
    try:
        with urllib.request.urlopen(f"{api}/healthz", timeout=3) as r:
            health = f"/healthz {r.status}"
            healthy &= r.status == 200
    except urllib.error.HTTPError as exc:  # 503: the database does not answer the API
        health, healthy = f"/healthz {exc.code}", False
    except OSError as exc:
        health, healthy = f"/healthz failed ({type(exc).__name__})", False
    print(f"  API       {api}  ({health})")
    manager = state_dir / "demo-tokens" / "manager"
    print(f"  dashboard {api}/dashboard?token="
          + (manager.read_text().strip() if manager.is_file() else "<a manager token>"))
    print(f"  metrics   {api}/metrics\n  county    {state['county_file']}")
    down = parts_down(state)
    parts = {"postgres": state["postgres"], "broker": state["broker"], **dict(state["processes"])}

    def since(part: str) -> str:
        # Down: since when the supervisor noticed (it is restarting it, with backoff).
        if part not in down:
            return ""
        error = dict(parts[part]).get("last_error")  # type: ignore[call-overload]
        return (f"  DOWN since {down[part]}" if down[part] else "  DOWN (not yet noticed)") + (
            f" (last restart: {error})" if error else "")

    healthy &= not down
    for part, what in (("postgres", env["DATABASE_URL"]),
                       ("broker", f"{env['KAFKA_BOOTSTRAP_SERVERS']} (Tansu, in memory)")):
        info = dict(state[part])
        print(f"  {'database' if part == 'postgres' else part:<9} {what}  pid {info.get('pid')}"
              f" {'DOWN' if part in down else 'alive'}, restarts {info.get('restarts', 0)}"
              f"{since(part)}")
    from entrypoints.capacity import status_lines

    for line in status_lines(state.get("capacity")):  # disk and memory, with any WARNING
        print(line)
    print(f"  {'process':<20} {'pid':>8}  {'alive':<5}  restarts  log")
    for name, info in dict(state["processes"]).items():
        print(f"  {name:<20} {info.get('pid') or '-':>8}  {'NO' if name in down else 'yes':<5}"
              f"  {info.get('restarts', 0):>8}  {info.get('log')}{since(name)}")
    from streams.assignment import read_assignment

    for name in dict(state["processes"]):
        if name == "worker" or name.startswith("worker-"):  # how the group split the partitions
            held = read_assignment(state_dir / f"{name}.ready")
            print(f"  {name} holds " + (", ".join(f"{t}/{p}" for t, p in held) if held else
                                        "no partition" if held == [] else "nothing yet"))

    async def relay_lag() -> str:
        conn = await asyncpg.connect(env["DATABASE_URL"], timeout=5)
        try:
            last = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM journal")
            sent = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM relay_cursor")
            return f"relay: journal seq {sent} of {last} published ({last - sent} behind)"
        finally:
            await conn.close()

    try:
        print(asyncio.run(relay_lag()))
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"relay: unknown, the database did not answer ({type(exc).__name__})")
        healthy = False
    else:
        # The projections' positions, exactly as `gongpei projections` shows them.
        os.environ.update(env)
        cmd_projections(argparse.Namespace(limit=args.limit, state_dir=str(state_dir)))
    print("healthy" if healthy else "NOT healthy: see above")
    if not healthy:
        sys.exit(1)


def _normalise_phone(text: str) -> str:
    from domain.phone import is_mobile

    digits = text.strip().replace(" ", "").replace("-", "")
    for prefix in ("+86", "0086", "86"):
        if digits.startswith(prefix) and len(digits) == 11 + len(prefix):
            digits = digits[len(prefix):]
    if not is_mobile(digits):
        sys.exit("gongpei: --phone must be an 11-digit mainland mobile number")
    return digits


def cmd_pii(args: argparse.Namespace) -> None:
    """Keys for phone numbers: a new master keypair, retention, erasure, rotation."""
    import base64

    from infra import pii
    from projections import pii_admin

    if args.action == "keygen":
        public, private = pii.generate_keypair()
        print(f"# master key {pii.master_key_id(public)}: give the public key to the API, the"
              " private key only to the SMS service and to `gongpei pii`")
        print(f"GONGPEI_PII_PUBLIC_KEY={base64.b64encode(public).decode()}")
        print(f"GONGPEI_PII_PRIVATE_KEYS={base64.b64encode(private).decode()}")
        return
    from datetime import UTC, datetime

    import asyncpg

    from infra.db import _init_connection

    settings = _settings()
    county = _county(settings)
    phone = _normalise_phone(args.phone) if args.action == "erase" else ""

    async def main() -> None:
        conn = await asyncpg.connect(settings.database_url)  # the schema owner
        try:
            await _init_connection(conn)
            if args.action == "shred":
                now = datetime.now(UTC)
                before = args.before or pii_admin.retention_cutoff(
                    now, county.phone_retention_days, county.utc_offset_minutes)
                try:
                    done = await pii_admin.shred(conn, before, now, county.utc_offset_minutes)
                except ValueError as exc:
                    sys.exit(f"gongpei: {exc}")
                print(f"shredded every month before {before} (retention"
                      f" {county.phone_retention_days} days)")
            elif args.action == "erase":
                from domain.phone import mask_phone

                done = await pii_admin.erase(conn, phone)
                print(f"erased {mask_phone(phone)}")
            else:
                keys = pii.Keyring.from_settings(settings, county.utc_offset_minutes,
                                                 sealing=False)
                try:
                    periods = await pii_admin.rotate(conn, keys)
                except pii.KeyUnavailable as exc:
                    sys.exit(f"gongpei: {exc}")
                print(f"re-sealed to the newest master key: {', '.join(periods) or 'nothing'}")
                return
            for line in done.lines():
                print(f"  {line}")
        finally:
            await conn.close()

    asyncio.run(main())


def cmd_rollup(args: argparse.Namespace) -> None:
    """Per county and day: parcels, events, legs on time and late, each from its own database."""
    from datetime import date, timedelta

    from domain.county import CountyConfigError
    from infra.county_file import load_county
    from projections.rollup import rollup

    databases = {}
    for item in args.county:
        path, sep, dsn = item.partition("=")
        if not sep or not dsn.startswith(("postgresql://", "postgres://")):
            sys.exit(f"gongpei: {item!r} is not COUNTY_FILE=postgresql://…")
        try:
            county = load_county(Path(path))
        except (CountyConfigError, OSError) as exc:
            sys.exit(f"gongpei: {path}: {exc}")
        databases[county.code] = (county, dsn)
    first = date.fromisoformat(args.day)
    days = [first + timedelta(days=i) for i in range(args.days)]
    rows = asyncio.run(rollup(databases, days))
    print(f"{'county':<12} {'day':<10} {'parcels':>8} {'events':>9} {'on time':>8} {'late':>6} {'ratio':>6}")
    for r in rows:
        ratio = f"{r.on_time_ratio:.1%}" if r.on_time_ratio is not None else "—"
        print(f"{r.county:<12} {r.day.isoformat():<10} {r.parcels:>8} {r.events:>9} {r.on_time:>8}"
              f" {r.late:>6} {ratio:>6}")
    for code in sorted({r.county for r in rows}):
        mine = [r for r in rows if r.county == code]
        print(f"{code:<12} {'total':<10} {sum(r.parcels for r in mine):>8}"
              f" {sum(r.events for r in mine):>9} {sum(r.on_time for r in mine):>8}"
              f" {sum(r.late for r in mine):>6}")


def cmd_up(args: argparse.Namespace) -> None:
    from entrypoints.platform import Platform
    from infra.db import MigrationError

    _log_to_stderr()
    state = Path(args.state_dir).resolve()
    county_file, demo_note = Path(args.county), ""
    if not args.no_demo:
        from loadtest.demo import demo_county_file

        state.mkdir(parents=True, exist_ok=True)
        county_file, demo_note = demo_county_file(state, county_file)
    platform = Platform(state, county_file=county_file, api_port=args.port, workers=args.workers)
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    started = time.monotonic()
    try:
        try:
            platform.start()
        except MigrationError as exc:
            sys.exit(f"gongpei: {exc}")
        assert platform.settings is not None
        demo = None
        if not args.no_demo:
            from loadtest.demo import DemoTraffic

            demo = DemoTraffic(platform, state)
            demo.prepare()
        print(f"\nGongpei is up in {time.monotonic() - started:.1f} s", flush=True)
        print(f"  API       {platform.api_url}\n  API docs  {platform.api_url}/docs")
        print(f"  metrics   {platform.api_url}/metrics\n  state     {state}")
        print(f"  broker    {platform.settings.kafka_bootstrap_servers} (Tansu, in memory)")
        print(f"  database  {platform.settings.database_url}")
        if demo is not None:
            print(f"  tokens    {state / 'demo-tokens'}/<name> (manager, pda-demo, ZTO-brand, …;"
                  " kept across restarts)")
            print(f"  dashboard {platform.api_url}/dashboard?token=$(cat {state}/demo-tokens/manager)")
            print("  demo      a household's parcels every 2 s, most left waiting at the village"
                  " point (--no-demo: none)")
            if demo_note:
                print(f"  demo SMS  {demo_note}")
        print("  status    .venv/bin/gongpei status (and .venv/bin/gongpei token create …: no"
              " settings to export)")
        print("Ctrl-C stops everything.\n", flush=True)
        if demo is not None:
            demo.start()  # on its own thread: the demo never holds up the supervision below
        while not stopping:
            for name in platform.supervise_once():
                log = state / "pg" / "server.log" if name == "postgres" else state / "logs" / f"{name}.log"
                print(f"restarted {name} (see {log})", flush=True)
            for _ in range(10):
                if stopping:
                    break
                time.sleep(0.1)
    finally:
        print("stopping…", flush=True)
        if demo is not None:
            demo.stop()
        platform.stop()
        print("stopped.", flush=True)


def _workers(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"a number of workers from 1 to 64, got {text!r}")
    return int(text)


def _worker_name(text: str) -> str:
    import re

    if not re.fullmatch(r"worker(-[0-9]{1,3})?", text):
        raise argparse.ArgumentTypeError("worker or worker-N")
    return text


def _day(text: str) -> str:
    from datetime import date

    try:
        date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be YYYY-MM-DD") from None
    return text


def _month(text: str) -> str:
    import re

    if not re.fullmatch(r"[0-9]{4}-(0[1-9]|1[0-2])", text):
        raise argparse.ArgumentTypeError("must be YYYY-MM")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gongpei", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the whole platform on the embedded runtime")
    up.add_argument("--state-dir", default=".state")
    up.add_argument("--port", type=int, default=8000, help="API port (0: any free port)")
    up.add_argument("--county", default=str(DEMO_COUNTY))
    up.add_argument("--no-demo", action="store_true", help="do not feed demo traffic")
    up.add_argument("--workers", type=_workers, default=os.environ.get("GONGPEI_WORKERS", "1"),
                    help="stream workers sharing the partitions (default GONGPEI_WORKERS or 1;"
                    " more than the partitions of a topic leaves some idle)")
    up.set_defaults(func=cmd_up)

    api = sub.add_parser("api", help="serve the HTTP API (settings from the environment)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(func=cmd_api)
    sub.add_parser("relay", help="publish the journal to Kafka").set_defaults(func=cmd_relay)
    worker = sub.add_parser("worker", help="run a stream worker (run several: they share the"
                            " partitions)")
    worker.add_argument("--name", default="worker", type=_worker_name,
                        help="this worker's name in the state folder (worker, worker-2, …)")
    worker.set_defaults(func=cmd_worker)
    sub.add_parser("ledger", help="keep the settlement ledger level with the journal").set_defaults(
        func=cmd_ledger)
    sub.add_parser("sms", help="send arrival SMS and reminders").set_defaults(func=cmd_sms)
    gw = sub.add_parser("sms-gateway",
                        help="the local SMS gateway (Aliyun's and Tencent's APIs); see --help",
                        add_help=False)
    gw.add_argument("gateway_args", nargs=argparse.REMAINDER)
    gw.set_defaults(func=cmd_sms_gateway)
    sub.add_parser("migrate", help="create the service roles, apply the schema and grants"
                   ).set_defaults(func=cmd_migrate)
    rp = sub.add_parser("role-password", help="print one service's database role password (for"
                        " GONGPEI_DB_PASSWORD_<SERVICE>)")
    rp.add_argument("service", choices=list(SERVICE_ROLES))
    rp.set_defaults(func=cmd_role_password)

    tok = sub.add_parser("token", help="create, revoke or list tokens")
    tsub = tok.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create")
    create.add_argument("--role", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--brand", action="append", help="repeat for several brands")
    create.add_argument("--node", help="a scanner's node (a village point's keeper records consent"
                        " for the parcels that point serves)")
    create.add_argument("--expires-in", help="30m, 12h, 90d, 2w or never (default by role:"
                        " admin, finance-admin 30d; manager, finance, brand 90d;"
                        " scanner, brand-system 365d)")
    revoke = tsub.add_parser("revoke")
    revoke.add_argument("id", type=int)
    tsub.add_parser("list")
    for action in (create, revoke, tsub.choices["list"]):
        action.add_argument("--state-dir", help="a running `gongpei up`'s state folder (default:"
                            " the environment's settings if DATABASE_URL is set, else"
                            " GONGPEI_STATE_DIR, ./.state or the repository's .state)")
    tok.set_defaults(func=cmd_token)

    st = sub.add_parser("status", help="what an embedded platform runs (pids, restarts), where"
                        " (ports, state folder, dashboard) and how healthy (API, relay lag,"
                        " projections)")
    st.add_argument("--state-dir", help="its state folder (default: GONGPEI_STATE_DIR, ./.state"
                    " or the repository's .state)")
    st.add_argument("--limit", type=int, default=5, help="events set aside to list")
    st.set_defaults(func=cmd_status)

    alog = sub.add_parser("access-log", help="who called what (newest last); --prune drops"
                          " entries older than GONGPEI_ACCESS_LOG_RETENTION_DAYS")
    alog.add_argument("--limit", type=int, default=50)
    alog.add_argument("--token", type=int, help="only this token id")
    alog.add_argument("--prune", action="store_true")
    alog.set_defaults(func=cmd_access_log)

    rebuild = sub.add_parser("rebuild", help="replay the journal into a projection beside the live"
                             " one, report the differences, and make it live (the ledger: compare"
                             " only; its closed periods are final)")
    rebuild.add_argument("projection", choices=["tracking", "sla", "ledger", "sms"])
    rebuild.add_argument("--check", action="store_true",
                         help="compare only; exit 1 if the rebuilt model differs from the live one")
    rebuild.add_argument("--state-dir", help="a running embedded platform's state folder"
                         " (default: found, as for `gongpei token`)")
    rebuild.set_defaults(func=cmd_rebuild)

    topic = sub.add_parser("topic", help="show a Kafka topic's messages (partition, offset, key,"
                           " decoded event; phones masked) on any broker, the embedded one included")
    topic.add_argument("topic", help="parcel-events, vehicle-events, sms-events, ledger-events,"
                       " dead-letter")
    topic.add_argument("--last", type=int, default=10,
                       help="the last N messages of each partition (0: from the beginning)")
    topic.add_argument("--follow", "-f", action="store_true", help="keep printing new messages")
    topic.add_argument("--state-dir", help="a running embedded platform's state folder")
    topic.set_defaults(func=cmd_topic)

    topics = sub.add_parser("topics", help="declare the registry's topics on a cluster")
    topics_sub = topics.add_subparsers(dest="action", required=True)
    tapply = topics_sub.add_parser("apply", help="show how the cluster's topics differ from"
                                   " streams/topics.py, then create topics, add partitions and"
                                   " set configs to match (never reduces or deletes)")
    tapply.add_argument("--dry-run", action="store_true", help="show the diff only")
    tapply.add_argument("--tiered", action="store_true", help="events move to Kafka's tiered"
                        " storage after 7 days (the brokers must have it enabled)")
    tapply.add_argument("--state-dir", help="a running embedded platform's state folder")
    tapply.set_defaults(func=cmd_topics)

    status = sub.add_parser("projections", help="each projection's position and lag, and the"
                            " events set aside (with why)")
    status.add_argument("action", nargs="?", choices=["retry"],
                        help="retry NAME: re-apply what NAME set aside, now that its reducer is"
                        " fixed; what applies leaves the list, what still fails stays")
    status.add_argument("name", nargs="?", choices=["tracking", "sla", "ledger"])
    status.add_argument("--limit", type=int, default=20)
    status.add_argument("--state-dir", help="a running embedded platform's state folder")
    status.set_defaults(func=cmd_projections)

    roll = sub.add_parser("rollup", help="the provincial roll-up: per county and day, parcels,"
                          " events, SLA legs on time and late, each from the county's own database")
    roll.add_argument("county", nargs="+", help="COUNTY_FILE=DATABASE_URL of each county (a role"
                      " that may read its journal and sla_daily)")
    roll.add_argument("--day", required=True, type=_day, help="YYYY-MM-DD, the counties' own day")
    roll.add_argument("--days", type=int, default=1, help="this many days from --day")
    roll.set_defaults(func=cmd_rollup)

    pii = sub.add_parser("pii", help="phone numbers: master keys, retention, erasure, rotation")
    psub = pii.add_subparsers(dest="action", required=True)
    psub.add_parser("keygen", help="print a fresh master keypair (settings for the services)")
    shred = psub.add_parser("shred", help="destroy the keys of every month older than the"
                            " county's [privacy] phone_retention_days, and say what went")
    shred.add_argument("--before", type=_month, help="YYYY-MM: shred every month before it")
    erase = psub.add_parser("erase", help="a data subject's request: destroy one number's keys")
    erase.add_argument("--phone", required=True)
    psub.add_parser("rotate", help="re-seal month keys to the newest master key (the first of"
                    " GONGPEI_PII_PRIVATE_KEYS)")
    pii.set_defaults(func=cmd_pii)

    args = parser.parse_args(argv)
    _serve_metrics(args.command)
    args.func(args)


def _serve_metrics(command: str) -> None:
    """Outside `gongpei up` (whose API serves every process's samples), a service in its own
    container serves its metrics on GONGPEI_METRICS_PORT for Prometheus to scrape."""
    port = os.environ.get("GONGPEI_METRICS_PORT", "")
    if command in ("relay", "worker", "ledger", "sms") and port.isdigit() and \
            not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import start_http_server

        import projections.metrics  # noqa: F401 - the families, at 0 from the first scrape

        start_http_server(int(port))


if __name__ == "__main__":
    main()
