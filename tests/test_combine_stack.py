# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of the clipped-mean stack combination and its compiled kernel."""

import math
import unittest
import unittest.mock
import warnings

import numpy as np

import lsst.cp.flatnorm.combine_stack as combine_stack_module
import lsst.utils.tests
from lsst.cp.flatnorm.combine_kernel import block_pixels, sorting_network
from lsst.cp.flatnorm.combine_stack import (
    IQR_TO_SIGMA,
    MEDIAN_VARIANCE_FACTOR,
    combine_stack,
    iter_subregions,
    weighted_mean,
)


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
        # Clipping Gaussian inputs at 3 sigma rejects ~0.2% of them and costs ~2% of efficiency
        # that the propagated variance (which ignores the selection) does not include.
        self.assertLess(1.0 - clipped.n_used.mean() / n_inputs, 0.004)
        ratio = np.var(residual) / clipped.variance.mean()
        self.assertGreater(ratio, 1.0)
        self.assertLess(ratio, 1.08)

    def test_width_floor_keeps_good_inputs(self):
        """Without variance planes the rule is afw's, whose noisy first width (from the interquartile
        range of 25 values) drops ~0.8% of good inputs; the floor from the variance planes keeps
        them, and the flat is less noisy on the same data."""
        rng = np.random.default_rng(3)
        values = 50.0 + rng.normal(0.0, 2.0, (25, 80, 100))
        valid = np.ones(values.shape, bool)
        floor = combine_stack(values, np.full(values.shape, 4.0), valid)
        afw = combine_stack(values, np.zeros(values.shape), valid)
        self.assertGreater(1.0 - afw.n_used.mean() / 25, 0.005)
        self.assertLess(1.0 - floor.n_used.mean() / 25, 0.003)
        self.assertLess(np.var(floor.image - 50.0), 0.97 * np.var(afw.image - 50.0))

    def test_bands_equal_whole_image(self):
        rng = np.random.default_rng(4)
        values = 10.0 + rng.normal(size=(7, 23, 11))
        values[3, 5:9, 2:4] = 80.0
        variances = rng.uniform(0.5, 1.5, values.shape)
        valid = rng.random(values.shape) > 0.2
        for variance_from_inputs in (True, False):
            whole = combine_stack(values, variances, valid, variance_from_inputs=variance_from_inputs)
            for tile in iter_subregions(23, 11, 5, 4):
                part = combine_stack(values[(slice(None),) + tile], variances[(slice(None),) + tile],
                                     valid[(slice(None),) + tile], variance_from_inputs=variance_from_inputs)
                np.testing.assert_array_equal(part.image, whole.image[tile])
                np.testing.assert_array_equal(part.variance, whole.variance[tile])
                np.testing.assert_array_equal(part.n_used, whole.n_used[tile])

    def test_shape_mismatch_raises(self):
        with self.assertRaisesRegex(ValueError, "share one 3-d shape"):
            combine_stack(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), np.ones((2, 3, 5), bool))

    def test_unknown_statistic_raises(self):
        with self.assertRaisesRegex(ValueError, r"Unknown statistic 'MAX'; expected one of \('MEANCLIP', "
                                                r"'MEAN', 'MEDIAN'\)\."):
            combine_stack(*_stack([1.0, 2.0]), statistic="MAX")


