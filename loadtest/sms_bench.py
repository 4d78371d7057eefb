"""How fast arrival SMS reach the provider.

`wave` (the default): starts its own embedded platform (a 5-second digest window, no quiet
hours), registers `--parcels` parcels for half as many households spread over the county's
village points, uploads all their `stored` scans at once (an evening sort wave arriving at the
points), and waits until every parcel is in a submitted SMS. Prints the wave's SMS throughput
and the arrival → submitted latency (which includes the digest window).

`release`: the 08:00 release of a night's digests, at the providers' real speed (the local
gateways answer in 0.1–0.3 s and enforce each account's rate). The night's arrivals are
uploaded and applied first; then the SMS service loop starts (in this process, the code `gongpei
sms` runs) with every digest due at once, and is timed until every one is submitted: first the
old one-call-at-a-time sender on `--before` digests, then the concurrent one on `--digests`.

    .venv/bin/python -m loadtest.sms_bench --parcels 2000
    .venv/bin/python -m loadtest.sms_bench release --digests 5000 --before 150
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform as pyplatform
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from api import auth
from domain.county import County
from entrypoints.platform import GATEWAYS, SERVICES, Platform
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY
from loadtest.bench_platform import THROUGHPUT_SETTINGS
from loadtest.traffic import county_time, envelope, waybill_for

DIGEST_SECONDS = 5


def bench_county(folder: Path) -> Path:
    text = DEMO_COUNTY.read_text(encoding="utf-8")
    for old, new in (("digest_minutes = 10", f"digest_seconds = {DIGEST_SECONDS}"),
                     ('quiet_start = "21:00"', 'quiet_start = "00:00"'),
                     ('quiet_end = "08:00"', 'quiet_end = "00:00"'),
                     ("daily_budget = 10", "daily_budget = 100")):
        text = text.replace(old, new)
    path = folder / "county.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def tokens(dsn: str) -> tuple[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        scanner = (await auth.create(conn, role="scanner", name="bench-pda", brands=["ZTO"]))[1]
        system = (await auth.create(conn, role="brand-system", name="bench-sys", brands=["ZTO"]))[1]
        return scanner, system
    finally:
        await conn.close()


async def progress(dsn: str) -> tuple[int, list[float]]:
    conn = await asyncpg.connect(dsn)
    try:
        parcels = await conn.fetchval(
            "SELECT count(DISTINCT p.waybill) FROM sms_message_parcels p JOIN sms_messages m"
            " USING (sms_id) WHERE m.state IN ('submitted', 'delivered')")
        lat = [r[0] for r in await conn.fetch(
            "SELECT extract(epoch FROM submitted_at - first_known_at)::float8 FROM sms_messages"
            " WHERE submitted_at IS NOT NULL")]
        return int(parcels), lat
    finally:
        await conn.close()


def run(parcels: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        county_file = bench_county(state)
        county = load_county(county_file)
        plat = Platform(state / "state", county_file=county_file,
                        gateway_args=("--per-number-per-minute", "100", "--repeat-rate", "0.2"))
        plat.start(timeout=120)
        try:
            assert plat.settings is not None
            dsn = plat.settings.database_url
            scanner, system = asyncio.run(tokens(dsn))
            now = county_time(county, datetime.now(UTC))
            villages = [v.id for v in county.villages]
            wave = []
            regs = []
            for i in range(parcels):
                wb = f"ZT8{i:011d}"
                household = i // 2
                phone = f"136{household:08d}"
                node = villages[household % len(villages)]
                regs.append(envelope("parcel.registered", 2, now, "ZTO", "manifest", {
                    "waybill": wb, "recipient_phone": phone, "destination_village": node,
                    "weight_g": 600}))
                wave.append(envelope("parcel.scanned", 1, now, "ZTO", "op-keeper",
                                     {"waybill": wb, "action": "stored", "node_id": node}))
            with httpx.Client(base_url=plat.api_url, timeout=60) as client:
                for i in range(0, len(regs), 500):
                    client.post("/v1/scan-batches", json={"events": regs[i:i + 500]},
                                headers={"Authorization": f"Bearer {system}"}).raise_for_status()
                started = time.perf_counter()
                for i in range(0, len(wave), 500):
                    client.post("/v1/scan-batches", json={"events": wave[i:i + 500]},
                                headers={"Authorization": f"Bearer {scanner}"}).raise_for_status()
                uploaded = time.perf_counter() - started
            done, lat = 0, list[float]()
            while done < parcels and time.perf_counter() - started < 900:
                time.sleep(1)
                done, lat = asyncio.run(progress(dsn))
            elapsed = time.perf_counter() - started
            sms = len(lat)
            gateway_lines = sum(len(plat.gateway_log(g).read_text().splitlines())
                                for g in GATEWAYS if plat.gateway_log(g).exists())
            q = statistics.quantiles(lat, n=20) if len(lat) >= 20 else [0.0] * 19
            print(f"machine: {pyplatform.machine()} {pyplatform.processor() or ''}, "
                  f"date {datetime.now(UTC):%Y-%m-%d}")
            print(f"wave: {parcels} parcels, {parcels // 2} households, uploaded in {uploaded:.1f} s")
            print(f"all {done} parcels in submitted SMS after {elapsed:.1f} s: {sms} SMS "
                  f"({sms / max(elapsed - DIGEST_SECONDS, 0.001):.0f} SMS/s after the {DIGEST_SECONDS} s"
                  f" digest window); gateway accepted {gateway_lines}")
            print(f"arrival → submitted: median {statistics.median(lat):.1f} s, p95 {q[18]:.1f} s,"
                  f" max {max(lat):.1f} s")
        finally:
            plat.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", nargs="?", choices=["wave", "release", "stream"], default="wave")
    ap.add_argument("--parcels", type=int, default=2000, help="wave: parcels in the wave")
    ap.add_argument("--digests", type=int, default=5000, help="release: digests released at once")
    ap.add_argument("--before", type=int, default=150,
                    help="release: digests for the old one-at-a-time sender first (0: none)")
    ap.add_argument("--concurrency", type=int, default=64, help="release: calls in progress")
    ap.add_argument("--qps", type=float, default=200.0, help="release: SendSms/s per account")
    ap.add_argument("--sender-only", action="store_true",
                    help="release: the SMS already requested and queued; time the sender alone")
    ap.add_argument("--rate", type=int, default=300, help="stream: scans a second")
    ap.add_argument("--seconds", type=float, default=60.0, help="stream: for how long")
    a = ap.parse_args()
    if a.mode == "stream":
        run_stream(a.rate, a.seconds)
    elif a.mode == "release":
        run_release(a.digests, a.before, a.concurrency, a.qps, a.sender_only)
    else:
        run(a.parcels)



# ------------------------------------------------------------------------------ the 08:00 release


def release_county(folder: Path) -> Path:
    """The bench county with a budget no household reaches (each gets one SMS here)."""
    return bench_county(folder)


def upload_night(plat: Platform, county: County, system: dict[str, str], scanner: str, prefix: str,
                 digests: int, seed: int) -> list[str]:
    """One parcel for each of `digests` households, spread over the village points, registered
    and stored (the night's arrivals); returns the waybills."""
    rng = random.Random(seed)
    now = county_time(county, datetime.now(UTC))
    villages = [v.id for v in county.villages]
    regs, scans, waybills = [], [], []
    for i in range(digests):
        brand = county.brands[i % len(county.brands)]
        wb, node = waybill_for(brand, rng), villages[i % len(villages)]
        waybills.append(wb)
        regs.append((brand, envelope("parcel.registered", 2, now, brand, "manifest", {
            "waybill": wb, "recipient_phone": f"{prefix}{i:08d}", "destination_village": node,
            "weight_g": 600})))
        scans.append(envelope("parcel.scanned", 1, now, brand, "op-keeper",
                              {"waybill": wb, "action": "stored", "node_id": node}))
    with httpx.Client(base_url=plat.api_url, timeout=120) as client:
        for brand in county.brands:
            mine = [e for b, e in regs if b == brand]
            for i in range(0, len(mine), 500):
                client.post("/v1/scan-batches", json={"events": mine[i:i + 500]},
                            headers={"Authorization": f"Bearer {system[brand]}"}
                            ).raise_for_status()
        for i in range(0, len(scans), 500):
            client.post("/v1/scan-batches", json={"events": scans[i:i + 500]},
                        headers={"Authorization": f"Bearer {scanner}"}).raise_for_status()
    return waybills


async def release(plat: Platform, county: County, waybills: list[str], concurrency: int,
                  qps: dict[str, float], prefix: str, sender_only: bool = False
                  ) -> tuple[float, float, float, int]:
    """Catch the SMS state up with the night, then start the service loop with every digest
    due and time it until the gateways have accepted each household's SMS (numbers starting
    with `prefix`). Returns seconds to the first accepted, to the last, to the SMS state
    showing every one submitted, and the calls throttled by the gateways meanwhile."""
    from infra.db import create_pool
    from infra.pii import Keyring
    from projections import sms_planner
    from streams import sms_service
    from streams.sms_providers import AliyunSms, Provider, TencentSms

    settings = plat.settings
    assert settings is not None and county.sms is not None
    keys = Keyring.from_settings(settings, county.utc_offset_minutes, sealing=False)
    providers: list[Provider] = [
        AliyunSms(name, host, settings.sms_access_key_id, settings.sms_access_key_secret,
                  protocol=scheme) if kind == "aliyun" else
        TencentSms(name, host, settings.sms_tencent_secret_id, settings.sms_tencent_secret_key,
                   settings.sms_tencent_app_id, county.sms, protocol=scheme, threads=concurrency)
        for name, kind, scheme, host in settings.sms_provider_list()]
    sender = sms_service.Sender(county, providers, keys=keys, concurrency=concurrency, qps=qps,
                                query_after=timedelta(seconds=settings.sms_query_after_seconds))
    pool = await create_pool(settings.database_url_for("sms"),
                             max_size=sms_service.pool_size(concurrency))
    watch = await asyncpg.connect(settings.database_url)
    try:
        # The night: arrivals applied, digests open (they close at the release, below).
        async with pool.acquire() as conn:
            while await sms_planner.catch_up(conn, county, now=datetime.now(UTC), keys=keys):
                pass
        await asyncio.sleep(DIGEST_SECONDS + 3)  # every digest past its window: all due at once
        if sender_only:
            # The planner's part done beforehand (digests closed, their SMS requested and in the
            # queue): what is timed is the sender alone draining the queue.
            async with pool.acquire() as conn:
                await sms_planner.close_due(conn, county, datetime.now(UTC))
                while await sms_planner.catch_up(conn, county, now=datetime.now(UTC), keys=keys):
                    pass
        throttled_before = await asyncio.to_thread(gateway_throttled, plat)
        stop = asyncio.Event()
        started, t0 = time.perf_counter(), datetime.now(UTC)
        service = asyncio.create_task(
            sms_service.send(pool, sender, stop, asyncio.Event(), 0.5) if sender_only
            else sms_service.run(pool, county, sender, stop))
        first = last = recorded = 0.0
        shown = started
        while time.perf_counter() - started < 900:
            await asyncio.sleep(0.25)
            # Drained: every SMS accepted by a provider, by the gateways' own logs.
            accepted = [s for s in await asyncio.to_thread(gateway_accepted, plat)
                        if s["phone"].startswith(prefix)]
            if time.perf_counter() - shown >= 10:
                shown = time.perf_counter()
                print(f"  … {len(accepted)} accepted by the gateways after"
                      f" {shown - started:.0f} s", flush=True)
            if len(accepted) >= len(waybills):
                at = sorted(datetime.fromisoformat(s["at"]) for s in accepted)
                first, last = (at[0] - t0).total_seconds(), (at[-1] - t0).total_seconds()
                assert len({s["out_id"] for s in accepted}) == len(accepted), "an SMS sent twice"
                break
        # The SMS state catching up with what was sent (the planner reads the sender's events).
        if sender_only:
            async with pool.acquire() as conn:
                while await sms_planner.catch_up(conn, county, now=datetime.now(UTC), keys=keys):
                    pass
        while time.perf_counter() - started < 900:
            done = await watch.fetchval(
                "SELECT count(DISTINCT p.waybill) FROM sms_message_parcels p JOIN sms_messages m"
                " USING (sms_id) WHERE p.waybill = ANY($1) AND m.submitted_at IS NOT NULL",
                waybills)
            if done == len(waybills):
                recorded = time.perf_counter() - started
                break
            await asyncio.sleep(0.25)
        stop.set()
        await service
        throttled = await asyncio.to_thread(gateway_throttled, plat) - throttled_before
        return first, last, recorded, throttled
    finally:
        await watch.close()
        await pool.close()


def gateway_accepted(plat: Platform) -> list[dict[str, str]]:
    out = []
    for name in GATEWAYS:
        path = plat.gateway_log(name)
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass  # a line being written
    return out


def gateway_throttled(plat: Platform) -> int:
    total = 0
    for port in plat.gateway_ports.values():
        with httpx.Client(timeout=30) as client:
            total += int(client.get(f"http://127.0.0.1:{port}/_gateway/sent").json()["throttled"])
    return total


def run_release(digests: int, before: int, concurrency: int, qps: float,
                sender_only: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        county_file = release_county(state)
        county = load_county(county_file)
        # The SMS service is this process's own (old and new sender in turn), not a child.
        plat = Platform(state / "state", county_file=county_file, sms_gateway_latency="0.1,0.3",
                        services=tuple(s for s in SERVICES if s != "sms"),
                        gateway_args=("--per-number-per-minute", "100", "--repeat-rate", "0.2"),
                        settings_changes={**THROUGHPUT_SETTINGS,
                                          "sms_qps": ",".join(f"{g}={qps:g}" for g in GATEWAYS)})
        plat.start(timeout=120)
        try:
            assert plat.settings is not None
            rates = plat.settings.sms_qps_by_provider()
            system, scanner = asyncio.run(release_tokens(plat.settings.database_url, county))
            print(f"machine: {pyplatform.machine()}, {os.cpu_count()} cores, "
                  f"date {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; gateways answer in 0.1–0.3 s,"
                  f" {qps:g} SendSms/s per account")
            rows = []
            alone = ", sender alone" if sender_only else ""
            for label, n, conc, prefix in ((f"old: one call at a time{alone}", before, 1, "138"),
                                           (f"new: {concurrency} at once{alone}", digests,
                                            concurrency, "137")):
                if n <= 0:
                    continue
                t = time.perf_counter()
                waybills = upload_night(plat, county, system, scanner, prefix, n,
                                        seed=time.time_ns())
                print(f"{label}: {n} digests uploaded and stored in {time.perf_counter() - t:.0f} s;"
                      f" load {_load()}")
                first, last, recorded, throttled = asyncio.run(
                    release(plat, county, waybills, conc, rates, prefix, sender_only))
                rate = n / last if last else 0.0
                rows.append((label, n, first, last, recorded, rate, throttled, _load()))
                print(f"  released: first at the provider after {first:.1f} s, all {n} after"
                      f" {last:.1f} s ({rate:.1f} SMS/s; 5,000 would take"
                      f" {5000 / max(rate, 1e-9):.0f} s); all recorded as submitted after"
                      f" {recorded:.1f} s; throttled by the gateways: {throttled}; load {_load()}")
            print("\n| sender | digests | first at the provider | all at the provider | SMS/s |"
                  " 5,000 at that rate | all recorded submitted | throttled | load after |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for label, n, first, last, recorded, rate, throttled, load in rows:
                print(f"| {label} | {n:,} | {first:.1f} s | {last:.1f} s | {rate:.1f} |"
                      f" {5000 / max(rate, 1e-9):.0f} s | {recorded:.1f} s | {throttled} |"
                      f" {load} |")
        finally:
            plat.stop()


async def release_tokens(dsn: str, county: County) -> tuple[dict[str, str], str]:
    conn = await asyncpg.connect(dsn)
    try:
        system = {b: (await auth.create(conn, role="brand-system", name=f"bench-{b}",
                                        brands=[b]))[1] for b in county.brands}
        scanner = (await auth.create(conn, role="scanner", name="bench-pda",
                                     brands=list(county.brands)))[1]
        return system, scanner
    finally:
        await conn.close()


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ------------------------------------------------------------------------ a steady peak stream


async def drive_stream(plat: Platform, county: County, scanner: str, rate: int, seconds: float,
                       stores: list[tuple[str, str, str]], seed: int
                       ) -> tuple[int, float, list[str]]:
    """Upload `rate` scans a second for `seconds`, a tenth of a second's worth at a time, by
    four uploaders: the county's sort-wave mix, where one scan in thirteen is a parcel stored
    at its village point (from `stores`: waybill, brand, point) and the rest are scans at the
    centre. Returns the scans accepted, the seconds it took and the waybills stored."""
    rng = random.Random(seed)
    centre = county.centre.id
    per_tick = max(1, rate // 10)
    ticks = int(seconds * 10)
    queue: asyncio.Queue[list[dict[str, object]] | None] = asyncio.Queue()
    todo = list(stores)
    stored: list[str] = []
    sent = 0

    async def uploader(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while (batch := await queue.get()) is not None:
            r = await client.post("/v1/scan-batches", json={"events": batch},
                                  headers={"Authorization": f"Bearer {scanner}"})
            r.raise_for_status()
            sent += int(r.json()["accepted"])

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=plat.api_url, timeout=60) as client:
        workers = [asyncio.create_task(uploader(client)) for _ in range(4)]
        for tick in range(ticks):
            now = county_time(county, datetime.now(UTC))
            batch: list[dict[str, object]] = []
            for _ in range(per_tick):
                if todo and rng.random() < 1 / 13:
                    wb, brand, node = todo.pop()
                    stored.append(wb)
                    batch.append(envelope("parcel.scanned", 1, now, brand, "op-keeper",
                                          {"waybill": wb, "action": "stored", "node_id": node}))
                else:
                    brand = rng.choice(county.brands)
                    batch.append(envelope("parcel.scanned", 1, now, brand, "op-centre", {
                        "waybill": waybill_for(brand, rng), "action": "sorted",
                        "node_id": centre}))
            await queue.put(batch)
            await asyncio.sleep(max(0.0, started + (tick + 1) / 10 - time.perf_counter()))
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
    return sent, time.perf_counter() - started, stored


def run_stream(rate: int, seconds: float) -> None:
    """The supervised SMS service (`gongpei sms`, with its settings' concurrency and rates)
    under a steady stream: stored scan → SMS submitted, after the digest window."""
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        county_file = release_county(state)
        county = load_county(county_file)
        plat = Platform(state / "state", county_file=county_file, sms_gateway_latency="0.1,0.3",
                        gateway_args=("--per-number-per-minute", "100", "--repeat-rate", "0.2"),
                        settings_changes=THROUGHPUT_SETTINGS)
        plat.start(timeout=120)
        try:
            assert plat.settings is not None
            system, scanner = asyncio.run(release_tokens(plat.settings.database_url, county))
            rng = random.Random(time.time_ns())
            villages = [v.id for v in county.villages]
            expected = int(rate * seconds / 13 * 1.5) + 10  # more than the stream can use
            stores = []
            regs: dict[str, list[dict[str, object]]] = {b: [] for b in county.brands}
            now = county_time(county, datetime.now(UTC))
            for i in range(expected):
                brand = county.brands[i % len(county.brands)]
                wb, node = waybill_for(brand, rng), villages[i % len(villages)]
                stores.append((wb, brand, node))
                regs[brand].append(envelope("parcel.registered", 2, now, brand, "manifest", {
                    "waybill": wb, "recipient_phone": f"139{i:08d}", "destination_village": node,
                    "weight_g": 600}))
            with httpx.Client(base_url=plat.api_url, timeout=120) as client:
                for brand, events in regs.items():
                    for i in range(0, len(events), 500):
                        client.post("/v1/scan-batches", json={"events": events[i:i + 500]},
                                    headers={"Authorization": f"Bearer {system[brand]}"}
                                    ).raise_for_status()
            time.sleep(5)  # the registrations applied before the stream starts
            print(f"machine: {pyplatform.machine()}, {os.cpu_count()} cores, "
                  f"date {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; gateways answer in 0.1–0.3 s;"
                  f" digest window {DIGEST_SECONDS} s; load before {_load()}")
            sent, took, stored = asyncio.run(drive_stream(plat, county, scanner, rate, seconds,
                                                          stores, seed=time.time_ns()))
            print(f"stream: {sent} scans accepted in {took:.1f} s ({sent / took:.0f}/s), of them"
                  f" {len(stored)} stored at village points; load {_load()}")
            lat: list[float] = []
            deadline = time.perf_counter() + 120
            while time.perf_counter() < deadline:
                lat = asyncio.run(stream_latencies(plat.settings.database_url, stored))
                if len(lat) == len(stored):
                    break
                time.sleep(1)
            q = statistics.quantiles(lat, n=100) if len(lat) >= 100 else []
            print(f"submitted {len(lat)} of {len(stored)}; stored → submitted after the"
                  f" {DIGEST_SECONDS} s window: p50 {statistics.median(lat):.2f} s, p95"
                  f" {q[94] if q else max(lat):.2f} s, p99 {q[98] if q else max(lat):.2f} s,"
                  f" max {max(lat):.2f} s; load {_load()}")
        finally:
            plat.stop()


async def stream_latencies(dsn: str, waybills: list[str]) -> list[float]:
    """Seconds from each stored parcel's digest closing (learned of + window) to its SMS
    reaching the provider, for the SMS submitted so far."""
    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch(
            "SELECT DISTINCT ON (m.sms_id) extract(epoch FROM m.submitted_at - m.first_known_at)"
            "::float8 - $2 FROM sms_messages m JOIN sms_message_parcels p USING (sms_id)"
            " WHERE p.waybill = ANY($1) AND m.submitted_at IS NOT NULL", waybills,
            float(DIGEST_SECONDS))]
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
