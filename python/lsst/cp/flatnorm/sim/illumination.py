# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Simulated large-scale illumination of a focal plane, with a known gradient model.

`FocalPlaneIllumination` multiplies every pixel's response in `FlatSimConfig.illumination
<lsst.cp.flatnorm.sim.flat_simulator.FlatSimConfig>` by the gradient model of
`lsst.cp.flatnorm.gradient_model` evaluated at the pixel's focal-plane position (through the
detector's ``pixel_to_focal_plane``: offset, yaw, reference point, pixel size)::

    I(x, y) = S(|(x, y) - (c + d)|) / (1 + g . ((x, y) - c)) * (f on ITL detectors, else 1)

so a fit of the simulated flats should find exactly ``S`` (up to the flat's overall scale), ``g``,
``d`` and ``f``.  `sky_illumination` and `dome_illumination` are a sky reference and a dome
illumination that differ in their radial function, gradient and centre, scaled to a camera's size;
`with_sensor_families` gives a camera's detectors ITL and e2v physical types; `make_wide_sim_camera`
is the simulated camera with LSSTCam's focal-plane size in millimetres (few, large pixels), on which
cp_pipe's pipelines run with their own radii.
"""

from __future__ import annotations

__all__ = [
    "SIM_FLAT_CAM_NODES",
    "FocalPlaneIllumination",
    "dome_illumination",
    "make_wide_sim_camera",
    "science_radius",
    "sky_illumination",
    "with_sensor_families",
]

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..camera_model import CameraModel, DetectorModel
from ..gradient_model import FlatGradientModel, is_itl_family
from .camera import make_sim_camera

_PRESET_NODES = (0.0, 0.3, 0.55, 0.7, 0.8, 0.9, 1.0)
"""Radial nodes of the presets, as fractions of the focal-plane radius."""

SIM_FLAT_CAM_NODES = (0.0, 1.4, 2.5, 3.2, 3.7, 4.1, 4.6)
"""Radial nodes (mm) of the gradient fits of pipelines/SimFlatCam/ for the default SimFlatCam
(its science detectors reach 4.56 mm from the centre); the demo simulates its illuminations on them."""


@dataclasses.dataclass(frozen=True)
class FocalPlaneIllumination:
    """A focal-plane illumination in the gradient model's form.

    Attributes
    ----------
    radial_nodes, radial_values : `tuple` [`float`, ...]
        Akima spline of the radius (mm) about ``centroid + centre_offset``.
    centroid : `tuple` [`float`, `float`]
        The plane's pivot and the nominal centre (mm).
    centre_offset : `tuple` [`float`, `float`]
        Offset of the radial function's centre from ``centroid`` (mm).
    gradient : `tuple` [`float`, `float`]
        Planar gradient (per mm); the illumination is divided by ``1 + g . (x - c)``.
    itl_ratio : `float`
        Throughput of the ITL detectors relative to the others.
    """

    radial_nodes: tuple[float, ...]
    radial_values: tuple[float, ...]
    centroid: tuple[float, float] = (0.0, 0.0)
    centre_offset: tuple[float, float] = (0.0, 0.0)
    gradient: tuple[float, float] = (0.0, 0.0)
    itl_ratio: float = 1.0

    def as_model(self, **fields: Any) -> FlatGradientModel:
        """The illumination as a `~lsst.cp.flatnorm.gradient_model.FlatGradientModel` (normalization 1);
        ``fields`` are more model fields."""
        return FlatGradientModel(
            radial_spline_nodes=list(self.radial_nodes), radial_spline_values=list(self.radial_values),
            itl_ratio=self.itl_ratio, centroid_x=self.centroid[0], centroid_y=self.centroid[1],
            centroid_delta_x=self.centre_offset[0], centroid_delta_y=self.centre_offset[1],
            gradient_x=self.gradient[0], gradient_y=self.gradient[1], **fields,
        )

    def focal_plane(self, detector: DetectorModel) -> tuple[np.ndarray, np.ndarray]:
        """Focal-plane position (mm) of every pixel of a detector, arrays of its (rows, columns)."""
        box = detector.getBBox()
        x = np.arange(box.getMinX(), box.getMaxX() + 1, dtype=float)
        y = np.arange(box.getMinY(), box.getMaxY() + 1, dtype=float)
        return detector.pixel_to_focal_plane(*np.meshgrid(x, y))

    def family_factor(self, detector: DetectorModel) -> float:
        """``itl_ratio`` for an ITL detector, else 1."""
        return self.itl_ratio if is_itl_family(detector.physical_type) else 1.0

    def detector_map(self, detector: DetectorModel) -> np.ndarray:
        """The illumination at every pixel of a detector (what the simulator multiplies by)."""
        xf, yf = self.focal_plane(detector)
        model = self.as_model()
        return model.radial_model_xy(xf, yf) / model.gradient_model(xf, yf) * self.family_factor(detector)

    def radial_map(self, detector: DetectorModel) -> np.ndarray:
        """The radial function alone at every pixel of a detector."""
        return self.as_model().radial_model_xy(*self.focal_plane(detector))

    def scaled(self, factor: float) -> FocalPlaneIllumination:
        """The same illumination on a focal plane ``factor`` times larger."""
        return dataclasses.replace(
            self, radial_nodes=tuple(factor * r for r in self.radial_nodes),
            centroid=(factor * self.centroid[0], factor * self.centroid[1]),
            centre_offset=(factor * self.centre_offset[0], factor * self.centre_offset[1]),
            gradient=(self.gradient[0] / factor, self.gradient[1] / factor),
        )


def _preset_nodes(radius: float, nodes: Sequence[float] | None) -> np.ndarray:
    return np.asarray(nodes if nodes is not None else [radius * f for f in _PRESET_NODES], dtype=float)


def sky_illumination(radius: float, *, nodes: Sequence[float] | None = None,
                     itl_ratio: float = 0.97) -> FocalPlaneIllumination:
    """A sky-like illumination of a focal plane of outer radius ``radius`` (mm).

    The radial function ``1 - 0.05 u**2 - 0.09 u**6`` of ``u = r / radius`` (0.86 at ``radius``),
    as an Akima spline through ``nodes`` (7 nodes up to ``radius`` if `None`); a small gradient,
    0.2 % across the radius; centred.
    """
    node_radii = _preset_nodes(radius, nodes)
    u = node_radii / radius
    return FocalPlaneIllumination(
        radial_nodes=tuple(node_radii.tolist()),
        radial_values=tuple((1 - 0.05 * u**2 - 0.09 * u**6).tolist()),
        gradient=(0.002 / radius, -0.001 / radius), itl_ratio=itl_ratio,
    )


def dome_illumination(radius: float, *, nodes: Sequence[float] | None = None,
                      itl_ratio: float = 0.97) -> FocalPlaneIllumination:
    """A dome-screen-like illumination of a focal plane of outer radius ``radius`` (mm).

    The radial function ``1 - 0.08 u**2 - 0.12 u**6`` (0.80 at ``radius``), falling faster than the
    sky's, through ``nodes`` as for `sky_illumination`; a 3 % gradient across the radius; the centre
    offset by 2 % of the radius.
    """
    node_radii = _preset_nodes(radius, nodes)
    u = node_radii / radius
    return FocalPlaneIllumination(
        radial_nodes=tuple(node_radii.tolist()),
        radial_values=tuple((1 - 0.08 * u**2 - 0.12 * u**6).tolist()),
        centre_offset=(0.02 * radius, -0.015 * radius), gradient=(0.03 / radius, -0.02 / radius),
        itl_ratio=itl_ratio,
    )


def science_radius(camera: CameraModel) -> float:
    """Largest distance (mm) of a science detector's pixel centre from the focal-plane origin."""
    largest = 0.0
    for detector in camera:
        if detector.type != "SCIENCE":
            continue
        box = detector.getBBox()
        xs = np.array([box.getMinX(), box.getMaxX(), box.getMinX(), box.getMaxX()], dtype=float)
        ys = np.array([box.getMinY(), box.getMinY(), box.getMaxY(), box.getMaxY()], dtype=float)
        xf, yf = detector.pixel_to_focal_plane(xs, ys)
        largest = max(largest, float(np.max(np.hypot(xf, yf))))
    return largest


def with_sensor_families(camera: CameraModel, itl: str = "ITL", other: str = "E2V") -> CameraModel:
    """Return the camera with its detectors split into two sensor families.

    Science detectors of even ID get the physical type ``other`` and those of odd ID ``itl`` (on the
    simulated camera's odd-sided grid that is a checkerboard); every other detector is ``itl`` +
    ``"_WF"``, as LSSTCam's wavefront sensors are ITL.
    """
    detectors = []
    for detector in camera:
        if detector.type == "SCIENCE":
            physical_type = itl if detector.getId() % 2 else other
        else:
            physical_type = f"{itl}_WF"
        detectors.append(detector.model_copy(update={"physical_type": physical_type}))
    return camera.model_copy(update={"detectors": detectors})


def make_wide_sim_camera(n_side: int = 7, detector_pixels: int = 64, half_width: float = 340.0,
                         n_wavefront: int = 2) -> CameraModel:
    """The simulated camera (`~lsst.cp.flatnorm.sim.camera.make_sim_camera`) with large pixels, so
    that its square grid of science detectors reaches ``half_width`` mm from the centre along the
    axes, as LSSTCam's focal plane does (its corners then reach beyond 350 mm and are vignetted by
    cp_pipe's LSSTCam pipelines), with ITL and e2v families (`with_sensor_families`).

    Parameters
    ----------
    n_side : `int`, optional
        Science detectors per side (odd, so that the families form a checkerboard).
    detector_pixels : `int`, optional
        Pixels per detector side (a multiple of 8).
    half_width : `float`, optional
        Distance (mm) from the centre to the outer edge of the grid along an axis.
    n_wavefront : `int`, optional
        Wavefront detectors at the grid's corners.
    """
    if detector_pixels % 8:
        raise ValueError(f"detector_pixels must be a multiple of 8; got {detector_pixels}.")
    gap = 20  # make_sim_camera's gap between detectors, in pixels
    pitch_pixels = detector_pixels + gap
    pixel_size = half_width / ((n_side - 1) / 2 * pitch_pixels + detector_pixels / 2)
    camera = make_sim_camera(n_side=n_side, amp_width=detector_pixels // 8, amp_height=detector_pixels // 2,
                             n_wavefront=n_wavefront, pixel_size=pixel_size)
    return with_sensor_families(camera)
