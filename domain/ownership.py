"""Who a waybill belongs to, and which brand's events may change it.

Eight competing brands share one platform, so a waybill belongs to one brand: the brand whose
manifest (`parcel.registered`) registered it first. The county centre's and the stations' scanners
handle every brand's parcels, so a scanner token may carry several brands; what it may not do is
write an event under one brand into another brand's parcel. Rules, decided per event in journal
order, in the same transaction as the append:

- A manifest for an unknown waybill makes its brand the owner. An upward hand-in
  (`parcel.handed_in`) is a manifest here: first claim wins, exactly alike.
- A scan (or sort) that comes before any manifest is accepted and makes its brand the *claimant*;
  the claimant's manifest then confirms it. A manifest from another brand after such scans is a
  conflict for the county manager, never a takeover.
- The owner's own manifest again (a corrected phone or destination) is accepted and is an event in
  the timeline.
- Every other parcel event under a brand that is not the owner's (or claimant's) is refused:
  `waybill_owned_by_other_brand`, and recorded as a conflict.
- Consent comes only from the owner's systems or from a scanner of the village point that serves
  the parcel, and only once the parcel is registered (before that, nobody knows which point it is).
- Where the county file gives a brand's waybill pattern, that brand's waybills must match it.

Pure: the caller loads the owners, passes them in, and stores what `decide` says."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum

from domain.events import (
    CURRENT_VERSION,
    PAYLOADS,
    ConsentRecorded,
    ParcelHandedIn,
    ParcelRegistered,
    ParcelScanned,
    ParcelSorted,
    Payload,
    type_name,
)
from domain.validation import Reason

# The events that write into a waybill, and so are ownership's business.
OWNED: tuple[type[Payload], ...] = (ParcelRegistered, ParcelScanned, ParcelSorted,
                                    ConsentRecorded, ParcelHandedIn)
# The events that claim a waybill as a manifest does: a brand's manifest line, and an upward
# parcel's hand-in at a village point (the brand's own waybill, on the brand's own label).
MANIFESTS: tuple[type[Payload], ...] = (ParcelRegistered, ParcelHandedIn)
OWNED_TYPES = frozenset(type_name(kind) for kind in OWNED)


class Conflict(StrEnum):
    """Why an event became a conflict for the county manager to look at."""

    registration_by_other_brand = "registration_by_other_brand"
    manifest_after_other_brand_scans = "manifest_after_other_brand_scans"
    scan_by_other_brand = "scan_by_other_brand"
    consent_by_other_brand = "consent_by_other_brand"
    event_id_reused = "event_id_reused"


@dataclass(frozen=True)
class Owner:
    """A waybill's brand: `registered` once its manifest came, else the first scanner's claim."""

    waybill: str
    brand: str
    registered: bool
    destination_village: str | None = None


@dataclass(frozen=True)
class Writer:
    """Who uploads: the token's role, its brands, and the node a scanner is installed at."""

    role: str
    brands: frozenset[str]
    node_id: str | None = None


@dataclass(frozen=True)
class Refusal:
    """An event refused for ownership: the reason, the field, a message, and the conflict to record
    (None: refused, but nothing a manager need look at)."""

    reason: Reason
    field: str
    message: str
    conflict: Conflict | None = None


@dataclass(frozen=True)
class Decision:
    """Accepted (with the owner as it stands afterwards), or refused."""

    owner: Owner | None
    refusal: Refusal | None = None


def waybill_pattern_refusal(waybill: str, brand: str,
                            patterns: dict[str, re.Pattern[str]]) -> Refusal | None:
    """A waybill that does not look like one of its brand's, where the county names a pattern."""
    pattern = patterns.get(brand)
    if pattern is None or pattern.fullmatch(waybill):
        return None
    return Refusal(Reason.waybill_pattern_mismatch, "waybill",
                   f"'{waybill}' is not a {brand} waybill (expected {pattern.pattern})")


def _not_yours(owner: Owner, brand: str, writer: Writer, conflict: Conflict) -> Refusal:
    # Name the owner only to a token that acts for it (a station scanner that picked the wrong
    # brand); to a competitor, the refusal says no more than that the waybill is taken.
    if owner.brand in writer.brands:
        whose = f"{owner.brand}'s, not {brand}'s: send it under {owner.brand}"
    else:
        whose = "another brand's"
    state = "" if owner.registered else " (scanned under that brand before any manifest)"
    return Refusal(Reason.waybill_owned_by_other_brand, "brand",
                   f"waybill {owner.waybill} is {whose}{state}", conflict)


def decide(event_type: str, brand: str, waybill: str, destination_village: str | None,
           owner: Owner | None, writer: Writer) -> Decision:
    """Whether an event of `brand` may write into `waybill`, and the owner afterwards."""
    kind = PAYLOADS[(event_type, CURRENT_VERSION[event_type])]
    if kind in MANIFESTS:
        if owner is None:
            return Decision(Owner(waybill, brand, True, destination_village))
        if owner.brand != brand:
            conflict = (Conflict.registration_by_other_brand if owner.registered
                        else Conflict.manifest_after_other_brand_scans)
            return Decision(owner, _not_yours(owner, brand, writer, conflict))
        if kind is ParcelHandedIn:  # names no destination: the manifest's (if any) stands
            return Decision(replace(owner, registered=True))
        return Decision(replace(owner, registered=True, destination_village=destination_village))
    if kind is ConsentRecorded:
        if owner is None or not owner.registered:
            return Decision(owner, Refusal(
                Reason.waybill_not_registered, "waybill",
                f"no manifest for {waybill} yet: consent is recorded against a registered parcel;"
                " send it again once the brand's manifest is in"))
        if owner.brand != brand:
            return Decision(owner, _not_yours(owner, brand, writer, Conflict.consent_by_other_brand))
        if writer.role != "brand-system" and (
                writer.node_id is None or writer.node_id != owner.destination_village):
            return Decision(owner, Refusal(
                Reason.consent_not_permitted, "type",
                "consent comes from the owner brand's systems or from a scanner of the village"
                " point serving this parcel"))
        return Decision(owner)
    # ParcelScanned, ParcelSorted: the rest of OWNED
    if owner is None:
        return Decision(Owner(waybill, brand, False))
    if owner.brand != brand:
        return Decision(owner, _not_yours(owner, brand, writer, Conflict.scan_by_other_brand))
    return Decision(owner)
