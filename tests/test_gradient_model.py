# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The focal-plane gradient model, its fit and the focal-plane binning (no butler)."""

import math
import unittest

import numpy as np
import pydantic
from astropy.table import Table
from scipy.interpolate import Akima1DInterpolator

import lsst.utils.tests
from lsst.cp.flatnorm.camera_model import AmplifierModel, DetectorModel, PixelBox
from lsst.cp.flatnorm.focal_plane_binning import bin_detector, binned_table, defect_boxes, excluded_pixels
from lsst.cp.flatnorm.gradient_fit import FlatGradientFitter
from lsst.cp.flatnorm.gradient_model import FlatGradientModel, FlatGradientUncertainties, is_itl_family

NODES = [0.0, 100.0, 200.0, 250.0, 300.0, 330.0, 350.0]
VALUES = [1.0, 0.996, 0.98, 0.955, 0.9, 0.82, 0.7]
TRUTH = dict(radial_spline_nodes=NODES, radial_spline_values=VALUES, itl_ratio=0.96, centroid_x=1.0,
             centroid_y=-2.0, centroid_delta_x=3.0, centroid_delta_y=-2.5, gradient_x=2e-4, gradient_y=-1e-4)


class FlatGradientModelTestCase(lsst.utils.tests.TestCase):
    def test_full_model_formula(self):
        model = FlatGradientModel(**TRUTH, normalization_factor=1.3)
        x, y = np.array([0.0, 120.0, -200.0, 400.0]), np.array([0.0, 50.0, 210.0, 0.0])
        itl = np.array([False, True, False, True])
        radius = np.hypot(x - 4.0, y + 4.5)  # centroid + delta
        radial = Akima1DInterpolator(NODES, VALUES)(np.clip(radius, 0, 350))
        plane = 1 + 2e-4 * (x - 1.0) - 1e-4 * (y + 2.0)  # pivot at the centroid, not the offset centre
        expected = radial / plane * np.where(itl, 0.96, 1.0)
        np.testing.assert_allclose(model.full_model(x, y, itl), expected, rtol=1e-14)
        np.testing.assert_allclose(model.computeFullModel(x, y, itl), expected, rtol=1e-14)
        self.assertEqual(model.gradient_model(1.0, -2.0), 1.0)
        self.assertAlmostEqual(float(model.radial_model(1000.0)), VALUES[-1], places=14)  # clipped
        self.assertEqual(model.centre, (4.0, -4.5))

    def test_json_round_trip_keeps_infinite_and_nan_uncertainties(self):
        model = FlatGradientModel(**TRUTH, uncertainties=FlatGradientUncertainties(
            radial_spline_values=[1e-4] * 6 + [math.inf], gradient_x=1e-6))
        again = FlatGradientModel.model_validate_json(model.model_dump_json())
        self.assertEqual(again.uncertainties.radial_spline_values[-1], math.inf)
        self.assertTrue(math.isnan(again.uncertainties.itl_ratio))
        self.assertEqual(again.radial_spline_values, VALUES)
        self.assertEqual(again.schema_version, 1)

    def test_newer_schema_version_is_refused_naming_the_upgrade(self):
        text = FlatGradientModel(**TRUTH).model_dump_json()
        text = text.replace('"schema_version":1', '"schema_version":2')
        with self.assertRaisesRegex(pydantic.ValidationError, "upgrade lsst-cp-flatnorm"):
            FlatGradientModel.model_validate_json(text)

    def test_invalid_parameters_are_refused(self):
        for change in ({"radial_spline_nodes": [0.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0]},
                       {"radial_spline_values": VALUES[:-1]}, {"itl_ratio": 0.0},
                       {"gradient_x": math.nan}, {"normalization_factor": -1.0}):
            with self.subTest(change=change), self.assertRaises(pydantic.ValidationError):
                FlatGradientModel(**{**TRUTH, **change})

    def test_ip_isr_layout_round_trip(self):
        model = FlatGradientModel(**TRUTH, physical_filter="r_57", normalization_factor=1.1)
        layout = model.to_isr_dict()
        self.assertEqual(layout["itlRatio"], 0.96)
        self.assertEqual(layout["metadata"]["FILTER"], "r_57")
        again = FlatGradientModel.from_isr(layout, physical_filter="r_57")
        for name in TRUTH:
            self.assertEqual(getattr(again, name), getattr(model, name))
        self.assertEqual(again.normalizationFactor, 1.1)
        np.testing.assert_array_equal(again.radialSplineNodes, NODES)

    def test_itl_family(self):
        self.assertEqual([is_itl_family(name) for name in ("ITL", "ITL_WF", "pseudoITL", "E2V", "simulated")],
                         [True, True, True, False, False])


