"""`python -m loadtest.faults --tier short|full [--seed N] [--faults worker,api,…]`: prints the
seed first, then what it injects, then the table; exits 1 on any difference from the oracle."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from loadtest.faults.harness import FAULTS, TIERS, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.faults", description=__doc__)
    parser.add_argument("--tier", choices=sorted(TIERS), default="short")
    parser.add_argument("--seed", type=int, help="replay this seed (default: a new one)")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"which kinds to inject (default: all of {','.join(FAULTS)})")
    parser.add_argument("--events", type=int, help="override the tier's number of events")
    parser.add_argument("--handhelds", type=int, help="override the tier's number of handhelds")
    parser.add_argument("--state-dir", type=Path, help="keep the platform's state (logs, database)"
                        " here (default: a temporary folder, removed after a clean run)")
    args = parser.parse_args(argv)
    kinds = tuple(k for k in args.faults.split(",") if k)
    unknown = set(kinds) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    report = run(args.tier, args.seed, kinds, args.events, args.handhelds,
                 args.state_dir, log=lambda line: print(line, flush=True))
    print(report.table(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
