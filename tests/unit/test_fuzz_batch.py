"""Bad input, fuzzed: arbitrary bytes and JSON through the upload's own decoder and validator.

The properties (issue 12): whatever a handheld sends, only a documented per-event reason comes
back, nothing else raises (no 500 path), and one bad event never refuses the batch. Pure: the
same functions `POST /v1/scan-batches` calls before the database (`_parse_events`,
`validate_batch`, `_result`), then the answer rendered as Starlette renders it.

Derandomised and bounded for the unit tier; `GONGPEI_FUZZ_EXAMPLES=20000` runs it long by hand
(docs/events.md, "Fuzzing").
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from fastapi.responses import JSONResponse
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from api.errors import ApiError, error_body
from api.routes.ingest import EMITTABLE, BatchResult, EventResult, _parse_events, _result
from domain.envelope import Envelope, content_digest
from domain.events import NODE_FIELDS
from domain.validation import Reason, Rejection, validate_batch, validate_event
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY, Settings
from projections.admission import Verdict

COUNTY = load_county(DEMO_COUNTY)
ALL = frozenset(COUNTY.brands)
NOW = datetime(2026, 11, 11, 2, 0, tzinfo=UTC)
HORIZON = timedelta(days=30)
MAX_EVENTS = Settings.max_batch_events
EVENTS_MD = Path(__file__).parents[2] / "docs" / "events.md"


def _fuzz(default: int) -> settings:
    """Fixed seed, no example database; `GONGPEI_FUZZ_EXAMPLES` overrides the bound."""
    return settings(derandomize=True, database=None, deadline=None,
                    max_examples=int(os.environ.get("GONGPEI_FUZZ_EXAMPLES") or default),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


# ------------------------------------------------------------------ the documented vocabulary

def documented_reasons() -> set[str]:
    """The reasons docs/events.md lists under "rejected with:" (first column of its table)."""
    text = EVENTS_MD.read_text(encoding="utf-8").split("`rejected` with:", 1)[1]
    rows = re.findall(r"^\| ([^|]+) \|", text.split("\n\n", 2)[1], flags=re.MULTILINE)
    return {name for row in rows for name in re.findall(r"`([a-z_]+)`", row)}


# Whole-request refusals: the body is not a batch at all (docs/events.md, docs/api.md).
REQUEST_ERRORS = {(400, "invalid_json"), (422, "wrong_type"), (422, "unknown_field"),
                  (422, "missing_field"), (422, "invalid_value"), (422, "too_many_events")}
# What validation alone can decide; the ownership reasons need the stored owners (admission).
VALIDATION_REASONS = set(Reason) - {Reason.waybill_owned_by_other_brand,
                                    Reason.waybill_not_registered, Reason.consent_not_permitted,
                                    Reason.waybill_pattern_mismatch}
_LONG_DIGITS = re.compile(r"\d{7,}")
_CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
                           r"|[0-7][0-9A-HJKMNP-TV-Z]{25}", re.ASCII)


def test_the_documented_reasons_are_the_code_s_reasons() -> None:
    assert documented_reasons() == {r.value for r in Reason}


# ------------------------------------------------------------------ good events, by type

def _good(i: int, kind: str) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "event_id": f"0193b6c4-0000-7000-8000-{i:012x}", "schema_version": 1,
        "occurred_at": "2026-11-11T09:15:32+08:00", "brand": "ZTO", "operator_id": "op-8812"}
    waybill = f"ZT73{i:011d}"
    shapes: dict[str, tuple[str, int, dict[str, Any]]] = {
        "scan": ("parcel.scanned", 1, {"waybill": waybill, "action": "arrived",
                                       "node_id": "TWN-XILIU"}),
        "stored": ("parcel.scanned", 1, {"waybill": waybill, "action": "stored",
                                         "node_id": "VIL-XILIU-01", "pickup_code": "10-2-7507"}),
        "problem": ("parcel.scanned", 1, {"waybill": waybill, "action": "problem",
                                          "node_id": "CTY-HAICHENG", "problem_reason": "damaged"}),
        "manifest": ("parcel.registered", 2, {"waybill": waybill, "recipient_phone": "13812345678",
                                              "destination_village": "VIL-XILIU-01",
                                              "weight_g": 1200, "length_mm": 300}),
        "manifest_v1": ("parcel.registered", 1, {"waybill": waybill, "phone": "13812345678",
                                                 "village": "VIL-XILIU-02", "weight_g": 900}),
        "sorted": ("parcel.sorted", 1, {"waybill": waybill, "node_id": "CTY-HAICHENG",
                                        "chute": "A-12"}),
        "departed": ("vehicle.departed", 1, {"trip_id": "T-20261111-R-XILIU-AM",
                                             "route_id": "R-XILIU", "run_id": "R-XILIU-AM",
                                             "node_id": "CTY-HAICHENG",
                                             "scheduled_at": "2026-11-11T08:00:00+08:00"}),
        "consent": ("consent.recorded", 1, {"waybill": waybill, "consent": True,
                                            "channel": "sms"}),
        "sms": ("sms.submitted", 1, {"sms_id": "sms-01", "provider": "aliyun",
                                     "provider_message_id": "m-1", "attempt": 1}),
    }
    event_type, version, payload = shapes[kind]
    return {**envelope, "type": event_type, "schema_version": version, "payload": payload}


KINDS = ("scan", "stored", "problem", "manifest", "manifest_v1", "sorted", "departed", "consent",
         "sms")


def check_batch(events: list[Any], brands: frozenset[str] = ALL,
                types: frozenset[str] | None = None) -> list[Envelope | Rejection]:
    return validate_batch(events, county=COUNTY, permitted_brands=brands, device_id="pda-fuzz",
                          recorded_at=NOW, permitted_types=types, max_age=HORIZON)


def test_every_good_template_is_accepted() -> None:
    assert all(isinstance(o, Envelope) for o in check_batch([_good(i, k) for i, k in
                                                             enumerate(KINDS)]))


# ------------------------------------------------------------------ junk

# Characters that have fooled parsers: other scripts' digits (fullwidth, Arabic-Indic,
# superscript), letters that case-fold to ASCII (Kelvin and Angstrom signs, long s, dotted and
# dotless i), NUL and controls, bidi marks, a combining accent, an emoji; and the lone surrogates
# a decoder other than orjson might let through.
ODD = "０１９８１３６７８ＡＺＺＴＯ٠١٣٨²³\u212a\u017f\u0131\u0130\u212b\x00\x01\n\r\t \u200b\u200e\u202e\u0301\ufeff😀中\ud800\udfff"
ODD_TEXT = st.text(st.sampled_from(ODD) | st.characters(), max_size=24)
NUMBERS = (st.integers(-(2**63), 2**64 - 1) | st.integers() | st.floats()
           | st.sampled_from([0, -0.0, 1.0, 2**63, 2**64, 10**400, float("nan"), float("inf")]))
LONG_TEXT = st.builds(lambda s, n: s * n, st.sampled_from(["1", "A", "中", "１", "ZT7"]),
                      st.integers(500, 70_000))
SCALARS = st.none() | st.booleans() | NUMBERS | ODD_TEXT | LONG_TEXT
JUNK = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(ODD_TEXT, inner, max_size=4), max_leaves=12)


def _deep(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf] if depth % 2 else {"a": leaf}
    return leaf


# Deeper than orjson's 1024 levels is a 400 (the bytes test); here, as deep as Python values go.
DEEP = st.builds(_deep, st.integers(50, 600), SCALARS)

_ID = "0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2a10"
EVENT_IDS = st.sampled_from([
    _ID.upper(), "{" + _ID + "}", "urn:uuid:" + _ID, _ID.replace("-", ""), _ID + "\n", " " + _ID,
    _ID.replace("0", "０"), _ID.replace("1", "١"), _ID[:-1], _ID + "0", "01JDK7QWZ8X3V5M2N4P6R8T0YA",
    "01jdk7qwz8x3v5m2n4p6r8t0ya", "81JDK7QWZ8X3V5M2N4P6R8T0YA", "01JDK7QWZ8X3V5M2N4P6R8T0Y\u212a",
    "01JDK7QWZ8X3V5M2N4P6R8T0Y\u017f", "01JDK7QWZ8X3V5M2N4P6R8T0YI", "01JDK7QWZ8X3V5M2N4P6R8T0Y\u0131",
    "", "13812345678", "0" * 26, "0" * 36,
]) | ODD_TEXT
STAMPS = st.sampled_from([
    "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-11-11T09:15:32",
    "2026-11-11T09:15:32Z", "2026-11-11 09:15:32+08", "2026-11-11T09:15:32+24:00",
    "2026-11-11T09:15:32+23:59:59.999999", "2026-W46-3T09:15+08:00", "20261111T091532+0800",
    "２０２６-11-11T09:15:32+08:00", "2026-11-11T09:15:32+08:00\x00junk", "2026-11-11T09:15:32+08:00\n",
    "2026-11-13T09:15:32+08:00", "2026-09-01T09:15:32+08:00", "2026-02-30T00:00:00+08:00",
    "2026-11-11T24:00:00+08:00", "2026-11-11T09:15:60+08:00", "",
]) | ODD_TEXT


# Near misses: real values in the wrong place, almost-real ones, and other spellings of real ones.
NEAR = st.sampled_from([
    "CTY-HAICHENG", "TWN-XILIU", "VIL-XILIU-01", "TWN-NOWHERE", "VIL-XILIU-99", "twn-xiliu",
    "SF", "JD", "zto", "ＺＴＯ", "DHL", "parcel.teleported", "sms.requested", "period.closed",
    "parcel.pickup_assigned", "Parcel.Scanned", "parcel.registered", "vehicle.arrived", "stored",
    "problem", "delivered", "10-2-7507", "999-99-99999", "ZT７３００１２３４５６７８",
    "１３８１２３４５６７８", "ZT7300012345678\n", "TWN-XILIU\n", "ｓｔｏｒｅｄ", "Stored",
    "VIL-XILIU-01 ", "13812345678", "23812345678", "damaged", "bored",
]) | STAMPS


@st.composite
def bad_events(draw: st.DrawFn) -> Any:
    """A good event of some type with one to three faults, or no event at all."""
    event = _good(999, draw(st.sampled_from(KINDS)))
    event["event_id"] = _ID
    if draw(st.integers(0, 9)) == 0:
        return draw(JUNK | DEEP)
    for _ in range(draw(st.integers(1, 3))):
        payload = event.get("payload")
        fault = draw(st.sampled_from(["set", "drop", "add", "pset", "pdrop", "padd", "payload",
                                      "id", "stamp", "version", "deep", "node"]))
        field = draw(st.sampled_from(sorted(event) or ["event_id"]))
        if fault == "set":
            event[field] = draw(JUNK | NEAR)
        elif fault == "drop":
            event.pop(field, None)
        elif fault == "add":
            event[draw(ODD_TEXT | st.sampled_from(["recorded_at", "device_id"]))] = draw(JUNK)
        elif fault == "payload":
            event["payload"] = draw(JUNK | DEEP)
        elif fault == "id":
            event["event_id"] = draw(EVENT_IDS)
        elif fault == "stamp":
            event["occurred_at"] = draw(STAMPS)
        elif fault == "version":
            event["schema_version"] = draw(NUMBERS | st.sampled_from(["1", "１", True, [1]]))
        elif fault == "deep":
            event[field] = draw(DEEP)
        elif fault == "node" and isinstance(payload, dict):
            nodes = sorted(set(payload) & set(NODE_FIELDS)) or ["node_id"]
            payload[draw(st.sampled_from(nodes))] = draw(st.sampled_from(
                ["CTY-HAICHENG", "TWN-XILIU", "VIL-XILIU-01", "TWN-NOWHERE", "VIL-XILIU-99"]))
        elif isinstance(payload, dict) and payload:
            key = draw(st.sampled_from(sorted(payload)))
            if fault == "pset":
                payload[key] = draw(JUNK | NEAR)
            elif fault == "pdrop":
                payload.pop(key)
            else:
                payload[draw(ODD_TEXT)] = draw(JUNK)
    return event


# ------------------------------------------------------------------ the route, short of the database

def answer(body: bytes, brands: frozenset[str] = ALL,
           types: frozenset[str] | None = None) -> tuple[int, bytes, list[Envelope | Rejection]]:
    """What POST /v1/scan-batches answers for `body`, every step that needs no database taken by
    the route's own functions; admission is taken to accept every valid event."""
    try:
        events = _parse_events(body, MAX_EVENTS)
    except ApiError as exc:
        assert (exc.status, exc.code) in REQUEST_ERRORS, (exc.status, exc.code)
        return exc.status, JSONResponse(error_body(exc.code, exc.message, exc.path)).body, []
    outcomes = check_batch(events, brands, types)
    verdicts = {o.event_id: Verdict.accepted for o in outcomes if isinstance(o, Envelope)}
    results = [_result(i, raw, o, verdicts, {}) for i, (raw, o) in enumerate(zip(events, outcomes))]
    batch = BatchResult(accepted=sum(r.status == "accepted" for r in results), duplicate=0,
                        conflict=0, rejected=sum(r.status == "rejected" for r in results),
                        results=results)
    return 200, JSONResponse(batch.model_dump()).body, outcomes


