# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Benchmark 1: the scale solver against the alternating-means algorithm of cp_pipe.

A level matrix ``B[row, exposure] = G[row] * E[exposure] * noise`` is simulated from known truth
at LSSTCam scale (189 detectors x 50 exposures, or 3024 amplifiers x 100 exposures) and damaged
the way real flat sequences are: missing (row, exposure) pairs, NaN statistics, outliers and a
dead amplifier.  Three solutions are compared with the truth:

- ours: ``CpFlatNormalizationTask.measureScales`` (the package's exact robust solver);
- baseline: the documented cp_pipe algorithm, restated here (alternating count-weighted means of
  the log levels with ``np.average`` over masked arrays, a fixed number of sweeps, row scales
  normalised to a count-weighted mean of one);
- noise floor: the exact weighted least-squares solution on the undamaged entries only (an oracle
  that knows which entries were damaged), computed with a sparse iterative solver independent of
  the package's code.  No estimator can be expected to do better than this on the same data.
"""

from __future__ import annotations

__all__ = [
    "SimulatedLevels",
    "SolverComparison",
    "simulate_levels",
    "baseline_measure_scales",
    "oracle_scales",
    "max_relative_errors",
    "compare_solvers",
    "run",
]

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from lsst.cp.flatnorm.cpFlatNormalize import CpFlatNormalizationTask

from .timing import Timing, format_seconds, time_call

_AMP_PIXELS = 509 * 2000  # imaging pixels of one LSSTCam amplifier
_AMPS_PER_DETECTOR = 16
_ROW_SCATTER = 0.05  # log scatter of the per-row response (QE, gain errors)
_LAMP_RANGE = (2_000.0, 60_000.0)  # exposure levels in ADU of a flat sequence
_MASKED_FRACTION_MAX = 0.03  # fraction of pixels masked per entry, drawn uniformly up to this
_LOG_NOISE = 1e-4
_MISSING_FRACTION = 0.10
_NAN_FRACTION = 0.01
_OUTLIER_FRACTION = 0.005
_OUTLIER_SIZE = 0.25


@dataclass
class SimulatedLevels:
    """A damaged level matrix and the truth it was made from.

    Attributes
    ----------
    levels, counts : `numpy.ndarray`, (nRows, nExposures)
        Measured levels and the pixel counts behind them (0 for a missing pair).
    row_truth, exposure_truth : `numpy.ndarray`
        True ``G`` and ``E``.
    clean : `numpy.ndarray` of `bool`, (nRows, nExposures)
        Entries that were measured and not damaged.
    live_rows : `numpy.ndarray` of `bool`, (nRows,)
        Rows whose scale is measurable (all but the dead amplifier's row at AMP level).
    """

    levels: np.ndarray
    counts: np.ndarray
    row_truth: np.ndarray
    exposure_truth: np.ndarray
    clean: np.ndarray
    live_rows: np.ndarray


def simulate_levels(n_rows: int, n_exposures: int, *, amp_level: bool, seed: int) -> SimulatedLevels:
    """Simulate a damaged flat-sequence level matrix with known truth.

    Damage: 10% of the pairs are missing (NaN level, zero count), 1% of the rest have a NaN
    level, 0.5% of the rest are off by +-25%, and one amplifier is dead.  At AMP level the dead
    amplifier's row reads 0 in every exposure; at DETECTOR level its detector loses 1/16 of its
    pixels (its level, a median over the live pixels, is unchanged).

    Parameters
    ----------
    n_rows, n_exposures : `int`
        Matrix shape: rows are detectors or amplifiers.
    amp_level : `bool`
        Whether rows are amplifiers (otherwise detectors of 16 amplifiers).
    seed : `int`
        Seed of the random generator.

    Returns
    -------
    simulated : `SimulatedLevels`
    """
    rng = np.random.default_rng(seed)
    shape = (n_rows, n_exposures)
    row_truth = np.exp(rng.normal(0.0, _ROW_SCATTER, n_rows))
    exposure_truth = np.exp(rng.uniform(*np.log(_LAMP_RANGE), n_exposures))
    levels = np.outer(row_truth, exposure_truth) * np.exp(rng.normal(0.0, _LOG_NOISE, shape))
    pixels = _AMP_PIXELS if amp_level else _AMP_PIXELS * _AMPS_PER_DETECTOR
    counts = np.floor(pixels * (1.0 - rng.uniform(0.0, _MASKED_FRACTION_MAX, shape)))

    missing = rng.random(shape) < _MISSING_FRACTION
    levels[missing] = np.nan
    counts[missing] = 0.0
    failed = ~missing & (rng.random(shape) < _NAN_FRACTION)
    levels[failed] = np.nan
    outlier = ~missing & ~failed & (rng.random(shape) < _OUTLIER_FRACTION)
    levels[outlier] *= 1.0 + rng.choice([-_OUTLIER_SIZE, _OUTLIER_SIZE], outlier.sum())

    dead_row = int(rng.integers(n_rows))
    live_rows = np.ones(n_rows, dtype=bool)
    if amp_level:
        levels[dead_row] = 0.0
        live_rows[dead_row] = False
    else:
        counts[dead_row] = np.floor(counts[dead_row] * (1.0 - 1.0 / _AMPS_PER_DETECTOR))
    clean = ~missing & ~failed & ~outlier & live_rows[:, np.newaxis]
    return SimulatedLevels(levels=levels, counts=counts, row_truth=row_truth,
                           exposure_truth=exposure_truth, clean=clean, live_rows=live_rows)


def baseline_measure_scales(
    levels: np.ndarray, counts: np.ndarray, sweeps: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``levels ~ G * E`` the way cp_pipe documents it, as the speed and accuracy baseline.

    Alternating count-weighted means in log space, one `numpy.average` call per row or column
    of masked arrays (entries not finite or not positive are masked), starting from ``G = 1``;
    after the sweeps ``G`` is normalised to a count-weighted mean of one.  No outlier rejection.

    Parameters
    ----------
    levels, counts : `numpy.ndarray`, (nRows, nExposures)
        Measured levels and their pixel counts.
    sweeps : `int`, optional
        Number of (row means, column means) sweeps.

    Returns
    -------
    row_scales, exposure_scales : `numpy.ndarray`
        ``G`` (NaN for a row without data) and ``E``.
    """
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(levels) | ~(levels > 0) | ~(counts > 0)
    log_levels = np.ma.masked_array(np.log(np.where(bad, 1.0, levels)), mask=bad)
    weights = np.ma.masked_array(counts, mask=bad)
    log_rows = np.zeros(levels.shape[0])
    log_exposures = _column_means(log_levels, weights)
    for _ in range(sweeps):
        log_rows = _row_means(log_levels - log_exposures[np.newaxis, :], weights)
        log_exposures = _column_means(log_levels - log_rows[:, np.newaxis], weights)
    row_scales = np.ma.exp(log_rows)
    level = np.ma.average(row_scales, weights=weights.sum(axis=1))
    return (row_scales / level).filled(np.nan), np.ma.exp(log_exposures).filled(np.nan) * level


def _row_means(values: np.ma.MaskedArray, weights: np.ma.MaskedArray) -> np.ma.MaskedArray:
    return np.ma.stack([np.average(values[i], weights=weights[i]) for i in range(values.shape[0])])


def _column_means(values: np.ma.MaskedArray, weights: np.ma.MaskedArray) -> np.ma.MaskedArray:
    return _row_means(values.T, weights.T)


def oracle_scales(simulated: SimulatedLevels) -> tuple[np.ndarray, np.ndarray]:
    """Exact count-weighted least squares of ``log B = g + e`` on the undamaged entries only.

    Solved with `scipy.sparse.linalg.lsqr` on the full (entries x unknowns) design matrix, a
    method independent of the package's Schur-complement solver.

    Returns
    -------
    row_scales, exposure_scales : `numpy.ndarray`
        ``G`` (NaN for rows without undamaged entries) and ``E``, in an arbitrary gauge.
    """
    n_rows, n_exposures = simulated.levels.shape
    rows, columns = np.nonzero(simulated.clean)
    root_weights = np.sqrt(simulated.counts[rows, columns] / simulated.counts[rows, columns].mean())
    entry = np.arange(rows.size)
    design = scipy.sparse.csr_matrix(
        (np.concatenate([root_weights, root_weights]),
         (np.concatenate([entry, entry]), np.concatenate([rows, n_rows + columns]))),
        shape=(rows.size, n_rows + n_exposures),
    )
    target = root_weights * np.log(simulated.levels[rows, columns])
    solution = scipy.sparse.linalg.lsqr(design, target, atol=1e-15, btol=1e-15, iter_lim=100_000)[0]
    row_scales = np.where(simulated.clean.any(axis=1), np.exp(solution[:n_rows]), np.nan)
    return row_scales, np.exp(solution[n_rows:])


def max_relative_errors(
    row_scales: np.ndarray, exposure_scales: np.ndarray, simulated: SimulatedLevels
) -> tuple[float, float]:
    """Maximum relative errors of ``E`` and ``G`` over the live rows, in the truth's gauge.

    The solution's gauge (a common factor moved between ``G`` and ``E``) is set so that the mean
    log ratio of ``G`` to the true ``G`` over the live rows is zero.

    Returns
    -------
    exposure_error, row_error : `float`
        ``max |E / E_true - 1|`` and ``max |G / G_true - 1|``.
    """
    live = simulated.live_rows
    log_ratio = np.log(row_scales[live] / simulated.row_truth[live])
    shift = np.mean(log_ratio)
    row_error = np.max(np.abs(np.expm1(log_ratio - shift)))
    exposure_error = np.max(np.abs(np.expm1(np.log(exposure_scales / simulated.exposure_truth) + shift)))
    return float(exposure_error), float(row_error)


@dataclass
class SolverComparison:
    """Timings and errors of the solvers on one simulated matrix.

    Attributes
    ----------
    label : `str`
        Mode and shape, e.g. ``"AMP 3024x100"``.
    ours, baseline : `Timing`
        Timings of the package's solver and of the baseline.
    errors : `dict` [`str`, `tuple` [`float`, `float`]]
        ``(E error, G error)`` of ``"ours"``, ``"baseline"`` and ``"noise floor"``.
    """

    label: str
    ours: Timing
    baseline: Timing
    errors: dict[str, tuple[float, float]]

    @property
    def speed_ratio(self) -> float:
        """Baseline median time over ours."""
        return self.baseline.median / self.ours.median

    def report(self) -> list[str]:
        """Lines summarising the comparison."""
        floor_e, floor_g = self.errors["noise floor"]
        return [
            f"solver {self.label}: speed ratio {self.speed_ratio:.1f}x "
            f"(baseline {format_seconds(self.baseline.median)} / ours {format_seconds(self.ours.median)}, "
            f"median of {len(self.ours.seconds)})",
            f"solver {self.label}: max relative error E, G: "
            + "; ".join(f"{name} {e:.1e}, {g:.1e}" for name, (e, g) in self.errors.items()),
            f"solver {self.label}: error ratio to noise floor E, G: "
            + "; ".join(f"{name} {e / floor_e:.2f}, {g / floor_g:.2f}"
                        for name, (e, g) in self.errors.items() if name != "noise floor"),
        ]


def _measure_scales(
    task: CpFlatNormalizationTask, levels: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    result = task.measureScales(levels, counts)
    return result.detScales, result.expScales


def compare_solvers(
    n_rows: int,
    n_exposures: int,
    *,
    amp_level: bool,
    repeats: int,
    seed: int = 20240501,
) -> SolverComparison:
    """Time and check `CpFlatNormalizationTask.measureScales` (default config) and the baseline
    on one simulated matrix.

    Parameters
    ----------
    n_rows, n_exposures : `int`
        Matrix shape.
    amp_level : `bool`
        Whether rows are amplifiers (AMP) or detectors (DETECTOR).
    repeats : `int`
        Timed calls of each solver; the median is reported.
    seed : `int`, optional
        Seed of the simulation.

    Returns
    -------
    comparison : `SolverComparison`
    """
    simulated = simulate_levels(n_rows, n_exposures, amp_level=amp_level, seed=seed)
    task = CpFlatNormalizationTask()
    ours_timing = time_call(lambda: _measure_scales(task, simulated.levels, simulated.counts), repeats)
    baseline_timing = time_call(lambda: baseline_measure_scales(simulated.levels, simulated.counts),
                                repeats)
    errors = {
        "ours": max_relative_errors(*ours_timing.result, simulated),
        "baseline": max_relative_errors(*baseline_timing.result, simulated),
        "noise floor": max_relative_errors(*oracle_scales(simulated), simulated),
    }
    label = f"{'AMP' if amp_level else 'DETECTOR'} {n_rows}x{n_exposures}"
    return SolverComparison(label=label, ours=ours_timing, baseline=baseline_timing, errors=errors)


def run(quick: bool) -> list[SolverComparison]:
    """Run the solver benchmark at LSSTCam scale, or at a small scale if ``quick``."""
    if quick:
        cases = [(27, 8, False), (96, 10, True)]
        repeats = 1
    else:
        cases = [(189, 50, False), (3024, 100, True)]
        repeats = 5
    return [compare_solvers(rows, exposures, amp_level=amp, repeats=repeats)
            for rows, exposures, amp in cases]
