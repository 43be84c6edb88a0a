# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The report's pictures: PNG images of binned arrays (one pixel per bin, drawn without axes so
that hundreds are quick), plots of the normalization and the gradient (matplotlib, Agg), and SVG
focal-plane maps whose detectors link to their pages."""

from __future__ import annotations

__all__ = ["focal_plane_svg", "residual_matrix", "save_array", "save_exposure_scales", "save_radial_function",
           "table_level", "tiles"]

import html
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import PIL.Image  # noqa: E402
from astropy.table import Table  # noqa: E402

from ..camera_model import CameraModel, DetectorModel  # noqa: E402
from ..gradient_model import FlatGradientModel  # noqa: E402

_DPI = 90
_N_COLOURS = 255
"""Colours of a map in `save_array`'s palette (the 256th is grey, for NaN)."""


def save_array(array: npt.NDArray[np.floating], path: str | os.PathLike[str], limits: tuple[float, float],
               colormap: str = "viridis") -> None:
    """Write an array as a PNG image, one pixel per element, row 0 at the bottom, NaN light grey.

    The image has a palette of 255 colours of the map and grey (one byte a pixel, where matplotlib's
    ``imsave`` writes four), which keeps a site of hundreds of images small.
    """
    low, high = limits
    with np.errstate(invalid="ignore"):
        levels = np.clip(np.round((array - low) / (high - low) * (_N_COLOURS - 1)), 0, _N_COLOURS - 1)
    indices = np.where(np.isfinite(array), levels, _N_COLOURS).astype(np.uint8)
    palette = np.vstack([matplotlib.colormaps[colormap](np.linspace(0, 1, _N_COLOURS))[:, :3],
                         matplotlib.colors.to_rgb("lightgrey")])
    image = PIL.Image.fromarray(indices[::-1], mode="P")
    image.putpalette((palette * 255).round().astype(np.uint8).ravel().tolist())
    image.save(path, optimize=True)


def tiles(arrays: Sequence[npt.NDArray[np.floating]], columns: int) -> npt.NDArray[np.float64]:
    """Lay equal-shaped arrays out in a grid, row by row from the top, one NaN bin between them."""
    if not arrays:
        return np.full((1, 1), np.nan)
    height, width = arrays[0].shape
    rows = math.ceil(len(arrays) / columns)
    grid = np.full((rows * (height + 1) - 1, columns * (width + 1) - 1), np.nan)
    for i, array in enumerate(arrays):
        row, column = divmod(i, columns)
        top = (rows - 1 - row) * (height + 1)  # origin="lower": the first tile's row is drawn on top
        grid[top:top + height, column * (width + 1):column * (width + 1) + width] = array
    return grid


def _save(figure: plt.Figure, path: str | os.PathLike[str]) -> None:
    figure.savefig(path, dpi=_DPI, bbox_inches="tight")
    plt.close(figure)


def save_exposure_scales(minutes: Sequence[float], exposure_times: Sequence[float], scales: Sequence[float],
                         errors: Sequence[float], flagged: Sequence[bool],
                         path: str | os.PathLike[str]) -> None:
    """Plot each exposure's scale per second of exposure against time, with its uncertainty; exposures
    with flagged entries ringed."""
    times, per_second = np.asarray(minutes), np.asarray(scales) / np.asarray(exposure_times)
    figure, axes = plt.subplots(figsize=(7, 3.5))
    axes.errorbar(times, per_second, yerr=np.asarray(errors) / np.asarray(exposure_times), fmt="k.",
                  capsize=2, label="E / exposure time")
    ringed = np.asarray(flagged, dtype=bool)
    axes.plot(times[ringed], per_second[ringed], "o", mfc="none", mec="crimson", ms=10,
              label="with flagged entries")
    axes.set_xlabel("minutes since the first exposure")
    axes.set_ylabel("exposure scale / s")
    axes.legend(fontsize=8)
    _save(figure, path)


def table_level(table: Table) -> str:
    """``"AMP"`` if a scale table's rows are amplifiers, else ``"DETECTOR"`` (from its ``amplifier``
    column: the table's metadata does not survive the butler)."""
    return "AMP" if any(str(amplifier) for amplifier in table["amplifier"]) else "DETECTOR"


def _row_key(row: Any, level: str) -> int | tuple[int, str]:
    """A scale table row's matrix row: its detector, or (detector, amplifier) at AMP level."""
    return int(row["detector"]) if level != "AMP" else (int(row["detector"]), str(row["amplifier"]))


