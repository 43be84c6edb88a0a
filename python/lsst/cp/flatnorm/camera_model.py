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
"""

from __future__ import annotations

__all__ = ["PixelBox", "AmplifierModel", "DetectorModel", "CameraModel", "DetectorType"]

from collections.abc import Iterator
from typing import Literal

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
    focal_plane_x, focal_plane_y : `float`
        Focal-plane position of the detector centre, in mm.
    pixel_size : `float`
        Pixel size in mm.
    amplifiers : `list` [`AmplifierModel`]
        Amplifiers in readout order; their boxes must tile the detector without overlap.
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
        return self

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
        ids = [det.id for det in self.detectors]
        names = [det.name for det in self.detectors]
        if len(set(ids)) != len(ids) or len(set(names)) != len(names):
            raise ValueError(f"Camera {self.name}: detector IDs and names must be unique.")
        return self

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
