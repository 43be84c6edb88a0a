# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The verification's verdicts, when the verification has run on the flat: the detectors' rows of
``verifyFlatResults``, read through `lsst.cp.flatnorm.verify_results`, the layout's owner."""

from __future__ import annotations

__all__ = ["RUN_RESULTS", "read_verdicts"]

from collections.abc import Sequence

from lsst.daf.butler import Butler, MissingDatasetTypeError

from ..verify_results import read_verdicts as read_verdict_table

RUN_RESULTS = "verifyFlatResults"
"""Dataset type of the verification's verdicts, one table per instrument and physical filter."""


def read_verdicts(butler: Butler, collections: Sequence[str], instrument: str,
                  physical_filter: str | None = None) -> dict[int, bool] | None:
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
    physical_filter : `str`, optional
        The flat's physical filter; any, if `None`.
    """
    where = {"instrument": instrument}
    if physical_filter is not None:
        where["physical_filter"] = physical_filter
    try:
        refs = butler.query_datasets(RUN_RESULTS, collections=collections, data_id=where, explain=False)
    except MissingDatasetTypeError:
        return None
    if not refs:
        return None
    verdicts = read_verdict_table(butler.get(refs[0]))
    return {detector: not failures for detector, failures in verdicts.detectors.items()}