def residual_matrix(
    table: Table,
    row_keys: Sequence[int | tuple[int, str]] | None = None,
    exposures: Sequence[int] | None = None,
) -> tuple[npt.NDArray[np.float64], list[int | tuple[int, str]], list[int], npt.NDArray[np.bool_],
           npt.NDArray[np.bool_]]:
    """A scale table's log residuals as a (row, exposure) matrix, with its rejected and invalid entries.

    Parameters
    ----------
    table : `astropy.table.Table`
        ``cpFlatNormalizeScaleTable``.
    row_keys : `~collections.abc.Sequence`, optional
        Rows in order: detector IDs, or (detector, amplifier) at AMP level; sorted if `None`.
    exposures : `~collections.abc.Sequence` [`int`], optional
        Exposures in order; sorted if `None`.

    Returns
    -------
    residuals : `numpy.ndarray`
        Log residuals; NaN where the table has no entry.
    row_keys, exposures : `list`
        The rows and columns.
    rejected, invalid : `numpy.ndarray` [`bool`]
        The entries flagged ``REJECTED`` and ``INVALID``.
    """
    level = table_level(table)
    keys = list(row_keys) if row_keys is not None else sorted({_row_key(row, level) for row in table})
    columns = list(exposures) if exposures is not None else sorted({int(e) for e in table["exposure"]})
    row_index = {key: i for i, key in enumerate(keys)}
    column_index = {exposure: j for j, exposure in enumerate(columns)}
    residuals = np.full((len(keys), len(columns)), np.nan)
    rejected = np.zeros(residuals.shape, dtype=bool)
    invalid = np.zeros(residuals.shape, dtype=bool)
    for row in table:
        at = (row_index[_row_key(row, level)], column_index[int(row["exposure"])])
        residuals[at] = row["log_residual"]
        rejected[at] = row["flag"] == "REJECTED"
        invalid[at] = row["flag"] == "INVALID"
    return residuals, keys, columns, rejected, invalid


def save_radial_function(gradient: FlatGradientModel, path: str | os.PathLike[str]) -> None:
    """Plot the gradient's radial function between its nodes, the nodes marked."""
    nodes = np.asarray(gradient.radial_spline_nodes)
    radius = np.linspace(nodes.min(), nodes.max(), 300)
    figure, axes = plt.subplots(figsize=(7, 3.5))
    axes.plot(radius, gradient.radial_model(radius), "k-", label="radial function")
    axes.plot(nodes, gradient.radial_spline_values, "o", color="crimson", label="nodes")
    axes.set_xlabel("radius from the centre (mm)")
    axes.set_ylabel("relative response")
    axes.legend(fontsize=8)
    _save(figure, path)


def _outline(det: DetectorModel) -> list[tuple[float, float]]:
    """Focal-plane corners of a detector's pixels (outer edges), counter-clockwise."""
    box = det.getBBox()
    xs = (box.getMinX() - 0.5, box.getMaxX() + 0.5)
    ys = (box.getMinY() - 0.5, box.getMaxY() + 0.5)
    corners = [(xs[0], ys[0]), (xs[1], ys[0]), (xs[1], ys[1]), (xs[0], ys[1])]
    return [(float(fp[0]), float(fp[1])) for fp in (det.pixel_to_focal_plane(x, y) for x, y in corners)]


def focal_plane_svg(camera: CameraModel, colours: Mapping[int, str], titles: Mapping[int, str],
                    link: Callable[[int], str], element_id: str) -> str:
    """An SVG map of the focal plane: each detector a polygon of its colour (white if absent) that
    links to its page and shows its title on hover.

    Parameters
    ----------
    camera : `~lsst.cp.flatnorm.camera_model.CameraModel`
        Geometry.
    colours, titles : `~collections.abc.Mapping` [`int`, `str`]
        CSS colour and hover text by detector ID.
    link : `~collections.abc.Callable`
        Relative URL of a detector's page.
    element_id : `str`
        The ``id`` of the SVG element.
    """
    outlines = {det.getId(): _outline(det) for det in camera}
    points = np.array([p for outline in outlines.values() for p in outline])
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    pad = 0.02 * max(x1 - x0, y1 - y0)
    view = f"{x0 - pad:.3f} {-y1 - pad:.3f} {x1 - x0 + 2 * pad:.3f} {y1 - y0 + 2 * pad:.3f}"
    shapes = []
    font = 0.03 * max(x1 - x0, y1 - y0)
    for det in camera:
        det_id = det.getId()
        polygon = " ".join(f"{x:.3f},{-y:.3f}" for x, y in outlines[det_id])  # SVG's y points down
        label = html.escape(titles.get(det_id, det.getName()))
        shapes.append(f'<a href="{link(det_id)}" class="detector" data-detector="{det_id}">'
                      f'<polygon points="{polygon}" fill="{colours.get(det_id, "white")}">'
                      f'<title>{label}</title>'
                      f'</polygon><text x="{det.focal_plane_x:.3f}" y="{-det.focal_plane_y:.3f}" '
                      f'font-size="{font:.3f}">{det_id}</text></a>')
    return (f'<svg id="{element_id}" class="focal-plane" viewBox="{view}" xmlns="http://www.w3.org/2000/svg">'
            + "".join(shapes) + "</svg>")
