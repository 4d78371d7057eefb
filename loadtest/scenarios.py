"""The peak-season scenarios: what each sets of the traffic model, and how it runs by default
(`--scale` shrinks volumes, `--compression` is the wall minutes a county day takes)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from loadtest.model import Profile


@dataclass(frozen=True)
class Scenario:
    profile: Profile
    scale: float          # share of the county's volumes replayed by default
    compression: float    # wall minutes per county day by default
    about: str


DOUBLE11_WAVES = (("01:00", 0.3), ("05:00", 0.4), ("11:30", 0.3))

SCENARIOS = {
    "smoke": Scenario(Profile("smoke", date(2026, 11, 2), 1, tail_hours=-6, problem_rate=0.03,
                              lost_rate=0.01, refused_rate=0.02, late_run_rate=0.1,
                              upward_share=0.1, upward_factor=2.0, bus_village_share=0.4),
                      scale=0.004, compression=0.6,
                      about="one county day at 0.4 % of its volume in ~35 s: every kind of event and "
                            "every check, for CI"),
    "normal": Scenario(Profile("normal", date(2026, 11, 3), 1),
                       scale=0.05, compression=10,
                       about="an ordinary day: ~30 k inbound parcels in two waves, ~6 % upward"),
    "double11": Scenario(Profile("double11", date(2026, 11, 11), 10, inbound_factor=3.0,
                                 waves=DOUBLE11_WAVES, tail_hours=30),
                         scale=0.01, compression=10,
                         about="双十一: inbound x3 for ten days in three denser waves"),
    "plum": Scenario(Profile("plum", date(2026, 7, 20), 3, upward_factor=5.0, upward_share=0.1),
                     scale=0.02, compression=10,
                     about="巫山脆李 harvest: upward hand-ins x5 from the orchard villages (plums by "
                           "air: cold store, cold chain, 18:00 air cut-off; some by the 客货邮 bus)"),
    "chaos": Scenario(Profile("chaos", date(2026, 11, 5), 2, twice=0.3, reorder=0.2, late_24h=0.05,
                              skewed_clock=0.01, offline=0.05),
                      scale=0.01, compression=10,
                      about="30 % of batches twice, 20 % reordered, 5 % over 24 h late, 1 % of devices "
                            "with clocks hours off, handhelds offline for hours then bursting"),
}
