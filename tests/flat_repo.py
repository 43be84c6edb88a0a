# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Butler repositories holding the known-truth flat statistics of `stats_factory`, and small
simulated repositories of an instrument with many filters (one bad-input kind per filter)."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import astropy.time
import astropy.units as u
import numpy as np

from lsst.cp.flatnorm.exposure_records import insert_exposure_records
from lsst.cp.flatnorm.flat_connections import POST_ISR_FLAT_DATASET_TYPE
from lsst.cp.flatnorm.flat_statistics import pack_statistics
from lsst.cp.flatnorm.instrument import FlatInstrumentConfig, instrument_class
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import SimExposure
from lsst.cp.flatnorm.sim.instrument import SimFlatCam
from lsst.daf.butler import DatasetType
from pipetask_in_process import pipetask
from stats_factory import EXPOSURES

PIPETASK = Path(sys.executable).with_name("pipetask")
KILL_HOOK = Path(__file__).with_name("kill_hook")
"""Directory whose ``sitecustomize`` interrupts a process at a chosen write (see `run_pipetask`)."""
_LONG_LOG = re.compile(r"^([A-Z]+) \S+ (\S+) \(.*?\)\([^()]+:\d+\) - (.*)$")

INSTRUMENT = "SimFlatCam"
FILTER = "sim_r"


def images_camera():
    """A camera for simulated images: one science and one wavefront detector of 0.01 mm pixels."""
    return make_sim_camera(n_side=1, amp_width=4, amp_height=4, n_wavefront=1)


def sim_exposures(exposures=EXPOSURES, physical_filter=FILTER, reasons=None):
    """Exposure records for exposure IDs of the form day_obs * 100000 + seq_num.

    Parameters
    ----------
    exposures : `list` [`int`], optional
        Exposure IDs.
    physical_filter : `str`, optional
        Physical filter of every exposure.
    reasons : `list` [`str`], optional
        ``observation_reason`` of each exposure; ``"flat"`` for all if `None`.
    """
    start = astropy.time.Time("2026-11-25T20:00:00", scale="tai")
    reasons = reasons or ["flat"] * len(exposures)
    return [
        SimExposure(id=exposure, obs_id=f"SIM_{exposure}", seq_num=exposure % 100000,
                    day_obs=exposure // 100000, physical_filter=physical_filter,
                    begin=start + 60 * (exposure % 100000) * u.s, exposure_time=15.0,
                    lamp_level=1.0, colour=0.0, observation_reason=reason)
        for exposure, reason in zip(exposures, reasons)
    ]


def fill_repo(butler, factory, pairs, run, *, exposures=None, camera_storage_class="CameraModel"):
    """Register the instrument, exposures and dataset types, and put the statistics of ``pairs``.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable butler of an empty repository.
    factory : `stats_factory.StatisticsFactory`
        Truth of the statistics.
    pairs : `list` [`tuple` [`int`, `int`]]
        The (exposure, detector) statistics to put.
    run : `str`
        RUN collection to put them in (registered here).
    exposures : `list` [`SimExposure`], optional
        Exposure records; `sim_exposures` with its defaults if `None`.
    camera_storage_class : `str`, optional
        Storage class to register the ``camera`` dataset type with.

    Returns
    -------
    dims : `list` [`dict`]
        The data ID of each statistics dataset, in the order of ``pairs``.
    """
    SimFlatCam(camera=factory.camera).register(butler.registry)
    insert_exposure_records(butler, INSTRUMENT, exposures or sim_exposures())
    universe = butler.dimensions
    dataset_types = [
        DatasetType("cpFlatStatistics", ("instrument", "exposure", "detector"), "TaskMetadata",
                    universe=universe),
        DatasetType("camera", ("instrument",), camera_storage_class, universe=universe, isCalibration=True),
    ]
    for dataset_type in dataset_types:
        butler.registry.registerDatasetType(dataset_type)
    butler.registry.registerRun(run)
    mds, dims = factory.inputs(pairs)
    for md, dim in zip(mds, dims):
        butler.put(md, "cpFlatStatistics", dim, run=run)
    return dims


def flat_instrument(name, camera, filters):
    """A `~lsst.cp.flatnorm.instrument.FlatInstrument` named ``name`` with ``camera`` and the
    ``filters`` (physical filter: band); pipetask constructs its class by name, without a file."""
    config = FlatInstrumentConfig(name=name, camera="python:lsst.cp.flatnorm.sim.camera.make_sim_camera",
                                  filters=filters)
    return instrument_class(name)(config=config, camera=camera)


def add_images(butler, instrument, simulator, run, change=None):
    """Insert the exposure records of ``simulator`` and put its images into ``run``.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable butler where the instrument, its filters and ``cpFlatIsrExp`` are registered.
    instrument : `str`
        Instrument name.
    simulator : `lsst.cp.flatnorm.sim.flat_simulator.FlatSimulator`
        The images (its exposures must not be in the registry yet).
    run : `str`
        RUN collection.
    change : callable, optional
        ``change(exposure_index, detector, image)`` returns the image to put (changed in place or
        replaced), or `None` to put none.
    """
    insert_exposure_records(butler, instrument, simulator.exposures)
    for index, exposure in enumerate(simulator.exposures):
        for detector in simulator.camera:
            if not simulator.has_image(exposure.id, detector.getId()):
                continue
            image = simulator.make_image(exposure.id, detector.getId())
            if change is not None:
                image = change(index, detector.getId(), image)
            if image is not None:
                butler.put(image, POST_ISR_FLAT_DATASET_TYPE, instrument=instrument, exposure=exposure.id,
                           detector=detector.getId(), run=run)


