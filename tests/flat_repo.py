# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Butler repositories holding the known-truth flat statistics of `stats_factory`."""

import astropy.time
import astropy.units as u

from lsst.cp.flatnorm.exposure_records import insert_exposure_records
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import SimExposure
from lsst.cp.flatnorm.sim.instrument import SimFlatCam
from lsst.daf.butler import DatasetType
from stats_factory import EXPOSURES

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
