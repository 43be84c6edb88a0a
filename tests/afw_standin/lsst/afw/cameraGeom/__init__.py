# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""A test stand-in for ``lsst.afw.cameraGeom.Camera``, stored as JSON.

daf_butler's default configuration defines the storage class ``Camera`` with the python type
``lsst.afw.cameraGeom.Camera``, and one process cannot hold two definitions of a storage class, so
a stand-in ``Camera`` storage class must have that very type name: this module provides it.  Tests
put ``tests/afw_standin`` on the ``PYTHONPATH`` of subprocesses only, never of the test process,
which loads this file under another name where it needs the classes.

The classes have afw's method names for what `lsst.cp.flatnorm.camera_model.CameraModel.from_afw`
and the flat tasks read (``camera[detectorId]``, iteration, ``getName``, ``getId``, ``getType``,
``getBBox``, ``getOrientation``, ``getPixelSize``...) and share nothing with ``CameraModel``, so a
task reading one sees what it would see of a real afw camera.  `camera_from_model` builds one.
"""

from __future__ import annotations

__all__ = ["Amplifier", "Angle", "Box2I", "Camera", "Detector", "DetectorType", "Orientation", "Point2D",
           "camera_from_model"]

import enum
from collections.abc import Iterator
from typing import Any

import pydantic


class Point2D(pydantic.BaseModel):
    """A point or an extent (afw's ``Point2D`` and ``Extent2D``)."""

    x: float
    y: float

    def getX(self) -> float:
        return self.x

    def getY(self) -> float:
        return self.y


class Box2I(pydantic.BaseModel):
    """An integer box with inclusive maximum corner, by its minimum corner and size."""

    x0: int
    y0: int
    width: int
    height: int

    def getMinX(self) -> int:
        return self.x0

    def getMinY(self) -> int:
        return self.y0

    def getMaxX(self) -> int:
        return self.x0 + self.width - 1

    def getMaxY(self) -> int:
        return self.y0 + self.height - 1

    def getWidth(self) -> int:
        return self.width

    def getHeight(self) -> int:
        return self.height

    @classmethod
    def from_corners(cls, minimum: tuple[int, int], maximum: tuple[int, int]) -> Box2I:
        """Build the box as ``lsst.geom.Box2I(minimum, maximum)`` does: both corners are inside."""
        (x0, y0), (x1, y1) = minimum, maximum
        return cls(x0=x0, y0=y0, width=x1 - x0 + 1, height=y1 - y0 + 1)


class Angle(pydantic.BaseModel):
    degrees: float

    def asDegrees(self) -> float:
        return self.degrees


class Orientation(pydantic.BaseModel):
    """Where a detector sits on the focal plane."""

    fp_position: Point2D
    yaw: Angle
    reference_point: Point2D

    def getFpPosition(self) -> Point2D:
        return self.fp_position

    def getYaw(self) -> Angle:
        return self.yaw

    def getReferencePoint(self) -> Point2D:
        return self.reference_point


class DetectorType(enum.Enum):
    SCIENCE = "SCIENCE"
    FOCUS = "FOCUS"
    GUIDER = "GUIDER"
    WAVEFRONT = "WAVEFRONT"


class Amplifier(pydantic.BaseModel):
    name: str
    bbox: Box2I

    def getName(self) -> str:
        return self.name

    def getBBox(self) -> Box2I:
        return self.bbox


class Detector(pydantic.BaseModel):
    """A detector and its amplifiers in readout order."""

    id: int
    name: str
    type: DetectorType
    serial: str
    physical_type: str
    bbox: Box2I
    orientation: Orientation
    pixel_size: Point2D
    amplifiers: list[Amplifier]

    def getId(self) -> int:
        return self.id

    def getName(self) -> str:
        return self.name

    def getType(self) -> DetectorType:
        return self.type

    def getSerial(self) -> str:
        return self.serial

    def getPhysicalType(self) -> str:
        return self.physical_type

    def getBBox(self) -> Box2I:
        return self.bbox

    def getOrientation(self) -> Orientation:
        return self.orientation

    def getPixelSize(self) -> Point2D:
        return self.pixel_size

    def __iter__(self) -> Iterator[Amplifier]:  # type: ignore[override]
        return iter(self.amplifiers)

    def __len__(self) -> int:
        return len(self.amplifiers)


class Camera(pydantic.BaseModel):
    """A camera, whose detectors are found by ID or name and iterate in ID order, as in afw."""

    name: str
    detectors: list[Detector]

    def getName(self) -> str:
        return self.name

    def __iter__(self) -> Iterator[Detector]:  # type: ignore[override]
        return iter(sorted(self.detectors, key=Detector.getId))

    def __len__(self) -> int:
        return len(self.detectors)

    def __getitem__(self, key: int | str) -> Detector:
        for detector in self.detectors:
            if key == (detector.name if isinstance(key, str) else detector.id):
                return detector
        raise LookupError(f"Camera {self.name} has no detector {key!r}.")


def camera_from_model(model: Any) -> Camera:
    """Build the stand-in afw camera of a `lsst.cp.flatnorm.camera_model.CameraModel`."""
    return Camera(name=model.name, detectors=[_detector(det) for det in model])


def _box(box: Any) -> Box2I:
    return Box2I(x0=box.x0, y0=box.y0, width=box.width, height=box.height)


def _detector(det: Any) -> Detector:
    x, y = det.get_reference_point()
    orientation = Orientation(fp_position=Point2D(x=det.focal_plane_x, y=det.focal_plane_y),
                              yaw=Angle(degrees=det.yaw), reference_point=Point2D(x=x, y=y))
    return Detector(id=det.id, name=det.name, type=DetectorType[det.type], serial=det.serial,
                    physical_type=det.physical_type, bbox=_box(det.bbox), orientation=orientation,
                    pixel_size=Point2D(x=det.pixel_size, y=det.pixel_size),
                    amplifiers=[Amplifier(name=amp.name, bbox=_box(amp.bbox)) for amp in det])
