# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of CpFlatCombineTwoFlatsTask (cp_pipe's CalibCombineTwoFlatsByFilterTask): the weighted
combination, masks, metadata, cp_pipe's names and a butler quantum."""

import tempfile
import unittest

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base.testUtils
import lsst.utils.tests
from lsst.cp.flatnorm.butler_setup import make_repo
from lsst.cp.flatnorm.cpCombineTwoFlats import (
    CpFlatCombineTwoFlatsConfig,
    CpFlatCombineTwoFlatsConnections,
    CpFlatCombineTwoFlatsTask,
)
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.daf.butler import Butler, DatasetType
from lsst.images import Box, Image, MaskedImage, MaskPlane, MaskSchema
from afw_standin_loader import load_afw_standin

DETECTOR = 0
INSTRUMENT = "DummyCam"
FILTER = "dummy_r"
SHAPE = (24, 64)


class FlatHandle:
    """A deferred-handle stand-in for a certified flat, recording the boxes read."""

    def __init__(self, image):
        self.image = image
        self.reads = []

    def get(self, *, component=None, parameters=None):
        if component == "bbox":
            return self.image.bbox
        self.reads.append(parameters["bbox"])
        return self.image[parameters["bbox"]]


def _flat(level, seed, planes=("BAD", "CR"), metadata=None):
    """A flat of the 64 x 24 detector: ``level`` times a slope, noise, and a variance of its own."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    values = level * (1.0 + 0.01 * x - 0.02 * y) + rng.normal(0.0, 0.01, SHAPE)
    schema = MaskSchema([MaskPlane(name, name) for name in planes])
    return MaskedImage(Image(values.astype(np.float32)), mask_schema=schema,
                       variance=Image(rng.uniform(1e-4, 2e-4, SHAPE).astype(np.float32)),
                       metadata=metadata or {})


class CombineTwoFlatsTestCase(lsst.utils.tests.TestCase):
    """run() on two in-memory flats with known weighted combination."""

    def setUp(self):
        self.camera = make_sim_camera(n_side=1, amp_width=8, amp_height=12, n_wavefront=0)
        self.blue = _flat(0.9, 1, metadata={"FLATSRC": "DOME", "OBSTYPE": "flat", "CP_COMBINE_N_INPUTS": 12,
                                            "FILTER": "r"})
        self.red = _flat(1.1, 2, metadata={"FLATSRC": "DOME", "OBSTYPE": "flat", "CP_COMBINE_N_INPUTS": 9,
                                           "FILTER": "r"})

    def run_task(self, camera=None, **overrides):
        config = CpFlatCombineTwoFlatsConfig()
        for name, value in overrides.items():
            setattr(config, name, value)
        task = CpFlatCombineTwoFlatsTask(config=config)
        return task.run(inputFlatOneHandle=FlatHandle(self.blue), inputFlatTwoHandle=FlatHandle(self.red),
                        camera=self.camera if camera is None else camera, detectorId=DETECTOR).outputData

    def test_afw_camera(self):
        flat = self.run_task(camera=load_afw_standin().camera_from_model(self.camera), weightOne=0.3)
        reference = self.run_task(weightOne=0.3)
        np.testing.assert_array_equal(flat.image.array, reference.image.array)
        self.assertEqual(dict(flat.metadata), dict(reference.metadata))

    def _arrays(self, plane):
        return [getattr(flat, plane).array.astype(float) for flat in (self.blue, self.red)]

    def test_weighted_mean_and_variance(self):
        (blue, red), (blue_var, red_var) = self._arrays("image"), self._arrays("variance")
        flat = self.run_task(weightOne=0.3)
        self.assertFloatsAlmostEqual(flat.image.array, 0.3 * blue + 0.7 * red, rtol=1e-6)
        self.assertFloatsAlmostEqual(flat.variance.array, 0.09 * blue_var + 0.49 * red_var, rtol=1e-6)
        self.assertEqual(flat.image.array.dtype, np.float32)
        self.assertFloatsAlmostEqual(self.run_task().image.array, (blue + red) / 2, rtol=1e-6)
        self.assertFloatsAlmostEqual(self.run_task(weightOne=1.0).image.array, blue, rtol=1e-7)

    def test_a_pixel_one_flat_lacks_is_the_other_flat(self):
        """cp_pipe's MEAN of the pre-scaled flats gives 2 w1 flat1 where flat2 is NaN; here flat1."""
        self.red.image.array[3, 4] = np.nan
        flat = self.run_task(weightOne=0.3)
        self.assertEqual(flat.image.array[3, 4], self.blue.image.array[3, 4])
        self.assertEqual(flat.variance.array[3, 4], self.blue.variance.array[3, 4])
        self.assertFalse(flat.mask.get("BAD")[3, 4])

    def test_a_pixel_neither_flat_has_is_filled_and_flagged(self):
        self.blue.image.array[5, 6] = self.red.image.array[5, 6] = np.nan
        config = CpFlatCombineTwoFlatsConfig()
        task = CpFlatCombineTwoFlatsTask(config=config)
        with self.assertLogs(task.log.name, level="WARNING") as logs:
            flat = task.run(inputFlatOneHandle=FlatHandle(self.blue), inputFlatTwoHandle=FlatHandle(self.red),
                            camera=self.camera, detectorId=DETECTOR).outputData
        others = np.ones(SHAPE, bool)
        others[5, 6] = False
        self.assertEqual(flat.image.array[5, 6], np.median(flat.image.array[others]))
        self.assertEqual(np.argwhere(flat.mask.get("BAD")).tolist(), [[5, 6]])
        self.assertIn("Detector 0: filled 1 NaN pixels with the median and flagged them BAD.", logs.output[0])

    def test_masks_are_merged_and_mask_nothing(self):
        self.blue.mask.set("CR", np.arange(SHAPE[0] * SHAPE[1]).reshape(SHAPE) == 70)
        self.red.mask.set("BAD", np.arange(SHAPE[0] * SHAPE[1]).reshape(SHAPE) == 200)
        blue, red = self._arrays("image")
        flat = self.run_task()
        self.assertEqual(np.argwhere(flat.mask.get("CR")).tolist(), [[1, 6]])
        self.assertEqual(np.argwhere(flat.mask.get("BAD")).tolist(), [[3, 8]])
        self.assertFloatsAlmostEqual(flat.image.array, (blue + red) / 2, rtol=1e-6)

    def test_pixels_not_finite_and_positive_are_masked_counted_and_logged(self):
        """Zeros in both flats (a dead amplifier) are masked BAD and counted; a vignetted zero, masked
        NO_DATA by the combine that made the flats, is neither."""
        self.blue = _flat(0.9, 1, planes=("BAD", "NO_DATA"))
        self.red = _flat(1.1, 2, planes=("BAD", "NO_DATA"))
        for flat in (self.blue, self.red):
            flat.image.array[0:12, 8:16] = 0.0
            flat.image.array[20, 60] = 0.0
            flat.mask.set("NO_DATA", np.arange(SHAPE[0] * SHAPE[1]).reshape(SHAPE) == 20 * 64 + 60)
        config = CpFlatCombineTwoFlatsConfig()
        task = CpFlatCombineTwoFlatsTask(config=config)
        with self.assertLogs(task.log.name, level="WARNING") as logs:
            flat = task.run(inputFlatOneHandle=FlatHandle(self.blue), inputFlatTwoHandle=FlatHandle(self.red),
                            camera=self.camera, detectorId=DETECTOR).outputData
        expected = np.zeros(SHAPE, bool)
        expected[0:12, 8:16] = True
        np.testing.assert_array_equal(flat.mask.get("BAD"), expected)
        self.assertEqual(flat.metadata["CP_COMBINE_N_NOT_POSITIVE"], 96)
        amp = next(amp.getName() for amp in self.camera[DETECTOR] if amp.getBBox().getMinX() == 8
                   and amp.getBBox().getMinY() == 0)
        self.assertIn(f"WARNING:{task.log.name}:Detector 0: 96 pixels of the flat are not finite and "
                      f"positive ({amp}: 96); masked BAD, so that flat-fielding never divides by them.",
                      logs.output)

    def test_list_ranges_are_stated(self):
        config = CpFlatCombineTwoFlatsConfig()
        config.subregionSize = [64, 0]
        with self.assertRaisesRegex(pexConfig.FieldValidationError, r"ListField 'subregionSize' failed "
                                    r"validation: every item must be in \[1,inf\); got \[64, 0\]"):
            config.validate()

    def test_metadata(self):
        flat = self.run_task(weightOne=0.25, distributionPercentiles=[50])
        metadata = dict(flat.metadata)
        self.assertEqual(metadata["FLATSRC"], "DOME")
        self.assertEqual(metadata["FILTER"], "r")
        self.assertNotIn("CP_COMBINE_N_INPUTS", metadata)  # the two flats differ
        self.assertEqual(metadata["OBSTYPE"], "flat")
        self.assertEqual((metadata["CP_COMBINE_WEIGHT_0"], metadata["CP_COMBINE_WEIGHT_1"]), (0.25, 0.75))
        for amp in self.camera[DETECTOR]:
            box = amp.getBBox()
            pixels = flat.image.array[box.getMinY():box.getMaxY() + 1, box.getMinX():box.getMaxX() + 1]
            self.assertEqual(metadata[f"LSST CALIB FLAT {amp.getName()} DISTRIBUTION 50.0-PCT"],
                             np.median(pixels))
            self.assertEqual(metadata[f"LSST CALIB FLAT {amp.getName()} BADPIX-NUM"], 0)

    def test_tiles_equal_whole(self):
        blue, red = FlatHandle(self.blue), FlatHandle(self.red)
        config = CpFlatCombineTwoFlatsConfig()
        config.subregionSize = [40, 10]
        tiled = CpFlatCombineTwoFlatsTask(config=config).run(
            inputFlatOneHandle=blue, inputFlatTwoHandle=red, camera=self.camera, detectorId=DETECTOR
        ).outputData
        self.assertEqual([(box.y.size, box.x.size) for box in blue.reads],
                         [(10, 40), (10, 24), (10, 40), (10, 24), (4, 40), (4, 24)])
        np.testing.assert_array_equal(tiled.image.array, self.run_task().image.array)

    def test_flat_smaller_than_detector_raises(self):
        self.red = self.red[Box.factory[0:20, 0:64]]
        with self.assertRaisesRegex(ValueError, r"^Flat 2 of detector 0: its box .* does not contain the "
                                                r"detector box .*\.$"):
            self.run_task()

    def test_weight_range(self):
        config = CpFlatCombineTwoFlatsConfig()
        for weight in (-0.1, 1.5):
            with self.subTest(weight=weight), self.assertRaisesRegex(pexConfig.FieldValidationError,
                                                                     "Field 'weightOne' failed validation"):
                config.weightOne = weight


