# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Connections that more than one flat task declares: the camera and the post-ISR flats.

The camera arrives as this package's `~lsst.cp.flatnorm.camera_model.CameraModel` or, in a
repository made by the full stack, as an afw camera (`camera_storage_class_field` chooses);
`as_camera_model` turns either into a ``CameraModel`` where a task receives it.
"""

from __future__ import annotations

__all__ = [
    "CAMERA_STORAGE_CLASSES",
    "as_camera_model",
    "camera_prerequisite",
    "camera_storage_class_field",
    "post_isr_flat_input",
]

from typing import Any

import lsst.pex.config as pexConfig
import lsst.pipe.base.connectionTypes as cT

from .camera_model import CameraModel

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
    connections' ``__init__`` (``dataclasses.replace(self.camera, storageClass=...)``).

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


def post_isr_flat_input(doc: str, *, multiple: bool = False, deferLoad: bool = False) -> cT.Input:
    """Return the ``cpFlatProc`` input: post-ISR flats (``MaskedImageV2``) per exposure and detector.

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
        name="cpFlatProc",
        doc=doc,
        storageClass="MaskedImageV2",
        dimensions=("instrument", "exposure", "detector"),
        multiple=multiple,
        deferLoad=deferLoad,
    )
