# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Run the benchmarks and print their results: ``python -m bench.run_all [--quick] [--part ...]``."""

from __future__ import annotations

import argparse
import os
import platform
import resource

import numpy as np

from lsst.utils.threads import disable_implicit_threading

from . import cli_startup, clipstats, colour, combine, gather, measure, report, solver, storage, whole_flat

PARTS = {
    "solver": solver.run,
    "gather": gather.run,
    "measure": measure.run,
    "colour": colour.run,
    "combine": combine.run,
    "clipstats": clipstats.run,
    "storage": storage.run,
    "cli_startup": cli_startup.run,
    "report": report.run,
    "whole_flat": whole_flat.run,
}


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="run at a small scale (seconds)")
    parser.add_argument("--part", choices=PARTS, action="append",
                        help="benchmark to run (repeatable; all by default)")
    parser.add_argument("--implicit-threading", action="store_true",
                        help="keep the thread pools of numerical libraries (OpenBLAS); by default they "
                             "are limited to one thread, as pipetask does")
    args = parser.parse_args(argv)
    if not args.implicit_threading:
        disable_implicit_threading()
    threading = "implicit threading on" if args.implicit_threading else "implicit threading off"
    print(f"# python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {threading}, "
          f"{'quick' if args.quick else 'full'} run", flush=True)
    for part in args.part or PARTS:
        for result in PARTS[part](args.quick):
            print("\n".join(result.report()), flush=True)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"# process peak resident memory {peak_mib:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
