# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The vignetting configuration of the flat tasks: ip_isr's ``VignetteConfig`` fields, applied to a
detector of the camera.

cp_pipe configures vignetting through ip_isr's ``VignetteTask`` (``vignette.radius: 350.0`` in its
LSSTCam pipelines); `VignetteConfig` has that task's fields, names and defaults, so the same
overrides work here.  The geometry is in `lsst.cp.flatnorm.vignette`.
"""

from __future__ import annotations

__all__ = ["VignetteConfig", "detector_vignetted_pixels"]

from typing import Any

import numpy as np

import lsst.pex.config as pexConfig

from .afw_camera import detector_from_afw
from .vignette import circle_polygon, vignetted_pixels


class VignetteConfig(pexConfig.Config):
    """The unvignetted region: a circle on the focal plane, drawn as a regular polygon."""

    xCenter = pexConfig.Field[float](
        dtype=float,
        doc="Centre of the unvignetted circle, focal-plane x (mm).",
        default=0.0,
    )
    yCenter = pexConfig.Field[float](
        dtype=float,
        doc="Centre of the unvignetted circle, focal-plane y (mm).",
        default=0.0,
    )
    radius = pexConfig.RangeField(
        dtype=float,
        doc="Radius of the unvignetted circle (mm); pixels whose centres lie outside are vignetted.",
        default=100.0,
        min=0.0,
    )
    numPolygonPoints = pexConfig.RangeField(
        dtype=int,
        doc="Vertices of the regular polygon inscribed in the circle that stands for it (as in ip_isr: "
            "at 100 points and 350 mm the polygon's edges are up to 0.17 mm inside the circle).",
        default=100,
        min=3,
    )

    def polygon(self) -> np.ndarray:
        """Return the vertices (focal-plane mm) of the unvignetted polygon, shape (n, 2)."""
        return circle_polygon(self.xCenter, self.yCenter, self.radius, self.numPolygonPoints)


def detector_vignetted_pixels(config: VignetteConfig, detector: Any) -> np.ndarray:
    """Return the pixels of a detector outside the configured unvignetted region.

    Parameters
    ----------
    config : `VignetteConfig`
        The region.
    detector : `lsst.cp.flatnorm.camera_model.DetectorModel` or afw detector
        A detector with ``pixel_to_focal_plane(x, y)`` and ``getBBox()``; an afw detector
        (``getOrientation()``, ``getPixelSize()``) is placed through
        `lsst.cp.flatnorm.afw_camera.detector_from_afw`.

    Returns
    -------
    vignetted : `numpy.ndarray` [`bool`], (height, width)
        `True` for the pixels of the detector's bounding box outside the region.
    """
    if not hasattr(detector, "pixel_to_focal_plane"):
        detector = detector_from_afw(detector)
    return vignetted_pixels(config.polygon(), detector.pixel_to_focal_plane, detector.getBBox())
