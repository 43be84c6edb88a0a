# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of CpFlatCombineTask: scaling, clipping, no-good pixels, variance, every cp_pipe config
field, provenance and the butler."""

import tempfile
import types
import unittest

import astropy.time
import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.testUtils
import lsst.utils.tests
from lsst.cp.flatnorm.butler_setup import make_repo
from lsst.cp.flatnorm.camera_model import CameraModel
from lsst.cp.flatnorm.clipped_stats import sigma_clipped_region_stats
from lsst.cp.flatnorm.cpCombine import CpFlatCombineConfig, CpFlatCombineTask
from lsst.cp.flatnorm.scale_dictionary import ScaleDictionaryError
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.daf.butler import Butler, CollectionType, DataCoordinate, DatasetType, DimensionUniverse, Timespan
from lsst.daf.butler.cli.butler import cli as butler_cli
from lsst.daf.butler.cli.utils import LogCliRunner
from lsst.images import Box, Image, MaskedImage, MaskPlane, MaskSchema
from afw_standin_loader import load_afw_standin

DETECTOR = 0
INSTRUMENT = "DummyCam"
UNIVERSE = DimensionUniverse()
FILTER = "dummy_r"
SCHEMA = MaskSchema([MaskPlane("BAD", "bad"), MaskPlane("SAT", "saturated"), MaskPlane("CR", "cosmic ray"),
                     MaskPlane("NO_DATA", "no data")])
# Tests of the propagated variance use it whatever the number of inputs; cp_pipe's default takes the
# variance from the spread of the inputs from five inputs on.
PROPAGATED = {"maxVisitsToCalcErrorFromInputVariance": 1000}
# What the package's flat pipeline sets (pipelines/_ingredients/cpFlat.yaml); the tests start from it,
# and PipelineValuesTestCase checks cp_pipe's defaults.
PIPELINE_VALUES = {"calibrationType": "flat", "exposureScaling": "InputList",
                   "mask": ["BAD", "SAT", "NO_DATA", "DETECTED"]}


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
        # Exposure and dark times proportional to (not equal to) the lamp levels.
        self.records = {exp: types.SimpleNamespace(exposure_time=lamp / 500.0, dark_time=lamp / 500.0 + 2.0)
                        for exp, lamp in self.lamps.items()}
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

    def handles(self, records=True):
        """Handles to the images; their data IDs carry exposure records unless ``records`` is False."""
        return [ImageHandle(image, exposure, self.records[exposure] if records else None)
                for exposure, image in self.images.items()]

    def scaled(self, divisors):
        """The images divided by ``divisors[exposure]``, stacked in exposure order (float64)."""
        return np.array([image.image.array / divisors[exp] for exp, image in self.images.items()])

    def scales(self, key=lambda k: k, per_amp=False):
        """Scales in cp_pipe's layout; ``key`` transforms every integer key."""
        exp_scale = {}
        for amp in self.detector:
            gain = self.gain[self.amp_slices(amp.getName())][0, 0] if per_amp else 1.0
            exp_scale[amp.getName()] = {key(exp): lamp * gain for exp, lamp in self.lamps.items()}
        return {"expScale": {key(DETECTOR): exp_scale}, "detScale": {key(DETECTOR): 1.0}}


class ExpandedDataId(dict):
    """An expanded data ID stand-in: it carries an exposure record without a registry to read it from."""

    def __init__(self, values, exposure_record):
        super().__init__(values)
        self._exposure_record = exposure_record

    def hasRecords(self):
        return True

    @property
    def records(self):
        return {"exposure": self._exposure_record}


class ImageHandle:
    """A deferred-handle stand-in that records the bounding boxes it was asked to read (None for a
    whole image)."""

    def __init__(self, image, exposure, record=None):
        self.image = image
        values = {"instrument": INSTRUMENT, "exposure": exposure, "detector": DETECTOR}
        # Without a record, daf_butler's own (unexpanded) data ID: the task must not treat it as a dict.
        self.dataId = (DataCoordinate.standardize(values, universe=UNIVERSE) if record is None
                       else ExpandedDataId(values, record))
        self.reads = []

    def get(self, *, component=None, parameters=None):
        if component == "bbox":
            return self.image.bbox
        box = None if parameters is None else parameters["bbox"]
        self.reads.append(box)
        return self.image if box is None else self.image[box]


def _config(**overrides):
    """The package pipeline's combine config with ``overrides``."""
    config = CpFlatCombineConfig()
    for name, value in {**PIPELINE_VALUES, **overrides}.items():
        setattr(config, name, value)
    return config


def _task(**overrides):
    return CpFlatCombineTask(config=_config(**overrides))


