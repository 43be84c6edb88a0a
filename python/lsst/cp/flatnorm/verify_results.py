# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The layout of flat verification's results, both ways: column names, tables and verdicts.

Columns follow cp_verify's names with the stage ``FLAT``:

- ``verifyFlatDetResults`` (per exposure and detector): one row per amplifier (``amplifier`` its
  name) with ``FLAT_<statistic>`` (``FLAT_MEAN``, ``FLAT_NOISE``, ``FLAT_NOISE_PREDICTED``,
  ``FLAT_N_PIXELS``, ``FLAT_SATURATED_FRACTION``, ``FLAT_AMP_OFFSET``), ``FLAT_VERIFY_<test>``
  (``FLAT_VERIFY_NOISE``, ``FLAT_VERIFY_NOISE_PREDICTED``, ``FLAT_VERIFY_AMP_OFFSET``,
  ``FLAT_VERIFY_SUCCESS``) and the flat's percentiles ``FLAT_FLAT_DIST_<level>_PCT``; then one
  detector row (``amplifier`` empty) with ``FLAT_DET_MEAN``, ``FLAT_DET_SCATTER``,
  ``FLAT_DET_VERIFY_SCATTER`` and ``FLAT_DET_VERIFY_SUCCESS``.
- ``verifyFlatExpResults`` (per exposure): one row with ``FLAT_<statistic>`` and
  ``FLAT_VERIFY_<test>`` of the exposure tests (``SCATTER``, cp_verify's absolute scatter of the
  detector means; ``REL_SCATTER``; ``SIGNAL_TO_NOISE``; ``SATURATED_FRACTION``; the tests
  ``LAMP_OFF``, ``LOW_SIGNAL_TO_NOISE``, ``SATURATED``) and ``FLAT_VERIFY_SUCCESS``.
- ``verifyFlatResults`` (per instrument and physical filter): the verdicts, one row per detector
  (``scope`` ``DETECTOR``) and per exposure (``scope`` ``EXPOSURE``) with ``id``, ``SUCCESS``
  and ``FAILURES`` (the failed tests joined by ``"; "``, empty if it passed); the run's
  ``SUCCESS`` is in the table's ``meta``.  `read_verdicts` reads it back as `Verdicts`.
"""

from __future__ import annotations

__all__ = [
    "STAGE",
    "Verdicts",
    "column",
    "distribution_column",
    "distribution_key",
    "failure_list",
    "read_verdicts",
    "summary_lines",
    "verdict_table",
    "verify_column",
]

import dataclasses
from collections.abc import Mapping

from astropy.table import Table

STAGE = "FLAT"
"""cp_verify's stage name of the flat, the prefix of every column."""

_SEPARATOR = "; "
_SCOPES = ("DETECTOR", "EXPOSURE")


def column(statistic: str, level: str = "") -> str:
    """Column of a statistic: ``FLAT_MEAN``, or ``FLAT_DET_SCATTER`` with ``level="DET"``."""
    return "_".join(part for part in (STAGE, level, statistic) if part)


def verify_column(test: str, level: str = "") -> str:
    """Column of a test's result: ``FLAT_VERIFY_NOISE``, or ``FLAT_DET_VERIFY_SCATTER``."""
    return "_".join(part for part in (STAGE, level, "VERIFY", test) if part)


def distribution_key(amplifier: str, level: float) -> str:
    """The combine's metadata key of a percentile of an amplifier of the flat."""
    return f"LSST CALIB {STAGE} {amplifier} DISTRIBUTION {level}-PCT"


def distribution_column(level: float) -> str:
    """cp_verify's column of a percentile of the flat: ``FLAT_FLAT_DIST_<level>_PCT``."""
    return f"{STAGE}_FLAT_DIST_{level}_PCT"


@dataclasses.dataclass
class Verdicts:
    """What the verification concluded about a run.

    Attributes
    ----------
    success : `bool`
        Whether every test passed.
    detectors : `dict` [`int`, `list` [`str`]]
        The failed tests of each detector (empty list: it passed).
    exposures : `dict` [`int`, `list` [`str`]]
        The failed tests of each exposure.
    """

    success: bool
    detectors: dict[int, list[str]]
    exposures: dict[int, list[str]]

    @classmethod
    def from_failures(cls, detectors: Mapping[int, list[str]],
                      exposures: Mapping[int, list[str]]) -> Verdicts:
        """Verdicts from the failures of each detector and exposure; the run passes without any."""
        success = not any(detectors.values()) and not any(exposures.values())
        return cls(success, dict(detectors), dict(exposures))

    def failure_strings(self) -> list[str]:
        """Every failure, after its detector or exposure: the run's ``FAILURES``."""
        return [f"{scope.lower()} {key} {test}"
                for scope, items in zip(_SCOPES, (self.detectors, self.exposures))
                for key, tests in sorted(items.items()) for test in tests]

    def failed_detectors(self) -> dict[int, list[str]]:
        """Detectors with a failed test."""
        return {key: tests for key, tests in self.detectors.items() if tests}

    def failed_exposures(self) -> dict[int, list[str]]:
        """Exposures with a failed test."""
        return {key: tests for key, tests in self.exposures.items() if tests}


def verdict_table(verdicts: Verdicts) -> Table:
    """Write verdicts as ``verifyFlatResults``' table (see the module docstring)."""
    rows = [(scope, key, not tests, _SEPARATOR.join(tests))
            for scope, items in zip(_SCOPES, (verdicts.detectors, verdicts.exposures))
            for key, tests in sorted(items.items())]
    return Table(rows=rows or None, names=("scope", "id", "SUCCESS", "FAILURES"), dtype=(str, int, bool, str))


def read_verdicts(table: Table) -> Verdicts:
    """Read ``verifyFlatResults``' table back into `Verdicts`.

    Raises
    ------
    KeyError
        Raised if a column is missing.
    """
    found: dict[str, dict[int, list[str]]] = {scope: {} for scope in _SCOPES}
    for row in table:
        text = str(row["FAILURES"])
        found[str(row["scope"])][int(row["id"])] = text.split(_SEPARATOR) if text else []
    return Verdicts.from_failures(found["DETECTOR"], found["EXPOSURE"])


def summary_lines(verdicts: Verdicts, title: str) -> list[str]:
    """A one-screen summary: the counts, then each failed detector and exposure with why.

    Parameters
    ----------
    verdicts : `Verdicts`
        The run's verdicts.
    title : `str`
        What was verified (e.g. the instrument and physical filter).
    """
    lines = [f"Flat verification of {title}: {'PASSED' if verdicts.success else 'FAILED'}"]
    for name, items, failed in (("detectors", verdicts.detectors, verdicts.failed_detectors()),
                                ("exposures", verdicts.exposures, verdicts.failed_exposures())):
        lines.append(f"  {len(items) - len(failed)} of {len(items)} {name} passed.")
        lines.extend(f"  {name[:-1]} {key} FAILED: {_SEPARATOR.join(tests)}"
                     for key, tests in sorted(failed.items()))
    return lines


def failure_list(tests: Mapping[str, bool], prefix: str = "") -> list[str]:
    """The names of the failed tests of a ``{test: passed}`` mapping, each after ``prefix``."""
    return [f"{prefix}{name}" for name, passed in tests.items() if not passed]
