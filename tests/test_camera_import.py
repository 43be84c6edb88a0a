# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of importing a camera: obs_base's camera YAML format and afw cameras."""

import math
import os
import tempfile
import unittest
from collections import Counter

import numpy as np
import yaml

import lsst.utils.tests
from lsst.cp.flatnorm.camera_model import AmplifierModel, CameraModel, DetectorModel, PixelBox
from lsst.cp.flatnorm.obs_camera_yaml import ObsCameraLoader
from afw_standin_loader import load_afw_standin
from lsstcam_camera_yaml import LSSTCAM_AMPLIFIER_COUNT, LSSTCAM_DETECTOR_COUNT, write_lsstcam_yaml

DATA_DIR = os.path.join(os.path.dirname(__file__), "data", "obs_camera")
TINY_LSSTCAM = os.path.join(DATA_DIR, "tiny_lsstcam.yaml")
TINY_HSC = os.path.join(DATA_DIR, "tiny_hsc.yaml")


def box_tuple(box):
    return (box.getMinX(), box.getMinY(), box.getWidth(), box.getHeight())


class ObsYamlTestCase(lsst.utils.tests.TestCase):
    """The two small fixture files."""

    def test_lsstcam_like_detectors(self):
        camera = CameraModel.from_obs_yaml(TINY_LSSTCAM)
        self.assertEqual(camera.getName(), "TinyCam")
        self.assertEqual([(det.id, det.name, det.type) for det in camera],
                         [(94, "R22_S11", "SCIENCE"), (192, "R00_SW1", "WAVEFRONT")])
        science, wavefront = camera[94], camera["R00_SW1"]
        self.assertEqual((science.serial, science.physical_type), ("E2V-CCD250-001", "E2V"))
        self.assertEqual((wavefront.serial, wavefront.physical_type), ("ITL-4400B-001", "ITL_WF"))
        self.assertEqual((science.focal_plane_x, science.focal_plane_y, science.yaw), (0.0, 0.0, 0.0))
        self.assertEqual((wavefront.focal_plane_x, wavefront.focal_plane_y, wavefront.yaw),
                         (-214.25, -225.875, 180.0))  # the z offset is dropped
        self.assertEqual((science.pixel_size, science.reference_point), (0.01, (7.5, 2.5)))
        self.assertEqual(wavefront.reference_point, (8.5, 1.5))

    def test_boxes_have_no_off_by_one(self):
        camera = CameraModel.from_obs_yaml(TINY_LSSTCAM)
        science, wavefront = camera[94], camera[192]
        # bbox [[0, 0], [15, 5]] holds inclusive corners: 16 x 6 pixels, the last one 15, 5.
        self.assertEqual(box_tuple(science.getBBox()), (0, 0, 16, 6))
        self.assertEqual((science.getBBox().getMaxX(), science.getBBox().getMaxY()), (15, 5))
        self.assertEqual(box_tuple(wavefront.getBBox()), (0, 0, 16, 3))
        # rawDataBBox [[2, 0], [4, 3]] is origin and size: 4 x 3 pixels placed at ixy * (4, 3).
        self.assertEqual(box_tuple(science["C10"].getBBox()), (0, 3, 4, 3))
        self.assertEqual(box_tuple(science["C13"].getBBox()), (12, 3, 4, 3))
        self.assertEqual(box_tuple(science["C00"].getBBox()), (0, 0, 4, 3))
        self.assertEqual((science["C03"].getBBox().getMaxX(), science["C13"].getBBox().getMaxY()), (15, 5))
        self.assertEqual(box_tuple(wavefront["C10"].getBBox()), (12, 0, 4, 3))
        for detector in camera:
            covered = sum(amp.getBBox().getWidth() * amp.getBBox().getHeight() for amp in detector)
            self.assertEqual(covered, detector.getBBox().getWidth() * detector.getBBox().getHeight())

    def test_amplifiers_in_hdu_order(self):
        camera = CameraModel.from_obs_yaml(TINY_LSSTCAM)
        # C00 comes first in the file but has hdu 8; C12 and C13 share hdu 3 and keep file order.
        self.assertEqual([amp.getName() for amp in camera[94]],
                         ["C10", "C11", "C12", "C13", "C03", "C02", "C01", "C00"])
        self.assertEqual([amp.getName() for amp in camera[192]], ["C10", "C11", "C12", "C13"])

    def test_hsc_names_stay_text(self):
        # The pitfall: YAML 1.1 reads these names as numbers.
        with open(TINY_HSC) as stream:
            naive = yaml.safe_load(stream)
        self.assertEqual(list(naive["CCDs"]), [153, 34])
        self.assertEqual(list(naive["CCDs"][153]["amplifiers"]), [0, 1, 2, 3])
        camera = CameraModel.from_obs_yaml(TINY_HSC)
        self.assertEqual(camera.getName(), "HSC-tiny")
        self.assertEqual([det.getName() for det in camera], ["1_53", "0_42"])
        self.assertEqual([amp.getName() for amp in camera["1_53"]], ["0", "1", "2", "3"])
        self.assertIs(camera["1_53"]["0"], camera[0].amplifiers[0])
        self.assertEqual((camera[0].serial, camera[1].serial), ("0120", "0121"))
        self.assertEqual((camera[0].type, camera[1].type), ("SCIENCE", "FOCUS"))  # types by name
        self.assertEqual((camera[0].physical_type, camera[1].physical_type), ("Hamamatsu", "CCD"))
        self.assertEqual(box_tuple(camera[0]["3"].getBBox()), (6, 0, 2, 4))
        self.assertEqual((camera[0].pixel_size, camera[0].yaw), (0.015, 90.0))

    def test_loader_scalars(self):
        document = yaml.load(
            "{1_53: a, 0: b, 1:30: c, x: [010, 1_000, yes, true, 1.5, 270., .nan, -.inf, 1e3, 0x1F]}",
            Loader=ObsCameraLoader,
        )
        self.assertEqual(list(document), ["1_53", "0", "1:30", "x"])
        values = document["x"]
        self.assertEqual(values[:6], [10, "1_000", "yes", True, 1.5, 270.0])
        self.assertTrue(math.isnan(values[6]))
        self.assertEqual(values[7:], [-math.inf, 1000.0, "0x1F"])

    def test_json_round_trip_keeps_geometry(self):
        camera = CameraModel.from_obs_yaml(TINY_LSSTCAM)
        copy = CameraModel.model_validate_json(camera.model_dump_json())
        self.assertEqual(copy, camera)
        self.assertEqual((copy[192].yaw, copy[192].reference_point), (180.0, (8.5, 1.5)))


