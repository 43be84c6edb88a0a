# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Benchmark 8: the time of a whole LSSTCam flat, projected from measurements on this machine.

An LSSTCam flat is 189 science detectors of 4072 x 4000 pixels and 50 exposures: a graph of
189 x 50 measure quanta, one normalization quantum and 189 combine quanta.  Measured here:

- the chain per (exposure, detector) at full detector size (`bench.measure.measure_flats`: read,
  measure, the combine's share of `CpFlatCombineTask.run` over its images), plus the
  normalization's numerical share (`CpFlatNormalizationTask.measureScales` on a 3024 x 50
  amplifier-level matrix, over 189 x 50);
- against the floor of reading the stored flat's bytes from disk: its file is dropped from the
  page cache (``posix_fadvise(DONTNEED)``, that file only) and read back with plain ``read`` calls;
- the middleware's own cost per quantum: real ``pipetask run -j 2`` of the SimFlatCam ``cpFlat``
  pipeline on tiny images (32 x 64 amplifiers, where the tasks' work is negligible) at three graph
  sizes.  A line ``wall = startup + per_quantum x quanta`` is fitted to the two outer sizes and
  checked against the middle one.

The projection (every assumption is printed with it) runs the three stages one after the other.
On one machine of C cores (``pipetask -j C``) the measure quanta spread over the C processes, each
costing the chain's read and measure plus the middleware's cost per quantum (2 x the fitted
per-quantum wall time: -j 2 kept two cores busy); the normalization quantum is serial (part 2's
measured quantum, a constant here); the 189 combine quanta, each 50 x the combine share, spread over
min(C, 189) processes.  A stage can be no shorter than reading its flats from disk at the rate
measured here.  Through the bps Slurm site on N machines of 64 cores, each detector's quanta of a
stage form one job (serial within it) that first pays the measured ``pipetask`` startup; the 189 jobs
of a stage run in waves over the N x 64 cores, and each machine reads at the rate measured here.
In a quick run the images are small and the middleware is not measured (its cost is taken as zero).
"""

from __future__ import annotations

__all__ = ["MiddlewareFit", "WholeFlatResult", "run"]

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lsst.cp.flatnorm.cpFlatNormalize import CpFlatNormalizationTask
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig
from lsst.cp.flatnorm.sim.repo import INPUT_DATASET_TYPE, build_sim_repo
from lsst.cp.flatnorm.sim.run import pipeline_uri, run_pipetask

from .measure import _LSSTCAM_AMP, MeasureResult, measure_flats
from .solver import simulate_levels
from .timing import elapsed, format_seconds

DETECTORS, EXPOSURES = 189, 50
QUANTA = DETECTORS * EXPOSURES + 1 + DETECTORS
CORES = (2, 16, 64)
SLURM_MACHINES = (1, 4, 16, 64)
SLURM_CORES = 64
_GRAPHS = ((1, 4), (2, 6), (3, 10))  # (n_side, exposures) of the pipetask runs: 1, 4 and 9 detectors
_JOBS = 2
NORMALIZATION_QUANTUM = 14.5
"""Seconds of the normalization quantum at 189 x 50, AMP level (part 2, full run of 2026-11-25)."""


def _quanta(n_detectors: int, n_exposures: int) -> int:
    return n_detectors * n_exposures + 1 + n_detectors


@dataclass
class MiddlewareFit:
    """``pipetask run -j 2`` wall times against the number of quanta, and the fitted line."""

    quanta: list[int]
    seconds: list[float]

    @property
    def per_quantum(self) -> float:
        return (self.seconds[-1] - self.seconds[0]) / (self.quanta[-1] - self.quanta[0])

    @property
    def startup(self) -> float:
        return self.seconds[0] - self.per_quantum * self.quanta[0]

    def predicted(self, quanta: int) -> float:
        return self.startup + self.per_quantum * quanta


@dataclass
class WholeFlatResult:
    """Measurements and the projection of a whole flat."""

    chain: MeasureResult
    normalization: float
    """Seconds of measureScales on the whole flat's amplifier-level matrix."""
    file_bytes: int
    disk_rate: float
    """Bytes per second read from disk (page cache dropped)."""
    middleware: MiddlewareFit | None
    quick: bool = False

    def per_pair(self) -> dict[str, float]:
        """Core-seconds per (exposure, detector) of each step of the chain."""
        chain = self.chain
        return {"read": float(np.median(chain.read)), "measure": float(np.median(chain.compute)),
                "combine share": chain.combine / len(chain.read),
                "normalization share": self.normalization / (DETECTORS * EXPOSURES)}

    def report(self) -> list[str]:
        """Lines with the measurements, the assumptions and the projected wall times."""
        ny, nx = self.chain.shape
        label = f"whole flat {DETECTORS}x{EXPOSURES} of {nx}x{ny}"
        steps = self.per_pair()
        chain = sum(steps.values())
        disk_floor = self.file_bytes / self.disk_rate
        lines = [f"{label}: chain per (exposure, detector) "
                 + ", ".join(f"{name} {format_seconds(seconds)}" for name, seconds in steps.items())
                 + f": {format_seconds(chain)} = {chain / disk_floor:.1f}x the floor of reading its "
                 f"{self.file_bytes / 2**20:.0f} MiB from disk ({format_seconds(disk_floor)} at "
                 f"{self.disk_rate / 1e6:.0f} MB/s, page cache dropped)"]
        per_quantum, startup = 0.0, 0.0
        if self.middleware is None:
            lines.append(f"{label}: middleware not measured in a quick run (taken as 0)")
        else:
            fit = self.middleware
            per_quantum, startup = _JOBS * fit.per_quantum, fit.startup
            middle = fit.predicted(fit.quanta[1])
            lines.append(f"{label}: middleware: pipetask run -j {_JOBS} on tiny images, "
                         + ", ".join(f"{quanta} quanta {format_seconds(seconds)}"
                                     for quanta, seconds in zip(fit.quanta, fit.seconds))
                         + f"; fit startup {format_seconds(fit.startup)} + {format_seconds(fit.per_quantum)} "
                         f"per quantum (wall, -j {_JOBS}), {format_seconds(per_quantum)} core-seconds; "
                         f"check: "
                         f"{fit.quanta[1]} quanta predicted {format_seconds(middle)}, measured "
                         f"{format_seconds(fit.seconds[1])} ({middle / fit.seconds[1] - 1:+.0%})")
        lines.append(f"{label}: assumptions: {QUANTA} quanta; the middleware's {format_seconds(per_quantum)} "
                     f"core-seconds per quantum on every quantum; the normalization quantum "
                     f"{format_seconds(NORMALIZATION_QUANTUM)} (part 2's, 189 x 50 at AMP level), serial; "
                     f"every flat read twice (measure, combine) at {self.disk_rate / 1e6:.0f} MB/s per "
                     f"machine, "
                     f"overlapping the compute; a combine quantum is 50 x the combine share")
        for cores in CORES:
            lines.append(f"{label}: 1 machine of {cores} cores (pipetask -j {cores}): "
                         + self._projection(steps, per_quantum, startup, cores, jobs_start=0.0, machines=1))
        for machines in SLURM_MACHINES:
            lines.append(f"{label}: bps Slurm on {machines} machine(s) of {SLURM_CORES} cores, a job per "
                         f"detector and stage ({2 * DETECTORS + 1} jobs, each paying the pipetask startup): "
                         + self._projection(steps, per_quantum, startup, machines * SLURM_CORES,
                                            jobs_start=startup, machines=machines))
        return lines

    def _projection(self, steps: dict[str, float], per_quantum: float, startup: float, slots: int,
                    jobs_start: float, machines: int) -> str:
        """Wall time of the three stages on ``slots`` cores; with ``jobs_start``, each detector's
        quanta of a stage form one job (serial within it) that pays ``jobs_start`` first."""
        measure_quantum = steps["read"] + steps["measure"] + per_quantum
        combine_quantum = EXPOSURES * steps["combine share"] + per_quantum
        if jobs_start:
            waves = -(-DETECTORS // slots)
            measure = waves * (jobs_start + EXPOSURES * measure_quantum)
            combine = waves * (jobs_start + combine_quantum)
        else:
            measure = DETECTORS * EXPOSURES * measure_quantum / slots
            combine = -(-DETECTORS // slots) * combine_quantum
        disk = DETECTORS * EXPOSURES * self.file_bytes / (machines * self.disk_rate)
        measure, combine = max(measure, disk), max(combine, disk)
        total = startup + measure + jobs_start + NORMALIZATION_QUANTUM + combine
        return (f"{_hours(total)} (measure {_hours(measure)}, normalization "
                f"{_hours(jobs_start + NORMALIZATION_QUANTUM)}, combine {_hours(combine)}; disk per stage "
                f"{_hours(disk)})")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def disk_read_rate(path: Path) -> float:
    """Bytes per second of reading ``path`` after dropping it from the page cache (best of 3)."""
    size = path.stat().st_size
    best = float("inf")
    for _ in range(3):
        with open(path, "rb", buffering=0) as stream:
            os.fsync(stream.fileno())
            os.posix_fadvise(stream.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            start = time.perf_counter()
            while stream.read(8 * 2**20):
                pass
            best = min(best, time.perf_counter() - start)
    return size / best


def normalization_seconds() -> float:
    """Seconds of measureScales on an amplifier-level matrix of the whole flat (16 per detector)."""
    simulated = simulate_levels(DETECTORS * 16, EXPOSURES, amp_level=True, seed=8)
    task = CpFlatNormalizationTask()
    return min(elapsed(lambda: task.measureScales(simulated.levels, simulated.counts))[0] for _ in range(3))


def middleware_fit(root: Path) -> MiddlewareFit:
    """Time ``pipetask run -j 2`` of the cpFlat pipeline on tiny images at each graph size."""
    quanta, seconds = [], []
    for n_side, n_exposures in _GRAPHS:
        camera = make_sim_camera(n_side=n_side, n_wavefront=0)
        repo = build_sim_repo(root / f"graph{n_side}", camera=camera,
                              config=FlatSimConfig(n_exposures=n_exposures, dead_amplifier=None, shadow=None,
                                                   saturation=None))
        start = time.perf_counter()
        run_pipetask(repo.root, pipeline_uri("SimFlatCam", "cpFlat.yaml"), [repo.defaults_collection],
                     "bench/wholeFlat", jobs=_JOBS)
        seconds.append(time.perf_counter() - start)
        quanta.append(_quanta(n_side**2, n_exposures))
    return MiddlewareFit(quanta=quanta, seconds=seconds)


def run(quick: bool) -> list[WholeFlatResult]:
    """Measure the chain at full detector size (small if ``quick``) and project a whole flat."""
    amp_size, n_exposures = ((64, 128), 2) if quick else (_LSSTCAM_AMP, 10)
    with tempfile.TemporaryDirectory(prefix="cp_flatnorm_bench_") as root:
        chain = measure_flats(str(Path(root) / "chain"), amp_size, n_exposures)
        butler = chain_butler(Path(root) / "chain")
        ref = butler.query_datasets(INPUT_DATASET_TYPE, collections="*", find_first=False, limit=1)[0]
        path = Path(butler.getURI(ref).ospath)
        rate = disk_read_rate(path)
        middleware = None if quick else middleware_fit(Path(root))
        return [WholeFlatResult(chain=chain, normalization=normalization_seconds(),
                                file_bytes=path.stat().st_size, disk_rate=rate, middleware=middleware,
                                quick=quick)]


def chain_butler(root: Path):  # noqa: ANN201 (daf_butler's Butler, imported lazily)
    from lsst.daf.butler import Butler

    return Butler.from_config(str(root))
