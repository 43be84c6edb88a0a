# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of CpFlatMeasureTask: statistics of a synthetic flat, and a quantum run through a butler."""

import tempfile
import unittest

import numpy as np

import lsst.daf.butler.tests as butlerTests
import lsst.pex.config as pexConfig
import lsst.pipe.base.testUtils as pipeTestUtils
import lsst.utils.tests
from lsst.daf.butler import DatasetType
from lsst.cp.flatnorm.butler_setup import seed_config
from lsst.cp.flatnorm.cpFlatMeasure import CpFlatMeasureConfig, CpFlatMeasureTask
from lsst.cp.flatnorm.sim.camera import SIM_CAMERA_NAME, make_sim_camera
from lsst.images import Image, MaskedImage, MaskPlane, MaskSchema
from afw_standin_loader import load_afw_standin

AMP_WIDTH, AMP_HEIGHT = 4, 5  # 20 pixels an amplifier: 10 at level + 1, 10 at level - 1
SCIENCE_DETECTOR = 4
WAVEFRONT_DETECTOR = 9
BAD_AMP, SATURATED_AMP, OUTLIER_AMP, COSMIC_RAY_AMP = 0, 3, 5, 7
OUTLIER = 1000.0
# The mask planes the package's pipeline sets (pipelines/_ingredients/cpFlatNorm.yaml); cp_pipe's
# default, which DefaultsTestCase checks, leaves SAT pixels in.
PIPELINE_MASKS = ["DETECTED", "BAD", "NO_DATA", "SAT", "SATURATED"]


def _config(**overrides):
    """The package pipeline's measurement config with ``overrides``."""
    config = CpFlatMeasureConfig()
    config.maskNameList = PIPELINE_MASKS
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def _schema():
    """A mask schema without NO_DATA, which the default maskNameList names."""
    return MaskSchema([MaskPlane(name, f"{name} pixels.") for name in ("BAD", "SAT", "DETECTED", "CR")])


def _level(i):
    return 100.0 + 10.0 * i


def _synthetic_flat(detector):
    """Build a flat of ``detector`` and the pixel values each amplifier's statistics must keep.

    Every amplifier has its own level with a +-1 checkerboard on top (sigma 1).  Amplifier
    BAD_AMP has one +1 and one -1 pixel masked BAD and set to 1e6; SATURATED_AMP is entirely
    SAT; OUTLIER_AMP has one +1 pixel raised by OUTLIER (unmasked, so only clipping removes it);
    COSMIC_RAY_AMP has a pixel masked CR, a plane the task must not exclude.
    """
    box = detector.getBBox()
    flat = MaskedImage(Image(0.0, shape=(box.getHeight(), box.getWidth()), dtype=np.float32),
                       mask_schema=_schema())
    pixels, mask = flat.image.array, flat.mask
    kept = []
    for i, amp in enumerate(detector):
        amp_box = amp.getBBox()
        region = (slice(amp_box.y0, amp_box.y0 + amp_box.height),
                  slice(amp_box.x0, amp_box.x0 + amp_box.width))
        yy, xx = np.indices((amp_box.height, amp_box.width))
        values = _level(i) + np.where((yy + xx) % 2 == 0, 1.0, -1.0)
        flags = np.zeros(values.shape, dtype=bool)
        if i == BAD_AMP:
            flags[0, :2] = True
            _set_plane(mask, "BAD", region, flags)
            values[flags] = 1e6
        elif i == SATURATED_AMP:
            flags[...] = True
            _set_plane(mask, "SAT", region, flags)
        elif i == COSMIC_RAY_AMP:
            _set_plane(mask, "CR", region, np.eye(*values.shape, dtype=bool))
        pixels[region] = values
        if i == OUTLIER_AMP:
            pixels[region][0, 0] += OUTLIER
            flags[0, 0] = True
        kept.append(values[~flags])
    return flat, kept


def _set_plane(mask, plane, region, flags):
    full = np.zeros(mask.array.shape[:2], dtype=bool)
    full[region] = flags
    mask.set(plane, full)


