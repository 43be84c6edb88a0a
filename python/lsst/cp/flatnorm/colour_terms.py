# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Flat-field levels with colour terms: the separable model plus a low-rank interaction.

A lamp whose spectrum drifts between exposures, seen by sensor families that answer colour
differently (ITL and e2v on LSSTCam), makes flat levels separable only to ~1e-3: the rest is a
detector's colour response times the exposure's lamp colour.  With ``K`` colour terms the model
fitted to the matrix of levels (rows: detectors or amplifiers, columns: exposures) is

    log B[r, e] = g[r] + e[e] + sum_k u_k[r] v_k[e]

by least squares weighted by the pixel counts, with the outlier rejection of
`lsst.cp.flatnorm.scale_solver` (now on the residuals of this model).  ``K = 0`` is the separable
model; `solve_colour_scales` then returns `~lsst.cp.flatnorm.scale_solver.solve_separable_scales`'s
solution unchanged.

Solver: alternating least squares, each half-step exact.  Given the exposure colours ``v`` the
model is linear in ``(g, u, e)``: each row's ``(g[r], u[r])`` is eliminated from the normal
equations and the exposures' Schur complement (nExposures x nExposures) is solved directly, as
in the separable solver, so weakly linked exposures cost no accuracy.  Given ``(g, u)``, each
exposure's ``(e[e], v[e])`` is an independent small least-squares problem.  The sweeps stop when
the fitted log model of the used entries changes by at most ``tolerance`` (1e-10 by default);
the solution reports whether that happened within ``max_sweeps``.  The first ``v`` are the
leading right singular vectors of the count-weighted residuals of the separable fit.

Gauge, within each connected group (the model is unchanged by each of these moves):

- ``v_k`` has a count-weighted mean of zero over the exposures (weights: the used pixel counts of
  each exposure), so ``G = exp(g)`` is a row's response at the *reference colour*, that of the
  mean exposure;
