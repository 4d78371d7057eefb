"""A real Prometheus (Debian's `prometheus` package) scrapes the running platform with the
deployment's own configuration and alert rules: every rule evaluates without error, and every
Grafana panel's query parses and answers. Skips, saying why, where the binary is missing; .ci/run
installs it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from entrypoints.platform import Platform
from infra.embedded import free_port
from tests.conftest import wait_for
from tests.unit.test_deploy_files import ALERTS, DEPLOY, dashboard_exprs

PROMETHEUS = shutil.which("prometheus")
# Skipped, saying why, on a machine without it; in CI (.ci/run installs it) its absence fails.
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None and not os.environ.get("CI"),
    reason="prometheus not installed (Debian package `prometheus`; .ci/run installs it)")
ALL_RULES = sum(len(g["rules"]) for g in yaml.safe_load(ALERTS.read_text())["groups"])


def _config_for(api: str) -> dict[str, Any]:
    """The compose deployment's prometheus.yml, its API job pointed at this platform (whose
    /metrics serves every process's samples), evaluating every second."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "gongpei-api"]
    job.pop("dns_sd_configs")
    job["static_configs"] = [{"targets": [api]}]
    config["scrape_configs"] = [job]
    return config


@pytest.fixture(scope="module")
def prometheus(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert PROMETHEUS is not None, "prometheus is required in CI"
    folder = tmp_path_factory.mktemp("prometheus")
    shutil.copy(ALERTS, folder / "alerts.yml")  # as mounted: beside the configuration
    (folder / "prometheus.yml").write_text(
        yaml.safe_dump(_config_for(urlsplit(platform.api_url).netloc)))
    port = free_port()
    with open(folder / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(url, "/-/ready") is not None or proc.poll() is not None, 60,
                 "Prometheus ready")
        assert proc.poll() is None, (folder / "prometheus.log").read_text()[-2000:]
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _get(url: str, path: str, **params: str) -> Any:
    try:
        r = httpx.get(url + path, params=params, timeout=10)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text


def _rules(url: str) -> list[dict[str, Any]]:
    body = _get(url, "/api/v1/rules")
    return [] if body is None else [r for g in body["data"]["groups"] for r in g["rules"]]


def test_given_the_platform_then_prometheus_scrapes_it(prometheus: str) -> None:
    def up() -> Any:
        targets = (_get(prometheus, "/api/v1/targets") or {}).get("data", {}).get("activeTargets")
        return targets and all(t["health"] == "up" for t in targets) and targets

    [target] = wait_for(up, 60, "the platform's /metrics scraped")
    assert target["labels"]["job"] == "gongpei-api"


def test_every_alert_rule_evaluates_without_error(prometheus: str) -> None:
    def evaluated() -> list[dict[str, Any]]:
        rules = _rules(prometheus)
        done = [r for r in rules if not r["lastEvaluation"].startswith("0001-")]
        return rules if len(rules) == ALL_RULES and len(done) == ALL_RULES else []

    rules = wait_for(evaluated, 60, f"all {ALL_RULES} alert rules evaluated")
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken, broken


@pytest.mark.parametrize("title, expr", dashboard_exprs(), ids=[e for _, e in dashboard_exprs()])
def test_every_grafana_panel_query_parses_and_answers(prometheus: str, title: str,
                                                      expr: str) -> None:
    body = _get(prometheus, "/api/v1/query", query=expr)
    assert body is not None and body["status"] == "success", (title, body)


@pytest.mark.parametrize("expr", ["max(gongpei_relay_lag_events)",
                                  "sum by (process) (increase(gongpei_process_restarts_total[1h]))",
                                  "max by (projection) (gongpei_projection_lag_events)"])
def test_the_pipeline_panels_show_the_platforms_figures(prometheus: str, expr: str) -> None:
    assert expr in {e for _, e in dashboard_exprs()}
    wait_for(lambda: (_get(prometheus, "/api/v1/query", query=expr) or {}).get(
        "data", {}).get("result"), 60, f"{expr} answered with samples")
