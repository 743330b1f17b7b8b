"""Speed benchmark of rain: ``python benchmarks/speed.py [--quick] [--out DIR]``.

The same as ``rain bench speed``; see benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rain speed benchmark (RAIN against plain decoding)")
    parser.add_argument("--quick", action="store_true", help="a small version (about a minute)")
    parser.add_argument("--out", default=None, help="report folder (default benchmarks/results)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what rain does")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    from rain_bench.speed import main as bench_main

    return bench_main(quick=args.quick, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
