# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of the vignetting geometry: polygons, pixel rasterisation, detector placement, the config."""

import re
import unittest

import numpy as np

import lsst.pex.config as pexConfig
import lsst.utils.tests
from lsst.cp.flatnorm.camera_model import AmplifierModel, DetectorModel, PixelBox
from lsst.cp.flatnorm.vignette import AffineMap, circle_polygon, polygon_interior, vignetted_pixels
from lsst.cp.flatnorm.vignette_config import VignetteConfig, detector_vignetted_pixels


def _ray_cast(vertices, x, y):
    """Even-odd point-in-polygon test of one point, the textbook way (a reference for the raster)."""
    inside = False
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


def _detector(yaw=30.0, reference_point=None):
    """A 40 x 30 detector of 0.02 mm pixels centred at (5, -3) mm, with box origin (10, 20)."""
    box = PixelBox(x0=10, y0=20, width=40, height=30)
    return DetectorModel(id=7, name="R01_S11", bbox=box, focal_plane_x=5.0, focal_plane_y=-3.0, yaw=yaw,
                         reference_point=reference_point, pixel_size=0.02,
                         amplifiers=[AmplifierModel(name="C00", bbox=box)])


class _Point:
    def __init__(self, x, y):
        self._xy = (x, y)

    def getX(self):
        return self._xy[0]

    def getY(self):
        return self._xy[1]


class _Angle:
    def __init__(self, degrees):
        self._degrees = degrees

    def asDegrees(self):
        return self._degrees


class _Orientation:
    def __init__(self, detector):
        self._detector = detector

    def getFpPosition(self):
        return _Point(self._detector.focal_plane_x, self._detector.focal_plane_y)

    def getYaw(self):
        return _Angle(self._detector.yaw)

    def getReferencePoint(self):
        return _Point(*self._detector.get_reference_point())


class _AfwDetector(list):
    """An afw-like detector: only afw's method names, no ``pixel_to_focal_plane``."""

    def __init__(self, detector):
        super().__init__(detector.amplifiers)
        self._detector = detector

    def getId(self):
        return self._detector.id

    def getName(self):
        return self._detector.name

    def getType(self):
        return type("DetectorType", (), {"name": self._detector.type})()

    def getSerial(self):
        return self._detector.serial

    def getPhysicalType(self):
        return self._detector.physical_type

    def getBBox(self):
        return self._detector.bbox

    def getPixelSize(self):
        return _Point(self._detector.pixel_size, self._detector.pixel_size)

    def getOrientation(self):
        return _Orientation(self._detector)


class CirclePolygonTestCase(unittest.TestCase):
    """circle_polygon: ip_isr's regular polygon inscribed in the circle."""

    def test_vertices(self):
        np.testing.assert_allclose(circle_polygon(1.0, -1.0, 2.0, 4),
                                   [[3.0, -1.0], [1.0, 1.0], [-1.0, -1.0], [1.0, -3.0]], atol=1e-15)
        vertices = circle_polygon(0.0, 0.0, 350.0, 100)
        np.testing.assert_allclose(np.hypot(*vertices.T), 350.0, rtol=1e-15)

    def test_invalid(self):
        with self.assertRaisesRegex(ValueError, r"^The vignetting radius must not be negative; got -1.0\.$"):
            circle_polygon(0.0, 0.0, -1.0, 10)
        with self.assertRaisesRegex(ValueError, r"^A vignetting polygon needs at least 3 points; got 2\.$"):
            circle_polygon(0.0, 0.0, 1.0, 2)


class PolygonInteriorTestCase(unittest.TestCase):
    """polygon_interior: pixel centres inside a polygon, against hand truth and a ray-cast reference."""

    def test_rectangle(self):
        rectangle = np.array([[1.5, 1.5], [4.5, 1.5], [4.5, 3.5], [1.5, 3.5]])
        expected = np.zeros((6, 7), bool)
        expected[2:4, 2:5] = True
        np.testing.assert_array_equal(polygon_interior(rectangle, (6, 7)), expected)
        # Pixel [j, i] is at (x0 + i, y0 + j): shifting the origin by (1, 1) shifts the pixels by -1.
        np.testing.assert_array_equal(polygon_interior(rectangle, (6, 7), origin=(1, 1)),
                                      np.roll(expected, (-1, -1), axis=(0, 1)))

    def test_concave_polygon_and_either_sense(self):
        # An L: a 6 x 6 square with its upper-right 3 x 3 quarter cut away.
        ell = np.array([[0.5, 0.5], [6.5, 0.5], [6.5, 3.5], [3.5, 3.5], [3.5, 6.5], [0.5, 6.5]])
        expected = np.zeros((8, 8), bool)
        expected[1:7, 1:7] = True
        expected[4:7, 4:7] = False
        np.testing.assert_array_equal(polygon_interior(ell, (8, 8)), expected)
        np.testing.assert_array_equal(polygon_interior(ell[::-1], (8, 8)), expected)

    def test_random_polygons_match_ray_casting(self):
        rng = np.random.default_rng(3)
        for trial in range(20):
            vertices = rng.uniform(-5.3, 25.7, (int(rng.integers(3, 9)), 2))
            expected = np.array([[_ray_cast(vertices, 2 + i, -3 + j) for i in range(22)] for j in range(19)])
            with self.subTest(trial=trial):
                np.testing.assert_array_equal(polygon_interior(vertices, (19, 22), origin=(2, -3)), expected)

    def test_polygon_outside_the_grid(self):
        far = np.array([[100.0, 100.0], [101.0, 100.0], [101.0, 101.0]])
        self.assertFalse(polygon_interior(far, (5, 5)).any())
        around = np.array([[-10.0, -10.0], [10.0, -10.0], [10.0, 10.0], [-10.0, 10.0]])
        self.assertTrue(polygon_interior(around, (5, 5)).all())


