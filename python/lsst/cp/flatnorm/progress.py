# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Progress of a long loop: a bar redrawn in place on a terminal, log lines now and then otherwise;
nothing at all for a loop that ends within a couple of seconds."""

from __future__ import annotations

__all__ = ["Progress"]

import logging
import sys
import time
from typing import TextIO

_BAR_WIDTH = 30
_INTERVAL_SECONDS = 2.0  # progress is first shown, and logged at most once, per interval


class Progress:
    """Report ``done`` out of ``total`` items.

    Parameters
    ----------
    total : `int`
        Number of items.
    what : `str`
        What is done to them, e.g. ``"files checked"``.
    log : `logging.Logger`
        Where the lines go when ``stream`` is not a terminal (INFO).
    stream : `typing.TextIO`, optional
        Where the bar is drawn if it is a terminal; standard error by default.
    interval : `float`, optional
        Seconds before the first report, and between log lines (the bar is redrawn at every item).
    """

    def __init__(self, total: int, what: str, log: logging.Logger, stream: TextIO | None = None,
                 interval: float = _INTERVAL_SECONDS):
        self.total = total
        self.interval = interval
        self.what = what
        self.log = log
        self.stream = sys.stderr if stream is None else stream
        self.on_terminal = self.stream.isatty()
        self.last_line = time.monotonic()
        self.reported = False

    def __call__(self, done: int) -> None:
        """Report that ``done`` items are done.

        Nothing is shown before ``interval`` seconds have passed: a short loop says nothing.
        """
        now = time.monotonic()
        finished = done >= self.total
        if not (self.reported and (finished or self.on_terminal)) and now - self.last_line < self.interval:
            return
        self.reported, self.last_line = True, now
        if self.on_terminal:
            filled = _BAR_WIDTH * done // max(self.total, 1)
            self.stream.write(f"\r[{'#' * filled}{' ' * (_BAR_WIDTH - filled)}] {done}/{self.total} "
                              f"{self.what}" + ("\n" if finished else ""))
            self.stream.flush()
        else:
            self.log.info("%d/%d %s.", done, self.total, self.what)
