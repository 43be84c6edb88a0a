# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Fit the focal-plane gradient model to binned flat values (pure numpy/scipy).

The model is `lsst.cp.flatnorm.gradient_model.FlatGradientModel`'s,

    value(x, y) = S(|(x, y) - (c + d)|) / (1 + g . ((x, y) - c)) * (f if ITL else 1),

with free parameters the spline values at the nodes, the ITL ratio ``f`` (only when both sensor
families have points), and optionally the centre offset ``d`` and the gradient ``g``; the pivot
``c`` is fixed.  `FlatGradientFitter` does what cp_pipe's ``FlatGradientFitter`` is for, its own way:

- **Start** (`FlatGradientFitter.compute_p0`): each node's value is the median of the points in
  its annulus (halfway to the neighbouring nodes), after dividing the ITL points by the ratio; a
  node whose annulus is empty is interpolated from its neighbours (cp_pipe starts it at 0, which
  makes the Akima spline dive between the data); the ratio is the ratio of the two families'
  median residuals inside 80 % of the largest radius; the gradient is the least-squares plane of
  ``S / value - 1`` (cp_pipe's straight-line fit of ``value / S`` has the opposite sign).
- **Fit** (`FlatGradientFitter.fit`): Levenberg-Marquardt-like trust-region least squares
  (``scipy.optimize.least_squares``, method ``trf``) of the weighted residuals, first with a robust
  ``soft_l1`` loss scaled by the robust scatter of the starting residuals, then plain least squares
  on the points within ``outlier_sigma`` robust sigmas, repeated until the rejected set stops
  changing.  cp_pipe minimises the sum of absolute deviations with L-BFGS-B, a method for smooth
  functions, and never checks that the minimiser converged; here the result says whether it did.
- **Uncertainties**: from the Jacobian of the last plain fit, ``sigma**2 (J^T J)^-1`` with sigma the
  residual standard deviation of the points kept; a parameter the data do not constrain (a node
  with no point within its reach) gets an infinite uncertainty.
"""

from __future__ import annotations

__all__ = ["FlatGradientFitter", "GradientFit", "robust_sigma"]

import dataclasses

import numpy as np
from scipy.interpolate import Akima1DInterpolator
from scipy.optimize import least_squares

_MAD_TO_SIGMA = 1.482602218505602
_INNER_FRACTION = 0.8  # the starting ITL ratio uses points inside this fraction of the largest radius


def robust_sigma(values: np.ndarray) -> float:
    """Standard deviation estimated from the median absolute deviation (NaN for no value)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan")
    return float(_MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))


@dataclasses.dataclass
class GradientFit:
    """The result of `FlatGradientFitter.fit`.

    Attributes
    ----------
    parameters : `numpy.ndarray`
        All parameters, laid out as ``FlatGradientFitter.indices`` says.
    errors : `numpy.ndarray`
        Their one-sigma uncertainties (NaN for fixed parameters, infinite for unconstrained ones).
    indices : `dict` [`str`, `numpy.ndarray`]
        Where each parameter group is in ``parameters``.
    residual_sigma : `float`
        Standard deviation of the weighted residuals of the points kept.
    rejected : `numpy.ndarray`
        Boolean per point: rejected as an outlier.
    converged : `bool`
        Whether every optimizer run stopped on a convergence criterion.
    message : `str`
        The last optimizer message.
    n_iterations : `int`
        Rejection rounds.
    """

    parameters: np.ndarray
    errors: np.ndarray
    indices: dict[str, np.ndarray]
    residual_sigma: float
    rejected: np.ndarray
    converged: bool
    message: str
    n_iterations: int

    def value(self, name: str) -> np.ndarray:
        """The parameters of one group (``spline``, ``itl_ratio``, ``centroid_delta``, ``gradient``)."""
        return self.parameters[self.indices[name]]

    def error(self, name: str) -> np.ndarray:
        """The uncertainties of one group."""
        return self.errors[self.indices[name]]