def assert_sound(outcomes: list[Envelope | Rejection], documented: set[str]) -> None:
    """Each rejection is a documented reason at its own event's path, with a message; each
    accepted envelope has a canonical id and can be digested, keyed and serialised as admission
    and the journal will."""
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, Rejection):
            assert outcome.reason in VALIDATION_REASONS and outcome.reason.value in documented
            assert outcome.path.startswith(f"$.events[{i}]") and outcome.message
        else:
            assert isinstance(outcome, Envelope)
            assert _CANONICAL_ID.fullmatch(outcome.event_id), outcome.event_id
            wire = outcome.to_wire()
            orjson.dumps(wire)
            content_digest(wire)
            assert outcome.partition_key


def assert_masked(rendered: bytes) -> None:
    """No run of seven digits, in any script, in what a rejection echoes (ids of accepted events
    are canonical and exempt)."""
    doc = orjson.loads(rendered)
    if "error" in doc:
        assert not _LONG_DIGITS.search(doc["error"]["message"] + doc["error"].get("path", ""))
        return
    for r in doc["results"]:
        if r["status"] == "rejected":
            echoed = (r["event_id"] or "") + r["path"] + r["message"]
            assert not _LONG_DIGITS.search(echoed), echoed


DOCUMENTED = documented_reasons()
PERMITS = st.tuples(st.sampled_from([ALL, frozenset({"ZTO"}), frozenset({"SF", "JD"})]),
                    st.sampled_from([None, EMITTABLE["scanner"], EMITTABLE["brand-system"]]))


