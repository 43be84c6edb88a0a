# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Figures of a flat normalization: focal-plane map of the row scales, exposure scales against
time, and the residual matrix with the rejected entries marked (matplotlib, Agg backend)."""

from __future__ import annotations

__all__ = ["plot_focal_plane", "plot_exposure_scales", "plot_residual_matrix"]

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from ..camera_model import CameraModel  # noqa: E402


def _save(figure: plt.Figure, path: str | os.PathLike[str]) -> None:
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def plot_focal_plane(
    camera: CameraModel,
    scales: Mapping[int, float] | Mapping[int, Mapping[str, float]],
    path: str | os.PathLike[str],
    title: str,
) -> None:
    """Draw every detector (or amplifier) at its focal-plane position, coloured by its scale.

    Parameters
    ----------
    camera : `lsst.cp.pipe.camera_model.CameraModel`
        Camera geometry.
    scales : `~collections.abc.Mapping`
        ``{detector: G}`` (DETECTOR level) or ``{detector: {amplifier: G}}`` (AMP level), as in
        ``cpFlatNormScales["detScale"]``; missing or non-finite scales are drawn grey.
    path : `str` or `os.PathLike`
        PNG file to write.
    title : `str`
        Figure title.
    """
    patches, values = [], []
    for det in camera:
        scale = scales.get(det.getId(), np.nan)
        x0 = det.focal_plane_x - det.getBBox().getWidth() * det.pixel_size / 2
        y0 = det.focal_plane_y - det.getBBox().getHeight() * det.pixel_size / 2
        for amp in det:
            box = amp.getBBox()
            patches.append(Rectangle(
                (x0 + box.getMinX() * det.pixel_size, y0 + box.getMinY() * det.pixel_size),
                box.getWidth() * det.pixel_size, box.getHeight() * det.pixel_size,
            ))
            value = scale.get(amp.getName(), np.nan) if isinstance(scale, Mapping) else scale
            values.append(np.nan if value is None else value)
    figure, axes = plt.subplots(figsize=(7, 6))
    colormap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    collection = PatchCollection(patches, cmap=colormap, edgecolor="white", linewidth=0.3)
    collection.set_array(np.ma.masked_invalid(values))
    axes.add_collection(collection)
    for det in camera:
        axes.annotate(det.getName(), (det.focal_plane_x, det.focal_plane_y), ha="center", va="center",
                      fontsize=8, color="white")
    axes.autoscale_view()
    axes.set_aspect("equal")
    axes.set_xlabel("focal plane x (mm)")
    axes.set_ylabel("focal plane y (mm)")
    axes.set_title(title)
    figure.colorbar(collection, ax=axes, label="scale G")
    _save(figure, path)


def plot_exposure_scales(
    times: Sequence[float],
    exposure_times: Sequence[float],
    recovered: Sequence[float],
    truth: Sequence[float],
    path: str | os.PathLike[str],
) -> None:
    """Plot recovered and true exposure scales per second of exposure against time, and their ratio.

    Dividing by the exposure time shows the lamp's drift, which the steps between exposure times
    would otherwise hide.

    Parameters
    ----------
    times : `~collections.abc.Sequence` [`float`]
        Exposure start times (minutes since the first exposure).
    exposure_times : `~collections.abc.Sequence` [`float`]
        Exposure times (seconds).
    recovered, truth : `~collections.abc.Sequence` [`float`]
        Recovered and true exposure scales ``E``, in the same order.
    path : `str` or `os.PathLike`
        PNG file to write.
    """
    recovered, truth = np.asarray(recovered), np.asarray(truth)
    exposure_times = np.asarray(exposure_times)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                         gridspec_kw={"height_ratios": [2, 1]})
    top.plot(times, truth / exposure_times, "o", mfc="none", ms=9, label="truth")
    top.plot(times, recovered / exposure_times, "k.", label="recovered")
    top.set_ylabel("E / exposure time (1/s)")
    top.legend()
    bottom.plot(times, recovered / truth - 1, "k.")
    bottom.axhline(0, color="grey", lw=0.5)
    bottom.set_ylabel("recovered / truth - 1")
    bottom.set_xlabel("time since first exposure (min)")
    top.set_title("Exposure scales: lamp flux drifting with time")
    _save(figure, path)


def plot_residual_matrix(
    log_residuals: np.ndarray,
    row_labels: Sequence[str],
    exposure_labels: Sequence[str],
    rejected: np.ndarray,
    invalid: np.ndarray,
    path: str | os.PathLike[str],
) -> None:
    """Show the log residuals of the separable model, rejected entries crossed, invalid ringed.

    Parameters
    ----------
    log_residuals : `numpy.ndarray`, (nRows, nExposures)
        ``log(level / (G E))``; NaN where there is no measurement.
    row_labels, exposure_labels : `~collections.abc.Sequence` [`str`]
        Tick labels.
    rejected, invalid : `numpy.ndarray` [`bool`], (nRows, nExposures)
        Entries rejected as outliers, and entries that were not valid measurements.
    path : `str` or `os.PathLike`
        PNG file to write.
    """
    used = ~(rejected | invalid) & np.isfinite(log_residuals)
    limit = max(float(np.abs(log_residuals[used]).max(initial=0.0)), 1e-6)
    shown = np.where(used, log_residuals, np.nan)
    figure, axes = plt.subplots(figsize=(max(6, 0.4 * len(exposure_labels) + 2),
                                         max(4, 0.12 * len(row_labels) + 2)))
    image = axes.imshow(shown, cmap="coolwarm", vmin=-limit, vmax=limit, aspect="auto",
                        interpolation="nearest")
    for mask, marker, label in ((rejected, "x", "rejected"), (invalid, "o", "invalid")):
        rows, columns = np.nonzero(mask)
        style = {"facecolors": "none", "edgecolors": "k"} if marker == "o" else {"color": "k"}
        axes.scatter(columns, rows, marker=marker, s=30, label=f"{label} ({len(rows)})", **style)
    axes.set_xticks(range(len(exposure_labels)), exposure_labels, rotation=90, fontsize=7)
    step = max(1, len(row_labels) // 40)
    axes.set_yticks(range(0, len(row_labels), step), list(row_labels)[::step], fontsize=7)
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    axes.set_xlabel("exposure (sequence number)")
    figure.suptitle("log residuals of the separable model (used entries)")
    figure.colorbar(image, ax=axes, label="log(level / (G E))")
    _save(figure, path)
