"""The seeded fault harness of issue 12 (`python -m loadtest.faults`): its own platform, simulated
handhelds, faults at seeded points, and an oracle of its own (loadtest/faults/oracle.py)."""

from loadtest.faults.harness import FAULTS, TIERS, Harness, Report, run

__all__ = ["FAULTS", "TIERS", "Harness", "Report", "run"]
