# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Run the package's pipelines with the real ``pipetask`` command, and read back their outputs."""

from __future__ import annotations

__all__ = [
    "PIPELINES_PACKAGE",
    "NormalizationOutputs",
    "pipeline_uri",
    "read_normalization",
    "run_pipetask",
]

import dataclasses
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from astropy.table import Table

from lsst.daf.butler import Butler
from lsst.resources import ResourcePath

from ..scale_dictionary import exposure_scales, row_scales, scale_level

PIPELINES_PACKAGE = "lsst.cp.flatnorm"
"""The package whose ``pipelines/`` directory ships the pipeline files (in the wheel and, through a
link to the top-level ``pipelines/``, in a source tree)."""


def pipeline_uri(*parts: str) -> str:
    """Return the package resource URI of a shipped pipeline file.

    Parameters
    ----------
    *parts : `str`
        Path of the file below ``pipelines/``, e.g. ``("SimFlatCam", "cpFlat.yaml")``.

    Returns
    -------
    uri : `str`
        ``resource://lsst.cp.flatnorm/pipelines/...``, which ``pipetask -p`` reads wherever the
        package is installed, with no environment variable.

    Raises
    ------
    FileNotFoundError
        Raised if the package has no such pipeline file.
    """
    uri = ResourcePath(f"resource://{PIPELINES_PACKAGE}/pipelines/{'/'.join(parts)}")
    if not uri.exists():
        raise FileNotFoundError(f"No pipeline file {uri}.")
    return str(uri)


def run_pipetask(
    repo: str | os.PathLike[str],
    pipeline: str | os.PathLike[str],
    inputs: Sequence[str],
    output: str,
    *,
    jobs: int = 1,
    extra_args: Sequence[str] = (),
    log_path: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``pipetask run`` in a subprocess, with the interpreter running this module.

    Parameters
    ----------
    repo : `str` or `os.PathLike`
        Butler repository.
    pipeline : `str` or `os.PathLike`
        Pipeline file or URI, e.g. from `pipeline_uri` (may carry a ``#label,...`` subset).
    inputs : `~collections.abc.Sequence` [`str`]
        Input collections.
    output : `str`
        Output CHAINED collection.
    jobs : `int`, optional
        Number of processes (``-j``); 1 runs every quantum in one process, which avoids
        starting a Python interpreter per quantum.
    extra_args : `~collections.abc.Sequence` [`str`], optional
        More ``pipetask run`` arguments (e.g. ``["-c", "cpFlatNormalize:level=AMP"]``).
    log_path : `str` or `os.PathLike`, optional
        File receiving the command's output; it is captured in the result if `None`.

    Returns
    -------
    result : `subprocess.CompletedProcess`

    Raises
    ------
    subprocess.CalledProcessError
        Raised if ``pipetask`` fails; its output is in the exception (or in ``log_path``).
    """
    command = [
        str(Path(sys.executable).with_name("pipetask")), "run", "-b", str(repo),
        "-i", ",".join(inputs), "-o", output, "-p", str(pipeline), "-j", str(jobs),
        "--register-dataset-types", *extra_args,
    ]
    if log_path is None:
        return subprocess.run(command, check=True, capture_output=True, text=True)
    with open(log_path, "w") as log:
        return subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, text=True)


@dataclasses.dataclass
class NormalizationOutputs:
    """What ``cpFlatNormalize`` wrote for one physical filter."""

    scales: dict
    """cp_pipe's layout: ``{"expScale": {det: {amp: {exposure: E}}}, "detScale": ...}``."""
    table: Table
    """One row per (exposure, detector[, amplifier]) entry, with its ``flag``."""

    def entries(self, flag: str) -> set[tuple]:
        """Entries with the given flag (``"REJECTED"``, ``"INVALID"``, ``"USED"``):
        ``(exposure, detector)`` at DETECTOR level, ``(exposure, detector, amplifier)`` at AMP."""
        rows = self.table[self.table["flag"] == flag]
        if self.level == "AMP":
            return {(int(r["exposure"]), int(r["detector"]), str(r["amplifier"])) for r in rows}
        return {(int(r["exposure"]), int(r["detector"])) for r in rows}

    @property
    def level(self) -> str:
        """``"AMP"`` if the row scales are per amplifier, else ``"DETECTOR"``."""
        return scale_level(self.scales)

    def exposure_scales(self) -> dict[int, float]:
        """Exposure scale E of every exposure."""
        return exposure_scales(self.scales)

    def row_scales(self) -> dict:
        """Row scale G by detector ID (DETECTOR level) or by ``(detector, amplifier)`` (AMP level)."""
        return row_scales(self.scales)


def read_normalization(
    butler: Butler, collection: str, instrument: str, physical_filter: str
) -> NormalizationOutputs:
    """Read ``cpFlatNormalizeScales`` and ``cpFlatNormalizeScaleTable`` back from a collection."""
    data_id = {"instrument": instrument, "physical_filter": physical_filter}
    return NormalizationOutputs(
        scales=butler.get("cpFlatNormalizeScales", data_id, collections=collection),
        table=butler.get("cpFlatNormalizeScaleTable", data_id, collections=collection),
    )