- ``u_k`` has a count-weighted mean of zero over the rows (weights: each row's used pixel count),
  so ``E = exp(e)`` is the exposure's scale for the mean detector's colour response;
- the ``v_k`` are orthonormal under the exposure weights (unit count-weighted rms: ``u_k[r]`` is
  the log response change of row ``r`` per rms of the lamp colour), the ``u_k`` orthogonal under
  the row weights and ordered by decreasing size, and each ``v_k`` has a non-negative
  count-weighted covariance with the exposure order (a lamp drifting redder gives rising ``v``);
- ``G`` has a count-weighted mean of 1, as in the separable solver.

Rows (exposures) with fewer than ``K + 1`` used entries cannot have their colour response
(colour) measured: they are left out of the alternating fit, get ``u = 0`` (``v = 0``), and
their ``g`` (``e``) is then fitted to their entries with everything else fixed.  A group whose
remaining core is empty or split has no colour terms at all.

`choose_colour_terms` picks ``K`` from the data by held-out entries (cross-validation).
"""

from __future__ import annotations

__all__ = [
    "ColourSolution",
    "ColourFit",
    "HeldOutScores",
    "choose_colour_terms",
    "colour_residual_rms",
    "fit_colour_terms",
    "solve_colour_scales",
]

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

from .bordered_normal import BorderedNormalEquations, gram_blocks
from .scale_solver import (
    ScaleSolution,
    _check_inputs,
    _connected_groups,
    _least_squares,
    _prepare_levels,
    _residual_fields,
    _RobustFit,
    _solve_robustly,
    solve_separable_scales,
    valid_entries,
)

DEFAULT_TOLERANCE = 1e-10
"""Largest change of the fitted log model of any used entry between sweeps at convergence."""
DEFAULT_MAX_SWEEPS = 500
_RIDGE = 1e-12
"""Relative ridge on the colour blocks of the small per-row and per-exposure systems, so that a
degenerate block (data with no colour signal at all) gives zero instead of a singular matrix."""
_PLAIN_SWEEPS = 2
_STEP_LENGTHS = (1.0, 0.5, 0.25)
"""Fractions of the Newton step tried, in turn, before falling back to a plain sweep."""
_COST_SLACK = 1e-12
"""A Newton step is taken if it raises the weighted sum of squares by at most this fraction (its
rounding error near the minimum)."""
"""Sweeps of plain alternation before Newton steps are tried (to get near the minimum first)."""
HELD_OUT_FOLDS = 5
HELD_OUT_SEED = 20240915
HELD_OUT_MAX_SWEEPS = 50
"""Most sweeps of each held-out fit: its predictions are scored, not the exact minimum (a term
fitted to noise alone can take hundreds of sweeps to converge)."""
HELD_OUT_MIN_GAIN = 0.05
"""A model with more colour terms is chosen only if its held-out mean square residual is more than
this fraction below that of every model with fewer."""


@dataclass
class ColourSolution(ScaleSolution):
    """The result of `solve_colour_scales`: a `~lsst.cp.flatnorm.scale_solver.ScaleSolution` whose
    ``model`` is ``G[r] * E[e] * exp(sum_k u_k[r] v_k[e])``, with the colour terms.

    Attributes
    ----------
    row_colours : `numpy.ndarray`, (nRows, K)
        ``u``: colour response of each row (log response per unit of ``v``); 0 for rows whose
        colour response was not measured (see ``uncoloured_rows``) and rows with no used entry.
    column_colours : `numpy.ndarray`, (nColumns, K)
        ``v``: colour of each exposure, count-weighted mean 0 and rms 1; 0 for exposures whose
        colour was not measured (see ``uncoloured_columns``).
    n_terms : `int`
        ``K``.
    sweeps : `int`
        Alternating sweeps of the last fit (summed over groups).
    sweeps_converged : `bool`
        Whether every group's last fit met ``tolerance`` within ``max_sweeps``.
    model_change : `float`
        Largest change of the log model between the last two sweeps.
    uncoloured_rows, uncoloured_columns : `numpy.ndarray` of `int`
        Rows and columns with used entries whose colour term could not be fitted (fewer than
        ``K + 1`` used entries in the group's core, or a group without a core).
    """

    row_colours: np.ndarray
    column_colours: np.ndarray
    n_terms: int
    sweeps: int
    sweeps_converged: bool
    model_change: float
    uncoloured_rows: np.ndarray
    uncoloured_columns: np.ndarray

    @property
    def entry_factors(self) -> np.ndarray:
        """``exp(sum_k u_k[r] v_k[e])`` for every entry: the factor the exposure scale ``E`` of each
        entry is multiplied by to give the scale the combine divides that entry by."""
        return np.exp(self.row_colours @ self.column_colours.T)


@dataclass
class _Fit:
    """A fit of the model on a fixed set of used entries, in log space."""

    g: np.ndarray
    e: np.ndarray
    u: np.ndarray
    v: np.ndarray
    sweeps: int
    converged: bool
    change: float
    uncoloured_rows: np.ndarray
    uncoloured_columns: np.ndarray

    def log_model(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return self.g[:, np.newaxis] + self.e[np.newaxis, :] + self.u @ self.v.T


def solve_colour_scales(
    levels: np.ndarray,
    weights: np.ndarray | None = None,
    n_terms: int = 1,
    *,
    max_iterations: int = 10,
    outlier_sigma: float = 5.0,
    outlier_floor: float = 0.005,
    allow_disconnected: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    max_sweeps: int = DEFAULT_MAX_SWEEPS,
) -> ColourSolution:
    """Fit ``log B[r, e] = g[r] + e[e] + sum_k u_k[r] v_k[e]`` by robust count-weighted least squares.

    Parameters
    ----------
    levels : `numpy.ndarray`, (nRows, nColumns)
        Measured levels; rows are detectors or amplifiers, columns exposures.
    weights : `numpy.ndarray`, (nRows, nColumns), optional
        Pixel counts behind each level; 1 everywhere if `None`.
    n_terms : `int`, optional
        Number of colour terms ``K`` (0: the separable solution of
        `~lsst.cp.flatnorm.scale_solver.solve_separable_scales`, unchanged).
    max_iterations, outlier_sigma, outlier_floor, allow_disconnected
        As for `~lsst.cp.flatnorm.scale_solver.solve_separable_scales`; the outliers are judged
        on the residuals of this model.
    tolerance : `float`, optional
        The alternating sweeps stop when no used entry's log model changes by more than this.
    max_sweeps : `int`, optional
        Most sweeps per fit; ``sweeps_converged`` reports whether ``tolerance`` was met.

    Returns
    -------
    solution : `ColourSolution`

    Raises
    ------
    ValueError
        Raised if the arrays are not 2-d of the same shape, ``max_iterations < 1``,
        ``n_terms < 0``, ``tolerance <= 0`` or ``max_sweeps < 1``.
    lsst.cp.flatnorm.scale_solver.EmptyColumnError
        Raised if a column has no valid entry.
    lsst.cp.flatnorm.scale_solver.DisconnectedDataError
        Raised if the data split into groups and ``allow_disconnected`` is `False`.
    """
    if n_terms < 0:
        raise ValueError(f"n_terms must be at least 0; got {n_terms}.")
    if not tolerance > 0 or max_sweeps < 1:
        raise ValueError(f"tolerance must be > 0 and max_sweeps >= 1; got {tolerance}, {max_sweeps}.")
    if n_terms == 0:
        return _separable(solve_separable_scales(
            levels, weights, max_iterations=max_iterations, outlier_sigma=outlier_sigma,
            outlier_floor=outlier_floor, allow_disconnected=allow_disconnected))
    levels, weights, valid, log_levels = _prepare_levels(levels, weights, max_iterations)

    def fit(weight_used: np.ndarray, row_groups: np.ndarray, column_groups: np.ndarray, n_groups: int,
            previous: _Fit | None) -> _Fit:
        return _fit(log_levels, weight_used, row_groups, column_groups, n_groups, n_terms, tolerance,
                    max_sweeps, start=previous)

    robust = _solve_robustly(
        log_levels, valid, weights, fit, lambda fit: np.abs(log_levels - fit.log_model()),
        max_iterations=max_iterations, outlier_sigma=outlier_sigma, outlier_floor=outlier_floor,
        allow_disconnected=allow_disconnected,
    )
    return _package(log_levels, valid, robust, n_terms)


def _separable(solution: ScaleSolution) -> ColourSolution:
    """Wrap a separable solution as a colour solution with no terms (every array is the same)."""
    n_rows, n_columns = solution.model.shape
    fields = {name: getattr(solution, name) for name in ScaleSolution.__dataclass_fields__}
    return ColourSolution(
        **fields, row_colours=np.zeros((n_rows, 0)), column_colours=np.zeros((n_columns, 0)), n_terms=0,
        sweeps=0, sweeps_converged=True, model_change=0.0, uncoloured_rows=np.zeros(0, dtype=int),
        uncoloured_columns=np.zeros(0, dtype=int),
    )


def _fit(
    log_levels: np.ndarray,
    weights: np.ndarray,
    row_groups: np.ndarray,
    column_groups: np.ndarray,
    n_groups: int,
    n_terms: int,
    tolerance: float,
    max_sweeps: int,
    start: _Fit | None = None,
) -> _Fit:
    """Fit every connected group on its own (weights are zero outside the used entries)."""
    n_rows, n_columns = log_levels.shape
    total = _Fit(g=np.full(n_rows, np.nan), e=np.zeros(n_columns), u=np.zeros((n_rows, n_terms)),
                 v=np.zeros((n_columns, n_terms)), sweeps=0, converged=True, change=0.0,
                 uncoloured_rows=np.zeros(0, dtype=int), uncoloured_columns=np.zeros(0, dtype=int))
    uncoloured_rows, uncoloured_columns = [], []
    for k in range(n_groups):
        rows = np.flatnonzero(row_groups == k)
        columns = np.flatnonzero(column_groups == k)
        block = np.ix_(rows, columns)
        start_v = None if start is None else start.v[columns]
        fit = _fit_group(log_levels[block], weights[block], n_terms, tolerance, max_sweeps, start_v)
        total.g[rows], total.e[columns] = fit.g, fit.e
        total.u[rows], total.v[columns] = fit.u, fit.v
        total.sweeps += fit.sweeps
        total.converged &= fit.converged
        total.change = max(total.change, fit.change)
        uncoloured_rows.append(rows[fit.uncoloured_rows])
        uncoloured_columns.append(columns[fit.uncoloured_columns])
    if n_groups:
        total.uncoloured_rows = np.sort(np.concatenate(uncoloured_rows))
        total.uncoloured_columns = np.sort(np.concatenate(uncoloured_columns))
    return total


def _fit_group(
    y: np.ndarray, w: np.ndarray, n_terms: int, tolerance: float, max_sweeps: int,
    start_v: np.ndarray | None,
) -> _Fit:
    """Fit one connected group: the core by alternating least squares, then the rows and columns
    whose colour term cannot be measured, then the gauge of ``G``."""
    n_rows, n_columns = y.shape
    used = w > 0
    core_rows, core_columns = _core(used, n_terms + 1)
    g = np.zeros(n_rows)
    e = np.zeros(n_columns)
    u = np.zeros((n_rows, n_terms))
    v = np.zeros((n_columns, n_terms))
    sweeps, converged, change = 0, True, 0.0
    if core_rows.any():
        block = np.ix_(core_rows, core_columns)
        start = None if start_v is None else start_v[core_columns]
        g_c, e_c, u_c, v_c, sweeps, converged, change = _alternate(y[block], w[block], n_terms, tolerance,
                                                                   max_sweeps, start)
        g[core_rows], e[core_columns] = g_c, e_c
        u[core_rows], v[core_columns] = u_c, v_c
    else:
        column_groups = np.zeros(n_columns, dtype=int)
        g, e = _least_squares(y, w, column_groups, 1)
    outer_rows, outer_columns = ~core_rows, ~core_columns
    if core_rows.any() and (outer_rows.any() or outer_columns.any()):
        _fit_outer(y, w, g, e, u, v, outer_rows, outer_columns)
    g, e = _unit_mean_gauge(g, e, w)
    return _Fit(g=g, e=e, u=u, v=v, sweeps=sweeps, converged=converged, change=change,
                uncoloured_rows=np.flatnonzero(outer_rows & used.any(axis=1)),
                uncoloured_columns=np.flatnonzero(outer_columns))


def _core(used: np.ndarray, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns that keep at least ``minimum`` used entries among each other (peeled until
    stable); none if what is left does not form a single connected group."""
    rows = used.any(axis=1)
    columns = np.ones(used.shape[1], dtype=bool)
    while True:
        inner = used & rows[:, np.newaxis] & columns[np.newaxis, :]
        new_rows = inner.sum(axis=1) >= minimum
        new_columns = inner.sum(axis=0) >= minimum
        if np.array_equal(new_rows, rows) and np.array_equal(new_columns, columns):
            break
        rows, columns = new_rows & rows, new_columns & columns
    if not rows.any() or not columns.any():
        return np.zeros_like(rows), np.zeros_like(columns)
    inner = used[np.ix_(rows, columns)]
    if _connected_groups(inner)[2] != 1:
        return np.zeros_like(rows), np.zeros_like(columns)
    return rows, columns


def _alternate(
    y: np.ndarray, w: np.ndarray, n_terms: int, tolerance: float, max_sweeps: int, start_v: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, bool, float]:
    """Minimise on a core (every row and column has >= K + 1 used entries) by alternating least
    squares, accelerated by Newton steps on the exposure colours.

    Each sweep ends with the exact fit of ``(g, u, e)`` given ``v``.  The sweep's new ``v`` comes
    from a Newton step (full Hessian, bordered by the gauge conditions; at full, half or quarter
    length) when that lowers the weighted sum of squares, else from the exact fit of ``(e, v)``
    given ``(g, u)``, which never raises it.  Plain alternation converges linearly, slowly when the
    colour terms are weak against the noise (pure noise: hundreds of sweeps); Newton converges
    quadratically near the minimum.  Returns ``g, e, u, v`` in the colour gauge (``G`` not yet
    normalised), the number of sweeps, whether the tolerance was met, and the last change of the
    log model.
    """
    used = w > 0
    column_weight = w.sum(axis=0)
    if start_v is None or not np.any(start_v):
        g0, e0 = _least_squares(y, w, np.zeros(y.shape[1], dtype=int), 1)
        v = _leading_colours(np.where(used, y - g0[:, np.newaxis] - e0[np.newaxis, :], 0.0), w, n_terms)
    else:
        v = start_v
    v = _orthonormal_colours(v, column_weight)
    g, u, e = _solve_given_colours(y, w, v)
    model = g[:, np.newaxis] + e[np.newaxis, :] + u @ v.T
    cost = _cost(y, w, model)
    change = np.inf
    sweeps = 0
    while sweeps < max_sweeps and change > tolerance:
        sweeps += 1
        step = _newton_step(y, w, g, u, v, model) if sweeps > _PLAIN_SWEEPS else None
        trial = None
        for length in _STEP_LENGTHS if step is not None else ():
            # The loop runs only with a step, which mypy cannot see through the conditional iterable.
            trial = _orthonormal_colours(v + length * step, column_weight)  # type: ignore[operator]
            g_t, u_t, e_t = _solve_given_colours(y, w, trial)
            model_t = g_t[:, np.newaxis] + e_t[np.newaxis, :] + u_t @ trial.T
            cost_t = _cost(y, w, model_t)
            if cost_t <= cost * (1 + _COST_SLACK):
                break
            trial = None
        if trial is None:
            _, trial = _solve_given_responses(y, w, g, u)
            trial = _orthonormal_colours(trial, column_weight)
            g_t, u_t, e_t = _solve_given_colours(y, w, trial)
            model_t = g_t[:, np.newaxis] + e_t[np.newaxis, :] + u_t @ trial.T
            cost_t = _cost(y, w, model_t)
        change = float(np.max(np.abs(model_t - model)[used]))
        g, u, e, v, model, cost = g_t, u_t, e_t, trial, model_t, min(cost, cost_t)
    u, v, e = _colour_gauge(u, v, e, w)
    return g, e, u, v, sweeps, change <= tolerance, change


def _cost(y: np.ndarray, w: np.ndarray, model: np.ndarray) -> float:
    return float(np.sum(w * (y - model)**2))


def _newton_step(
    y: np.ndarray, w: np.ndarray, g: np.ndarray, u: np.ndarray, v: np.ndarray, model: np.ndarray
) -> np.ndarray | None:
    """The change of the exposure colours ``v`` in one Newton step on all parameters (full Hessian,
    bordered by the gauge conditions); `None` if the system is singular.

    (The Gauss-Newton matrix, always a descent direction, was tried where the full Hessian's step
    is not: it progresses no faster than a plain sweep there, at four times the cost.)"""
    residuals = np.where(w > 0, y - model, 0.0)
    wr = w * residuals
    x = np.column_stack([np.ones(y.shape[1]), v])
    z = np.column_stack([np.ones(y.shape[0]), u])
    try:
        equations = BorderedNormalEquations(w, u, v, residuals=residuals)
        _, step = equations.solve(wr @ x, wr.T @ z)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, ValueError):
        return None
    return step[:, 1:] if np.all(np.isfinite(step)) else None


def _leading_colours(residuals: np.ndarray, w: np.ndarray, n_terms: int) -> np.ndarray:
    """The ``n_terms`` leading right singular vectors of the count-weighted residual matrix."""
    weighted = np.sqrt(w) * residuals
    _, vectors = np.linalg.eigh(weighted.T @ weighted)
    return vectors[:, ::-1][:, :n_terms].copy()


def _orthonormal_colours(v: np.ndarray, column_weight: np.ndarray) -> np.ndarray:
    """Centre ``v`` (count-weighted mean 0) and make its columns orthonormal under the weights.

    The row fit given ``v`` depends only on the span of ``(1, v_1, ..., v_K)``, so this changes
    no model; it keeps the small systems well conditioned.  A column without any signal stays 0.
    """
    share = column_weight / column_weight.sum()
    v = v - share @ v
    root = np.sqrt(share)[:, np.newaxis]
    q, r = np.linalg.qr(root * v)
    keep = np.abs(np.diag(r)) > 1e-300
    q[:, ~keep] = 0.0
    return q / root


def _solve_given_colours(y: np.ndarray, w: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
    """Exact weighted least squares of ``y ~ g[r] + e[e] + u[r] . v[e]`` for fixed ``v``.

    Each row's ``(g, u)`` is eliminated; the Schur complement over the exposures is made positive
    definite by adding ``X X^T`` (``X = (1, v)`` spans its null space: shifting ``e`` by ``X a``
    is undone by the rows), which pins ``X^T e = 0`` and leaves the model unchanged.
    """
    n_rows, n_columns = y.shape
    x = np.column_stack([np.ones(n_columns), v])
    wy = w * y
    a = gram_blocks(w, x)
    _ridge(a, a[:, 0, 0])
    a_inverse = np.linalg.inv(a)
    cholesky = np.linalg.cholesky(a_inverse)
    z = np.matmul(x, cholesky).transpose(0, 2, 1) * w[:, np.newaxis, :]
    stacked = z.reshape(-1, n_columns)
    b = wy @ x
    t = np.einsum("rab,rb->ra", a_inverse, b)
    schur = np.diag(w.sum(axis=0)) - stacked.T @ stacked + x @ x.T
    rhs = wy.sum(axis=0) - np.einsum("ea,ea->e", x, w.T @ t)
    e = scipy.linalg.solve(schur, rhs, assume_a="pos")
    rho = np.einsum("rab,rb->ra", a_inverse, b - (w * e[np.newaxis, :]) @ x)
    return rho[:, 0], rho[:, 1:], e


def _solve_given_responses(
    y: np.ndarray, w: np.ndarray, g: np.ndarray, u: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact weighted least squares of each exposure's ``(e, v)`` for fixed ``(g, u)``."""
    n_rows = y.shape[0]
    x = np.column_stack([np.ones(n_rows), u])
    d = gram_blocks(w.T, x)
    _ridge(d, d[:, 0, 0])
    rhs = (w * (y - g[:, np.newaxis])).T @ x
    gamma = np.linalg.solve(d, rhs[..., np.newaxis])[..., 0]
    return gamma[:, 0], gamma[:, 1:]


def _ridge(blocks: np.ndarray, scale: np.ndarray) -> None:
    """Add a relative ridge to the colour part of each small normal matrix, in place."""
    n = blocks.shape[-1]
    if n > 1:
        colour = blocks[:, 1:, 1:]
        size = np.trace(colour, axis1=1, axis2=2) / (n - 1)
        ridge = _RIDGE * np.where(size > 0, size, scale) + 1e-300
        colour += ridge[:, np.newaxis, np.newaxis] * np.eye(n - 1)


def _colour_gauge(
    u: np.ndarray, v: np.ndarray, e: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move ``u``'s count-weighted mean into ``e``, rotate to orthogonal ``u`` of decreasing size,
    and fix the signs (``v`` is already centred and orthonormal)."""
    row_weight = w.sum(axis=1)
    column_weight = w.sum(axis=0)
    mean_u = (row_weight / row_weight.sum()) @ u
    u = u - mean_u
    e = e + v @ mean_u
    root = np.sqrt(row_weight / row_weight.sum())[:, np.newaxis]
    _, _, rotation_t = np.linalg.svd(root * u, full_matrices=False)
    u, v = u @ rotation_t.T, v @ rotation_t.T
    order = np.arange(v.shape[0]) - np.average(np.arange(v.shape[0]), weights=column_weight)
    signs = np.where(column_weight * order @ v < 0, -1.0, 1.0)
    return u * signs, v * signs, e


def _fit_outer(
    y: np.ndarray, w: np.ndarray, g: np.ndarray, e: np.ndarray, u: np.ndarray, v: np.ndarray,
    rows: np.ndarray, columns: np.ndarray,
) -> None:
    """Fit ``g`` of the rows and ``e`` of the columns outside the core, in place, by least squares
    on every used entry that involves one of them, with their colour terms 0 and the core fixed."""
    row_index = np.full(y.shape[0], -1)
    row_index[rows] = np.arange(rows.sum())
    column_index = np.full(y.shape[1], -1)
    column_index[columns] = rows.sum() + np.arange(columns.sum())
    entries = np.argwhere((w > 0) & (rows[:, np.newaxis] | columns[np.newaxis, :]))
    i, j = entries[:, 0], entries[:, 1]
    design = np.zeros((len(entries), rows.sum() + columns.sum()))
    known = np.zeros(len(entries))
    outer_row, outer_column = row_index[i] >= 0, column_index[j] >= 0
    design[np.flatnonzero(outer_row), row_index[i][outer_row]] = 1.0
    design[np.flatnonzero(outer_column), column_index[j][outer_column]] = 1.0
    known[~outer_row] += g[i][~outer_row]
    known[~outer_column] += e[j][~outer_column]
    known += np.einsum("nk,nk->n", u[i], v[j])
    root = np.sqrt(w[i, j])
    solution = np.linalg.lstsq(design * root[:, np.newaxis], (y[i, j] - known) * root, rcond=None)[0]
    g[rows] = solution[:rows.sum()]
    e[columns] = solution[rows.sum():]


def _unit_mean_gauge(g: np.ndarray, e: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale the group so that its count-weighted mean row scale ``G`` is 1; ``E`` absorbs it."""
    row_weight = w.sum(axis=1)
    rows = row_weight > 0
    shift = np.log(np.average(np.exp(g[rows]), weights=row_weight[rows]))
    g = np.where(rows, g - shift, np.nan)
    return g, e + shift


def _package(
    log_levels: np.ndarray, valid: np.ndarray, robust: _RobustFit[_Fit], n_terms: int
) -> ColourSolution:
    fit = robust.fit
    log_model = fit.log_model()
    with np.errstate(invalid="ignore"):  # rows without a solution have g = NaN
        log_residuals = np.where(valid, log_levels - log_model, np.nan)
    return ColourSolution(
        row_scales=np.exp(fit.g),
        column_scales=np.exp(fit.e),
        model=np.exp(log_model),
        **_residual_fields(log_residuals, valid, robust),
        **robust.solution_fields(),
        row_colours=fit.u,
        column_colours=fit.v,
        n_terms=n_terms,
        sweeps=fit.sweeps,
        sweeps_converged=fit.converged,
        model_change=fit.change,
        uncoloured_rows=fit.uncoloured_rows,
        uncoloured_columns=fit.uncoloured_columns,
    )


@dataclass
class HeldOutScores:
    """How well models with 0 to ``K`` colour terms predict entries they were not fitted to.

    Attributes
    ----------
    scores : `numpy.ndarray`, (K + 1,)
        Count-weighted mean square log residual of the held-out entries, by ``k``.
    chosen : `int`
        The ``k`` chosen: the largest whose score is more than ``min_gain`` below the score of
        every smaller ``k`` (0 if none is).
    n_held_out : `int`
        Entries scored (each is held out once).
    """

    scores: np.ndarray
    chosen: int
    n_held_out: int


@dataclass
class ColourFit:
    """A solution with ``K`` colour terms and what was measured to choose ``K``.

    Attributes
    ----------
    solution : `ColourSolution`
        The robust solution with the chosen number of terms.
    rms_by_terms : `list` [`float`]
        Count-weighted rms log residual of the used entries (those of ``solution``) fitted with
        ``k = 0 .. max_terms`` terms.
    held_out : `HeldOutScores` or `None`
        The held-out scores, if ``K`` was chosen from the data.
    """

    solution: ColourSolution
    rms_by_terms: list[float]
    held_out: HeldOutScores | None


def fit_colour_terms(
    levels: np.ndarray,
    weights: np.ndarray | None,
    max_terms: int,
    *,
    choose: bool = False,
    **solver_options: Any,
) -> ColourFit:
    """Solve with ``max_terms`` colour terms, or with the number `choose_colour_terms` picks.

    Parameters
    ----------
    levels, weights : `numpy.ndarray`, (nRows, nColumns)
        As for `solve_colour_scales`.
    max_terms : `int`
        ``K`` if ``choose`` is `False`; otherwise the largest ``k`` tried.
    choose : `bool`, optional
        Choose ``k`` in ``0 .. max_terms`` by held-out entries: the robust solution with
        ``max_terms`` gives the entries to use (outliers out), `choose_colour_terms` scores them,
        and the solution is computed again with the chosen ``k`` (``k = 0``: the separable solver).
    **solver_options
        Passed to `solve_colour_scales`.

    Returns
    -------
    fit : `ColourFit`
    """
    solution = solve_colour_scales(levels, weights, max_terms, **solver_options)
    held_out = None
    if choose and max_terms > 0:
        held_out = choose_colour_terms(levels, weights, max_terms, solution.used,
                                       tolerance=solver_options.get("tolerance", DEFAULT_TOLERANCE))
        if held_out.chosen != max_terms:
            solution = solve_colour_scales(levels, weights, held_out.chosen, **solver_options)
    fit_options = {key: value for key, value in solver_options.items() if key in ("tolerance", "max_sweeps")}
    return ColourFit(solution=solution,
                     rms_by_terms=colour_residual_rms(levels, weights, max_terms, solution, **fit_options),
                     held_out=held_out)


def colour_residual_rms(
    levels: np.ndarray, weights: np.ndarray | None, max_terms: int, solution: ColourSolution,
    **fit_options: Any,
) -> list[float]:
    """Count-weighted rms log residual of a solution's used entries fitted with 0 to ``max_terms``
    colour terms (no rejection; the solution's own ``k`` gives its ``rms``)."""
    rms = []
    for k in range(max_terms + 1):
        if k == solution.n_terms:
            rms.append(float(solution.rms))
            continue
        fitted = solve_colour_scales(np.where(solution.used, levels, np.nan), weights, k, outlier_sigma=0,
                                     allow_disconnected=True, **fit_options)
        rms.append(float(fitted.rms))
    return rms


def choose_colour_terms(
    levels: np.ndarray,
    weights: np.ndarray | None,
    max_terms: int,
    used: np.ndarray | None = None,
    *,
    folds: int = HELD_OUT_FOLDS,
    seed: int = HELD_OUT_SEED,
    min_gain: float = HELD_OUT_MIN_GAIN,
    tolerance: float = DEFAULT_TOLERANCE,
    max_sweeps: int = HELD_OUT_MAX_SWEEPS,
) -> HeldOutScores:
    """Choose the number of colour terms by held-out entries (``folds``-fold cross-validation).

    The used entries are split at random (fixed ``seed``) into ``folds`` parts.  Each part in turn
    is held out: models with ``k = 0 .. max_terms`` terms are fitted to the other entries (no
    rejection) and predict the held-out ones.  An entry is not held out if that would leave its
    row or exposure with fewer than ``max_terms + 1`` fitted entries; only entries every model
    predicts are scored.  The score of ``k`` is the count-weighted mean square of the held-out log
    residuals.  More terms always fit the fitted entries better, but predict held-out ones better
    only when they describe the data rather than the noise.

    Parameters
    ----------
    levels, weights : `numpy.ndarray`, (nRows, nColumns)
        As for `solve_colour_scales`.
    max_terms : `int`
        Largest ``k`` tried.
    used : `numpy.ndarray` of `bool`, optional
        Entries to use (e.g. a robust solution's, outliers out); every valid entry if `None`.
    folds : `int`, optional
        Number of parts.
    seed : `int`, optional
        Seed of the split.
    min_gain : `float`, optional
        ``k`` is chosen over every smaller number only if its score is lower by more than this
        fraction.
    tolerance, max_sweeps
        Of each held-out fit (`solve_colour_scales`).

    Returns
    -------
    scores : `HeldOutScores`
    """
    levels, weights = _check_inputs(levels, weights, 1)
    valid = valid_entries(levels, weights)
    used = valid if used is None else used & valid
    entries = np.argwhere(used)
    part = np.random.default_rng(seed).integers(folds, size=len(entries))
    predictions = np.full((max_terms + 1,) + levels.shape, np.nan)
    held_once = np.zeros(levels.shape, dtype=bool)
    for f in range(folds):
        held = np.zeros(levels.shape, dtype=bool)
        held[tuple(entries[part == f].T)] = True
        train = used & ~held
        for axis in (1, 0):
            short = train.sum(axis=axis) < max_terms + 1
            held &= ~(short[:, np.newaxis] if axis == 1 else short[np.newaxis, :])
            train = used & ~held
        if not held.any():
            continue
        held_once |= held
        for k in range(max_terms + 1):
            fitted = solve_colour_scales(np.where(train, levels, np.nan), weights, k, outlier_sigma=0,
                                         allow_disconnected=True, tolerance=tolerance, max_sweeps=max_sweeps)
            predictions[k][held] = np.log(fitted.model[held])
    scored = held_once & np.isfinite(predictions).all(axis=0)
    residuals = np.log(np.where(scored, levels, 1.0))[np.newaxis] - predictions
    weight = np.where(scored, weights, 0.0)
    scores = np.array([np.sum(weight * np.where(scored, residuals[k], 0.0)**2) / weight.sum()
                       if weight.sum() > 0 else np.nan for k in range(max_terms + 1)])
    chosen = 0
    for k in range(1, max_terms + 1):
        if scores[k] < (1 - min_gain) * np.min(scores[:k]):
            chosen = k
    return HeldOutScores(scores=scores, chosen=chosen, n_held_out=int(scored.sum()))
