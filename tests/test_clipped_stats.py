# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of the vectorised sigma-clipped statistics of an image and its regions."""

import unittest
import unittest.mock
import warnings

import numpy as np

import lsst.utils.tests
from lsst.cp.flatnorm import clipped_stats
from lsst.cp.flatnorm.clipped_stats import sigma_clipped_region_stats

# Three regions covering all but the last two columns of a 12 x 20 image.
SHAPE = (12, 20)
REGIONS = [
    (slice(0, 6), slice(0, 9)),
    (slice(0, 6), slice(9, 18)),
    (slice(6, 12), slice(0, 18)),
]


def _reference_clip(values, n_sigma, max_iter):
    """Clip one region's good values with a plain loop: (mean, population std, N, passes)."""
    kept = values
    passes = 0
    for passes in range(1, max_iter + 1):
        if kept.size == 0 or not kept.std() > 0:  # no values, or all equal
            break
        deviation = np.abs(kept - kept.mean())
        survivors = kept[deviation <= n_sigma * kept.std()]
        if survivors.size == kept.size:
            break
        kept = survivors
    if kept.size == 0:
        return np.nan, np.nan, 0, passes
    return kept.mean(), kept.std(), kept.size, passes


def _two_level_outliers():
    """50 pixels at +1, 50 at -1, one at 10 and one at 1000.

    Pass 1 drops only 1000 (mean 9.9, sigma 98.5); pass 2 then drops 10 (mean 0.099, sigma
    1.40); pass 3 drops nothing, leaving mean 0, sigma 1, N 100.
    """
    return np.concatenate([np.ones(50), -np.ones(50), [10.0, 1000.0]]).reshape(1, -1)


