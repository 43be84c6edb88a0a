# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Benchmark 2: gathering the flat statistics of a whole camera into the normalization quantum.

An on-disk repository (file datastore, SQLite registry) is filled with one ``cpFlatStatistics``
dataset per (exposure, detector), 189 detectors x 50 exposures at LSSTCam scale, plus the
camera.  In one process this times:

(a) building the quantum graph of `CpFlatNormalizationTask` (one quantum);
(b) executing that quantum (reading every input, solving, writing the outputs);
(c) a bare loop of ``butler.get`` over the same input refs;
(d) the task's ``run`` on the inputs already in memory, and
(e) putting the outputs of (d) into the repository (what (b) adds to (c) and (d)), and
(f) executing the same quantum on a quantum-backed butler, from a graph built with datastore
    records attached (what ``pipetask run-qbb`` and BPS jobs do: no registry query per input),
(g) the control for (b): the same quantum, executed the same way, of a task that only reads its
    inputs (`ReadOnlyNormalizationTask`), i.e. what the middleware costs for a quantum with these
    inputs whatever the task does,

and reports (b)/(c), (g)/(c), the task's own share (b - g)/(c), (f)/(c) and the peak Python memory
(`tracemalloc`) of (b) and (c), each measured in a second, untimed pass because tracing slows
Python down.

On a shared machine single timings of the same step vary by 20-40%, so (b) and (g) are timed
`REPEATS` times, alternating which of the two goes first, with a bare read loop (c) before each
and one after the last.  The report uses each step's fastest time, the one least disturbed by
other work on the machine (in one run with means, a single slow control quantum, 20.0 s against
13.1 s, made the task's share negative), and prints every timing.
"""

from __future__ import annotations

__all__ = [
    "GatherResult",
    "ReadOnlyNormalizationTask",
    "StatisticsRepo",
    "replicated_camera",
    "write_statistics_repo",
    "measure_gather",
    "run",
]

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lsst.cp.flatnorm.butler_setup import make_repo
from lsst.cp.flatnorm.cpFlatNormalize import (
    CpFlatNormalizationConfig,
    CpFlatNormalizationConnections,
    CpFlatNormalizationTask,
)
from lsst.cp.flatnorm.camera_model import CameraModel
from lsst.cp.flatnorm.flat_statistics import pack_statistics
from lsst.cp.flatnorm.sim.camera import SIM_CAMERA_NAME, make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig, FlatSimulator
from lsst.cp.flatnorm.sim.instrument import SimFlatCam
from lsst.cp.flatnorm.exposure_records import insert_exposure_records
from lsst.daf.butler import Butler, DatasetRef, DatasetType, QuantumBackedButler
from lsst.pipe.base import (
    InputQuantizedConnection,
    OutputQuantizedConnection,
    QuantumContext,
    Struct,
    TaskFactory,
    TaskMetadata,
)
from lsst.pipe.base.simple_pipeline_executor import SimplePipelineExecutor
from lsst.pipe.base.single_quantum_executor import SingleQuantumExecutor

from .timing import elapsed, format_seconds, traced_peak

STATISTICS_DATASET_TYPE = "cpFlatStatistics"
_STATISTICS_RUN = "bench/cpFlatStatistics"
_SCRATCH_RUN = "bench/scratch"
_PHYSICAL_FILTER = "sim_r"
_AMP_PIXELS = 509 * 2000
_LEVEL = "AMP"  # the heavier of the two levels: 16 rows per detector
REPEATS = 3


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
    camera : `lsst.cp.flatnorm.camera_model.CameraModel`
        The camera.
    """

    root: str
    inputs: list[str]
    refs: list[DatasetRef]
    camera: CameraModel


def _statistics(names: list[str], amp_levels: np.ndarray) -> TaskMetadata:
    """Flat statistics of one detector in the layout `CpFlatMeasureTask` writes."""
    return pack_statistics(median=amp_levels.mean(), sigma=0.01 * amp_levels.mean(),
                           n=_AMP_PIXELS * len(names), amp_names=names, amp_medians=amp_levels,
                           amp_sigmas=0.01 * amp_levels, amp_ns=[_AMP_PIXELS] * len(names))


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


class ReadOnlyNormalizationTask(CpFlatNormalizationTask):
    """The control of the gather benchmark: the normalization quantum that only reads its inputs.

    Executed like the real task, it costs what the middleware spends on a quantum with these
    inputs: `QuantumContext`'s membership check and provenance record of every input, the
    executor's check that every input exists, and the task's metadata and log outputs.
    """

    _DefaultName = "readOnlyNormalization"

    def runQuantum(
        self,
        butlerQC: QuantumContext,
        inputRefs: InputQuantizedConnection,
        outputRefs: OutputQuantizedConnection,
    ) -> None:
        butlerQC.get(inputRefs)


@dataclass
class GatherResult:
    """Timings (seconds) and peak memories (bytes) of the gather benchmark."""

    n_detectors: int
    n_exposures: int
    write: float
    graph: float
    quanta: list[float]
    read_loops: list[float]
    run: float
    writes: float
    qbb_quantum: float
    floor_quanta: list[float]
    quantum_peak: int
    reads_peak: int

    @property
    def quantum(self) -> float:
        """(b): the fastest time of the normalization quantum."""
        return min(self.quanta)

    @property
    def floor_quantum(self) -> float:
        """(g): the fastest time of the read-only quantum."""
        return min(self.floor_quanta)

    @property
    def reads(self) -> float:
        """(c): the fastest time of the bare read loops."""
        return min(self.read_loops)

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
            f"(quantum adds {100 * (self.quantum / self.reads - 1):.0f}%); reads are "
            f"{100 * self.reads / self.quantum:.0f}% of the quantum",
            f"{label}: (g) read-only quantum (middleware floor) {format_seconds(self.floor_quantum)}, "
            f"(g) / bare reads ratio {self.floor_quantum / self.reads:.2f}; the task's own share "
            f"(b - g) / (c) {100 * (self.quantum - self.floor_quantum) / self.reads:.0f}%",
            f"{label}: (f) quantum on a quantum-backed butler {format_seconds(self.qbb_quantum)}; "
            f"(f) / bare reads ratio {self.qbb_quantum / self.reads:.2f}",
            f"{label}: every timing: (b) {_seconds_list(self.quanta)}; "
            f"(g) {_seconds_list(self.floor_quanta)}; (c) {_seconds_list(self.read_loops)}",
            f"{label}: peak traced memory: quantum {self.quantum_peak / 2**20:.1f} MiB, "
            f"bare reads {self.reads_peak / 2**20:.1f} MiB",
        ]


