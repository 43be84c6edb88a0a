# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Vignetting geometry: which pixels of a detector lie outside a focal-plane polygon (pure numpy).

The unvignetted region is a polygon in focal-plane millimetres, the same for every detector;
cp_pipe (through ip_isr's ``VignetteTask``) describes it as a circle approximated by a regular
polygon of ``numPolygonPoints`` vertices (`circle_polygon`).  A detector's pixels reach the focal
plane through an affine map (afw's ``Orientation`` without pitch and roll: scale by the pixel size,
rotate by the yaw about the reference point, shift to the focal-plane position).  Because the map is
affine, the polygon's image in pixel coordinates is again a polygon with straight edges, so
`vignetted_pixels` maps the vertices into pixel coordinates once and rasterises there; no pixel
position is transformed.

A pixel is vignetted when its centre (integer pixel coordinates, afw's convention) is not inside
the polygon.  Rasterisation scans rows: the edges crossing each row's centre line give the spans
inside the polygon (even-odd rule, edges half-open in y so that a vertex on a row counts once),
which costs ``O(rows x vertices + pixels)``: 0.05 s for a 4k x 4k detector and a 100-gon.
"""

from __future__ import annotations

__all__ = ["AffineMap", "circle_polygon", "polygon_interior", "vignetted_pixels"]

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

PixelToFocalPlane = Callable[[Any, Any], tuple[Any, Any]]
"""``pixel_to_focal_plane(x, y) -> (fp_x, fp_y)``, vectorised over numpy arrays."""


@dataclasses.dataclass(frozen=True)
class AffineMap:
    """An affine map of the plane, ``(u, v) = matrix @ (x, y) + offset``.

    Attributes
    ----------
    matrix : `numpy.ndarray`, (2, 2)
        Linear part.
    offset : `numpy.ndarray`, (2,)
        Image of the origin.
    """

    matrix: np.ndarray
    offset: np.ndarray

    @classmethod
    def sample(cls, mapping: PixelToFocalPlane, low: tuple[float, float],
               high: tuple[float, float]) -> AffineMap:
        """Build the affine map that ``mapping`` is, from its values at three corners of a box.

        Parameters
        ----------
        mapping : callable
            ``mapping(x, y) -> (u, v)``; must be affine.
        low, high : `tuple` [`float`, `float`]
            Opposite corners ``(x, y)`` of the box; ``mapping`` is sampled at ``low``,
            ``(high_x, low_y)`` and ``(low_x, high_y)`` (the steps are widened to at least one
            where the box is thinner), and the result is checked at ``high``.

        Raises
        ------
        ValueError
            Raised if ``mapping`` differs from the affine map at ``high`` (it is not affine, e.g. it
            includes optical distortion) by more than 1e-9 of the distance mapped.
        """
        (x0, y0), (x1, y1) = low, high
        x1, y1 = max(float(x1), x0 + 1.0), max(float(y1), y0 + 1.0)
        points = np.array([[x0, x1, x0], [y0, y0, y1]])
        u, v = (np.asarray(values, dtype=float) for values in mapping(points[0], points[1]))
        steps = np.array([[u[1] - u[0], u[2] - u[0]], [v[1] - v[0], v[2] - v[0]]])
        matrix = steps / np.array([x1 - x0, y1 - y0])
        affine = cls(matrix=matrix, offset=np.array([u[0], v[0]]) - matrix @ points[:, 0])
        expected = np.array(affine(x1, y1))
        actual = np.array(mapping(x1, y1), dtype=float)
        reach = max(float(np.hypot(*steps.sum(axis=1))), 1.0)
        if np.hypot(*(actual - expected)) > 1e-9 * reach:
            raise ValueError(f"The pixel to focal-plane map is not affine: at {(x1, y1)} it gives "
                             f"{tuple(actual.tolist())}, the affine map through the other corners gives "
                             f"{tuple(expected.tolist())}.")
        return affine

    def __call__(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Map points ``(x, y)`` (scalars or arrays of one shape)."""
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        return (self.matrix[0, 0] * x + self.matrix[0, 1] * y + self.offset[0],
                self.matrix[1, 0] * x + self.matrix[1, 1] * y + self.offset[1])

    def inverse(self) -> AffineMap:
        """Return the inverse map.

        Raises
        ------
        ValueError
            Raised if the map is singular (a zero pixel size).
        """
        if np.linalg.det(self.matrix) == 0:
            raise ValueError(f"The affine map {self.matrix.tolist()} is singular.")
        inverse = np.linalg.inv(self.matrix)
        return AffineMap(matrix=inverse, offset=-inverse @ self.offset)


def circle_polygon(x_center: float, y_center: float, radius: float, n_points: int) -> np.ndarray:
    """Return the regular polygon that cp_pipe's vignetting uses for a circle.

    Parameters
    ----------
    x_center, y_center : `float`
        Centre of the circle (focal-plane mm).
    radius : `float`
        Radius (mm); must not be negative.
    n_points : `int`
        Number of vertices, at least 3; the vertices lie on the circle at angles
        ``2 pi k / n_points`` from the +x axis, so the polygon is inscribed in it.

    Returns
    -------
    vertices : `numpy.ndarray`, (n_points, 2)
        ``(x, y)`` of each vertex.

    Raises
    ------
    ValueError
        Raised if ``radius`` is negative or ``n_points`` is below 3.
    """
    if radius < 0:
        raise ValueError(f"The vignetting radius must not be negative; got {radius}.")
    if n_points < 3:
        raise ValueError(f"A vignetting polygon needs at least 3 points; got {n_points}.")
    theta = 2 * np.pi * np.arange(n_points) / n_points
    return np.column_stack([x_center + radius * np.cos(theta), y_center + radius * np.sin(theta)])


def polygon_interior(vertices: np.ndarray, shape: tuple[int, int], origin: tuple[int, int] = (0, 0)
                     ) -> np.ndarray:
    """Return which pixel centres of a grid lie inside a polygon (even-odd rule).

    Parameters
    ----------
    vertices : `numpy.ndarray`, (n, 2)
        ``(x, y)`` of the polygon's vertices in pixel coordinates, in order (either sense); the
        polygon closes from the last vertex to the first.
    shape : `tuple` [`int`, `int`]
        ``(ny, nx)`` of the grid.
    origin : `tuple` [`int`, `int`]
        ``(x0, y0)``: coordinates of the centre of pixel ``[0, 0]``; pixel ``[j, i]`` is at
        ``(x0 + i, y0 + j)``.

    Returns
    -------
    inside : `numpy.ndarray` [`bool`], (ny, nx)
    """
    ny, nx = shape
    x0, y0 = origin
    vx, vy = np.asarray(vertices, dtype=float).T
    wx, wy = np.roll(vx, -1), np.roll(vy, -1)
    rows = y0 + np.arange(ny, dtype=float)[:, np.newaxis]
    # Half-open in y: an edge crosses a row if exactly one of its ends is at or below the row.
    crossing = (vy <= rows) != (wy <= rows)
    row_index, edge = np.nonzero(crossing)
    t = (rows[row_index, 0] - vy[edge]) / (wy[edge] - vy[edge])
    x_cross = vx[edge] + t * (wx[edge] - vx[edge]) - x0
    # A pixel is inside when an odd number of crossings lie to its right (x < x_cross): column i
    # is to the left of a crossing at x_cross for i < ceil(x_cross).
    columns_left = np.clip(np.ceil(x_cross), 0, nx).astype(np.intp)
    # Only parities matter, so uint8 counts may wrap; they keep the sums fast and small.
    crossings_at = np.zeros((ny, nx + 1), dtype=np.uint8)
    np.add.at(crossings_at, (row_index, columns_left), 1)
    # right[:, i] = crossings_at[:, i + 1:].sum(axis=1), accumulated from the right.
    right = np.cumsum(crossings_at[:, :0:-1], axis=1, dtype=np.uint8)[:, ::-1]
    return (right & 1).astype(bool)


def vignetted_pixels(polygon: np.ndarray, pixel_to_focal_plane: PixelToFocalPlane, bbox: Any) -> np.ndarray:
    """Return the pixels of a detector whose centres lie outside a focal-plane polygon.

    Parameters
    ----------
    polygon : `numpy.ndarray`, (n, 2)
        Vertices of the unvignetted region in focal-plane mm (e.g. `circle_polygon`).
    pixel_to_focal_plane : callable
        The detector's affine map from pixel to focal-plane coordinates (``DetectorModel.
        pixel_to_focal_plane``).
    bbox : box
        The detector's pixel box (``getMinX``, ``getMinY``, ``getWidth``, ``getHeight``).

    Returns
    -------
    vignetted : `numpy.ndarray` [`bool`], (height, width)
        `True` for pixels outside the polygon.  A detector entirely outside is entirely vignetted.

    Raises
    ------
    ValueError
        Raised if ``pixel_to_focal_plane`` is not affine.
    """
    origin = (bbox.getMinX(), bbox.getMinY())
    far_corner = (origin[0] + bbox.getWidth() - 1, origin[1] + bbox.getHeight() - 1)
    to_pixels = AffineMap.sample(pixel_to_focal_plane, origin, far_corner).inverse()
    pixel_vertices = np.column_stack(to_pixels(polygon[:, 0], polygon[:, 1]))
    return ~polygon_interior(pixel_vertices, (bbox.getHeight(), bbox.getWidth()), origin)
