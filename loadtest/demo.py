"""Demo traffic for `gongpei up`: tokens for each role, and parcels visibly moving down the chain."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from api import auth
from entrypoints.platform import Platform
from infra.county_file import load_county
from loadtest.traffic import CountyTraffic, county_time


class DemoTraffic:
    """Every step: a few new parcels registered, and every parcel in flight one scan further."""

    def __init__(self, platform: Platform, state: Path, new_per_step: int = 3,
                 max_in_flight: int = 60) -> None:
        assert platform.settings is not None
        self.platform = platform
        self.county = load_county(platform.settings.county_file)
        # One parcel in eight comes from a scanner that was offline half a day: the dashboard then
        # has breaches to explain, as on a real morning.
        self.traffic = CountyTraffic(self.county, seed=int(datetime.now(UTC).timestamp()) % 97,
                                     late_share=0.125)
        self.tokens_dir = state / "demo-tokens"
        self.new_per_step = new_per_step
        self.max_in_flight = max_in_flight
        self.tokens: dict[str, str] = {}
        self.client = httpx.Client(base_url=platform.api_url, timeout=10)

    def prepare(self) -> None:
        """Issue demo tokens (written to state/demo-tokens/, one file per token)."""
        self.tokens_dir.mkdir(exist_ok=True)
        wanted: list[tuple[str, str, list[str]]] = [
            ("manager", "manager", []), ("admin", "admin", []),
            ("finance", "finance", []), ("finance-admin", "finance-admin", []),
            ("scanner", "pda-demo", list(self.county.brands)),
        ]
        for brand in self.county.brands:
            wanted += [("brand-system", f"{brand}-system", [brand]), ("brand", f"{brand}-brand", [brand]),
                       ("finance", f"{brand}-finance", [brand])]
        self.tokens = asyncio.run(self._issue(wanted))
        for name, token in self.tokens.items():
            path = self.tokens_dir / name
            path.write_text(token + "\n")
            path.chmod(0o600)

    async def _issue(self, wanted: list[tuple[str, str, list[str]]]) -> dict[str, str]:
        assert self.platform.settings is not None
        conn = await asyncpg.connect(self.platform.settings.database_url)
        try:
            out = {}
            for role, name, brands in wanted:
                # A restart issues fresh demo tokens; the previous run's stop working.
                await conn.execute("UPDATE tokens SET revoked_at = now() WHERE name = $1"
                                   " AND revoked_at IS NULL", name)
                _, out[name] = await auth.create(conn, role=role, name=name, brands=brands)
            return out
        finally:
            await conn.close()

    def _post(self, token: str, events: list[dict[str, Any]]) -> None:
        if events:
            r = self.client.post("/v1/scan-batches", json={"events": events},
                                 headers={"Authorization": f"Bearer {token}"})
            r.raise_for_status()

    def step(self) -> None:
        now = county_time(self.county, datetime.now(UTC))
        in_flight = [p for p in self.traffic.parcels if p.step + 1 < 7]
        by_brand: dict[str, list[dict[str, Any]]] = {}
        for _ in range(self.new_per_step if len(in_flight) < self.max_in_flight else 0):
            parcel, event = self.traffic.register(now)
            by_brand.setdefault(parcel.brand, []).append(event)
        for brand, events in by_brand.items():
            self._post(self.tokens[f"{brand}-system"], events)
        scans = [e for p in in_flight if (e := self.traffic.advance(p, now))]
        scans += self.traffic.departures(scans, now)
        try:
            self._post(self.tokens["pda-demo"], scans)
        except httpx.HTTPError as exc:
            print(f"demo: upload failed ({type(exc).__name__}); will go on", flush=True)