def synthetic_statistics(camera, exposures, seed, pixels=16):
    """Flat statistics of every (exposure, detector): level = gain[amp] * lamp[exposure] * (1 + 1e-3
    noise), ``pixels`` pixels per amplifier, as the measurement writes them.

    Returns
    -------
    statistics : `dict` [`tuple` [`int`, `int`], `lsst.pipe.base.TaskMetadata`]
        By (exposure ID, detector ID).
    """
    rng = np.random.default_rng(seed)
    lamps = {exposure: rng.uniform(8000.0, 12000.0) for exposure in exposures}
    gains = {(det.getId(), amp.getName()): rng.uniform(0.9, 1.1) for det in camera for amp in det}
    statistics = {}
    for exposure in exposures:
        for det in camera:
            names = [amp.getName() for amp in det]
            levels = [gains[det.getId(), name] * lamps[exposure] * (1 + 1e-3 * rng.standard_normal())
                      for name in names]
            statistics[exposure, det.getId()] = pack_statistics(
                median=float(np.mean(levels)), sigma=1.0, n=pixels * len(names), amp_names=names,
                amp_medians=levels, amp_sigmas=[1.0] * len(names), amp_ns=[pixels] * len(names))
    return statistics


def pipetask_arguments(root, inputs, output, pipeline, *options, query=None, jobs=1):
    """The arguments of ``pipetask --long-log run``; ``options`` are further arguments."""
    arguments = ["--long-log", "run", "-b", str(root), "-i", ",".join(inputs), "-o", output,
                 "-p", str(pipeline), "--register-dataset-types", "-j", str(jobs), *options]
    if query:
        arguments += ["-d", query]
    return arguments


def pipetask_command(root, inputs, output, pipeline, *options, query=None, jobs=1):
    """The ``pipetask --long-log run`` command line; ``options`` are further arguments."""
    return [str(PIPETASK), *pipetask_arguments(root, inputs, output, pipeline, *options, query=query,
                                               jobs=jobs)]


def run_pipetask(root, inputs, output, pipeline, *options, query=None, kill_before_put=(), kill_after_puts=0,
                 kill_signal="TERM", kill_where="put", in_process=False):
    """Run ``pipetask --long-log run`` (``-j 1``) in a subprocess; return the completed process.

    ``options`` are further arguments (``-c label:field=value``, ``--extend-run``...).  With
    ``kill_before_put``, dataset type names, the process sends itself ``kill_signal`` just before it
    writes a dataset of those types (or, with ``kill_where="write"``, in the middle of the file's
    write), once ``kill_after_puts`` of them are written (`KILL_HOOK`).  With ``in_process``, the
    command runs in this process instead (`pipetask_in_process.pipetask`).
    """
    arguments = pipetask_arguments(root, inputs, output, pipeline, *options, query=query)
    if in_process:
        if kill_before_put:
            raise ValueError("Only a subprocess can be killed before a put.")
        return pipetask(*arguments)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if kill_before_put:
        env = hooked_env(KILL_BEFORE_PUT=",".join(kill_before_put), KILL_AFTER_PUTS=str(kill_after_puts),
                         KILL_SIGNAL=kill_signal, KILL_WHERE=kill_where)
    return subprocess.run([str(PIPETASK), *arguments], capture_output=True, text=True, timeout=900, env=env)


def run_with_fault(command, pause_file, inject, timeout=900, **settings):
    """Run ``command`` with `KILL_HOOK` pausing it as ``settings`` say (``PAUSE_AT_QUANTUM=label``,
    or ``KILL_BEFORE_PUT=...`` with ``KILL_WHERE=pause``), call ``inject()`` once it has paused, then
    let it go on; return the completed process (its output captured, as text).

    Raises
    ------
    AssertionError
        Raised if the process ended without pausing.
    """
    pause_file = Path(pause_file)
    env = hooked_env(PAUSE_FILE=str(pause_file), **settings)
    with open(f"{pause_file}.out", "w+") as out, open(f"{pause_file}.err", "w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
        try:
            while not list(pause_file.parent.glob(f"{pause_file.name}.waiting.*")):
                assert process.poll() is None, \
                    f"{command} ended without pausing:\n{Path(err.name).read_text()}"
                time.sleep(0.1)
            inject()
        finally:
            Path(f"{pause_file}.go").touch()
            process.wait(timeout)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(command, process.returncode, out.read(), err.read())


def hooked_env(**settings):
    """This process's environment with `KILL_HOOK` on ``PYTHONPATH`` and its ``settings`` (see the
    hook's docstring), for a subprocess to be interrupted on purpose."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **settings)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(KILL_HOOK), env.get("PYTHONPATH")]))
    return env


def log_lines(process):
    """The lines pipetask wrote, stdout then stderr, ``--long-log`` records shortened to the default
    format, ``name LEVEL: message``."""
    return [_LONG_LOG.sub(r"\2 \1: \3", line) for line in (process.stdout + process.stderr).splitlines()]