class NamesTestCase(unittest.TestCase):
    """cp_pipe's connection names, config fields and class paths."""

    def test_connections(self):
        connections = CpFlatCombineTwoFlatsConnections(config=CpFlatCombineTwoFlatsConfig())
        self.assertEqual(set(connections.inputs), {"inputFlatOneHandle", "inputFlatTwoHandle"})
        self.assertEqual(set(connections.prerequisiteInputs), {"camera"})
        for name, default in (("inputFlatOneHandle", "flat_blue"), ("inputFlatTwoHandle", "flat_red"),
                              ("outputData", "flat")):
            connection = getattr(connections, name)
            self.assertEqual(connection.name, default)
            self.assertTrue(connection.isCalibration)
            self.assertEqual(set(connection.dimensions), {"instrument", "detector", "physical_filter"})
        self.assertTrue(connections.inputFlatOneHandle.deferLoad)

    def test_camera_connection_storage_class(self):
        config = CpFlatCombineTwoFlatsConfig()
        self.assertEqual(config.cameraStorageClass, "CameraModel")
        self.assertEqual(config.ConnectionsClass(config=config).camera.storageClass, "CameraModel")
        config.cameraStorageClass = "Camera"
        self.assertEqual(config.ConnectionsClass(config=config).camera.storageClass, "Camera")

    def test_config_fields_and_defaults(self):
        config = CpFlatCombineTwoFlatsConfig()
        self.assertEqual(
            {name: getattr(config, name) for name in ("calibrationType", "weightOne", "noGoodPixelsMask",
                                                      "combine")},
            {"calibrationType": "flat", "weightOne": 0.5, "noGoodPixelsMask": "BAD", "combine": "MEAN"},
        )
        self.assertEqual(list(config.subregionSize), [10000, 200])
        self.assertEqual(list(config.distributionPercentiles), [0, 5, 16, 50, 84, 95, 100])

    def test_exported_by_the_package(self):
        import lsst.cp.flatnorm

        self.assertIs(lsst.cp.flatnorm.CpFlatCombineTwoFlatsTask, CpFlatCombineTwoFlatsTask)
        self.assertIs(lsst.cp.flatnorm.CpFlatCombineTwoFlatsConfig, CpFlatCombineTwoFlatsConfig)

    def test_cp_pipe_class_paths(self):
        from lsst.cp.pipe import CalibCombineTwoFlatsByFilterTask as TopLevel
        from lsst.cp.pipe.cpCombine import (
            CalibCombineTwoFlatsByFilterConfig,
            CalibCombineTwoFlatsByFilterConnections,
            CalibCombineTwoFlatsByFilterTask,
        )

        self.assertIs(TopLevel, CpFlatCombineTwoFlatsTask)
        self.assertIs(CalibCombineTwoFlatsByFilterTask, CpFlatCombineTwoFlatsTask)
        self.assertIs(CalibCombineTwoFlatsByFilterConfig, CpFlatCombineTwoFlatsConfig)
        self.assertIs(CalibCombineTwoFlatsByFilterConnections, CpFlatCombineTwoFlatsConnections)