# ------------------------------------------------------------------ the properties

@_fuzz(800)
@given(body=st.binary(max_size=256) | st.builds(lambda t: t.encode("utf-8", "surrogatepass"),
                                                  st.text(st.sampled_from('{}[]":,0123456789'
                                                                          'eE+-.\\u tfnlrsaNIy\ud800'),
                                                          max_size=80)))
@example(body=b'{"events": [NaN, Infinity, -Infinity]}')
@example(body=b'{"events": [{"event_id": "\\ud800"}]}')
@example(body=b'{"events": [{"event_id": "\xed\xa0\x80"}]}')
@example(body=b'{"events": [1' + b"0" * 400 + b"]}")
@example(body=b'{"events": ' + b"[" * 5000 + b"]" * 5000 + b"}")
@example(body=b'\xef\xbb\xbf{"events": [{}]}')
def test_given_any_bytes_then_a_documented_answer_and_never_an_exception(body: bytes) -> None:
    status, rendered, outcomes = answer(body)
    assert status in (200, 400, 422)
    assert_sound(outcomes, DOCUMENTED)
    assert_masked(rendered)


@_fuzz(800)
@given(doc=JUNK | DEEP | st.builds(lambda evs: {"events": evs}, st.lists(JUNK | DEEP, max_size=6)),
       permits=PERMITS)