def _amp_of(detector, y, x):
    """Name of the amplifier of ``detector`` holding pixel (y, x)."""
    return next(amp.getName() for amp in detector
                if amp.getBBox().getMinY() <= y <= amp.getBBox().getMaxY()
                and amp.getBBox().getMinX() <= x <= amp.getBBox().getMaxX())


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
        flat = self.run_task(**PROPAGATED)
        chi = _chi(flat, self.truth)
        # 1536 pixels: the mean chi is measured to 0.026 and the chi^2 to ~4%; clipping 8 inputs
        # costs some efficiency the propagated variance does not include.
        self.assertLess(abs(chi.mean()), 0.1)
        self.assertGreater(np.mean(chi**2), 0.85)
        self.assertLess(np.mean(chi**2), 1.3)
        self.assertEqual(flat.image.array.dtype, np.float32)
        self.assertEqual(flat.bbox, self.sim.box)

    def test_without_scaling_it_does_not_match(self):
        unity = self.run_task(exposureScaling="Unity", **PROPAGATED)
        self.assertGreater(np.mean(_chi(unity, self.truth) ** 2), 1e4)
        ones = self.sim.scales()
        for amp_scales in ones["expScale"][DETECTOR].values():
            amp_scales.update({exp: 1.0 for exp in amp_scales})
        np.testing.assert_array_equal(self.run_task(scales=ones, **PROPAGATED).image.array,
                                      unity.image.array)

    def test_only_input_list_reads_scales(self):
        config = _config()
        self.assertIn("inputScales", config.ConnectionsClass(config=config).inputs)
        for scaling in ("Unity", "ExposureTime", "DarkTime", "MeanStats"):
            config.exposureScaling = scaling
            self.assertNotIn("inputScales", config.ConnectionsClass(config=config).inputs)

    def test_unity_needs_no_scales(self):
        task = _task(exposureScaling="Unity")
        flat = task.run(self.sim.handles(), self.sim.camera, DETECTOR).outputData
        self.assertEqual(flat.metadata["CP_COMBINE_SCALE_0"], 1.0)

    def test_tiles_equal_whole_image_and_reads_are_tiles(self):
        no_good = np.zeros(self.sim.box.shape, bool)
        no_good[17, 3] = True
        for image in self.sim.images.values():
            image.mask.set("BAD", no_good)
        handles = self.sim.handles()
        tiled = self.run_task(handles=handles, subregionSize=[24, 5])
        whole = self.run_task()
        np.testing.assert_array_equal(tiled.image.array, whole.image.array)
        np.testing.assert_array_equal(tiled.variance.array, whole.variance.array)
        self.assertEqual(tiled.mask, whole.mask)
        np.testing.assert_array_equal(tiled.mask.get("BAD"), no_good)
        self.assertEqual([(box.y.size, box.x.size) for box in handles[0].reads],
                         [(5, 24), (5, 24), (5, 16)] * 4 + [(4, 24), (4, 24), (4, 16)])

    def test_band_rows_is_deprecated_and_sets_the_tile_height(self):
        handles = self.sim.handles()
        with self.assertWarnsRegex(FutureWarning, "bandRows is deprecated: bandRows is subregionSize's "
                                                  "height, cp_pipe's name"):
            task = _task(bandRows=7)
        flat = task.run(handles, self.sim.camera, DETECTOR, self.sim.scales()).outputData
        self.assertEqual([(box.y.size, box.x.size) for box in handles[0].reads],
                         [(7, 64), (7, 64), (7, 64), (3, 64)])
        np.testing.assert_array_equal(flat.image.array, self.run_task().image.array)

    def test_variance_is_propagated_through_the_scales(self):
        flat = self.run_task(nIter=0, **PROPAGATED)
        expected = sum(image.variance.array.astype(float) / self.sim.lamps[exp] ** 2
                       for exp, image in self.sim.images.items()) / len(self.sim.images) ** 2
        self.assertFloatsAlmostEqual(flat.variance.array, expected, rtol=1e-6)
        mean = self.sim.scaled(self.sim.lamps).mean(axis=0)
        self.assertFloatsAlmostEqual(flat.image.array, mean, rtol=1e-6)
        self.assertEqual(flat.metadata["CP_COMBINE_VARIANCE"], "INPUTS")

    def test_variance_from_spread_with_many_inputs(self):
        """cp_pipe's default: from maxVisitsToCalcErrorFromInputVariance (5) inputs on, the variance is
        the unbiased sample variance of the scaled inputs over their number."""
        scaled = self.sim.scaled(self.sim.lamps)
        flat = self.run_task(combine="MEAN")
        self.assertFloatsAlmostEqual(flat.variance.array, np.var(scaled, axis=0, ddof=1) / 8, rtol=1e-5)
        self.assertEqual(flat.metadata["CP_COMBINE_VARIANCE"], "SPREAD")
        propagated = self.run_task(combine="MEAN", maxVisitsToCalcErrorFromInputVariance=9)
        self.assertEqual(propagated.metadata["CP_COMBINE_VARIANCE"], "INPUTS")
        reference = self.run_task(nIter=0, **PROPAGATED)
        self.assertFloatsAlmostEqual(propagated.variance.array, reference.variance.array, rtol=1e-6)

    def test_outlier_is_clipped(self):
        self.sim.images[103].image.array[4, 7] *= 3.0
        flat = self.run_task()
        others = [exp for exp in self.sim.images if exp != 103]
        expected = np.mean([self.sim.images[exp].image.array[4, 7] / self.sim.lamps[exp] for exp in others])
        self.assertAlmostEqual(flat.image.array[4, 7], expected, places=5)

    def test_combine_mean_and_median(self):
        self.sim.images[103].image.array[4, 7] *= 3.0
        scaled = self.sim.scaled(self.sim.lamps)
        mean, median = self.run_task(combine="MEAN"), self.run_task(combine="MEDIAN")
        self.assertFloatsAlmostEqual(mean.image.array, scaled.mean(axis=0), rtol=1e-6)
        self.assertFloatsAlmostEqual(median.image.array, np.median(scaled, axis=0), rtol=1e-6)
        self.assertEqual(median.metadata["CP_COMBINE_N_MEDIAN"], 24 * 64)

    def test_no_good_pixels_are_filled_with_the_median_and_masked(self):
        """cp_pipe's default: a pixel without a good input gets the median of the flat (variance: the
        median variance) and the noGoodPixelsMask plane (BAD); every other plane is censored."""
        for exp, image in self.sim.images.items():
            image.mask.set("BAD", np.zeros(self.sim.box.shape, bool) | (np.arange(64) == 9)[np.newaxis])
            if exp not in (100, 101):
                image.mask.set("SAT", np.isin(np.arange(24), [2])[:, np.newaxis] & (np.arange(64) == 20))
        task = _task(**PROPAGATED)
        with self.assertLogs(task.log.name, level="WARNING") as logs:
            flat = task.run(self.sim.handles(), self.sim.camera, DETECTOR, self.sim.scales()).outputData
        column = np.zeros(self.sim.box.shape, bool)
        column[:, 9] = True
        np.testing.assert_array_equal(flat.mask.get("BAD"), column)
        image, variance = flat.image.array, flat.variance.array
        self.assertTrue(np.all(image[column] == np.median(image[~column])))
        self.assertTrue(np.all(variance[column] == np.median(variance[~column])))
        self.assertEqual(flat.metadata["CP_COMBINE_N_NO_GOOD"], 24)
        self.assertEqual(flat.metadata["CP_COMBINE_N_MEDIAN"], 1)
        self.assertEqual(flat.metadata["LSST CALIB FLAT C11 BADPIX-NUM"], 12)
        self.assertEqual(flat.metadata["LSST CALIB FLAT C06 BADPIX-NUM"], 12)
        self.assertEqual(flat.metadata["LSST CALIB FLAT C10 BADPIX-NUM"], 0)
        self.assertIn("Detector 0: filled 24 NaN pixels with the median and flagged them BAD.",
                      logs.output[0])
        found = [line for line in logs.output if "Found 12 pixels with mask plane BAD in amplifier" in line]
        self.assertEqual([line.split()[-1] for line in found], ["C11.", "C06."])
        # Only exposures 100 and 101 are valid at (2, 20): their median is their mean.
        scaled = [self.sim.images[exp] for exp in (100, 101)]
        lamps = [self.sim.lamps[exp] for exp in (100, 101)]
        self.assertAlmostEqual(flat.image.array[2, 20],
                               np.mean([im.image.array[2, 20] / lamp for im, lamp in zip(scaled, lamps)]),
                               places=5)
        self.assertAlmostEqual(flat.variance.array[2, 20],
                               sum(im.variance.array[2, 20] / lamp**2 for im, lamp in zip(scaled, lamps)) / 4,
                               places=8)
        self.assertEqual(list(flat.mask.schema.names), ["BAD", "SAT", "CR", "NO_DATA", "PARTLY_VIGNETTED"])
        self.assertFalse(flat.mask.get("SAT").any())

    def test_no_good_pixels_mask_plane_is_configurable(self):
        for image in self.sim.images.values():
            image.mask.set("BAD", np.zeros(self.sim.box.shape, bool) | (np.arange(64) == 9)[np.newaxis])
        flat = self.run_task(noGoodPixelsMask="SUSPECT")
        self.assertEqual(list(flat.mask.schema.names),
                         ["BAD", "SAT", "CR", "NO_DATA", "SUSPECT", "PARTLY_VIGNETTED"])
        np.testing.assert_array_equal(np.flatnonzero(flat.mask.get("SUSPECT").any(axis=0)), [9])
        self.assertEqual(flat.mask.get("SUSPECT").sum(), 24)
        self.assertFalse(flat.mask.get("BAD").any())

    def _set_no_data(self):
        """NO_DATA on (3, 4) in exposures 101 and 104, and on (5, 6) in exposure 104."""
        pixels = {101: [(3, 4)], 104: [(3, 4), (5, 6)]}
        for exp, points in pixels.items():
            flags = np.zeros(self.sim.box.shape, bool)
            flags[tuple(np.transpose(points))] = True
            self.sim.images[exp].mask.set("NO_DATA", flags)
        return pixels

    def test_check_no_data_raises_naming_the_inputs(self):
        self._set_no_data()
        with self.assertRaisesRegex(RuntimeError, (
            r"^The combined flat of detector 0 has 2 NO_DATA pixels, carried from input pixels that NO_DATA "
            r"does not exclude \(pixels per exposure: \{101: 1, 104: 2\}\); add NO_DATA to the 'mask' "
            r"config to ignore them, or set checkNoData=False to keep them\.$"
        )):
            self.run_task(mask=["SAT"])

    def test_no_data_kept_without_check_and_censoring(self):
        self._set_no_data()
        expected = np.zeros(self.sim.box.shape, bool)
        expected[3, 4] = expected[5, 6] = True
        kept = self.run_task(mask=["SAT"], checkNoData=False, censorMaskPlanes=False)
        np.testing.assert_array_equal(kept.mask.get("NO_DATA"), expected)
        censored = self.run_task(mask=["SAT"], checkNoData=False)
        self.assertFalse(censored.mask.get("NO_DATA").any())
        # With NO_DATA ignored (this package's default mask), those input pixels are left out instead.
        ignored = self.run_task(nIter=0, **PROPAGATED)
        others = [exp for exp in self.sim.images if exp != 104]
        expected = np.mean([self.sim.images[e].image.array[5, 6] / self.sim.lamps[e] for e in others])
        self.assertAlmostEqual(ignored.image.array[5, 6], expected, places=5)

    def test_censor_mask_planes(self):
        """Without censoring the flat carries the OR of the masks of the input pixels it used (CR, which
        is not ignored); ignored input pixels (SAT) carry nothing."""
        self.sim.images[102].mask.set("CR", np.arange(24 * 64).reshape(24, 64) == 7 * 64 + 30)
        self.sim.images[100].mask.set("SAT", np.arange(24 * 64).reshape(24, 64) == 65)
        kept = self.run_task(censorMaskPlanes=False)
        np.testing.assert_array_equal(np.argwhere(kept.mask.get("CR")), [[7, 30]])
        self.assertFalse(kept.mask.get("SAT").any())
        censored = self.run_task()
        self.assertFalse(censored.mask.get("CR").any())

    def test_flat_source(self):
        self.assertEqual(self.run_task().metadata["FLATSRC"], "DOME")
        self.assertEqual(self.run_task(flatSource="TWILIGHT").metadata["FLATSRC"], "TWILIGHT")
        bias = self.run_task(calibrationType="bias")
        self.assertNotIn("FLATSRC", bias.metadata)
        self.assertEqual(bias.metadata["OBSTYPE"], "bias")
        self.assertIn("LSST CALIB BIAS C10 DISTRIBUTION 50.0-PCT", bias.metadata)

    def test_exposure_and_dark_time_scaling(self):
        for scaling, field in (("ExposureTime", "exposure_time"), ("DarkTime", "dark_time")):
            with self.subTest(scaling=scaling):
                times = {exp: getattr(record, field) for exp, record in self.sim.records.items()}
                flat = self.run_task(exposureScaling=scaling, combine="MEAN")
                self.assertFloatsAlmostEqual(flat.image.array, self.sim.scaled(times).mean(axis=0), rtol=1e-6)
                self.assertEqual([flat.metadata[f"CP_COMBINE_SCALE_{i}"] for i in range(8)],
                                 list(times.values()))

    def test_time_scaling_needs_exposure_records(self):
        with self.assertRaisesRegex(ValueError, (
            r"^exposureScaling DarkTime needs the exposure record of exposure 100, but its data ID "
            r"\{instrument: 'DummyCam', detector: 0, exposure: 100\} has none "
            r"\(pass expanded data IDs\)\.$"
        )):
            self.run_task(handles=self.sim.handles(records=False), exposureScaling="DarkTime")

    def test_zero_exposure_time_is_skipped(self):
        self.sim.records[103].exposure_time = 0.0
        task = _task(exposureScaling="ExposureTime")
        with self.assertLogs(task.log.name, level="WARNING") as logs:
            flat = task.run(self.sim.handles(), self.sim.camera, DETECTOR).outputData
        self.assertIn("Exposure 103 has no usable scale for detector 0; it is not combined.", logs.output[0])
        self.assertEqual(flat.metadata["CP_COMBINE_SKIPPED_EXPOSURES"], "103")

    def test_mean_stats_scaling(self):
        """Each input is divided by its own level: the statistic of ``stats.stat`` over the pixels
        outside ``stats.mask`` (a BAD pixel at 1e6 must not count)."""
        for image in self.sim.images.values():
            image.image.array[0, 0] = 1e6
            image.mask.set("BAD", np.arange(24 * 64).reshape(24, 64) == 0)
        good = np.ones(self.sim.box.shape, bool)
        good[0, 0] = False
        levels = {
            "MEAN": {exp: np.mean(im.image.array[good], dtype=float) for exp, im in self.sim.images.items()},
            "MEDIAN": {exp: np.median(im.image.array[good]) for exp, im in self.sim.images.items()},
            "MEANCLIP": {exp: sigma_clipped_region_stats(im.image.array, good, [], 2.5, 4).whole_mean
                         for exp, im in self.sim.images.items()},
        }
        for stat, level in levels.items():
            with self.subTest(stat=stat):
                config = _config()
                config.exposureScaling = "MeanStats"
                config.combine = "MEAN"
                config.stats.stat, config.stats.clip, config.stats.nIter = stat, 2.5, 4
                handles = self.sim.handles()
                flat = CpFlatCombineTask(config=config).run(handles, self.sim.camera, DETECTOR).outputData
                for i, value in enumerate(level.values()):
                    self.assertFloatsAlmostEqual(flat.metadata[f"CP_COMBINE_SCALE_{i}"], value, rtol=1e-12)
                expected = self.sim.scaled(level).mean(axis=0)
                self.assertFloatsAlmostEqual(flat.image.array[good], expected[good], rtol=1e-6)
                self.assertEqual(handles[0].reads[0], None)  # one whole read for the level
        # MEANCLIP differs from the mean: the flat has a gradient, so clipping at 2.5 sigma drops pixels.
        self.assertNotEqual(levels["MEANCLIP"][100], levels["MEAN"][100])

    def test_distribution_percentiles(self):
        flat = self.run_task(distributionPercentiles=[10, 90])
        for amp in self.sim.detector:
            pixels = flat.image.array[self.sim.amp_slices(amp.getName())]
            for level in (10.0, 90.0):
                self.assertEqual(flat.metadata[f"LSST CALIB FLAT {amp.getName()} DISTRIBUTION {level}-PCT"],
                                 np.percentile(pixels, level))
        self.assertNotIn("LSST CALIB FLAT C10 DISTRIBUTION 50.0-PCT", flat.metadata)
        default = self.run_task()
        keys = sorted(key for key in default.metadata if key.startswith("LSST CALIB FLAT C00 DIST"))
        self.assertEqual(keys, sorted(f"LSST CALIB FLAT C00 DISTRIBUTION {level}-PCT"
                                      for level in (0.0, 5.0, 16.0, 50.0, 84.0, 95.0, 100.0)))

    def test_ignored_mask_planes_are_configurable(self):
        self.sim.images[100].mask.set("CR", np.ones(self.sim.box.shape, bool))
        self.sim.images[100].image.array[...] = 0.0
        default = self.run_task(**PROPAGATED)
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
        self.assertEqual(metadata["FLATSRC"], "DOME")
        self.assertEqual(metadata["DETECTOR"], DETECTOR)
        self.assertEqual(metadata["CP_COMBINE_STAT"], "MEANCLIP")
        self.assertEqual(metadata["CP_COMBINE_CLIP"], 2.5)
        self.assertEqual(metadata["CP_COMBINE_N_ITER"], 4)
        self.assertEqual(metadata["CP_COMBINE_MASK_PLANES"], "BAD,SAT,NO_DATA,DETECTED")
        self.assertEqual(metadata["CP_COMBINE_EXPOSURE_SCALING"], "InputList")
        self.assertEqual(metadata["CP_COMBINE_SKIPPED_EXPOSURES"], "")
        self.assertEqual(metadata["CP_COMBINE_N_VIGNETTED"], 0)
        self.assertEqual(metadata["CP_COMBINE_N_PARTLY_VIGNETTED"], 0)
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


