# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The normal equations of the log model with colour terms, bordered by the gauge conditions.

For ``log B[r, e] = g[r] + e[e] + sum_k u_k[r] v_k[e]`` weighted by ``w[r, e]``, the unknowns come
in blocks of ``m = K + 1``: one per row, ``rho[r] = (g[r], u[r])``, with derivatives
``x[e] = (1, v[e])``, and one per exposure, ``gamma[e] = (e[e], v[e])``, with derivatives
``y[r] = (1, u[r])``.  The Hessian of ``1/2 sum w (log B - model)^2`` is

- ``A[r] = sum_e w x[e] x[e]^T`` on the row blocks (block diagonal),
- ``D[e] = sum_r w y[r] y[r]^T`` on the exposure blocks (block diagonal),
- ``w[r, e] (x[e] y[r]^T - res[r, e] J)`` between ``rho[r]`` and ``gamma[e]``, where ``J`` is the
  identity on the colour parts (``d2 model / du_k dv_k = 1``) and ``res`` the residual; the
  Gauss-Newton (Fisher) matrix leaves that term out.

The model is unchanged by ``(K + 1)^2`` moves (the gauge), so the matrix is bordered by as many
linear conditions ``C theta = 0`` (`gauge_conditions`).  The row blocks are eliminated (their
``A[r]`` are small and positive definite); what is left is one dense matrix over the exposure
blocks and the Lagrange multipliers, ``(K + 1) nExposures + (K + 1)^2`` square, factorised once
and used for Newton steps (`lsst.cp.flatnorm.colour_terms`) and for the covariance of the scales
(`lsst.cp.flatnorm.scale_uncertainty`).
"""

from __future__ import annotations

__all__ = ["BorderedNormalEquations", "gauge_conditions", "gram_blocks"]

import numpy as np
import scipy.linalg


def gram_blocks(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``sum_j w[i, j] x[j, a] x[j, b]`` for every ``i``, as one matrix product: (n, m, m)."""
    m = x.shape[1]
    products = (x[:, :, np.newaxis] * x[:, np.newaxis, :]).reshape(x.shape[0], m * m)
    return (w @ products).reshape(w.shape[0], m, m)


