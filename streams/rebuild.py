"""Rebuild read models from the journal; the result must equal what the stream produced."""

from __future__ import annotations

from domain.county import County
from domain.envelope import Envelope
from infra.db import create_pool
from infra.settings import Settings
from projections import journal, tracking_store
from streams.topics import PARCEL_EVENTS


async def rebuild_tracking(settings: Settings, county: County, page: int = 5000) -> int:
    """Empty the tracking read model and re-apply every parcel event in the journal."""
    pool = await create_pool(settings.app_database_url, max_size=2)
    count = 0
    try:
        async with pool.acquire() as conn:
            await tracking_store.reset(conn)
            after = 0
            while True:
                rows = await journal.read_page(conn, families=PARCEL_EVENTS.families,
                                               after=after, limit=page)
                if not rows:
                    break
                events = [Envelope.from_wire(r["body"]) for r in rows]
                await tracking_store.apply_batch(conn, county, events, offsets={})
                after = rows[-1]["seq"]
                count += len(rows)
    finally:
        await pool.close()
    return count