class FlatGradientFitter:
    """Fit the gradient model to points ``(x, y, value)`` of a binned focal plane.

    Parameters
    ----------
    nodes : `numpy.ndarray`
        Radial spline nodes (mm), increasing.
    x, y : `numpy.ndarray`
        Focal-plane positions (mm).
    value : `numpy.ndarray`
        Flat values (finite).
    itl : `numpy.ndarray`
        Boolean per point: the point is on an ITL detector.  The ITL ratio is a parameter only if
        both families have points.
    weights : `numpy.ndarray`, optional
        Relative weight of each point's residual (e.g. the square root of its pixel count); 1 if
        `None`.
    constrain_zero : `bool`, optional
        Fix the outermost spline value to zero.
    fit_centroid : `bool`, optional
        Fit the offset of the radial function's centre.
    fit_gradient : `bool`, optional
        Fit the planar gradient.
    fp_centroid_x, fp_centroid_y : `float`, optional
        Focal-plane centroid (mm): the plane's pivot and the nominal radial centre.
    """

    def __init__(
        self,
        nodes: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        value: np.ndarray,
        itl: np.ndarray,
        *,
        weights: np.ndarray | None = None,
        constrain_zero: bool = False,
        fit_centroid: bool = False,
        fit_gradient: bool = False,
        fp_centroid_x: float = 0.0,
        fp_centroid_y: float = 0.0,
    ):
        self.nodes = np.asarray(nodes, dtype=float)
        if len(self.nodes) < 2 or np.any(np.diff(self.nodes) <= 0):
            raise ValueError(f"The radial spline nodes must be at least two, increasing; got {self.nodes}.")
        self.x = np.asarray(x, dtype=float)
        self.y = np.asarray(y, dtype=float)
        self.values = np.asarray(value, dtype=float)
        self.itl = np.asarray(itl, dtype=bool)
        if not (len(self.x) == len(self.y) == len(self.values) == len(self.itl)):
            raise ValueError("x, y, value and itl must have the same length.")
        if not np.all(np.isfinite(self.values)):
            raise ValueError("The values to fit must be finite.")
        self.weights = (np.ones(len(self.values)) if weights is None
                        else np.asarray(weights, dtype=float))
        self.constrain_zero = constrain_zero
        self.fit_centroid = fit_centroid
        self.fit_gradient = fit_gradient
        self.pivot = (float(fp_centroid_x), float(fp_centroid_y))
        self.fit_itl_ratio = bool(self.itl.any() and (~self.itl).any())
        self.indices: dict[str, np.ndarray] = {"spline": np.arange(len(self.nodes))}
        n_parameters = len(self.nodes)
        for name, wanted, size in (("itl_ratio", self.fit_itl_ratio, 1), ("centroid_delta", fit_centroid, 2),
                                   ("gradient", fit_gradient, 2)):
            if wanted:
                self.indices[name] = np.arange(n_parameters, n_parameters + size)
                n_parameters += size
        self.n_parameters = n_parameters
        self._radius = np.hypot(self.x - self.pivot[0], self.y - self.pivot[1])

    # The model.

    def _split(self, parameters: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
        spline = parameters[self.indices["spline"]]
        ratio = float(parameters[self.indices["itl_ratio"]][0]) if self.fit_itl_ratio else 1.0
        delta = parameters[self.indices["centroid_delta"]] if self.fit_centroid else np.zeros(2)
        gradient = parameters[self.indices["gradient"]] if self.fit_gradient else np.zeros(2)
        return spline, ratio, delta, gradient

    def radial(self, spline_values: np.ndarray, radius: np.ndarray) -> np.ndarray:
        """The Akima spline through the nodes at ``radius``, clipped to the first and last node."""
        spline = Akima1DInterpolator(self.nodes, spline_values)
        return spline(np.clip(radius, self.nodes[0], self.nodes[-1]))

    def compute_model(self, parameters: np.ndarray, points: np.ndarray | slice = slice(None)) -> np.ndarray:
        """The model at the points (all, or those selected by ``points``)."""
        spline, ratio, delta, gradient = self._split(np.asarray(parameters, dtype=float))
        x, y = self.x[points], self.y[points]
        if self.fit_centroid:
            radius = np.hypot(x - self.pivot[0] - delta[0], y - self.pivot[1] - delta[1])
        else:
            radius = self._radius[points]
        model = self.radial(spline, radius)
        if self.fit_gradient:
            model = model / (1.0 + gradient[0] * (x - self.pivot[0]) + gradient[1] * (y - self.pivot[1]))
        if self.fit_itl_ratio:
            model = np.where(self.itl[points], model * ratio, model)
        return model

    # The start.

    def compute_p0(self, itl_ratio: float | None = None) -> np.ndarray:
        """Starting parameters.

        Parameters
        ----------
        itl_ratio : `float`, optional
            A known ITL ratio (from an earlier fit); estimated if `None`.
        """
        parameters = np.zeros(self.n_parameters)
        corrected = self.values.copy()
        if itl_ratio is not None and self.fit_itl_ratio:
            corrected[self.itl] /= itl_ratio
        spline = self._annulus_medians(corrected)
        if self.constrain_zero:
            spline[-1] = 0.0
        parameters[self.indices["spline"]] = spline
        model = self.radial(spline, self._radius)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = self.values / model
        if self.fit_itl_ratio:
            if itl_ratio is None:
                inner = self._radius < _INNER_FRACTION * np.max(self._radius)
                families = [np.nanmedian(ratio[inner & self.itl]), np.nanmedian(ratio[inner & ~self.itl])]
                itl_ratio = families[0] / families[1] if np.all(np.isfinite(families)) else 1.0
            parameters[self.indices["itl_ratio"]] = itl_ratio
        if self.fit_gradient:
            parameters[self.indices["gradient"]] = self._starting_plane(corrected, model)
        return parameters

    def _annulus_medians(self, values: np.ndarray) -> np.ndarray:
        """Median value in each node's annulus; empty annuli interpolated from their neighbours."""
        nodes = self.nodes
        edges = np.concatenate([[nodes[0]], (nodes[1:] + nodes[:-1]) / 2, [nodes[-1]]])
        medians = np.full(len(nodes), np.nan)
        for i in range(len(nodes)):
            inside = (self._radius >= edges[i]) & (self._radius <= edges[i + 1])
            if inside.any():
                medians[i] = np.median(values[inside])
        known = np.isfinite(medians)
        if not known.any():
            return np.ones(len(nodes))
        return np.interp(nodes, nodes[known], medians[known])

    def _starting_plane(self, values: np.ndarray, radial: np.ndarray) -> np.ndarray:
        """The plane g with radial / value = 1 + g . (x - c) in the least-squares sense."""
        with np.errstate(divide="ignore", invalid="ignore"):
            target = radial / values - 1.0
        usable = np.isfinite(target) & (radial > 0.5 * np.nanmax(radial))
        if usable.sum() < 3:
            return np.zeros(2)
        design = np.column_stack([self.x[usable] - self.pivot[0], self.y[usable] - self.pivot[1]])
        solution, *_ = np.linalg.lstsq(design, target[usable], rcond=None)
        return solution

    # The fit.

    def fit(
        self,
        p0: np.ndarray,
        *,
        freeze_itl_ratio: bool = False,
        outlier_sigma: float = 5.0,
        max_iterations: int = 5,
        diff_step: float | None = 1e-8,
        gtol: float = 1e-10,
    ) -> GradientFit:
        """Fit the model, starting from ``p0``.

        Parameters
        ----------
        p0 : `numpy.ndarray`
            Starting parameters (`compute_p0`).
        freeze_itl_ratio : `bool`, optional
            Keep the ITL ratio at its value in ``p0``.
        outlier_sigma : `float`, optional
            Points whose residual is beyond this many robust sigmas are left out (0: none).
        max_iterations : `int`, optional
            Maximum rejection rounds.
        diff_step : `float`, optional
            Relative step of the finite-difference Jacobian (cp_pipe's ``fit_eps``).
        gtol : `float`, optional
            Gradient tolerance of the optimizer (cp_pipe's ``fit_gtol``).

        Returns
        -------
        fit : `GradientFit`

        Raises
        ------
        ValueError
            Raised if there are fewer points than free parameters.
        """
        free = np.ones(self.n_parameters, dtype=bool)
        if self.constrain_zero:
            free[self.indices["spline"][-1]] = False
        if freeze_itl_ratio and self.fit_itl_ratio:
            free[self.indices["itl_ratio"]] = False
        if len(self.values) <= free.sum():
            raise ValueError(f"{len(self.values)} points cannot constrain {free.sum()} free parameters.")
        parameters = np.asarray(p0, dtype=float).copy()
        options = {"method": "trf", "x_scale": "jac", "diff_step": diff_step, "gtol": gtol,
                   "tr_solver": "lsmr"}

        def residuals(free_values: np.ndarray, points: np.ndarray) -> np.ndarray:
            full = parameters.copy()
            full[free] = free_values
            return self.weights[points] * (self.values[points] - self.compute_model(full, points))

        everything = np.ones(len(self.values), dtype=bool)
        start = residuals(parameters[free], everything)
        scale = robust_sigma(start)
        scale = scale if np.isfinite(scale) and scale > 0 else 1e-3
        result = least_squares(residuals, parameters[free], args=(everything,), loss="soft_l1",
                               f_scale=scale, **options)
        parameters[free] = result.x
        converged = result.status > 0
        kept = everything
        rejected = ~everything
        n_iterations = 0
        for n_iterations in range(1, max_iterations + 1):
            current = residuals(parameters[free], everything)
            sigma = robust_sigma(current[kept])
            new_rejected = ((np.abs(current) > outlier_sigma * sigma) if outlier_sigma > 0 and sigma > 0
                            else ~everything)
            if n_iterations > 1 and np.array_equal(new_rejected, rejected):
                break
            rejected = new_rejected
            kept = ~rejected
            if kept.sum() <= free.sum():
                raise ValueError(f"Only {kept.sum()} points are left after rejecting outliers; they cannot "
                                 f"constrain {free.sum()} free parameters.")
            result = least_squares(residuals, parameters[free], args=(kept,), **options)
            parameters[free] = result.x
            converged &= result.status > 0
        final = residuals(parameters[free], kept)
        dof = max(kept.sum() - free.sum(), 1)
        residual_sigma = float(np.sqrt(np.sum(final**2) / dof))
        errors = np.full(self.n_parameters, np.nan)
        errors[free] = _parameter_errors(result.jac, residual_sigma)
        return GradientFit(parameters=parameters, errors=errors, indices=dict(self.indices),
                           residual_sigma=residual_sigma, rejected=rejected, converged=bool(converged),
                           message=str(result.message), n_iterations=n_iterations)


def _parameter_errors(jacobian: np.ndarray, sigma: float) -> np.ndarray:
    """One-sigma errors ``sigma * sqrt(diag((J^T J)^-1))``; infinite for a parameter with no
    Jacobian column, or with a component along a direction the data do not constrain."""
    jacobian = np.asarray(jacobian, dtype=float)
    norms = np.linalg.norm(jacobian, axis=0)
    errors = np.full(jacobian.shape[1], np.inf)
    constrained = norms > 0
    if not constrained.any():
        return errors
    scaled = jacobian[:, constrained] / norms[constrained]
    eigenvalues, vectors = np.linalg.eigh(scaled.T @ scaled)
    good = eigenvalues > eigenvalues.max() * max(scaled.shape) * np.finfo(float).eps
    variance = np.sum(vectors[:, good] ** 2 / eigenvalues[good], axis=1)
    variance[np.sum(vectors[:, ~good] ** 2, axis=1) > 1e-6] = np.inf
    errors[constrained] = sigma * np.sqrt(variance) / norms[constrained]
    return errors
