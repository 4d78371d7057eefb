"""Event payloads, one frozen model per (type, schema_version). The wire name is the `type`
string, never a class path. Old versions stay here so their uploads validate and upcast."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, TypeAlias, assert_never, cast, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
)

from domain.phone import is_mobile

# Patterns spell [0-9], not \d: the regex engine counts fullwidth and other scripts' digits as \d.
Waybill = Annotated[StrictStr, Field(pattern=r"^[A-Z0-9]{8,32}$")]
Ident = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
PickupCode = Annotated[StrictStr, Field(pattern=r"^[0-9]{1,3}-[0-9]{1,2}-[0-9]{1,5}$")]
Grams = Annotated[StrictInt, Field(gt=0, le=1_000_000)]
Millimetres = Annotated[StrictInt, Field(gt=0, le=10_000)]


def _mobile(v: str) -> str:
    if not is_mobile(v):
        raise ValueError("must be an 11-digit mainland mobile number")
    return v


Mobile = Annotated[StrictStr, AfterValidator(_mobile)]

# Seven digits in a row is where a (partial) phone number starts: a shipper id never holds one.
_DIGIT_RUN = re.compile(r"[0-9]{7,}")


def _not_phone_like(v: str) -> str:
    if _DIGIT_RUN.search(v):
        raise ValueError("must be a co-op or farmer id, not a phone number (7 or more digits in"
                         " a row are refused: no personal data in clear)")
    return v


# A co-op's or farmer's id (e.g. COOP-WUSHAN-017), never a personal phone number.
ShipperId = Annotated[StrictStr, Field(pattern=r"^[A-Z][A-Z0-9-]{2,31}$"),
                      AfterValidator(_not_phone_like)]


class ScanAction(StrEnum):
    """What a handheld scan says happened (到件, 分拣, 装车, 卸车, 入库, 派件, 签收, 问题件, 退回)."""

    received = "received"
    arrived = "arrived"
    sorted = "sorted"
    loaded = "loaded"
    unloaded = "unloaded"
    stored = "stored"
    out_for_delivery = "out_for_delivery"
    delivered = "delivered"
    problem = "problem"
    returned = "returned"
    # The cold chain of upward produce (农产品上行): into a cold store or reefer, out of it, and
    # handed to the airline at the county centre (产地直飞).
    cold_in = "cold_in"
    cold_out = "cold_out"
    air_loaded = "air_loaded"


class ProblemReason(StrEnum):
    address_unknown = "address_unknown"
    refused = "refused"
    damaged = "damaged"
    lost = "lost"
    no_consent = "no_consent"
    recipient_unreachable = "recipient_unreachable"
    other = "other"


class Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ParcelRegisteredV1(Payload):
    """The early manifest shape: `phone` and `village` (upload form only: upcast on arrival)."""

    waybill: Waybill
    phone: Mobile
    village: Ident
    weight_g: Grams


MaskedPhone = Annotated[StrictStr, Field(pattern=r"^[0-9]{3}\*{4}[0-9]{4}$")]


class SealedPhone(BaseModel):
    """A phone number as it is stored and published: encrypted (AES-256-GCM) with a data key of
    its own, which only the SMS sender can unwrap. `masked` stays readable (every view shows it,
    the public lookup checks its last four); `household` is a keyed hash of the number for its
    month, so two events naming one number compare equal without revealing it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{32}$")]
    ciphertext: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9+/]{40,200}={0,2}$")]
    masked: MaskedPhone
    household: Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]


class ParcelRegisteredUpload(Payload):
    """A brand's manifest line as uploaded, the recipient's phone in clear. Never journalled:
    the API seals the phone first (infra/pii.py), making it a `ParcelRegistered`."""

    waybill: Waybill
    recipient_phone: Mobile
    destination_village: Ident
    weight_g: Grams
    length_mm: Millimetres | None = None
    width_mm: Millimetres | None = None
    height_mm: Millimetres | None = None


class ParcelRegistered(Payload):
    """A brand's manifest line as stored: who the parcel is for (sealed), where it should end up."""

    waybill: Waybill
    recipient_phone: SealedPhone
    destination_village: Ident
    weight_g: Grams
    length_mm: Millimetres | None = None
    width_mm: Millimetres | None = None
    height_mm: Millimetres | None = None


class ParcelHandedIn(Payload):
    """Produce handed in at a village point by a co-op or farmer (收寄, upward): the brand's own
    waybill, who sent it (an id, never a phone), where, how heavy, and its perishable class from
    the county's [perishables] (None: not perishable). The brand owns the waybill as by a
    manifest. No recipient phone: an upward parcel gets no SMS."""

    waybill: Waybill
    shipper_id: ShipperId
    origin_village: Ident
    weight_g: Annotated[StrictInt, Field(ge=1, le=70_000)]
    perishable: Ident | None = None


