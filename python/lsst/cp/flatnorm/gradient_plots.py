# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""QA figures of a focal-plane gradient fit (matplotlib figures, no pyplot state).

`model_residual_figure` draws the binned flat, the model and their ratio over the focal plane;
`radial_model_figure` the binned values with the plane and the ITL ratio taken out, against the
radius, over the fitted radial spline.  These are cp_pipe's ``gradient_model_residual_plot`` and
``gradient_radial_model_plot``; the butler writes them as PNG through daf_butler's ``Plot`` storage
class.  The figures are made without ``matplotlib.pyplot``, so they need no display, hold no global
state and are freed with their last reference; matplotlib is imported only when one is drawn.
"""

from __future__ import annotations

__all__ = ["model_residual_figure", "radial_model_figure"]

from typing import TYPE_CHECKING, Any

import numpy as np

from .gradient_model import FlatGradientModel

if TYPE_CHECKING:  # imported when a figure is drawn, not with the module
    from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def model_residual_figure(
    binned: Any, gradient: FlatGradientModel, title: str, residual_scale: float | None = None
) -> Figure:
    """Three panels over the focal plane: data, model, and data / model.

    Parameters
    ----------
    binned : `astropy.table.Table`
        Binned points (``xf``, ``yf``, ``value``, ``itl``), values divided by the normalization.
    gradient : `lsst.cp.flatnorm.gradient_model.FlatGradientModel`
        The fitted model.
    title : `str`
        Figure title.
    residual_scale : `float`, optional
        Half-width of the ratio's colour scale around 1 (cp_pipe's
        ``fixed_model_residual_plot_scale``); the 1st to 99th percentiles if `None`.

    Returns
    -------
    figure : `matplotlib.figure.Figure`
    """
    x, y, value = (np.asarray(binned[name], dtype=float) for name in ("xf", "yf", "value"))
    model = gradient.full_model(x, y, np.asarray(binned["itl"], dtype=bool))
    ratio = value / model
    figure = _figure(16, 5.5)
    limits = np.nanpercentile(value, [5, 95]) if len(value) else (0, 1)
    if residual_scale is not None:
        ratio_limits = (1.0 - residual_scale, 1.0 + residual_scale)
    else:
        ratio_limits = np.nanpercentile(ratio, [1, 99]) if len(ratio) else (0, 2)
    gridsize = max(10, int(np.sqrt(max(len(x), 1)) / 2))
    for i, (name, values, (low, high), colormap) in enumerate((
        ("Data", value, limits, "viridis"),
        ("Model", model, limits, "viridis"),
        ("Data / Model", ratio, ratio_limits, "coolwarm"),
    )):
        axes = figure.add_subplot(1, 3, i + 1)
        image = axes.hexbin(x, y, C=values, vmin=low, vmax=high, gridsize=gridsize, cmap=colormap)
        axes.set_xlabel("Focal Plane x (mm)")
        axes.set_ylabel("Focal Plane y (mm)")
        axes.set_aspect("equal")
        axes.set_title(name)
        figure.colorbar(image, ax=axes)
    figure.suptitle(title)
    return figure


def radial_model_figure(binned: Any, gradient: FlatGradientModel, title: str) -> Figure:
    """The binned values with the plane and the ITL ratio taken out, against the radius from the
    fitted centre, over the radial spline.

    Parameters
    ----------
    binned : `astropy.table.Table`
        Binned points (``xf``, ``yf``, ``value``, ``itl``), values divided by the normalization.
    gradient : `lsst.cp.flatnorm.gradient_model.FlatGradientModel`
        The fitted model.
    title : `str`
        Figure title.

    Returns
    -------
    figure : `matplotlib.figure.Figure`
    """
    x, y, value = (np.asarray(binned[name], dtype=float) for name in ("xf", "yf", "value"))
    itl = np.asarray(binned["itl"], dtype=bool)
    centre_x, centre_y = gradient.centre
    radius = np.hypot(x - centre_x, y - centre_y)
    adjusted = value * gradient.gradient_model(x, y)
    adjusted[itl] /= gradient.itl_ratio
    figure = _figure(8, 6)
    axes = figure.add_subplot(1, 1, 1)
    if len(radius):
        axes.hexbin(radius, adjusted, bins="log", gridsize=60, cmap="Greys")
    nodes = np.asarray(gradient.radial_spline_nodes)
    curve = np.linspace(nodes[0], nodes[-1], 1000)
    axes.plot(curve, gradient.radial_model(curve), "r-", label="radial spline")
    axes.plot(nodes, gradient.radial_spline_values, "ro", markersize=4, label="nodes")
    axes.set_xlabel("Radius (mm)")
    axes.set_ylabel("Value (adjusted)")
    axes.legend(loc="lower left")
    axes.set_title(title)
    return figure
