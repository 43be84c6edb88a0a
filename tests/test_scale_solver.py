# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of the separable scale solver against known truth and a brute-force reference."""

import unittest

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import lsst.utils.tests
from lsst.cp.flatnorm.scale_solver import (
    DisconnectedDataError,
    EmptyColumnError,
    EntryFlag,
    solve_separable_scales,
)


def make_truth(n_rows, n_cols, seed=1, noise=0.0):
    """Separable levels G x E (G normalised to unit mean) with optional log-normal noise."""
    rng = np.random.default_rng(seed)
    gains = rng.uniform(0.7, 1.3, n_rows)
    gains /= gains.mean()
    lamps = rng.uniform(1000.0, 20000.0, n_cols)
    levels = np.outer(gains, lamps) * np.exp(noise * rng.standard_normal((n_rows, n_cols)))
    return gains, lamps, levels


def gauge(gains, lamps, weights):
    """Put (G, E) in the package's gauge: count-weighted mean of G is 1."""
    shift = np.average(gains, weights=weights)
    return gains / shift, lamps * shift


def brute_force(levels, weights):
    """Weighted least squares of log B = g + e by a dense lstsq over the valid entries."""
    n_rows, n_cols = levels.shape
    valid = np.isfinite(levels) & (levels > 0) & (weights > 0)
    rows, cols = np.nonzero(valid)
    design = np.zeros((rows.size, n_rows + n_cols))
    design[np.arange(rows.size), rows] = 1.0
    design[np.arange(rows.size), n_rows + cols] = 1.0
    sqrt_w = np.sqrt(weights[rows, cols])
    solution = np.linalg.lstsq(design * sqrt_w[:, None], np.log(levels[rows, cols]) * sqrt_w, rcond=None)[0]
    gains, lamps = np.exp(solution[:n_rows]), np.exp(solution[n_rows:])
    return gauge(gains, lamps, np.where(valid, weights, 0).sum(axis=1))