def gauge_conditions(
    w: np.ndarray, v: np.ndarray, row_scales: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The gauge conditions, linearised: on the row blocks (nC, nRows, m) and the exposure blocks.

    In order: ``sum_r W[r] G[r] dg[r] = 0`` (``G = 1`` if ``row_scales`` is `None`); for each
    ``k``, ``sum_r W[r] du_k[r] = 0``; for each ``k``, ``sum_e N[e] dv_k[e] = 0``; for each
    ``(a, b)``, ``sum_e N[e] v_a[e] dv_b[e] = 0``.  ``W`` and ``N`` are the row and exposure sums
    of ``w``.  Each condition is scaled to the mean of ``N`` (which changes no solution, only the
    conditioning).
    """
    n_rows, n_columns = w.shape
    n_terms = v.shape[1]
    m = n_terms + 1
    row_weight, column_weight = w.sum(axis=1), w.sum(axis=0)
    n_conditions = 1 + 2 * n_terms + n_terms**2
    on_rows = np.zeros((n_conditions, n_rows, m))
    on_columns = np.zeros((n_conditions, n_columns, m))
    on_rows[0, :, 0] = row_weight * (1.0 if row_scales is None else row_scales)
    for k in range(n_terms):
        on_rows[1 + k, :, 1 + k] = row_weight
        on_columns[1 + n_terms + k, :, 1 + k] = column_weight
        for b in range(n_terms):
            on_columns[1 + 2 * n_terms + k * n_terms + b, :, 1 + b] = column_weight * v[:, k]
    size = np.abs(on_rows).sum(axis=(1, 2)) + np.abs(on_columns).sum(axis=(1, 2))
    factor = column_weight.mean() / np.where(size > 0, size, 1.0)
    return on_rows * factor[:, np.newaxis, np.newaxis], on_columns * factor[:, np.newaxis, np.newaxis]


class BorderedNormalEquations:
    """The bordered normal equations of one connected block, with the row blocks eliminated.

    Parameters
    ----------
    w : `numpy.ndarray`, (nRows, nColumns)
        Weights, 0 outside the used entries; every row needs ``A[r]`` positive definite.
    u : `numpy.ndarray`, (nRows, K)
        Colour responses at the expansion point.
    v : `numpy.ndarray`, (nColumns, K)
        Exposure colours at the expansion point.
    row_scales : `numpy.ndarray`, (nRows,), optional
        ``G`` for the first gauge condition (see `gauge_conditions`).
    residuals : `numpy.ndarray`, (nRows, nColumns), optional
        Log residuals at the expansion point, for the full Hessian; `None` for the Gauss-Newton
        (Fisher) matrix.
    """

    def __init__(
        self,
        w: np.ndarray,
        u: np.ndarray,
        v: np.ndarray,
        row_scales: np.ndarray | None = None,
        residuals: np.ndarray | None = None,
    ):
        n_rows, n_columns = w.shape
        m = u.shape[1] + 1
        self.shape, self.m = (n_rows, n_columns), m
        x = np.column_stack([np.ones(n_columns), v])
        y = np.column_stack([np.ones(n_rows), u])
        on_rows, on_columns = gauge_conditions(w, v, row_scales)
        n_conditions = on_rows.shape[0]
        self.a_inverse = np.linalg.inv(gram_blocks(w, x))
        self.cholesky = np.linalg.cholesky(self.a_inverse)  # L L^T = A^-1, (rows, m, m)
        # M[r] = L[r]^T Q[r], Q[r] coupling row r's block to (exposure blocks, multipliers).
        xl = np.matmul(x, self.cholesky) * w[:, :, np.newaxis]  # (rows, exposures, c)
        coupling = xl.transpose(0, 2, 1)[:, :, :, np.newaxis] * y[:, np.newaxis, np.newaxis, :]
        if residuals is not None:
            wr = w * residuals
            coupling[:, :, :, 1:] -= (self.cholesky[:, 1:, :].transpose(0, 2, 1)[:, :, np.newaxis, :]
                                      * wr[:, np.newaxis, :, np.newaxis])
        multipliers = np.einsum("jra,rac->rcj", on_rows, self.cholesky)
        n_outer = n_columns * m + n_conditions
        self.stacked = np.concatenate([coupling.reshape(n_rows, m, n_columns * m), multipliers], axis=2)
        bordered = np.zeros((n_outer, n_outer))
        d = gram_blocks(w.T, y)
        diagonal = np.arange(n_columns) * m
        for b in range(m):
            for c in range(m):
                bordered[diagonal + b, diagonal + c] = d[:, b, c]
        bordered[n_columns * m:, :n_columns * m] = on_columns.reshape(n_conditions, n_columns * m)
        bordered[:n_columns * m, n_columns * m:] = bordered[n_columns * m:, :n_columns * m].T
        flat = self.stacked.reshape(n_rows * m, n_outer)
        self.schur = bordered - flat.T @ flat
        self._lu = None

    def solve(self, row_rhs: np.ndarray, column_rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Solve the bordered system for right-hand sides on the row and exposure blocks (the
        conditions' right-hand side is 0).

        Returns
        -------
        row_solution : `numpy.ndarray`, (nRows, m)
        column_solution : `numpy.ndarray`, (nColumns, m)
        """
        n_rows, n_columns = self.shape
        if self._lu is None:
            self._lu = scipy.linalg.lu_factor(self.schur)
        lt_f = np.einsum("rac,ra->rc", self.cholesky, row_rhs)  # L^T f
        outer_rhs = np.concatenate([column_rhs.ravel(), np.zeros(self.schur.shape[0] - n_columns * self.m)])
        outer_rhs -= np.einsum("rcj,rc->j", self.stacked, lt_f)
        outer = scipy.linalg.lu_solve(self._lu, outer_rhs)
        rows = np.einsum("rac,rc->ra", self.cholesky, lt_f - self.stacked @ outer)
        return rows, outer[:n_columns * self.m].reshape(n_columns, self.m)

    def variances(self) -> tuple[np.ndarray, np.ndarray]:
        """Diagonal of the inverse's ``g`` and ``e`` entries (the variances per unit ``s^2``)."""
        n_columns = self.shape[1]
        inverse = scipy.linalg.inv(self.schur)
        h = np.einsum("rcj,rc->rj", self.stacked, self.cholesky[:, 0, :])
        row_variance = self.a_inverse[:, 0, 0] + np.einsum("rj,rj->r", h @ inverse, h)
        return row_variance, np.diag(inverse)[:n_columns * self.m:self.m].copy()
