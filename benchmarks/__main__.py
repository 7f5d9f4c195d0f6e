"""``python -m optforge.benchmarks``: run the benchmark, print the report, write it as JSON and Markdown."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import report
from .suite import Options, run
from .workload import FULL, QUICK

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m optforge.benchmarks", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK.n_params:,} parameters in {QUICK.n_tensors} tensors, {QUICK.repeats} steps (under a minute)"
        f" instead of {FULL.n_params:,} in {FULL.n_tensors}, {FULL.repeats} steps",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})"
    )
    parser.add_argument("--rules", help="comma-separated rule names or modules (default: all)")
    parser.add_argument("--repeats", type=int, help="timed steps per implementation (default: the size's)")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = Options(
        size=QUICK if args.quick else FULL,
        rules=args.rules.split(",") if args.rules else None,
        repeats=args.repeats,
        import_repeats=1 if args.quick else 3,
    )
    try:
        results = run(options)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.markdown(results))
    json_path, md_path = report.write(results, args.out)
    print(f"\nwrote {json_path} and {md_path} ({results['wall_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
