"""Operator commands through the `gongpei` entry point, configured only by environment settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx

from domain.events import CURRENT_VERSION
from entrypoints.platform import Platform
from tests.conftest import bearer


def gongpei(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    assert platform.settings is not None
    env = {**os.environ, **platform.settings.to_env()}
    return subprocess.run([sys.executable, "-m", "entrypoints.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_given_a_token_created_by_the_cli_when_revoked_then_it_stops_working(
        platform: Platform, client: httpx.Client) -> None:
    made = gongpei(platform, "token", "create", "--role", "brand", "--name", "sto-finance",
                   "--brand", "STO")
    assert made.returncode == 0, made.stderr
    token_id, token = re.search(r"token (\d+) .*: (gp_\S+)", made.stdout).groups()  # type: ignore[union-attr]
    assert client.get("/v1/parcels", headers=bearer(token)).status_code == 200

    listed = gongpei(platform, "token", "list").stdout
    assert "sto-finance" in listed and token not in listed  # the secret is never shown again

    assert gongpei(platform, "token", "revoke", token_id).returncode == 0
    r = client.get("/v1/parcels", headers=bearer(token))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"


def test_given_a_brand_token_without_a_brand_then_the_cli_refuses(platform: Platform) -> None:
    made = gongpei(platform, "token", "create", "--role", "brand", "--name", "nobody")
    assert made.returncode != 0 and "needs at least one --brand" in made.stderr


def test_migrate_is_idempotent(platform: Platform) -> None:
    again = gongpei(platform, "migrate")
    assert again.returncode == 0 and "up to date" in again.stdout


def test_the_ingest_contract_is_served_as_json_schema_for_every_event_type(
        client: httpx.Client) -> None:
    schema = client.get("/v1/schema/scan-batch.json").json()
    variants = schema["properties"]["events"]["items"]["oneOf"]
    assert len(variants) == len(CURRENT_VERSION)
    scanned = schema["$defs"]["parcel_scanned"]["properties"]
    assert scanned["type"] == {"const": "parcel.scanned"}
    assert "received" in str(schema["$defs"])  # the action vocabulary is spelled out
    openapi = client.get("/openapi.json").json()
    assert "/v1/scan-batches" in openapi["paths"] and "/v1/public/track" in openapi["paths"]