def test_given_any_json_value_as_the_body_then_a_documented_answer(
        doc: Any, permits: tuple[frozenset[str], frozenset[str] | None]) -> None:
    try:
        body = orjson.dumps(doc)
    except (orjson.JSONEncodeError, TypeError):  # beyond JSON (NaN, 10**400, a lone surrogate)
        if isinstance(doc, dict) and isinstance(doc.get("events"), list):
            assert_sound(check_batch(doc["events"], *permits), DOCUMENTED)
        return
    status, rendered, outcomes = answer(body, *permits)
    assert status in (200, 400, 422)
    assert_sound(outcomes, DOCUMENTED)
    assert_masked(rendered)


@_fuzz(1500)
@given(events=st.lists(bad_events(), min_size=1, max_size=5), permits=PERMITS)
@example(events=[{**_good(1, "scan"), "event_id": "01JDK7QWZ8X3V5M2N4P6R8T0Y\u212a"}],
         permits=(ALL, None))
def test_given_faulty_events_then_each_is_judged_alone_with_a_documented_reason(
        events: list[Any], permits: tuple[frozenset[str], frozenset[str] | None]) -> None:
    # Straight to the validator too: Python values a JSON decoder would never make (NaN, 10**400,
    # lone surrogates) must not make it raise either.
    assert_sound(check_batch(events, *permits), DOCUMENTED)
    try:
        body = orjson.dumps({"events": events})
    except (orjson.JSONEncodeError, TypeError):
        return
    status, rendered, outcomes = answer(body, *permits)
    assert status == 200
    assert len(outcomes) == len(events)
    assert_sound(outcomes, DOCUMENTED)
    assert_masked(rendered)


@_fuzz(800)
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=0, max_size=12), bad=bad_events(),
       data=st.data())
