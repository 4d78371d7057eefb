"""What the throughput benchmarks share: an embedded platform tuned for a replayed day, and the
tokens that upload it."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import asyncpg

from api import auth
from entrypoints.platform import Platform

# The benches replay a fixed day (2026-11-11): reach back to it, however long after they run.
# Their uploaders share one scanner token, several batches at once: a throughput test, not a
# device, so the per-token upload limits (one batch at a time, 30,000 events) are lifted.
THROUGHPUT_SETTINGS: dict[str, object] = {
    "max_event_age_days": 36500,
    "upload_concurrency": 1000, "upload_burst": 10**6, "upload_events_burst": 10**9}


async def start_platform(prefix: str) -> Platform:
    """An embedded platform in a fresh state folder, started off the event loop."""
    plat = Platform(Path(tempfile.mkdtemp(prefix=prefix)), api_port=0,
                    settings_changes=THROUGHPUT_SETTINGS)
    await asyncio.to_thread(plat.start, 90)
    return plat


async def upload_tokens(conn: asyncpg.Connection,
                        brands: tuple[str, ...]) -> tuple[dict[str, str], str]:
    """A brand-system token per brand (manifests) and one scanner for them all (scans)."""
    tokens = {b: (await auth.create(conn, role="brand-system", name=f"{b}-bench", brands=[b]))[1]
              for b in brands}
    scanner = (await auth.create(conn, role="scanner", name="bench", brands=list(brands)))[1]
    return tokens, scanner