def _assert_stats(test, stats, detector, kept):
    """Check every statistics key against the pixel values each amplifier must keep."""
    all_kept = np.concatenate(kept)
    test.assertFloatsAlmostEqual(stats["DETECTOR_MEDIAN"], all_kept.mean(), rtol=1e-12)
    test.assertFloatsAlmostEqual(stats["DETECTOR_SIGMA"], all_kept.std(), rtol=1e-12)
    test.assertEqual(stats["DETECTOR_N"], all_kept.size)
    test.assertEqual(len(stats), 3 + 4 * len(kept))
    for i, (amp, values) in enumerate(zip(detector, kept)):
        with test.subTest(amp=amp.getName()):
            test.assertEqual(stats[f"AMP_NAME_{i}"], amp.getName())
            test.assertEqual(stats[f"AMP_N_{i}"], values.size)
            if values.size:
                test.assertFloatsAlmostEqual(stats[f"AMP_MEDIAN_{i}"], values.mean(), rtol=1e-12)
                test.assertFloatsAlmostEqual(stats[f"AMP_SIGMA_{i}"], values.std(), rtol=1e-12)
            else:
                test.assertTrue(np.isnan(stats[f"AMP_MEDIAN_{i}"]) and np.isnan(stats[f"AMP_SIGMA_{i}"]))


class CpFlatMeasureRunTestCase(lsst.utils.tests.TestCase):
    """run() on a synthetic flat of the simulated camera, checked key by key."""

    def setUp(self):
        self.camera = make_sim_camera(amp_width=AMP_WIDTH, amp_height=AMP_HEIGHT)
        self.detector = self.camera[SCIENCE_DETECTOR]
        self.flat, self.kept = _synthetic_flat(self.detector)
        self.task = CpFlatMeasureTask(config=_config())

    def test_every_key(self):
        with self.assertLogs(self.task.log.name, level="WARNING") as logs:
            stats = self.task.run(self.flat, self.camera, SCIENCE_DETECTOR).outputStats
        _assert_stats(self, stats, self.detector, self.kept)
        # The hand-computed truth of the special amplifiers.
        self.assertEqual(stats[f"AMP_N_{BAD_AMP}"], 18)
        self.assertFloatsAlmostEqual(stats[f"AMP_MEDIAN_{BAD_AMP}"], _level(BAD_AMP), rtol=1e-15)
        self.assertEqual(stats[f"AMP_N_{OUTLIER_AMP}"], 19)
        self.assertFloatsAlmostEqual(stats[f"AMP_MEDIAN_{OUTLIER_AMP}"], _level(OUTLIER_AMP) - 1 / 19,
                                     rtol=1e-14)
        self.assertFloatsAlmostEqual(stats[f"AMP_SIGMA_{OUTLIER_AMP}"], np.sqrt(1 - 1 / 19**2), rtol=1e-14)
        self.assertEqual(stats[f"AMP_N_{COSMIC_RAY_AMP}"], 20)
        self.assertEqual(stats["DETECTOR_N"], 15 * 20 - 2 - 1)
        # The fully saturated amplifier (NaN, N = 0 above) gets a warning naming it.
        self.assertEqual(stats[f"AMP_N_{SATURATED_AMP}"], 0)
        amp_name = self.detector[SATURATED_AMP].getName()
        self.assertEqual(len(logs.records), 1)
        self.assertIn(f"Detector {SCIENCE_DETECTOR} amplifier {amp_name} has no unmasked pixel",
                      logs.output[0])

    def test_absent_mask_plane_is_ignored_with_debug_log(self):
        with self.assertLogs(self.task.log.name, level="DEBUG") as logs:
            self.task.run(self.flat, self.camera, SCIENCE_DETECTOR)
        self.assertIn("Mask planes ['NO_DATA', 'SATURATED'] are not in the image's mask schema",
                      "\n".join(logs.output))

    def test_mask_name_list_and_clip_config(self):
        config = CpFlatMeasureConfig()
        config.maskNameList = ["SAT"]
        config.clipMaxIter = 0
        stats = CpFlatMeasureTask(config=config).run(self.flat, self.camera, SCIENCE_DETECTOR).outputStats
        # Unmasked 1e6 BAD pixels and the unclipped outlier now enter the means.
        self.assertFloatsAlmostEqual(stats[f"AMP_MEDIAN_{BAD_AMP}"], (18 * _level(BAD_AMP) + 2e6) / 20,
                                     rtol=1e-12)
        self.assertFloatsAlmostEqual(stats[f"AMP_MEDIAN_{OUTLIER_AMP}"],
                                     _level(OUTLIER_AMP) + OUTLIER / 20, rtol=1e-12)
        self.assertEqual(stats[f"AMP_N_{OUTLIER_AMP}"], 20)

    def test_afw_camera(self):
        # The stand-in has afw's method names only (boxes without x0 or width attributes).
        camera = load_afw_standin().camera_from_model(self.camera)
        stats = self.task.run(self.flat, camera, SCIENCE_DETECTOR).outputStats
        _assert_stats(self, stats, self.detector, self.kept)

    def test_wavefront_detector(self):
        detector = self.camera[WAVEFRONT_DETECTOR]
        flat, kept = _synthetic_flat(detector)
        stats = self.task.run(flat, self.camera, WAVEFRONT_DETECTOR).outputStats
        _assert_stats(self, stats, detector, kept)

    def test_shape_mismatch(self):
        with self.assertRaisesRegex(
            ValueError, rf"Detector {WAVEFRONT_DETECTOR}: image shape \(ny, nx\) = \(10, 32\) does not "
                        r"match the camera's detector shape \(5, 32\)"
        ):
            self.task.run(self.flat, self.camera, WAVEFRONT_DETECTOR)


