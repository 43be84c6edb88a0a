# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Separable decomposition of flat-field background levels, ``B[row, exp] = G[row] * E[exp]``.

This module is the numerical core of flat normalization and knows nothing of the butler: it
takes a matrix of measured levels (rows are detectors or amplifiers, columns are exposures) and
optional pixel counts, and returns the exact count-weighted least-squares solution of

    log B[i, j] = g[i] + e[j]

with robust rejection of entries that do not fit the model.

Exactness: eliminating the row unknowns from the normal equations leaves a weighted graph
Laplacian over the columns (the Schur complement).  It is solved directly, one gauge condition
per connected component of the row-column graph, so the result does not depend on how weakly
the exposures are linked (an alternating-means scheme converges geometrically at a rate set by
that linkage, and stays biased after a fixed number of sweeps).

Robustness: entries whose log residual exceeds ``max(outlier_sigma * sigma, outlier_floor)``
(``sigma`` a MAD estimate over the used entries) are rejected and the system is solved again,
until the rejected set stops changing.  The first residuals come from a median polish so that a
single wild entry cannot hide itself by pulling the least-squares solution.  A rejection that
would split the data into more unconnected groups than the valid entries form is not applied:
the entries linking two sets of exposures are the only measure of their relative scale.  Nor does
a rejection take every valid entry of a row or of a column: when all of them look deviant, the
deviation is that row's (or exposure's) own scale, which the least squares then measure.

