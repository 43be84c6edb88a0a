# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""A repository of simulated sky and dome flats for the focal-plane gradient pipelines.

The dome flats are a `~lsst.cp.flatnorm.sim.repo.SimRepo` (images in its ``image_run``, input
collection ``<instrument>/defaults``); the sky flats of the same physical filter are simulated with
their own illumination on another night (so their exposure IDs differ), into their own RUN
collection with their own input chain.  The simulated defect columns are certified as ``defects``
(tables of pixel boxes, ``ArrowAstropy``) in the calibration collection, which both chains include.
`certify_gradient_reference` certifies a fitted ``flat_gradient_reference`` there, as a user
certifies cp_pipe's before running the corrected-flat pipeline.
"""

from __future__ import annotations

__all__ = ["DEFECTS_DATASET_TYPE", "GradientRepo", "build_gradient_repo", "certify_gradient_reference",
           "put_defects"]

import dataclasses
import os

import numpy as np
from astropy.table import Table

from lsst.daf.butler import Butler, CollectionType, DatasetType, Timespan

from ..camera_model import CameraModel
from ..exposure_records import insert_exposure_records
from ..instrument import FlatInstrument
from .flat_simulator import FlatSimConfig, FlatSimulator
from .repo import SimRepo, build_sim_repo, put_images

DEFECTS_DATASET_TYPE = "defects"
_GRADIENT_REFERENCE = "flat_gradient_reference"


@dataclasses.dataclass
class GradientRepo:
    """Simulated dome and sky flats of one physical filter, with certified camera and defects."""

    dome: SimRepo
    """The dome flats' repository (``dome.simulator``, ``dome.image_run``, ``dome.defaults_collection``)."""
    sky: FlatSimulator
    """The sky flats' simulator."""
    sky_run: str
    """RUN collection of the sky flats' images."""
    sky_collection: str
    """CHAINED collection of ``sky_run`` and the calibrations: the sky pipeline's input."""

    @property
    def butler(self) -> Butler:
        return self.dome.butler

    @property
    def root(self) -> os.PathLike[str]:
        return self.dome.root

    @property
    def instrument(self) -> FlatInstrument:
        return self.dome.instrument

    @property
    def physical_filter(self) -> str:
        return self.dome.simulator.config.physical_filter


def build_gradient_repo(
    root: str | os.PathLike[str],
    *,
    camera: CameraModel,
    dome: FlatSimConfig,
    sky: FlatSimConfig,
    instrument: FlatInstrument | None = None,
    defects: bool = True,
) -> GradientRepo:
    """Create a fresh repository of simulated dome and sky flats.

    Parameters
    ----------
    root : `str` or `os.PathLike`
        Directory of the repository (removed first if it exists).
    camera : `lsst.cp.flatnorm.camera_model.CameraModel`
        Camera geometry, with the physical types of the sensor families.
    dome, sky : `lsst.cp.flatnorm.sim.flat_simulator.FlatSimConfig`
        The two simulations; same physical filter, different ``day_obs``.
    instrument : `lsst.cp.flatnorm.instrument.FlatInstrument`, optional
        Instrument to register (its camera must be ``camera``); ``SimFlatCam`` if `None`.
    defects : `bool`, optional
        Certify the simulated defect columns as ``defects``.

    Returns
    -------
    repo : `GradientRepo`
    """
    if dome.physical_filter != sky.physical_filter or dome.day_obs == sky.day_obs:
        raise ValueError("The dome and sky flats need the same physical filter and different day_obs.")
    dome_repo = build_sim_repo(root, simulator=FlatSimulator(camera, dome), instrument=instrument)
    name = dome_repo.instrument.getName()
    sky_simulator = FlatSimulator(camera, sky)
    insert_exposure_records(dome_repo.butler, name, sky_simulator.exposures)
    sky_run = dome_repo.instrument.makeCollectionName("flats", "sky")
    put_images(dome_repo.butler, sky_simulator, name, sky_run)
    sky_collection = dome_repo.instrument.makeCollectionName("sky")
    dome_repo.butler.collections.register(sky_collection, CollectionType.CHAINED)
    dome_repo.butler.collections.redefine_chain(sky_collection, [sky_run, dome_repo.calib_collection])
    if defects:
        put_defects(dome_repo.butler, dome_repo.simulator, name, dome_repo.calib_collection,
                    dome_repo.instrument.makeCollectionName("calib", "defects"))
    return GradientRepo(dome_repo, sky_simulator, sky_run, sky_collection)


def put_defects(butler: Butler, simulator: FlatSimulator, instrument: str, calib_collection: str,
                run: str) -> int:
    """Write the simulated defect columns of every detector as ``defects`` tables (``x0``, ``y0``,
    ``width``, ``height``, ip_isr's columns) into ``run`` and certify them for all times.

    Returns
    -------
    n_defects : `int`
        Defect boxes written.
    """
    dataset_type = DatasetType(DEFECTS_DATASET_TYPE, ("instrument", "detector"), "ArrowAstropy",
                               universe=butler.dimensions, isCalibration=True)
    butler.registry.registerDatasetType(dataset_type)
    butler.collections.register(run)
    refs, n_defects = [], 0
    for detector in simulator.camera:
        box = detector.getBBox()
        columns = np.sort(simulator.defect_columns(detector.getId()))
        table = Table({"x0": box.getMinX() + columns, "y0": np.full(len(columns), box.getMinY()),
                       "width": np.ones(len(columns), dtype=int),
                       "height": np.full(len(columns), box.getHeight())})
        refs.append(butler.put(table, dataset_type, instrument=instrument, detector=detector.getId(),
                               run=run))
        n_defects += len(columns)
    butler.registry.certify(calib_collection, refs, Timespan(None, None))
    return n_defects


def certify_gradient_reference(butler: Butler, collection: str, calib_collection: str,
                               physical_filter: str, instrument: str) -> None:
    """Certify the ``flat_gradient_reference`` of a filter found in ``collection``, for all times."""
    refs = butler.query_datasets(_GRADIENT_REFERENCE, collections=collection, instrument=instrument,
                                 physical_filter=physical_filter)
    butler.registry.certify(calib_collection, refs, Timespan(None, None))