def _points(n, seed, reach=345.0):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-reach, reach, (2, n))
    keep = np.hypot(x, y) < reach
    x, y = x[keep], y[keep]
    itl = (np.floor(x / 42) + np.floor(y / 42)) % 2 == 0  # a checkerboard of 42 mm detectors
    return x, y, itl, rng


class FlatGradientFitterTestCase(lsst.utils.tests.TestCase):
    def fit(self, noise=1e-3, seed=1, n=6000, outliers=0, **options):
        x, y, itl, rng = _points(n, seed)
        truth = FlatGradientModel(**{**TRUTH, "centroid_x": 0.0, "centroid_y": 0.0})
        value = truth.full_model(x, y, itl) * (1 + noise * rng.standard_normal(len(x)))
        value[:outliers] *= 1.1
        fitter = FlatGradientFitter(NODES, x, y, value, itl, fit_centroid=True, fit_gradient=True, **options)
        return fitter, fitter.fit(fitter.compute_p0()), truth

    def test_model_and_jacobian(self):
        x, y, itl, _ = _points(500, 3)
        fitter = FlatGradientFitter(NODES, x, y, np.ones(len(x)), itl, fit_centroid=True, fit_gradient=True)
        parameters = np.array(VALUES + [0.96, 3.0, -2.5, 2e-4, -1e-4])
        model = FlatGradientModel(**{**TRUTH, "centroid_x": 0.0, "centroid_y": 0.0})
        np.testing.assert_allclose(fitter.compute_model(parameters), model.full_model(x, y, itl), rtol=1e-13)
        jacobian = fitter.compute_jacobian(parameters)
        for k, step in enumerate([1e-6] * 8 + [1e-4, 1e-4, 1e-9, 1e-9]):
            offset = np.zeros(len(parameters))
            offset[k] = step
            numeric = (fitter.compute_model(parameters + offset)
                       - fitter.compute_model(parameters - offset)) / (2 * step)
            np.testing.assert_allclose(jacobian[:, k], numeric, atol=1e-7 * np.abs(numeric).max(), err_msg=k)

    def test_parameters_recovered_within_their_errors(self):
        _, result, truth = self.fit()
        self.assertTrue(result.converged)
        self.assertFalse(result.rejected.any())
        for name, expected in (("spline", VALUES), ("itl_ratio", [0.96]), ("centroid_delta", [3.0, -2.5]),
                               ("gradient", [2e-4, -1e-4])):
            with self.subTest(name=name):
                errors = result.error(name)
                np.testing.assert_array_less(np.abs(result.value(name) - expected), 4 * errors)
        # The errors are the noise's: 1e-3 per point over ~1,500 points per parameter, not more.
        self.assertLess(np.max(result.error("spline")), 3e-4)
        self.assertLess(np.max(result.error("gradient")), 1e-6)
        self.assertAlmostEqual(result.residual_sigma, 1e-3 * 0.9, delta=2e-4)

    def test_outliers_are_rejected_and_do_not_bias(self):
        _, result, _ = self.fit(outliers=60)
        self.assertTrue(result.rejected[:60].all())
        self.assertEqual(result.rejected[60:].sum(), 0)
        np.testing.assert_array_less(np.abs(result.value("gradient") - [2e-4, -1e-4]),
                                     4 * result.error("gradient"))

    def test_constrain_zero_and_one_family(self):
        x, y, _, rng = _points(3000, 5)
        values = [1.0, 0.99, 0.97, 0.9, 0.7, 0.4, 0.0]
        model = FlatGradientModel(radial_spline_nodes=NODES, radial_spline_values=values)
        value = model.full_model(x, y, False) + 1e-3 * rng.standard_normal(len(x))
        fitter = FlatGradientFitter(NODES, x, y, value, np.zeros(len(x), bool), constrain_zero=True)
        self.assertNotIn("itl_ratio", fitter.indices)
        result = fitter.fit(fitter.compute_p0())
        self.assertEqual(result.value("spline")[-1], 0.0)
        self.assertTrue(math.isnan(result.error("spline")[-1]))
        np.testing.assert_array_less(np.abs(result.value("spline")[:-1] - values[:-1]),
                                     4 * result.error("spline")[:-1])

    def test_node_without_data_is_unconstrained(self):
        x, y, itl, rng = _points(3000, 6, reach=290.0)
        # Akima's slope at a node uses the values two nodes either side: the data (below 290 mm)
        # feel the nodes up to 500 mm, not the one at 600 mm.
        nodes = NODES[:5] + [400.0, 500.0, 600.0]
        value = 1 + 1e-3 * rng.standard_normal(len(x))
        fitter = FlatGradientFitter(nodes, x, y, value, itl)
        result = fitter.fit(fitter.compute_p0())
        self.assertEqual(result.error("spline")[-1], math.inf)
        self.assertTrue(np.all(np.isfinite(result.error("spline")[:4])))

    def test_too_few_points(self):
        fitter = FlatGradientFitter(NODES, np.arange(5.0), np.zeros(5), np.ones(5), np.zeros(5, bool))
        with self.assertRaisesRegex(ValueError, "5 points cannot constrain 7"):
            fitter.fit(fitter.compute_p0())


