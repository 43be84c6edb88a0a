# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Fit the focal-plane gradient model to binned flat values (pure numpy/scipy).

The model is `lsst.cp.flatnorm.gradient_model.FlatGradientModel`'s::

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
- **Fit** (`FlatGradientFitter.fit`): Levenberg-Marquardt least squares (MINPACK, through
  ``scipy.optimize.least_squares``) of the weighted residuals with the model's analytic Jacobian
  (the Akima coefficients are differentiated by the node values, the rest in closed form), first
  in two Huber-weighted rounds (residuals beyond 1.5 robust sigmas down-weighted), then on the
  points within ``outlier_sigma`` robust sigmas, repeated until the rejected set stops changing.
  cp_pipe minimises the sum of absolute deviations with L-BFGS-B and finite differences, a method
  for smooth functions, and never checks that the minimiser converged; here the result says
  whether it did, and LSSTCam's 180,000 bins take seconds.
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
_STALL_EVALUATIONS = 20  # extra evaluations that test a run stopped by the evaluation limit
_STALL_TOLERANCE = 0.01  # ... for moves of the parameters below this fraction of their uncertainty
_HUBER_K = 1.5  # Huber weights of the start: residuals beyond this many robust sigmas are down-weighted


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
        self.diff_step = 1e-6

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

    def _geometry(self, delta: np.ndarray, points: np.ndarray | slice) -> tuple[np.ndarray, ...]:
        """Offsets from the radial centre, radius, and the spline interval and local coordinate of
        each point (the radius clipped to the nodes; ``inside`` where it needed no clipping)."""
        dx = self.x[points] - self.pivot[0] - delta[0]
        dy = self.y[points] - self.pivot[1] - delta[1]
        radius = np.hypot(dx, dy)
        clipped = np.clip(radius, self.nodes[0], self.nodes[-1])
        inside = clipped == radius
        interval = np.clip(np.searchsorted(self.nodes, clipped, side="right") - 1, 0, len(self.nodes) - 2)
        return dx, dy, radius, inside, interval, clipped - self.nodes[interval]

    def _coefficients(self, spline_values: np.ndarray) -> np.ndarray:
        """Akima piecewise-cubic coefficients, (4, intervals), highest power first (scipy's PPoly)."""
        return Akima1DInterpolator(self.nodes, spline_values).c

    def _evaluate(self, parameters: np.ndarray, points: np.ndarray | slice,
                  with_jacobian: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """The model at the points and, if asked, its derivatives by every parameter (n, n_par)."""
        spline, ratio, delta, gradient = self._split(np.asarray(parameters, dtype=float))
        dx, dy, radius, inside, interval, t = self._geometry(delta, points)
        c = self._coefficients(spline)[:, interval]
        radial = ((c[0] * t + c[1]) * t + c[2]) * t + c[3]
        plane_x = self.x[points] - self.pivot[0]
        plane_y = self.y[points] - self.pivot[1]
        plane = 1.0 + gradient[0] * plane_x + gradient[1] * plane_y if self.fit_gradient else 1.0
        itl = self.itl[points]
        family = np.where(itl, ratio, 1.0) if self.fit_itl_ratio else 1.0
        model = radial * family / plane
        if not with_jacobian:
            return model, None
        jacobian = np.zeros((len(model), self.n_parameters))
        scale = family / plane
        jacobian[:, self.indices["spline"]] = self._value_derivatives(spline, interval, t) * np.reshape(
            np.broadcast_to(scale, model.shape), (-1, 1))
        if self.fit_itl_ratio:
            jacobian[:, self.indices["itl_ratio"][0]] = np.where(itl, radial / plane, 0.0)
        if self.fit_centroid:
            slope = np.where(inside, (3 * c[0] * t + 2 * c[1]) * t + c[2], 0.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                along = np.where(radius > 0, slope * scale / radius, 0.0)
            jacobian[:, self.indices["centroid_delta"][0]] = -along * dx
            jacobian[:, self.indices["centroid_delta"][1]] = -along * dy
        if self.fit_gradient:
            jacobian[:, self.indices["gradient"][0]] = -model * plane_x / plane
            jacobian[:, self.indices["gradient"][1]] = -model * plane_y / plane
        return model, jacobian

    def _value_derivatives(self, spline: np.ndarray, interval: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Derivatives of the spline at the points by each node value, (n, nodes).

        The Akima coefficients are differentiated by central differences (on the few coefficients,
        not on the points), then evaluated at the points by one gather per power of ``t``.
        """
        step = self.diff_step * max(float(np.max(np.abs(spline))), 1.0)
        n_nodes = len(spline)
        dc = np.empty((4, n_nodes - 1, n_nodes))
        for k in range(n_nodes):
            offset = np.zeros(n_nodes)
            offset[k] = step
            difference = self._coefficients(spline + offset) - self._coefficients(spline - offset)
            dc[:, :, k] = difference / (2 * step)
        derivatives = dc[0][interval]
        for power in range(1, 4):
            derivatives *= t[:, np.newaxis]
            derivatives += dc[power][interval]
        return derivatives

    def compute_model(self, parameters: np.ndarray, points: np.ndarray | slice = slice(None)) -> np.ndarray:
        """The model at the points (all, or those selected by ``points``)."""
        return self._evaluate(parameters, points)[0]

    def compute_jacobian(self, parameters: np.ndarray,
                         points: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Derivatives of the model at the points by every parameter, (points, parameters)."""
        jacobian = self._evaluate(parameters, points, with_jacobian=True)[1]
        assert jacobian is not None  # asked for with with_jacobian=True
        return jacobian

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
        max_iterations: int = 10,
        robust_iterations: int = 2,
        diff_step: float | None = None,
        ftol: float = 1e-10,
        xtol: float = 1e-8,
        gtol: float = 1e-10,
        max_evaluations: int = 200,
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
        robust_iterations : `int`, optional
            Rounds of the Huber-weighted start, before any point is rejected.
        diff_step : `float`, optional
            Relative step of the central differences of the spline coefficients by the node values
            (cp_pipe's ``fit_eps``); 1e-6 if `None`.
        ftol, xtol, gtol : `float`, optional
            Tolerances of the Levenberg-Marquardt steps: relative decrease of the cost, relative
            change of the parameters, cosine of the residuals and the Jacobian's columns
            (cp_pipe's ``fit_gtol``).
        max_evaluations : `int`, optional
            Most model evaluations of one Levenberg-Marquardt run; a run that reaches it has not
            converged (``GradientFit.converged``).  An Akima spline is not differentiable in its node
            values where three successive nodes are collinear (a flat centre, say), so near such a
            solution the steps may stall instead of converging.

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
        n_free = int(free.sum())
        if len(self.values) <= n_free:
            raise ValueError(f"{len(self.values)} points cannot constrain {n_free} free parameters.")
        if diff_step is not None:
            self.diff_step = diff_step
        parameters = np.asarray(p0, dtype=float).copy()
        everything = np.ones(len(self.values), dtype=bool)
        robust = np.ones(len(self.values))
        converged, message = True, ""

        def solve(kept: np.ndarray) -> None:
            nonlocal converged, message
            weights = self.weights[kept] * robust[kept]

            def residuals(values: np.ndarray) -> np.ndarray:
                full = parameters.copy()
                full[free] = values
                return weights * (self.values[kept] - self.compute_model(full, kept))

            def jacobian(values: np.ndarray) -> np.ndarray:
                full = parameters.copy()
                full[free] = values
                return -weights[:, np.newaxis] * self.compute_jacobian(full, kept)[:, free]

            options = {"jac": jacobian, "method": "lm", "x_scale": "jac", "xtol": xtol, "gtol": gtol,
                       "ftol": ftol}
            result = least_squares(residuals, parameters[free], max_nfev=max_evaluations, **options)
            if result.status == 0:
                # Stopped by the evaluation limit, as it can be where the spline is not
                # differentiable: converged if more steps no longer move any parameter by more than
                # a hundredth of its uncertainty.
                again = least_squares(residuals, result.x, max_nfev=_STALL_EVALUATIONS, **options)
                sigma = np.sqrt(2 * again.cost / max(kept.sum() - n_free, 1))
                errors = _parameter_errors(again.jac, sigma)
                settled = np.all(np.abs(again.x - result.x) <= _STALL_TOLERANCE * errors)
                result = again
                result.status = max(result.status, int(settled))
            parameters[free] = result.x
            converged &= result.status > 0
            message = str(result.message)

        # A Huber-weighted start, so that gross outliers do not pull the first residuals.
        for _ in range(robust_iterations):
            solve(everything)
            normalized = self.weights * (self.values - self.compute_model(parameters))
            sigma = robust_sigma(normalized)
            if not sigma > 0:
                break
            robust = np.sqrt(np.minimum(1.0, _HUBER_K * sigma / np.maximum(np.abs(normalized), 1e-300)))
        robust = np.ones(len(self.values))
        # Then plain least squares of the points within outlier_sigma robust sigmas, until stable.
        rejected = ~everything
        n_iterations = 0
        for n_iterations in range(1, max_iterations + 1):
            normalized = self.weights * (self.values - self.compute_model(parameters))
            sigma = robust_sigma(normalized[~rejected])
            new_rejected = (np.abs(normalized) > outlier_sigma * sigma if outlier_sigma > 0 and sigma > 0
                            else ~everything)
            if n_iterations > 1 and np.array_equal(new_rejected, rejected):
                break
            rejected = new_rejected
            if (~rejected).sum() <= n_free:
                raise ValueError(f"Only {(~rejected).sum()} points are left after rejecting outliers; they "
                                 f"cannot constrain {n_free} free parameters.")
            solve(~rejected)
        kept = ~rejected
        final = self.weights[kept] * (self.values[kept] - self.compute_model(parameters, kept))
        residual_sigma = float(np.sqrt(np.sum(final**2) / max(kept.sum() - n_free, 1)))
        errors = np.full(self.n_parameters, np.nan)
        design = self.weights[kept][:, np.newaxis] * self.compute_jacobian(parameters, kept)[:, free]
        errors[free] = _parameter_errors(design, residual_sigma)
        return GradientFit(parameters=parameters, errors=errors, indices=dict(self.indices),
                           residual_sigma=residual_sigma, rejected=rejected, converged=bool(converged),
                           message=message, n_iterations=n_iterations)


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