class ObsYamlErrorTestCase(lsst.utils.tests.TestCase):
    """A malformed file is refused with a ValueError naming the file, detector, amplifier and key."""

    def setUp(self):
        with open(TINY_LSSTCAM) as stream:
            self.document = yaml.load(stream, Loader=ObsCameraLoader)
        self.directory = tempfile.TemporaryDirectory()
        self.addCleanup(self.directory.cleanup)
        self.path = os.path.join(self.directory.name, "broken.yaml")

    def assertRefused(self, pattern):
        with open(self.path, "w") as stream:
            yaml.safe_dump(self.document, stream)
        with self.assertRaisesRegex(ValueError, pattern):
            CameraModel.from_obs_yaml(self.path)

    @property
    def science(self):
        return self.document["CCDs"]["R22_S11"]

    def test_missing_keys(self):
        del self.science["bbox"]
        self.assertRefused(r"broken\.yaml: detector 'R22_S11': missing key 'bbox'")
        self.science["bbox"] = [[0, 0], [15, 5]]
        del self.science["amplifiers"]["C11"]["ixy"]
        self.assertRefused(r"broken\.yaml: detector 'R22_S11': amplifier 'C11': missing key 'ixy'")
        del self.document["CCDs"]
        self.assertRefused(r"broken\.yaml: missing key 'CCDs'")

    def test_bad_values(self):
        self.science["amplifiers"]["C11"]["rawDataBBox"] = [[2, 0], [4]]
        self.assertRefused(r"detector 'R22_S11': amplifier 'C11': key 'rawDataBBox': expected two integers")
        self.science["amplifiers"]["C11"]["rawDataBBox"] = [[2, 0], [0, 3]]
        self.assertRefused(r"amplifier 'C11': key 'rawDataBBox'.*greater than 0")
        self.science["amplifiers"]["C11"]["rawDataBBox"] = [[2, 0], [4, 3]]
        self.science["detectorType"] = 7
        self.assertRefused(r"detector 'R22_S11': key 'detectorType': expected 0-3 or one of SCIENCE")
        self.science["detectorType"] = 0
        self.science["offset"] = [float("nan"), float("nan")]  # the template's placeholder
        self.assertRefused(r"detector 'R22_S11': key 'offset': expected finite numbers")
        self.science["offset"] = [0.0, 0.0]
        self.science["pixelSize"] = [0.01, 0.015]
        self.assertRefused(r"detector 'R22_S11': key 'pixelSize': pixels must be square")

    def test_geometry_the_model_refuses(self):
        # One pixel short: with inclusive corners the amplifiers no longer fit.
        self.science["bbox"] = [[0, 0], [14, 5]]
        self.assertRefused(r"broken\.yaml: detector 'R22_S11':.*lies outside the detector")
        self.science["bbox"] = [[0, 0], [15, 5]]
        self.science["amplifiers"]["C11"]["ixy"] = [0, 1]
        self.assertRefused(r"detector 'R22_S11':.*overlap")
        self.science["amplifiers"]["C11"]["ixy"] = [1, 1]
        self.document["CCDs"]["R00_SW1"]["id"] = 94
        self.assertRefused(r"broken\.yaml: .*detector IDs and names must be unique")

    def test_not_a_camera(self):
        with open(self.path, "w") as stream:
            stream.write("CCDs: [unclosed\n")
        with self.assertRaisesRegex(ValueError, r"broken\.yaml: not readable as YAML"):
            CameraModel.from_obs_yaml(self.path)
        with open(self.path, "w") as stream:
            stream.write("- a list\n")
        with self.assertRaisesRegex(ValueError, r"broken\.yaml: expected a mapping"):
            CameraModel.from_obs_yaml(self.path)


