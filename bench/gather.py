# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Benchmark 2: gathering the flat statistics of a whole camera into the normalization quantum.

An on-disk repository (file datastore, SQLite registry) is filled with one ``flatStats``
dataset per (exposure, detector), 189 detectors x 50 exposures at LSSTCam scale, plus the
camera.  In one process this times:

(a) building the quantum graph of `CpFlatNormalizationTask` (one quantum);
(b) executing that quantum (reading every input, solving, writing the outputs);
(c) a bare loop of ``butler.get`` over the same input refs;
(d) the task's ``run`` on the inputs already in memory, and
(e) putting the outputs of (d) into the repository (what (b) adds to (c) and (d)), and
(f) executing the same quantum on a quantum-backed butler, from a graph built with datastore
    records attached (what ``pipetask run-qbb`` and BPS jobs do: no registry query per input),

and reports (b)/(c), (f)/(c) and the peak Python memory (`tracemalloc`) of (b) and (c), each measured
in a second, untimed pass because tracing slows Python down.
"""

from __future__ import annotations

__all__ = [
    "GatherResult",
    "StatisticsRepo",
    "replicated_camera",
    "write_statistics_repo",
    "measure_gather",
    "run",
]

import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lsst.cp.pipe.butler_setup import make_repo
from lsst.cp.pipe.cpFlatNormalize import (
    CpFlatNormalizationConfig,
    CpFlatNormalizationConnections,
    CpFlatNormalizationTask,
)
from lsst.cp.pipe.camera_model import CameraModel
from lsst.cp.pipe.sim.camera import SIM_CAMERA_NAME, make_sim_camera
from lsst.cp.pipe.sim.flat_simulator import FlatSimConfig, FlatSimulator
from lsst.cp.pipe.sim.instrument import SimFlatCam
from lsst.cp.pipe.sim.repo import insert_exposure_records
from lsst.daf.butler import Butler, DatasetRef, DatasetType, QuantumBackedButler
from lsst.pipe.base import Struct, TaskFactory, TaskMetadata
from lsst.pipe.base.simple_pipeline_executor import SimplePipelineExecutor
from lsst.pipe.base.single_quantum_executor import SingleQuantumExecutor

from .timing import format_seconds

STATISTICS_DATASET_TYPE = "flatStats"
_STATISTICS_RUN = "bench/flatStats"
_SCRATCH_RUN = "bench/scratch"
_PHYSICAL_FILTER = "sim_r"
_AMP_PIXELS = 509 * 2000
_LEVEL = "AMP"  # the heavier of the two levels: 16 rows per detector


@dataclass
class StatisticsRepo:
    """A repository of flat statistics and the collections to process it.

    Attributes
    ----------
    root : `str`
        Repository directory.
    inputs : `list` [`str`]
        Input collections: the statistics RUN and the camera's CALIBRATION collection.
    refs : `list` [`lsst.daf.butler.DatasetRef`]
        The statistics datasets.
    camera : `lsst.cp.pipe.camera_model.CameraModel`
        The camera.
    """

    root: str
    inputs: list[str]
    refs: list[DatasetRef]
    camera: CameraModel


def _statistics(names: list[str], amp_levels: np.ndarray) -> TaskMetadata:
    """Flat statistics of one detector in the layout `CpFlatMeasureTask` writes."""
    metadata = TaskMetadata()
    metadata["DETECTOR_MEDIAN"] = float(amp_levels.mean())
    metadata["DETECTOR_SIGMA"] = float(0.01 * amp_levels.mean())
    metadata["DETECTOR_N"] = _AMP_PIXELS * len(names)
    for i, (name, level) in enumerate(zip(names, amp_levels)):
        metadata[f"AMP_NAME_{i}"] = name
        metadata[f"AMP_MEDIAN_{i}"] = float(level)
        metadata[f"AMP_SIGMA_{i}"] = float(0.01 * level)
        metadata[f"AMP_N_{i}"] = _AMP_PIXELS
    return metadata


def replicated_camera(n_detectors: int) -> CameraModel:
    """A ``SimFlatCam`` camera of ``n_detectors`` copies of the simulated 16-amplifier detector.

    ``make_sim_camera`` names detectors by grid row and column digits, which collide beyond a
    10 x 10 grid, so LSSTCam's 189 detectors are made here with names of their own.
    """
    template = next(iter(make_sim_camera(n_side=1, n_wavefront=0)))
    detectors = [template.model_copy(update={"id": i, "name": f"S{i:03d}", "serial": f"BENCH-{i:03d}"})
                 for i in range(n_detectors)]
    return CameraModel(name=SIM_CAMERA_NAME, detectors=detectors)


def write_statistics_repo(root: str, n_detectors: int, n_exposures: int, seed: int = 5) -> StatisticsRepo:
    """Create a repository holding ``n_detectors x n_exposures`` flat statistics datasets.

    The camera is `replicated_camera`; the levels are separable (amplifier response x lamp
    level) with 1e-4 log noise.

    Parameters
    ----------
    root : `str`
        Directory of the new repository.
    n_detectors, n_exposures : `int`
        Number of detectors and exposures with statistics.
    seed : `int`, optional
        Seed of the levels.

    Returns
    -------
    repo : `StatisticsRepo`
    """
    camera = replicated_camera(n_detectors)
    butler = make_repo(root)
    instrument = SimFlatCam(camera=camera)
    instrument.register(butler.registry)
    instrument.write_camera(butler)
    config = FlatSimConfig(n_exposures=n_exposures, physical_filter=_PHYSICAL_FILTER, dead_amplifier=None,
                           shadow=None, saturation=None)
    exposures = FlatSimulator(camera, config).exposures
    insert_exposure_records(butler, instrument.getName(), exposures)

    dataset_type = DatasetType(STATISTICS_DATASET_TYPE, ("instrument", "exposure", "detector"),
                               "TaskMetadata", universe=butler.dimensions)
    butler.registry.registerDatasetType(dataset_type)
    butler.collections.register(_STATISTICS_RUN)
    detectors = list(camera)
    rng = np.random.default_rng(seed)
    responses = np.exp(rng.normal(0.0, 0.05, (n_detectors, len(detectors[0]))))
    refs = []
    # One registry transaction for all the puts: a commit per put costs ~30 ms on this machine.
    with butler.transaction():
        for exposure in exposures:
            for detector, response in zip(detectors, responses):
                levels = exposure.lamp_level * response * np.exp(rng.normal(0.0, 1e-4, response.size))
                refs.append(butler.put(
                    _statistics([amp.getName() for amp in detector], levels), dataset_type,
                    instrument=instrument.getName(), exposure=exposure.id, detector=detector.getId(),
                    run=_STATISTICS_RUN,
                ))
    return StatisticsRepo(root=root, inputs=[_STATISTICS_RUN, instrument.makeCalibrationCollectionName()],
                          refs=refs, camera=camera)


@dataclass
class GatherResult:
    """Timings (seconds) and peak memories (bytes) of the gather benchmark."""

    n_detectors: int
    n_exposures: int
    write: float
    graph: float
    quantum: float
    reads: float
    run: float
    writes: float
    qbb_quantum: float
    quantum_peak: int
    reads_peak: int

    def report(self) -> list[str]:
        """Lines summarising the benchmark."""
        label = f"gather {_LEVEL} {self.n_detectors}x{self.n_exposures}"
        n_inputs = self.n_detectors * self.n_exposures
        return [
            f"{label}: (a) graph {format_seconds(self.graph)}, (b) quantum {format_seconds(self.quantum)}, "
            f"(c) bare reads {format_seconds(self.reads)} ({format_seconds(self.reads / n_inputs)} per get), "
            f"(d) run() in memory {format_seconds(self.run)}, (e) writing its outputs "
            f"{format_seconds(self.writes)}; writing the inputs took {format_seconds(self.write)}",
            f"{label}: quantum / bare reads ratio {self.quantum / self.reads:.2f} "
            f"(task adds {100 * (self.quantum / self.reads - 1):.0f}%); reads are "
            f"{100 * self.reads / self.quantum:.0f}% of the quantum",
            f"{label}: (f) quantum on a quantum-backed butler {format_seconds(self.qbb_quantum)}; "
            f"(f) / bare reads ratio {self.qbb_quantum / self.reads:.2f}",
            f"{label}: peak traced memory: quantum {self.quantum_peak / 2**20:.1f} MiB, "
            f"bare reads {self.reads_peak / 2**20:.1f} MiB",
        ]


def _config() -> CpFlatNormalizationConfig:
    config = CpFlatNormalizationConfig()
    config.level = _LEVEL
    return config


def _executor(repo: StatisticsRepo, output: str) -> SimplePipelineExecutor:
    """Build the quantum graph of the normalization over every statistics dataset."""
    butler = SimplePipelineExecutor.prep_butler(repo.root, inputs=repo.inputs, output=output)
    return SimplePipelineExecutor.from_task_class(CpFlatNormalizationTask, config=_config(), butler=butler)


def _run_quantum(executor: SimplePipelineExecutor) -> Callable[[], Any]:
    """Do the executor's one-off initialisation now and return the call that runs the quantum."""
    quanta = executor.as_generator(register_dataset_types=True, save_versions=False)
    return lambda: next(quanta)


