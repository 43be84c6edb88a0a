# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of the colour-term solver and of the scales' uncertainties, against known truth, an
independent nonlinear least-squares solver and a dense bordered inverse."""

import numpy as np
import pytest
import scipy.optimize

from lsst.cp.flatnorm.colour_terms import (
    choose_colour_terms,
    fit_colour_terms,
    solve_colour_scales,
)
from lsst.cp.flatnorm.scale_solver import EntryFlag, solve_separable_scales
from lsst.cp.flatnorm.scale_uncertainty import scale_uncertainties


def make_levels(n_rows, n_columns, *, n_terms=1, colour=3e-3, noise=0.0, missing=0.0, seed=1,
                g_spread=0.05):
    """Levels ``exp(g + e + u v^T + noise / sqrt(w))`` with pixel counts ``w``; returns the truth."""
    rng = np.random.default_rng(seed)
    g = rng.normal(0.0, g_spread, n_rows)
    e = np.log(rng.uniform(1e3, 2e4, n_columns))
    u = rng.normal(0.0, colour, (n_rows, n_terms))
    v = np.column_stack([np.linspace(-1, 1, n_columns), rng.normal(0, 1, (n_columns, 1))])[:, :n_terms]
    w = rng.integers(1000, 5000, (n_rows, n_columns)).astype(float)
    noise = noise * rng.standard_normal((n_rows, n_columns)) / np.sqrt(w)
    log_levels = g[:, None] + e[None, :] + u @ v.T + noise
    levels = np.exp(log_levels)
    levels[rng.random(levels.shape) < missing] = np.nan
    return levels, w, (g, e, u, v)


def in_gauge(truth, solution, w):
    """The truth's log G and log E in the package's gauge for the solution's used entries."""
    g, e, u, v = truth
    row_weight = np.where(solution.used, w, 0).sum(axis=1)
    column_weight = np.where(solution.used, w, 0).sum(axis=0)
    mean_v = column_weight @ v / column_weight.sum()
    v, g = v - mean_v, g + u @ mean_v
    mean_u = row_weight @ u / row_weight.sum()
    e = e + v @ mean_u
    shift = np.log(np.average(np.exp(g), weights=row_weight))
    return g - shift, e + shift


def chi2(solution, levels, w):
    used = solution.used
    return float(np.sum(w[used] * np.log(levels[used] / solution.model[used]) ** 2))


# The solver.

def test_no_terms_is_the_separable_solution_unchanged():
    levels, w, _ = make_levels(20, 8, noise=0.02, missing=0.1, g_spread=0.02)
    levels[3, 2] *= 1.2
    separable = solve_separable_scales(levels, w)
    wrapped = solve_colour_scales(levels, w, 0)
    for name in ("row_scales", "column_scales", "model", "log_residuals", "flags", "row_groups"):
        np.testing.assert_array_equal(getattr(wrapped, name), getattr(separable, name), err_msg=name)
    for name in ("rms", "sigma", "iterations", "converged", "n_groups"):
        assert getattr(wrapped, name) == getattr(separable, name), name
    assert wrapped.row_colours.shape == (20, 0) and wrapped.n_terms == 0
    np.testing.assert_array_equal(wrapped.entry_factors, np.ones((20, 8)))


@pytest.mark.parametrize("n_terms", [1, 2])
def test_noise_free_colour_data_are_recovered_exactly(n_terms):
    levels, w, truth = make_levels(30, 12, n_terms=n_terms, missing=0.1, seed=2)
    solution = solve_colour_scales(levels, w, n_terms)
    assert solution.sweeps_converged and solution.converged
    assert not solution.rejected.any()
    assert solution.rms < 1e-10
    true_g, true_e = in_gauge(truth, solution, w)
    np.testing.assert_allclose(np.log(solution.row_scales), true_g, atol=1e-9)
    np.testing.assert_allclose(np.log(solution.column_scales), true_e, atol=1e-9)
    np.testing.assert_allclose(solution.model[solution.used], levels[solution.used], rtol=1e-9)