class NotPositivePixelsTestCase(lsst.utils.tests.TestCase):
    """A flat pixel that is not finite and positive never leaves the combine unmasked: a dead
    amplifier's zeros (kept by cp_pipe's layout, omitUnusedScales=False) are masked BAD, counted in
    the metadata and logged."""

    def setUp(self):
        self.sim = FlatSimulation()
        self.dead = list(self.sim.detector)[3].getName()
        for image in self.sim.images.values():
            image.image.array[self.sim.amp_slices(self.dead)] = 0.0
            image.image.array[20, 50] = -5.0  # a pixel below zero in every input

    def run_task(self, **overrides):
        task = _task(**overrides)
        with self.assertLogs(task.log.name, level="WARNING") as logs:
            flat = task.run(self.sim.handles(), self.sim.camera, DETECTOR, self.sim.scales()).outputData
        return flat, logs.output, task.log.name

    def expected(self):
        pixels = np.zeros(self.sim.box.shape, bool)
        pixels[self.sim.amp_slices(self.dead)] = True
        pixels[20, 50] = True
        return pixels

    def test_dead_amplifier_is_masked_counted_and_logged(self):
        flat, logs, name = self.run_task()
        pixels = self.expected()
        self.assertTrue(np.all(flat.image.array[pixels] <= 0))
        np.testing.assert_array_equal(flat.mask.get("BAD"), pixels)
        self.assertEqual(flat.metadata["CP_COMBINE_N_NOT_POSITIVE"], 97)
        self.assertEqual(flat.metadata[f"LSST CALIB FLAT {self.dead} BADPIX-NUM"], 96)
        amp_of_pixel = _amp_of(self.sim.detector, 20, 50)
        self.assertIn(f"WARNING:{name}:Detector 0: 97 pixels of the flat are not finite and positive "
                      f"({self.dead}: 96, {amp_of_pixel}: 1); masked BAD, so that flat-fielding never "
                      "divides by them.", logs)
        unmasked = flat.mask.array.any(axis=-1) == 0
        self.assertTrue(np.all(np.isfinite(flat.image.array[unmasked]) & (flat.image.array[unmasked] > 0)))

    def test_plane_is_no_good_pixels_mask(self):
        flat, _, _ = self.run_task(noGoodPixelsMask="SAT")
        np.testing.assert_array_equal(flat.mask.get("SAT"), self.expected())
        self.assertFalse(flat.mask.get("BAD").any())

    def test_vignetted_zeros_are_not_counted(self):
        vignette = VignetteTestCase()
        vignette.setUp()
        vignette.sim = self.sim
        vignetted = vignette.outside_square(0.25)
        flat = vignette.run_task(doVignetteMask=True)
        expected = self.expected() & ~vignetted
        self.assertTrue(0 < expected.sum() < self.expected().sum())
        self.assertEqual(flat.metadata["CP_COMBINE_N_NOT_POSITIVE"], int(expected.sum()))
        np.testing.assert_array_equal(flat.mask.get("BAD"), expected)
        np.testing.assert_array_equal(flat.mask.get("NO_DATA"), vignetted)

    def test_clean_flat_counts_none(self):
        clean = FlatSimulation()
        flat = _task().run(clean.handles(), clean.camera, DETECTOR, clean.scales()).outputData
        self.assertEqual(flat.metadata["CP_COMBINE_N_NOT_POSITIVE"], 0)


class BadScalesAndConfigTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self.sim = FlatSimulation()

    def test_scales_without_exposure_scales_are_named(self):
        task = _task()
        with self.assertRaises(ScaleDictionaryError) as cm:
            task.run(self.sim.handles(), self.sim.camera, DETECTOR, {"detScale": {DETECTOR: 1.0}})
        self.assertEqual(str(cm.exception), (
            "The scales of inputScales (detector 0) have no 'expScale' entry (their keys: ['detScale']), so "
            "no exposure can be scaled; they are not the normalization's output."))

    def test_config_ranges_are_stated(self):
        for field, value, allowed in (
            ("clip", 0.0, "RangeField 'clip' failed validation: 0.0 is outside of valid range (0.0,inf)"),
            ("nIter", -1, "RangeField 'nIter' failed validation: -1 is outside of valid range [0,inf)"),
            ("minInputsForClip", 0,
             "RangeField 'minInputsForClip' failed validation: 0 is outside of valid range [1,inf)"),
            ("bandRows", 0, "RangeField 'bandRows' failed validation: 0 is outside of valid range [1,inf)"),
            ("maxVisitsToCalcErrorFromInputVariance", -1,
             "RangeField 'maxVisitsToCalcErrorFromInputVariance' failed validation: -1 is outside of valid "
             "range [0,inf)"),
        ):
            config = CpFlatCombineConfig()
            with self.subTest(field=field), self.assertRaises(pexConfig.FieldValidationError) as cm:
                setattr(config, field, value)
            self.assertIn(allowed, str(cm.exception))
        for field, value, allowed in (
            ("clip", -1.0, "RangeField 'stats.clip' failed validation: -1.0 is outside of valid range "
             "(0.0,inf)"),
            ("nIter", -2, "RangeField 'stats.nIter' failed validation: -2 is outside of valid range [0,inf)"),
        ):
            config = CpFlatCombineConfig()
            with (self.subTest(field=f"stats.{field}"),
                  self.assertRaises(pexConfig.FieldValidationError) as cm):
                setattr(config.stats, field, value)
            self.assertIn(allowed, str(cm.exception))

    def test_list_ranges_are_stated(self):
        for field, value, message in (
            ("subregionSize", [0, 200], "ListField 'subregionSize' failed validation: every item must be in "
             "[1,inf); got [0, 200]"),
            ("distributionPercentiles", [5.0, 101.0],
             "ListField 'distributionPercentiles' failed validation: every item must be in [0.0,100.0]; got "
             "[5.0, 101.0]"),
        ):
            config = _config()
            with self.subTest(field=field), self.assertRaises(pexConfig.FieldValidationError) as cm:
                setattr(config, field, value)
                config.validate()
            self.assertIn(message, str(cm.exception))


