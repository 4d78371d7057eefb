"""The fault harness's short tier, in every `./bin/test` (so in CI): its own embedded platform,
~10 k events from simulated handhelds that retry until they get a 2xx, and one fault of each kind
(the worker killed twice, the API, the ledger and the SMS service killed mid-batch, PostgreSQL
killed, the broker restarted empty, the worker frozen past its session timeout). Nothing
acknowledged may be lost or doubled anywhere, every read model must equal the harness's oracle,
and no rebalance storm may follow the freeze.

A new seed each run (printed first; GONGPEI_FAULT_SEED replays one): a seed that fails goes to
tests/chaos/test_regressions.py once the bug it found is fixed. The platform's state lives in a
temporary folder (TMPDIR), removed after a clean run and kept after a failing one (its path is
printed) for the logs."""

from __future__ import annotations

import os
import random

from loadtest.faults import FAULTS, run


def test_given_one_fault_of_each_kind_under_upload_then_nothing_is_lost_or_doubled() -> None:
    seed = int(os.environ.get("GONGPEI_FAULT_SEED") or random.SystemRandom().randrange(10**6))
    report = run("short", seed, log=print)
    table = report.table()
    print(table)
    assert {f.kind for f in report.faults} == set(FAULTS), table
    assert report.events_acked == report.events_sent, table
    assert report.ok, table
