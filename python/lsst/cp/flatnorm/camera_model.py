# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""A pure-Python camera model that follows the afw camera protocol.

``lsst.afw.cameraGeom.Camera`` cannot be installed from PyPI, so this module provides a small
pydantic model with the subset of its protocol the flat tasks use: ``camera[detectorId]`` (or a
detector name) returns a detector, a detector iterates over its amplifiers, and an amplifier has
``getName()`` and ``getBBox()``.  Code in this package uses only that protocol, so a real afw
camera works wherever afw is importable.

The model is stored through the butler with daf_butler's JSON formatter under the storage class
``CameraModel`` (declared in ``configs/butler-seed.yaml``, see `lsst.cp.flatnorm.butler_setup`).
A real camera comes in through `CameraModel.from_obs_yaml` (an obs package's camera YAML, see
`lsst.cp.flatnorm.obs_camera_yaml`) or `CameraModel.from_afw` (an afw camera, see
`lsst.cp.flatnorm.afw_camera`).
"""

from __future__ import annotations

__all__ = ["PixelBox", "AmplifierModel", "DetectorModel", "CameraModel", "DetectorType",
           "summarize_validation_error"]

import os
from collections import Counter
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pydantic


class PixelBox(pydantic.BaseModel):
    """An integer pixel box, with the accessor names of ``lsst.geom.Box2I``.

    The box covers ``x0 <= x < x0 + width`` and ``y0 <= y < y0 + height``.
    """

    x0: int
    y0: int
    width: int = pydantic.Field(gt=0)
    height: int = pydantic.Field(gt=0)

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

    def contains(self, other: PixelBox) -> bool:
        """Return whether ``other`` lies entirely inside this box."""
        return (
            other.x0 >= self.x0
            and other.y0 >= self.y0
            and other.getMaxX() <= self.getMaxX()
            and other.getMaxY() <= self.getMaxY()
        )

    def overlaps(self, other: PixelBox) -> bool:
        """Return whether the two boxes share at least one pixel."""
        return not (
            other.x0 > self.getMaxX()
            or other.getMaxX() < self.x0
            or other.y0 > self.getMaxY()
            or other.getMaxY() < self.y0
        )


_NAMES_ARE_STRINGS = pydantic.ConfigDict(coerce_numbers_to_str=True)
"""Names are strings even where a YAML file gives a number (amplifier ``0``, a detector ``153``):
the model keeps them as text instead of refusing them."""

DetectorType = Literal["SCIENCE", "FOCUS", "GUIDER", "WAVEFRONT"]
"""afw's ``DetectorType`` names."""


class AmplifierModel(pydantic.BaseModel):
    """One amplifier: its name and the detector pixels it reads out."""

    model_config = _NAMES_ARE_STRINGS

    name: str
    bbox: PixelBox

    def getName(self) -> str:
        return self.name

    def getBBox(self) -> PixelBox:
        return self.bbox


