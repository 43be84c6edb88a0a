# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of CpFlatCombineTask: scaling, clipping, NO_DATA, variance, provenance and the butler."""

import tempfile
import unittest

import astropy.time
import numpy as np

import lsst.pipe.base as pipeBase
import lsst.pipe.base.testUtils
import lsst.utils.tests
from lsst.cp.flatnorm.butler_setup import make_repo
from lsst.cp.flatnorm.cpCombine import CpFlatCombineConfig, CpFlatCombineTask
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.daf.butler import Butler, CollectionType, DatasetType, Timespan
from lsst.daf.butler.cli.butler import cli as butler_cli
from lsst.daf.butler.cli.utils import LogCliRunner
from lsst.images import Box, Image, MaskedImage, MaskPlane, MaskSchema

DETECTOR = 0
INSTRUMENT = "DummyCam"
FILTER = "dummy_r"
SCHEMA = MaskSchema([MaskPlane("BAD", "bad"), MaskPlane("SAT", "saturated"), MaskPlane("CR", "cosmic ray")])


class FlatSimulation:
    """Flats of one detector with a known response: image = lamp[exp] * gain[amp] * response + noise.

    Parameters
    ----------
    lamps : `list` [`float`]
        Lamp level (electrons) of each exposure; exposure IDs are 100, 101, ...
    amp_gain : `bool`
        Give every amplifier its own gain (else all gains are one).
    """

    def __init__(self, lamps=(4000.0, 9000.0, 6000.0, 12000.0, 7000.0, 5000.0, 10000.0, 8000.0),
                 amp_gain=False, seed=11):
        self.camera = make_sim_camera(n_side=1, amp_width=8, amp_height=12, n_wavefront=0)
        self.detector = self.camera[DETECTOR]
        box = self.detector.getBBox()
        self.box = Box.factory[0:box.getHeight(), 0:box.getWidth()]
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:box.getHeight(), 0:box.getWidth()]
        self.response = 1.2 * (1.0 + 0.1 * x / box.getWidth() - 0.05 * y / box.getHeight())
        self.gain = np.ones(self.box.shape)
        for i, amp in enumerate(self.detector):
            if amp_gain:
                self.gain[self._slices(amp.getBBox())] = 0.9 + 0.02 * i
        self.lamps = dict(zip(range(100, 100 + len(lamps)), lamps))
        self.images = {exp: self._image(lamp, rng) for exp, lamp in self.lamps.items()}

    @staticmethod
    def _slices(box):
        return slice(box.getMinY(), box.getMaxY() + 1), slice(box.getMinX(), box.getMaxX() + 1)

    def amp_slices(self, name):
        return self._slices(self.detector[name].getBBox())

    def _image(self, lamp, rng):
        expected = lamp * self.gain * self.response
        return MaskedImage(Image(rng.poisson(expected).astype(np.float32), bbox=self.box),
                           mask_schema=SCHEMA, variance=Image(expected.astype(np.float32), bbox=self.box))

    def handles(self):
        return [ImageHandle(image, exposure) for exposure, image in self.images.items()]

    def scales(self, key=lambda k: k, per_amp=False):
        """Scales in cp_pipe's layout; ``key`` transforms every integer key."""
        exp_scale = {}
        for amp in self.detector:
            gain = self.gain[self.amp_slices(amp.getName())][0, 0] if per_amp else 1.0
            exp_scale[amp.getName()] = {key(exp): lamp * gain for exp, lamp in self.lamps.items()}
        return {"expScale": {key(DETECTOR): exp_scale}, "detScale": {key(DETECTOR): 1.0}}


class ImageHandle:
    """A deferred-handle stand-in that records the bounding boxes it was asked to read."""

    def __init__(self, image, exposure):
        self.image = image
        self.dataId = {"instrument": INSTRUMENT, "exposure": exposure, "detector": DETECTOR}
        self.reads = []

    def get(self, *, component=None, parameters=None):
        if component == "bbox":
            return self.image.bbox
        self.reads.append(parameters["bbox"])
        return self.image[parameters["bbox"]]


def _task(**overrides):
    config = CpFlatCombineConfig()
    for name, value in overrides.items():
        setattr(config, name, value)
    return CpFlatCombineTask(config=config)


def _chi(flat, truth):
    """Residuals of the flat from the truth in units of its propagated sigma."""
    return (flat.image.array - truth) / np.sqrt(flat.variance.array)


