"""Provider receipts (delivery reports: late, batched, repeated) translated into journal events:
`sms.delivered` or `sms.failed` (stage `delivery`), with ids derived from the message, so a
repeated receipt is one event."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from domain import sms as rules
from domain.envelope import Envelope
from domain.events import Payload, SmsDelivered, SmsFailed
from domain.sms_planning import platform_event
from projections.tracking_store import use_all_brands


@dataclass(frozen=True)
class Receipt:
    """A provider's delivery report, as every provider's push is read into. Aliyun's names our
    message (out_id); Tencent's only its own id for it (SerialNo), out_id is then empty."""

    out_id: str
    message_id: str
    success: bool
    code: str
    at: datetime


async def receipt_events(conn: asyncpg.Connection, provider: str, receipts: Sequence[Receipt],
                         now: datetime) -> tuple[list[Envelope], int]:
    """Journal events for delivery receipts, and how many named no SMS of ours. A receipt
    repeated (providers resend them for up to 72 h) derives the same event id: one event."""
    async with conn.transaction(readonly=True):
        await use_all_brands(conn)
        rows = await conn.fetch(
            "SELECT m.sms_id, m.provider_message_id, (SELECT brand FROM sms_message_parcels p"
            " WHERE p.sms_id = m.sms_id LIMIT 1) AS brand FROM sms_messages m"
            " WHERE m.sms_id = ANY($1::text[])"
            " OR (split_part(m.provider, '-', 1) = $2 AND m.provider_message_id = ANY($3::text[]))",
            list({r.out_id for r in receipts if r.out_id}), provider,
            list({r.message_id for r in receipts if not r.out_id}))
    brands = {r["sms_id"]: r["brand"] or "" for r in rows}
    by_message = {r["provider_message_id"]: r["sms_id"] for r in rows if r["provider_message_id"]}
    out: list[Envelope] = []
    unknown = 0
    for r in receipts:
        sms_id = r.out_id or by_message.get(r.message_id, "")
        if sms_id not in brands:
            unknown += 1
            continue
        r = Receipt(sms_id, r.message_id, r.success, r.code, r.at)
        if r.success:
            payload: Payload = SmsDelivered(sms_id=r.out_id, provider=provider,
                                            provider_message_id=r.message_id, delivered_at=r.at)
            event_id = rules.derived_id("sms.delivered", r.out_id)
        else:
            payload = SmsFailed(sms_id=r.out_id, provider=provider, provider_code=r.code,
                                permanent=True, stage="delivery")
            event_id = rules.derived_id("sms.failed", r.out_id, "delivery")
        event_type = "sms.delivered" if r.success else "sms.failed"
        out.append(platform_event(event_type, payload, event_id, brands[r.out_id], now))
    return out, unknown
