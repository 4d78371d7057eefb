"""How fast can one client guess recipients' last four digits at POST /v1/public/track?

Starts the platform (relay, worker, API), registers a dozen parcels, and then, for a bounded
time, three attackers guess from three addresses of their own, as fast as the API lets them and
waiting exactly the Retry-After it gives (each also forges a new X-Forwarded-For every try):

- `one parcel`: every guess on one waybill, digits 0000, 0001, … (a targeted parcel);
- `ten parcels`: round-robin over ten real waybills (the most guesses an address may spread);
- `scraper`: a new waybill every guess (enumerating waybills).

Prints, per attacker, the guesses answered, the burst before the first 429, the steady rate after
it, guesses per hour, and the expected time to learn one parcel's last four digits.

    .venv/bin/python -m loadtest.lookup_enum_bench --seconds 600
"""

from __future__ import annotations

import argparse
import asyncio
import platform as pyplatform
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx

from api import auth
from entrypoints.platform import Platform
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY
from loadtest.traffic import CountyTraffic, county_time

DIGITS = 10_000


@dataclass
class Attacker:
    name: str
    address: str
    waybills: list[str]
    answered: int = 0
    refused: int = 0
    found: int = 0
    first_refusal: float | None = None
    answered_at_first_refusal: int = 0
    last_wait: float = 0.0
    tries: dict[str, int] = field(default_factory=dict)

    def steady_per_hour(self, elapsed: float) -> float | None:
        if self.first_refusal is None or elapsed - self.first_refusal < 1:
            return None
        after = self.answered - self.answered_at_first_refusal
        if after == 0:  # still waiting out the first refusal: the wait is the rate
            return 3600 / self.last_wait if self.last_wait else None
        return after / (elapsed - self.first_refusal) * 3600


async def attack(a: Attacker, api_url: str, until: float, t0: float) -> None:
    transport = httpx.AsyncHTTPTransport(local_address=a.address)
    async with httpx.AsyncClient(base_url=api_url, transport=transport, timeout=30) as client:
        i = 0
        while time.monotonic() < until:
            waybill = a.waybills[i % len(a.waybills)]
            guess = a.tries.get(waybill, 0)
            r = await client.post("/v1/public/track",
                                  json={"waybill": waybill, "phone_last4": f"{guess:04d}"},
                                  headers={"X-Forwarded-For": f"198.51.100.{i % 250}"})
            if r.status_code == 429:
                a.refused += 1
                if a.first_refusal is None:
                    a.first_refusal = time.monotonic() - t0
                    a.answered_at_first_refusal = a.answered
                wait = a.last_wait = float(r.headers.get("Retry-After", "1"))
                await asyncio.sleep(max(0.0, min(wait, until - time.monotonic())))
                continue  # the same guess again once the wait is over
            if r.status_code not in (200, 404):
                raise RuntimeError(f"unexpected answer {r.status_code}: {r.text[:200]}")
            a.answered += 1
            a.found += r.status_code == 200
            a.tries[waybill] = guess + 1
            i += 1


async def register(plat: Platform, count: int) -> list[str]:
    assert plat.settings is not None
    county = load_county(DEMO_COUNTY)
    conn = await asyncpg.connect(plat.settings.database_url)
    try:
        tokens = {b: (await auth.create(conn, role="brand-system", name=f"{b}-enum",
                                        brands=[b]))[1] for b in county.brands}
        traffic = CountyTraffic(county, seed=4242)
        at = county_time(county, datetime.now(UTC))
        events = [traffic.register(at) for _ in range(count)]
        async with httpx.AsyncClient(base_url=plat.api_url, timeout=30) as client:
            for parcel, event in events:
                r = await client.post("/v1/scan-batches", json={"events": [event]},
                                      headers={"Authorization": f"Bearer {tokens[parcel.brand]}"})
                r.raise_for_status()
        waybills = [p.waybill for p, _ in events]
        for _ in range(300):
            if await conn.fetchval("SELECT count(*) FROM parcels WHERE waybill = ANY($1)",
                                   waybills) == count:
                return waybills
            await asyncio.sleep(0.1)
        raise RuntimeError("the parcels were not projected within 30 s")
    finally:
        await conn.close()


def expected_hours(guesses: float, burst: int, per_hour: float | None) -> str:
    if not per_hour:
        return "n/a"
    hours = max(0.0, guesses - burst) / per_hour
    return f"{hours:,.0f} h ({hours / 24:,.1f} days)"


async def main(seconds: float) -> None:
    plat = Platform(Path(tempfile.mkdtemp(prefix="gongpei-enum-bench-")),
                    services=("relay", "worker", "api"))
    await asyncio.to_thread(plat.start, 90)
    try:
        real = await register(plat, 12)
        made_up = [f"YT{n:013d}" for n in range(5_000_000_000_000, 5_000_000_001_000)]
        attackers = [Attacker("one parcel", "127.0.20.1", real[:1]),
                     Attacker("ten parcels", "127.0.20.2", real[1:11]),
                     Attacker("scraper", "127.0.20.3", made_up)]
        t0 = time.monotonic()
        await asyncio.gather(*(attack(a, plat.api_url, t0 + seconds, t0) for a in attackers))
        elapsed = time.monotonic() - t0
        print(f"machine: {pyplatform.node()} {pyplatform.machine()} python"
              f" {pyplatform.python_version()} date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
        print(f"{elapsed:.0f} s of guessing from one address each (a forged X-Forwarded-For on"
              " every try)\n")
        print(f"{'attacker':>12} {'answered':>9} {'refused':>8} {'burst':>6} {'steady/h':>9}"
              f" {'in run/h':>9}  expected time to one parcel's last 4")
        for a in attackers:
            steady = a.steady_per_hour(elapsed)
            burst = a.answered_at_first_refusal if a.first_refusal is not None else a.answered
            if a.name == "one parcel":    # the secret is uniform: on average half the space
                guesses = (DIGITS + 1) / 2
            elif a.name == "ten parcels":  # the first of ten uniform secrets: 10 × E[min]
                guesses = len(a.waybills) * (DIGITS + 1) / (len(a.waybills) + 1)
            else:                          # one guess per waybill: 1 in 10,000 per guess
                guesses = DIGITS
            print(f"{a.name:>12} {a.answered:>9} {a.refused:>8} {burst:>6}"
                  f" {steady if steady is not None else float('nan'):>9.1f}"
                  f" {a.answered / elapsed * 3600:>9.1f}  {expected_hours(guesses, burst, steady)}"
                  f"{'  (found: ' + str(a.found) + ')' if a.found else ''}")
    finally:
        await asyncio.to_thread(plat.stop)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=600.0,
                    help="how long the attackers guess (the steady rate needs several minutes)")
    asyncio.run(main(ap.parse_args().seconds))
