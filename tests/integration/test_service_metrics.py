"""Outside `gongpei up`, each service serves its own metrics on GONGPEI_METRICS_PORT for
Prometheus to scrape (the compose file and the manifests rely on it): a second relay, a hot
standby on the platform's database, answers on its port."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from entrypoints.platform import Platform
from infra.embedded import free_port
from tests.conftest import wait_for


def test_given_a_metrics_port_then_a_service_serves_its_metrics(platform: Platform) -> None:
    assert platform.settings is not None
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env |= platform.settings.for_service("relay").to_env() | {"GONGPEI_METRICS_PORT": str(port)}
    relay = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", "relay"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def scraped() -> str:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except httpx.HTTPError:
                return ""

        body = wait_for(scraped, 60, "the relay's /metrics")
        assert "gongpei_relay_lag_events" in body
        assert 'gongpei_projection_events_total{projection="ledger",result="new"} 0.0' in body
        assert "process_start_time_seconds" in body  # the restarts panel reads it
    finally:
        relay.terminate()
        relay.wait(15)