Gauge: within each connected group the row scales ``G`` are scaled so that their mean weighted
by each row's total used pixel count is 1, and ``E`` absorbs the inverse factor.
"""

from __future__ import annotations

__all__ = [
    "DisconnectedDataError",
    "EmptyColumnError",
    "ScaleSolution",
    "EntryFlag",
    "solve_separable_scales",
    "valid_entries",
]

import enum
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.csgraph

_MAD_TO_SIGMA = 1.4826
_MAD_SAMPLE_SIZE = 50_000


class EntryFlag(enum.IntEnum):
    """Status of one (row, exposure) entry in a solution."""

    USED = 0
    """Finite, positive, positive weight, and kept by outlier rejection."""
    INVALID = 1
    """Not finite, not positive, or zero/negative/non-finite weight: never entered any sum."""
    REJECTED = 2
    """Valid, but rejected as an outlier of the separable model."""


class EmptyColumnError(ValueError):
    """Raised when an exposure (column) has no valid entry to scale it by.

    Attributes
    ----------
    columns : `list` [`int`]
        Indices of the columns without a valid entry.
    """

    def __init__(self, columns: list[int]):
        self.columns = columns
        super().__init__(f"Exposure columns {columns} have no valid (finite, positive, weighted) entry.")


class DisconnectedDataError(ValueError):
    """Raised when the row-exposure graph splits and the caller asked for a single solution.

    Attributes
    ----------
    row_groups, column_groups : `list` [`list` [`int`]]
        Row and column indices of each connected group.
    """

    def __init__(self, row_groups: list[list[int]], column_groups: list[list[int]]):
        self.row_groups = row_groups
        self.column_groups = column_groups
        described = "; ".join(
            f"group {k}: rows {rows}, exposure columns {cols}"
            for k, (rows, cols) in enumerate(zip(row_groups, column_groups))
        )
        super().__init__(
            f"The detector-exposure data split into {len(row_groups)} unconnected groups whose relative "
            f"scales cannot be measured: {described}."
        )


@dataclass
class ScaleSolution:
    """The result of `solve_separable_scales`.

    Attributes
    ----------
    row_scales : `numpy.ndarray`, (nRows,)
        ``G``; NaN for a row with no used entry (see ``empty_rows``).
    column_scales : `numpy.ndarray`, (nColumns,)
        ``E``.
    model : `numpy.ndarray`, (nRows, nColumns)
        ``G[i] * E[j]`` for every entry, masked or not.
    log_residuals : `numpy.ndarray`, (nRows, nColumns)
        ``log B - log model`` where ``B`` is valid, NaN elsewhere.
    flags : `numpy.ndarray` of `int`, (nRows, nColumns)
        `EntryFlag` value of every entry.
    row_groups, column_groups : `numpy.ndarray` of `int`
        Connected group of every row and column (-1 for a row with no used entry).
    n_groups : `int`
        Number of connected groups.
    iterations : `int`
        Solve-and-reject rounds performed.
    converged : `bool`
        Whether the rejected set stopped changing within the allowed rounds.
    rms : `float`
        Weighted RMS of the log residuals of the used entries.
    sigma : `float`
        Robust (MAD) scatter of the log residuals of the used entries.
    """

    row_scales: np.ndarray
    column_scales: np.ndarray
    model: np.ndarray
    log_residuals: np.ndarray
    flags: np.ndarray
    row_groups: np.ndarray
    column_groups: np.ndarray
    n_groups: int
    iterations: int
    converged: bool
    rms: float
    sigma: float

    @property
    def rejected(self) -> np.ndarray:
        """Boolean mask of the entries rejected as outliers."""
        return self.flags == EntryFlag.REJECTED

    @property
    def used(self) -> np.ndarray:
        """Boolean mask of the entries used in the final solution."""
        return self.flags == EntryFlag.USED

    @property
    def empty_rows(self) -> np.ndarray:
        """Indices of the rows with no used entry (their scale is NaN)."""
        return np.flatnonzero(self.row_groups < 0)

    def group_members(self) -> tuple[list[list[int]], list[list[int]]]:
        """Return the row and the column indices of each connected group, group by group."""
        return _group_members(self.row_groups, self.column_groups, self.n_groups)


def valid_entries(levels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Return the mask of entries that may enter the fit: finite, > 0, with finite weight > 0."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(levels) & (levels > 0) & np.isfinite(weights) & (weights > 0)


def solve_separable_scales(
    levels: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    max_iterations: int = 10,
    outlier_sigma: float = 5.0,
    outlier_floor: float = 0.005,
    allow_disconnected: bool = False,
) -> ScaleSolution:
    """Decompose ``levels[i, j] ~ G[i] * E[j]`` by robust weighted least squares in log space.

    Parameters
    ----------
    levels : `numpy.ndarray`, (nRows, nColumns)
        Measured background levels; rows are detectors or amplifiers, columns exposures.
    weights : `numpy.ndarray`, (nRows, nColumns), optional
        Pixel counts behind each level; 1 everywhere if `None`.
    max_iterations : `int`, optional
        Maximum number of solve-and-reject rounds (at least 1).
    outlier_sigma : `float`, optional
        Rejection threshold in units of the robust scatter of the log residuals; ``<= 0`` or
        infinite disables rejection.
    outlier_floor : `float`, optional
        Log residuals at or below this are never rejected, whatever the scatter (so that
        noise-free or nearly separable data keep every entry).
    allow_disconnected : `bool`, optional
        If `False`, raise `DisconnectedDataError` when the data split into groups; if `True`,
        solve each group with its own gauge.

    Returns
    -------
    solution : `ScaleSolution`

    Raises
    ------
    ValueError
        Raised if the arrays are not 2-d of the same shape, or ``max_iterations < 1``.
    EmptyColumnError
        Raised if a column has no valid entry.
    DisconnectedDataError
        Raised if the data split into groups and ``allow_disconnected`` is `False`.
    """
    levels, weights, valid, log_levels = _prepare_levels(levels, weights, max_iterations)

    def fit(weight_used: np.ndarray, row_groups: np.ndarray, column_groups: np.ndarray, n_groups: int,
            previous: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        return _least_squares(log_levels, weight_used, column_groups, n_groups)

    robust = _solve_robustly(
        log_levels, valid, weights, fit, lambda ge: _separable_distance(log_levels, *ge),
        max_iterations=max_iterations, outlier_sigma=outlier_sigma, outlier_floor=outlier_floor,
        allow_disconnected=allow_disconnected,
    )
    g, e = _fix_gauge(*robust.fit, robust.weights, robust.row_groups, robust.column_groups, robust.n_groups)
    return _package(log_levels, valid, robust, g, e)


type _FitFunction[FitT] = Callable[[np.ndarray, np.ndarray, np.ndarray, int, FitT | None], FitT]
"""``fit(weight_used, row_groups, column_groups, n_groups, previous)``, as `_solve_robustly` calls it."""


@dataclass
class _RobustFit[FitT]:
    """What `_solve_robustly` returns: the last fit and the entries and groups it was made on."""

    fit: FitT
    """The fit callable's last result."""
    used: np.ndarray
    weights: np.ndarray
    """The weights of the used entries, zero elsewhere."""
    row_groups: np.ndarray
    column_groups: np.ndarray
    n_groups: int
    iterations: int
    converged: bool

    def solution_fields(self) -> dict:
        """The `ScaleSolution` fields about the groups and the rejection rounds."""
        return dict(row_groups=self.row_groups, column_groups=self.column_groups, n_groups=self.n_groups,
                    iterations=self.iterations, converged=self.converged)


