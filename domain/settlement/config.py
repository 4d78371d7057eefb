"""Settlement configuration per county: versioned tariffs, commissions and trip costs.

Read from the county file's [settlement] table; each version has an effective date."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from domain.county import CountyConfigError

BASES = ("parcel_count", "actual_weight", "chargeable_weight", "volume", "stops",
         "fixed_plus_variable")


@dataclass(frozen=True)
class DeliveryFee:
    township_fen: int
    village_fen: int


@dataclass(frozen=True)
class TripCost:
    fixed_fen: int
    per_km_fen: int
    basis: str
    fixed_share_permille: int = 0  # for fixed_plus_variable: the part split equally


@dataclass(frozen=True)
class SettlementVersion:
    effective_from: date
    fee: DeliveryFee
    brand_fees: dict[str, DeliveryFee]
    volume_tiers: tuple[tuple[int, int], ...]      # (min parcels in period, discount fen per parcel)
    weight_surcharges: tuple[tuple[int, int], ...]  # (above grams, surcharge fen)
    commission_stored_fen: int
    commission_picked_up_fen: int
    trip_cost: TripCost
    route_costs: dict[str, TripCost] = field(default_factory=dict)

    def fee_for(self, brand: str, tier: str) -> int:
        fee = self.brand_fees.get(brand, self.fee)
        return fee.village_fen if tier == "village" else fee.township_fen

    def surcharge_for(self, weight_g: int) -> int:
        return max((fen for above, fen in self.weight_surcharges if weight_g > above), default=0)

    def discount_for(self, parcels: int) -> int:
        return max((fen for least, fen in self.volume_tiers if parcels >= least), default=0)

    def cost_for(self, route_id: str) -> TripCost:
        return self.route_costs.get(route_id, self.trip_cost)


@dataclass(frozen=True)
class Period:
    key: str
    start: date
    end: date  # inclusive


@dataclass(frozen=True)
class SettlementConfig:
    period_days: int | None  # None: calendar months
    anchor: date
    versions: tuple[SettlementVersion, ...]

    def version_on(self, day: date) -> SettlementVersion:
        usable = [v for v in self.versions if v.effective_from <= day]
        return usable[-1] if usable else self.versions[0]

    def period_of(self, day: date) -> Period:
        if self.period_days is None:
            start = day.replace(day=1)
            nxt = (start + timedelta(days=32)).replace(day=1)
            return Period(f"{start:%Y-%m}", start, nxt - timedelta(days=1))
        n = (day - self.anchor).days // self.period_days
        start = self.anchor + timedelta(days=n * self.period_days)
        end = start + timedelta(days=self.period_days - 1)
        return Period(f"{start.isoformat()}..{end.isoformat()}", start, end)

    def period_after(self, period: Period) -> Period:
        return self.period_of(period.end + timedelta(days=1))

    def period_by_key(self, key: str) -> Period:
        try:
            first = date.fromisoformat(key.split("..")[0] + ("-01" if len(key) == 7 else ""))
        except ValueError:
            raise ValueError(f"'{key}' is not a period key") from None
        period = self.period_of(first)
        if period.key != key:
            raise ValueError(f"'{key}' is not a period key; the period of that day is {period.key}")
        return period


def _int(d: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = d.get(key, default)
    if type(value) is not int or value < 0:
        raise CountyConfigError(f"{where}: '{key}' must be a non-negative integer (fen, grams, ‰)")
    return value


def _trip_cost(d: dict[str, Any], where: str) -> TripCost:
    basis = d.get("basis", "parcel_count")
    if basis not in BASES:
        raise CountyConfigError(f"{where}: basis '{basis}' is not one of {', '.join(BASES)}")
    permille = _int(d, "fixed_share_permille", where, 0)
    if permille > 1000:
        raise CountyConfigError(f"{where}: fixed_share_permille must be at most 1000")
    return TripCost(_int(d, "fixed_fen", where), _int(d, "per_km_fen", where), basis, permille)


def parse_settlement(doc: dict[str, Any], source: str, routes: set[str]) -> SettlementConfig:
    """Validate the [settlement] table."""
    s = doc.get("settlement")
    if not isinstance(s, dict):
        raise CountyConfigError(f"{source}: [settlement]: the table is required")
    try:
        anchor = date.fromisoformat(str(s.get("anchor", "2026-01-01")))
    except ValueError:
        raise CountyConfigError(f"{source}: [settlement]: anchor must be YYYY-MM-DD") from None
    period = s.get("period", "month")
    if period == "month":
        days = None
    elif isinstance(period, str) and period.startswith("days:") and period[5:].isdigit() and int(period[5:]) > 0:
        days = int(period[5:])
    else:
        raise CountyConfigError(f"{source}: [settlement]: period must be 'month' or 'days:N'")
    versions = []
    for i, v in enumerate(s.get("versions", [])):
        where = f"{source}: settlement.versions[{i}]"
        try:
            effective = date.fromisoformat(str(v["effective_from"]))
        except (KeyError, ValueError):
            raise CountyConfigError(f"{where}: effective_from must be YYYY-MM-DD") from None
        fee = v.get("delivery_fee", {})
        brand_fees = {b: DeliveryFee(_int(f, "township_fen", f"{where}.brands.{b}"),
                                     _int(f, "village_fen", f"{where}.brands.{b}"))
                      for b, f in v.get("brands", {}).items()}
        route_costs = {}
        for r, c in v.get("routes", {}).items():
            if r not in routes:
                raise CountyConfigError(f"{where}.routes: '{r}' is not a route of the county")
            route_costs[r] = _trip_cost({**v.get("trip_cost", {}), **c}, f"{where}.routes.{r}")
        versions.append(SettlementVersion(
            effective_from=effective,
            fee=DeliveryFee(_int(fee, "township_fen", where), _int(fee, "village_fen", where)),
            brand_fees=brand_fees,
            volume_tiers=tuple(sorted((_int(t, "min_parcels", where), _int(t, "discount_fen", where))
                                      for t in v.get("volume_tiers", []))),
            weight_surcharges=tuple(sorted((_int(w, "above_g", where), _int(w, "fen", where))
                                           for w in v.get("weight_surcharges", []))),
            commission_stored_fen=_int(v.get("commission", {}), "stored_fen", where),
            commission_picked_up_fen=_int(v.get("commission", {}), "picked_up_fen", where),
            trip_cost=_trip_cost(v.get("trip_cost", {}), f"{where}.trip_cost"),
            route_costs=route_costs,
        ))
    if not versions:
        raise CountyConfigError(f"{source}: [settlement]: at least one version is needed")
    versions.sort(key=lambda v: v.effective_from)
    return SettlementConfig(days, anchor, tuple(versions))