def test_least_squares_optimum_matches_an_independent_solver():
    levels, w, _ = make_levels(25, 10, noise=0.02, missing=0.15, seed=3)
    solution = solve_colour_scales(levels, w, 1, outlier_sigma=0)
    valid = np.isfinite(levels)
    n_rows, n_columns = levels.shape

    def residuals(p):
        g, e, u, v = np.split(p, [n_rows, n_rows + n_columns, 2 * n_rows + n_columns])
        model = g[:, None] + e[None, :] + np.outer(u, v)
        return (np.sqrt(w) * (np.log(levels) - model))[valid]

    start = np.concatenate([np.zeros(n_rows), np.log(np.nanmedian(levels, axis=0)),
                            np.full(n_rows, 1e-3), np.linspace(-1, 1, n_columns)])
    reference = scipy.optimize.least_squares(residuals, start, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    assert chi2(solution, levels, w) == pytest.approx(np.sum(reference.fun**2), rel=1e-9)
    separable = solve_colour_scales(levels, w, 0, outlier_sigma=0)
    assert chi2(solution, levels, w) < chi2(separable, levels, w) / 10


def test_gauge():
    levels, w, _ = make_levels(30, 12, n_terms=2, noise=0.02, missing=0.1, seed=4)
    solution = solve_colour_scales(levels, w, 2)
    used_w = np.where(solution.used, w, 0)
    row_weight, column_weight = used_w.sum(axis=1), used_w.sum(axis=0)
    u, v = solution.row_colours, solution.column_colours
    np.testing.assert_allclose(column_weight @ v / column_weight.sum(), 0, atol=1e-12)
    np.testing.assert_allclose(row_weight @ u / row_weight.sum(), 0, atol=1e-14)
    np.testing.assert_allclose((v * column_weight[:, None]).T @ v / column_weight.sum(), np.eye(2),
                               atol=1e-12)
    gram = (u * row_weight[:, None]).T @ u
    assert abs(gram[0, 1]) < 1e-12 * gram[0, 0] and gram[0, 0] > gram[1, 1]
    order = np.arange(12) - np.average(np.arange(12), weights=column_weight)
    assert np.all((column_weight * order) @ v >= 0)
    assert np.average(solution.row_scales, weights=row_weight) == pytest.approx(1.0, abs=1e-14)
    np.testing.assert_allclose(solution.model, np.outer(solution.row_scales, solution.column_scales)
                               * solution.entry_factors, rtol=1e-14)


def test_pure_noise_converges_with_newton_steps():
    # A colour term fitted to noise alone converges linearly and slowly by plain alternation
    # (hundreds of sweeps); with the Newton steps it takes a few tens.
    levels, w, _ = make_levels(189, 50, colour=0.0, noise=0.02, seed=5, g_spread=0.02)
    solution = solve_colour_scales(levels, w, 1)
    assert solution.sweeps_converged
    assert solution.sweeps < 40
    assert solution.model_change <= 1e-10
    limited = solve_colour_scales(levels, w, 1, max_sweeps=1)
    assert not limited.sweeps_converged and limited.sweeps == 1


def test_colour_outliers_judged_on_the_colour_model():
    # A colour term of +-2% (beyond the 0.5% floor) is no outlier of this model, and a 3% shadow
    # stands out of its residuals; in the separable model's residuals the shadow hides in the
    # colour term's scatter.
    levels, w, _ = make_levels(40, 12, colour=0.02, noise=0.005, seed=6)
    levels[7, 5] *= 0.97
    solution = solve_colour_scales(levels, w, 1)
    assert np.argwhere(solution.rejected).tolist() == [[7, 5]]
    assert solution.flags[7, 5] == EntryFlag.REJECTED
    assert not solve_colour_scales(levels, w, 0).rejected[7, 5]


def test_row_or_exposure_without_enough_entries_has_no_colour_term():
    levels, w, truth = make_levels(20, 10, missing=0.0, seed=7)
    levels[4, 1:] = np.nan     # row 4: one entry, its colour response cannot be measured
    levels[:, 9] = np.nan      # exposure 9: one entry (row 0)
    levels[0, 9] = 1.3e4
    solution = solve_colour_scales(levels, w, 1)
    assert solution.uncoloured_rows.tolist() == [4]
    assert solution.uncoloured_columns.tolist() == [9]
    assert solution.row_colours[4, 0] == 0 and solution.column_colours[9, 0] == 0
    assert solution.sweeps_converged
    # The rest is the exact colour fit; row 4 and exposure 9 are fitted to their one entry each.
    core = np.ones(levels.shape, dtype=bool)
    core[4], core[:, 9] = False, False
    np.testing.assert_allclose(solution.model[core & solution.used], levels[core & solution.used], rtol=1e-9)
    np.testing.assert_allclose(solution.model[4, 0], levels[4, 0], rtol=1e-12)
    np.testing.assert_allclose(solution.model[0, 9], levels[0, 9], rtol=1e-12)


def test_disconnected_groups_each_have_their_gauge():
    levels, w, _ = make_levels(12, 8, seed=8)
    levels[:6, 4:] = np.nan
    levels[6:, :4] = np.nan
    solution = solve_colour_scales(levels, w, 1, allow_disconnected=True)
    assert solution.n_groups == 2
    for rows in (slice(0, 6), slice(6, 12)):
        row_weight = np.where(solution.used[rows], w[rows], 0).sum(axis=1)
        assert np.average(solution.row_scales[rows], weights=row_weight) == pytest.approx(1.0, abs=1e-14)
    np.testing.assert_allclose(solution.model[solution.used], levels[solution.used], rtol=1e-9)


def test_a_row_whose_polish_is_off_is_not_rejected_whole():
    # Median polish of data with 10% missing can put a row's g ~1% off; every entry of that row
    # then looks deviant.  The colour solver keeps such a row, as every solver keeps a column.  (On
    # these data the separable solver of today rejects four whole rows, leaving them NaN.)
    levels, w, _ = make_levels(24, 10, colour=0.0, noise=0.02, missing=0.1, seed=127)
    solution = solve_colour_scales(levels, w, 1)
    assert np.isfinite(solution.row_scales).all() and not solution.rejected.any()


def test_bad_arguments():
    levels, w, _ = make_levels(5, 4)
    with pytest.raises(ValueError, match="n_terms must be at least 0"):
        solve_colour_scales(levels, w, -1)
    with pytest.raises(ValueError, match="tolerance must be > 0"):
        solve_colour_scales(levels, w, 1, tolerance=0)


# Choosing the number of terms.

@pytest.mark.parametrize("n_true", [0, 1, 2])
def test_held_out_entries_choose_the_true_number_of_terms(n_true):
    levels, w, _ = make_levels(30, 12, n_terms=2, colour=3e-3 if n_true else 0.0, noise=0.02, missing=0.1,
                               seed=12 + n_true, g_spread=0.02)
    if n_true == 1:
        levels, w, _ = make_levels(30, 12, n_terms=1, noise=0.02, missing=0.1, seed=12, g_spread=0.02)
    fit = fit_colour_terms(levels, w, 3, choose=True)
    assert fit.held_out.chosen == n_true == fit.solution.n_terms
    assert len(fit.rms_by_terms) == 4 and fit.rms_by_terms[n_true] == fit.solution.rms
    assert np.all(np.diff(fit.rms_by_terms) < 0)  # more terms always fit the used entries better
    scores = fit.held_out.scores
    assert np.argmin(scores) == n_true
    assert fit.held_out.n_held_out > 0.9 * np.isfinite(levels).sum()


def test_choice_is_deterministic():
    levels, w, _ = make_levels(20, 10, noise=0.02, seed=15)
    first = choose_colour_terms(levels, w, 2)
    np.testing.assert_array_equal(first.scores, choose_colour_terms(levels, w, 2).scores)


# Uncertainties.

def dense_errors(solution, w):
    """Relative errors of G and E from the dense bordered Fisher matrix (no block elimination)."""
    used = solution.used
    n_rows, n_columns = used.shape
    k = solution.row_colours.shape[1]
    u, v = solution.row_colours, solution.column_colours
    rows, columns = np.nonzero(used)
    n, p = len(rows), (k + 1) * (n_rows + n_columns)
    jacobian = np.zeros((n, p))
    jacobian[np.arange(n), rows] = 1
    jacobian[np.arange(n), n_rows + columns] = 1
    for t in range(k):
        jacobian[np.arange(n), n_rows + n_columns + t * n_rows + rows] = v[columns, t]
        jacobian[np.arange(n), n_rows + n_columns + k * n_rows + t * n_columns + columns] = u[rows, t]
    fisher = jacobian.T @ (w[rows, columns][:, None] * jacobian)
    row_weight, column_weight = np.where(used, w, 0).sum(axis=1), np.where(used, w, 0).sum(axis=0)
    conditions = []
    first = np.zeros(p)
    first[:n_rows] = row_weight * solution.row_scales
    conditions.append(first)
    u_start, v_start = n_rows + n_columns, n_rows + n_columns + k * n_rows
    for t in range(k):
        c = np.zeros(p)
        c[u_start + t * n_rows:u_start + (t + 1) * n_rows] = row_weight
        conditions.append(c)
        c = np.zeros(p)
        c[v_start + t * n_columns:v_start + (t + 1) * n_columns] = column_weight
        conditions.append(c)
    for a in range(k):
        for b in range(k):
            c = np.zeros(p)
            c[v_start + b * n_columns:v_start + (b + 1) * n_columns] = column_weight * v[:, a]
            conditions.append(c)
    conditions = np.array(conditions)
    bordered = np.block([[fisher, conditions.T], [conditions, np.zeros((len(conditions),) * 2)]])
    covariance = np.linalg.inv(bordered)[:p, :p]
    residuals = solution.log_residuals[used]
    scale = np.sum(w[rows, columns] * residuals**2) / (n - p + (k + 1) ** 2)
    variance = scale * np.diag(covariance)
    return np.sqrt(variance[:n_rows]), np.sqrt(variance[n_rows:n_rows + n_columns])


@pytest.mark.parametrize("n_terms", [0, 1, 2])
def test_uncertainties_match_the_dense_bordered_inverse(n_terms):
    levels, w, _ = make_levels(15, 9, n_terms=2, noise=0.02, missing=0.15, seed=20 + n_terms)
    solution = solve_colour_scales(levels, w, n_terms, outlier_sigma=0)
    errors = scale_uncertainties(solution, w)
    row_errors, column_errors = dense_errors(solution, w)
    np.testing.assert_allclose(errors.row_errors, row_errors, rtol=1e-9)
    np.testing.assert_allclose(errors.column_errors, column_errors, rtol=1e-9)
    assert errors.dof == int(solution.used.sum()) - (n_terms + 1) * (15 + 9) + (n_terms + 1) ** 2


def test_uncertainties_of_a_row_without_entries_are_nan():
    levels, w, _ = make_levels(10, 6, noise=0.02, seed=25)
    levels[3] = 0.0
    errors = scale_uncertainties(solve_colour_scales(levels, w, 1), w)
    assert np.isnan(errors.row_errors[3]) and np.isfinite(np.delete(errors.row_errors, 3)).all()


@pytest.mark.parametrize("n_terms", [0, 1])
def test_pulls_are_calibrated(n_terms):
    """Over 300 realizations of data that fit the model (log-normal noise of variance s^2 / w), the
    pulls (recovered - true) / sigma of every G and E have an rms within [0.9, 1.1]."""
    levels, w, truth = make_levels(20, 10, n_terms=1, seed=30, g_spread=0.02)
    g, e, u, v = truth
    if n_terms == 0:
        u = np.zeros_like(u)
    rng = np.random.default_rng(31)
    missing = rng.random(levels.shape) < 0.1
    pulls = []
    for _ in range(300):
        log_levels = g[:, None] + e[None, :] + u @ v.T + 0.02 * rng.standard_normal(levels.shape) / np.sqrt(w)
        levels = np.where(missing, np.nan, np.exp(log_levels))
        solution = solve_colour_scales(levels, w, n_terms)
        errors = scale_uncertainties(solution, w)
        true_g, true_e = in_gauge((g, e, u, v), solution, w)
        pulls.append(np.concatenate([(np.log(solution.row_scales) - true_g) / errors.row_errors,
                                     (np.log(solution.column_scales) - true_e) / errors.column_errors]))
    pulls = np.array(pulls)
    rms = np.sqrt(np.mean(pulls**2))
    assert 0.9 <= rms <= 1.1, rms
    assert 0.9 <= np.sqrt(np.mean(pulls[:, :20] ** 2)) <= 1.1  # G
    assert 0.9 <= np.sqrt(np.mean(pulls[:, 20:] ** 2)) <= 1.1  # E


def test_separable_data_colour_term_changes_no_scale_beyond_its_uncertainty():
    """On data with no colour term (a camera of 3 x 3 detectors x 16 amplifiers, 10 exposures, one
    detector missing two), colourTerms=1 moves every G and E by less than its stated 1-sigma
    uncertainty; over 100 realizations the moves are 0.3 sigma rms."""
    rng = np.random.default_rng(40)
    ratios = []
    for realization in range(100):
        levels, w, _ = make_levels(144, 10, colour=0.0, noise=0.02, seed=int(rng.integers(2**31)),
                                   g_spread=0.02)
        levels[64:80, 8:] = np.nan
        separable = solve_colour_scales(levels, w, 0)
        coloured = solve_colour_scales(levels, w, 1)
        errors = scale_uncertainties(coloured, w)
        ratio = np.concatenate([
            np.log(coloured.row_scales / separable.row_scales) / errors.row_errors,
            np.log(coloured.column_scales / separable.column_scales) / errors.column_errors,
        ])
        if realization == 0:
            assert np.all(np.abs(ratio) < 1), np.abs(ratio).max()
        ratios.append(ratio)
    assert np.sqrt(np.mean(np.square(ratios))) < 0.5
