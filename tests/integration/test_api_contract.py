"""The OpenAPI document is the contract: schemathesis, with every check it has, against the
running test platform's API, as the county manager and as a brand.

Bounded for CI (25 examples per operation, seed 20261201, derandomised, so a failure reproduces);
the full run (100 examples per operation) is the same command by hand: docs/api.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from entrypoints.platform import Platform

SEED = 20261201
EXAMPLES = int(os.environ.get("GONGPEI_CONTRACT_EXAMPLES", "25"))
# The SLA answers are being reworked on another branch (issue 11): their operations join this
# test when that work is merged. Until then they are left out here, and only here.
EXCLUDED_PATHS = r"^/v1/sla/"
CONFIG = Path(__file__).with_name("schemathesis.toml")


def schemathesis(platform: Platform, token: str, report: Path) -> subprocess.CompletedProcess[str]:
    """One schemathesis run with all checks, as the holder of `token`; its report in `report`."""
    st = Path(sys.executable).with_name("st")
    return subprocess.run(
        [str(st), "--no-color", "--config-file", str(CONFIG), "run", f"{platform.api_url}/openapi.json",
         "--checks", "all", "--seed", str(SEED), "--max-examples", str(EXAMPLES),
         "--exclude-path-regex", EXCLUDED_PATHS,
         "--header", f"Authorization: Bearer {token}",
         # One worker: hypothesis reads its lambdas' source with ast.parse, which Python 3.11
         # can break on under threads ("AST constructor recursion depth mismatch").
         "--workers", "1", "--request-timeout", "20", "--suppress-health-check", "all",
         "--report", "junit", "--report-junit-path", str(report)],
        check=False, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})


@pytest.mark.timeout(600)
@pytest.mark.parametrize("who", ["manager", "ZTO-brand"])
def test_given_the_openapi_document_when_schemathesis_runs_every_check_then_nothing_fails(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], who: str,
        tmp_path: Path) -> None:
    assert client.get("/openapi.json").status_code == 200
    run = schemathesis(platform, tokens[who], tmp_path / "junit.xml")
    assert run.returncode == 0, (
        f"schemathesis as {who} (seed {SEED}, {EXAMPLES} examples per operation) failed:\n"
        f"{run.stdout[-20000:]}\n{run.stderr[-3000:]}")


def test_given_a_method_a_path_does_not_have_when_called_then_405_names_the_allowed_ones(
        client: httpx.Client, tokens: dict[str, str]) -> None:
    for method, path, allowed in (("TRACE", "/healthz", {"GET"}),
                                  ("DELETE", "/v1/parcels/ZT7300012345678", {"GET"}),
                                  ("GET", "/v1/scan-batches", {"POST"})):
        r = client.request(method, path, headers={"Authorization": f"Bearer {tokens['manager']}"})
        assert r.status_code == 405, (method, path, r.status_code)
        assert {m.strip() for m in r.headers["Allow"].split(",")} == allowed
        assert r.json()["error"]["code"] == "method_not_allowed"


def test_given_a_body_that_is_not_json_when_posted_to_any_json_route_then_400_invalid_json(
        client: httpx.Client, tokens: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {tokens['manager']}", "Content-Type": "application/json"}
    for path in ("/v1/public/track", "/v1/conflicts/1/resolve"):
        r = client.post(path, content=b'{"waybill": ', headers=headers)
        assert r.status_code == 400, (path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "invalid_json"


def test_given_the_openapi_document_then_every_answer_has_a_schema_and_errors_their_shape(
        client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    for path, ops in schema["paths"].items():
        if path.startswith("/v1/sla/"):
            continue  # reworked on another branch (issue 11); joins after the merge
        for method, op in ops.items():
            ok = op["responses"]["200"]["content"]
            assert all(c.get("schema") for c in ok.values()), (method, path)
            for status, answer in op["responses"].items():
                if int(status) >= 400:
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (method, path, status, ref)