class CpFlatMeasureVignetteTestCase(lsst.utils.tests.TestCase):
    """doVignette leaves the pixels outside the vignette region out of every statistic."""

    def setUp(self):
        self.camera = make_sim_camera(amp_width=AMP_WIDTH, amp_height=AMP_HEIGHT)
        self.detector = self.camera[SCIENCE_DETECTOR]  # 32 x 10 pixels of 0.01 mm, centred at (0, 0)
        # Outside the square |x + 0.1| + |y| <= 0.083 mm (no pixel centre on its edge); pixel centres
        # placed here, not by the code.
        y, x = np.mgrid[0:10, 0:32]
        self.vignetted = np.abs((x - 15.5) * 0.01 + 0.1) + np.abs((y - 4.5) * 0.01) > 0.083

    def _config(self, doVignette):
        config = _config(doVignette=doVignette)
        config.vignette.xCenter, config.vignette.radius, config.vignette.numPolygonPoints = -0.1, 0.083, 4
        return config

    def test_vignetted_pixels_are_excluded(self):
        # Vignetted pixels at 1e6 and unmasked, against the same pixels masked BAD without doVignette.
        vignetted_flat, _ = _synthetic_flat(self.detector)
        vignetted_flat.image.array[self.vignetted] = 1e6
        masked_flat, _ = _synthetic_flat(self.detector)
        masked_flat.mask.set("BAD", self.vignetted)
        task = CpFlatMeasureTask(config=self._config(True))
        with self.assertLogs(task.log.name, level="INFO") as logs:
            stats = task.run(vignetted_flat, self.camera, SCIENCE_DETECTOR).outputStats
        reference = CpFlatMeasureTask(config=self._config(False)).run(masked_flat, self.camera,
                                                                      SCIENCE_DETECTOR).outputStats
        self.assertEqual(self.vignetted.sum(), 206)
        self.assertIn(f"Detector {SCIENCE_DETECTOR}: 206 of 320 pixels are vignetted.",
                      "\n".join(logs.output))
        np.testing.assert_equal(dict(stats), dict(reference))  # NaN equals NaN here
        self.assertLess(stats["DETECTOR_MEDIAN"], 200.0)
        # Amplifiers wholly right of x = 14 are wholly vignetted: no pixel, NaN level.
        for i, amp in enumerate(self.detector):
            if amp.getBBox().getMinX() >= 16:
                self.assertEqual(stats[f"AMP_N_{i}"], 0)

    def test_afw_camera_is_placed_as_the_camera_model(self):
        flat, _ = _synthetic_flat(self.detector)
        task = CpFlatMeasureTask(config=self._config(True))
        afw_camera = load_afw_standin().camera_from_model(self.camera)
        np.testing.assert_equal(dict(task.run(flat, afw_camera, SCIENCE_DETECTOR).outputStats),
                                dict(task.run(flat, self.camera, SCIENCE_DETECTOR).outputStats))

    def test_on_by_default_without_a_region(self):
        # cp_pipe's default, True, vignettes nothing where an exposure has no valid polygon; here
        # nothing is vignetted until vignette.radius is set.
        config = _config()
        self.assertTrue(config.doVignette)
        self.assertIsNone(config.vignette.radius)
        flat, kept = _synthetic_flat(self.detector)
        stats = CpFlatMeasureTask(config=config).run(flat, self.camera, SCIENCE_DETECTOR).outputStats
        _assert_stats(self, stats, self.detector, kept)
        off = CpFlatMeasureTask(config=self._config(False)).run(flat, self.camera, SCIENCE_DETECTOR)
        np.testing.assert_equal(dict(stats), dict(off.outputStats))

    def test_config_ranges_are_stated(self):
        config = _config()
        for target, field, value, message in (
            (config.vignette, "radius", -1.0, "RangeField 'vignette.radius' failed validation: -1.0 is "
             "outside of valid range [0.0,inf)"),
            (config, "numSigmaClip", 0.0, "RangeField 'numSigmaClip' failed validation: 0.0 is outside of "
             "valid range (0.0,inf)"),
            (config, "clipMaxIter", -1, "RangeField 'clipMaxIter' failed validation: -1 is outside of valid "
             "range [0,inf)"),
        ):
            with self.subTest(field=field), self.assertRaises(pexConfig.FieldValidationError) as cm:
                setattr(target, field, value)
            self.assertIn(message, str(cm.exception))
        config.vignette.radius = None  # no region: allowed
        config.validate()