def _reference_pixel(values, variances, valid, *, n_sigma=3.0, n_iter=3, min_inputs_for_clip=3,
                     statistic="MEANCLIP", variance_from_inputs=True):
    """The documented rule for one pixel, written plainly in float64: (image, variance, n_used,
    clipped)."""
    values, variances = np.asarray(values, np.float64), np.asarray(variances, np.float64)
    candidates = np.asarray(valid, bool) & np.isfinite(values) & np.isfinite(variances)
    x, var = values[candidates], variances[candidates]
    n = x.size
    if n == 0:
        return np.nan, np.nan, 0, False
    use_mean = {"MEANCLIP": n >= min_inputs_for_clip, "MEAN": True, "MEDIAN": False}[statistic]
    kept = np.ones(n, bool)
    if use_mean and statistic == "MEANCLIP":
        sigma_var = np.sqrt(var.mean())
        centre = np.median(x)
        width = max(IQR_TO_SIGMA * (np.quantile(x, 0.75) - np.quantile(x, 0.25)), sigma_var)
        for _ in range(n_iter):
            new = (x >= centre - n_sigma * width) & (x <= centre + n_sigma * width)
            if not new.any():
                new = kept
            if np.array_equal(new, kept):
                break
            kept = new
            centre = x[kept].mean()
            width = max(x[kept].std(ddof=1) if kept.sum() >= 2 else 0.0, sigma_var)
    k = int(kept.sum())
    variance = var[kept].sum() / k**2
    if not variance_from_inputs and k >= 2:
        variance = x[kept].var(ddof=1) / k
    if not use_mean:
        return np.median(x), variance * (MEDIAN_VARIANCE_FACTOR if n >= 3 else 1.0), n, False
    return x[kept].mean(), variance, k, True


def _reference_stack(values, variances, valid, **options):
    """`_reference_pixel` on every pixel of a stack."""
    shape = values.shape[1:]
    image, variance = np.empty(shape), np.empty(shape)
    n_used, clipped = np.empty(shape, np.int64), np.empty(shape, bool)
    for index in np.ndindex(shape):
        pixel = (slice(None),) + index
        image[index], variance[index], n_used[index], clipped[index] = _reference_pixel(
            values[pixel], variances[pixel], valid[pixel], **options)
    return image, variance, n_used, clipped


