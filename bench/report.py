# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Benchmark 8: the flat report of an LSSTCam-sized run (205 detectors, 3,216 amplifiers, 52
exposures): the time to write its site and the site's size.

The report's content is made here without a butler (reading a run is the butler's and the image
formatter's time, measured by parts 3 and 7): each detector's binned flat has the 64-bin side the
report gives an LSSTCam detector and each input's binned residual half that, so the pages, images
and tables are those of a full run.  ``--quick`` writes a 9-detector, 6-exposure report.
"""

from __future__ import annotations

__all__ = ["ReportResult", "run"]

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
from astropy.table import Table

from lsst.cp.flatnorm.camera_model import AmplifierModel, CameraModel, DetectorModel, PixelBox
from lsst.cp.flatnorm.report.content import (
    MAX_BINNED_SIDE,
    RESIDUAL_COARSENING,
    AmplifierLevel,
    DetectorContent,
    ExposureContent,
    ReportContent,
    RunSummary,
)
from lsst.cp.flatnorm.report.site import write_site

from .timing import elapsed, format_seconds

_N_SCIENCE, _N_GUIDER, _N_WAVEFRONT = 189, 8, 8
_PITCH = 42.25  # mm between detector centres
_REJECTED_FRACTION = 0.01


@dataclasses.dataclass
class ReportResult:
    """Time and size of one report."""

    n_detectors: int
    n_amplifiers: int
    n_exposures: int
    seconds: float
    n_files: int
    size: int

    def report(self) -> list[str]:
        """Lines summarising the benchmark."""
        return [f"report {self.n_detectors} detectors, {self.n_amplifiers} amplifiers, {self.n_exposures} "
                f"exposures: site written in {format_seconds(self.seconds)}, {self.n_files} files, "
                f"{self.size / 2**20:.1f} MiB"]


def _detector(det_id: int, n_amps: int, column: int, row: int) -> DetectorModel:
    """A detector of ``MAX_BINNED_SIDE`` pixels a side (one pixel per bin of an LSSTCam detector)."""
    side = MAX_BINNED_SIDE
    width = side // (n_amps // 2) if n_amps == 16 else side // n_amps
    height = side // 2 if n_amps == 16 else side
    amps = [AmplifierModel(name=f"C{i:02d}", bbox=PixelBox(x0=(i % (side // width)) * width,
                                                           y0=(i // (side // width)) * height,
                                                           width=width, height=height))
            for i in range(n_amps)]
    return DetectorModel(id=det_id, name=f"D{det_id:03d}", bbox=PixelBox(x0=0, y0=0, width=side, height=side),
                         focal_plane_x=column * _PITCH, focal_plane_y=row * _PITCH,
                         pixel_size=_PITCH / side * 0.95, amplifiers=amps)


def _camera(quick: bool) -> CameraModel:
    kinds = [16] * 9 if quick else [16] * (_N_SCIENCE + _N_GUIDER) + [8] * _N_WAVEFRONT
    columns = int(np.ceil(np.sqrt(len(kinds))))
    return CameraModel(name="LSSTCamSized", detectors=[_detector(i, n, i % columns, i // columns)
                                                       for i, n in enumerate(kinds)])


def _content(camera: CameraModel, n_exposures: int, rng: np.random.Generator) -> ReportContent:
    detectors = {}
    residual_shape = (MAX_BINNED_SIDE // RESIDUAL_COARSENING,) * 2
    for det in camera:
        flat = 1 + 0.02 * rng.standard_normal((MAX_BINNED_SIDE, MAX_BINNED_SIDE))
        detectors[det.getId()] = DetectorContent(
            detector=det, binned=flat, median=float(np.median(flat)),
            amplifiers=[AmplifierLevel(amp.getName(), 1.0, 0.02, 509 * 2000) for amp in det],
            masked={"BAD": 100}, change=flat - 1,
            residuals={e: 1e-3 * rng.standard_normal(residual_shape) for e in range(n_exposures)})
    exposures = {e: ExposureContent(id=e, obs_id=f"MC_C_20261207_{e:06d}", start=f"2026-12-07T20:{e:02d}:00",
                                    minutes=float(e), exposure_time=15.0, reason="flat")
                 for e in range(n_exposures)}
    n_rows = len(detectors) * n_exposures
    flags = np.where(rng.random(n_rows) < _REJECTED_FRACTION, "REJECTED", "USED")
    table = Table({
        "exposure": np.tile(np.arange(n_exposures), len(detectors)),
        "detector": np.repeat(list(detectors), n_exposures), "amplifier": np.full(n_rows, ""),
        "level": np.full(n_rows, 2e4), "exp_scale": np.full(n_rows, 2e4),
        "exp_scale_err": np.full(n_rows, 2.0), "det_scale": np.ones(n_rows),
        "log_residual": 1e-3 * rng.standard_normal(n_rows), "flag": flags})
    table.meta.update({"LEVEL": "DETECTOR", "CONVERGED": True, "COLOUR_TERMS": 0})
    summary = RunSummary(instrument="LSSTCam", physical_filter="r_57", collections=["u/bench/cpFlat"],
                         flat_dataset_type="flat", flat_run="u/bench/cpFlat/run",
                         labels=["cpFlatCombine", "cpFlatMeasure", "cpFlatNormalize"], versions={},
                         written="2026-12-07T00:00:00Z")
    return ReportContent(summary=summary, camera=camera, detectors=detectors, exposures=exposures,
                         scale_table=table, gradient=None, gradient_figures={}, verdicts=None,
                         previous="u/bench/previous", binning=1)


def run(quick: bool) -> list[ReportResult]:
    """Write the report of an LSSTCam-sized run (or a small one if ``quick``) and measure it."""
    camera = _camera(quick)
    n_exposures = 6 if quick else 52
    content = _content(camera, n_exposures, np.random.default_rng(24))
    with tempfile.TemporaryDirectory(prefix="cp_flatnorm_bench_") as root:
        seconds, _ = elapsed(lambda: write_site(content, Path(root) / "site"))
        files = [path for path in Path(root).rglob("*") if path.is_file()]
        return [ReportResult(len(camera), sum(len(det) for det in camera), n_exposures, seconds, len(files),
                             sum(path.stat().st_size for path in files))]
