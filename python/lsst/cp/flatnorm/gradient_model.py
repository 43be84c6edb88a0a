# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The focal-plane gradient model of a flat: a typed, versioned product stored through the butler.

The model describes the large-scale illumination of a whole focal plane (x, y in millimetres) as::

    model(x, y) = S(|(x, y) - (c + d)|) / P(x, y) * (f if the detector is of the ITL family else 1)
    P(x, y) = 1 + g_x (x - c_x) + g_y (y - c_y)

with ``S`` an Akima spline of the radius through ``(radial_spline_nodes, radial_spline_values)``
(the radius clipped to the first and last node), ``c`` the focal-plane centroid (the pivot of the
plane), ``d`` the offset of the radial function's centre from it, ``g`` the planar gradient and ``f``
the throughput ratio of the ITL sensor family to the other (e2v).  The data were divided by
``normalization_factor`` before the fit (the median of the flat near the centre), so
``model * normalization_factor`` describes the flat as it was.

These are the parameters and the functions of ip_isr's ``FlatGradient`` calibration, which
cp_pipe's ``CpFlatFitGradientsTask`` writes; `FlatGradientModel` evaluates them the same way (its
camelCase methods and attributes are ip_isr's names, so code written for ``FlatGradient`` works
with it) and converts from and to ip_isr's dictionary layout (`FlatGradientModel.from_isr`,
`FlatGradientModel.to_isr_dict`).  It is a pydantic model stored as JSON under the storage class
``FlatGradientModel`` (see ``configs/butler-seed.yaml``), with a schema version, the fit's
uncertainties and a summary of the fit.
"""

from __future__ import annotations

__all__ = [
    "FLAT_GRADIENT_SCHEMA_VERSION",
    "FlatGradientFitSummary",
    "FlatGradientModel",
    "FlatGradientUncertainties",
    "is_itl_family",
]

import datetime
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
import pydantic
from scipy.interpolate import Akima1DInterpolator

FLAT_GRADIENT_SCHEMA_VERSION = 1
"""Schema version written by this package; a model with a higher version is refused on reading."""

_FLOAT_SPECIALS = pydantic.ConfigDict(ser_json_inf_nan="constants", extra="forbid")
"""NaN and infinite uncertainties survive JSON as ``NaN``/``Infinity``; unknown keys are errors."""


_ISR_KEYS = {  # ip_isr FlatGradient name -> field
    "radialSplineNodes": "radial_spline_nodes",
    "radialSplineValues": "radial_spline_values",
    "itlRatio": "itl_ratio",
    "centroidX": "centroid_x",
    "centroidY": "centroid_y",
    "centroidDeltaX": "centroid_delta_x",
    "centroidDeltaY": "centroid_delta_y",
    "gradientX": "gradient_x",
    "gradientY": "gradient_y",
    "normalizationFactor": "normalization_factor",
}
"""ip_isr's camelCase parameter names and the model's fields."""


def is_itl_family(physical_type: str) -> bool:
    """Whether a detector of this physical type belongs to the ITL sensor family.

    As cp_pipe decides it: the physical type contains ``ITL`` (``ITL`` science sensors, ``ITL_WF``
    wavefront sensors, ``pseudoITL`` test sensors).
    """
    return "ITL" in physical_type


class FlatGradientUncertainties(pydantic.BaseModel):
    """One-sigma uncertainties of the fitted parameters (NaN: not fitted; infinite: unconstrained).

    They come from the fit's Jacobian and the robust scatter of its residuals; the ITL ratio's is
    from the first (inner) pass, which fixes it for the second.
    """

    model_config = _FLOAT_SPECIALS

    radial_spline_values: list[float]
    itl_ratio: float = math.nan
    centroid_delta_x: float = math.nan
    centroid_delta_y: float = math.nan
    gradient_x: float = math.nan
    gradient_y: float = math.nan


class FlatGradientFitSummary(pydantic.BaseModel):
    """How the model was fitted."""

    model_config = _FLOAT_SPECIALS

    n_bins: int
    """Binned points used in the final fit."""
    n_rejected: int = 0
    """Points of the final fit rejected as outliers."""
    n_detectors: int = 0
    """Detectors with at least one bin in the final fit."""
    bin_factor: int = 0
    """Pixels per bin side."""
    residual_sigma: float = math.nan
    """Robust standard deviation of the relative residuals (data / model - 1) of the final fit."""
    converged: bool = True
    """Whether both passes of the optimizer converged."""
    message: str = ""
    """The optimizer's last message."""