class CpFlatMeasureButlerTestCase(lsst.utils.tests.TestCase):
    """A quantum of the task read from and written to a butler repository."""

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.TemporaryDirectory()
        # A file datastore, so that the image and the NaN statistics go through serialization.
        config = seed_config()
        config["datastore", "cls"] = "lsst.daf.butler.datastores.fileDatastore.FileDatastore"
        cls.repo = butlerTests.makeTestRepo(cls.root.name, config=config)
        registry = cls.repo.registry
        registry.insertDimensionData("instrument", {"name": SIM_CAMERA_NAME, "detector_max": 16})
        registry.insertDimensionData("detector", {"instrument": SIM_CAMERA_NAME, "id": SCIENCE_DETECTOR,
                                                  "full_name": "S11"})
        registry.insertDimensionData("physical_filter", {"instrument": SIM_CAMERA_NAME, "name": "r_sim",
                                                         "band": "r"})
        registry.insertDimensionData("day_obs", {"instrument": SIM_CAMERA_NAME, "id": 20240611})
        registry.insertDimensionData("group", {"instrument": SIM_CAMERA_NAME, "name": "flat-group"})
        registry.insertDimensionData("exposure", {
            "instrument": SIM_CAMERA_NAME, "id": 7, "obs_id": "flat-7", "physical_filter": "r_sim",
            "group": "flat-group", "day_obs": 20240611, "observation_type": "flat",
        })
        butlerTests.addDatasetType(cls.repo, "cpFlatIsrExp", {"instrument", "exposure", "detector"},
                                   "MaskedImageV2")
        registry.registerDatasetType(DatasetType("camera", {"instrument"}, "CameraModel",
                                                 universe=registry.dimensions, isCalibration=True))
        butlerTests.addDatasetType(cls.repo, "cpFlatStatistics", {"instrument", "exposure", "detector"},
                                   "TaskMetadata")

    @classmethod
    def tearDownClass(cls):
        cls.root.cleanup()

    def setUp(self):
        self.butler = butlerTests.makeTestCollection(self.repo, uniqueId=self.id())
        self.camera = make_sim_camera(amp_width=AMP_WIDTH, amp_height=AMP_HEIGHT)
        self.flat, self.kept = _synthetic_flat(self.camera[SCIENCE_DETECTOR])
        # Expanded, as in a real quantum graph: file templates name the exposure's day_obs.
        self.dataId = self.butler.registry.expandDataId(
            instrument=SIM_CAMERA_NAME, exposure=7, detector=SCIENCE_DETECTOR
        )
        self.butler.put(self.flat, "cpFlatIsrExp", self.dataId)
        self.butler.put(self.camera, "camera", instrument=SIM_CAMERA_NAME)

    def test_run_quantum(self):
        task = CpFlatMeasureTask(config=_config())
        quantum = pipeTestUtils.makeQuantum(task, self.butler, self.dataId, {
            "inputExp": self.dataId, "camera": {"instrument": SIM_CAMERA_NAME}, "outputStats": self.dataId,
        })
        pipeTestUtils.runTestQuantum(task, self.butler, quantum, mockRun=False)
        # Read back from the file datastore: NaN and every other value survive serialization.
        stats = self.butler.get("cpFlatStatistics", self.dataId)
        _assert_stats(self, stats, self.camera[SCIENCE_DETECTOR], self.kept)
        result = task.run(self.flat, self.camera, SCIENCE_DETECTOR)
        pipeTestUtils.assertValidOutput(task, result)

    def test_run_quantum_passes_detector_id(self):
        task = CpFlatMeasureTask()
        quantum = pipeTestUtils.makeQuantum(task, self.butler, self.dataId, {
            "inputExp": self.dataId, "camera": {"instrument": SIM_CAMERA_NAME}, "outputStats": self.dataId,
        })
        run = pipeTestUtils.runTestQuantum(task, self.butler, quantum, mockRun=True)
        run.assert_called_once()
        self.assertEqual(run.call_args.kwargs["detectorId"], SCIENCE_DETECTOR)
        self.assertEqual(run.call_args.kwargs["camera"], self.camera)


