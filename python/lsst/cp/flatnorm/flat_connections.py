# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Connections that more than one flat task declares: the camera and the post-ISR flats.

The camera arrives as this package's `~lsst.cp.flatnorm.camera_model.CameraModel` or, in a
repository made by the full stack, as an afw camera (`camera_storage_class_field` chooses, and
`with_camera_storage_class` applies the choice to a task's connections); `as_camera_model` turns
either into a ``CameraModel`` where a task receives it, and `as_detector_model` one detector of it
(what the per-detector tasks need, without converting the whole camera for every quantum).
`CameraConnections` and `CameraConfig` are the bases of a task's connections and config that do
all this.
"""

from __future__ import annotations

__all__ = [
    "CAMERA_STORAGE_CLASSES",
    "CameraConfig",
    "CameraConnections",
    "POST_ISR_FLAT_DATASET_TYPE",
    "as_camera_model",
    "as_detector_model",
    "camera_prerequisite",
    "camera_storage_class_field",
    "flat_input",
    "flat_output",
    "post_isr_flat_input",
    "with_camera_storage_class",
]

from typing import Any

import dataclasses

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from .afw_camera import detector_from_afw
from .camera_model import CameraModel, DetectorModel

POST_ISR_FLAT_DATASET_TYPE = "cpFlatIsrExp"
"""Dataset type name of the post-ISR flats."""

CAMERA_STORAGE_CLASSES: dict[str, str] = {
    "CameraModel": "lsst.cp.flatnorm.camera_model.CameraModel, as this package's seed config declares it "
                   "(repositories made with lsst.cp.flatnorm.butler_setup).",
    "Camera": "daf_butler's afw camera (lsst.afw.cameraGeom.Camera), as repositories made by the full "
              "stack (obs_base's register-instrument and write-curated-calibrations) register it.",
}
"""Storage classes the ``camera`` connection can read, and which repositories register each."""


def camera_prerequisite(doc: str) -> cT.PrerequisiteInput:
    """Return the ``camera`` connection: a ``CameraModel`` calibration with dimensions (instrument).

    A task whose config has a `camera_storage_class_field` replaces the storage class in its
    connections' ``__init__`` with `with_camera_storage_class`.

    Parameters
    ----------
    doc : `str`
        What the task uses the camera for.
    """
    return cT.PrerequisiteInput(
        name="camera",
        doc=doc,
        storageClass="CameraModel",
        dimensions=("instrument",),
        isCalibration=True,
    )


def camera_storage_class_field() -> pexConfig.ChoiceField:
    """Return a config field choosing the storage class of the ``camera`` connection.

    The pipeline graph reads a dataset with the connection's storage class and refuses one the
    repository registered with another, unless that storage class converts from it; neither
    ``CameraModel`` nor afw's ``Camera`` converts from the other, so the task must be told which
    the repository has.
    """
    return pexConfig.ChoiceField(
        dtype=str,
        doc="Storage class of the camera dataset in the repository; the task uses either through the "
            "afw camera protocol.",
        default="CameraModel",
        optional=False,
        allowed=CAMERA_STORAGE_CLASSES,
    )


def with_camera_storage_class(connections: pipeBase.PipelineTaskConnections, config: Any) -> None:
    """Give a task's ``camera`` connection the storage class its config's ``cameraStorageClass`` names.

    Connection configs hold dataset type names only, so a storage class is set in the connections'
    ``__init__``, from the task config; call this there.

    Parameters
    ----------
    connections : `lsst.pipe.base.PipelineTaskConnections`
        The task's connections, with a ``camera`` connection.
    config : `lsst.pipe.base.PipelineTaskConfig`
        The task's config, with a ``cameraStorageClass`` field (`camera_storage_class_field`).
    """
    # Every caller's connections declare a camera connection, which the base class does not.
    camera = connections.camera  # type: ignore[attr-defined]
    connections.camera = dataclasses.replace(camera, storageClass=config.cameraStorageClass)


def as_camera_model(camera: Any) -> CameraModel:
    """Return the camera a task received as a `~lsst.cp.flatnorm.camera_model.CameraModel`.

    Parameters
    ----------
    camera : `~lsst.cp.flatnorm.camera_model.CameraModel` or `lsst.afw.cameraGeom.Camera`
        The camera; anything else is read through afw's methods
        (`~lsst.cp.flatnorm.camera_model.CameraModel.from_afw`).

    Returns
    -------
    model : `~lsst.cp.flatnorm.camera_model.CameraModel`
        ``camera`` itself if it is one.

    Raises
    ------
    ValueError
        Raised if a detector of an afw camera cannot be converted; the message names it.
    """
    return camera if isinstance(camera, CameraModel) else CameraModel.from_afw(camera)


def as_detector_model(camera: Any, detectorId: int) -> DetectorModel:
    """Return one detector of the camera a task received as a
    `~lsst.cp.flatnorm.camera_model.DetectorModel`.

    Parameters
    ----------
    camera : `~lsst.cp.flatnorm.camera_model.CameraModel` or `lsst.afw.cameraGeom.Camera`
        The camera; ``camera[detectorId]`` of any other kind is read through afw's methods
        (`~lsst.cp.flatnorm.afw_camera.detector_from_afw`).
    detectorId : `int`
        The detector's ID.

    Returns
    -------
    detector : `~lsst.cp.flatnorm.camera_model.DetectorModel`

    Raises
    ------
    ValueError
        Raised if an afw detector cannot be converted; the message names it.
    """
    detector = camera[detectorId]
    return detector if isinstance(detector, DetectorModel) else detector_from_afw(detector)


def post_isr_flat_input(doc: str, *, multiple: bool = False, deferLoad: bool = False) -> cT.Input:
    """Return the ``cpFlatIsrExp`` input: post-ISR flats (``MaskedImageV2``) per exposure and detector.

    Parameters
    ----------
    doc : `str`
        What the task reads them for.
    multiple : `bool`, optional
        Whether the task takes several (one per exposure).
    deferLoad : `bool`, optional
        Whether the task reads them itself through deferred handles (e.g. in row bands).
    """
    return cT.Input(
        name=POST_ISR_FLAT_DATASET_TYPE,
        doc=doc,
        storageClass="MaskedImageV2",
        dimensions=("instrument", "exposure", "detector"),
        multiple=multiple,
        deferLoad=deferLoad,
    )


def flat_input(name: str, doc: str, *, multiple: bool = False, deferLoad: bool = False) -> cT.Input:
    """Return an input of certified flats (``MaskedImageV2`` calibrations per detector and physical
    filter).

    Parameters
    ----------
    name : `str`
        Dataset type name.
    doc : `str`
        What the task reads them for.
    multiple : `bool`, optional
        Whether the task takes several (one per detector).
    deferLoad : `bool`, optional
        Whether the task reads them itself through deferred handles (e.g. in tiles).
    """
    return cT.Input(
        name=name,
        doc=doc,
        storageClass="MaskedImageV2",
        dimensions=("instrument", "detector", "physical_filter"),
        multiple=multiple,
        deferLoad=deferLoad,
        isCalibration=True,
    )


def flat_output(doc: str) -> cT.Output:
    """Return the ``flat`` output: a ``MaskedImageV2`` calibration per detector and physical filter.

    Parameters
    ----------
    doc : `str`
        What the task writes.
    """
    return cT.Output(
        name="flat",
        doc=doc,
        storageClass="MaskedImageV2",
        dimensions=("instrument", "detector", "physical_filter"),
        isCalibration=True,
    )


class CameraConnections(pipeBase.PipelineTaskConnections, dimensions=()):
    """Base of the connections of a task that reads the camera: the ``camera`` connection, with the
    storage class its config's ``cameraStorageClass`` names (the config derives from `CameraConfig`).

    A subclass gives its own dimensions, and may declare ``camera`` again with its own doc
    (`camera_prerequisite`).
    """

    camera = camera_prerequisite("Camera geometry.")

    def __init__(self, *, config: Any):
        super().__init__(config=config)
        with_camera_storage_class(self, config)


class CameraConfig(pexConfig.Config):
    """Base of the config of a task whose connections derive from `CameraConnections`."""

    cameraStorageClass = camera_storage_class_field()
