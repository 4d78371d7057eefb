"""Reads of the SMS state for staff: per-day counts, the station keeper's call list, parcels
without consent, and the dashboard's summary. Callers pass a connection already scoped to what
the token may see (row-level security does the rest); no phone leaves here unmasked."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

import asyncpg

from domain.county import County
from projections.sms_outbox import overdue

OUTCOMES = ("requested", "submitted", "delivered", "failed", "cancelled")


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def _bounds(start: date, end: date, utc_offset_minutes: int) -> tuple[datetime, datetime]:
    tz = timezone(timedelta(minutes=utc_offset_minutes))
    return (datetime.combine(start, datetime.min.time(), tz),
            datetime.combine(end + timedelta(days=1), datetime.min.time(), tz))


async def parcel_history(conn: asyncpg.Connection, waybill: str) -> dict[str, Any]:
    """The parcel's latest arrival at a village point and every SMS that named it."""
    rows = await conn.fetch(
        "SELECT m.sms_id, m.kind, m.stage, m.node_id, m.phone_masked, m.text, m.segments,"
        " m.consented, m.state, m.provider, m.requested_at, m.send_after, m.submitted_at,"
        " m.delivered_at, m.failure_code, p.pickup_code,"
        " (SELECT count(*) FROM sms_message_parcels q WHERE q.sms_id = m.sms_id) AS parcels"
        " FROM sms_message_parcels p JOIN sms_messages m USING (sms_id)"
        " WHERE p.waybill = $1 ORDER BY m.requested_at", waybill)
    arrival = await conn.fetchrow(
        "SELECT node_id, pickup_code, waiting, stored_at, closed_by, reminders, call_reason"
        " FROM sms_arrivals WHERE waybill = $1 ORDER BY stored_at DESC LIMIT 1", waybill)
    return {
        "waybill": waybill,
        "arrival": None if arrival is None else {**dict(arrival), "stored_at": _iso(arrival["stored_at"])},
        "sms": [{**dict(r), **{k: _iso(r[k]) for k in ("requested_at", "send_after", "submitted_at",
                                                          "delivered_at")}} for r in rows],
    }


async def day_counts(conn: asyncpg.Connection, start: date, end: date,
                     utc_offset_minutes: int) -> dict[str, dict[str, int]]:
    """Per county day (by when the SMS was decided): how many are in each state, how many were
    reminders, and the segments billed."""
    lo, hi = _bounds(start, end, utc_offset_minutes)
    rows = await conn.fetch(
        "SELECT (requested_at + $3::interval)::date AS day, state, kind, count(*) AS n,"
        " sum(segments) AS segments FROM sms_messages WHERE requested_at >= $1"
        " AND requested_at < $2 GROUP BY 1, 2, 3", lo, hi, timedelta(minutes=utc_offset_minutes))
    days = {(start + timedelta(days=d)).isoformat(): {**dict.fromkeys(OUTCOMES, 0), "reminders": 0,
                                                      "segments": 0}
            for d in range((end - start).days + 1)}
    for r in rows:
        day = days[r["day"].isoformat()]
        day[r["state"]] += r["n"]
        day["segments"] += int(r["segments"] or 0)
        if r["kind"] == "reminder":
            day["reminders"] += r["n"]
    return days


async def failures(conn: asyncpg.Connection, start: date, end: date,
                   utc_offset_minutes: int) -> list[dict[str, Any]]:
    lo, hi = _bounds(start, end, utc_offset_minutes)
    return [dict(r) for r in await conn.fetch(
        "SELECT provider, failure_code, count(*) AS n FROM sms_messages WHERE state = 'failed'"
        " AND requested_at >= $1 AND requested_at < $2 GROUP BY 1, 2 ORDER BY 3 DESC", lo, hi)]


async def call_list(conn: asyncpg.Connection, county: County, node_id: str | None,
                    limit: int | None = None) -> list[dict[str, Any]]:
    """Waiting parcels the keeper should phone about: no pickup after the last reminder, or an
    SMS that failed for good. Oldest first, per point."""
    rows = await conn.fetch(
        "SELECT a.waybill, a.brand, a.node_id, a.pickup_code, a.stored_at, a.reminders,"
        " a.call_reason AS reason, m.phone_masked FROM sms_arrivals a"
        " LEFT JOIN sms_messages m ON m.sms_id = a.arrival_sms"
        " WHERE a.waiting AND a.call_reason IS NOT NULL AND ($1::text IS NULL OR a.node_id = $1)"
        " ORDER BY a.node_id, a.stored_at LIMIT $2", node_id, limit)
    return [{**dict(r), "stored_at": _iso(r["stored_at"]),
             "node_name": county.nodes[r["node_id"]].name if r["node_id"] in county.nodes else None}
            for r in rows]


async def no_consent(conn: asyncpg.Connection, node_id: str | None) -> list[dict[str, Any]]:
    """Waiting parcels whose recipient has not consented to station delivery."""
    rows = await conn.fetch(
        "SELECT p.waybill, p.brand, m.node_id, p.pickup_code, m.sms_id, m.state,"
        " m.phone_masked, m.requested_at FROM sms_message_parcels p"
        " JOIN sms_messages m ON m.sms_id = p.sms_id"
        " JOIN sms_arrivals a ON a.arrival_id = p.arrival_id"
        " JOIN sms_recipients r ON r.waybill = p.waybill"
        " WHERE m.kind = 'arrival' AND r.consent IS NOT TRUE AND a.waiting"
        " AND ($1::text IS NULL OR m.node_id = $1) ORDER BY m.requested_at", node_id)
    return [{**dict(r), "requested_at": _iso(r["requested_at"])} for r in rows]


async def summary(conn: asyncpg.Connection, county: County, now: datetime) -> dict[str, Any]:
    """Today's SMS for the dashboard: counts by state, overdue, and who the keepers should call."""
    today = now.astimezone(timezone(timedelta(minutes=county.utc_offset_minutes))).date()
    counts = (await day_counts(conn, today, today, county.utc_offset_minutes))[today.isoformat()]
    calls = await call_list(conn, county, None)
    return {"day": today.isoformat(), "counts": counts,
            "overdue": await overdue(conn, now - timedelta(minutes=5)),
            "call_list_total": len(calls), "call_list": calls[:10],
            "no_consent_total": len(await no_consent(conn, None))}
