"""POST /v1/scan-batches: handhelds and brand systems upload events; each gets its own answer."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, model_validator

from api.deps import CountyDep, PoolDep, PrincipalDep, require_role
from api.errors import ApiError, documented, require_json
from domain.envelope import Envelope
from domain.ownership import Refusal, Writer
from domain.redact import mask_optional
from domain.validation import Rejection, validate_batch
from projections import journal
from projections.admission import Uploader, Verdict, admit
from projections.metrics import INGEST_BATCHES, INGEST_CONFLICTS, INGEST_EVENTS

router = APIRouter(tags=["ingest"])

# Which event families each role may emit; sms.* are written by the platform itself.
EMITTABLE = {
    "scanner": frozenset({"parcel.scanned", "parcel.sorted", "vehicle.departed", "vehicle.arrived",
                          "consent.recorded", "parcel.handed_in"}),
    "brand-system": frozenset({"parcel.registered", "consent.recorded", "parcel.handed_in"}),
}


class EventResult(BaseModel):
    index: int
    event_id: str | None = None
    status: Literal["accepted", "duplicate", "conflict", "rejected"]
    reason: str | None = None
    path: str | None = None
    message: str | None = None

    @model_validator(mode="after")
    def _masked(self) -> EventResult:
        # What echoes the upload (a refused id, a path through its keys, a message) is masked
        # like an error body. An accepted, duplicate or conflicting id is the journal's canonical
        # UUID/ULID, echoed exactly: the device matches its answers by it, and about one random
        # UUID in 1,200 holds a run of 11 digits that looks like a mobile number.
        if self.status == "rejected":
            self.event_id = mask_optional(self.event_id)
        self.path, self.message = mask_optional(self.path), mask_optional(self.message)
        return self


class BatchResult(BaseModel):
    accepted: int
    duplicate: int
    conflict: int
    rejected: int
    results: list[EventResult]


EXAMPLE_BATCH = {"events": [{
    "event_id": "0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2a10", "type": "parcel.scanned",
    "schema_version": 1, "occurred_at": "2026-11-11T09:15:32+08:00", "brand": "ZTO",
    "operator_id": "op-8812",
    "payload": {"waybill": "ZT7300012345678", "action": "arrived", "node_id": "TWN-XILIU"},
}]}


def _raw_event_id(raw: object) -> str | None:
    if isinstance(raw, dict) and isinstance(raw.get("event_id"), str):
        return str(raw["event_id"])[:64]
    return None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"the body is {int(declared) // 1024} KiB;"
                       f" the limit is {limit // 1024} KiB")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "body_too_large", f"the body exceeds the limit of {limit // 1024} KiB")
    return bytes(body)


def _parse_events(body: bytes, max_events: int) -> list[Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}", "$") from None
    if not isinstance(doc, dict):
        raise ApiError(422, "wrong_type", "the body must be a JSON object with an 'events' array", "$")
    unknown = sorted(set(doc) - {"events"})
    if unknown:
        raise ApiError(422, "unknown_field", f"unknown field '{unknown[0]}'", f"$.{unknown[0]}")
    events = doc.get("events")
    if events is None:
        raise ApiError(422, "missing_field", "'events' is required", "$.events")
    if not isinstance(events, list):
        raise ApiError(422, "wrong_type", "'events' must be an array", "$.events")
    if not events:
        raise ApiError(422, "invalid_value", "'events' must not be empty", "$.events")
    if len(events) > max_events:
        raise ApiError(422, "too_many_events",
                       f"{len(events)} events in one batch; the limit is {max_events}", "$.events")
    return events


@router.post(
    "/v1/scan-batches", response_model=BatchResult, summary="Upload a batch of events",
    description="Up to 500 events and 1 MiB per request. The batch is committed to the journal "
                "before the answer; re-sending it answers `duplicate` for each event, and "
                "`conflict` for an event_id sent again with different content.",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object", "required": ["events"], "additionalProperties": False,
                   "description": "Full contract per event type: GET /v1/schema/scan-batch.json",
                   "properties": {"events": {"type": "array", "minItems": 1, "maxItems": 500,
                                             "items": {"type": "object"}}}},
        "example": EXAMPLE_BATCH}}}},
    responses=documented(401, 413, 415, 429, notes={
        400: "The body is not valid JSON (`invalid_json`)",
        403: "The role may not upload (only scanner and brand-system tokens do)",
        422: "The body is not a batch, or it holds no or more than 500 events; each event's own "
             "faults are answered per event in a 200",
        503: "Storage unavailable; nothing was stored, retry after `Retry-After`"}),
)
async def post_scan_batch(request: Request, principal: PrincipalDep, pool: PoolDep,
                          county: CountyDep) -> BatchResult:
    require_role(principal, *EMITTABLE)
    settings = request.app.state.settings
    try:
        require_json(request)
        raw_events = _parse_events(await _read_body(request, settings.max_body_bytes),
                                   settings.max_batch_events)
    except ApiError as exc:
        INGEST_BATCHES.labels(outcome=exc.code).inc()
        raise
    request.app.state.limits.charge_events(principal.token_id, len(raw_events))
    outcomes = validate_batch(
        raw_events, county=county, permitted_brands=principal.brands,
        permitted_types=EMITTABLE[principal.role], device_id=principal.device_id,
        recorded_at=journal.recorded_now(), max_age=timedelta(days=settings.max_event_age_days),
    )
    valid = [o for o in outcomes if isinstance(o, Envelope)]
    uploader = Uploader(Writer(principal.role, principal.brands, principal.node_id),
                        principal.token_id, principal.device_id)
    async with pool.acquire() as conn, conn.transaction():
        admission = await admit(conn, county, uploader, valid, request.app.state.pii)
    for record in admission.conflicts:
        INGEST_CONFLICTS.labels(kind=str(record.kind)).inc()
    results = [_result(i, raw, o, admission.verdicts, admission.refusals)
               for i, (raw, o) in enumerate(zip(raw_events, outcomes))]
    for r in results:
        INGEST_EVENTS.labels(result=r.status, reason=r.reason or "").inc()
    INGEST_BATCHES.labels(outcome="ok").inc()
    counts = {s: sum(r.status == s for r in results)
              for s in ("accepted", "duplicate", "conflict", "rejected")}
    return BatchResult(results=results, **counts)


def _result(index: int, raw: object, outcome: Envelope | Rejection, verdicts: dict[str, Verdict],
            refusals: dict[str, Refusal]) -> EventResult:
    if isinstance(outcome, Rejection):
        return EventResult(index=index, event_id=_raw_event_id(raw), status="rejected",
                           reason=str(outcome.reason), path=outcome.path, message=outcome.message)
    verdict = verdicts[outcome.event_id]
    if verdict is Verdict.refused:
        refusal = refusals[outcome.event_id]
        where = {"brand": "brand", "type": "type"}.get(refusal.field, f"payload.{refusal.field}")
        return EventResult(index=index, event_id=outcome.event_id, status="rejected",
                           reason=str(refusal.reason), path=f"$.events[{index}].{where}",
                           message=refusal.message)
    if verdict is Verdict.conflict:
        return EventResult(
            index=index, event_id=outcome.event_id, status="conflict", reason="event_id_reused",
            path=f"$.events[{index}].event_id",
            message="this event_id is already in the journal with different content; an event "
                    "never changes: send a correction under a new event_id")
    status: Literal["accepted", "duplicate"] = (
        "accepted" if verdict is Verdict.accepted else "duplicate")
    return EventResult(index=index, event_id=outcome.event_id, status=status)
