# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Build an on-disk butler repository holding simulated flats of ``SimFlatCam``.

The repository has everything ``pipetask`` needs to run the flat pipelines on it: the instrument
and detector records, the camera as a certified calibration, exposure records with real flat
metadata, and post-ISR images (dataset type ``cpFlatIsrExp``) in a RUN collection, all reachable
through the instrument's umbrella collection ``SimFlatCam/defaults``.
"""

from __future__ import annotations

__all__ = ["INPUT_DATASET_TYPE", "SimRepo", "build_sim_repo", "open_sim_repo", "put_images"]

import dataclasses
import os
import shutil
from pathlib import Path

from lsst.daf.butler import Butler, CollectionType, DatasetType

from ..butler_setup import make_repo
from ..camera_model import CameraModel
from ..exposure_records import insert_exposure_records
from ..flat_connections import POST_ISR_FLAT_DATASET_TYPE
from ..instrument import FlatInstrument
from .camera import make_sim_camera
from .flat_simulator import FlatSimConfig, FlatSimulator, FlatTruth
from .instrument import SimFlatCam

INPUT_DATASET_TYPE = POST_ISR_FLAT_DATASET_TYPE
_INPUT_STORAGE_CLASS = "MaskedImageV2"


@dataclasses.dataclass
class SimRepo:
    """A repository of simulated flats and what it takes to process it."""

    root: Path
    butler: Butler
    instrument: FlatInstrument
    """The ``SimFlatCam`` instrument."""
    simulator: FlatSimulator
    image_run: str
    """RUN collection of the simulated ``cpFlatIsrExp`` images."""
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
    instrument: FlatInstrument | None = None,
    simulator: FlatSimulator | None = None,
) -> SimRepo:
    """Create a fresh repository at ``root`` and fill it with simulated flats.

    An existing directory at ``root`` is removed first.

    Parameters
    ----------
    root : `str` or `os.PathLike`
        Directory of the repository.
    camera : `lsst.cp.flatnorm.camera_model.CameraModel`, optional
        Camera geometry; the instrument's camera if `None`, else `make_sim_camera` with its
        defaults.
    config : `FlatSimConfig`, optional
        Simulation parameters.
    instrument : `lsst.cp.flatnorm.instrument.FlatInstrument`, optional
        The instrument to register, with its camera and filters (the simulated exposures'
        physical filter must be one of them); ``SimFlatCam`` with ``camera`` if `None`.
    simulator : `FlatSimulator`, optional
        The simulator of the images, instead of ``FlatSimulator(camera, config)`` (a subclass can
        change the images); ``camera`` and ``config`` are then its own.

    Returns
    -------
    repo : `SimRepo`
    """
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    if simulator is None:
        if camera is None:
            camera = instrument.getCamera() if instrument is not None else make_sim_camera()
        simulator = FlatSimulator(camera, config)
    if instrument is None:
        instrument = SimFlatCam(camera=simulator.camera)
    butler = make_repo(root)
    instrument.register(butler.registry)
    instrument.write_camera(butler)
    insert_exposure_records(butler, instrument.getName(), simulator.exposures)
    repo = _sim_repo(root, butler, instrument, simulator)
    put_images(butler, simulator, instrument.getName(), repo.image_run)
    butler.collections.register(repo.defaults_collection, CollectionType.CHAINED)
    butler.collections.redefine_chain(repo.defaults_collection, [repo.image_run, repo.calib_collection])
    return repo


def open_sim_repo(root: str | os.PathLike[str], simulator: FlatSimulator,
                  instrument: FlatInstrument | None = None) -> SimRepo:
    """Open, writeable, a repository that `build_sim_repo` made (or a copy of one).

    Parameters
    ----------
    root : `str` or `os.PathLike`
        Directory of the repository.
    simulator : `FlatSimulator`
        The simulator that made its images (same camera and configuration).
    instrument : `lsst.cp.flatnorm.instrument.FlatInstrument`, optional
        Its instrument; ``SimFlatCam`` with the simulator's camera if `None`.

    Returns
    -------
    repo : `SimRepo`
    """
    root = Path(root)
    if instrument is None:
        instrument = SimFlatCam(camera=simulator.camera)
    return _sim_repo(root, Butler.from_config(str(root), writeable=True), instrument, simulator)


def _sim_repo(root: Path, butler: Butler, instrument: FlatInstrument, simulator: FlatSimulator) -> SimRepo:
    """The `SimRepo` of a repository, with the instrument's collection names."""
    return SimRepo(root, butler, instrument, simulator, instrument.makeCollectionName("flats", "sim"),
                   instrument.makeCalibrationCollectionName(), instrument.makeUmbrellaCollectionName())


def put_images(butler: Butler, simulator: FlatSimulator, instrument: str, run: str) -> int:
    """Simulate every (exposure, detector) image and put it as ``cpFlatIsrExp`` into ``run``, except
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
    # One transaction: all the images or none, and one registry commit instead of one per image.
    with butler.transaction():
        for exposure in simulator.exposures:
            for detector in simulator.camera:
                if not simulator.has_image(exposure.id, detector.getId()):
                    continue
                image = simulator.make_image(exposure.id, detector.getId())
                butler.put(image, dataset_type, instrument=instrument, exposure=exposure.id,
                           detector=detector.getId(), run=run)
                n_images += 1
    return n_images
