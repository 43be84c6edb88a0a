# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The flat tasks on a repository that registers ``camera`` as ``Camera``, like the full stack's:
the normalization alone, and the whole measure -> normalize -> combine chain.

The repository holds a stand-in afw camera (``tests/afw_standin``), so every butler that opens it
runs in a subprocess (see ``afw_camera_repo.py``): one per test case, which makes the repository and
runs the case's ``pipetask`` command lines (ctrl_mpexec's command, in that process) and reads.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import lsst.utils.tests
from flat_repo import FILTER, INSTRUMENT, images_camera
from lsst.cp.flatnorm.vignette_config import VignetteConfig, detector_vignetted_pixels
from stats_factory import EXPOSURES, StatisticsFactory

TESTS = Path(__file__).parent
PIPELINE = TESTS.parent / "pipelines" / "_ingredients" / "cpFlatNorm.yaml"
CHAIN = TESTS.parent / "pipelines" / "_ingredients" / "cpFlat.yaml"
VIGNETTE_RADIUS = 0.15  # mm: cuts the corners of the science detector and most of the wavefront one
SEED = 31


def standin_environment():
    """The environment of a process that sees the stand-in afw camera and the test helpers."""
    path = os.pathsep.join([str(TESTS / "afw_standin"), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")


def run_session(root, kind, steps):
    """Make a repository of ``kind`` in ``root`` and run ``steps`` on it in one subprocess
    (``afw_camera_repo.py``); return their results."""
    process = subprocess.run([sys.executable, str(TESTS / "afw_camera_repo.py"), root, str(SEED), kind,
                              json.dumps(steps)],
                             capture_output=True, text=True, timeout=600, env=standin_environment())
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.splitlines()[-1])


def normalize_args(root, output, *config):
    """``pipetask run`` of the normalization alone, with ``config`` overrides."""
    args = ["run", "--register-dataset-types", "-b", root, "-i", "test/cpFlatStatistics,test/camera",
            "-o", output, "-p", f"{PIPELINE}#cpFlatNormalize",
            "-d", f"instrument='{INSTRUMENT}' AND physical_filter='{FILTER}'",
            "-c", "cpFlatNormalize:level=AMP"]
    for item in config:
        args += ["-c", item]
    return args


class CameraStorageClassTestCase(lsst.utils.tests.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp()
        chosen = normalize_args(cls.root, "u/test/camera", "cpFlatNormalize:cameraStorageClass=Camera")
        steps = [["pipetask", *chosen], ["read", "u/test/camera"],
                 ["pipetask", *normalize_args(cls.root, "u/test/default")]]
        cls.chosen, cls.read, cls.default = run_session(cls.root, "create", steps)
        cls.factory = StatisticsFactory(seed=SEED)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_camera_storage_class_chosen_by_config(self):
        self.assertEqual(self.chosen["returncode"], 0, self.chosen["stderr"][-3000:])
        self.assertNotIn("error", self.read)
        result = self.read
        self.assertEqual(result["cameraType"], "lsst.afw.cameraGeom.Camera")
        det_scale, exp_scale = result["scales"]["detScale"], result["scales"]["expScale"]
        gains = self.factory.amp_gain
        norm = sum(gains.values()) / len(gains)  # every detector has all four exposures
        self.assertEqual(sum(len(amps) for amps in det_scale.values()), len(gains))
        for (detector, amp), gain in gains.items():
            self.assertAlmostEqual(det_scale[str(detector)][amp], gain / norm, places=9)
        for exposure in EXPOSURES:
            self.assertAlmostEqual(exp_scale["9"]["C13"][str(exposure)], self.factory.lamps[exposure] * norm,
                                   places=6)

    def test_default_storage_class_is_refused(self):
        self.assertNotEqual(self.default["returncode"], 0)
        self.assertIn("Incompatible definition for input dataset type 'camera'; task 'cpFlatNormalize' has "
                      "DatasetType('camera', {instrument}, CameraModel, isCalibration=True), but the "
                      "definition from data repository is DatasetType('camera', {instrument}, Camera, "
                      "isCalibration=True).", self.default["stderr"])


class FlatChainCameraStorageClassTestCase(lsst.utils.tests.TestCase):
    """Measure, normalization and combine (with vignetting, which places each detector through the
    camera) read the ``Camera`` camera when each task's cameraStorageClass says so."""

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp()
        chain = ["run", "--register-dataset-types", "-b", cls.root,
                 "-i", "test/images,test/camera", "-o", "u/test/chain", "-p", str(CHAIN),
                 "-d", f"instrument='{INSTRUMENT}' AND physical_filter='{FILTER}'",
                 "-c", "cpFlatCombine:doVignetteMask=True",
                 "-c", f"cpFlatCombine:vignette.radius={VIGNETTE_RADIUS}"]
        for label in ("cpFlatMeasure", "cpFlatNormalize", "cpFlatCombine"):
            chain += ["-c", f"{label}:cameraStorageClass=Camera"]
        measure_default = ["qgraph", "-b", cls.root, "-i", "test/images,test/camera", "-o", "u/x",
                           "-p", f"{CHAIN}#cpFlatMeasure", "-d", f"instrument='{INSTRUMENT}'"]
        steps = [["pipetask", *chain], ["read-flats", "u/test/chain"], ["pipetask", *measure_default]]
        cls.chain, cls.flats, cls.measure_default = run_session(cls.root, "create-images", steps)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_chain_reads_the_camera_storage_class(self):
        self.assertEqual(self.chain["returncode"], 0, self.chain["stderr"][-3000:])
        self.assertNotIn("error", self.flats)
        flats = {int(detector): flat for detector, flat in self.flats.items()}
        vignette = VignetteConfig()
        vignette.radius = VIGNETTE_RADIUS
        camera = images_camera()
        self.assertEqual(sorted(flats), [detector.getId() for detector in camera])
        for detector in camera:
            expected = int(detector_vignetted_pixels(vignette, detector).sum())
            self.assertGreater(expected, 0)
            self.assertEqual(flats[detector.getId()]["n_vignetted"], expected)
            self.assertEqual(len(flats[detector.getId()]["inputs"]), 4)

    def test_measure_refuses_the_default_storage_class(self):
        self.assertNotEqual(self.measure_default["returncode"], 0)
        self.assertIn("Incompatible definition for input dataset type 'camera'; task 'cpFlatMeasure' has "
                      "DatasetType('camera', {instrument}, CameraModel, isCalibration=True)",
                      self.measure_default["stderr"])


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