class ExactSeparableTestCase(lsst.utils.tests.TestCase):
    def test_complete_matrix(self):
        gains, lamps, levels = make_truth(12, 7)
        solution = solve_separable_scales(levels)
        np.testing.assert_allclose(solution.row_scales, gains, rtol=1e-12)
        np.testing.assert_allclose(solution.column_scales, lamps, rtol=1e-12)
        np.testing.assert_allclose(solution.model, levels, rtol=1e-12)
        self.assertTrue(solution.converged)
        self.assertEqual(solution.n_groups, 1)
        self.assertLess(solution.rms, 1e-12)

    def test_missing_entries_with_unit_weights_do_not_bias(self):
        # cp_pipe averages with masked entries' weights in the denominator: 10% missing moves
        # its scales by tens of percent.  Here they must add nothing to any sum.
        gains, lamps, levels = make_truth(40, 15, seed=3)
        rng = np.random.default_rng(4)
        levels[rng.random(levels.shape) < 0.1] = np.nan
        solution = solve_separable_scales(levels)
        gains, lamps = gauge(gains, lamps, np.isfinite(levels).sum(axis=1))
        np.testing.assert_allclose(solution.row_scales, gains, rtol=1e-11)
        np.testing.assert_allclose(solution.column_scales, lamps, rtol=1e-11)
        np.testing.assert_array_equal(solution.flags == EntryFlag.INVALID, np.isnan(levels))

    def test_zero_negative_and_infinite_levels_are_excluded_even_with_full_weight(self):
        gains, lamps, levels = make_truth(10, 6, seed=5)
        counts = np.full(levels.shape, 1e5)
        levels[0, 0], levels[3, 2], levels[7, 5] = 0.0, -50.0, np.inf
        solution = solve_separable_scales(levels, counts)
        gains, lamps = gauge(gains, lamps, np.where(solution.used, counts, 0).sum(axis=1))
        np.testing.assert_allclose(solution.row_scales, gains, rtol=1e-11)
        np.testing.assert_allclose(solution.column_scales, lamps, rtol=1e-11)
        self.assertEqual(int((solution.flags == EntryFlag.INVALID).sum()), 3)
        self.assertTrue(np.isnan(solution.log_residuals[3, 2]))

    def test_bad_weights_exclude_entries(self):
        gains, lamps, levels = make_truth(6, 5, seed=6)
        counts = np.full(levels.shape, 10.0)
        levels[2, 1] *= 3.0  # would be an outlier, but its weight excludes it
        counts[2, 1] = 0.0
        counts[4, 3] = np.nan
        solution = solve_separable_scales(levels, counts, outlier_sigma=0)
        gains, lamps = gauge(gains, lamps, np.where(solution.used, counts, 0).sum(axis=1))
        np.testing.assert_allclose(solution.column_scales, lamps, rtol=1e-11)
        self.assertEqual(solution.flags[2, 1], EntryFlag.INVALID)
        self.assertEqual(solution.flags[4, 3], EntryFlag.INVALID)

    def test_weakly_linked_exposure_groups(self):
        # Two blocks of exposures share a single detector: alternating sweeps stay ~2% off after
        # ten iterations; the direct solve is exact.
        gains, lamps, levels = make_truth(20, 10, seed=7)
        levels[:10, 5:] = np.nan
        levels[11:, :5] = np.nan
        solution = solve_separable_scales(levels)
        gains, lamps = gauge(gains, lamps, np.isfinite(levels).sum(axis=1))
        self.assertEqual(solution.n_groups, 1)
        np.testing.assert_allclose(solution.row_scales, gains, rtol=1e-11)
        np.testing.assert_allclose(solution.column_scales, lamps, rtol=1e-11)

    def test_one_exposure(self):
        gains, lamps, levels = make_truth(8, 1, seed=8)
        solution = solve_separable_scales(levels)
        np.testing.assert_allclose(solution.row_scales, gains, rtol=1e-12)
        np.testing.assert_allclose(solution.column_scales, lamps, rtol=1e-12)

    def test_one_detector(self):
        _, lamps, levels = make_truth(1, 9, seed=9)
        solution = solve_separable_scales(levels)
        np.testing.assert_allclose(solution.row_scales, [1.0], rtol=1e-12)
        np.testing.assert_allclose(solution.column_scales, levels[0], rtol=1e-12)

    @settings(max_examples=60, deadline=None)
    @given(
        n_rows=st.integers(1, 30),
        n_cols=st.integers(1, 12),
        seed=st.integers(0, 2**32 - 1),
        log_spread=st.floats(0.0, 3.0),
    )
    def test_exact_separable_data_recovered_to_machine_precision(self, n_rows, n_cols, seed, log_spread):
        rng = np.random.default_rng(seed)
        gains = np.exp(log_spread * rng.uniform(-1, 1, n_rows))
        lamps = np.exp(5 + log_spread * rng.uniform(-1, 1, n_cols))
        counts = rng.integers(1, 10**6, (n_rows, n_cols)).astype(float)
        gains, lamps = gauge(gains, lamps, counts.sum(axis=1))
        solution = solve_separable_scales(np.outer(gains, lamps), counts)
        np.testing.assert_allclose(solution.row_scales, gains, rtol=1e-9)
        np.testing.assert_allclose(solution.column_scales, lamps, rtol=1e-9)
        self.assertFalse(solution.rejected.any())


class WeightedLeastSquaresTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        gains, lamps, levels = make_truth(25, 9, seed=11, noise=3e-3)
        rng = np.random.default_rng(12)
        levels[rng.random(levels.shape) < 0.15] = np.nan
        self.levels = levels
        self.counts = rng.integers(100, 10000, levels.shape).astype(float)

    def test_matches_brute_force_with_counts(self):
        solution = solve_separable_scales(self.levels, self.counts, outlier_sigma=0)
        gains, lamps = brute_force(self.levels, self.counts)
        np.testing.assert_allclose(solution.row_scales, gains, rtol=1e-10)
        np.testing.assert_allclose(solution.column_scales, lamps, rtol=1e-10)

    def test_matches_brute_force_with_unit_weights(self):
        solution = solve_separable_scales(self.levels, outlier_sigma=0)
        gains, lamps = brute_force(self.levels, np.ones_like(self.levels))
        np.testing.assert_allclose(solution.row_scales, gains, rtol=1e-10)
        np.testing.assert_allclose(solution.column_scales, lamps, rtol=1e-10)

    def test_clean_data_equals_plain_solution(self):
        robust = solve_separable_scales(self.levels, self.counts)
        plain = solve_separable_scales(self.levels, self.counts, outlier_sigma=0)
        self.assertFalse(robust.rejected.any())
        np.testing.assert_array_equal(robust.row_scales, plain.row_scales)
        np.testing.assert_array_equal(robust.column_scales, plain.column_scales)

    def test_gauge_is_count_weighted_mean_of_one(self):
        solution = solve_separable_scales(self.levels, self.counts)
        row_counts = np.where(solution.used, self.counts, 0).sum(axis=1)
        self.assertAlmostEqual(np.average(solution.row_scales, weights=row_counts), 1.0, places=13)

    def test_model_is_product_everywhere(self):
        solution = solve_separable_scales(self.levels, self.counts)
        np.testing.assert_allclose(solution.model, np.outer(solution.row_scales, solution.column_scales))
        self.assertTrue(np.isfinite(solution.model).all())


class RobustnessTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self.gains, self.lamps, self.levels = make_truth(60, 20, seed=21, noise=1e-4)
        self.counts = np.full(self.levels.shape, 2.5e5)

    def test_outliers_are_rejected_and_move_nothing(self):
        corrupt = self.levels.copy()
        damage = {(3, 4): 1.25, (17, 0): 0.75, (40, 19): 1.1, (59, 7): 0.5}
        for (i, j), factor in damage.items():
            corrupt[i, j] *= factor
        solution = solve_separable_scales(corrupt, self.counts)
        rejected = set(zip(*map(list, np.nonzero(solution.rejected))))
        self.assertEqual(rejected, set(damage))
        clean = self.levels.copy()
        for i, j in damage:
            clean[i, j] = np.nan
        reference = solve_separable_scales(clean, self.counts, outlier_sigma=0)
        np.testing.assert_allclose(solution.row_scales, reference.row_scales, rtol=1e-12)
        np.testing.assert_allclose(solution.column_scales, reference.column_scales, rtol=1e-12)
        self.assertTrue(solution.converged)

    def test_partly_shadowed_exposure_on_one_detector(self):
        corrupt = self.levels.copy()
        corrupt[5, 10] *= 0.97  # 3% low on one detector only: 300 sigma, above the 0.5% floor
        solution = solve_separable_scales(corrupt, self.counts)
        self.assertEqual(np.flatnonzero(solution.rejected).tolist(), [5 * 20 + 10])
        recovered_ratio = solution.column_scales[10] / solution.column_scales[9]
        self.assertAlmostEqual(recovered_ratio / (self.lamps[10] / self.lamps[9]), 1.0, delta=1e-4)

    def test_floor_keeps_small_deviations(self):
        corrupt = self.levels.copy()
        corrupt[5, 10] *= 1.004  # 40 sigma, but below the 0.5% floor
        solution = solve_separable_scales(corrupt, self.counts)
        self.assertFalse(solution.rejected.any())
        strict = solve_separable_scales(corrupt, self.counts, outlier_floor=0.0)
        self.assertTrue(strict.rejected[5, 10])

    def test_dead_row(self):
        levels = self.levels.copy()
        levels[13] = 0.0  # a dead amplifier reports 0 in every exposure
        solution = solve_separable_scales(levels, self.counts)
        self.assertTrue(np.isnan(solution.row_scales[13]))
        self.assertEqual(solution.empty_rows.tolist(), [13])
        self.assertEqual(solution.row_groups[13], -1)
        alive = np.arange(60) != 13
        gains, lamps = gauge(self.gains[alive], self.lamps, self.counts[alive].sum(axis=1))
        np.testing.assert_allclose(solution.row_scales[alive], gains, rtol=1e-3)
        np.testing.assert_allclose(solution.column_scales, lamps, rtol=1e-4)

    def test_hot_row_is_a_gain_not_an_outlier(self):
        levels = self.levels.copy()
        levels[2] *= 1.25  # a uniformly hot amplifier is a different response, not an outlier
        solution = solve_separable_scales(levels, self.counts)
        self.assertFalse(solution.rejected.any())
        self.assertAlmostEqual(solution.row_scales[2] / solution.row_scales[3],
                               1.25 * self.gains[2] / self.gains[3], places=3)

    def test_rejection_never_empties_a_row(self):
        """A row measured in two exposures only, beside a shadowed exposure and a missing column,
        looks deviant from the median polish start (its exposures' medians are over different rows);
        rejecting both its entries left it NaN for good, since a row without a scale has no residual
        to be re-admitted by.  As with an exposure, a row whose every entry looks deviant keeps them:
        the deviation is its scale's, which the least squares then fix."""
        rng = np.random.default_rng(31)
        g = np.concatenate([rng.uniform(-0.07, 0.02, 16), rng.uniform(-0.35, -0.17, 8)])
        e = np.array([9.32, 9.74, 10.05, 9.36])
        log_levels = g[:, np.newaxis] + e[np.newaxis, :] + 1e-3 * rng.standard_normal((24, 4))
        shadowed = [(i, 1) for i in (0, 1, 2, 8, 9, 10)]
        for i, j in shadowed:
            log_levels[i, j] -= 0.5
        levels = np.exp(log_levels)
        levels[16:, 3] = np.nan  # the second detector missed the last exposure
        levels[18, 0] = np.nan  # ... and one amplifier of it the first
        levels[12] = 0.0  # a dead amplifier
        solution = solve_separable_scales(levels, np.full(levels.shape, 16.0))
        self.assertTrue(np.isfinite(solution.row_scales[18]))
        self.assertEqual(solution.empty_rows.tolist(), [12])
        self.assertEqual(sorted(zip(*map(list, np.nonzero(solution.rejected)))), shadowed)
        self.assertTrue(solution.converged)

    def test_iteration_limit_reports_not_converged(self):
        corrupt = self.levels.copy()
        corrupt[3, 4] *= 1.3
        solution = solve_separable_scales(corrupt, self.counts, max_iterations=1, outlier_floor=0.0)
        self.assertEqual(solution.iterations, 1)
        self.assertIsInstance(solution.converged, bool)