class FullSizeLsstCamTestCase(lsst.utils.tests.TestCase):
    """A full-size LSSTCam description written by the test helper."""

    @classmethod
    def setUpClass(cls):
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "lsstCam.yaml")
            write_lsstcam_yaml(path)
            cls.camera = CameraModel.from_obs_yaml(path)

    def test_counts(self):
        self.assertEqual(len(self.camera), LSSTCAM_DETECTOR_COUNT)
        self.assertEqual(sum(len(detector) for detector in self.camera), LSSTCAM_AMPLIFIER_COUNT)
        self.assertEqual((LSSTCAM_DETECTOR_COUNT, LSSTCAM_AMPLIFIER_COUNT), (205, 3216))
        self.assertEqual(Counter(detector.type for detector in self.camera),
                         {"SCIENCE": 189, "GUIDER": 8, "WAVEFRONT": 8})
        self.assertEqual([detector.id for detector in self.camera], list(range(205)))

    def test_names_and_boxes(self):
        camera = self.camera
        self.assertEqual((camera[0].name, camera[94].name, camera[188].name),
                         ("R01_S00", "R22_S11", "R43_S22"))
        self.assertEqual((camera[189].name, camera[191].name, camera[204].name),
                         ("R00_SG0", "R00_SW0", "R44_SW1"))
        self.assertEqual(box_tuple(camera["R22_S11"].getBBox()), (0, 0, 4096, 4004))
        self.assertEqual(box_tuple(camera["R22_S11"]["C10"].getBBox()), (0, 2002, 512, 2002))
        self.assertEqual(box_tuple(camera["R01_S00"]["C00"].getBBox()), (0, 0, 509, 2000))
        self.assertEqual(box_tuple(camera["R00_SG1"].getBBox()), (0, 0, 4072, 4000))
        self.assertEqual(box_tuple(camera["R44_SW0"]["C10"].getBBox()), (3563, 0, 509, 2000))
        self.assertEqual([len(camera[name]) for name in ("R22_S11", "R00_SG0", "R00_SW0")], [16, 16, 8])
        fp_x, fp_y = camera["R22_S11"].pixel_to_focal_plane(2047.5, 2001.5)
        self.assertFloatsAlmostEqual(np.array([fp_x, fp_y]), 0.0, atol=1e-12)


