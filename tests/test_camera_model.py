# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of the pure-Python camera model and its storage through the butler."""

import tempfile
import unittest

import pydantic
import yaml

import lsst.utils.tests
from lsst.cp.flatnorm.butler_setup import make_repo
from lsst.cp.flatnorm.camera_model import AmplifierModel, CameraModel, DetectorModel, PixelBox
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.daf.butler import Butler, DatasetType


def two_amp_detector(detector_id=0, second_box=None):
    return DetectorModel(
        id=detector_id, name=f"D{detector_id}", bbox=PixelBox(x0=0, y0=0, width=20, height=10),
        amplifiers=[
            AmplifierModel(name="A", bbox=PixelBox(x0=0, y0=0, width=10, height=10)),
            AmplifierModel(name="B", bbox=second_box or PixelBox(x0=10, y0=0, width=10, height=10)),
        ],
    )


class CameraProtocolTestCase(lsst.utils.tests.TestCase):
    def test_afw_like_protocol(self):
        camera = make_sim_camera(n_side=2, amp_width=4, amp_height=3, n_wavefront=1)
        self.assertEqual(len(camera), 5)
        self.assertIs(camera[4], camera["R00_SW0"])
        self.assertIn(2, camera)
        self.assertNotIn(7, camera)
        detector = camera[1]
        self.assertEqual([amp.getName() for amp in detector][:3], ["C10", "C11", "C12"])
        self.assertEqual(len(detector), 16)
        self.assertEqual([amp.getName() for amp in camera[4]], [f"C1{i}" for i in range(8)])  # LSSTCam's
        box = detector["C00"].getBBox()
        self.assertEqual((box.getMinX(), box.getMinY(), box.getMaxX(), box.getMaxY()), (28, 0, 31, 2))
        self.assertEqual((detector.getBBox().getWidth(), detector.getBBox().getHeight()), (32, 6))
        with self.assertRaisesRegex(KeyError, "no detector 9"):
            camera[9]
        with self.assertRaisesRegex(KeyError, "no amplifier named 'C99'"):
            detector["C99"]

    def test_amplifiers_tile_each_detector(self):
        for detector in make_sim_camera(n_side=3, amp_width=5, amp_height=7):
            covered = sum(amp.getBBox().width * amp.getBBox().height for amp in detector)
            self.assertEqual(covered, detector.getBBox().width * detector.getBBox().height)

    def test_large_grid_names_are_unique(self):
        camera = make_sim_camera(n_side=14, amp_width=2, amp_height=2, n_wavefront=4)
        self.assertEqual(len({detector.name for detector in camera}), 14 * 14 + 4)
        self.assertEqual((camera[0].name, camera[15].name), ("R22_S0000", "R22_S0101"))

    def test_validation(self):
        with self.assertRaisesRegex(pydantic.ValidationError, "overlap"):
            two_amp_detector(second_box=PixelBox(x0=5, y0=0, width=10, height=10))
        with self.assertRaisesRegex(pydantic.ValidationError, "outside the detector"):
            two_amp_detector(second_box=PixelBox(x0=15, y0=0, width=10, height=10))
        with self.assertRaisesRegex(pydantic.ValidationError, "must be unique"):
            CameraModel(name="dup", detectors=[two_amp_detector(0), two_amp_detector(0)])
        with self.assertRaises(pydantic.ValidationError):
            PixelBox(x0=0, y0=0, width=0, height=3)

    def test_numeric_names_from_yaml_stay_text_and_focus_detectors_exist(self):
        # What yaml.safe_load gives for an amplifier named 0 and a detector named 153.
        detector = DetectorModel.model_validate(yaml.safe_load("""
            id: 3
            name: 153
            type: FOCUS
            bbox: {x0: 0, y0: 0, width: 4, height: 2}
            amplifiers:
              - {name: 0, bbox: {x0: 0, y0: 0, width: 2, height: 2}}
              - {name: 1, bbox: {x0: 2, y0: 0, width: 2, height: 2}}
        """))
        self.assertEqual((detector.getName(), detector.type), ("153", "FOCUS"))
        self.assertEqual([amp.getName() for amp in detector], ["0", "1"])
        self.assertIs(detector["0"], detector.amplifiers[0])
        with self.assertRaisesRegex(pydantic.ValidationError, "SCIENCE.*FOCUS.*GUIDER.*WAVEFRONT"):
            DetectorModel(id=1, name="X", type="TELESCOPE", bbox=detector.bbox, amplifiers=[])


class CameraButlerTestCase(lsst.utils.tests.TestCase):
    def test_round_trip_through_file_datastore(self):
        camera = make_sim_camera()
        with tempfile.TemporaryDirectory() as root:
            butler = make_repo(root)
            butler.registry.insertDimensionData("instrument", {"name": "SimFlatCam", "detector_max": 11})
            butler.registry.registerDatasetType(
                DatasetType("camera", ("instrument",), "CameraModel", universe=butler.dimensions)
            )
            butler.registry.registerRun("run")
            ref = butler.put(camera, "camera", instrument="SimFlatCam", run="run")
            self.assertTrue(butler.getURI(ref).path.endswith(".json"))
            # A new butler reads the storage class from the repo's own config.
            reader = Butler.from_config(root, collections="run")
            copy = reader.get("camera", instrument="SimFlatCam")
            self.assertIsInstance(copy, CameraModel)
            self.assertEqual(copy, camera)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
