# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The butler instrument of the simulated camera.

``SimFlatCam`` registers the dimension records of `make_sim_camera`'s detectors and a few
physical filters, and writes the camera model as a certified calibration, so that a repository
built from simulated flats looks to the pipeline machinery like one of a real instrument::

    butler register-instrument REPO lsst.cp.flatnorm.sim.instrument.SimFlatCam
"""

from __future__ import annotations

__all__ = ["SimFlatCam", "SIM_FILTERS", "CAMERA_DATASET_TYPE"]

from typing import Any

from lsst.daf.butler import Butler, DatasetRef, DatasetType, Timespan
from lsst.daf.butler.registry import CollectionType, Registry
from lsst.pipe.base import Instrument
from lsst.utils.introspection import get_full_type_name

from ..camera_model import CameraModel
from .camera import SIM_CAMERA_NAME, make_sim_camera

SIM_FILTERS: dict[str, str] = {"sim_g": "g", "sim_r": "r", "sim_i": "i"}
"""Physical filters of the simulated camera and their bands."""

CAMERA_DATASET_TYPE = "camera"
_CAMERA_STORAGE_CLASS = "CameraModel"
_EXPOSURE_MAX = 10**14  # exposure IDs are day_obs * 100000 + seq_num
_VISIT_MAX = 10**14


class SimFlatCam(Instrument):
    """Instrument of the simulated mosaic camera.

    Parameters
    ----------
    collection_prefix : `str`, optional
        Prefix of the instrument's collection names; the instrument name by default.
    camera : `lsst.cp.flatnorm.camera_model.CameraModel`, optional
        Camera geometry to register; `make_sim_camera` with its defaults if `None` (which is what
        ``butler register-instrument`` and ``pipetask`` get, since they construct the class by name).
        Pixel sizes do not enter the registry, so a camera with small amplifiers is compatible
        with the default one as long as it has the same detectors.
    """

    def __init__(self, collection_prefix: str | None = None, *, camera: CameraModel | None = None):
        super().__init__(collection_prefix=collection_prefix)
        self._camera = camera if camera is not None else make_sim_camera()
        if self._camera.getName() != SIM_CAMERA_NAME:
            raise ValueError(f"SimFlatCam needs a camera named {SIM_CAMERA_NAME!r}; "
                             f"got {self._camera.getName()!r}.")

    @classmethod
    def getName(cls) -> str:
        return SIM_CAMERA_NAME

    def getCamera(self) -> CameraModel:
        """Return the camera geometry this instrument registers and writes."""
        return self._camera

    def getRawFormatter(self, dataId: Any) -> type:
        raise NotImplementedError(
            "SimFlatCam has no raw data: its flats are simulated directly as post-ISR images "
            "(dataset type cpFlatProc), so no raw formatter exists."
        )

    def register(self, registry: Registry, *, update: bool = False) -> None:
        """Insert the instrument, detector and physical_filter records.

        Parameters
        ----------
        registry : `lsst.daf.butler.Registry`
            Registry of the repository to modify.
        update : `bool`, optional
            Replace existing records that differ from the new ones instead of raising.
        """
        name = self.getName()
        detector_max = max(detector.getId() for detector in self._camera) + 1
        with registry.transaction():
            registry.syncDimensionData(
                "instrument",
                {
                    "name": name,
                    "detector_max": detector_max,
                    "exposure_max": _EXPOSURE_MAX,
                    "visit_max": _VISIT_MAX,
                    "visit_system": 0,
                    "class_name": get_full_type_name(self),
                },
                update=update,
            )
            for detector in self._camera:
                registry.syncDimensionData("detector", self._detector_record(detector), update=update)
            for physical_filter, band in SIM_FILTERS.items():
                registry.syncDimensionData(
                    "physical_filter",
                    {"instrument": name, "name": physical_filter, "band": band},
                    update=update,
                )

    def _detector_record(self, detector: Any) -> dict[str, Any]:
        """Return the dimension record of one detector.

        Science detectors form raft "R22" of the simulated focal plane and wavefront sensors
        the corner raft "RCW", mirroring LSSTCam's naming of the detector groups.
        """
        raft = "R22" if detector.type == "SCIENCE" else "RCW"
        return {
            "instrument": self.getName(),
            "id": detector.getId(),
            "full_name": f"{raft}_{detector.getName()}",
            "name_in_raft": detector.getName(),
            "raft": raft,
            "purpose": detector.type,
        }

    def write_camera(self, butler: Butler, *labels: str) -> DatasetRef:
        """Write the camera as a calibration valid at all times.

        The dataset goes into the RUN collection `makeUnboundedCalibrationRunName` and is
        certified, with an unbounded validity range, in the CALIBRATION collection
        `makeCalibrationCollectionName` (``SimFlatCam/calib`` without labels).

        Parameters
        ----------
        butler : `lsst.daf.butler.Butler`
            Writeable butler of a repository in which the instrument is registered and that
            knows the ``CameraModel`` storage class (see `lsst.cp.flatnorm.butler_setup.make_repo`).
        *labels : `str`
            Extra labels for the collection names.

        Returns
        -------
        ref : `lsst.daf.butler.DatasetRef`
            Reference to the written camera.
        """
        dataset_type = DatasetType(
            CAMERA_DATASET_TYPE, ("instrument",), _CAMERA_STORAGE_CLASS,
            universe=butler.dimensions, isCalibration=True,
        )
        butler.registry.registerDatasetType(dataset_type)
        run = self.makeUnboundedCalibrationRunName(*labels)
        calib_collection = self.makeCalibrationCollectionName(*labels)
        butler.registry.registerRun(run)
        butler.registry.registerCollection(calib_collection, CollectionType.CALIBRATION)
        ref = butler.put(self._camera, dataset_type, instrument=self.getName(), run=run)
        butler.registry.certify(calib_collection, [ref], Timespan(None, None))
        return ref
