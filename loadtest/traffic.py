"""A county's parcel traffic as wire-form events: the model the demo and the load drivers share."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from domain.county import County

# Each brand's waybill as its own labels print it (one regex per brand in WAYBILL_FORMATS): a
# prefix and random digits, so a neighbour cannot be found by counting up from a known waybill.
BRAND_PREFIX = {"EMS": "E", "ZTO": "7", "YTO": "YT", "STO": "77", "YUNDA": "43", "JT": "JT",
                "SF": "SF", "JD": "JD"}
WAYBILL_FORMATS = {"EMS": r"^E[A-Z][0-9]{9}CN$", "ZTO": r"^7[0-9]{13}$", "YTO": r"^YT[0-9]{13}$",
                   "STO": r"^77[0-9]{13}$", "YUNDA": r"^43[0-9]{13}$", "JT": r"^JT[0-9]{13}$",
                   "SF": r"^SF[0-9]{13}$", "JD": r"^JD[0-9]{13}$"}
_WAYBILL_LENGTH = {"ZTO": 14, "STO": 15, "YUNDA": 15}  # all digits; the letter brands: prefix + 13
_S10_WEIGHTS = (8, 6, 4, 2, 3, 5, 9, 7)
# The downward chain at county level and below: (action, tier of the node it happens at).
LIFECYCLE = (("received", "county"), ("sorted", "county"), ("loaded", "county"),
             ("arrived", "township"), ("out_for_delivery", "township"), ("stored", "village"),
             ("delivered", "village"))


def event_id() -> str:
    """A fresh event id as a handheld would make one."""
    return str(uuid.uuid4())


@dataclass
class Parcel:
    waybill: str
    brand: str
    village: str
    phone: str
    step: int = -1  # index into LIFECYCLE of the last scan sent; -1: only registered
    late_upload_hours: int = 0  # its centre scan reaches us this many hours after it happened


@dataclass
class CountyTraffic:
    """Registers parcels and walks them down the chain, one scan per call, in event time."""

    county: County
    seed: int = 7
    late_share: float = 0.0       # share of parcels whose centre scan is uploaded late
    late_upload_hours: int = 13
    parcels: list[Parcel] = field(default_factory=list)
    departed: set[str] = field(default_factory=set)
    issued: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        # Waybills come from a stream of their own, so every other draw of a seed stays as it was.
        self.waybill_rng = random.Random(f"waybills-{self.seed}")
        self.villages = [n.id for n in self.county.villages]

    def waybill(self, brand: str) -> str:
        """A fresh waybill in `brand`'s format, unique in this run."""
        while True:
            candidate = waybill_for(brand, self.waybill_rng)
            if candidate not in self.issued:
                self.issued.add(candidate)
                return candidate

    def register(self, at: datetime, to: tuple[str, str] | None = None) -> tuple[Parcel, dict[str, Any]]:
        """A new parcel of a random brand, for a random recipient and village, or for `to`
        (village, phone): a household that gets several parcels."""
        brand = self.rng.choice(self.county.brands)
        waybill = self.waybill(brand)
        if to is None:
            phone = f"1{self.rng.choice('3578')}{self.rng.randrange(10**9):09d}"
            village = self.rng.choice(self.villages)
        else:
            village, phone = to
        parcel = Parcel(waybill, brand, village, phone,
                        late_upload_hours=self.late_upload_hours if self.rng.random() < self.late_share else 0)
        self.parcels.append(parcel)
        return parcel, envelope("parcel.registered", 2, at, brand, "manifest", {
            "waybill": waybill, "recipient_phone": phone, "destination_village": parcel.village,
            "weight_g": self.rng.randrange(100, 8000)})

    def advance(self, parcel: Parcel, at: datetime) -> dict[str, Any] | None:
        """The parcel's next scan, or None once it has been delivered."""
        if parcel.step + 1 >= len(LIFECYCLE):
            return None
        parcel.step += 1
        action, tier = LIFECYCLE[parcel.step]
        chain = dict(zip(("county", "township", "village"), self.county.planned_chain(parcel.village)))
        payload: dict[str, Any] = {"waybill": parcel.waybill, "action": action, "node_id": chain[tier]}
        if action == "received" and parcel.late_upload_hours:
            # A handheld that was offline: the scan happened hours ago and reaches us only now.
            at = at - timedelta(hours=parcel.late_upload_hours)
        if action in ("loaded", "arrived"):
            payload["trip_id"] = self.trip_for(parcel.village, at)
        if action == "stored":
            payload["pickup_code"] = (f"{self.rng.randrange(1, 20)}-{self.rng.randrange(1, 6)}-"
                                      f"{self.rng.randrange(1000, 9999)}")
        return envelope("parcel.scanned", 1, at, parcel.brand, f"op-{chain[tier][-6:]}", payload)


    def trip_for(self, village: str, at: datetime) -> str:
        """The fixed run that carries a parcel for this village: its route, day and half-day."""
        route = self.route_of(village)
        return f"T-{at:%Y%m%d}-{route}-{'AM' if at.hour < 12 else 'PM'}"

    def route_of(self, village: str) -> str:
        return next(r.id for r in self.county.routes if village in r.stops)

    def departures(self, scans: list[dict[str, Any]], at: datetime) -> list[dict[str, Any]]:
        """One `vehicle.departed` for each run first seen in these scans."""
        out = []
        for scan in scans:
            trip = scan["payload"].get("trip_id")
            if trip and trip not in self.departed:
                self.departed.add(trip)
                route = trip.split("-", 2)[2].rsplit("-", 1)[0]
                run = next(r for r in self.county.route(route).runs  # type: ignore[union-attr]
                           if r.id.endswith(trip[-2:]))
                # The demo's runs leave when their parcels are loaded; now and then one is late.
                scheduled = at - timedelta(minutes=self.rng.choice((0, 2, 5, 8, 25)))
                out.append(envelope("vehicle.departed", 1, at, scan["brand"], "driver", {
                    "trip_id": trip, "route_id": route, "run_id": run.id,
                    "node_id": self.county.centre.id, "scheduled_at": scheduled.isoformat()}))
        return out


def waybill_for(brand: str, rng: random.Random) -> str:
    """A random waybill in the brand's format (WAYBILL_FORMATS); EMS's is a UPU S10 number with its
    check digit, the other brands' are a prefix and digits."""
    if brand == "EMS":
        serial = f"{rng.randrange(10**8):08d}"
        check = 11 - sum(int(d) * w for d, w in zip(serial, _S10_WEIGHTS)) % 11
        check = {10: 0, 11: 5}.get(check, check)
        return f"E{chr(ord('A') + rng.randrange(26))}{serial}{check}CN"
    prefix = BRAND_PREFIX.get(brand, "GP")
    digits = _WAYBILL_LENGTH.get(brand, len(prefix) + 13) - len(prefix)
    return f"{prefix}{rng.randrange(10**digits):0{digits}d}"


def envelope(event_type: str, version: int, at: datetime, brand: str, operator: str,
             payload: dict[str, Any]) -> dict[str, Any]:
    return {"event_id": event_id(), "type": event_type, "schema_version": version,
            "occurred_at": at.isoformat(), "brand": brand, "operator_id": operator,
            "payload": payload}


def county_time(county: County, now: datetime) -> datetime:
    """`now` expressed in the county's own offset (how its handhelds stamp events)."""
    from datetime import timezone

    return now.astimezone(timezone(timedelta(minutes=county.utc_offset_minutes)))
