# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Benchmark 8: how fast ``cp-flatnorm --help`` and each subcommand's ``--help`` answer.

Each is run as a new process of the installed ``cp-flatnorm`` command, as a user runs it, ``REPEATS``
times (median of the wall-clock time, and of the CPU time of the process, which a loaded machine
inflates less); the goal is well under a second, which needs the command to import no middleware
before it knows that a subcommand needs it.  For scale, the same interpreter importing
``lsst.daf.butler`` is timed too.
"""

from __future__ import annotations

__all__ = ["CliStartupResult", "run"]

import resource
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .timing import format_seconds, time_call

REPEATS = 5
_GOAL = 1.0  # seconds
COMMANDS = ((), ("camera",), ("camera", "import"), ("register",), ("ingest",))
"""Subcommands whose ``--help`` is timed (``()``: the command's own)."""


@dataclass
class CliStartupResult:
    """Median seconds of each ``--help``, and of importing the butler."""

    seconds: dict[str, tuple[float, float]]
    """Wall-clock and CPU seconds by command."""
    butler_import: tuple[float, float] | None
    """Not timed in a quick run."""

    def report(self) -> list[str]:
        """One line per command, with the goal met or missed."""
        lines = [f"cli startup: {command}: {format_seconds(wall)}, CPU {format_seconds(cpu)} (goal < "
                 f"{_GOAL:g} s: {'met' if wall < _GOAL else 'MISSED'})"
                 for command, (wall, cpu) in self.seconds.items()]
        if self.butler_import is not None:
            wall, cpu = self.butler_import
            lines.append(f"cli startup: for scale, `python -c 'import lsst.daf.butler'`: "
                         f"{format_seconds(wall)}, CPU {format_seconds(cpu)}")
        return lines


def _median_seconds(command: list[str], repeats: int) -> tuple[float, float]:
    """Median wall-clock and CPU (user + system) seconds of running ``command``."""
    cpu = []

    def once() -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(command, check=True, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)

    return statistics.median(time_call(once, repeats).seconds), statistics.median(cpu)


def run(quick: bool) -> list[CliStartupResult]:
    """Time every ``--help`` (a quick run: the command's own, once, and not the butler's import)."""
    repeats = 1 if quick else REPEATS
    executable = str(Path(sys.executable).with_name("cp-flatnorm"))
    seconds = {}
    for words in COMMANDS[:1] if quick else COMMANDS:
        seconds[" ".join(["cp-flatnorm", *words, "--help"])] = _median_seconds([executable, *words, "--help"],
                                                                               repeats)
    butler = None if quick else _median_seconds([sys.executable, "-c", "import lsst.daf.butler"], repeats)
    return [CliStartupResult(seconds, butler)]