class FlatGradientModel(pydantic.BaseModel):
    """Large-scale illumination of a focal plane: radial spline, planar gradient, centre offset and
    sensor-family ratio (see the module docstring for the formula).

    Attributes
    ----------
    schema_version : `int`
        Version of this layout (`FLAT_GRADIENT_SCHEMA_VERSION`).
    is_reference : `bool`
        Whether this is a reference (sky) gradient, ``flat_gradient_reference``, rather than a dome
        flat's, ``flat_gradient``.
    instrument, physical_filter : `str`
        What the model was fitted to (empty if unknown).
    radial_spline_nodes, radial_spline_values : `list` [`float`]
        Akima spline of the radius (mm), nodes strictly increasing.
    itl_ratio : `float`
        Throughput of ITL detectors relative to the others.
    centroid_x, centroid_y : `float`
        Focal-plane centroid (mm): the pivot of the plane and the nominal centre of the radial
        function.
    centroid_delta_x, centroid_delta_y : `float`
        Offset of the radial function's centre from the centroid (mm).
    gradient_x, gradient_y : `float`
        Planar gradient (per mm); the model is divided by the plane.
    normalization_factor : `float`
        What the flat was divided by before the fit.
    uncertainties : `FlatGradientUncertainties` or `None`
        One-sigma uncertainties of the fitted parameters.
    fit : `FlatGradientFitSummary` or `None`
        How it was fitted.
    created : `str`
        UTC time of creation (ISO 8601).
    metadata : `dict`
        Provenance: input dataset type, configuration, detectors; scalar values only.
    """

    model_config = _FLOAT_SPECIALS

    schema_version: int = FLAT_GRADIENT_SCHEMA_VERSION
    is_reference: bool = False
    instrument: str = ""
    physical_filter: str = ""
    radial_spline_nodes: list[float]
    radial_spline_values: list[float]
    itl_ratio: float = 1.0
    centroid_x: float = 0.0
    centroid_y: float = 0.0
    centroid_delta_x: float = 0.0
    centroid_delta_y: float = 0.0
    gradient_x: float = 0.0
    gradient_y: float = 0.0
    normalization_factor: float = 1.0
    uncertainties: FlatGradientUncertainties | None = None
    fit: FlatGradientFitSummary | None = None
    created: str = pydantic.Field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    metadata: dict[str, str | int | float | bool] = pydantic.Field(default_factory=dict)

    @pydantic.field_validator("schema_version")
    @classmethod
    def _check_version(cls, version: int) -> int:
        if not 1 <= version <= FLAT_GRADIENT_SCHEMA_VERSION:
            raise ValueError(
                f"schema version {version} is not readable by this version of lsst.cp.flatnorm, which "
                f"reads versions 1 to {FLAT_GRADIENT_SCHEMA_VERSION}; upgrade lsst-cp-flatnorm."
            )
        return version

    @pydantic.model_validator(mode="after")
    def _check_parameters(self) -> FlatGradientModel:
        nodes = np.asarray(self.radial_spline_nodes, dtype=float)
        if len(nodes) < 2:
            raise ValueError(f"the radial spline needs at least two nodes; got {len(nodes)}.")
        if len(self.radial_spline_values) != len(nodes):
            raise ValueError(f"the radial spline has {len(nodes)} nodes but "
                             f"{len(self.radial_spline_values)} values.")
        if not np.all(np.isfinite(nodes)) or np.any(np.diff(nodes) <= 0):
            raise ValueError(f"the radial spline nodes must be finite and increasing; got {nodes.tolist()}.")
        scalars = {name: getattr(self, name) for name in (
            "itl_ratio", "centroid_x", "centroid_y", "centroid_delta_x", "centroid_delta_y",
            "gradient_x", "gradient_y", "normalization_factor")}
        bad = {name: value for name, value in scalars.items() if not math.isfinite(value)}
        if bad or not np.all(np.isfinite(self.radial_spline_values)):
            raise ValueError(f"the model parameters must be finite; got {bad or self.radial_spline_values}.")
        if self.itl_ratio <= 0 or self.normalization_factor <= 0:
            raise ValueError("itl_ratio and normalization_factor must be positive; got "
                             f"{self.itl_ratio} and {self.normalization_factor}.")
        if (self.uncertainties is not None
                and len(self.uncertainties.radial_spline_values) != len(self.radial_spline_values)):
            raise ValueError("the uncertainties have a different number of spline values than the model.")
        return self

    # Evaluation (ip_isr's FlatGradient functions).

    @property
    def centre(self) -> tuple[float, float]:
        """Centre of the radial function, ``centroid + centroid_delta`` (mm)."""
        return self.centroid_x + self.centroid_delta_x, self.centroid_y + self.centroid_delta_y

    def radial_model(self, radius: ArrayLike) -> np.ndarray:
        """The radial spline at ``radius`` (mm), the radius clipped to the first and last node."""
        nodes = np.asarray(self.radial_spline_nodes, dtype=float)
        spline = Akima1DInterpolator(nodes, np.asarray(self.radial_spline_values, dtype=float))
        return spline(np.clip(np.asarray(radius, dtype=float), nodes[0], nodes[-1]))

    def radial_model_xy(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """The radial spline at focal-plane positions (mm), about `centre`."""
        centre_x, centre_y = self.centre
        return self.radial_model(np.hypot(np.asarray(x, dtype=float) - centre_x,
                                          np.asarray(y, dtype=float) - centre_y))

    def gradient_model(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """The plane ``P(x, y) = 1 + g_x (x - c_x) + g_y (y - c_y)``; 1 at the centroid, which stays
        the pivot whatever the centre offset."""
        return (1.0 + self.gradient_x * (np.asarray(x, dtype=float) - self.centroid_x)
                + self.gradient_y * (np.asarray(y, dtype=float) - self.centroid_y))

    def full_model(self, x: ArrayLike, y: ArrayLike, is_itl: ArrayLike) -> np.ndarray:
        """The whole model, ``S / P`` times `itl_ratio` where ``is_itl``: the flat divided by
        `normalization_factor`, as fitted."""
        model = self.radial_model_xy(x, y) / self.gradient_model(x, y)
        return np.where(np.asarray(is_itl, dtype=bool), model * self.itl_ratio, model)

    # ip_isr's FlatGradient names.

    def computeRadialSplineModel(self, radius: ArrayLike) -> np.ndarray:
        return self.radial_model(radius)

    def computeRadialSplineModelXY(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        return self.radial_model_xy(x, y)

    def computeGradientModel(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        return self.gradient_model(x, y)

    def computeFullModel(self, x: ArrayLike, y: ArrayLike, is_itl: ArrayLike) -> np.ndarray:
        return self.full_model(x, y, is_itl)

    @property
    def radialSplineNodes(self) -> np.ndarray:
        return np.asarray(self.radial_spline_nodes, dtype=float)

    @property
    def radialSplineValues(self) -> np.ndarray:
        return np.asarray(self.radial_spline_values, dtype=float)

    @property
    def itlRatio(self) -> float:
        return self.itl_ratio

    @property
    def centroidX(self) -> float:
        return self.centroid_x

    @property
    def centroidY(self) -> float:
        return self.centroid_y

    @property
    def centroidDeltaX(self) -> float:
        return self.centroid_delta_x

    @property
    def centroidDeltaY(self) -> float:
        return self.centroid_delta_y

    @property
    def gradientX(self) -> float:
        return self.gradient_x

    @property
    def gradientY(self) -> float:
        return self.gradient_y

    @property
    def normalizationFactor(self) -> float:
        return self.normalization_factor

    # ip_isr's layout.

    def to_isr_dict(self) -> dict[str, Any]:
        """Return the parameters in ip_isr's ``FlatGradient.toDict`` layout (camelCase keys, plus
        ``metadata`` with ``OBSTYPE``, ``FILTER`` and ``INSTRUME``), which
        ``lsst.ip.isr.FlatGradient.fromDict`` reads."""
        result: dict[str, Any] = {
            "metadata": {"OBSTYPE": "flatGradient", "FLAT_GRADIENT_SCHEMA": "FlatGradient",
                         "FLAT_GRADIENT_VERSION": 1.0, "FILTER": self.physical_filter,
                         "INSTRUME": self.instrument, **self.metadata},
        }
        for isr_key, name in _ISR_KEYS.items():
            value = getattr(self, name)
            result[isr_key] = list(value) if isinstance(value, list) else float(value)
        return result

    @classmethod
    def from_isr(cls, source: Any, **fields: Any) -> FlatGradientModel:
        """Build a model from an ip_isr ``FlatGradient`` or its ``toDict()`` dictionary.

        Parameters
        ----------
        source : `lsst.ip.isr.FlatGradient` or `~collections.abc.Mapping`
            Anything with ip_isr's attribute names (``radialSplineNodes``, ...), or a mapping with
            them as keys.
        **fields
            More fields of the model (``is_reference``, ``physical_filter``, ...).
        """
        get = source.get if isinstance(source, Mapping) else lambda key, default=None: getattr(
            source, key, default)
        values: dict[str, Any] = {}
        for isr_key, name in _ISR_KEYS.items():
            value = get(isr_key)
            if value is None:
                continue
            values[name] = np.asarray(value, dtype=float).tolist() if "Spline" in isr_key else float(value)
        return cls(**values, **fields)
