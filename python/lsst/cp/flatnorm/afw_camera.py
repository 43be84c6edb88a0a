# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Convert an ``lsst.afw.cameraGeom.Camera`` to a `~lsst.cp.flatnorm.camera_model.CameraModel`.

afw cannot be installed from PyPI, so nothing here imports it: the camera is read through afw's
method names only (duck typing), and anything that has them converts.

afw's ``Box2I`` is stored by its minimum corner and size (``getMinX``, ``getMinY``, ``getWidth``,
``getHeight``); its maximum corner is inclusive, so ``PixelBox.getMaxX()`` of the result equals
the afw box's ``getMaxX()``.
"""

from __future__ import annotations

__all__ = ["camera_from_afw", "detector_from_afw"]

from typing import Any

import pydantic

from .camera_model import AmplifierModel, CameraModel, DetectorModel, PixelBox, summarize_validation_error


def camera_from_afw(camera: Any) -> CameraModel:
    """Convert an afw camera.

    Parameters
    ----------
    camera : `lsst.afw.cameraGeom.Camera`
        The camera, or any object with ``getName()`` that iterates over afw-like detectors.

    Returns
    -------
    model : `~lsst.cp.flatnorm.camera_model.CameraModel`
        The camera, its detectors in ID order (as an afw camera iterates them).

    Raises
    ------
    ValueError
        Raised if a detector cannot be converted; the message names it.
    """
    detectors = [detector_from_afw(detector) for detector in camera]
    return CameraModel(name=camera.getName(), detectors=sorted(detectors, key=lambda det: det.id))


def detector_from_afw(detector: Any) -> DetectorModel:
    """Convert an afw detector (``lsst.afw.cameraGeom.Detector``).

    Parameters
    ----------
    detector : `lsst.afw.cameraGeom.Detector`
        The detector.  Used: ``getId``, ``getName``, ``getType().name``, ``getSerial``,
        ``getPhysicalType``, ``getBBox``, ``getPixelSize``, ``getOrientation()`` with
        ``getFpPosition``, ``getYaw`` and (if present) ``getReferencePoint``, and iteration over
        amplifiers with ``getName`` and ``getBBox``.

    Returns
    -------
    model : `~lsst.cp.flatnorm.camera_model.DetectorModel`

    Raises
    ------
    ValueError
        Raised for non-square pixels or boxes the model refuses; the message names the detector.
    """
    name = detector.getName()
    pixel_size = detector.getPixelSize()
    if pixel_size.getX() != pixel_size.getY():
        raise ValueError(f"Detector {name}: pixels must be square; got "
                         f"{pixel_size.getX()} x {pixel_size.getY()} mm.")
    orientation = detector.getOrientation()
    position = orientation.getFpPosition()
    try:
        return DetectorModel(
            id=detector.getId(),
            name=name,
            type=detector.getType().name,
            serial=detector.getSerial(),
            physical_type=detector.getPhysicalType(),
            bbox=_box(detector.getBBox()),
            focal_plane_x=position.getX(),
            focal_plane_y=position.getY(),
            yaw=orientation.getYaw().asDegrees(),
            reference_point=_reference_point(orientation),
            pixel_size=pixel_size.getX(),
            amplifiers=[AmplifierModel(name=amp.getName(), bbox=_box(amp.getBBox())) for amp in detector],
        )
    except pydantic.ValidationError as exc:
        raise ValueError(f"Detector {name}: {summarize_validation_error(exc)}") from exc


def _box(box: Any) -> PixelBox:
    """Convert an ``lsst.geom.Box2I``."""
    return PixelBox(x0=box.getMinX(), y0=box.getMinY(), width=box.getWidth(), height=box.getHeight())


def _reference_point(orientation: Any) -> tuple[float, float] | None:
    """Return the orientation's reference pixel, or `None` (the box centre) if it has none."""
    if not hasattr(orientation, "getReferencePoint"):
        return None
    point = orientation.getReferencePoint()
    return (point.getX(), point.getY())
