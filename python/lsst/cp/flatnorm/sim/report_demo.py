# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The demonstration's report: ``cp-flatnorm report`` of its run, compared with the flat combined
without normalization, and a screenshot of its index where Chromium is installed."""

from __future__ import annotations

__all__ = ["write_demo_report"]

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..report import collect_report, write_site
from .repo import SimRepo

_CHROMIUM_ARGUMENTS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                       "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                       "--hide-scrollbars", "--window-size=1200,1400")


def screenshot(index: Path, path: Path) -> bool:
    """Write a PNG screenshot of a report's index with headless Chromium; `False` if it is absent
    or fails."""
    browser = shutil.which("chromium")
    if browser is None:
        return False
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run([browser, *_CHROMIUM_ARGUMENTS, f"--user-data-dir={profile}",
                                 f"--screenshot={path}", index.resolve().as_uri()],
                                capture_output=True, timeout=120)
    return result.returncode == 0 and path.exists()


def write_demo_report(repo: SimRepo, collections: Sequence[str], previous: str, output: Path) -> Path:
    """Write the report of the demonstration's run into ``output`` and print where its index is.

    Parameters
    ----------
    repo : `~lsst.cp.flatnorm.sim.repo.SimRepo`
        The demonstration's repository.
    collections : `~collections.abc.Sequence` [`str`]
        The run's collections.
    previous : `str`
        Collection of the flat shown as the previous one (the un-normalized flat).
    output : `pathlib.Path`
        Directory of the report.
    """
    content = collect_report(repo.butler, collections, previous=previous)
    index = write_site(content, output)
    print(f"   cp-flatnorm report {repo.root} --collections {','.join(collections)} --previous {previous} "
          f"-o {output}")
    print(f"   report: {index}")
    if screenshot(index, output.parent / "report_index.png"):
        print(f"   screenshot of its index: {output.parent / 'report_index.png'}")
    return index
