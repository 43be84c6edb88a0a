# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

__all__ = ["Timing", "elapsed", "format_seconds", "time_call", "traced_peak"]

import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Timing:
    """Wall-clock times of repeated calls of one function.

    Attributes
    ----------
    seconds : `list` [`float`]
        Duration of every call.
    result : `typing.Any`
        Return value of the last call.
    """

    seconds: list[float]
    result: Any

    @property
    def median(self) -> float:
        """Median duration in seconds."""
        return statistics.median(self.seconds)


def time_call(function: Callable[[], Any], repeats: int) -> Timing:
    """Call ``function`` ``repeats`` times and record each call's wall-clock duration."""
    seconds = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return Timing(seconds=seconds, result=result)


def elapsed(function: Callable[[], Any]) -> tuple[float, Any]:
    """Call ``function`` once; return its wall-clock duration in seconds and its result."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def traced_peak(function: Callable[[], Any]) -> int:
    """Call ``function`` once under `tracemalloc`; return the peak of Python memory in bytes."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def format_seconds(seconds: float) -> str:
    """Format a duration with a unit that keeps three significant digits readable."""
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"