def _qbb_quantum(repo: StatisticsRepo, output: str) -> Callable[[], Any]:
    """Build the graph with datastore records attached and return the call that runs its quantum
    on a `QuantumBackedButler`, as ``pipetask run-qbb`` does (outputs reach the datastore only)."""
    butler = SimplePipelineExecutor.prep_butler(repo.root, inputs=repo.inputs, output=output)
    executor = SimplePipelineExecutor.from_task_class(
        CpFlatNormalizationTask, config=_config(), butler=butler, attach_datastore_records=True
    )
    executor.predicted.pipeline_graph.register_dataset_types(butler)
    executor.predicted.build_execution_quanta()
    dataset_types = {dataset_type.name: dataset_type for dataset_type in butler.registry.queryDatasetTypes()}
    quantum_executor = SingleQuantumExecutor(
        butler=None,
        task_factory=TaskFactory(),
        limited_butler_factory=lambda quantum: QuantumBackedButler.initialize(
            config=repo.root, quantum=quantum, dimensions=butler.dimensions, dataset_types=dataset_types
        ),
    )
    quantum_id = next(iter(executor.predicted))
    node = executor.predicted.quantum_only_xgraph.nodes[quantum_id]
    return lambda: quantum_executor.execute(node["pipeline_node"], node["quantum"], quantum_id)