class ReferenceTestCase(lsst.utils.tests.TestCase):
    """combine_stack equals the rule written plainly in float64 (`_reference_pixel`), to rounding:
    the same inputs kept at every pixel, means to float64 rounding of the values (float32 stacks
    included), variances to 1e-13."""

    def stack(self, n_inputs, dtype, seed, shape=(13, 17)):
        """Flat-like inputs with cosmic rays, masked and non-finite inputs, and all-masked pixels."""
        rng = np.random.default_rng(seed)
        level = rng.uniform(500.0, 2000.0, shape)
        values = level + np.sqrt(level) * rng.normal(size=(n_inputs,) + shape)
        hits = rng.random(values.shape) < 0.03
        values[hits] += rng.exponential(300.0, hits.sum())
        values[rng.random(values.shape) < 0.01] = np.nan
        values[0, 0, 1] = np.inf
        variances = level * rng.uniform(0.8, 1.2, values.shape)
        variances[rng.random(values.shape) < 0.01] = np.inf
        valid = rng.random(values.shape) > 0.1
        valid[:, 2, 3] = False  # no input at all
        valid[1:, 4, 5] = False  # one input
        valid[2:, 5, 6] = False  # two inputs (below min_inputs_for_clip: median = mean)
        return values.astype(dtype), variances.astype(dtype), valid

    def check(self, values, variances, valid, **options):
        result = combine_stack(values, variances, valid, **options)
        image, variance, n_used, clipped = _reference_stack(values, variances, valid, **options)
        np.testing.assert_array_equal(result.n_used, n_used)
        np.testing.assert_array_equal(result.clipped, clipped)
        np.testing.assert_array_equal(np.isnan(result.image), np.isnan(image))
        # Sums in another order: float64 rounding of the largest value, not float32's.
        scale = np.abs(values[np.isfinite(values)]).max()
        np.testing.assert_allclose(result.image, image, rtol=0, atol=64 * np.finfo(np.float64).eps * scale)
        np.testing.assert_allclose(result.variance, variance, rtol=1e-13, atol=0)

    def test_meanclip(self):
        for dtype in (np.float32, np.float64):
            for n_inputs in (1, 2, 3, 4, 7, 20, 50):
                for variance_from_inputs in (True, False):
                    with self.subTest(dtype=dtype.__name__, n_inputs=n_inputs,
                                      variance_from_inputs=variance_from_inputs):
                        self.check(*self.stack(n_inputs, dtype, seed=n_inputs),
                                   variance_from_inputs=variance_from_inputs)

    def test_options(self):
        stack = self.stack(15, np.float32, seed=11)
        for options in ({"n_sigma": 2.0}, {"n_sigma": 5.0, "n_iter": 10}, {"n_iter": 0}, {"n_iter": 1},
                        {"min_inputs_for_clip": 10}, {"statistic": "MEAN"}, {"statistic": "MEDIAN"},
                        {"statistic": "MEDIAN", "variance_from_inputs": False},
                        {"statistic": "MEAN", "variance_from_inputs": False}):
            with self.subTest(**options):
                self.check(*stack, **options)

    def test_without_variance_planes_the_rule_is_afws(self):
        values, variances, valid = self.stack(20, np.float64, seed=5)
        self.check(values, np.zeros_like(variances), valid)

    def test_blocks_and_single_pixel_blocks(self):
        """Pixels are combined in blocks of a row; a pixel's result must not depend on its block."""
        block = block_pixels(9)
        values, variances, valid = self.stack(9, np.float32, seed=6, shape=(6, block + 90))
        whole = combine_stack(values, variances, valid, variance_from_inputs=False)
        for columns in (slice(5, 6), slice(1, block + 2), slice(block - 1, None)):
            with self.subTest(columns=columns):
                part = combine_stack(values[:, :, columns], variances[:, :, columns], valid[:, :, columns],
                                     variance_from_inputs=False)
                np.testing.assert_array_equal(part.image, whole.image[:, columns])
                np.testing.assert_array_equal(part.variance, whole.variance[:, columns])
                np.testing.assert_array_equal(part.n_used, whole.n_used[:, columns])

    def test_negative_values_and_ties(self):
        # Keys of negative floats sort in reverse bit order; zeros of both signs and repeated values.
        rng = np.random.default_rng(8)
        values = np.round(rng.normal(0.0, 3.0, (12, 9, 9))).astype(np.float32)
        values[:, 0, 0] = -0.0
        values[::2, 0, 1] = 0.0
        values[5, 3, 3] = -1e6
        variances = np.full(values.shape, 9.0, np.float32)
        self.check(values, variances, np.ones(values.shape, bool))

    def test_every_small_count_of_inputs(self):
        """At every number of inputs from 1 to 12 (odd counts read with a pad row) and beyond, with
        most pixels having every input a candidate (the kernel's quartiles at fixed ranks) and a few
        not (their own ranks): per-input scales as the combine task divides by them, cosmic rays,
        ties, no input, one input, a NaN variance and an infinite value."""
        rng = np.random.default_rng(21)
        shape = (4, 37)
        for n_inputs in list(range(1, 13)) + [16, 31]:
            scales = rng.uniform(0.5, 2.0, (n_inputs, 1, 1))
            level = rng.uniform(500.0, 2000.0, shape) * scales
            values = (level + np.sqrt(level) * rng.normal(size=level.shape)) / scales
            hits = rng.random(values.shape) < 0.02
            values[hits] += rng.exponential(300.0, hits.sum())
            variances = level / scales**2
            valid = rng.random(values.shape) > 0.005
            values[:, 0, 0] = 1000.0  # all tied
            values[: n_inputs // 2, 0, 1] = 1000.0  # half tied
            valid[:, 1, 0] = False  # no input
            valid[1:, 1, 1] = False  # one input
            variances[0, 2, 0] = np.nan
            values[n_inputs - 1, 2, 1] = np.inf
            for variance_from_inputs in (True, False):
                with self.subTest(n_inputs=n_inputs, variance_from_inputs=variance_from_inputs):
                    self.check(values.astype(np.float32), variances.astype(np.float32), valid,
                               variance_from_inputs=variance_from_inputs)


class KernelTestCase(lsst.utils.tests.TestCase):
    """The compiled kernel's pieces and the arrays it accepts."""

    def test_sorting_network_sorts(self):
        rng = np.random.default_rng(9)
        for n in range(1, 70):
            with self.subTest(n=n):
                columns = np.round(rng.normal(size=(n, 300)), 1)  # with ties
                for low, high in sorting_network(n):
                    columns[[low, high]] = np.sort(columns[[low, high]], axis=0)
                np.testing.assert_array_equal(columns, np.sort(columns, axis=0))

    def test_read_only_strided_and_mixed_inputs(self):
        """Read-only and strided arrays, integer values and a float32/float64 mix give the float64
        answers."""
        values, variances, valid = ReferenceTestCase().stack(8, np.float64, seed=12)
        values = np.where(np.isfinite(values), np.round(values), 0.0)  # integers
        expected = combine_stack(values, variances, valid)
        strided = [np.repeat(array, 2, axis=2)[:, :, ::2] for array in (values, variances, valid)]
        for array in strided:
            array.flags.writeable = False
        rounded = variances.astype(np.float32)
        for case, arrays, expected in (
                ("read-only, strided", strided, expected),
                ("integer values", (values.astype(np.int32), variances, valid), expected),
                ("float32 variances", (values, rounded, valid),
                 combine_stack(values, rounded.astype(np.float64), valid))):
            with self.subTest(case=case):
                result = combine_stack(*arrays)
                np.testing.assert_array_equal(result.n_used, expected.n_used)
                np.testing.assert_array_equal(result.image, expected.image)
                np.testing.assert_array_equal(result.variance, expected.variance)

    def test_strided_stack_in_copied_bands(self):
        """A stack that is not C-contiguous is combined in bands of rows copied one at a time (here
        one row each): the same numbers as the contiguous stack."""
        values, variances, valid = ReferenceTestCase().stack(6, np.float32, seed=13)
        expected = combine_stack(values, variances, valid)
        wide = [np.concatenate([array, array], axis=2) for array in (values, variances, valid)]
        strided = [array[:, :, :values.shape[2]] for array in wide]
        with unittest.mock.patch.object(combine_stack_module, "_COPY_BYTES", 1):
            result = combine_stack(*strided)
        for name in ("image", "variance", "n_used", "clipped"):
            np.testing.assert_array_equal(getattr(result, name), getattr(expected, name), err_msg=name)


class StatisticsTestCase(lsst.utils.tests.TestCase):
    """The MEAN and MEDIAN statistics, and the variance from the spread of the inputs."""

    def setUp(self):
        # Six inputs, one an outlier; the last one masked.
        self.values, self.variances, self.valid = _stack([1.0, 2.0, 3.0, 4.0, 50.0, 7.0],
                                                         [1.0, 2.0, 1.0, 2.0, 1.0, 1.0],
                                                         [True] * 5 + [False])

    def test_mean_keeps_the_outlier(self):
        result = combine_stack(self.values, self.variances, self.valid, statistic="MEAN")
        self.assertEqual(result.image[0, 0], 12.0)
        self.assertEqual(result.n_used[0, 0], 5)
        self.assertEqual(result.variance[0, 0], 7.0 / 25)
        self.assertTrue(result.clipped[0, 0])

    def test_mean_of_a_single_input_is_that_input(self):
        values, variances, valid = _stack([5.0, 8.0], [2.0, 1.0], [True, False])
        result = combine_stack(values, variances, valid, statistic="MEAN", min_inputs_for_clip=3)
        self.assertEqual((result.image[0, 0], result.variance[0, 0]), (5.0, 2.0))

    def test_median_everywhere(self):
        result = combine_stack(self.values, self.variances, self.valid, statistic="MEDIAN")
        self.assertEqual(result.image[0, 0], 3.0)
        self.assertFalse(result.clipped[0, 0])
        self.assertAlmostEqual(result.variance[0, 0], MEDIAN_VARIANCE_FACTOR * 7.0 / 25, places=14)

    def test_meanclip_rejects_the_outlier(self):
        result = combine_stack(self.values, self.variances, self.valid)
        self.assertEqual(result.image[0, 0], 2.5)
        self.assertEqual(result.n_used[0, 0], 4)

    def test_variance_from_spread(self):
        # Kept: 1, 2, 3, 4; unbiased sample variance 5/3, over n = 4.
        result = combine_stack(self.values, self.variances, self.valid, variance_from_inputs=False)
        self.assertAlmostEqual(result.variance[0, 0], (5.0 / 3.0) / 4, places=14)
        median = combine_stack(self.values, self.variances, self.valid, statistic="MEDIAN",
                               variance_from_inputs=False)
        spread = np.var([1.0, 2.0, 3.0, 4.0, 50.0], ddof=1)
        self.assertAlmostEqual(median.variance[0, 0], MEDIAN_VARIANCE_FACTOR * spread / 5, places=12)

    def test_single_input_keeps_propagated_variance_without_spread(self):
        values, variances, valid = _stack([5.0, 8.0], [2.0, 1.0], [True, False])
        result = combine_stack(values, variances, valid, variance_from_inputs=False)
        self.assertEqual((result.image[0, 0], result.variance[0, 0]), (5.0, 2.0))


class WeightedMeanTestCase(lsst.utils.tests.TestCase):
    """weighted_mean: fixed weights, renormalised over the inputs a pixel has."""

    def test_weighted_mean_and_variance(self):
        values = np.array([[[1.0, 2.0, np.nan, 4.0]], [[3.0, 6.0, 5.0, np.nan]]])
        variances = np.array([[[1.0, 4.0, 1.0, 2.0]], [[2.0, 1.0, 3.0, 1.0]]])
        valid = np.array([[[True, True, True, True]], [[True, False, True, True]]])
        result = weighted_mean(values, variances, valid, np.array([0.25, 0.75]))
        np.testing.assert_array_equal(result.image, [[0.25 * 1 + 0.75 * 3, 2.0, 5.0, 4.0]])
        np.testing.assert_array_equal(result.variance, [[0.0625 * 1 + 0.5625 * 2, 4.0, 3.0, 2.0]])
        np.testing.assert_array_equal(result.n_used, [[2, 1, 1, 1]])

    def test_no_usable_input_is_nan(self):
        values, variances, valid = _stack([1.0, 2.0], valid=[False, False])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = weighted_mean(values, variances, valid, np.array([0.5, 0.5]))
        self.assertTrue(np.isnan(result.image[0, 0]) and result.no_data[0, 0])

    def test_zero_weight_input_is_not_used(self):
        values, variances, valid = _stack([1.0, 2.0])
        result = weighted_mean(values, variances, valid, np.array([0.0, 1.0]))
        self.assertEqual((result.image[0, 0], result.n_used[0, 0]), (2.0, 1))

    def test_bad_weights_raise(self):
        with self.assertRaisesRegex(ValueError,
                                    r"^Weights must be finite and non-negative; got \[-0.5, 1.5\]\.$"):
            weighted_mean(*_stack([1.0, 2.0]), np.array([-0.5, 1.5]))
        with self.assertRaisesRegex(ValueError, "weights its first axis"):
            weighted_mean(*_stack([1.0, 2.0]), np.array([1.0]))


class SubregionsTestCase(unittest.TestCase):
    """iter_subregions covers every pixel once, row by row."""

    def test_tiles(self):
        self.assertEqual(list(iter_subregions(5, 7, 2, 4)), [
            (slice(0, 2), slice(0, 4)), (slice(0, 2), slice(4, 7)),
            (slice(2, 4), slice(0, 4)), (slice(2, 4), slice(4, 7)),
            (slice(4, 5), slice(0, 4)), (slice(4, 5), slice(4, 7)),
        ])
        self.assertEqual(list(iter_subregions(3, 8, 200, 10000)), [(slice(0, 3), slice(0, 8))])

    def test_non_positive_tile_raises(self):
        with self.assertRaisesRegex(ValueError, r"Tile sizes must be positive; got 0 x 4\."):
            list(iter_subregions(10, 10, 0, 4))


class MemoryTestCase(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()