class SigmaClippedRegionStatsTestCase(lsst.utils.tests.TestCase):
    """sigma_clipped_region_stats against a per-region numpy loop and hand-computed truth."""

    def setUp(self):
        rng = np.random.default_rng(20240611)
        self.image = rng.normal(1000.0, 10.0, SHAPE)
        self.image[6:, :] *= 1.5  # each region its own level, so a shared clip would fail
        self.image[1, 2] = 5000.0  # outliers the clip must drop
        self.image[8, 14] = -300.0
        self.image[2, 12] = np.nan  # left "good" on purpose: non-finite pixels are never used
        self.good = np.ones(SHAPE, dtype=bool)
        self.good[4, :] = False
        self.good[0, 10] = False
        self.image[0, 10] = 1e9  # masked, so it must not pull the mean

    def test_matches_numpy_loop_per_region(self):
        for max_iter in (0, 1, 5):
            stats = sigma_clipped_region_stats(self.image, self.good, REGIONS, 2.5, max_iter)
            usable = self.good & np.isfinite(self.image)
            for i, region in enumerate(REGIONS):
                mean, sigma, n, _ = _reference_clip(self.image[region][usable[region]], 2.5, max_iter)
                with self.subTest(max_iter=max_iter, region=i):
                    self.assertFloatsAlmostEqual(stats.mean[i], mean, rtol=1e-12)
                    self.assertFloatsAlmostEqual(stats.sigma[i], sigma, rtol=1e-10)
                    self.assertEqual(stats.n[i], n)
            mean, sigma, n, _ = _reference_clip(self.image[usable], 2.5, max_iter)
            self.assertFloatsAlmostEqual(stats.whole_mean, mean, rtol=1e-12)
            self.assertFloatsAlmostEqual(stats.whole_sigma, sigma, rtol=1e-10)
            self.assertEqual(stats.whole_n, n)

    def test_outliers_masks_and_nan_are_excluded(self):
        stats = sigma_clipped_region_stats(self.image, self.good, REGIONS, 3.0, 5)
        # Region 0 has 6 x 9 pixels; row 4 (9 pixels) is masked and the 5000 outlier is clipped.
        self.assertLessEqual(stats.n[0], 54 - 9 - 1)
        self.assertLess(stats.mean[0], 1100.0)
        # Region 1 loses row 4, the masked 1e9 and the NaN.
        self.assertLessEqual(stats.n[1], 54 - 9 - 2)
        self.assertLess(stats.mean[1], 1100.0)
        self.assertGreater(stats.mean[2], 1400.0)
        # The two columns outside every region still count for the whole image.
        self.assertGreater(stats.whole_n, stats.n.sum())

    def test_hand_computed_two_level_clip(self):
        values = _two_level_outliers()
        region = [(slice(0, 1), slice(0, values.shape[1]))]
        good = np.ones(values.shape, dtype=bool)
        expected = {  # max_iter: (mean, sigma, N, n_iter)
            0: (1010.0 / 102, np.std(values), 102, 0),
            1: (10.0 / 101, np.sqrt(200.0 / 101 - (10.0 / 101)**2), 101, 1),
            2: (0.0, 1.0, 100, 2),
            10: (0.0, 1.0, 100, 3),
        }
        for max_iter, (mean, sigma, n, n_iter) in expected.items():
            stats = sigma_clipped_region_stats(values, good, region, 3.0, max_iter)
            with self.subTest(max_iter=max_iter):
                self.assertFloatsAlmostEqual(stats.mean[0], mean, atol=1e-14)
                self.assertFloatsAlmostEqual(stats.sigma[0], sigma, rtol=1e-14)
                self.assertEqual(stats.n[0], n)
                self.assertEqual(stats.n_iter, n_iter)
                self.assertFloatsAlmostEqual(stats.whole_mean, mean, atol=1e-14)

    def test_stops_at_first_pass_without_change(self):
        values = np.tile([1.0, 2.0, 3.0], (4, 4))
        stats = sigma_clipped_region_stats(values, np.ones(values.shape, bool),
                                           [(slice(0, 4), slice(0, 12))], 3.0, 50)
        self.assertEqual(stats.n_iter, 1)
        self.assertEqual(stats.n[0], 48)

    def test_fully_masked_region_is_nan_without_warning(self):
        good = self.good.copy()
        good[REGIONS[1]] = False
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            stats = sigma_clipped_region_stats(self.image, good, REGIONS, 3.0, 3)
            nothing = sigma_clipped_region_stats(self.image, np.zeros(SHAPE, bool), REGIONS, 3.0, 3)
        self.assertTrue(np.isnan(stats.mean[1]) and np.isnan(stats.sigma[1]))
        self.assertEqual(stats.n[1], 0)
        self.assertTrue(np.all(np.isfinite(stats.mean[[0, 2]])))
        self.assertTrue(np.all(np.isnan(nothing.mean)) and np.all(np.isnan(nothing.sigma)))
        np.testing.assert_array_equal(nothing.n, [0, 0, 0])
        self.assertTrue(np.isnan(nothing.whole_mean) and np.isnan(nothing.whole_sigma))
        self.assertEqual(nothing.whole_n, 0)

    def test_constant_region_keeps_every_pixel(self):
        # 0.1 is not exact in binary: the summed mean differs from 0.1 by rounding, and a zero
        # sigma must not turn that rounding into the loss of every pixel.
        values = np.full((3, 7), 0.1)
        stats = sigma_clipped_region_stats(values, np.ones(values.shape, bool),
                                           [(slice(0, 3), slice(0, 7))], 3.0, 3)
        self.assertEqual(stats.n[0], 21)
        self.assertEqual(stats.whole_n, 21)
        self.assertFloatsAlmostEqual(stats.mean[0], 0.1, rtol=1e-15)

    def test_invalid_arguments(self):
        good = np.ones(SHAPE, bool)
        with self.assertRaisesRegex(ValueError, "Region 1 overlaps an earlier region"):
            sigma_clipped_region_stats(self.image, good, [REGIONS[0], (slice(5, 7), slice(8, 10))], 3.0, 3)
        with self.assertRaisesRegex(ValueError, r"Image shape \(12, 20\) differs .* \(12, 19\)"):
            sigma_clipped_region_stats(self.image, good[:, 1:], REGIONS, 3.0, 3)
        with self.assertRaisesRegex(ValueError, "n_sigma must be positive; got 0.0"):
            sigma_clipped_region_stats(self.image, good, REGIONS, 0.0, 3)
        with self.assertRaisesRegex(ValueError, "max_iter must not be negative; got -1"):
            sigma_clipped_region_stats(self.image, good, REGIONS, 3.0, -1)


