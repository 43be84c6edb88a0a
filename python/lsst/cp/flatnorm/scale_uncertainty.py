# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""1-sigma uncertainties of the normalization's scales, from the weighted least squares.

The solvers (`lsst.cp.flatnorm.scale_solver`, `lsst.cp.flatnorm.colour_terms`) fit

    log B[r, e] = g[r] + e[e] + sum_k u_k[r] v_k[e]        (K >= 0 colour terms)

weighting each used entry by its pixel count ``w[r, e]``.  The weights give the entries'
relative variances, ``Var(log B[r, e]) = s^2 / w[r, e]``; the scale ``s^2`` is measured from the
residuals of the used entries,

    s^2 = sum w r^2 / (n - p),   p = (K + 1) (nRows + nExposures) - (K + 1)^2,

``n`` the number of used entries and ``p`` the number of parameters the data determine (the
``(K + 1)^2`` moves that change no model are fixed by the gauge), summed over connected groups.

The covariance of the parameters in the package's gauge is ``s^2`` times the upper-left block of
the inverse of the bordered (Lagrange) matrix ``[[F, C^T], [C, 0]]``: ``F`` the Fisher matrix
(``J^T W J``, ``J`` the derivatives of the log model at the solution) and ``C`` the gauge
conditions linearised at the solution,

- ``sum_r W[r] G[r] dg[r] = 0``  (count-weighted mean of ``G`` is 1; ``W[r]`` the used pixel count
  of row ``r``),
- ``sum_e N[e] dv_k[e] = 0`` and ``sum_r W[r] du_k[r] = 0``  (centred colours and responses;
  ``N[e]`` the used pixel count of exposure ``e``),
- ``sum_e N[e] v_a[e] dv_b[e] = 0`` for all ``a, b``  (no rotation of the colour terms, which
  moves no ``g`` or ``e``).

The row unknowns ``(g[r], u[r])`` are eliminated block by block, so only a matrix of the
exposures' unknowns and the conditions, ``(K + 1) nExposures + (K + 1)^2`` square, is inverted.
The relative 1-sigma uncertainties are ``sigma(G[r]) / G[r] = sqrt(Var g[r])`` and
``sigma(E[e]) / E[e] = sqrt(Var e[e])``.

