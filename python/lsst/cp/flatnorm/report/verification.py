# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The verification's verdicts, when the verification has run on the flat (read in one place, so
that the report follows the verification's format from here alone)."""

from __future__ import annotations

__all__ = ["DETECTOR_RESULTS", "read_verdicts"]

from collections.abc import Sequence
from typing import Any

from lsst.daf.butler import Butler, MissingDatasetTypeError

DETECTOR_RESULTS = "verifyFlatDetResults"
"""Dataset type of the verification's per-detector results (cp_verify's name)."""


def _passed(result: Any) -> bool:
    """Whether one detector's results say it passed: cp_verify's ``SUCCESS`` entry."""
    mapping = result if isinstance(result, dict) else getattr(result, "__dict__", {})
    return bool(mapping.get("SUCCESS", False))


def read_verdicts(butler: Butler, collections: Sequence[str], instrument: str) -> dict[int, bool] | None:
    """Return each verified detector's verdict (`True` if it passed), or `None` if the flat was not
    verified in these collections.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        The repository.
    collections : `~collections.abc.Sequence` [`str`]
        Collections to search.
    instrument : `str`
        The flat's instrument.
    """
    try:
        refs = butler.query_datasets(DETECTOR_RESULTS, collections=collections, instrument=instrument,
                                     explain=False)
    except MissingDatasetTypeError:
        return None
    if not refs:
        return None
    return {int(ref.dataId["detector"]): _passed(butler.get(ref)) for ref in refs}