class AffineMapTestCase(unittest.TestCase):
    """AffineMap.sample reproduces an affine map from three samples; its inverse undoes it."""

    def test_sample_and_inverse_of_a_detector(self):
        detector = _detector(yaw=30.0, reference_point=(12.0, 25.0))
        affine = AffineMap.sample(detector.pixel_to_focal_plane, (10, 20), (49, 49))
        x, y = np.array([10.0, 33.3, 49.0]), np.array([20.0, 41.0, 49.0])
        np.testing.assert_allclose(affine(x, y), detector.pixel_to_focal_plane(x, y), rtol=0, atol=1e-12)
        np.testing.assert_allclose(affine.inverse()(*affine(x, y)), (x, y), rtol=0, atol=1e-10)
        # The reference point maps to the focal-plane position.
        np.testing.assert_allclose(affine(12.0, 25.0), (5.0, -3.0), rtol=0, atol=1e-13)

    def test_non_affine_map_raises(self):
        def distorted(x, y):
            x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
            return x + 1e-3 * x * y, y

        with self.assertRaisesRegex(ValueError, r"^The pixel to focal-plane map is not affine: at "
                                                r"\(10.0, 10.0\) it gives \(10.1, 10.0\), the affine map "
                                                r"through the other corners gives \(10.0, 10.0\)\.$"):
            AffineMap.sample(distorted, (0, 0), (10, 10))

    def test_singular_map_raises(self):
        with self.assertRaisesRegex(ValueError, r"^The affine map \[\[0.0, 0.0\], \[0.0, 1.0\]\] is "
                                                r"singular\.$"):
            AffineMap(matrix=np.array([[0.0, 0.0], [0.0, 1.0]]), offset=np.zeros(2)).inverse()


class VignettedPixelsTestCase(unittest.TestCase):
    """vignetted_pixels and detector_vignetted_pixels against an independent placement of the pixels."""

    def setUp(self):
        self.detector = _detector(yaw=30.0)
        # Pixel centres on the focal plane, written out: centre pixel (29.5, 34.5) at (5, -3) mm.
        y, x = np.mgrid[20:50, 10:50]
        dx, dy = (x - 29.5) * 0.02, (y - 34.5) * 0.02
        cos, sin = np.cos(np.radians(30.0)), np.sin(np.radians(30.0))
        self.fp_x, self.fp_y = 5.0 + cos * dx - sin * dy, -3.0 + sin * dx + cos * dy

    def test_square_region_on_a_turned_detector(self):
        square = circle_polygon(5.2, -3.1, 0.3, 4)  # vertices 0.3 mm from the centre along the axes
        expected = np.abs(self.fp_x - 5.2) + np.abs(self.fp_y + 3.1) > 0.3
        self.assertEqual(int(expected.sum()), 849)
        vignetted = vignetted_pixels(square, self.detector.pixel_to_focal_plane, self.detector.bbox)
        np.testing.assert_array_equal(vignetted, expected)

    def test_whole_detector_inside_or_outside(self):
        to_focal_plane, box = self.detector.pixel_to_focal_plane, self.detector.bbox
        inside = vignetted_pixels(circle_polygon(5.0, -3.0, 10.0, 100), to_focal_plane, box)
        self.assertFalse(inside.any())
        outside = vignetted_pixels(circle_polygon(-100.0, 0.0, 10.0, 100), to_focal_plane, box)
        self.assertTrue(outside.all())
        self.assertEqual(outside.shape, (30, 40))

    def test_config_and_afw_like_detector(self):
        config = VignetteConfig()
        config.xCenter, config.yCenter, config.radius, config.numPolygonPoints = 5.2, -3.1, 0.3, 4
        expected = np.abs(self.fp_x - 5.2) + np.abs(self.fp_y + 3.1) > 0.3
        np.testing.assert_array_equal(detector_vignetted_pixels(config, self.detector), expected)
        afw_like = _AfwDetector(self.detector)
        np.testing.assert_array_equal(detector_vignetted_pixels(config, afw_like), expected)


class VignetteConfigTestCase(unittest.TestCase):
    """VignetteConfig has ip_isr's VignetteConfig fields and defaults."""

    def test_defaults(self):
        config = VignetteConfig()
        self.assertEqual((config.xCenter, config.yCenter, config.radius, config.numPolygonPoints),
                         (0.0, 0.0, 100.0, 100))
        np.testing.assert_allclose(np.hypot(*config.polygon().T), 100.0)
        self.assertEqual(config.polygon().shape, (100, 2))

    def test_checks(self):
        for field, value, allowed in (("radius", -1.0, "[0.0,inf)"), ("numPolygonPoints", 2, "[3,inf)")):
            config = VignetteConfig()
            with self.subTest(field=field), self.assertRaisesRegex(
                    pexConfig.FieldValidationError,
                    re.escape(f"RangeField '{field}' failed validation: {value} is outside of valid range "
                              f"{allowed}")):
                setattr(config, field, value)


class MemoryTestCase(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
