"""Every metric the Prometheus alert rules use is one the platform exports."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import REGISTRY

import projections.metrics  # noqa: F401 - registers the families

RULES = Path(__file__).resolve().parents[2] / "infra" / "prometheus" / "alerts.yml"


def exported_samples() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("gongpei_"):
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
            names.add(family.name)
            names |= {family.name + s for s in suffixes.get(family.type, ())}
    return names


def test_the_alert_rules_only_name_metrics_we_export() -> None:
    used = set(re.findall(r"\bgongpei_[a-z_]+", RULES.read_text()))
    assert used and used <= exported_samples(), used - exported_samples()
