"""Decode once, measured (a benchmark that prints its figures; never a test).

Every consumer reads each stored event back with `Envelope.from_wire`. This times, in one
process and one run, side by side on the same bodies, the full pydantic validation every reader
used to pay (`Envelope.from_wire_validated`) against the stored-form fast path
(`Envelope.from_wire`, domain/wire.py), over a mixed day of the county's traffic (manifests, every
scan of the chain, departures) in the journal's form. Rounds alternate between the two so that
a busy neighbour on the machine slows both alike; the best round of each is reported.

    .venv/bin/python -m loadtest.decode_bench --events 50000
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from domain.envelope import Envelope
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY
from loadtest.traffic import CountyTraffic, county_time

SEALED = {"key_id": "0" * 32, "ciphertext": "A" * 52, "masked": "138****5678", "household": "0" * 64}


def wire_events(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` stored bodies of a county day, as a consumer holds them after orjson.loads."""
    county = load_county(DEMO_COUNTY)
    traffic = CountyTraffic(county, seed=seed)
    t0 = county_time(county, datetime(2026, 11, 11, tzinfo=UTC))
    uploads: list[dict[str, Any]] = []
    parcels = n // 8 + 1  # a manifest and seven scans each, plus the runs' departures
    uploads += [traffic.register(t0)[1] for _ in range(parcels)]
    for step in range(7):
        at = t0 + timedelta(hours=step + 1)
        batch = [s for p in traffic.parcels if (s := traffic.advance(p, at))]
        uploads += traffic.departures(batch, at) + batch
    out = []
    for e in uploads[:n]:
        body = {**e, "recorded_at": e["occurred_at"], "device_id": "bench"}
        if "recipient_phone" in e["payload"]:
            body["payload"] = {**e["payload"], "recipient_phone": SEALED}
        out.append(orjson.loads(orjson.dumps(body)))
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    events = wire_events(args.events, args.seed)
    mix = Counter(e["type"] for e in events)
    # Same answer from both, or the comparison means nothing.
    assert all(Envelope.from_wire(e) == Envelope.from_wire_validated(e) for e in events[:2000])

    def timed(decode: Callable[[dict[str, Any]], Envelope]) -> float:
        gc.collect()
        t = time.perf_counter()
        for e in events:
            decode(e)
        return time.perf_counter() - t

    best = {"validated": float("inf"), "fast": float("inf")}
    for _ in range(args.rounds):
        best["validated"] = min(best["validated"], timed(Envelope.from_wire_validated))
        best["fast"] = min(best["fast"], timed(Envelope.from_wire))
    n = len(events)
    validated_us, fast_us = best["validated"] * 1e6 / n, best["fast"] * 1e6 / n
    print(f"machine: {os.cpu_count()} cpus, {cpu_model()}, Python {platform.python_version()}")
    print(f"date: {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"events: {n} ({', '.join(f'{t} {c}' for t, c in mix.most_common())}), "
          f"best of {args.rounds} alternating rounds")
    print(f"validated_us_per_event: {validated_us:.2f}")
    print(f"fast_us_per_event: {fast_us:.2f}")
    print(f"ratio: {validated_us / fast_us:.2f}")


if __name__ == "__main__":
    main()