class DefaultsTestCase(lsst.utils.tests.TestCase):
    def test_cp_pipe_defaults(self):
        config = CpFlatMeasureConfig()
        self.assertEqual(list(config.maskNameList), ["DETECTED", "BAD", "NO_DATA"])
        self.assertEqual((config.doVignette, config.numSigmaClip, config.clipMaxIter), (True, 3.0, 3))

    def test_saturated_pixels_count_by_default(self):
        camera = make_sim_camera(amp_width=AMP_WIDTH, amp_height=AMP_HEIGHT)
        flat, _ = _synthetic_flat(camera[SCIENCE_DETECTOR])
        stats = CpFlatMeasureTask().run(flat, camera, SCIENCE_DETECTOR).outputStats
        # The SAT amplifier's 20 pixels (its level with the +-1 checkerboard) now count.
        self.assertEqual(stats[f"AMP_N_{SATURATED_AMP}"], 20)
        self.assertFloatsAlmostEqual(stats[f"AMP_MEDIAN_{SATURATED_AMP}"], _level(SATURATED_AMP), rtol=1e-12)


class CameraStorageClassTestCase(lsst.utils.tests.TestCase):
    def test_camera_connection_storage_class(self):
        config = CpFlatMeasureConfig()
        self.assertEqual(config.cameraStorageClass, "CameraModel")
        self.assertEqual(config.ConnectionsClass(config=config).camera.storageClass, "CameraModel")
        config.cameraStorageClass = "Camera"
        self.assertEqual(config.ConnectionsClass(config=config).camera.storageClass, "Camera")


class MemoryTestCase(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
