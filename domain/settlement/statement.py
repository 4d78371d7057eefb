"""A brand's statement for a period, assembled from its ledger lines (pure)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from domain.money import Fen

KIND_LABELS = {
    "delivery_fee": "派费 delivery fees", "weight_surcharge": "超重附加 weight surcharges",
    "volume_discount": "量级优惠 volume discount", "trip_cost": "共配车次分摊 shared trips",
    "commission_stored": "入库佣金 station commission (stored)",
    "commission_picked_up": "出库佣金 station commission (picked up)",
    "upward_handling": "上行处理费 upward handling", "upward_weight": "上行计重费 upward per kg",
    "upward_cold_chain": "冷链费 upward cold chain",
}


def _money(fen: int) -> dict[str, Any]:
    return {"fen": fen, "yuan": Fen(fen).yuan()}


def build_statement(brand: str, period: str, status: str,
                    lines: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What `brand` owes for `period`: every figure is a sum of its own `brand:B` lines."""
    own = [dict(line) for line in lines if line["account"] == f"brand:{brand}"]
    base = [line for line in own if line["adjusts_period"] is None]
    adjustments = [line for line in own if line["adjusts_period"] is not None]
    by_kind: dict[str, int] = defaultdict(int)
    for line in base:
        by_kind[line["kind"]] += line["amount_fen"]
    tiers: dict[str, int] = defaultdict(int)
    for line in base:
        if line["kind"] == "delivery_fee":
            tiers[line["ref"]] += 1
    routes: dict[str, dict[str, int]] = defaultdict(lambda: {"trips": 0, "fen": 0})
    for line in base:
        if line["kind"] == "trip_cost":
            routes[line["ref"]]["trips"] += 1
            routes[line["ref"]]["fen"] += line["amount_fen"]
    upward = {"parcels": 0, "kg": 0, "cold_chain_parcels": 0}
    for line in base:  # the refs of the upward lines: village, kilograms charged, class
        if line["kind"] == "upward_handling":
            upward["parcels"] += 1
        elif line["kind"] == "upward_weight":
            upward["kg"] += int(line["ref"])
        elif line["kind"] == "upward_cold_chain":
            upward["cold_chain_parcels"] += 1
    net = sum(line["amount_fen"] for line in own)
    return {
        "brand": brand, "period": period, "status": status,
        "parcels_by_tier": dict(sorted(tiers.items())),
        "totals": {kind: {**_money(by_kind[kind]), "label": label}
                   for kind, label in KIND_LABELS.items()},
        "trip_shares": [{"route": r, "trips": v["trips"], **_money(v["fen"])}
                        for r, v in sorted(routes.items())],
        "upward": {**upward, **_money(sum(by_kind[k] for k in KIND_LABELS if k.startswith("upward_")))},
        "adjustments": [{"entry_id": a["entry_id"], "adjusts_period": a["adjusts_period"],
                         "kind": a["kind"], "late_event_id": a["late_event_id"],
                         **_money(a["amount_fen"])} for a in adjustments],
        "adjustments_total": _money(sum(a["amount_fen"] for a in adjustments)),
        "net": _money(net),
        "lines": [{"entry_id": line["entry_id"], "posting_date": str(line["posting_date"]),
                   "kind": line["kind"], "ref": line["ref"], "amount_fen": line["amount_fen"],
                   "adjusts_period": line["adjusts_period"], "event_ids": list(line["event_ids"])}
                  for line in own],
    }
