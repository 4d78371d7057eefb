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

from infra.settings import DEMO_COUNTY, Settings, SettingsError


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
    from domain.county import CountyConfigError, load_county

    try:
        return load_county(settings.county_file)
    except CountyConfigError as exc:
        sys.exit(f"gongpei: county configuration is invalid: {exc}")


def cmd_api(args: argparse.Namespace) -> None:
    import uvicorn

    from api.main import create_app

    settings = _settings()
    uvicorn.run(create_app(settings, _county(settings)), host=args.host, port=args.port,
                log_level="warning", access_log=False, limit_concurrency=200)


def _serve(settings: Settings, service: Callable[[Any, asyncio.Event], Awaitable[object]]) -> None:
    """Run a database-backed service until SIGTERM or SIGINT, with a pool of the app role."""
    from infra.db import create_pool

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        pool = await create_pool(settings.app_database_url, max_size=3)
        try:
            await service(pool, stop)
        finally:
            await pool.close()

    asyncio.run(main())


def cmd_relay(args: argparse.Namespace) -> None:
    from streams.relay import Relay

    settings = _settings()
    _log_to_stderr()
    _serve(settings, lambda pool, stop: Relay(pool, settings).run(stop))


def cmd_ledger(args: argparse.Namespace) -> None:
    from streams import ledger_service

    settings = _settings()
    county = _county(settings)
    _log_to_stderr()
    if county.settlement is None:
        # Idle rather than exit: a supervisor would only restart it, over and over.
        logging.getLogger("gongpei.ledger").warning("no [settlement] in the county file; idle")
        _serve(settings, lambda pool, stop: stop.wait())
    else:
        _serve(settings, lambda pool, stop: ledger_service.run(pool, county, stop))


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
                           county.sms, protocol=scheme))
    except SettingsError as exc:
        sys.exit(f"gongpei: {exc}")
    if county.sms is None or not providers:
        # Idle rather than exit: a supervisor would only restart it, over and over.
        logging.getLogger("gongpei.sms").warning("no [sms] in the county file or no provider; idle")
        _serve(settings, lambda pool, stop: stop.wait())
        return
    sender = sms_service.Sender(
        county, providers, query_after=timedelta(seconds=settings.sms_query_after_seconds))
    _serve(settings, lambda pool, stop: sms_service.run(pool, county, sender, stop))


def cmd_sms_gateway(args: argparse.Namespace) -> None:
    from infra import sms_gateway

    sms_gateway.main(args.gateway_args)


def cmd_worker(args: argparse.Namespace) -> None:
    import faust

    from streams.app import create_app

    settings = _settings()
    state = Path(os.environ.get("GONGPEI_STATE_DIR", ".state"))
    app = create_app(settings, _county(settings), data_dir=state / "faust",
                     ready_file=state / "worker.ready")
    worker = faust.Worker(app, loglevel="WARN", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def cmd_migrate(args: argparse.Namespace) -> None:
    from infra.db import migrate

    settings = _settings()
    applied = asyncio.run(migrate(settings.database_url, settings.app_password))
    print("applied: " + (", ".join(applied) or "nothing (up to date)"))


def _when(value: Any) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M")


def cmd_token(args: argparse.Namespace) -> None:
    import asyncpg

    from api import auth

    settings = _settings()
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
                    token_id, token = await auth.create(conn, role=args.role, name=args.name,
                                                        brands=args.brand or [],
                                                        expires_in=expires_in)
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
    from streams.rebuild import rebuild_ledger_check, rebuild_sms, rebuild_tracking

    settings = _settings()
    if args.projection == "sms":
        n = asyncio.run(rebuild_sms(settings, _county(settings)))
        print(f"sms state rebuilt from {n} journal events (the log of provider calls is kept)")
        return
    if args.projection == "ledger":
        found = asyncio.run(rebuild_ledger_check(settings, _county(settings)))
        print(f"ledger replayed from the journal: {found['rebuilt']} lines rebuilt,"
              f" {found['live']} live, {found['differing']} differing")
        sys.exit(1 if found["differing"] else 0)
    count = asyncio.run(rebuild_tracking(settings, _county(settings)))
    print(f"tracking rebuilt from {count} journal events")


def cmd_up(args: argparse.Namespace) -> None:
    from infra.platform import Platform

    _log_to_stderr()
    state = Path(args.state_dir).resolve()
    platform = Platform(state, county_file=Path(args.county), api_port=args.port)
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    started = time.monotonic()
    try:
        platform.start()
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
            print(f"  tokens    {state / 'demo-tokens'}/<name> (manager, pda-demo, ZTO-brand, …)")
            print("  demo      a few parcels registered and moved every 2 s (--no-demo: none)")
        print("Ctrl-C stops everything.\n", flush=True)
        while not stopping:
            if demo is not None:
                demo.step()
            for name in platform.supervise_once():
                print(f"restarted {name} (see {state / 'logs' / (name + '.log')})", flush=True)
            for _ in range(20):
                if stopping:
                    break
                time.sleep(0.1)
    finally:
        print("stopping…", flush=True)
        platform.stop()
        print("stopped.", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gongpei", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the whole platform on the embedded runtime")
    up.add_argument("--state-dir", default=".state")
    up.add_argument("--port", type=int, default=8000, help="API port (0: any free port)")
    up.add_argument("--county", default=str(DEMO_COUNTY))
    up.add_argument("--no-demo", action="store_true", help="do not feed demo traffic")
    up.set_defaults(func=cmd_up)

    api = sub.add_parser("api", help="serve the HTTP API (settings from the environment)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(func=cmd_api)
    sub.add_parser("relay", help="publish the journal to Kafka").set_defaults(func=cmd_relay)
    sub.add_parser("worker", help="run the stream worker").set_defaults(func=cmd_worker)
    sub.add_parser("ledger", help="keep the settlement ledger level with the journal").set_defaults(
        func=cmd_ledger)
    sub.add_parser("sms", help="send arrival SMS and reminders").set_defaults(func=cmd_sms)
    gw = sub.add_parser("sms-gateway",
                        help="the local SMS gateway (Aliyun's and Tencent's APIs); see --help",
                        add_help=False)
    gw.add_argument("gateway_args", nargs=argparse.REMAINDER)
    gw.set_defaults(func=cmd_sms_gateway)
    sub.add_parser("migrate", help="create the app role and apply the schema").set_defaults(
        func=cmd_migrate)

    tok = sub.add_parser("token", help="create, revoke or list tokens")
    tsub = tok.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create")
    create.add_argument("--role", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--brand", action="append", help="repeat for several brands")
    create.add_argument("--expires-in", help="30m, 12h, 90d, 2w or never (default by role:"
                        " admin, finance-admin 30d; manager, finance, brand 90d;"
                        " scanner, brand-system 365d)")
    revoke = tsub.add_parser("revoke")
    revoke.add_argument("id", type=int)
    tsub.add_parser("list")
    tok.set_defaults(func=cmd_token)

    alog = sub.add_parser("access-log", help="who called what (newest last); --prune drops"
                          " entries older than GONGPEI_ACCESS_LOG_RETENTION_DAYS")
    alog.add_argument("--limit", type=int, default=50)
    alog.add_argument("--token", type=int, help="only this token id")
    alog.add_argument("--prune", action="store_true")
    alog.set_defaults(func=cmd_access_log)

    rebuild = sub.add_parser("rebuild", help="rebuild tracking from the journal; for the ledger,"
                             " replay it beside the books and report any difference")
    rebuild.add_argument("projection", choices=["tracking", "ledger", "sms"])
    rebuild.set_defaults(func=cmd_rebuild)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