class PixelToFocalPlaneTestCase(lsst.utils.tests.TestCase):
    def make_detector(self, **kwargs):
        return DetectorModel(
            id=0, name="D", bbox=PixelBox(x0=0, y0=0, width=11, height=5), pixel_size=0.01,
            focal_plane_x=100.0, focal_plane_y=-50.0,
            amplifiers=[AmplifierModel(name="A", bbox=PixelBox(x0=0, y0=0, width=11, height=5))], **kwargs,
        )

    def test_reference_point_and_yaw(self):
        detector = self.make_detector()
        self.assertEqual(detector.get_reference_point(), (5.0, 2.0))  # the box centre
        self.assertFloatsAlmostEqual(np.array(detector.pixel_to_focal_plane(5.0, 2.0)),
                                     np.array([100.0, -50.0]))
        # Yaw turns the detector's x axis counter-clockwise (x towards y), as afw's Orientation does.
        turned = self.make_detector(yaw=90.0, reference_point=(0.0, 0.0))
        fp_x, fp_y = turned.pixel_to_focal_plane(np.array([0.0, 10.0, 0.0]), np.array([0.0, 0.0, 4.0]))
        self.assertFloatsAlmostEqual(fp_x, np.array([100.0, 100.0, 99.96]), atol=1e-12)
        self.assertFloatsAlmostEqual(fp_y, np.array([-50.0, -49.9, -50.0]), atol=1e-12)


afw = load_afw_standin()


def corners(minimum, maximum):
    return afw.Box2I.from_corners(minimum, maximum)


def point(x, y):
    return afw.Point2D(x=x, y=y)


def detector(detector_id, name, detector_type, bbox, amplifiers, pixel_size=0.01, serial="",
             physical_type="CCD", fp_position=(0.0, 0.0), yaw=0.0, reference_point=(1.5, 1.5)):
    orientation = afw.Orientation(fp_position=point(*fp_position), yaw=afw.Angle(degrees=yaw),
                                  reference_point=point(*reference_point))
    return afw.Detector(id=detector_id, name=name, type=afw.DetectorType[detector_type], serial=serial,
                        physical_type=physical_type, bbox=bbox, orientation=orientation,
                        pixel_size=point(0.01, pixel_size), amplifiers=amplifiers)


def amplifier(name, bbox):
    return afw.Amplifier(name=name, bbox=bbox)


class FromAfwTestCase(lsst.utils.tests.TestCase):
    def test_round_trip(self):
        for path in (TINY_LSSTCAM, TINY_HSC):
            camera = CameraModel.from_obs_yaml(path)
            self.assertEqual(CameraModel.from_afw(afw.camera_from_model(camera)), camera)

    def test_corners_are_inclusive(self):
        amplifiers = [amplifier("C10", corners((2, 1), (5, 3))), amplifier("C11", corners((6, 1), (9, 3)))]
        wavefront = detector(7, "R22_S11", "WAVEFRONT", corners((2, 1), (9, 3)), amplifiers, serial="S-1",
                             physical_type="ITL_WF", fp_position=(1.0, 2.0), yaw=-90.0,
                             reference_point=(5.5, 2.0))
        model = CameraModel.from_afw(afw.Camera(name="Cam", detectors=[wavefront]))["R22_S11"]
        self.assertEqual(box_tuple(model.bbox), (2, 1, 8, 3))
        self.assertEqual((model.bbox.getMaxX(), model.bbox.getMaxY()), (9, 3))
        self.assertEqual(box_tuple(model["C10"].bbox), (2, 1, 4, 3))
        self.assertEqual((model.type, model.serial, model.physical_type), ("WAVEFRONT", "S-1", "ITL_WF"))
        self.assertEqual((model.focal_plane_x, model.focal_plane_y, model.yaw, model.reference_point),
                         (1.0, 2.0, -90.0, (5.5, 2.0)))

    def test_errors_name_the_detector(self):
        box = corners((0, 0), (3, 3))
        oblong = detector(3, "D3", "SCIENCE", box, [amplifier("A", box)], pixel_size=0.02)
        with self.assertRaisesRegex(ValueError, "Detector D3: pixels must be square"):
            CameraModel.from_afw(afw.Camera(name="Cam", detectors=[oblong]))
        overlapping = detector(4, "D4", "SCIENCE", box, [amplifier("A", box), amplifier("B", box)])
        with self.assertRaisesRegex(ValueError, "Detector D4: .*overlap"):
            CameraModel.from_afw(afw.Camera(name="Cam", detectors=[overlapping]))


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