def _read_all(butler: Butler, refs: list[DatasetRef]) -> list[Any]:
    return [butler.get(ref) for ref in refs]


def _elapsed(function: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def _traced_peak(function: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _time_reads_and_run(butler: Butler, repo: StatisticsRepo) -> tuple[float, float, Struct]:
    """Time (c) the bare reads of every input and (d) the task's ``run`` on what they read."""
    reads, statistics = _elapsed(lambda: _read_all(butler, repo.refs))
    task = CpFlatNormalizationTask(config=_config())
    dims = [dict(ref.dataId.required) for ref in repo.refs]
    run, outputs = _elapsed(lambda: task.run(statistics, dims, repo.camera))
    return reads, run, outputs


def _time_output_writes(butler: Butler, outputs: Struct) -> float:
    """Time (e) putting the task's outputs, as the quantum does, into a scratch RUN collection.

    The output dataset types must be registered (executing the quantum does it).
    """
    data_id = {"instrument": SIM_CAMERA_NAME, "physical_filter": _PHYSICAL_FILTER}
    connections = CpFlatNormalizationConnections(config=_config())
    butler.collections.register(_SCRATCH_RUN)
    start = time.perf_counter()
    for name in ("outputScales", "outputScaleTable"):
        butler.put(getattr(outputs, name), getattr(connections, name).name, data_id, run=_SCRATCH_RUN)
    return time.perf_counter() - start


def measure_gather(root: str, n_detectors: int, n_exposures: int) -> GatherResult:
    """Write the statistics repository under ``root`` and time (a)-(d); see the module docs."""
    write, repo = _elapsed(lambda: write_statistics_repo(root, n_detectors, n_exposures))
    graph, executor = _elapsed(lambda: _executor(repo, "bench/norm"))
    reads, run, outputs = _time_reads_and_run(executor.butler, repo)
    quantum, _ = _elapsed(_run_quantum(executor))
    writes = _time_output_writes(executor.butler, outputs)
    del outputs
    qbb_quantum, _ = _elapsed(_qbb_quantum(repo, "bench/norm-qbb"))
    reads_peak = _traced_peak(lambda: _read_all(executor.butler, repo.refs))
    quantum_peak = _traced_peak(_run_quantum(_executor(repo, "bench/norm-traced")))
    return GatherResult(n_detectors=n_detectors, n_exposures=n_exposures, write=write, graph=graph,
                        quantum=quantum, reads=reads, run=run, writes=writes, qbb_quantum=qbb_quantum,
                        quantum_peak=quantum_peak,
                        reads_peak=reads_peak)


def run(quick: bool) -> list[GatherResult]:
    """Run the gather benchmark at LSSTCam scale, or at a small scale if ``quick``."""
    n_detectors, n_exposures = (9, 4) if quick else (189, 50)
    with tempfile.TemporaryDirectory(prefix="cp_flatnorm_bench_") as root:
        return [measure_gather(root, n_detectors, n_exposures)]
