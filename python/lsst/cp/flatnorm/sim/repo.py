# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Build an on-disk butler repository holding simulated flats of ``SimFlatCam``.

The repository has everything ``pipetask`` needs to run the flat pipelines on it: the instrument
and detector records, the camera as a certified calibration, exposure records with real flat
metadata, and post-ISR images (dataset type ``cpFlatProc``) in a RUN collection, all reachable
through the instrument's umbrella collection ``SimFlatCam/defaults``.
"""

from __future__ import annotations

__all__ = ["INPUT_DATASET_TYPE", "SimRepo", "build_sim_repo", "insert_exposure_records", "put_images"]

import dataclasses
import datetime
import os
import shutil
from pathlib import Path

import astropy.time

from lsst.daf.butler import Butler, CollectionType, DatasetType, Timespan

from ..butler_setup import make_repo
from ..camera_model import CameraModel
from .camera import make_sim_camera
from .flat_simulator import FlatSimConfig, FlatSimulator, FlatTruth, SimExposure
from .instrument import SimFlatCam

INPUT_DATASET_TYPE = "cpFlatProc"
_INPUT_STORAGE_CLASS = "MaskedImageV2"
_SCIENCE_PROGRAM = "SIM-FLATS"
_DAY_OBS_ROLLOVER_HOURS = 12  # day_obs runs from noon to noon UTC


@dataclasses.dataclass
class SimRepo:
    """A repository of simulated flats and what it takes to process it."""

    root: Path
    butler: Butler
    instrument: SimFlatCam
    simulator: FlatSimulator
    image_run: str
    """RUN collection of the simulated ``cpFlatProc`` images."""
    calib_collection: str
    """CALIBRATION collection with the camera."""
    defaults_collection: str
    """CHAINED collection of the two above: the input collection for ``pipetask``."""

    @property
    def truth(self) -> FlatTruth:
        return self.simulator.truth


def build_sim_repo(
    root: str | os.PathLike[str],
    *,
    camera: CameraModel | None = None,
    config: FlatSimConfig | None = None,
) -> SimRepo:
    """Create a fresh repository at ``root`` and fill it with simulated flats.

    An existing directory at ``root`` is removed first.

    Parameters
    ----------
    root : `str` or `os.PathLike`
        Directory of the repository.
    camera : `lsst.cp.flatnorm.camera_model.CameraModel`, optional
        Camera geometry; `make_sim_camera` with its defaults if `None`.
    config : `FlatSimConfig`, optional
        Simulation parameters.

    Returns
    -------
    repo : `SimRepo`
    """
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    camera = camera if camera is not None else make_sim_camera()
    simulator = FlatSimulator(camera, config)
    instrument = SimFlatCam(camera=camera)
    butler = make_repo(root)
    instrument.register(butler.registry)
    instrument.write_camera(butler)
    insert_exposure_records(butler, instrument.getName(), simulator.exposures)
    image_run = instrument.makeCollectionName("flats", "sim")
    put_images(butler, simulator, instrument.getName(), image_run)
    defaults = instrument.makeUmbrellaCollectionName()
    calib_collection = instrument.makeCalibrationCollectionName()
    butler.collections.register(defaults, CollectionType.CHAINED)
    butler.collections.redefine_chain(defaults, [image_run, calib_collection])
    return SimRepo(root, butler, instrument, simulator, image_run, calib_collection, defaults)


def _day_obs_timespan(day_obs: int) -> Timespan:
    """The day of observation ``day_obs`` (YYYYMMDD), from noon UTC to the next noon UTC."""
    date = datetime.datetime.strptime(str(day_obs), "%Y%m%d")
    begin = date + datetime.timedelta(hours=_DAY_OBS_ROLLOVER_HOURS)
    end = begin + datetime.timedelta(days=1)
    return Timespan(astropy.time.Time(begin, scale="utc"), astropy.time.Time(end, scale="utc"))


def _exposure_record(instrument: str, exposure: SimExposure) -> dict:
    return {
        "instrument": instrument,
        "id": exposure.id,
        "obs_id": exposure.obs_id,
        "day_obs": exposure.day_obs,
        "group": exposure.obs_id,
        "physical_filter": exposure.physical_filter,
        "exposure_time": exposure.exposure_time,
        "dark_time": exposure.exposure_time,
        "observation_type": "flat",
        "observation_reason": "flat",
        "seq_num": exposure.seq_num,
        "seq_start": exposure.seq_num,
        "seq_end": exposure.seq_num,
        "target_name": "FlatField",
        "science_program": _SCIENCE_PROGRAM,
        "has_simulated": True,
        "can_see_sky": False,
        "timespan": Timespan(exposure.begin, exposure.end),
    }


def insert_exposure_records(butler: Butler, instrument: str, exposures: list[SimExposure]) -> None:
    """Insert the day_obs, group and exposure records of simulated exposures.

    ``Butler.registry.addDataIdValue`` cannot fill the metadata of these records (exposure
    times, observation type, timespans, ...), so they are inserted directly.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable butler; the instrument and its filters must be registered.
    instrument : `str`
        Instrument name.
    exposures : `list` [`SimExposure`]
        The exposures.
    """
    registry = butler.registry
    with registry.transaction():
        for day_obs in sorted({exposure.day_obs for exposure in exposures}):
            registry.syncDimensionData(
                "day_obs", {"instrument": instrument, "id": day_obs, "timespan": _day_obs_timespan(day_obs)}
            )
        registry.insertDimensionData(
            "group", *[{"instrument": instrument, "name": exposure.obs_id} for exposure in exposures]
        )
        registry.insertDimensionData(
            "exposure", *[_exposure_record(instrument, exposure) for exposure in exposures]
        )


def put_images(butler: Butler, simulator: FlatSimulator, instrument: str, run: str) -> int:
    """Simulate every (exposure, detector) image and put it as ``cpFlatProc`` into ``run``, except
    the ones the simulator has no image for (``FlatSimConfig.missing_images``).

    Returns
    -------
    n_images : `int`
        Number of images written.
    """
    dataset_type = DatasetType(
        INPUT_DATASET_TYPE, ("instrument", "exposure", "detector"), _INPUT_STORAGE_CLASS,
        universe=butler.dimensions,
    )
    butler.registry.registerDatasetType(dataset_type)
    butler.collections.register(run)
    n_images = 0
    for exposure in simulator.exposures:
        for detector in simulator.camera:
            if not simulator.has_image(exposure.id, detector.getId()):
                continue
            image = simulator.make_image(exposure.id, detector.getId())
            butler.put(image, dataset_type, instrument=instrument, exposure=exposure.id,
                       detector=detector.getId(), run=run)
            n_images += 1
    return n_images