class ParcelScanned(Payload):
    waybill: Waybill
    action: ScanAction
    node_id: Ident
    pickup_code: PickupCode | None = None
    problem_reason: ProblemReason | None = None
    trip_id: Ident | None = None


class ParcelSorted(Payload):
    waybill: Waybill
    node_id: Ident
    chute: Annotated[StrictStr, Field(min_length=1, max_length=32)]
    sorter_id: Ident | None = None


class VehicleMoved(Payload):
    trip_id: Ident
    route_id: Ident
    run_id: Ident
    node_id: Ident
    scheduled_at: AwareDatetime


class VehicleDeparted(VehicleMoved):
    pass


class VehicleArrived(VehicleMoved):
    pass


SmsKind = Literal["arrival", "reminder"]
ProviderCode = Annotated[StrictStr, Field(min_length=1, max_length=64)]


class PickupAssigned(Payload):
    """The platform gave a parcel stored without a code its shelf-layer-sequence pickup code."""

    waybill: Waybill
    node_id: Ident
    arrival_id: Ident
    pickup_code: PickupCode


class SmsParcel(BaseModel):
    """One parcel an SMS names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    waybill: Waybill
    brand: Ident
    arrival_id: Ident
    pickup_code: PickupCode


class SmsStep(Payload):
    """Every SMS event names the message; its Kafka key is the message id, never the phone."""

    sms_id: Ident


class SmsRequested(SmsStep):
    """The platform decided to send this text: one per digest of arrivals, or per reminder."""

    kind: SmsKind
    stage: Annotated[StrictInt, Field(ge=0, le=9)] = 0   # reminder number (0 for arrival)
    node_id: Ident
    phone_masked: MaskedPhone
    parcels: Annotated[tuple[SmsParcel, ...], Field(min_length=1, max_length=500)]
    consented: StrictBool
    template_code: Ident
    params: dict[StrictStr, StrictStr]
    text: Annotated[StrictStr, Field(min_length=1, max_length=500)]
    segments: Annotated[StrictInt, Field(ge=1, le=10)]
    send_after: AwareDatetime       # the end of quiet hours, or when it was decided
    first_known_at: AwareDatetime   # when the platform first knew of the earliest parcel in it


class SmsSubmitted(SmsStep):
    provider: Ident
    provider_message_id: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    attempt: Annotated[StrictInt, Field(ge=1)]
    recovered: StrictBool = False   # found by querying the provider after an unrecorded send


class SmsDelivered(SmsStep):
    provider: Ident
    provider_message_id: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    delivered_at: AwareDatetime


class SmsFailed(SmsStep):
    provider: Ident
    provider_code: ProviderCode
    permanent: StrictBool
    # submit: no provider took it; delivery: a provider's report says it never arrived;
    # cancelled: not sent, its parcels were collected while it waited.
    stage: Literal["submit", "delivery", "cancelled"] = "submit"


class ConsentRecorded(Payload):
    """Whether the recipient agreed to delivery into a station (《快递市场管理办法》 Art. 28)."""

    waybill: Waybill
    consent: StrictBool
    channel: Annotated[StrictStr, Field(min_length=1, max_length=32)]


class PeriodClosed(Payload):
    """Finance closed a settlement period: its postings are final from this point of the journal."""

    period: Annotated[StrictStr, Field(
        pattern=r"^[0-9]{4}-[0-9]{2}(-[0-9]{2}\.\.[0-9]{4}-[0-9]{2}-[0-9]{2})?$")]


# ------------------------------------------------------------------------------ the registry

# The closed unions reducers match on. A reducer ends its `match` with `assert_never`, so a class
# added here and not handled there is a mypy error, not a silently ignored event.
ParcelEvent: TypeAlias = (ParcelRegistered | ParcelScanned | ParcelSorted | PickupAssigned
                          | ConsentRecorded | ParcelHandedIn)
VehicleEvent: TypeAlias = VehicleDeparted | VehicleArrived
SmsEvent: TypeAlias = SmsRequested | SmsSubmitted | SmsDelivered | SmsFailed
LedgerEvent: TypeAlias = PeriodClosed
StoredPayload: TypeAlias = ParcelEvent | VehicleEvent | SmsEvent | LedgerEvent
"""Every payload the journal and Kafka can hold (current versions, phones sealed)."""
UploadOnlyPayload: TypeAlias = ParcelRegisteredV1 | ParcelRegisteredUpload
"""Payloads that exist only between upload and sealing: they hold a phone in clear."""
AnyPayload: TypeAlias = StoredPayload | UploadOnlyPayload
Manifest: TypeAlias = ParcelRegistered | ParcelRegisteredUpload
"""A manifest line at the current version: stored (phone sealed) or, between validation and
sealing, as uploaded. Readers of destination, weight and size treat both alike."""
CurrentPayload: TypeAlias = StoredPayload | ParcelRegisteredUpload
"""What an envelope can hold once validated or read back (old versions are upcast)."""


@dataclass(frozen=True)
class EventType:
    """One (type, schema_version) of the wire: its stored model, and its upload model where the
    device sends another shape (a phone in clear, sealed at ingest)."""

    name: str
    version: int
    stored: type[Payload]
    upload: type[Payload] | None = None


# The one place a type string is spelled. Everything below is derived from it.
REGISTRY: tuple[EventType, ...] = (
    EventType("parcel.registered", 1, ParcelRegisteredV1),
    EventType("parcel.registered", 2, ParcelRegistered, upload=ParcelRegisteredUpload),
    EventType("parcel.scanned", 1, ParcelScanned),
    EventType("parcel.sorted", 1, ParcelSorted),
    EventType("vehicle.departed", 1, VehicleDeparted),
    EventType("vehicle.arrived", 1, VehicleArrived),
    EventType("parcel.pickup_assigned", 1, PickupAssigned),
    EventType("sms.requested", 1, SmsRequested),
    EventType("sms.submitted", 1, SmsSubmitted),
    EventType("sms.delivered", 1, SmsDelivered),
    EventType("sms.failed", 1, SmsFailed),
    EventType("consent.recorded", 1, ConsentRecorded),
    EventType("period.closed", 1, PeriodClosed),
    EventType("parcel.handed_in", 1, ParcelHandedIn),
)

# The model of each (type, version) as read back (stored form; old versions are upcast first).
PAYLOADS: dict[tuple[str, int], type[Payload]] = {
    (t.name, t.version): t.stored for t in REGISTRY}
# The upload contract: what devices and brand systems send. It differs from the stored form only
# where the platform transforms an event before journalling it (the phone, sealed at ingest).
UPLOADS: dict[tuple[str, int], type[Payload]] = {
    (t.name, t.version): t.upload or t.stored for t in REGISTRY}
# Upload models that carry a phone in clear: an envelope holding one may not be journalled.
UNSEALED: frozenset[type[Payload]] = frozenset({ParcelRegisteredV1, ParcelRegisteredUpload})
CURRENT_VERSION: dict[str, int] = {}
for _t in REGISTRY:
    CURRENT_VERSION[_t.name] = max(_t.version, CURRENT_VERSION.get(_t.name, 0))
# Every payload class's wire type name (stored, upload and old-version models alike).
TYPE_NAMES: dict[type[Payload], str] = {
    **{t.stored: t.name for t in REGISTRY},
    **{t.upload: t.name for t in REGISTRY if t.upload is not None}}


def type_name(model: type[Payload]) -> str:
    """The wire `type` of a payload class: code names classes, the wire names strings."""
    return TYPE_NAMES[model]


_CURRENT: tuple[type[Payload], ...] = get_args(CurrentPayload)


def current(payload: Payload) -> CurrentPayload:
    """`payload` narrowed to the closed union, for a `match` that ends in `assert_never`. An old
    version that was not upcast is refused: no reader should have to know old shapes."""
    if isinstance(payload, _CURRENT):
        return cast(CurrentPayload, payload)
    raise ValueError(f"{type(payload).__name__} is not a current payload: upcast it first")


def waybill_of(payload: Payload) -> str | None:
    """The waybill a payload is about; None for events that name no parcel."""
    p = current(payload)
    match p:
        case (ParcelRegistered(waybill=w) | ParcelRegisteredUpload(waybill=w)
              | ParcelScanned(waybill=w) | ParcelSorted(waybill=w) | PickupAssigned(waybill=w)
              | ConsentRecorded(waybill=w) | ParcelHandedIn(waybill=w)):
            return w
        case (VehicleDeparted() | VehicleArrived() | SmsRequested() | SmsSubmitted()
              | SmsDelivered() | SmsFailed() | PeriodClosed()):
            return None
        case _:
            assert_never(p)


# Payload fields that name a node, and the tier that node must have (None: any tier).
NODE_FIELDS: dict[str, str | None] = {"node_id": None, "destination_village": "village",
                                      "village": "village", "origin_village": "village"}

__all__ = [
    "CURRENT_VERSION",
    "NODE_FIELDS",
    "PAYLOADS",
    "REGISTRY",
    "TYPE_NAMES",
    "UNSEALED",
    "UPLOADS",
    "AnyPayload",
    "CurrentPayload",
    "EventType",
    "Manifest",
    "ProblemReason",
    "ScanAction",
    "StoredPayload",
    "current",
    "datetime",
    "type_name",
    "waybill_of",
]