class VignetteTestCase(lsst.utils.tests.TestCase):
    """doVignette, doVignetteMask and doPartialVignetteMask on a detector placed off-centre and turned
    by 30 degrees, with a square (numPolygonPoints = 4) region whose truth is analytic."""

    CENTRE = (1.0, -0.5)  # the detector's centre, mm

    def setUp(self):
        self.sim = FlatSimulation()
        placement = {"focal_plane_x": 1.0, "focal_plane_y": -0.5, "yaw": 30.0}
        detector = self.sim.detector.model_copy(update=placement)
        self.camera = CameraModel(name="Turned", detectors=[detector])
        # Focal-plane position of each pixel centre, written out here rather than taken from the code.
        y, x = np.mgrid[0:24, 0:64]
        dx, dy = (x - 31.5) * 0.01, (y - 11.5) * 0.01
        cos, sin = np.cos(np.radians(30.0)), np.sin(np.radians(30.0))
        self.fp_x, self.fp_y = 1.0 + cos * dx - sin * dy, -0.5 + sin * dx + cos * dy

    def outside_square(self, radius, centre=CENTRE):
        """Pixels outside the square with vertices ``radius`` from ``centre`` along the axes."""
        return np.abs(self.fp_x - centre[0]) + np.abs(self.fp_y - centre[1]) > radius

    def run_task(self, centre=CENTRE, **overrides):
        config = _config(**overrides)
        for region, radius in (("vignette", 0.25), ("partialVignette", 0.2)):
            getattr(config, region).xCenter, getattr(config, region).yCenter = centre
            getattr(config, region).radius = radius
            getattr(config, region).numPolygonPoints = 4
        task = CpFlatCombineTask(config=config)
        return task.run(self.sim.handles(), self.camera, DETECTOR, self.sim.scales()).outputData

    def test_vignette_mask(self):
        vignetted = self.outside_square(0.25)
        self.assertEqual(vignetted.sum(), 658)  # the square cuts the detector
        plain = self.run_task()
        flat = self.run_task(doVignetteMask=True)
        np.testing.assert_array_equal(flat.mask.get("NO_DATA"), vignetted)
        np.testing.assert_array_equal(flat.mask.get("VIGNETTED"), vignetted)
        self.assertTrue(np.all(flat.image.array[vignetted] == 0.0))
        np.testing.assert_array_equal(flat.image.array[~vignetted], plain.image.array[~vignetted])
        self.assertEqual(flat.metadata["CP_COMBINE_N_VIGNETTED"], 658)
        self.assertFalse(flat.mask.get("PARTLY_VIGNETTED").any())

    def test_do_vignette_marks_no_data_only(self):
        vignetted = self.outside_square(0.25)
        flat = self.run_task(doVignette=True)
        np.testing.assert_array_equal(flat.mask.get("NO_DATA"), vignetted)
        self.assertNotIn("VIGNETTED", flat.mask.schema.names)
        self.assertTrue(np.all(flat.image.array[vignetted] == 0.0))

    def test_partly_vignetted_ring(self):
        vignetted, partly = self.outside_square(0.25), self.outside_square(0.2)
        ring = partly & ~vignetted
        self.assertEqual(ring.sum(), 190)
        plain = self.run_task()
        flat = self.run_task(doVignetteMask=True, doPartialVignetteMask=True)
        np.testing.assert_array_equal(flat.mask.get("PARTLY_VIGNETTED"), partly)
        self.assertFalse(flat.mask.get("NO_DATA")[ring].any())
        np.testing.assert_array_equal(flat.image.array[ring], plain.image.array[ring])
        self.assertEqual(flat.metadata["CP_COMBINE_N_PARTLY_VIGNETTED"], int(partly.sum()))

    def test_median_fill_leaves_out_the_vignetted_region(self):
        for image in self.sim.images.values():
            image.mask.set("BAD", np.zeros(self.sim.box.shape, bool) | (np.arange(64) == 30)[np.newaxis])
        vignetted = self.outside_square(0.25)
        column = np.zeros(vignetted.shape, bool)
        column[:, 30] = True
        plain = self.run_task()
        flat = self.run_task(doVignetteMask=True)
        fill = np.median(plain.image.array[~column & ~vignetted])
        self.assertNotEqual(fill, np.median(plain.image.array[~column]))
        self.assertTrue(np.all(flat.image.array[column & ~vignetted] == fill))
        np.testing.assert_array_equal(flat.mask.get("BAD"), column)

    def test_detector_outside_the_region_is_all_vignetted(self):
        """cp_pipe masks nothing on a detector that misses the region entirely (no valid polygon);
        here every pixel is vignetted."""
        flat = self.run_task(centre=(50.0, -0.5), doVignetteMask=True)
        self.assertTrue(flat.mask.get("VIGNETTED").all())
        self.assertEqual(flat.metadata["CP_COMBINE_N_VIGNETTED"], 24 * 64)
        self.assertTrue(np.all(flat.image.array == 0.0))

    def test_circle_is_cp_pipes_inscribed_polygon(self):
        config = _config()
        config.doVignetteMask = True
        config.vignette.xCenter, config.vignette.yCenter, config.vignette.radius = 1.0, -0.5, 0.25
        flat = CpFlatCombineTask(config=config).run(self.sim.handles(), self.camera, DETECTOR,
                                                    self.sim.scales()).outputData
        distance = np.hypot(self.fp_x - 1.0, self.fp_y + 0.5)
        vignetted = flat.mask.get("VIGNETTED")
        self.assertTrue(vignetted[distance > 0.25].all())
        self.assertFalse(vignetted[distance < 0.25 * np.cos(np.pi / 100)].any())

    def test_validation(self):
        for overrides, message in (
            ({"doVignette": True, "doVignetteMask": True}, "Cannot set both doVignetteMask and doVignette."),
            ({"doVignetteMask": True, "calibrationType": "bias"},
             "doVignetteMask needs calibrationType 'flat'; it is 'bias'."),
            ({"doPartialVignetteMask": True, "calibrationType": "sky"},
             "doPartialVignetteMask needs calibrationType 'flat'; it is 'sky'."),
        ):
            config = _config(**overrides)
            with self.subTest(overrides=overrides), self.assertRaises(ValueError) as error:
                config.validate()
            self.assertEqual(str(error.exception), message)