class CombineTaskTestCase(lsst.utils.tests.TestCase):
    """run() on simulated flats with in-memory handles."""

    def setUp(self):
        self.sim = FlatSimulation()
        self.truth = self.sim.response

    def run_task(self, handles=None, scales=None, **overrides):
        handles = self.sim.handles() if handles is None else handles
        scales = self.sim.scales() if scales is None else scales
        return _task(**overrides).run(handles, self.sim.camera, DETECTOR, scales).outputData

    def test_scaled_combine_matches_truth_within_noise(self):
        flat = self.run_task()
        chi = _chi(flat, self.truth)
        # 1536 pixels: the mean chi is measured to 0.026 and the chi^2 to ~4%; clipping 8 inputs
        # costs some efficiency the propagated variance does not include.
        self.assertLess(abs(chi.mean()), 0.1)
        self.assertGreater(np.mean(chi**2), 0.85)
        self.assertLess(np.mean(chi**2), 1.3)
        self.assertEqual(flat.image.array.dtype, np.float32)
        self.assertEqual(flat.bbox, self.sim.box)

    def test_without_scaling_it_does_not_match(self):
        unity = self.run_task(exposureScaling="Unity")
        self.assertGreater(np.mean(_chi(unity, self.truth) ** 2), 1e4)
        ones = self.sim.scales()
        for amp_scales in ones["expScale"][DETECTOR].values():
            amp_scales.update({exp: 1.0 for exp in amp_scales})
        np.testing.assert_array_equal(self.run_task(scales=ones).image.array, unity.image.array)

    def test_unity_connections(self):
        config = CpFlatCombineConfig()
        self.assertIn("inputScales", config.ConnectionsClass(config=config).inputs)
        config.exposureScaling = "Unity"
        self.assertNotIn("inputScales", config.ConnectionsClass(config=config).inputs)

    def test_unity_needs_no_scales(self):
        task = _task(exposureScaling="Unity")
        flat = task.run(self.sim.handles(), self.sim.camera, DETECTOR).outputData
        self.assertEqual(flat.metadata["CP_COMBINE_SCALE_0"], 1.0)

    def test_bands_equal_whole_image_and_reads_are_bands(self):
        no_data = np.zeros(self.sim.box.shape, bool)
        no_data[17, 3] = True
        for image in self.sim.images.values():
            image.mask.set("BAD", no_data)
        handles = self.sim.handles()
        banded = self.run_task(handles=handles, bandRows=5)
        whole = self.run_task(bandRows=1000)
        np.testing.assert_array_equal(banded.image.array, whole.image.array)
        np.testing.assert_array_equal(banded.variance.array, whole.variance.array)
        self.assertEqual(banded.mask, whole.mask)
        np.testing.assert_array_equal(banded.mask.get("NO_DATA"), no_data)
        self.assertEqual([box.y.size for box in handles[0].reads], [5, 5, 5, 5, 4])
        self.assertTrue(all(box.x.size == 64 for box in handles[0].reads))

    def test_variance_is_propagated_through_the_scales(self):
        flat = self.run_task(nIter=0)
        expected = sum(image.variance.array.astype(float) / self.sim.lamps[exp] ** 2
                       for exp, image in self.sim.images.items()) / len(self.sim.images) ** 2
        self.assertFloatsAlmostEqual(flat.variance.array, expected, rtol=1e-6)
        mean = sum(image.image.array.astype(float) / self.sim.lamps[exp]
                   for exp, image in self.sim.images.items()) / len(self.sim.images)
        self.assertFloatsAlmostEqual(flat.image.array, mean, rtol=1e-6)

    def test_outlier_is_clipped(self):
        self.sim.images[103].image.array[4, 7] *= 3.0
        flat = self.run_task()
        others = [exp for exp in self.sim.images if exp != 103]
        expected = np.mean([self.sim.images[exp].image.array[4, 7] / self.sim.lamps[exp] for exp in others])
        self.assertAlmostEqual(flat.image.array[4, 7], expected, places=5)

    def test_no_data_and_median_fallback(self):
        for exp, image in self.sim.images.items():
            image.mask.set("BAD", np.zeros(self.sim.box.shape, bool) | (np.arange(64) == 9)[np.newaxis])
            if exp not in (100, 101):
                image.mask.set("SAT", np.isin(np.arange(24), [2])[:, np.newaxis] & (np.arange(64) == 20))
        flat = self.run_task()
        no_data = flat.mask.get("NO_DATA")
        self.assertEqual(np.flatnonzero(no_data.any(axis=0)).tolist(), [9])
        self.assertEqual(no_data.sum(), 24)
        self.assertTrue(np.all(np.isnan(flat.image.array[:, 9])))
        self.assertTrue(np.all(np.isnan(flat.variance.array[:, 9])))
        self.assertEqual(flat.metadata["CP_COMBINE_N_NO_DATA"], 24)
        self.assertEqual(flat.metadata["CP_COMBINE_N_MEDIAN"], 1)
        # Only exposures 100 and 101 are valid at (2, 20): their median is their mean.
        scaled = [self.sim.images[exp] for exp in (100, 101)]
        lamps = [self.sim.lamps[exp] for exp in (100, 101)]
        self.assertAlmostEqual(flat.image.array[2, 20],
                               np.mean([im.image.array[2, 20] / lamp for im, lamp in zip(scaled, lamps)]),
                               places=5)
        self.assertAlmostEqual(flat.variance.array[2, 20],
                               sum(im.variance.array[2, 20] / lamp**2 for im, lamp in zip(scaled, lamps)) / 4,
                               places=8)
        self.assertEqual(list(flat.mask.schema.names), ["BAD", "SAT", "CR", "NO_DATA"])
        self.assertFalse(flat.mask.get("BAD").any())

    def test_ignored_mask_planes_are_configurable(self):
        self.sim.images[100].mask.set("CR", np.ones(self.sim.box.shape, bool))
        self.sim.images[100].image.array[...] = 0.0
        default = self.run_task()
        self.assertLess(np.mean(_chi(default, self.truth) ** 2), 1e3)
        ignoring_cr = self.run_task(mask=["CR", "NOT_A_PLANE"], nIter=0)
        # With CR ignored, exposure 100 drops out entirely.
        others = [exp for exp in self.sim.images if exp != 100]
        mean = np.mean([self.sim.images[e].image.array / self.sim.lamps[e] for e in others], axis=0)
        self.assertFloatsAlmostEqual(ignoring_cr.image.array, mean, rtol=1e-6)

    def test_exposure_without_scale_is_logged_and_skipped(self):
        scales = self.sim.scales()
        for amp_scales in scales["expScale"][DETECTOR].values():
            del amp_scales[102]
            amp_scales[105] = float("nan")
        task = _task()
        with self.assertLogs(task.log.name, level="WARNING") as logs:
            flat = task.run(self.sim.handles(), self.sim.camera, DETECTOR, scales).outputData
        self.assertEqual(len(logs.output), 2)
        self.assertIn("Exposure 102 has no usable scale for detector 0", logs.output[0])
        self.assertIn("Exposure 105", logs.output[1])
        kept = [h for h in self.sim.handles() if h.dataId["exposure"] not in (102, 105)]
        reference = self.run_task(handles=kept)
        np.testing.assert_array_equal(flat.image.array, reference.image.array)
        self.assertEqual(flat.metadata["CP_COMBINE_SKIPPED_EXPOSURES"], "102,105")
        self.assertEqual(flat.metadata["CP_COMBINE_N_INPUTS"], 6)

    def test_string_keys_are_accepted(self):
        reference = self.run_task()
        flat = self.run_task(scales=self.sim.scales(key=str))
        np.testing.assert_array_equal(flat.image.array, reference.image.array)

    def test_provenance_metadata(self):
        flat = self.run_task(clip=2.5, nIter=4)
        metadata = flat.metadata
        self.assertEqual(metadata["OBSTYPE"], "flat")
        self.assertEqual(metadata["DETECTOR"], DETECTOR)
        self.assertEqual(metadata["CP_COMBINE_CLIP"], 2.5)
        self.assertEqual(metadata["CP_COMBINE_N_ITER"], 4)
        self.assertEqual(metadata["CP_COMBINE_MASK_PLANES"], "BAD,SAT,NO_DATA,DETECTED")
        self.assertEqual(metadata["CP_COMBINE_EXPOSURE_SCALING"], "InputList")
        self.assertEqual(metadata["CP_COMBINE_SKIPPED_EXPOSURES"], "")
        self.assertEqual([metadata[f"CP_COMBINE_INPUT_{i}"] for i in range(8)], list(range(100, 108)))
        self.assertEqual([metadata[f"CP_COMBINE_SCALE_{i}"] for i in range(8)], list(self.sim.lamps.values()))

    def test_no_scales_for_detector_is_no_work(self):
        scales = {"expScale": {5: {}}, "detScale": {5: 1.0}}
        with self.assertRaisesRegex(pipeBase.NoWorkFound, "Detector 0 has no entry"):
            self.run_task(scales=scales)
        scales = self.sim.scales()
        for amp_scales in scales["expScale"][DETECTOR].values():
            amp_scales.clear()
        with self.assertRaisesRegex(pipeBase.NoWorkFound, "None of the 8 input exposures"):
            self.run_task(scales=scales)

    def test_image_smaller_than_detector_raises(self):
        handles = self.sim.handles()
        handles[2].image = handles[2].image[Box.factory[0:20, 0:64]]
        with self.assertRaisesRegex(ValueError, "Exposure 102, detector 0: the image box .* does not"):
            self.run_task(handles=handles)

    def test_detector_level_rejects_amp_dependent_scales(self):
        with self.assertRaisesRegex(ValueError, "exposure 100 on detector 0 differ.*scalingLevel='AMP'"):
            self.run_task(scales=FlatSimulation(amp_gain=True).scales(per_amp=True))