class ReferenceTestCase(lsst.utils.tests.TestCase):
    """sigma_clipped_region_stats on detector-like images equals the rule written plainly in float64
    (`_reference_clip` on each region's good pixels) to rounding, whichever way it gets there."""

    SHAPE = (200, 256)
    # A 2 x 4 grid of regions leaving the last 16 columns to the whole image only.
    GRID = [(slice(y, y + 100), slice(x, x + 60)) for y in (0, 100) for x in range(0, 240, 60)]

    def image(self, kind, dtype=np.float32, seed=1):
        rng = np.random.default_rng(seed)
        image = rng.normal(20000.0, 150.0, self.SHAPE)
        good = rng.random(self.SHAPE) > 0.02
        if kind == "gains":  # each region its own level: the whole image is a mixture
            for i, region in enumerate(self.GRID):
                image[region] *= 1.0 + 0.03 * i
        elif kind == "gradient":  # vignetting-like: wide, non-Gaussian distributions
            image *= np.linspace(0.6, 1.0, self.SHAPE[1])
        elif kind == "outliers":  # cosmic rays, unmasked, and one absurd pixel
            hits = rng.random(self.SHAPE) < 0.01
            image[hits] += rng.exponential(3000.0, hits.sum())
            image[7, 9] = 1e30
        elif kind == "non-finite":  # NaN and infinities flagged good
            image[rng.random(self.SHAPE) < 0.01] = np.nan
            image[3, 4], image[150, 70] = np.inf, -np.inf
        elif kind == "masked":  # a region without a good pixel, one with a single good pixel
            good[self.GRID[2]] = False
            good[self.GRID[5]] = False
            good[self.GRID[5][0].start, self.GRID[5][1].start] = True
        elif kind == "dead":  # a region reading exactly zero: sigma 0
            image[self.GRID[6]] = 0.0
        elif kind == "bimodal":  # two populations the clip must choose between
            image = np.where(rng.random(self.SHAPE) < 0.5, rng.normal(0.0, 1.0, self.SHAPE),
                             rng.normal(5.0, 1.0, self.SHAPE))
        return image.astype(dtype), good

    def check(self, image, good, n_sigma, max_iter, regions=None):
        regions = self.GRID if regions is None else regions
        stats = sigma_clipped_region_stats(image, good, regions, n_sigma, max_iter)
        usable = good & np.isfinite(image)
        expected = [_reference_clip(image[usable].astype(float), n_sigma, max_iter)]
        expected += [_reference_clip(image[region][usable[region]].astype(float), n_sigma, max_iter)
                     for region in regions]
        got = [(stats.whole_mean, stats.whole_sigma, stats.whole_n)]
        got += list(zip(stats.mean, stats.sigma, stats.n))
        for i, ((mean, sigma, n), (ref_mean, ref_sigma, ref_n, _)) in enumerate(zip(got, expected)):
            with self.subTest(set="whole" if i == 0 else f"region {i - 1}"):
                self.assertEqual(n, ref_n)
                if ref_n == 0:
                    self.assertTrue(np.isnan(mean) and np.isnan(sigma))
                    continue
                # Sums in another order: float64 rounding, relative to the spread of the values.
                scale = max(ref_sigma, np.finfo(np.float64).eps * abs(ref_mean))
                self.assertLessEqual(abs(mean - ref_mean), 1e-11 * scale)
                self.assertLessEqual(abs(sigma - ref_sigma), 1e-11 * scale)
        self.assertEqual(stats.n_iter, max(passes for *_, passes in expected))

    def test_images(self):
        for kind in ("plain", "gains", "gradient", "outliers", "non-finite", "masked", "dead", "bimodal"):
            for dtype in (np.float32, np.float64):
                for max_iter in (0, 1, 3, 20):
                    with self.subTest(kind=kind, dtype=dtype.__name__, max_iter=max_iter):
                        self.check(*self.image(kind, dtype), 3.0, max_iter)

    def test_thresholds_and_regions(self):
        image, good = self.image("outliers")
        for n_sigma in (1.0, 2.5, 5.0):
            with self.subTest(n_sigma=n_sigma):
                self.check(image, good, n_sigma, 5)
        with self.subTest(regions="none"):
            self.check(image, good, 3.0, 3, regions=[])
        with self.subTest(regions="empty box"):
            self.check(image, good, 3.0, 3, regions=[(slice(5, 5), slice(0, 10)), self.GRID[0]])

    def test_direct_computation_when_the_estimate_fails(self):
        """A core wider than the final interval must be caught by the check and the set computed
        from its pixels: the answers do not change."""
        image, good = self.image("outliers")
        calls = []
        direct = clipped_stats._clip_directly

        def counted(*args, **kwargs):
            calls.append(1)
            return direct(*args, **kwargs)

        with unittest.mock.patch.object(clipped_stats, "_CORE_FRACTION", 1.5), \
                unittest.mock.patch.object(clipped_stats, "_clip_directly", counted):
            self.check(image, good, 3.0, 3)
        self.assertEqual(len(calls), 1 + len(self.GRID))
        calls.clear()
        with unittest.mock.patch.object(clipped_stats, "_clip_directly", counted):
            self.check(image, good, 3.0, 3)
        self.assertEqual(calls, [])


class MemoryTestCase(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
