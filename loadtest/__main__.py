"""`python -m loadtest <scenario>`: replay a peak-season scenario on a fresh embedded platform,
check every read model against the oracle, and write docs/benchmarks/<scenario>.md with plots.
Exits 1 on any oracle difference.

    .venv/bin/python -m loadtest smoke
    .venv/bin/python -m loadtest double11 --scale 0.01 --compression 10
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from pathlib import Path

from loadtest import report
from loadtest.harness import Options, run
from loadtest.scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--scale", type=float, help="share of the county's volumes (default: the scenario's)")
    ap.add_argument("--compression", type=float,
                    help="wall minutes a county day takes (default: the scenario's)")
    ap.add_argument("--latency", default="0.1,0.3", help="SMS gateways' min,max seconds per call")
    ap.add_argument("--concurrency", type=int, default=48, help="uploads in flight at most")
    ap.add_argument("--flush-minutes", type=float, default=2.0,
                    help="county minutes a handheld gathers scans before it uploads them")
    ap.add_argument("--driver", choices=["http", "kafka"], default="http",
                    help="http: handhelds through the ingest API; kafka: straight onto the topics "
                         "(the stream side alone; the oracle then checks the SLA only)")
    ap.add_argument("--sms-margin", type=float, default=10.0,
                    help="seconds after the digest window within which a pickup makes an arrival's"
                         " SMS optional to the oracle")
    ap.add_argument("--keep-state", action="store_true",
                    help="keep the platform's state folder (logs, PostgreSQL) after the run")
    ap.add_argument("--no-floors", action="store_true", help="skip the bare Faust/aiokafka floors")
    ap.add_argument("--out", default="docs/benchmarks", help="folder of the report ('' : none)")
    args = ap.parse_args(argv)
    argv_text = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    fig = asyncio.run(run(Options(
        args.scenario, seed=args.seed, scale=args.scale, compression=args.compression,
        latency=args.latency, concurrency=args.concurrency, flush_minutes=args.flush_minutes,
        floors=not args.no_floors, driver=args.driver, keep_state=args.keep_state, sms_margin_s=args.sms_margin, out=Path(args.out) if args.out else None,
        command=f".venv/bin/python -m loadtest {argv_text}")))
    print(report.summary(fig))
    for d in fig.diffs[:100]:
        print(f"DIFFERENCE: {d}")
    return 1 if fig.diffs else 0


if __name__ == "__main__":
    sys.exit(main())