class AmpLevelTestCase(lsst.utils.tests.TestCase):
    """scalingLevel AMP divides each amplifier by its own scale."""

    def setUp(self):
        self.sim = FlatSimulation(amp_gain=True)
        self.task = _task(scalingLevel="AMP")

    def test_amp_scales_remove_amp_gains(self):
        flat = self.task.run(self.sim.handles(), self.sim.camera, DETECTOR,
                             self.sim.scales(per_amp=True)).outputData
        chi = _chi(flat, self.sim.response)
        self.assertLess(abs(chi.mean()), 0.1)
        self.assertLess(np.mean(chi**2), 1.3)
        self.assertEqual(flat.metadata["CP_COMBINE_SCALE_0_C10"], self.sim.lamps[100] * 0.9)

    def test_amp_without_scale_drops_only_that_amp(self):
        scales = self.sim.scales(per_amp=True)
        del scales["expScale"][DETECTOR]["C05"][104]
        task = _task(scalingLevel="AMP", nIter=0)
        with self.assertLogs(task.log.name, level="INFO") as logs:
            flat = task.run(self.sim.handles(), self.sim.camera, DETECTOR, scales).outputData
        self.assertTrue(any("Exposure 104, detector 0: amplifiers ['C05']" in line for line in logs.output))
        self.assertNotIn("CP_COMBINE_SCALE_4_C05", flat.metadata)
        self.assertIn("CP_COMBINE_SCALE_4_C04", flat.metadata)
        all_exposures = list(self.sim.images)
        for amp, exposures in (("C05", [e for e in all_exposures if e != 104]), ("C04", all_exposures)):
            region = self.sim.amp_slices(amp)
            gain = self.sim.gain[region][0, 0]
            expected = np.mean([self.sim.images[e].image.array[region] / (self.sim.lamps[e] * gain)
                                for e in exposures], axis=0)
            self.assertFloatsAlmostEqual(flat.image.array[region], expected, rtol=1e-6)


