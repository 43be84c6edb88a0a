# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Figures of a flat normalization: focal-plane map of the row scales, exposure scales against
time, the residual matrix with the rejected entries marked (alone, or two models side by side),
and focal-plane mosaics of combined flats (matplotlib, Agg backend)."""

from __future__ import annotations

__all__ = ["plot_exposure_scales", "plot_flat_mosaic", "plot_focal_plane",
           "plot_residual_comparison", "plot_residual_matrix"]

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from ..camera_model import CameraModel, DetectorModel  # noqa: E402
from ..focal_plane_mosaic import bin_image  # noqa: E402


def _save(figure: plt.Figure, path: str | os.PathLike[str]) -> None:
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def plot_focal_plane(
    camera: CameraModel,
    scales: Mapping[int, float] | Mapping[tuple[int, str], float],
    path: str | os.PathLike[str],
    title: str,
) -> None:
    """Draw every detector (or amplifier) at its focal-plane position, coloured by its scale.

    Parameters
    ----------
    camera : `lsst.cp.flatnorm.camera_model.CameraModel`
        Camera geometry.
    scales : `~collections.abc.Mapping`
        ``{detector: G}`` (DETECTOR level) or ``{(detector, amplifier): G}`` (AMP level), as
        `lsst.cp.flatnorm.scale_dictionary.row_scales` returns them; missing or non-finite scales
        are drawn grey.
    path : `str` or `os.PathLike`
        PNG file to write.
    title : `str`
        Figure title.
    """
    by_row: Mapping[Any, float] = scales  # keyed by detector, or by (detector, amplifier)
    patches, values = [], []
    for det in camera:
        x0 = det.focal_plane_x - det.getBBox().getWidth() * det.pixel_size / 2
        y0 = det.focal_plane_y - det.getBBox().getHeight() * det.pixel_size / 2
        for amp in det:
            box = amp.getBBox()
            patches.append(Rectangle(
                (x0 + box.getMinX() * det.pixel_size, y0 + box.getMinY() * det.pixel_size),
                box.getWidth() * det.pixel_size, box.getHeight() * det.pixel_size,
            ))
            values.append(by_row.get((det.getId(), amp.getName()), by_row.get(det.getId(), np.nan)))
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
    recovered_e, truth_e = np.asarray(recovered), np.asarray(truth)
    time_s = np.asarray(exposure_times)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                         gridspec_kw={"height_ratios": [2, 1]})
    top.plot(times, truth_e / time_s, "o", mfc="none", ms=9, label="truth")
    top.plot(times, recovered_e / time_s, "k.", label="recovered")
    top.set_ylabel("E / exposure time (1/s)")
    top.legend()
    bottom.plot(times, recovered_e / truth_e - 1, "k.")
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
        style: dict[str, Any] = {"facecolors": "none", "edgecolors": "k"} if marker == "o" else {"color": "k"}
        axes.scatter(columns, rows, marker=marker, s=30, label=f"{label} ({len(rows)})", **style)
    axes.set_xticks(range(len(exposure_labels)), exposure_labels, rotation=90, fontsize=7)
    step = max(1, len(row_labels) // 40)
    axes.set_yticks(range(0, len(row_labels), step), list(row_labels)[::step], fontsize=7)
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    axes.set_xlabel("exposure (sequence number)")
    figure.suptitle("log residuals of the separable model (used entries)")
    figure.colorbar(image, ax=axes, label="log(level / (G E))")
    _save(figure, path)


def plot_residual_comparison(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    row_labels: Sequence[str],
    exposure_labels: Sequence[str],
    path: str | os.PathLike[str],
) -> None:
    """Show the log residuals of several models of the same entries side by side, on the colour
    scale of the first (e.g. the separable model, then the model with colour terms).

    Parameters
    ----------
    panels : `~collections.abc.Mapping` [`str`, `tuple`]
        Panel title -> ``(log_residuals, rejected, invalid)`` as for `plot_residual_matrix`.
    row_labels, exposure_labels : `~collections.abc.Sequence` [`str`]
        Tick labels, shared by the panels.
    path : `str` or `os.PathLike`
        PNG file to write.
    """
    first = next(iter(panels.values()))
    used = ~(first[1] | first[2]) & np.isfinite(first[0])
    limit = max(float(np.abs(first[0][used]).max(initial=0.0)), 1e-6)
    figure, axes = plt.subplots(1, len(panels), squeeze=False, sharey=True,
                                figsize=(len(panels) * max(5, 0.4 * len(exposure_labels) + 2),
                                         max(4, 0.12 * len(row_labels) + 2)))
    for ax, (title, (residuals, rejected, invalid)) in zip(axes[0], panels.items()):
        shown = np.where(~(rejected | invalid) & np.isfinite(residuals), residuals, np.nan)
        image = ax.imshow(shown, cmap="coolwarm", vmin=-limit, vmax=limit, aspect="auto",
                          interpolation="nearest")
        rows, columns = np.nonzero(rejected)
        ax.scatter(columns, rows, marker="x", s=30, color="k", label=f"rejected ({len(rows)})")
        rows, columns = np.nonzero(invalid)
        ax.scatter(columns, rows, marker="o", s=30, facecolors="none", edgecolors="k",
                   label=f"invalid ({len(rows)})")
        used_values = shown[np.isfinite(shown)]
        rms = float(np.sqrt(np.mean(used_values**2))) if used_values.size else 0.0
        ax.set_title(f"{title}\nrms {rms:.2e}", fontsize=9)
        ax.set_xticks(range(len(exposure_labels)), exposure_labels, rotation=90, fontsize=7)
        ax.set_xlabel("exposure (sequence number)")
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.35), ncol=2, fontsize=7, frameon=False)
    step = max(1, len(row_labels) // 40)
    axes[0, 0].set_yticks(range(0, len(row_labels), step), list(row_labels)[::step], fontsize=7)
    figure.colorbar(image, ax=list(axes[0]), label="log residual (used entries)")
    _save(figure, path)


def _detector_extent(det: DetectorModel) -> tuple[float, float, float, float]:
    """Focal-plane (left, right, bottom, top) of a detector, in mm."""
    width = det.getBBox().getWidth() * det.pixel_size
    height = det.getBBox().getHeight() * det.pixel_size
    return (det.focal_plane_x - width / 2, det.focal_plane_x + width / 2,
            det.focal_plane_y - height / 2, det.focal_plane_y + height / 2)


def plot_flat_mosaic(
    camera: CameraModel,
    panels: Mapping[str, Mapping[int, np.ndarray]],
    path: str | os.PathLike[str],
    *,
    label: str = "flat / k (relative response)",
    limits: tuple[float, float] | None = None,
    colormap: str = "viridis",
    bad_colour: str = "lightgrey",
    max_binned_size: int = 256,
) -> None:
    """Draw flats at their focal-plane positions, one mosaic per panel, all on one colour scale.

    Parameters
    ----------
    camera : `lsst.cp.flatnorm.camera_model.CameraModel`
        Camera geometry: each detector's image is placed on its focal-plane footprint.
    panels : `~collections.abc.Mapping` [`str`, `~collections.abc.Mapping` [`int`, `numpy.ndarray`]]
        Panel title -> ``{detector: image}``; detectors missing from a panel are left blank, and
        non-finite pixels are drawn in ``bad_colour``.
    path : `str` or `os.PathLike`
        PNG file to write.
    label : `str`, optional
        Colour bar label.
    limits : `tuple` [`float`, `float`], optional
        Colour scale, shared by all panels; if `None`, the 0.5 and 99.5 percentiles of the first
        panel's finite pixels (so that an offset in another panel shows as a colour change).
    colormap : `str`, optional
        Matplotlib colour map name.
    bad_colour : `str`, optional
        Colour of the non-finite pixels.
    max_binned_size : `int`, optional
        Images are binned (`~lsst.cp.flatnorm.focal_plane_mosaic.bin_image`) by the smallest integer
        factor that brings their larger side to at most this many pixels.
    """
    if limits is None:
        reference = np.concatenate([image[np.isfinite(image)].ravel()
                                    for image in next(iter(panels.values())).values()])
        limits = tuple(np.percentile(reference, (0.5, 99.5)))
    vmin, vmax = limits
    cmap = matplotlib.colormaps[colormap].with_extremes(bad=bad_colour)
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels) + 1, 5.5), squeeze=False,
                                sharex=True, sharey=True)
    for ax, (title, images) in zip(axes[0], panels.items()):
        for det in camera:
            if det.getId() not in images:
                continue
            image = images[det.getId()]
            factor = max(1, math.ceil(max(image.shape) / max_binned_size))
            shown = ax.imshow(np.ma.masked_invalid(bin_image(image, factor)[0]), origin="lower",
                              extent=_detector_extent(det), cmap=cmap, vmin=vmin, vmax=vmax,
                              interpolation="nearest")
            ax.annotate(det.getName(), (det.focal_plane_x, det.focal_plane_y), ha="center",
                        va="center", fontsize=8, color="black")
        ax.set_title(title, fontsize=10)
        ax.set_aspect("equal")
        ax.set_xlabel("focal plane x (mm)")
    edges = np.array([_detector_extent(det) for det in camera])
    axes[0, 0].set_xlim(edges[:, 0].min(), edges[:, 1].max())
    axes[0, 0].set_ylim(edges[:, 2].min(), edges[:, 3].max())
    axes[0, 0].set_ylabel("focal plane y (mm)")
    figure.colorbar(shown, ax=list(axes[0]), label=label, shrink=0.8)
    _save(figure, path)
