# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Benchmark 3: the flat measurement of one (exposure, detector) on a full-size detector.

Ten simulated post-ISR flats of one LSSTCam-sized detector (16 amplifiers of 509 x 2000 pixels, a
4072 x 4000 mosaic) are written to an on-disk repository (stored as the package's seed config says:
HDF5).  For each image this times, in one process:

- read: ``butler.get`` of the ``cpFlatIsrExp`` image;
- compute: `CpFlatMeasureTask.run` (sigma-clipped statistics of the detector and its amplifiers);
- baseline (the first three images only): the same clipped statistics written plainly with
  `numpy.ma` (one masked array per region, clipped around its mean until a pass drops nothing or
  the pass limit is reached),

and checks that the task and the baseline agree.  Then `CpFlatCombineTask.run` combines the same
images as the pipeline's combine step does (deferred handles, read in its default 200-row tiles,
MEANCLIP): its time over the number of images is the combine's share of each (exposure, detector),
and read + compute + that share is the chain's time per (exposure, detector).
"""

from __future__ import annotations

__all__ = ["MeasureResult", "numpy_clipped_stats", "measure_flats", "run"]

import logging
import statistics
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from lsst.cp.flatnorm.camera_model import DetectorModel
from lsst.cp.flatnorm.cpCombine import CpFlatCombineTask
from lsst.cp.flatnorm.cpFlatMeasure import CpFlatMeasureConfig, CpFlatMeasureTask
from lsst.cp.flatnorm.flat_statistics import DETECTOR_KEYS, amp_keys
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig
from lsst.cp.flatnorm.sim.repo import INPUT_DATASET_TYPE, build_sim_repo
from lsst.images import MaskedImage

from .timing import format_seconds

_LSSTCAM_AMP = (509, 2000)  # imaging pixels (width, height) of an LSSTCam amplifier
_BASELINE_IMAGES = 3  # images the (slow) numpy.ma baseline is timed and checked on


def numpy_clipped_stats(
    image: MaskedImage, regions: list[tuple[slice, slice]], config: CpFlatMeasureConfig
) -> list[tuple[float, float, int]]:
    """Clipped (mean, sigma, N) of the whole image and of each region, with `numpy.ma`.

    Pixels flagged by any of ``config.maskNameList`` present in the image's mask, and non-finite
    pixels, are masked.  Each region is then clipped on its own: ``config.clipMaxIter`` times at
    most, mask ``|x - mean| > config.numSigmaClip * std`` (population std), stopping early when
    a pass masks nothing new.

    Returns
    -------
    stats : `list` [`tuple` [`float`, `float`, `int`]]
        ``(mean, sigma, N)`` of the whole image first, then of each region.
    """
    pixels = image.image.array
    bad = ~np.isfinite(pixels)
    for plane in config.maskNameList:
        if plane in image.mask.schema.names:
            bad |= image.mask.get(plane)
    data = np.ma.masked_array(pixels.astype(np.float64), mask=bad)
    return [_clip(data[region], config.numSigmaClip, config.clipMaxIter)
            for region in [(slice(None), slice(None))] + regions]


def _clip(values: np.ma.MaskedArray, n_sigma: float, max_iter: int) -> tuple[float, float, int]:
    for _ in range(max_iter):
        clipped = np.ma.masked_where(np.abs(values - values.mean()) > n_sigma * values.std(), values)
        if clipped.count() == values.count():
            break
        values = clipped
    return float(values.mean()), float(values.std()), int(values.count())


def _amp_regions(detector: DetectorModel) -> list[tuple[slice, slice]]:
    regions = []
    for amp in detector:
        box = amp.getBBox()
        regions.append((slice(box.getMinY(), box.getMinY() + box.getHeight()),
                        slice(box.getMinX(), box.getMinX() + box.getWidth())))
    return regions


@dataclass
class MeasureResult:
    """Per-image timings (seconds) and the task-baseline agreement of the measurement benchmark."""

    shape: tuple[int, int]
    read: list[float]
    compute: list[float]
    baseline: list[float]
    max_mean_difference: float
    counts_equal: bool
    combine: float
    """Seconds of `CpFlatCombineTask.run` on all the images."""

    def report(self) -> list[str]:
        """Lines summarising the benchmark."""
        read, compute, baseline = (statistics.median(t) for t in (self.read, self.compute, self.baseline))
        label = f"measure {self.shape[1]}x{self.shape[0]}"
        share = self.combine / len(self.read)
        return [
            f"{label}: per (exposure, detector) read {format_seconds(read)}, compute "
            f"{format_seconds(compute)}, total {format_seconds(read + compute)} (median of {len(self.read)}; "
            f"baseline: of {len(self.baseline)})",
            f"{label}: chain per (exposure, detector): read + measure {format_seconds(read + compute)}, the "
            f"combine's share {format_seconds(share)} (CpFlatCombineTask.run on the {len(self.read)} images, "
            f"tiles read included: {format_seconds(self.combine)}), total "
            f"{format_seconds(read + compute + share)}",
            f"{label}: speed ratio {baseline / compute:.1f}x (numpy.ma baseline {format_seconds(baseline)} "
            f"/ task compute {format_seconds(compute)})",
            f"{label}: task vs baseline: max relative mean difference {self.max_mean_difference:.1e}, "
            f"pixel counts {'equal' if self.counts_equal else 'DIFFER'}",
        ]


def measure_flats(root: str, amp_size: tuple[int, int], n_exposures: int) -> MeasureResult:
    """Write ``n_exposures`` flats of one detector under ``root`` and time their measurement.

    Parameters
    ----------
    root : `str`
        Directory of the repository to create.
    amp_size : `tuple` [`int`, `int`]
        Amplifier (width, height) in pixels.
    n_exposures : `int`
        Number of images to time.

    Returns
    -------
    result : `MeasureResult`
    """
    camera = make_sim_camera(n_side=1, amp_width=amp_size[0], amp_height=amp_size[1], n_wavefront=0)
    sim_config = FlatSimConfig(n_exposures=n_exposures, dead_amplifier=None, shadow=None, saturation=None)
    repo = build_sim_repo(root, camera=camera, config=sim_config)
    refs = repo.butler.query_datasets(INPUT_DATASET_TYPE, collections=repo.image_run)
    task = CpFlatMeasureTask()
    detector = next(iter(camera))
    regions = _amp_regions(detector)
    times: dict[str, list[float]] = {"read": [], "compute": [], "baseline": []}
    differences = []
    counts_equal = True
    for ref in refs:
        start = time.perf_counter()
        image = repo.butler.get(ref)
        times["read"].append(time.perf_counter() - start)
        start = time.perf_counter()
        stats = task.run(inputExp=image, camera=camera, detectorId=detector.getId()).outputStats
        times["compute"].append(time.perf_counter() - start)
        if len(times["baseline"]) == _BASELINE_IMAGES:
            continue
        start = time.perf_counter()
        expected = numpy_clipped_stats(image, regions, task.config)
        times["baseline"].append(time.perf_counter() - start)
        keys = [DETECTOR_KEYS] + [amp_keys(i) for i in range(len(regions))]
        ours = [(stats[region.median], stats[region.n]) for region in keys]
        differences += [abs(mean / reference[0] - 1) for (mean, _), reference in zip(ours, expected)]
        counts_equal &= all(n == reference[2] for (_, n), reference in zip(ours, expected))
    handles = [repo.butler.getDeferred(ref) for ref in refs]
    # Its own logger name: quieting it must not quiet the pipelines' cpFlatCombine in this process.
    combiner = CpFlatCombineTask(name="benchCombine")
    combiner.log.setLevel(logging.ERROR)  # its QA logs each amplifier's defect pixels
    start = time.perf_counter()
    combiner.run(inputExpHandles=handles, camera=camera, detectorId=detector.getId())
    combine = time.perf_counter() - start
    return MeasureResult(shape=image.image.array.shape, max_mean_difference=max(differences),
                         counts_equal=counts_equal, combine=combine, **times)


def run(quick: bool) -> list[MeasureResult]:
    """Run the measurement benchmark on LSSTCam-sized images, or small ones if ``quick``."""
    amp_size, n_exposures = ((64, 128), 2) if quick else (_LSSTCAM_AMP, 10)
    with tempfile.TemporaryDirectory(prefix="cp_flatnorm_bench_") as root:
        return [measure_flats(root, amp_size, n_exposures)]