def _seconds_list(times: list[float]) -> str:
    return ", ".join(format_seconds(t) for t in times)


def _config() -> CpFlatNormalizationConfig:
    config = CpFlatNormalizationConfig()
    config.level = _LEVEL
    return config


def _executor(
    butler: Butler, task_class: type[CpFlatNormalizationTask] = CpFlatNormalizationTask
) -> SimplePipelineExecutor:
    """Build the quantum graph of the normalization (or its control) over every statistics dataset.

    ``butler`` comes from `SimplePipelineExecutor.prep_butler`: its inputs and output RUN.
    """
    return SimplePipelineExecutor.from_task_class(task_class, config=_config(), butler=butler)


def _prep_butler(repo: StatisticsRepo, output: str) -> Butler:
    return SimplePipelineExecutor.prep_butler(repo.root, inputs=repo.inputs, output=output)


def _run_quantum(executor: SimplePipelineExecutor) -> Callable[[], Any]:
    """Do the executor's one-off initialisation now and return the call that runs the quantum."""
    quanta = executor.as_generator(register_dataset_types=True, save_versions=False)
    return lambda: next(quanta)


def _qbb_quantum(repo: StatisticsRepo, output: str) -> Callable[[], Any]:
    """Build the graph with datastore records attached and return the call that runs its quantum
    on a `QuantumBackedButler`, as ``pipetask run-qbb`` does (outputs reach the datastore only)."""
    butler = _prep_butler(repo, output)
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


def _time_reads_and_run(butler: Butler, repo: StatisticsRepo) -> tuple[float, float, Struct]:
    """Time a bare read loop over every input and (d) the task's ``run`` on what it read."""
    reads, statistics = elapsed(lambda: _read_all(butler, repo.refs))
    task = CpFlatNormalizationTask(config=_config())
    dims = [dict(ref.dataId.required) for ref in repo.refs]
    run, outputs = elapsed(lambda: task.run(statistics, dims, repo.camera))
    return reads, run, outputs