Rows and exposures whose colour term was not fitted (`lsst.cp.flatnorm.colour_terms`, fewer than
``K + 1`` used entries) get ``Var g[r] = s^2 / W[r] + sum_e (w[r, e] / W[r])^2 Var e[e]``
(and the same for an exposure over its rows), an approximation that neglects correlations.
"""

from __future__ import annotations

__all__ = ["ScaleUncertainties", "scale_uncertainties"]

from dataclasses import dataclass

import numpy as np

from .bordered_normal import BorderedNormalEquations
from .scale_solver import ScaleSolution


@dataclass
class ScaleUncertainties:
    """Relative 1-sigma uncertainties of a solution's scales, in the package's gauge.

    Attributes
    ----------
    row_errors : `numpy.ndarray`, (nRows,)
        ``sigma(G) / G``; NaN for a row with no used entry (or when ``dof <= 0``).
    column_errors : `numpy.ndarray`, (nColumns,)
        ``sigma(E) / E``.
    scatter : `float`
        ``s``: the measured residual scatter of a log level per unit weight
        (``sqrt(sum w r^2 / dof)``); a level with ``w`` pixels scatters by ``s / sqrt(w)``.
    dof : `int`
        Used entries minus determined parameters.
    """

    row_errors: np.ndarray
    column_errors: np.ndarray
    scatter: float
    dof: int


def scale_uncertainties(solution: ScaleSolution, weights: np.ndarray | None = None) -> ScaleUncertainties:
    """Compute the relative 1-sigma uncertainties of ``G`` and ``E`` of a solution.

    Parameters
    ----------
    solution : `~lsst.cp.flatnorm.scale_solver.ScaleSolution`
        The separable solution, or a `~lsst.cp.flatnorm.colour_terms.ColourSolution`.
    weights : `numpy.ndarray`, (nRows, nColumns), optional
        The pixel counts the solution was weighted by; 1 everywhere if `None`.

    Returns
    -------
    uncertainties : `ScaleUncertainties`
    """
    used = solution.used
    w = np.where(used, 1.0 if weights is None else np.asarray(weights, dtype=float), 0.0)
    n_rows, n_columns = used.shape
    g = np.log(solution.row_scales)
    u = getattr(solution, "row_colours", np.zeros((n_rows, 0)))
    v = getattr(solution, "column_colours", np.zeros((n_columns, 0)))
    outer_rows = np.zeros(n_rows, dtype=bool)
    outer_columns = np.zeros(n_columns, dtype=bool)
    outer_rows[getattr(solution, "uncoloured_rows", [])] = True
    outer_columns[getattr(solution, "uncoloured_columns", [])] = True

    row_variance = np.full(n_rows, np.nan)
    column_variance = np.full(n_columns, np.nan)
    n_parameters = 0
    for k in range(solution.n_groups):
        rows = solution.row_groups == k
        columns = solution.column_groups == k
        core_rows, core_columns = rows & ~outer_rows, columns & ~outer_columns
        if not core_rows.any():  # a group without colour terms: every row is in its core
            core_rows, core_columns = rows, columns
        block = np.ix_(core_rows, core_columns)
        terms = _fitted_terms(u[core_rows], v[core_columns])
        row_variance[core_rows], column_variance[core_columns] = _unit_variances(
            w[block], np.exp(g[core_rows]), u[core_rows][:, terms], v[core_columns][:, terms])
        n_core = int(terms.sum()) + 1
        n_parameters += n_core * (core_rows.sum() + core_columns.sum()) - n_core**2
        n_parameters += int((rows & ~core_rows).sum() + (columns & ~core_columns).sum())
        _outer_variances(w, row_variance, column_variance, rows & ~core_rows, columns & ~core_columns)

    residuals = np.where(used, np.nan_to_num(solution.log_residuals), 0.0)
    dof = int(used.sum()) - n_parameters
    scatter = float(np.sqrt(np.sum(w * residuals**2) / dof)) if dof > 0 else np.nan
    return ScaleUncertainties(row_errors=scatter * np.sqrt(row_variance),
                              column_errors=scatter * np.sqrt(column_variance), scatter=scatter, dof=dof)


def _fitted_terms(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The colour terms with any signal (a term fitted to exactly separable data is zero)."""
    return (np.abs(u).max(axis=0, initial=0.0) > 0) & (np.abs(v).max(axis=0, initial=0.0) > 0)


def _unit_variances(
    w: np.ndarray, row_scales: np.ndarray, u: np.ndarray, v: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Variances of ``g`` and ``e`` per unit ``s^2`` in one connected block: the diagonal of the
    inverse of the bordered Fisher matrix (`~lsst.cp.flatnorm.bordered_normal`)."""
    return BorderedNormalEquations(w, u, v, row_scales=row_scales).variances()


def _outer_variances(
    w: np.ndarray, row_variance: np.ndarray, column_variance: np.ndarray, rows: np.ndarray,
    columns: np.ndarray,
) -> None:
    """Approximate variances (per unit ``s^2``) of the rows and exposures outside a core, in place:
    exposures from the rows they share, then rows from all their exposures, without correlations."""
    if columns.any():
        cw = w[:, columns]
        share = cw / cw.sum(axis=0)
        known = np.where(np.isfinite(row_variance), row_variance, 0.0)
        column_variance[columns] = 1.0 / cw.sum(axis=0) + (share**2 * known[:, np.newaxis]).sum(axis=0)
    if rows.any():
        rw = w[rows]
        share = rw / rw.sum(axis=1)[:, np.newaxis]
        known = np.where(np.isfinite(column_variance), column_variance, 0.0)
        row_variance[rows] = 1.0 / rw.sum(axis=1) + (share**2 * known[np.newaxis, :]).sum(axis=1)