class AmpLevelTestCase(lsst.utils.tests.TestCase):
    """scalingLevel AMP divides each amplifier by its own scale."""

    def setUp(self):
        self.sim = FlatSimulation(amp_gain=True)
        self.task = _task(scalingLevel="AMP", **PROPAGATED)

    def test_amp_scales_remove_amp_gains(self):
        flat = self.task.run(self.sim.handles(), self.sim.camera, DETECTOR,
                             self.sim.scales(per_amp=True)).outputData
        chi = _chi(flat, self.sim.response)
        self.assertLess(abs(chi.mean()), 0.1)
        self.assertLess(np.mean(chi**2), 1.3)
        self.assertEqual(flat.metadata["CP_COMBINE_SCALE_0_C10"], self.sim.lamps[100] * 0.9)

    def test_afw_camera_gives_the_same_flat(self):
        # The stand-in has afw's method names only: boxes without getMaxX, detectors without
        # pixel_to_focal_plane; the vignetting places the detector through its orientation.
        config = self.task.config
        config.doVignetteMask, config.vignette.radius, config.vignette.xCenter = True, 0.5, -0.3
        task = CpFlatCombineTask(config=config)
        afw_camera = load_afw_standin().camera_from_model(self.sim.camera)
        scales = self.sim.scales(per_amp=True)
        flat = task.run(self.sim.handles(), afw_camera, DETECTOR, scales).outputData
        reference = task.run(self.sim.handles(), self.sim.camera, DETECTOR, scales).outputData
        self.assertGreater(flat.mask.get("VIGNETTED").sum(), 0)
        for plane in ("image", "variance", "mask"):
            np.testing.assert_array_equal(getattr(flat, plane).array, getattr(reference, plane).array)

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
    """The task on a file-datastore repo: quantum I/O, tile reads, YAML scales, exposure records,
    certification."""

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
            DatasetType("cpFlatIsrExp", ("instrument", "exposure", "detector"), "MaskedImageV2",
                        universe=butler.dimensions),
            DatasetType("cpFlatNormalizeScales", ("instrument", "physical_filter"), "StructuredDataDict",
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
        butler.put(sim.scales(), "cpFlatNormalizeScales", instrument=INSTRUMENT, physical_filter=FILTER)
        for exposure, image in sim.images.items():
            butler.put(image, "cpFlatIsrExp", instrument=INSTRUMENT, exposure=exposure, detector=DETECTOR)

    def _run_quantum(self, task, butler):
        # The calibration file template names detector.full_name: the output needs a data ID with records.
        expand = butler.registry.expandDataId
        data_id = expand(instrument=INSTRUMENT, detector=DETECTOR, physical_filter=FILTER)
        # Expanded input data IDs, as a quantum graph has them (ExposureTime reads their records).
        io = {
            "inputExpHandles": [expand(instrument=INSTRUMENT, exposure=e, detector=DETECTOR)
                                for e in self.sim.lamps],
            "camera": {"instrument": INSTRUMENT},
            "outputData": data_id,
        }
        if task.config.exposureScaling == "InputList":
            io["inputScales"] = {"instrument": INSTRUMENT, "physical_filter": FILTER}
        quantum = lsst.pipe.base.testUtils.makeQuantum(task, butler, data_id, io)
        lsst.pipe.base.testUtils.runTestQuantum(task, butler, quantum, mockRun=False)
        return butler.get("flat", data_id)

    def test_scales_keys_after_yaml_round_trip(self):
        scales = self.butler.get("cpFlatNormalizeScales", instrument=INSTRUMENT, physical_filter=FILTER)
        self.assertEqual(list(scales["expScale"]), [DETECTOR])
        self.assertEqual(list(scales["expScale"][DETECTOR]["C10"]), list(self.sim.lamps))

    def test_exposure_time_from_the_registry(self):
        """Every exposure of the registry has exposure_time 10 s: the flat is the mean image / 10."""
        task = _task(exposureScaling="ExposureTime", combine="MEAN")
        with Butler.from_config(self.root.name, run="test/exposure_time", writeable=True) as butler:
            self._put_inputs(butler, self.sim)
            flat = self._run_quantum(task, butler)
        self.assertEqual([flat.metadata[f"CP_COMBINE_SCALE_{i}"] for i in range(5)], [10.0] * 5)
        self.assertFloatsAlmostEqual(flat.image.array, self.sim.scaled(dict.fromkeys(self.sim.lamps, 10.0))
                                     .mean(axis=0), rtol=1e-6)

    def test_scales_without_exposure_scales_name_the_dataset(self):
        """Through runQuantum the message names the scales' dataset type and data ID, and nothing is
        written."""
        task = _task()
        with Butler.from_config(self.root.name, run="test/bad_scales", writeable=True) as butler:
            butler.put(self.sim.camera, "camera", instrument=INSTRUMENT)
            butler.put({"detScale": {DETECTOR: 1.0}}, "cpFlatNormalizeScales", instrument=INSTRUMENT,
                       physical_filter=FILTER)
            for exposure, image in self.sim.images.items():
                butler.put(image, "cpFlatIsrExp", instrument=INSTRUMENT, exposure=exposure, detector=DETECTOR)
            with self.assertRaises(ScaleDictionaryError) as cm:
                self._run_quantum(task, butler)
            # makeQuantum registers the output; its file is never written.
            refs = butler.query_datasets("flat", collections="test/bad_scales", explain=False)
            self.assertEqual([butler.stored(ref) for ref in refs], [False])
        self.assertEqual(str(cm.exception), (
            f"The scales of cpFlatNormalizeScales {{instrument: '{INSTRUMENT}', physical_filter: '{FILTER}', "
            "band: 'r'} "
            "have no 'expScale' entry (their keys: ['detScale']), so no exposure can be scaled; they are not "
            "the normalization's output."))

    def test_quantum_output_certify_and_read_back(self):
        task = _task(subregionSize=[64, 7], **PROPAGATED)
        flat = self._run_quantum(task, self.butler)
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


class DefaultsTestCase(lsst.utils.tests.TestCase):
    def test_cp_pipe_defaults(self):
        """cp_pipe's CalibCombineByFilterConfig defaults; the package's pipeline sets PIPELINE_VALUES."""
        config = CpFlatCombineConfig()
        self.assertEqual(
            {name: getattr(config, name) for name in (
                "calibrationType", "exposureScaling", "scalingLevel", "maxVisitsToCalcErrorFromInputVariance",
                "doVignette", "doVignetteMask", "doPartialVignetteMask", "combine", "clip", "nIter",
                "noGoodPixelsMask", "checkNoData", "censorMaskPlanes", "flatSource")},
            {"calibrationType": "calibration", "exposureScaling": "Unity", "scalingLevel": "DETECTOR",
             "maxVisitsToCalcErrorFromInputVariance": 5, "doVignette": False, "doVignetteMask": False,
             "doPartialVignetteMask": False, "combine": "MEANCLIP", "clip": 3.0, "nIter": 3,
             "noGoodPixelsMask": "BAD", "checkNoData": True, "censorMaskPlanes": True, "flatSource": "DOME"},
        )
        self.assertEqual(list(config.mask), ["SAT", "DETECTED", "INTRP"])
        self.assertEqual(list(config.subregionSize), [10000, 200])
        self.assertEqual(list(config.distributionPercentiles), [0, 5, 16, 50, 84, 95, 100])
        self.assertEqual((config.vignette.xCenter, config.vignette.yCenter, config.vignette.radius,
                          config.vignette.numPolygonPoints), (0.0, 0.0, 100.0, 100))
        self.assertEqual((config.stats.stat, config.stats.clip, config.stats.nIter, list(config.stats.mask)),
                         ("MEANCLIP", 3.0, 3, ["DETECTED", "BAD", "NO_DATA"]))
        self.assertNotIn("inputScales", config.ConnectionsClass(config=config).inputs)

    def test_default_is_unscaled_and_keeps_defects(self):
        sim = FlatSimulation()
        defect = np.zeros(sim.box.shape, bool)
        defect[:, 7] = True
        for image in sim.images.values():
            image.mask.set("BAD", defect)
            image.image.array[defect] *= 0.5
        flat = CpFlatCombineTask().run(sim.handles(), sim.camera, DETECTOR).outputData
        mean = np.mean([image.image.array for image in sim.images.values()], axis=0)
        self.assertFloatsAlmostEqual(flat.image.array[defect], mean[defect], rtol=1e-5)
        self.assertEqual(flat.metadata["OBSTYPE"], "calibration")
        self.assertNotIn("FLATSRC", flat.metadata)
        # Censoring keeps the noGoodPixelsMask plane, BAD, which the inputs carried in.
        np.testing.assert_array_equal(flat.mask.get("BAD"), defect)


class CameraStorageClassTestCase(lsst.utils.tests.TestCase):
    def test_camera_connection_storage_class(self):
        config = CpFlatCombineConfig()
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
