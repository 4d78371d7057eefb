"""The upward tariff (农产品上行) as ledger charges: what one handed-in parcel owes, split by fee
kind so statements show each apart. Pure; the figures are the county file's [upward_tariff]."""

from __future__ import annotations

from domain.county import UpwardTariff
from domain.money import Fen

# The ledger's fee kinds of the upward tariff, in the order a statement shows them.
UPWARD_KINDS = ("upward_handling", "upward_weight", "upward_cold_chain")


def started_kg(weight_g: int) -> int:
    """Kilograms as the tariff counts them: every started kilogram (1 g → 1, 1000 g → 1,
    1001 g → 2); integers only."""
    return -(-weight_g // 1000)


def upward_charges(tariff: UpwardTariff, weight_g: int, perishable: str | None,
                   origin: str) -> list[tuple[str, str, Fen]]:
    """(kind, ref, amount) of each charge on one handed-in parcel: handling (ref: the village
    point it was handed in at), per started kg (ref: the kilograms charged), cold chain if it is
    of a perishable class (ref: the class). They sum to `tariff.charge_fen`; a charge of 0 fen
    is not posted."""
    kg = started_kg(weight_g)
    charges = [("upward_handling", origin, Fen(tariff.handling_fen)),
               ("upward_weight", str(kg), Fen(tariff.per_kg_fen).times(kg))]
    if perishable is not None:
        charges.append(("upward_cold_chain", perishable, Fen(tariff.cold_chain_fen)))
    return [(kind, ref, fen) for kind, ref, fen in charges if fen.value]
