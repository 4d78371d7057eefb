"""The deployment files (infra/deploy/) are checked here, without a container engine: the compose
file against the Compose Specification, the Kubernetes manifests against the API schemas, the
Prometheus configurations and rules with promtool, the Grafana dashboard for what it must show.
promtool comes from Debian's `prometheus` package (.ci/run installs it); without it those checks
skip, saying so."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import projections.metrics  # noqa: F401 - registers the families
from tests.unit.test_alert_rules import exported_samples

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "infra" / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
ALERTS = ROOT / "infra" / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gongpei.json"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
KUBERNETES_VERSION = "1.31.0"
PROMTOOL = shutil.which("promtool")
# Skipped, saying why, on a machine without it; in CI (.ci/run installs it) its absence fails.
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"),
    reason="promtool not installed (Debian package `prometheus`; .ci/run installs it)")


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in MANIFESTS
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_the_compose_file_follows_the_compose_specification() -> None:
    checker = Path(sys.executable).with_name("check-jsonschema")
    done = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_file_gives_no_secret_a_default() -> None:
    text = COMPOSE.read_text()
    references = re.findall(r"\$\{([A-Z0-9_]+)(:?[?-]?)([^}]*)\}", text)
    secret = re.compile(r"PASSWORD|SECRET|KEY|CLUSTER_ID")
    for name, op, default in references:
        if secret.search(name):
            # Required, or (the providers' credentials a county may not use) empty by default.
            assert op == ":?" or (op == ":-" and default == ""), (name, op, default)
    required = {name for name, op, _ in references if op == ":?"}
    assert {"POSTGRES_PASSWORD", "GONGPEI_APP_PASSWORD", "GONGPEI_PII_PUBLIC_KEY",
            "GONGPEI_PII_PRIVATE_KEYS", "GRAFANA_ADMIN_PASSWORD", "KAFKA_CLUSTER_ID",
            "GONGPEI_IMAGE"} <= required
    assert {f"GONGPEI_DB_PASSWORD_{s}" for s in ("API", "RELAY", "WORKER", "LEDGER", "SMS")} <= required


def test_the_compose_stack_has_every_part_healthchecked() -> None:
    services = _compose()["services"]
    kafkas = [s for name, s in services.items() if name.startswith("kafka-")]
    assert len(kafkas) == 3
    for kafka in kafkas:
        env = kafka["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
        assert (env["KAFKA_DEFAULT_REPLICATION_FACTOR"], env["KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2")
    assert services["api"]["deploy"]["replicas"] == 2
    assert "limit_req" in (DEPLOY / "nginx" / "gongpei.conf").read_text()
    assert services["migrate"]["command"] == ["migrate"]
    assert services["topics"]["command"] == ["topics", "apply"]
    for name in ("migrate", "topics"):
        assert services[name]["restart"] == "no"
    long_running = {n: s for n, s in services.items() if s.get("restart") != "no"}
    assert {"postgres", "api", "proxy", "relay", "worker", "ledger", "sms", "prometheus",
            "grafana"} <= set(long_running)
    for name, service in long_running.items():
        assert "healthcheck" in service, name
    # Only the SMS sender may open phone numbers.
    holders = {n for n, s in services.items() if "GONGPEI_PII_PRIVATE_KEYS" in s.get("environment", {})}
    assert holders == {"sms"}


def test_the_example_settings_name_every_variable_and_hold_no_value() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)[:}]", COMPOSE.read_text())) - {"VAR"}
    lines = (DEPLOY / "gongpei.env.example").read_text().splitlines()
    given = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    optional = {line[2:].split("=", 1)[0] for line in lines if re.match(r"# [A-Z_]+=", line)}
    assert set(given) | optional == used, used ^ (set(given) | optional)
    assert not [k for k, v in given.items() if v], "an example holds no value"


@pytest.mark.parametrize("name, doc", _manifests(),
                         ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in _manifests()])
def test_each_kubernetes_manifest_follows_the_api_schema(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_kubernetes_workloads_have_probes_requests_and_no_secret_values() -> None:
    docs = [doc for _, doc in _manifests()]
    assert not [d for d in docs if d["kind"] == "Secret"], "secrets are created by the operator"
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Job", "gongpei-migrate"), ("StatefulSet", "kafka"), ("Deployment", "gongpei-api"),
            ("Deployment", "gongpei-worker"), ("Deployment", "gongpei-relay"),
            ("Deployment", "gongpei-ledger"), ("Deployment", "gongpei-sms")} <= kinds
    budgets = {d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert {"kafka", "gongpei-api", "gongpei-worker"} <= budgets
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            where = f"{doc['metadata']['name']}/{container['name']}"
            assert "requests" in container.get("resources", {}), where
            assert "livenessProbe" in container and "readinessProbe" in container, where
            for env in container.get("env", []):
                secretish = re.search(r"PASSWORD|SECRET|_KEY", env["name"])
                # A secret is a reference; a value may only be built from one, as $(VAR).
                assert not secretish or "valueFrom" in env or "$(" in env.get("value", ""), where


@needs_promtool
@pytest.mark.parametrize("config", [DEPLOY / "prometheus" / "prometheus.yml",
                                    DEPLOY / "k8s" / "prometheus" / "prometheus.yml"],
                         ids=["compose", "k8s"])
def test_promtool_accepts_the_prometheus_configuration(config: Path, tmp_path: Path) -> None:
    assert PROMTOOL is not None, "promtool is required in CI"
    # As mounted: the rules beside the configuration.
    shutil.copy(config, tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    done = subprocess.run([str(PROMTOOL), "check", "config", str(tmp_path / "prometheus.yml")],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    assert PROMTOOL is not None, "promtool is required in CI"
    done = subprocess.run([str(PROMTOOL), "check", "rules", str(ALERTS)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query on the Grafana dashboard."""
    board = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"]
            for target in panel.get("targets", [])]


def test_the_grafana_dashboard_shows_what_an_operator_watches() -> None:
    board = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    uid = datasource["datasources"][0]["uid"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"]
    for panel in board["panels"]:
        assert {"type", "title", "gridPos"} <= set(panel)
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid and panel["targets"], panel["title"]
    used = " ".join(expr for _, expr in dashboard_exprs())
    for metric in ("gongpei_projection_lag_events", "gongpei_relay_lag_events",
                   "gongpei_sla_on_time_ratio", "gongpei_sms_total", "gongpei_dead_letters_total",
                   "gongpei_process_restarts_total", "process_start_time_seconds"):
        assert metric in used, metric
    names = set(re.findall(r"\bgongpei_[a-z_]+", used))
    assert names <= exported_samples(), names - exported_samples()
