# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of the pure-numpy clipped-mean stack combination."""

import math
import unittest
import warnings

import numpy as np

import lsst.utils.tests
from lsst.cp.flatnorm.combine_stack import MEDIAN_VARIANCE_FACTOR, combine_stack, iter_row_bands


def _stack(values, variances=None, valid=None):
    """Shape a list of per-input values into (n_inputs, 1, 1) arrays."""
    values = np.asarray(values, dtype=float).reshape(-1, 1, 1)
    variances = np.ones_like(values) if variances is None else np.asarray(variances, float).reshape(-1, 1, 1)
    valid = np.ones(values.shape, bool) if valid is None else np.asarray(valid, bool).reshape(-1, 1, 1)
    return values, variances, valid


class CombineStackTestCase(lsst.utils.tests.TestCase):
    """combine_stack against hand-computed answers and Gaussian statistics."""

    def test_outlier_is_clipped(self):
        rng = np.random.default_rng(1)
        good = 100.0 + np.linspace(-1.5, 1.5, 12)
        variances = rng.uniform(0.5, 2.0, 13)
        values, variances, valid = _stack(np.append(good, 150.0), variances)
        result = combine_stack(values, variances, valid, n_sigma=3.0, n_iter=3)
        self.assertAlmostEqual(result.image[0, 0], good.mean(), places=12)
        self.assertEqual(result.n_used[0, 0], 12)
        self.assertTrue(result.clipped[0, 0])
        self.assertAlmostEqual(result.variance[0, 0], variances[:12].sum() / 144, places=12)

    def test_invalid_and_non_finite_inputs_are_ignored(self):
        values, variances, valid = _stack([1.0, 2.0, 3.0, 4.0, 1e6, np.nan, 5.0],
                                          [1, 1, 1, 1, 1, 1, np.inf],
                                          [True, True, True, True, False, True, True])
        result = combine_stack(values, variances, valid)
        self.assertEqual(result.image[0, 0], 2.5)
        self.assertEqual(result.n_used[0, 0], 4)

    def test_median_fallback_below_min_inputs(self):
        values, variances, valid = _stack([1.0, 2.0, 10.0], [1.0, 2.0, 3.0])
        result = combine_stack(values, variances, valid, min_inputs_for_clip=4)
        self.assertEqual(result.image[0, 0], 2.0)
        self.assertFalse(result.clipped[0, 0])
        self.assertEqual(result.n_used[0, 0], 3)
        self.assertAlmostEqual(result.variance[0, 0], MEDIAN_VARIANCE_FACTOR * 6.0 / 9.0, places=12)

    def test_two_inputs_median_is_their_mean(self):
        values, variances, valid = _stack([1.0, 4.0], [1.0, 3.0])
        result = combine_stack(values, variances, valid, min_inputs_for_clip=3)
        self.assertEqual(result.image[0, 0], 2.5)
        self.assertEqual(result.variance[0, 0], 1.0)

    def test_median_matches_numpy(self):
        rng = np.random.default_rng(2)
        values = rng.normal(size=(9, 20, 30))
        valid = rng.random(values.shape) > 0.3
        result = combine_stack(values, np.ones_like(values), valid, min_inputs_for_clip=100)
        expected = np.nanmedian(np.where(valid, values, np.nan), axis=0)
        np.testing.assert_allclose(result.image, expected, rtol=0, atol=1e-14)

    def test_no_data_is_nan_without_warnings(self):
        values, variances, valid = _stack([1.0, 2.0, 3.0], valid=[False, False, False])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = combine_stack(values, variances, valid)
        self.assertTrue(np.isnan(result.image[0, 0]))
        self.assertTrue(np.isnan(result.variance[0, 0]))
        self.assertTrue(result.no_data[0, 0])

    def test_identical_values_are_kept(self):
        values, variances, valid = _stack([0.1, 0.1, 0.1, 0.1])
        result = combine_stack(values, variances, valid)
        self.assertAlmostEqual(result.image[0, 0], 0.1, places=15)
        self.assertEqual(result.n_used[0, 0], 4)

    def test_no_iterations_is_plain_mean(self):
        values, variances, valid = _stack([1.0, 2.0, 3.0, 100.0])
        result = combine_stack(values, variances, valid, n_iter=0)
        self.assertEqual(result.image[0, 0], 26.5)

    def test_gaussian_noise_against_propagated_variance(self):
        rng = np.random.default_rng(3)
        n_inputs, sigma = 25, 2.0
        values = 50.0 + rng.normal(0.0, sigma, (n_inputs, 80, 100))
        variances, valid = np.full(values.shape, sigma**2), np.ones(values.shape, bool)
        plain = combine_stack(values, variances, valid, n_iter=0)
        clipped = combine_stack(values, variances, valid)
        # 8000 pixels: the variance ratio is measured to 1.6%.
        self.assertFloatsAlmostEqual(np.var(plain.image - 50.0) / plain.variance.mean(), 1.0, rtol=0.05)
        residual = clipped.image - 50.0
        self.assertLess(abs(residual.mean()), 5 * sigma / math.sqrt(n_inputs * residual.size))
        # Clipping Gaussian inputs rejects ~1% of them and costs a few per cent of efficiency
        # that the propagated variance (which ignores the selection) does not include.
        self.assertLess(1.0 - clipped.n_used.mean() / n_inputs, 0.02)
        ratio = np.var(residual) / clipped.variance.mean()
        self.assertGreater(ratio, 1.0)
        self.assertLess(ratio, 1.12)

    def test_bands_equal_whole_image(self):
        rng = np.random.default_rng(4)
        values = 10.0 + rng.normal(size=(7, 23, 11))
        values[3, 5:9, 2:4] = 80.0
        variances = rng.uniform(0.5, 1.5, values.shape)
        valid = rng.random(values.shape) > 0.2
        whole = combine_stack(values, variances, valid)
        for start, stop in iter_row_bands(23, 5):
            band = combine_stack(values[:, start:stop], variances[:, start:stop], valid[:, start:stop])
            np.testing.assert_array_equal(band.image, whole.image[start:stop])
            np.testing.assert_array_equal(band.variance, whole.variance[start:stop])
            np.testing.assert_array_equal(band.n_used, whole.n_used[start:stop])

    def test_shape_mismatch_raises(self):
        with self.assertRaisesRegex(ValueError, "share one 3-d shape"):
            combine_stack(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), np.ones((2, 3, 5), bool))


class RowBandsTestCase(unittest.TestCase):
    """iter_row_bands covers every row once."""

    def test_bands(self):
        self.assertEqual(list(iter_row_bands(10, 4)), [(0, 4), (4, 8), (8, 10)])
        self.assertEqual(list(iter_row_bands(3, 8)), [(0, 3)])

    def test_non_positive_band_raises(self):
        with self.assertRaisesRegex(ValueError, "band_rows must be positive"):
            list(iter_row_bands(10, 0))


class MemoryTestCase(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()