def test_given_good_events_and_one_bad_one_anywhere_then_only_the_bad_one_is_rejected(
        kinds: list[str], bad: Any, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(kinds)), label="at")
    alone = validate_event(bad, index=at, county=COUNTY, permitted_brands=ALL,
                           device_id="pda-fuzz", recorded_at=NOW, max_age=HORIZON)
    assume(isinstance(alone, Rejection))  # a fault that left the event valid is no bad event
    events: list[Any] = [_good(i, k) for i, k in enumerate(kinds)]
    events.insert(at, bad)
    try:
        body = orjson.dumps({"events": events})
    except (orjson.JSONEncodeError, TypeError):
        outcomes = check_batch(events)  # no decoder makes these values; the validator still must
    else:
        status, _, outcomes = answer(body)
        assert status == 200
        events = orjson.loads(body)["events"]
        alone = validate_event(events[at], index=at, county=COUNTY, permitted_brands=ALL,
                               device_id="pda-fuzz", recorded_at=NOW, max_age=HORIZON)
    assert [isinstance(o, Envelope) for o in outcomes] == [i != at for i in range(len(events))]
    assert outcomes[at] == alone and isinstance(alone, Rejection)
    assert alone.path.startswith(f"$.events[{at}]")


# Spellings an id's characters can take: Crockford base32 and hex in both cases, the letters it
# leaves out, and look-alikes (Kelvin sign, long s, dotless i, fullwidth, other scripts' digits).
_ID_CHARS = ("0123456789ABCDEFGHJKMNPQRSTVWXYZabcdefghjkmnpqrstvwxyz" "ILOUilou-{}:"
             "\u212a\u017f\u0131\u0130０１ＡＢ٠١²")
GENERATED_IDS = (st.text(st.sampled_from(_ID_CHARS), min_size=26, max_size=26)
                 | st.text(st.sampled_from(_ID_CHARS), min_size=36, max_size=36)
                 | st.builds(lambda a, b: a + b, st.sampled_from(["01JDK7QWZ8X3V5M2N4P6R8T0Y",
                                                                  _ID[:-1]]),
                             st.sampled_from(_ID_CHARS)))


@_fuzz(800)
@given(event_id=GENERATED_IDS | EVENT_IDS)
@example(event_id="01JDK7QWZ8X3V5M2N4P6R8T0Y\u212a")
def test_given_any_id_spelling_then_invalid_event_id_or_one_ascii_canonical_id(
        event_id: str) -> None:
    out = check_batch([{**_good(1, "scan"), "event_id": event_id}])[0]
    if isinstance(out, Rejection):
        assert (out.reason, out.path) == (Reason.invalid_event_id, "$.events[0].event_id")
    else:
        assert _CANONICAL_ID.fullmatch(out.event_id), out.event_id
        assert out.event_id in (event_id.lower(), event_id.upper())


_STAMP = "2026-11-11T09:15:32+08:00"
SPLICED_STAMPS = st.builds(lambda at, ch: _STAMP[:at] + ch + _STAMP[at:],
                           st.integers(0, len(_STAMP)), st.sampled_from(ODD) | st.characters())


@_fuzz(800)
@given(stamp=SPLICED_STAMPS | STAMPS)
@example(stamp="2026-11-11T09:15:32\x00+08:00")
def test_given_any_occurred_at_spelling_then_accepted_only_as_printable_ascii(stamp: str) -> None:
    out = check_batch([{**_good(1, "scan"), "occurred_at": stamp}])[0]
    if isinstance(out, Rejection):
        assert out.path == "$.events[0].occurred_at"
        assert out.reason in (Reason.invalid_value, Reason.naive_timestamp, Reason.too_old)
    else:
        assert stamp.isascii() and stamp.isprintable(), repr(stamp)


def test_given_a_ulid_with_a_kelvin_sign_then_it_is_not_a_second_spelling_of_an_ascii_id() -> None:
    # Found by this fuzz: case-insensitive matching let U+212A (KELVIN SIGN) pass for K, and it
    # stayed in the "canonical" id, so one event could be journalled under two ids.
    kelvin = {**_good(1, "scan"), "event_id": "01JDK7QWZ8X3V5M2N4P6R8T0Y\u212a"}
    out = check_batch([kelvin])
    assert isinstance(out[0], Rejection) and out[0].reason == Reason.invalid_event_id


def test_a_rejection_result_is_masked_like_the_route_masks_it() -> None:
    r = EventResult(index=0, event_id="13812345678", status="rejected", reason="invalid_event_id",
                    path="$.events[0].event_id", message="'13812345678' is not an id")
    assert "13812345678" not in (r.event_id or "") + (r.message or "")
