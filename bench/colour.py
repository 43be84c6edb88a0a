# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Benchmark 4: the cost of colour terms, ``colourTerms=1`` against ``colourTerms=0``, in one run.

The damaged level matrix of benchmark 1 (`bench.solver.simulate_levels`: 10% of the pairs
missing, 1% NaN, 0.5% outliers of +-25%, a dead amplifier, 1e-4 log noise) is given a colour
term: two sensor families (alternate detectors of 16 amplifiers) answer the lamp colour with log
slopes of +-1% per unit colour (plus 0.2% scatter per detector), and the lamp colour drifts
linearly over the sequence from -0.5 to +0.5 (plus 0.1 jitter).  What is timed is the numerical
work of the normalization's ``run`` for each setting, with the task's default solver options:
the robust solve (`lsst.cp.flatnorm.colour_terms.fit_colour_terms`, which for ``colourTerms=0``
is the separable solver, unchanged, and for 1 also the separable fit of the same entries for the
table's rms by ``k``) and the uncertainties (`lsst.cp.flatnorm.scale_uncertainty`).  Both run on
the same matrix in the same process, alternately, ``repeats`` times each.  Accuracy: the largest
errors of E and G (at the mean colour) against the truth, after the gauge alignment of
`bench.solver.max_relative_errors`.
"""

from __future__ import annotations

__all__ = ["ColourComparison", "compare_colour_terms", "run", "simulate_colour_levels"]

from dataclasses import dataclass

import numpy as np

from lsst.cp.flatnorm.colour_terms import fit_colour_terms
from lsst.cp.flatnorm.cpFlatNormalize import CpFlatNormalizationTask
from lsst.cp.flatnorm.scale_uncertainty import scale_uncertainties

from .solver import SimulatedLevels, max_relative_errors, simulate_levels
from .timing import Timing, format_seconds, time_call

_FAMILY_SLOPE = 0.01
_DETECTOR_SLOPE_SCATTER = 0.002
_COLOUR_DRIFT = (-0.5, 0.5)
_COLOUR_JITTER = 0.1
_AMPS_PER_DETECTOR = 16


def simulate_colour_levels(n_rows: int, n_exposures: int, *, amp_level: bool, seed: int) -> SimulatedLevels:
    """Benchmark 1's damaged matrix times ``exp(u[row] colour[exposure])`` (two sensor families,
    a drifting lamp colour); ``u`` and the colours are centred, so the truth's G is the response at
    the mean colour and E the lamp level."""
    simulated = simulate_levels(n_rows, n_exposures, amp_level=amp_level, seed=seed)
    rng = np.random.default_rng([seed, 15])
    detector = np.arange(n_rows) // (_AMPS_PER_DETECTOR if amp_level else 1)
    slope_of_detector = (np.where(np.arange(detector.max() + 1) % 2, _FAMILY_SLOPE, -_FAMILY_SLOPE)
                         + rng.uniform(-_DETECTOR_SLOPE_SCATTER, _DETECTOR_SLOPE_SCATTER, detector.max() + 1))
    slopes = slope_of_detector[detector]
    slopes -= slopes.mean()
    colours = np.linspace(*_COLOUR_DRIFT, n_exposures)
    colours += rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, n_exposures)
    colours -= colours.mean()
    with np.errstate(invalid="ignore"):
        simulated.levels = simulated.levels * np.exp(np.outer(slopes, colours))
    return simulated


@dataclass
class ColourComparison:
    """Timings and errors of ``colourTerms=0`` and ``1`` on one simulated matrix.

    Attributes
    ----------
    label : `str`
        Mode and shape, e.g. ``"AMP 3024x100"``.
    timings : `dict` [`int`, `Timing`]
        By ``colourTerms``: the solve and the uncertainties together.
    solve_timings : `dict` [`int`, `Timing`]
        By ``colourTerms``: the solve alone.
    errors : `dict` [`int`, `tuple` [`float`, `float`]]
        By ``colourTerms``: largest relative errors of E and G against the truth.
    sweeps : `int`
        Alternating sweeps of the colour fit's last round.
    """

    label: str
    timings: dict[int, Timing]
    solve_timings: dict[int, Timing]
    errors: dict[int, tuple[float, float]]
    sweeps: int

    def report(self) -> list[str]:
        """Lines summarising the comparison."""
        full, solve = self.timings, self.solve_timings
        return [
            f"colour {self.label}: colourTerms=1 {format_seconds(full[1].median)}, colourTerms=0 "
            f"{format_seconds(full[0].median)}: cost ratio {full[1].median / full[0].median:.1f}x "
            f"(solve and uncertainties, median of {len(full[1].seconds)}, same run)",
            f"colour {self.label}: solve alone: colourTerms=1 {format_seconds(solve[1].median)}, "
            f"colourTerms=0 {format_seconds(solve[0].median)}; {self.sweeps} sweep(s)",
            f"colour {self.label}: max relative error E, G: colourTerms=0 {self.errors[0][0]:.1e}, "
            f"{self.errors[0][1]:.1e}; colourTerms=1 {self.errors[1][0]:.1e}, {self.errors[1][1]:.1e}",
        ]


def _solve(levels: np.ndarray, counts: np.ndarray, n_terms: int):
    """The robust solve with the task's default options."""
    config = CpFlatNormalizationTask.ConfigClass()
    return fit_colour_terms(
        levels, counts, n_terms, max_iterations=config.scaleMaxIter, outlier_sigma=config.outlierSigma,
        outlier_floor=config.outlierFloor, tolerance=config.colourTolerance,
        max_sweeps=config.colourMaxSweeps,
    )