class ButlerTestCase(lsst.utils.tests.TestCase):
    """A quantum reading two flats certified-calibration dataset types and writing the flat."""

    def setUp(self):
        self.root = tempfile.TemporaryDirectory()
        make_repo(self.root.name)
        self.butler = Butler.from_config(self.root.name, run="test/run", writeable=True)
        registry = self.butler.registry
        registry.insertDimensionData("instrument", {"name": INSTRUMENT, "detector_max": 10})
        registry.insertDimensionData("physical_filter",
                                     {"instrument": INSTRUMENT, "name": FILTER, "band": "r"})
        registry.insertDimensionData("detector",
                                     {"instrument": INSTRUMENT, "id": DETECTOR, "full_name": "S00"})
        dimensions = ("instrument", "detector", "physical_filter")
        for name in ("flat_blue", "flat_red", "flat"):
            registry.registerDatasetType(DatasetType(name, dimensions, "MaskedImageV2",
                                                     universe=self.butler.dimensions, isCalibration=True))
        registry.registerDatasetType(DatasetType("camera", ("instrument",), "CameraModel",
                                                 universe=self.butler.dimensions, isCalibration=True))
        self.camera = make_sim_camera(n_side=1, amp_width=8, amp_height=12, n_wavefront=0)
        self.data_id = registry.expandDataId(instrument=INSTRUMENT, detector=DETECTOR, physical_filter=FILTER)
        self.flats = {"flat_blue": _flat(0.9, 1), "flat_red": _flat(1.1, 2)}
        for name, flat in self.flats.items():
            self.butler.put(flat, name, self.data_id)
        self.butler.put(self.camera, "camera", instrument=INSTRUMENT)

    def tearDown(self):
        self.butler.close()
        self.root.cleanup()

    def test_run_quantum(self):
        config = CpFlatCombineTwoFlatsConfig()
        config.weightOne = 0.4
        task = CpFlatCombineTwoFlatsTask(config=config)
        quantum = lsst.pipe.base.testUtils.makeQuantum(task, self.butler, self.data_id, {
            "inputFlatOneHandle": self.data_id, "inputFlatTwoHandle": self.data_id,
            "camera": {"instrument": INSTRUMENT}, "outputData": self.data_id,
        })
        lsst.pipe.base.testUtils.runTestQuantum(task, self.butler, quantum, mockRun=False)
        flat = self.butler.get("flat", self.data_id)
        blue, red = (self.flats[name].image.array.astype(float) for name in ("flat_blue", "flat_red"))
        self.assertFloatsAlmostEqual(flat.image.array, 0.4 * blue + 0.6 * red, rtol=1e-6)
        self.assertEqual(flat.metadata["CP_COMBINE_WEIGHT_0"], 0.4)


class MemoryTestCase(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