def _time_output_writes(executor: SimplePipelineExecutor, outputs: Struct) -> float:
    """Time (e) putting the task's outputs, as the quantum does, into a scratch RUN collection."""
    data_id = {"instrument": SIM_CAMERA_NAME, "physical_filter": _PHYSICAL_FILTER}
    connections = CpFlatNormalizationConnections(config=_config())
    executor.predicted.pipeline_graph.register_dataset_types(executor.butler)
    executor.butler.collections.register(_SCRATCH_RUN)
    start = time.perf_counter()
    for name in ("outputScales", "outputScaleTable"):
        executor.butler.put(getattr(outputs, name), getattr(connections, name).name, data_id,
                            run=_SCRATCH_RUN)
    return time.perf_counter() - start


def _time_quanta(repo: StatisticsRepo, butler: Butler, first: SimplePipelineExecutor,
                 repeats: int) -> tuple[list[float], list[float], list[float]]:
    """Time (b) and (g) ``repeats`` times, alternating which goes first, and (c) around each.

    Each repeat writes to a RUN of its own, through a butler of its own whose two graph builds
    have warmed its registry connection alike for both quanta (a fresh butler's first 2268 gets
    took 0.4 s longer than its next ones).  ``first`` is the normalization's executor of the
    first repeat, built on ``butler`` by the caller to time (a).

    Returns
    -------
    quanta, floor_quanta, read_loops : `list` [`float`]
        Seconds of each (b), each (g) and each (c).
    """
    quanta: list[float] = []
    floor_quanta: list[float] = []
    read_loops: list[float] = []
    for repeat in range(repeats):
        if repeat:
            butler = _prep_butler(repo, f"bench/norm{repeat}")
            first = _executor(butler)
        pairs = [(first, quanta), (_executor(butler, ReadOnlyNormalizationTask), floor_quanta)]
        for executor, times in pairs[::1 if repeat % 2 == 0 else -1]:
            read_loops.append(elapsed(lambda: _read_all(butler, repo.refs))[0])
            times.append(elapsed(_run_quantum(executor))[0])
    read_loops.append(elapsed(lambda: _read_all(butler, repo.refs))[0])
    return quanta, floor_quanta, read_loops


def measure_gather(root: str, n_detectors: int, n_exposures: int, repeats: int = REPEATS) -> GatherResult:
    """Write the statistics repository under ``root`` and time (a)-(g); see the module docs.

    (d) and (e) run first, so that no quantum pays the process's first imports of the table
    writers.
    """
    write, repo = elapsed(lambda: write_statistics_repo(root, n_detectors, n_exposures))
    butler = _prep_butler(repo, "bench/norm0")
    graph, executor = elapsed(lambda: _executor(butler))
    # This first read loop feeds (d) and warms the butler; it is not one of the (c) loops.
    _, run, outputs = _time_reads_and_run(butler, repo)
    writes = _time_output_writes(executor, outputs)
    del outputs
    quanta, floor_quanta, read_loops = _time_quanta(repo, butler, executor, repeats)
    qbb_quantum, _ = elapsed(_qbb_quantum(repo, "bench/norm-qbb"))
    reads_peak = traced_peak(lambda: _read_all(butler, repo.refs))
    quantum_peak = traced_peak(_run_quantum(_executor(_prep_butler(repo, "bench/norm-traced"))))
    return GatherResult(n_detectors=n_detectors, n_exposures=n_exposures, write=write, graph=graph,
                        quanta=quanta, read_loops=read_loops, run=run, writes=writes,
                        qbb_quantum=qbb_quantum, floor_quanta=floor_quanta,
                        quantum_peak=quantum_peak, reads_peak=reads_peak)


def run(quick: bool) -> list[GatherResult]:
    """Run the gather benchmark at LSSTCam scale, or at a small scale if ``quick``."""
    n_detectors, n_exposures = (9, 4) if quick else (189, 50)
    with tempfile.TemporaryDirectory(prefix="cp_flatnorm_bench_") as root:
        return [measure_gather(root, n_detectors, n_exposures)]