class DetectorModel(pydantic.BaseModel):
    """One detector of the camera.

    Attributes
    ----------
    id : `int`
        Detector ID, as used in butler data IDs.
    name : `str`
        Detector name (``full_name`` in the detector dimension record).
    type : `str`
        ``"SCIENCE"``, ``"FOCUS"``, ``"GUIDER"`` or ``"WAVEFRONT"`` (afw's ``DetectorType`` names).
    serial : `str`
        Serial number of the device in this slot.
    physical_type : `str`
        How the detector is built (afw's ``getPhysicalType()``, e.g. ``"ITL"``, ``"E2V"``).
    bbox : `PixelBox`
        The detector's pixels (the assembled, trimmed image).
    focal_plane_x, focal_plane_y : `float`
        Focal-plane position, in mm, of the reference point (afw's ``getFpPosition()``).
    yaw : `float`
        Rotation of the detector on the focal plane, in degrees: the angle from the focal-plane
        x axis to the detector's x axis, counter-clockwise (x towards y), about the reference point.
        afw's ``Orientation.getYaw()``; obs camera YAML ``yaw``.
    reference_point : `tuple` [`float`, `float`] or `None`
        The detector pixel (x, y) that sits at ``(focal_plane_x, focal_plane_y)`` (afw's
        ``Orientation.getReferencePoint()``; obs camera YAML ``refpos``).  `None` means the centre
        of ``bbox``.
    pixel_size : `float`
        Pixel size in mm (square pixels).
    amplifiers : `list` [`AmplifierModel`]
        Amplifiers in readout order; their boxes must tile the detector: no overlap, no pixel
        left out.
    """

    model_config = _NAMES_ARE_STRINGS

    id: int
    name: str
    type: DetectorType = "SCIENCE"
    serial: str = ""
    physical_type: str = "simulated"
    bbox: PixelBox
    focal_plane_x: float = 0.0
    focal_plane_y: float = 0.0
    yaw: float = 0.0
    reference_point: tuple[float, float] | None = None
    pixel_size: float = 0.01
    amplifiers: list[AmplifierModel]

    @pydantic.model_validator(mode="after")
    def _check_amplifiers(self) -> DetectorModel:
        names = [amp.name for amp in self.amplifiers]
        if len(set(names)) != len(names):
            raise ValueError(f"Detector {self.id}: amplifier names are not unique: {names}.")
        for i, amp in enumerate(self.amplifiers):
            if not self.bbox.contains(amp.bbox):
                raise ValueError(f"Detector {self.id}: amplifier {amp.name} lies outside the detector.")
            for other in self.amplifiers[i + 1:]:
                if amp.bbox.overlaps(other.bbox):
                    raise ValueError(f"Detector {self.id}: amplifiers {amp.name} and {other.name} overlap.")
        self._check_covered()
        return self

    def _check_covered(self) -> None:
        """Raise if the amplifiers (inside the detector, not overlapping) leave pixels uncovered: no
        amplifier would calibrate them."""
        box = self.bbox
        if sum(amp.bbox.width * amp.bbox.height for amp in self.amplifiers) == box.width * box.height:
            return
        covered = np.zeros((box.height, box.width), dtype=bool)
        for amp in self.amplifiers:
            covered[amp.bbox.y0 - box.y0:amp.bbox.getMaxY() + 1 - box.y0,
                    amp.bbox.x0 - box.x0:amp.bbox.getMaxX() + 1 - box.x0] = True
        y, x = np.nonzero(~covered)
        raise ValueError(f"Detector {self.id} ({self.name}): its amplifiers leave {y.size} of its pixels "
                         f"uncovered, within x {x.min() + box.x0}..{x.max() + box.x0}, "
                         f"y {y.min() + box.y0}..{y.max() + box.y0}.")

    def getId(self) -> int:
        return self.id

    def getName(self) -> str:
        return self.name

    def getBBox(self) -> PixelBox:
        return self.bbox

    def __iter__(self) -> Iterator[AmplifierModel]:  # type: ignore[override]
        return iter(self.amplifiers)

    def __len__(self) -> int:
        return len(self.amplifiers)

    def get_reference_point(self) -> tuple[float, float]:
        """Return the pixel (x, y) placed at the focal-plane position: ``reference_point``, or the
        centre of the bounding box when that is `None`."""
        if self.reference_point is not None:
            return self.reference_point
        return ((self.bbox.getMinX() + self.bbox.getMaxX()) / 2,
                (self.bbox.getMinY() + self.bbox.getMaxY()) / 2)

    def pixel_to_focal_plane(self, x: Any, y: Any) -> tuple[Any, Any]:
        """Return the focal-plane position (mm) of detector pixel positions.

        Parameters
        ----------
        x, y : `float` or `numpy.ndarray`
            Pixel positions in the detector's coordinates; integer values are pixel centres
            (afw's convention: pixel ``(0, 0)`` spans ``-0.5 .. 0.5``).

        Returns
        -------
        fp_x, fp_y : `float` or `numpy.ndarray`
            Focal-plane positions in mm.

        Notes
        -----
        This follows afw's ``Orientation.makePixelFpTransform`` with zero pitch and roll: the
        offset from the reference point (`get_reference_point`) is scaled by the pixel size,
        rotated counter-clockwise by ``yaw`` and added to ``(focal_plane_x, focal_plane_y)``.
        """
        ref_x, ref_y = self.get_reference_point()
        dx = (np.asarray(x, dtype=float) - ref_x) * self.pixel_size
        dy = (np.asarray(y, dtype=float) - ref_y) * self.pixel_size
        cos_yaw, sin_yaw = np.cos(np.radians(self.yaw)), np.sin(np.radians(self.yaw))
        return (self.focal_plane_x + cos_yaw * dx - sin_yaw * dy,
                self.focal_plane_y + sin_yaw * dx + cos_yaw * dy)

    def __getitem__(self, key: int | str) -> AmplifierModel:
        if isinstance(key, str):
            for amp in self.amplifiers:
                if amp.name == key:
                    return amp
            raise KeyError(f"Detector {self.id} has no amplifier named {key!r}.")
        return self.amplifiers[key]


class CameraModel(pydantic.BaseModel):
    """A camera: a named collection of detectors, indexed by ID or name."""

    model_config = _NAMES_ARE_STRINGS

    name: str
    detectors: list[DetectorModel]

    @pydantic.model_validator(mode="after")
    def _check_unique(self) -> CameraModel:
        for what, counts in (("IDs", Counter(str(det.id) for det in self.detectors)),
                             ("names", Counter(det.name for det in self.detectors))):
            if repeated := sorted(value for value, count in counts.items() if count > 1):
                raise ValueError(f"Camera {self.name}: detector IDs and names must be unique; repeated "
                                 f"{what}: {', '.join(repeated)}.")
        return self

    @classmethod
    def from_obs_yaml(cls, path: str | os.PathLike[str]) -> CameraModel:
        """Read a camera description in obs_base's camera YAML format (``yamlCamera``).

        See `lsst.cp.flatnorm.obs_camera_yaml.read_obs_camera_yaml`.
        """
        from .obs_camera_yaml import read_obs_camera_yaml  # that module imports this one

        return read_obs_camera_yaml(path)

    @classmethod
    def from_afw(cls, camera: Any) -> CameraModel:
        """Convert an ``lsst.afw.cameraGeom.Camera`` (or anything with its methods).

        See `lsst.cp.flatnorm.afw_camera.camera_from_afw`.
        """
        from .afw_camera import camera_from_afw  # that module imports this one

        return camera_from_afw(camera)

    def getName(self) -> str:
        return self.name

    def __iter__(self) -> Iterator[DetectorModel]:  # type: ignore[override]
        return iter(self.detectors)

    def __len__(self) -> int:
        return len(self.detectors)

    def __contains__(self, key: int | str) -> bool:
        return any(key in (det.id, det.name) for det in self.detectors)

    def __getitem__(self, key: int | str) -> DetectorModel:
        for det in self.detectors:
            if key == (det.name if isinstance(key, str) else det.id):
                return det
        raise KeyError(f"Camera {self.name} has no detector {key!r}.")


def summarize_validation_error(error: pydantic.ValidationError) -> str:
    """Return a validation error of these models as one line, ``field: message; ...``, without
    pydantic's input dumps, for importers that prefix where in their source the error is."""
    parts = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        location = ".".join(str(part) for part in item["loc"])
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)