class FocalPlaneBinningTestCase(lsst.utils.tests.TestCase):
    def test_bins_leave_out_boundary_excluded_and_nonfinite_pixels(self):
        image = np.arange(20 * 30, dtype=float).reshape(20, 30)
        image[5, 5] = np.nan
        excluded = np.zeros(image.shape, bool)
        excluded[6, 6] = True
        x, y, value, n = bin_detector(image, excluded, bin_factor=4, detector_boundary=2, origin=(100, 10))
        # (20 - 4) // 4 = 4 rows and (30 - 4) // 4 = 6 columns of bins.
        self.assertEqual(len(value), 24)
        # A whole bin sits at its centre (afw: pixel centres are integers); a partial one at the mean
        # of its usable pixels: bin 0 lacks (5, 5), so it moves 1/15 of (5 - 3.5) from (3.5, 3.5).
        self.assertEqual((x[6], y[6]), (100 + 2 + 1.5, 10 + 6 + 1.5))
        self.assertAlmostEqual(x[0], 100 + 3.5 - 1.5 / 15)
        self.assertAlmostEqual(y[0], 10 + 3.5 - 1.5 / 15)
        self.assertEqual(n[0], 15)  # rows and columns 2..5 hold the NaN pixel (5, 5)
        self.assertEqual(n[6], 16)  # rows 6..9, columns 2..5
        self.assertEqual(n[7], 15)  # rows and columns 6..9 hold the excluded pixel (6, 6)
        block = image[6:10, 6:10].copy()
        block[0, 0] = np.nan
        self.assertAlmostEqual(value[7], np.nanmean(block))
        self.assertAlmostEqual(value[6], image[6:10, 2:6].mean())

    def test_defects_from_tables_and_boxes(self):
        table = Table({"x0": [3], "y0": [0], "width": [2], "height": [10]})
        self.assertEqual(defect_boxes(table), [(3, 0, 2, 10)])
        boxes = [PixelBox(x0=1, y0=2, width=3, height=4)]
        self.assertEqual(defect_boxes(boxes), [(1, 2, 3, 4)])
        self.assertEqual(defect_boxes(None), [])
        with self.assertRaisesRegex(TypeError, "lacks"):
            defect_boxes(Table({"x0": [1]}))
        excluded = excluded_pixels((10, 10), (0, 0), defect_boxes(table))
        self.assertEqual(excluded.sum(), 20)
        self.assertTrue(excluded[:, 3:5].all())

    def test_positions_follow_yaw_and_families(self):
        amp = AmplifierModel(name="C00", bbox=PixelBox(x0=0, y0=0, width=40, height=20))
        detector = DetectorModel(id=3, name="R00_S00", physical_type="ITL", bbox=amp.bbox, amplifiers=[amp],
                                 focal_plane_x=10.0, focal_plane_y=-5.0, yaw=90.0, pixel_size=0.5)
        parts = bin_detector(np.ones((20, 40)), None, bin_factor=10, detector_boundary=0)
        table = binned_table([(detector, parts)])
        # The reference point is the box centre (19.5, 9.5); yaw 90 turns +x pixels into +y mm.
        centre_x, centre_y = parts[0] - 19.5, parts[1] - 9.5
        np.testing.assert_allclose(table["xf"], 10.0 - 0.5 * centre_y)
        np.testing.assert_allclose(table["yf"], -5.0 + 0.5 * centre_x)
        self.assertTrue(np.all(table["itl"]))
        self.assertTrue(np.all(table["detector"] == 3))


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
