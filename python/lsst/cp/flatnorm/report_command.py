# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""``cp-flatnorm report REPO --collections ... -o DIR``: write the browsable report of a flat run.

Only the parser is built at import; the butler, matplotlib and the report are imported when the
command runs, so that ``cp-flatnorm --help`` stays quick.
"""

from __future__ import annotations

__all__ = ["add_report_parser"]

import argparse
from typing import Any


def add_report_parser(subparsers: Any) -> None:
    """Add the ``report`` subcommand to ``cp-flatnorm``'s subparsers."""
    parser = subparsers.add_parser(
        "report", help="write a browsable HTML report of a flat run",
        description="Write a static HTML report of a flat run (the flat, its normalization, gradient, "
                    "verification, each detector and each exposure) into DIR; open DIR/index.html in a "
                    "browser, from the file system: no server or network is needed.")
    parser.add_argument("repo", metavar="REPO", help="butler repository")
    parser.add_argument("--collections", required=True, action="append", metavar="COLLECTION[,...]",
                        help="collections with the run's outputs and inputs, searched in order (repeatable "
                             "or comma-separated), e.g. the pipetask output collection")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="directory of the report")
    parser.add_argument("--physical-filter",
                        help="the flat's physical filter, if the collections hold several")
    parser.add_argument("--previous", metavar="COLLECTION",
                        help="collection of the previous flat of this filter, to show each detector's change")
    parser.add_argument("--no-input-residuals", dest="input_residuals", action="store_false",
                        help="do not read the input images for their residuals against the flat (quicker)")
    parser.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from lsst.daf.butler import Butler

    from .report import collect_report, write_site

    collections = [name.strip() for value in args.collections for name in value.split(",") if name.strip()]
    butler = Butler.from_config(args.repo)
    content = collect_report(butler, collections, physical_filter=args.physical_filter,
                             previous=args.previous, input_residuals=args.input_residuals)
    index = write_site(content, args.output)
    print(f"Report of {content.summary.flat_dataset_type} {content.summary.instrument} "
          f"{content.summary.physical_filter} ({len(content.detectors)} detectors, "
          f"{len(content.exposures)} exposures): {index}")
    return 0