def _prepare_levels(
    levels: np.ndarray, weights: np.ndarray | None, max_iterations: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check the inputs and return ``(levels, weights, valid, log_levels)``, ``log_levels`` 0 where
    not valid; raise `EmptyColumnError` if a column has no valid entry."""
    levels, weights = _check_inputs(levels, weights, max_iterations)
    valid = valid_entries(levels, weights)
    empty_columns = np.flatnonzero(~valid.any(axis=0))
    if empty_columns.size:
        raise EmptyColumnError(empty_columns.tolist())
    log_levels = np.where(valid, np.log(np.where(valid, levels, 1.0)), 0.0)
    return levels, weights, valid, log_levels


def _solve_robustly[FitT](
    log_levels: np.ndarray,
    valid: np.ndarray,
    weights: np.ndarray,
    fit: _FitFunction[FitT],
    distance: Callable[[FitT], np.ndarray],
    *,
    max_iterations: int,
    outlier_sigma: float,
    outlier_floor: float,
    allow_disconnected: bool,
) -> _RobustFit[FitT]:
    """Fit, reject outliers and fit again until the rejected set stops changing.

    Parameters
    ----------
    log_levels, valid, weights : `numpy.ndarray`, (nRows, nColumns)
        From `_prepare_levels`.
    fit : callable
        ``fit(weight_used, row_groups, column_groups, n_groups, previous)`` fits the model to the
        entries of non-zero ``weight_used``; ``previous`` is its last result (`None` at first).
    distance : callable
        ``distance(result)``: absolute log residual of every entry from a ``fit`` result.
    max_iterations, outlier_sigma, outlier_floor, allow_disconnected
        As for `solve_separable_scales`.

    Returns
    -------
    robust : `_RobustFit`
    """
    rejecting = bool(np.isfinite(outlier_sigma) and outlier_sigma > 0)
    n_valid_groups = _connected_groups(valid)[2]

    def kept(distance: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        candidate = _reject_distance(distance, valid, outlier_sigma, outlier_floor, keep_rows=True)
        return _keep_connected(candidate, fallback, n_valid_groups)

    used = valid
    if rejecting:
        used = kept(_separable_distance(log_levels, *_median_polish(log_levels, valid)), valid)
    converged = not rejecting
    iterations = 0
    result: FitT | None = None
    while True:
        iterations += 1
        row_groups, column_groups, n_groups = _connected_groups(used)
        if n_groups > 1 and not allow_disconnected:
            raise DisconnectedDataError(*_group_members(row_groups, column_groups, n_groups))
        weight_used = np.where(used, weights, 0.0)
        result = fit(weight_used, row_groups, column_groups, n_groups, result)
        if not rejecting:
            break
        with np.errstate(invalid="ignore"):  # rows without a solution have g = NaN
            new_used = kept(distance(result), used)
        if np.array_equal(new_used, used):
            converged = True
            break
        if iterations >= max_iterations:
            break
        used = new_used
    return _RobustFit(fit=result, used=used, weights=weight_used, row_groups=row_groups,
                      column_groups=column_groups, n_groups=n_groups, iterations=iterations,
                      converged=converged)


def _check_inputs(
    levels: np.ndarray, weights: np.ndarray | None, max_iterations: int
) -> tuple[np.ndarray, np.ndarray]:
    levels = np.asarray(levels, dtype=float)
    if levels.ndim != 2:
        raise ValueError(f"The level matrix must be 2-d (rows x exposures); got shape {levels.shape}.")
    weights = np.ones_like(levels) if weights is None else np.asarray(weights, dtype=float)
    if weights.shape != levels.shape:
        raise ValueError(f"Weights shape {weights.shape} does not match levels shape {levels.shape}.")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1; got {max_iterations}.")
    return levels, weights


def _median_polish(log_levels: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Robust starting estimate of (g, e): a median polish of the valid entries, column medians
    first, then rows and columns in turn until neither moves by more than `_POLISH_TOLERANCE` (at
    most `_POLISH_MAX_SWEEPS` sweeps).

    Starting from the columns removes the lamp levels, the largest variation, first.  With every
    entry present one and a half sweeps are enough, but where entries are missing (a detector not
    read out, a masked amplifier) the first column medians are taken over different rows, and a
    row measured in few exposures inherits their differences until the sweeps settle them; a start
    that far off would reject that row's good entries.
    """
    data = np.where(used, log_levels, np.nan)
    e = _nanmedian_last_axis(data.T)
    g = _nanmedian_last_axis(data - e[np.newaxis, :])
    e = _nanmedian_last_axis((data - g[:, np.newaxis]).T)
    for _ in range(_POLISH_MAX_SWEEPS):
        dg = _nanmedian_last_axis(data - g[:, np.newaxis] - e[np.newaxis, :])
        g = g + dg
        de = _nanmedian_last_axis((data - g[:, np.newaxis] - e[np.newaxis, :]).T)
        e = e + de
        if max(np.max(np.abs(dg), initial=0.0), np.max(np.abs(de), initial=0.0)) <= _POLISH_TOLERANCE:
            break
    return g, e


def _nanmedian_last_axis(data: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN (0 where all are NaN); one sort, no Python loop.

    ``numpy.nanmedian`` loops over rows in Python for 2-d input and dominated the solve time.
    """
    ordered = np.sort(data, axis=-1)  # NaN sorts last
    count = np.isfinite(data).sum(axis=-1)
    low = np.take_along_axis(ordered, np.maximum(count - 1, 0)[:, np.newaxis] // 2, axis=-1)[:, 0]
    high = np.take_along_axis(ordered, (count // 2)[:, np.newaxis], axis=-1)[:, 0]
    return np.where(count > 0, 0.5 * (low + high), 0.0)


_POLISH_TOLERANCE = 1e-6
"""The median polish stops when no row or column moves by more than this (log)."""
_POLISH_MAX_SWEEPS = 10
"""... or after this many sweeps past the first one and a half."""


def _separable_distance(log_levels: np.ndarray, g: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Absolute log residual of every entry from the separable model ``g[i] + e[j]``."""
    with np.errstate(invalid="ignore"):  # rows without a solution have g = NaN
        return np.abs(log_levels - g[:, np.newaxis] - e[np.newaxis, :])


def _reject_distance(
    distance: np.ndarray, valid: np.ndarray, n_sigma: float, floor: float, keep_rows: bool = False
) -> np.ndarray:
    """Return the valid entries whose absolute log residual ``distance`` is within the clipping
    threshold ``max(n_sigma * sigma, floor)``, keeping at least one entry of every column (and,
    with ``keep_rows``, of every row)."""
    good = valid & np.isfinite(distance)
    threshold = max(n_sigma * _robust_sigma(distance, good, absolute=True), floor)
    keep = good & (distance <= threshold)
    # An exposure must keep at least one entry to be scaled at all; if every entry of a column
    # looks deviant, the deviation is the exposure's own and rejecting cannot help.
    emptied = ~keep.any(axis=0) & valid.any(axis=0)
    keep[:, emptied] = valid[:, emptied]
    if keep_rows:  # the same holds for a row (its g, e.g. from a median polish, is what is off)
        emptied = ~keep.any(axis=1) & valid.any(axis=1)
        keep[emptied] = valid[emptied]
    return keep


def _keep_connected(candidate: np.ndarray, fallback: np.ndarray, n_groups: int) -> np.ndarray:
    """Refuse a rejection that would split the data into more groups than the valid entries form.

    Rejecting the only entries that link two sets of exposures would leave their relative scale
    unmeasurable; such entries are kept (the fallback mask is returned instead).
    """
    return candidate if _connected_groups(candidate)[2] <= n_groups else fallback


def _robust_sigma(residuals: np.ndarray, mask: np.ndarray, absolute: bool = False) -> float:
    """MAD scatter of ``residuals[mask]``; ``absolute`` means the residuals are already ``|r|``
    (the median of ``|r|`` then stands in for the median absolute deviation: the residuals of a
    least-squares fit have a median near zero).

    Large inputs are thinned by a fixed stride before masking (deterministic, and it avoids a full
    boolean copy): 50,000 samples pin the scatter to about 0.5%.
    """
    stride = max(1, int(np.count_nonzero(mask)) // _MAD_SAMPLE_SIZE)
    values = residuals.ravel()[::stride][mask.ravel()[::stride]]
    if values.size == 0:
        return 0.0
    deviations = values if absolute else np.abs(values - np.median(values))
    return float(_MAD_TO_SIGMA * np.median(deviations))


def _connected_groups(used: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Label the connected groups of the bipartite row-column graph of used entries.

    Two exposures are linked when some row has a used entry in both, so the groups are the
    components of the small (nColumns x nColumns) co-occurrence graph; each row belongs to the
    group of its used columns.  Rows with no used entry get label -1 and do not count.
    """
    as_float = used.astype(np.float32)
    linked = scipy.sparse.csr_matrix(as_float.T @ as_float > 0)
    _, labels = scipy.sparse.csgraph.connected_components(linked, directed=False)
    # Renumber so that groups are 0..n-1 in order of their first column.
    _, first_index, column_groups = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty_like(first_index)
    rank[np.argsort(first_index)] = np.arange(first_index.size)
    column_groups = rank[column_groups]
    row_groups = np.where(used.any(axis=1), column_groups[used.argmax(axis=1)], -1)
    return row_groups, column_groups, first_index.size


def _group_members(
    row_groups: np.ndarray, column_groups: np.ndarray, n_groups: int
) -> tuple[list[list[int]], list[list[int]]]:
    return (
        [np.flatnonzero(row_groups == k).tolist() for k in range(n_groups)],
        [np.flatnonzero(column_groups == k).tolist() for k in range(n_groups)],
    )


def _least_squares(
    log_levels: np.ndarray, weights: np.ndarray, column_groups: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact weighted least-squares (g, e), with sum(e) = 0 within each connected group.

    Rows are eliminated from the normal equations, leaving ``S e = b`` with ``S`` the weighted
    Laplacian of the column graph (nColumns x nColumns).  Adding ``v v^T`` for each group's
    indicator vector ``v`` makes ``S`` positive definite without changing the solution within
    the range of ``S``, and pins ``sum(e) = 0`` per group.
    """
    row_weight = weights.sum(axis=1)
    inverse_row_weight = np.divide(1.0, row_weight, out=np.zeros_like(row_weight), where=row_weight > 0)
    weighted_log = weights * log_levels
    row_sum = weighted_log.sum(axis=1)
    scaled = weights * inverse_row_weight[:, np.newaxis]
    schur = np.diag(weights.sum(axis=0)) - weights.T @ scaled
    rhs = weighted_log.sum(axis=0) - scaled.T @ row_sum
    indicators = (column_groups[np.newaxis, :] == np.arange(n_groups)[:, np.newaxis]).astype(float)
    schur += indicators.T @ indicators
    e = scipy.linalg.solve(schur, rhs, assume_a="pos")
    g = np.where(row_weight > 0, (row_sum - weights @ e) * inverse_row_weight, np.nan)
    return g, e


def _fix_gauge(
    g: np.ndarray,
    e: np.ndarray,
    weights: np.ndarray,
    row_groups: np.ndarray,
    column_groups: np.ndarray,
    n_groups: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Scale each group so that its count-weighted mean row scale ``G`` is 1."""
    row_weight = weights.sum(axis=1)
    g = g.copy()
    e = e.copy()
    for k in range(n_groups):
        rows = row_groups == k
        shift = np.log(np.average(np.exp(g[rows]), weights=row_weight[rows]))
        g[rows] -= shift
        e[column_groups == k] += shift
    return g, e


def _package(
    log_levels: np.ndarray, valid: np.ndarray, robust: _RobustFit, g: np.ndarray, e: np.ndarray
) -> ScaleSolution:
    row_scales = np.exp(g)
    column_scales = np.exp(e)
    with np.errstate(invalid="ignore"):  # rows without a solution have g = NaN
        log_residuals = np.where(valid, log_levels - g[:, np.newaxis] - e[np.newaxis, :], np.nan)
    return ScaleSolution(
        row_scales=row_scales,
        column_scales=column_scales,
        model=np.outer(row_scales, column_scales),
        **_residual_fields(log_residuals, valid, robust),
        **robust.solution_fields(),
    )


def _residual_fields(log_residuals: np.ndarray, valid: np.ndarray, robust: _RobustFit) -> dict:
    """The `ScaleSolution` fields that describe the entries and their residuals: ``log_residuals``,
    ``flags``, ``rms`` (weighted by ``robust.weights``, zero outside the used entries) and ``sigma``."""
    used = robust.used
    flags = np.where(used, EntryFlag.USED, np.where(valid, EntryFlag.REJECTED, EntryFlag.INVALID))
    total_weight = robust.weights.sum()
    weighted_square = np.where(used, robust.weights * np.square(np.nan_to_num(log_residuals)), 0.0).sum()
    rms = float(np.sqrt(weighted_square / total_weight)) if total_weight else 0.0
    return dict(log_residuals=log_residuals, flags=flags, rms=rms, sigma=_robust_sigma(log_residuals, used))