def _solve_with_errors(levels: np.ndarray, counts: np.ndarray, n_terms: int):
    fit = _solve(levels, counts, n_terms)
    return fit, scale_uncertainties(fit.solution, counts)


def compare_colour_terms(
    n_rows: int, n_exposures: int, *, amp_level: bool, repeats: int, seed: int = 20240515
) -> ColourComparison:
    """Time and check ``colourTerms=0`` and ``1`` on one simulated matrix with a colour term."""
    simulated = simulate_colour_levels(n_rows, n_exposures, amp_level=amp_level, seed=seed)
    levels, counts = simulated.levels, simulated.counts
    timings: dict[int, list[float]] = {0: [], 1: []}
    solve_timings: dict[int, list[float]] = {0: [], 1: []}
    results = {}
    for _ in range(repeats):  # alternate, so that a change of machine load hits both alike
        for n_terms in (0, 1):
            timing = time_call(lambda: _solve_with_errors(levels, counts, n_terms), 1)
            timings[n_terms] += timing.seconds
            results[n_terms] = timing.result
            solve_timings[n_terms] += time_call(lambda: _solve(levels, counts, n_terms), 1).seconds
    errors = {n_terms: max_relative_errors(fit.solution.row_scales, fit.solution.column_scales, simulated)
              for n_terms, (fit, _) in results.items()}
    label = f"{'AMP' if amp_level else 'DETECTOR'} {n_rows}x{n_exposures}"
    return ColourComparison(
        label=label,
        timings={k: Timing(seconds=v, result=None) for k, v in timings.items()},
        solve_timings={k: Timing(seconds=v, result=None) for k, v in solve_timings.items()},
        errors=errors,
        sweeps=results[1][0].solution.sweeps,
    )


def run(quick: bool) -> list[ColourComparison]:
    """Run the colour-term benchmark at LSSTCam's AMP scale, or at a small scale if ``quick``."""
    if quick:
        return [compare_colour_terms(96, 10, amp_level=True, repeats=1)]
    return [compare_colour_terms(189, 50, amp_level=False, repeats=5),
            compare_colour_terms(3024, 100, amp_level=True, repeats=5)]