class ButlerTestCase(lsst.utils.tests.TestCase):
    """The task on a file-datastore repo: quantum I/O, band reads, YAML scales, certification."""

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.TemporaryDirectory()
        make_repo(cls.root.name)
        cls.butler = Butler.from_config(cls.root.name, run="test/run", writeable=True)
        cls.sim = FlatSimulation(lamps=(4000.0, 9000.0, 6000.0, 12000.0, 7000.0))
        cls._register(cls.butler, cls.sim)
        cls._put_inputs(cls.butler, cls.sim)

    @classmethod
    def tearDownClass(cls):
        cls.butler.close()
        cls.root.cleanup()

    @staticmethod
    def _register(butler, sim):
        registry = butler.registry
        registry.insertDimensionData("instrument", {"name": INSTRUMENT, "detector_max": 10,
                                                    "exposure_max": 1000, "visit_max": 1000})
        registry.insertDimensionData("physical_filter", {"instrument": INSTRUMENT, "name": FILTER,
                                                         "band": "r"})
        registry.insertDimensionData("detector", {"instrument": INSTRUMENT, "id": DETECTOR,
                                                  "full_name": "S00"})
        registry.insertDimensionData("day_obs", {"instrument": INSTRUMENT, "id": 20260101})
        start = astropy.time.Time("2026-01-01T03:00:00", scale="tai")
        for exposure in sim.lamps:
            registry.insertDimensionData("group", {"instrument": INSTRUMENT, "name": f"g{exposure}"})
            begin = start + (exposure - 100) * 60 * astropy.units.s
            registry.insertDimensionData("exposure", {
                "instrument": INSTRUMENT, "id": exposure, "obs_id": f"e{exposure}",
                "physical_filter": FILTER, "day_obs": 20260101, "group": f"g{exposure}",
                "observation_type": "flat", "exposure_time": 10.0,
                "timespan": Timespan(begin, begin + 10 * astropy.units.s),
            })
        dataset_types = [
            DatasetType("cpFlatProc", ("instrument", "exposure", "detector"), "MaskedImageV2",
                        universe=butler.dimensions),
            DatasetType("cpFlatNormScales", ("instrument", "physical_filter"), "StructuredDataDict",
                        universe=butler.dimensions),
            DatasetType("camera", ("instrument",), "CameraModel", universe=butler.dimensions,
                        isCalibration=True),
            DatasetType("flat", ("instrument", "detector", "physical_filter"), "MaskedImageV2",
                        universe=butler.dimensions, isCalibration=True),
        ]
        for dataset_type in dataset_types:
            registry.registerDatasetType(dataset_type)

    @staticmethod
    def _put_inputs(butler, sim):
        butler.put(sim.camera, "camera", instrument=INSTRUMENT)
        butler.put(sim.scales(), "cpFlatNormScales", instrument=INSTRUMENT, physical_filter=FILTER)
        for exposure, image in sim.images.items():
            butler.put(image, "cpFlatProc", instrument=INSTRUMENT, exposure=exposure, detector=DETECTOR)

    def _run_quantum(self, task):
        # The calibration file template names detector.full_name: the output needs a data ID with records.
        data_id = self.butler.registry.expandDataId(instrument=INSTRUMENT, detector=DETECTOR,
                                                    physical_filter=FILTER)
        io = {
            "inputExpHandles": [{"instrument": INSTRUMENT, "exposure": e, "detector": DETECTOR}
                                for e in self.sim.lamps],
            "inputScales": {"instrument": INSTRUMENT, "physical_filter": FILTER},
            "camera": {"instrument": INSTRUMENT},
            "outputData": data_id,
        }
        quantum = lsst.pipe.base.testUtils.makeQuantum(task, self.butler, data_id, io)
        lsst.pipe.base.testUtils.runTestQuantum(task, self.butler, quantum, mockRun=False)
        return self.butler.get("flat", data_id)

    def test_scales_keys_after_yaml_round_trip(self):
        scales = self.butler.get("cpFlatNormScales", instrument=INSTRUMENT, physical_filter=FILTER)
        self.assertEqual(list(scales["expScale"]), [DETECTOR])
        self.assertEqual(list(scales["expScale"][DETECTOR]["C10"]), list(self.sim.lamps))

    def test_quantum_output_certify_and_read_back(self):
        task = _task(bandRows=7)
        flat = self._run_quantum(task)
        reference = task.run(self.sim.handles(), self.sim.camera, DETECTOR, self.sim.scales()).outputData
        np.testing.assert_array_equal(flat.image.array, reference.image.array)
        np.testing.assert_array_equal(flat.variance.array, reference.variance.array)
        self.assertEqual(flat.mask, reference.mask)
        self.assertEqual(flat.metadata["CP_COMBINE_N_INPUTS"], 5)
        self.assertEqual(flat.metadata["CP_COMBINE_SCALE_3"], 12000.0)
        self.assertLess(np.mean(_chi(flat, self.sim.response) ** 2), 1.5)

        ref = self.butler.find_dataset("flat", instrument=INSTRUMENT, detector=DETECTOR,
                                       physical_filter=FILTER, collections="test/run")
        self.butler.collections.register("DummyCam/calib", CollectionType.CALIBRATION)
        validity = Timespan(astropy.time.Time("2026-01-01T00:00:00", scale="tai"), None)
        self.butler.registry.certify("DummyCam/calib", [ref], validity)
        later = astropy.time.Time("2026-06-01T00:00:00", scale="tai")
        certified = self.butler.find_dataset("flat", instrument=INSTRUMENT, detector=DETECTOR,
                                             physical_filter=FILTER, collections="DummyCam/calib",
                                             timespan=Timespan(later, later + 1 * astropy.units.s))
        self.assertEqual(certified.id, ref.id)
        np.testing.assert_array_equal(self.butler.get(certified).image.array, flat.image.array)

        result = LogCliRunner().invoke(butler_cli, ["certify-calibrations", self.root.name, "test/run",
                                                    "DummyCam/cli-calib", "flat",
                                                    "--begin-date", "2026-01-01T00:00:00"])
        self.assertEqual(result.exit_code, 0, result.output)
        with Butler.from_config(self.root.name) as reader:
            from_cli = reader.find_dataset("flat", instrument=INSTRUMENT, detector=DETECTOR,
                                           physical_filter=FILTER, collections="DummyCam/cli-calib",
                                           timespan=Timespan(later, later + 1 * astropy.units.s))
        self.assertEqual(from_cli.id, ref.id)


class MemoryTestCase(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
