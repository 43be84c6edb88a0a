# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Run the benchmarks and print their results: ``python -m bench.run_all [--quick]``."""

from __future__ import annotations

import argparse
import platform

import numpy as np

from . import solver


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="run at a small scale (seconds)")
    args = parser.parse_args(argv)
    print(f"# python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
          f"{'quick' if args.quick else 'full'} run")
    for comparison in solver.run(args.quick):
        print("\n".join(comparison.report()), flush=True)


if __name__ == "__main__":
    main()