class StructureErrorsTestCase(lsst.utils.tests.TestCase):
    def test_disconnected_groups_raise_with_members(self):
        _, _, levels = make_truth(6, 4, seed=31)
        levels[:3, 2:] = np.nan
        levels[3:, :2] = np.nan
        with self.assertRaises(DisconnectedDataError) as cm:
            solve_separable_scales(levels)
        self.assertEqual(cm.exception.row_groups, [[0, 1, 2], [3, 4, 5]])
        self.assertEqual(cm.exception.column_groups, [[0, 1], [2, 3]])
        self.assertIn("2 unconnected groups", str(cm.exception))

    def test_disconnected_groups_solved_separately_when_allowed(self):
        gains, lamps, levels = make_truth(6, 4, seed=32)
        levels[:3, 2:] = np.nan
        levels[3:, :2] = np.nan
        solution = solve_separable_scales(levels, allow_disconnected=True)
        self.assertEqual(solution.n_groups, 2)
        np.testing.assert_array_equal(solution.row_groups, [0, 0, 0, 1, 1, 1])
        for rows, cols in ((slice(0, 3), slice(0, 2)), (slice(3, 6), slice(2, 4))):
            expected_g, expected_e = gauge(gains[rows], lamps[cols], np.ones(3))
            np.testing.assert_allclose(solution.row_scales[rows], expected_g, rtol=1e-12)
            np.testing.assert_allclose(solution.column_scales[cols], expected_e, rtol=1e-12)

    def test_exposure_without_valid_entry_raises(self):
        _, _, levels = make_truth(5, 4, seed=33)
        levels[:, 2] = np.nan
        levels[:, 3] = 0.0
        with self.assertRaises(EmptyColumnError) as cm:
            solve_separable_scales(levels)
        self.assertEqual(cm.exception.columns, [2, 3])

    def test_shape_checks(self):
        with self.assertRaisesRegex(ValueError, "must be 2-d"):
            solve_separable_scales(np.ones(4))
        with self.assertRaisesRegex(ValueError, "does not match"):
            solve_separable_scales(np.ones((3, 2)), np.ones((2, 3)))
        with self.assertRaisesRegex(ValueError, "at least 1"):
            solve_separable_scales(np.ones((3, 2)), max_iterations=0)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
