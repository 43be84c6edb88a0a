# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""``cp-flatnorm verify REPO --collections ...``: the one-screen summary of flat verifications.

It reads every ``verifyFlatResults`` (the verdicts the ``verifyFlat`` task wrote, one per
instrument and physical filter) in the collections, and prints the counts and each failed detector
and exposure with its failed tests (`lsst.cp.flatnorm.verify_results.summary_lines`).
"""

from __future__ import annotations

__all__ = ["VERIFICATION_FAILED", "print_verifications"]

from collections.abc import Sequence
from typing import TextIO

from lsst.daf.butler import Butler

from .verify_results import read_verdicts, summary_lines

VERIFICATION_FAILED = 3
"""Exit status of ``cp-flatnorm verify`` when a verification failed (1 is a refused input)."""

_DATASET_TYPE = "verifyFlatResults"


def print_verifications(repo: str, collections: Sequence[str], out: TextIO,
                        where: str = "") -> bool:
    """Print the summary of every flat verification in ``collections``.

    Parameters
    ----------
    repo : `str`
        Butler repository.
    collections : `~collections.abc.Sequence` [`str`]
        Collections to search (e.g. the output collection of ``verifyFlat.yaml``).
    out : `typing.TextIO`
        Where to print.
    where : `str`, optional
        Butler query constraint (e.g. ``"instrument='HSC' AND physical_filter='HSC-R'"``).

    Returns
    -------
    passed : `bool`
        Whether every verification passed.

    Raises
    ------
    LookupError
        Raised if the collections hold no ``verifyFlatResults``; the message names them.
    """
    butler = Butler.from_config(repo)
    refs = butler.query_datasets(_DATASET_TYPE, collections=list(collections), where=where,
                                 find_first=True, explain=False)
    if not refs:
        raise LookupError(f"No {_DATASET_TYPE} in the collections {', '.join(collections)}"
                          f"{f' matching {where!r}' if where else ''} of {repo}: run a verifyFlat.yaml "
                          "pipeline first.")
    passed = True
    for ref in sorted(refs, key=lambda ref: (ref.dataId["instrument"], ref.dataId["physical_filter"])):
        verdicts = read_verdicts(butler.get(ref))
        passed &= verdicts.success
        title = f"{ref.dataId['instrument']} {ref.dataId['physical_filter']} ({ref.run})"
        print("\n".join(summary_lines(verdicts, title)), file=out)
    return passed
