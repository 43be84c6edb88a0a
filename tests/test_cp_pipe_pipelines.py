# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""cp_pipe's flat pipelines, shipped as pipelines/<Instrument>/*.yaml, run with ``pipetask run``.

Each pipeline is cp_pipe's (snapshot of 2026-06) configured as cp_pipe configures it, without the
ISR and visualization steps (LSSTCam's cpFlat keeps its visualization steps, which
tests/test_gradient_pipelines.py runs).  Each runs on a small simulated repository whose instrument
has the pipeline's instrument name, and each test checks that an override changes the output as it does
in cp_pipe.  LSSTCam's cpFlat and cpFlatAnaglyph run here without their gradient steps, whose
focal-plane fit needs more of a focal plane than these repositories have (the anaglyph's two-flat
step then combines ``flat_blue_uncorrected`` and ``flat_red_uncorrected``);
tests/test_gradient_pipelines.py runs them whole, and the gradient-reference pipeline, on an
LSSTCam-sized simulated camera.
"""

import shutil
import tempfile
import unittest
from pathlib import Path

import numpy as np
import pytest

import lsst.utils.tests
from lsst.cp.flatnorm.combine_stack import combine_stack
from lsst.cp.flatnorm.instrument import FlatInstrumentConfig, instrument_class
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig, FlatSimulator
from lsst.cp.flatnorm.sim.repo import build_sim_repo
from lsst.cp.flatnorm.sim.run import pipeline_uri
from lsst.daf.butler import Butler
from lsst.pipe.base import Pipeline
from check_methods import run_check_methods
from pipetask_in_process import pipetask

pytestmark = [pytest.mark.slow]

PIPELINE_FILES = ("LSSTCam/cpFlat.yaml", "LSSTCam/cpFlatAnaglyph.yaml", "LSSTCam/cpFlatSingleChip.yaml",
                  "LSSTCam/cpFlatGradientReference.yaml", "LSSTComCam/cpFlat.yaml", "HSC/cpFlat.yaml",
                  "DECam/cpFlat.yaml")
# cp_pipe's bps/templates/bps_flat_anaglyph_g.yaml: extraQgraphOptions and the band of its dataQuery.
ANAGLYPH_G = {"cpFlatBlueNormalize:downSelectionValue": "single_led_flat_m455l4",
              "cpFlatRedNormalize:downSelectionValue": "single_led_flat_m505l4",
              "cpFlatRedBlueCombine:weightOne": "0.630"}
BLUE_WEIGHT = 0.630
# Pixels of 7 mm put the two wavefront detectors (32 x 4 pixels) beside a 32 x 8-pixel science
# detector across LSSTCam's vignetting radii (317 and 350 mm): their pixel centres lie 209 to 417 mm
# from the centre of the focal plane, the science detector's within 115 mm.
LSST_CAMERA = {"n_side": 1, "amp_width": 4, "amp_height": 4, "n_wavefront": 2, "pixel_size": 7.0}
# ip_isr's 100-gon inscribed in a circle of radius R reaches in to R cos(pi / 100).
POLYGON_INSET = np.cos(np.pi / 100)


def flat_instrument(name, camera, filters):
    """A FlatInstrument named after the pipeline's instrument, with a small simulated camera."""
    config = FlatInstrumentConfig(name=name, camera="python:lsst.cp.flatnorm.sim.camera.make_sim_camera",
                                  filters=filters)
    return instrument_class(name)(config=config, camera=camera)


class MarkedSimulator(FlatSimulator):
    """A simulator that also sets mask planes on fixed pixels, as ISR or detection would.

    Parameters
    ----------
    camera, config
        As for `FlatSimulator`.
    marks : `list` [`tuple`]
        ``(plane, detector, (rows, columns), exposure indices or None for all)``.
    """

    def __init__(self, camera, config, marks=()):
        super().__init__(camera, config)
        self.marks = list(marks)

    def marked(self, plane, detector, exposure_id=None):
        """Pixels of ``plane`` this simulator adds to the detector's image of the exposure (any
        exposure if `None`)."""
        det = self.camera[detector]
        pixels = np.zeros((det.getBBox().getHeight(), det.getBBox().getWidth()), bool)
        indices = {exposure.id: i for i, exposure in enumerate(self.exposures)}
        for mark_plane, mark_detector, region, exposures in self.marks:
            if mark_plane == plane and mark_detector == detector and (
                    exposure_id is None or exposures is None or indices[exposure_id] in exposures):
                pixels[region] = True
        return pixels

    def make_image(self, exposure_id, detector):
        image = super().make_image(exposure_id, detector)
        for plane in {mark[0] for mark in self.marks}:
            marked = self.marked(plane, detector, exposure_id)
            if marked.any():
                image.mask.set(plane, marked | image.mask.get(plane))
        return image


def pixel_radii(detector):
    """Distance (mm) of every pixel centre of an unrotated detector from the focal-plane centre."""
    box = detector.getBBox()
    y, x = np.mgrid[0:box.getHeight(), 0:box.getWidth()]
    fp_x = detector.focal_plane_x + (x - (box.getWidth() - 1) / 2) * detector.pixel_size
    fp_y = detector.focal_plane_y + (y - (box.getHeight() - 1) / 2) * detector.pixel_size
    return np.hypot(fp_x, fp_y)


def clipped_mean(values, n_sigma=3.0, n_iter=3):
    """Iteratively clipped mean: population sigma, dropped pixels never return."""
    kept = np.asarray(values, dtype=float)
    for _ in range(n_iter):
        mean, sigma = kept.mean(), kept.std()
        keep = np.abs(kept - mean) <= n_sigma * sigma
        if keep.all():
            break
        kept = kept[keep]
    return kept.mean()


class PipelineRun:
    """Build a repository, run one shipped pipeline with ``pipetask run``, open the outputs (a mixin
    of the test cases below)."""

    PIPELINE = None
    """Path below pipelines/."""
    LABELS = None
    """The labels to run (a subset of the pipeline), or `None` for all."""
    INSTRUMENT = None
    FILTERS = {"r_57": "r"}
    CAMERA = {"n_side": 1, "amp_width": 4, "amp_height": 4, "n_wavefront": 1}
    SIM = {}
    MARKS = ()
    CONFIG = {}
    QUERY = None
    OUTPUT = "u/test/cpFlat"

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp()
        camera = make_sim_camera(name=cls.INSTRUMENT, **cls.CAMERA)
        physical_filter = next(iter(cls.FILTERS))
        config = FlatSimConfig(**{"n_exposures": 6, "dead_amplifier": None, "shadow": None,
                                  "saturation": None, "n_cosmic_rays": 0, "physical_filter": physical_filter,
                                  **cls.SIM})
        cls.simulator = MarkedSimulator(camera, config, cls.MARKS)
        cls.repo = build_sim_repo(Path(cls.root) / "repo", simulator=cls.simulator,
                                  instrument=flat_instrument(cls.INSTRUMENT, camera, cls.FILTERS))
        cls.camera = camera
        cls.process = cls.pipetask(cls.OUTPUT)
        cls.butler = Butler.from_config(str(cls.repo.root), collections=cls.OUTPUT)
        cls.data_id = {"instrument": cls.INSTRUMENT, "physical_filter": physical_filter}

    @classmethod
    def pipetask(cls, output, **config):
        """Run the pipeline's ``pipetask run`` command in this process (the pipetask program itself
        runs in tests/test_end_to_end.py)."""
        pipeline = pipeline_uri(*cls.PIPELINE.split("/")) + (f"#{cls.LABELS}" if cls.LABELS else "")
        args = ["--long-log", "run", "-b", str(cls.repo.root), "-i", cls.repo.defaults_collection,
                "-o", output, "-p", pipeline, "--register-dataset-types", "-j", "1"]
        for key, value in {**cls.CONFIG, **config}.items():
            args += ["--config", f"{key}={value}"]
        if cls.QUERY:
            args += ["-d", cls.QUERY]
        return pipetask(*args)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_pipeline(self):
        self.assertEqual(self.process.returncode, 0, self.process.stderr[-4000:])
        run_check_methods(self)

    def flat(self, detector, name="flat"):
        return self.butler.get(name, detector=detector, **self.data_id)

    def image(self, exposure, detector):
        return self.butler.get("cpFlatIsrExp", instrument=self.INSTRUMENT, exposure=exposure,
                               detector=detector, collections=self.repo.image_run)

    def dataset_type_names(self):
        return {dataset_type.name for dataset_type in self.butler.registry.queryDatasetTypes()}

    def exposure_ids(self):
        return [exposure.id for exposure in self.simulator.exposures]


class LSSTCamFlatTestCase(PipelineRun, lsst.utils.tests.TestCase):
    """cp_pipe's LSSTCam cpFlat up to its combine: the combine's vignetting masks (RFC-1120 and
    RFC-1125 radii).  The gradient steps that follow are tested in tests/test_gradient_pipelines.py."""

    PIPELINE = "LSSTCam/cpFlat.yaml"
    LABELS = "cpFlatMeasure,cpFlatNormalize,cpFlatCombine"
    INSTRUMENT = "LSSTCam"
    CAMERA = LSST_CAMERA

    def check_vignetted_pixels_masked_and_zeroed(self):
        totals = {"vignetted": 0, "ring": 0}
        for detector in self.camera:
            with self.subTest(detector=detector.getId()):
                flat = self.flat(detector.getId(), "flat_uncorrected")
                radius = pixel_radii(detector)
                # No pixel centre lies where the inscribed polygons and the circles disagree.
                for edge in (350.0, 317.0):
                    self.assertFalse(((radius > edge * POLYGON_INSET) & (radius <= edge)).any())
                vignetted, ring = radius > 350.0, (radius > 317.0) & (radius <= 350.0)
                np.testing.assert_array_equal(flat.mask.get("VIGNETTED"), vignetted)
                np.testing.assert_array_equal(flat.mask.get("NO_DATA"), vignetted)
                np.testing.assert_array_equal(flat.mask.get("PARTLY_VIGNETTED"), radius > 317.0)
                self.assertTrue(np.all(flat.image.array[vignetted] == 0.0))
                self.assertTrue(np.all(flat.image.array[~vignetted] > 0.3))  # defect columns: ~0.5
                self.assertEqual(flat.metadata["CP_COMBINE_N_VIGNETTED"], vignetted.sum())
                self.assertEqual(flat.metadata["FLATSRC"], "DOME")
                self.assertEqual(flat.metadata["OBSTYPE"], "flat")
                totals["vignetted"] += int(vignetted.sum())
                totals["ring"] += int(ring.sum())
        # The two wavefront detectors (2 x 128 pixels) cross both radii; the science one is inside.
        self.assertEqual(totals, {"vignetted": 76, "ring": 44})

    def check_combine_divides_by_the_normalization_scales(self):
        scales = self.butler.get("cpFlatNormalizeScales", **self.data_id)
        flat = self.flat(0, "flat_uncorrected")
        for i, exposure in enumerate(self.exposure_ids()):
            self.assertEqual(flat.metadata[f"CP_COMBINE_INPUT_{i}"], exposure)
            self.assertEqual(flat.metadata[f"CP_COMBINE_SCALE_{i}"], scales["expScale"][0]["C10"][exposure])

    def check_flat_is_uncorrected(self):
        """Without the gradient steps the chain stops at cp_pipe's flat_uncorrected."""
        self.assertNotIn("flat", self.dataset_type_names())
        self.assertEqual(len(self.butler.query_datasets("flat_uncorrected", **self.data_id)), 3)


class LSSTComCamFlatTestCase(PipelineRun, lsst.utils.tests.TestCase):
    """cp_pipe's LSSTComCam cpFlat: twilight FLATSRC, and cp_pipe's default finishing of the flat:
    pixels without a good input filled with the median and masked BAD, other planes censored."""

    PIPELINE = "LSSTComCam/cpFlat.yaml"
    INSTRUMENT = "LSSTComCam"
    FILTERS = {"r_03": "r"}
    SIM = {"n_cosmic_rays": 3}
    # Detected in every exposure: no good input (DETECTED is in cp_pipe's combine mask).
    NO_GOOD = (slice(2, 4), slice(5, 9))
    MARKS = [("DETECTED", 1, NO_GOOD, None)]

    def check_flat_source_is_twilight(self):
        for detector in self.camera:
            self.assertEqual(self.flat(detector.getId()).metadata["FLATSRC"], "TWILIGHT")

    def check_no_good_pixels_filled_with_the_median_and_masked_bad(self):
        flat = self.flat(1)
        no_good = np.zeros(flat.image.array.shape, bool)
        no_good[self.NO_GOOD] = True
        others = flat.image.array[~no_good]
        self.assertTrue(np.all(flat.image.array[no_good] == np.median(others)))
        self.assertTrue(np.all(flat.variance.array[no_good] == np.median(flat.variance.array[~no_good])))
        self.assertTrue(flat.mask.get("BAD")[no_good].all())
        self.assertEqual(flat.metadata["CP_COMBINE_N_NO_GOOD"], 8)
        self.assertFalse(flat.mask.get("NO_DATA").any())

    def check_other_mask_planes_are_censored(self):
        n_cosmic_ray_pixels = sum(int(self.image(exposure, 0).mask.get("CR").sum())
                                  for exposure in self.exposure_ids())
        self.assertGreater(n_cosmic_ray_pixels, 0)
        flat = self.flat(0)
        for plane in ("CR", "DETECTED", "SAT", "NO_DATA"):
            self.assertFalse(flat.mask.get(plane).any(), plane)
        # The defect columns are BAD in the inputs and BAD is noGoodPixelsMask: kept, as in cp_pipe.
        self.assertEqual(flat.mask.get("BAD").sum(), 2 * 8)


class HSCFlatTestCase(PipelineRun, lsst.utils.tests.TestCase):
    """cp_pipe's HSC cpFlat: checkNoData and censorMaskPlanes off, amplifier-level scaling."""

    PIPELINE = "HSC/cpFlat.yaml"
    INSTRUMENT = "HSC"
    FILTERS = {"HSC-R": "r"}
    SIM = {"n_cosmic_rays": 3}
    NO_DATA = (slice(0, 2), slice(0, 4))
    # NO_DATA (finite values) in the first three exposures, which cp_pipe's combine mask keeps.
    MARKS = [("NO_DATA", 1, NO_DATA, (0, 1, 2))]

    def check_no_data_and_other_planes_are_kept(self):
        flat = self.flat(1)
        no_data = np.zeros(flat.image.array.shape, bool)
        no_data[self.NO_DATA] = True
        np.testing.assert_array_equal(flat.mask.get("NO_DATA"), no_data)
        cosmic_rays = np.any([self.image(exposure, 1).mask.get("CR") for exposure in self.exposure_ids()],
                             axis=0)
        self.assertTrue(cosmic_rays.any())
        np.testing.assert_array_equal(flat.mask.get("CR"), cosmic_rays)

    def check_check_no_data_would_refuse_the_flat(self):
        """cp_pipe's default, which HSC's pipeline turns off, refuses the flat of detector 1."""
        process = self.pipetask("u/test/checked", **{"cpFlatCombine:checkNoData": "True"})
        self.assertNotEqual(process.returncode, 0)
        self.assertIn("The combined flat of detector 1 has 8 NO_DATA pixels, carried from input pixels "
                      "that NO_DATA does not exclude", process.stderr)

    def check_scaling_per_amplifier(self):
        scales = self.butler.get("cpFlatNormalizeScales", **self.data_id)
        flat = self.flat(0)
        self.assertEqual(flat.metadata["CP_COMBINE_SCALING_LEVEL"], "AMP")
        for i, exposure in enumerate(self.exposure_ids()):
            for amp in self.camera[0]:
                self.assertEqual(flat.metadata[f"CP_COMBINE_SCALE_{i}_{amp.getName()}"],
                                 scales["expScale"][0][amp.getName()][exposure])


class DECamFlatTestCase(PipelineRun, lsst.utils.tests.TestCase):
    """cp_pipe's DECam cpFlat: normalization per amplifier, combine keeping NO_DATA."""

    PIPELINE = "DECam/cpFlat.yaml"
    INSTRUMENT = "DECam"
    FILTERS = {"r DECam SDSS c0002 6415.0 1480.0": "r"}
    NO_DATA = (slice(4, 8), slice(28, 32))
    MARKS = [("NO_DATA", 0, NO_DATA, (5,))]

    def check_normalization_per_amplifier(self):
        scales = self.butler.get("cpFlatNormalizeScales", **self.data_id)
        table = self.butler.get("cpFlatNormalizeScaleTable", **self.data_id)
        self.assertEqual(set(scales["detScale"]), {0, 1})
        for detector in self.camera:
            amps = [amp.getName() for amp in detector]
            self.assertEqual(sorted(scales["detScale"][detector.getId()]), sorted(amps))
        self.assertEqual(len(table), 6 * (16 + 8))  # exposures x amplifiers
        self.assertEqual(sorted(set(table["amplifier"])), sorted(amp.getName() for amp in self.camera[0]))

    def check_no_data_is_kept(self):
        flat = self.flat(0)
        no_data = np.zeros(flat.image.array.shape, bool)
        no_data[self.NO_DATA] = True
        np.testing.assert_array_equal(flat.mask.get("NO_DATA"), no_data)
        self.assertEqual(flat.metadata["CP_COMBINE_SCALING_LEVEL"], "AMP")


class LSSTCamAnaglyphTestCase(PipelineRun, lsst.utils.tests.TestCase):
    """cp_pipe's anaglyph flat with its g-band bps overrides: blue and red normalizations on their
    own exposures, two vignetted combines, and their weighted combination (weightOne 0.630).

    The gradient steps are left out (tests/test_gradient_pipelines.py runs them): the two-flat step
    combines the uncorrected blue and red flats.
    """

    PIPELINE = "LSSTCam/cpFlatAnaglyph.yaml"
    LABELS = ("cpFlatMeasure,cpFlatBlueNormalize,cpFlatRedNormalize,cpFlatBlueCombine,cpFlatRedCombine,"
              "cpFlatRedBlueCombine")
    INSTRUMENT = "LSSTCam"
    FILTERS = {"g_6": "g", "r_57": "r"}
    CAMERA = LSST_CAMERA
    SIM = {"observation_reasons": ("single_led_flat_m455l4", "single_led_flat_m505l4")}
    CONFIG = {**ANAGLYPH_G, "cpFlatRedBlueCombine:connections.inputFlatOneHandle": "flat_blue_uncorrected",
              "cpFlatRedBlueCombine:connections.inputFlatTwoHandle": "flat_red_uncorrected"}
    QUERY = "instrument='LSSTCam' and band='g'"

    def check_each_normalization_uses_its_leds_exposures(self):
        exposures = self.exposure_ids()
        for colour, selected in (("Blue", exposures[0::2]), ("Red", exposures[1::2])):
            table = self.butler.get(f"cpFlat{colour}NormalizeScaleTable", **self.data_id)
            self.assertEqual(sorted(set(table["exposure"])), selected)
            scales = self.butler.get(f"cpFlat{colour}NormalizeScales", **self.data_id)
            self.assertEqual(sorted(scales["expScale"][0]["C10"]), selected)
            flat = self.flat(0, f"flat_{colour.lower()}_uncorrected")
            self.assertEqual([flat.metadata[f"CP_COMBINE_INPUT_{i}"] for i in range(3)], selected)

    def check_flat_is_the_weighted_combination(self):
        for detector in self.camera:
            with self.subTest(detector=detector.getId()):
                blue = self.flat(detector.getId(), "flat_blue_uncorrected")
                red = self.flat(detector.getId(), "flat_red_uncorrected")
                flat = self.flat(detector.getId())
                b, r = blue.image.array.astype(float), red.image.array.astype(float)
                self.assertFloatsAlmostEqual(flat.image.array, BLUE_WEIGHT * b + (1 - BLUE_WEIGHT) * r,
                                             rtol=1e-6, atol=1e-7)
                self.assertFloatsAlmostEqual(
                    flat.variance.array, BLUE_WEIGHT**2 * blue.variance.array.astype(float)
                    + (1 - BLUE_WEIGHT)**2 * red.variance.array.astype(float), rtol=1e-5)
                # The weight matters: the equal-weight mean differs by far more than rounding.
                self.assertGreater(np.max(np.abs(flat.image.array - (b + r) / 2)), 1e-4)
                vignetted = pixel_radii(detector) > 350.0
                for image in (blue, red, flat):
                    np.testing.assert_array_equal(image.mask.get("VIGNETTED"), vignetted)
                self.assertEqual(flat.metadata["FLATSRC"], "DOME")
                self.assertEqual(flat.metadata["CP_COMBINE_WEIGHT_0"], BLUE_WEIGHT)


class LSSTCamSingleChipTestCase(PipelineRun, lsst.utils.tests.TestCase):
    """cp_pipe's single-chip flat: each input divided by its own clipped mean (MeanStats)."""

    PIPELINE = "LSSTCam/cpFlatSingleChip.yaml"
    INSTRUMENT = "LSSTCam"
    CAMERA = {"n_side": 1, "amp_width": 4, "amp_height": 4, "n_wavefront": 1}

    def check_combine_alone(self):
        self.assertNotIn("cpFlatNormalizeScales", self.dataset_type_names())
        self.assertEqual(len(self.butler.query_datasets("flat", **self.data_id)), 2)

    def check_each_input_is_divided_by_its_clipped_mean(self):
        for detector in (0, 1):
            with self.subTest(detector=detector):
                flat = self.flat(detector)
                images = [self.image(exposure, detector) for exposure in self.exposure_ids()]
                # stats.mask: DETECTED, BAD, NO_DATA; the simulated images mark BAD defect columns.
                levels = [clipped_mean(image.image.array[~image.mask.get("BAD")]) for image in images]
                self.assertGreater(max(levels) / min(levels), 1.9)  # 10 s to 20 s exposures
                for i, level in enumerate(levels):
                    self.assertFloatsAlmostEqual(flat.metadata[f"CP_COMBINE_SCALE_{i}"], level, rtol=1e-6)
                # The inputs divided by those levels, combined as cpFlatCombine combines (MEANCLIP;
                # combine_stack's own tests check the clipping).
                scaled = np.stack([image.image.array / np.float32(level)
                                   for image, level in zip(images, levels)])
                variances = np.stack([image.variance.array / np.float32(level)**2
                                      for image, level in zip(images, levels)])
                expected = combine_stack(scaled, variances, np.ones(scaled.shape, bool), n_sigma=3.0,
                                         n_iter=3, variance_from_inputs=False)
                self.assertFloatsAlmostEqual(flat.image.array, expected.image, rtol=1e-6)
                self.assertFloatsAlmostEqual(clipped_mean(flat.image.array[~flat.mask.get("BAD")]), 1.0,
                                             rtol=1e-2)


class CpPipeConfigTestCase(lsst.utils.tests.TestCase):
    """Each shipped pipeline has cp_pipe's labels, connections and config values."""

    def graph(self, relative, **config):
        pipeline = Pipeline.from_uri(pipeline_uri(*relative.split("/")))
        for key, value in config.items():
            label, field = key.split(":")
            pipeline.addConfigOverride(label, field, value)
        return pipeline.to_graph()

    def assertConfig(self, graph, label, **expected):
        config = graph.tasks[label].config
        for field, value in expected.items():
            actual = config
            for part in field.split("."):
                actual = getattr(actual, part)
            self.assertEqual(actual, value, f"{label}.{field}")

    def test_labels_and_instruments(self):
        expected = {
            "LSSTCam/cpFlat.yaml": ["cpFlatApplyGradients", "cpFlatBin64", "cpFlatBin8", "cpFlatCombine",
                                    "cpFlatFitGradients", "cpFlatMeasure", "cpFlatMosaic64", "cpFlatMosaic8",
                                    "cpFlatNormalize"],
            "LSSTCam/cpFlatGradientReference.yaml": ["cpFlatCombine", "cpFlatFitGradientsReference",
                                                     "cpFlatMeasure", "cpFlatNormalize"],
            "LSSTCam/cpFlatAnaglyph.yaml": ["cpFlatBlueApplyGradients", "cpFlatBlueCombine",
                                            "cpFlatBlueFitGradients", "cpFlatBlueNormalize", "cpFlatMeasure",
                                            "cpFlatRedApplyGradients", "cpFlatRedBlueCombine",
                                            "cpFlatRedCombine", "cpFlatRedFitGradients",
                                            "cpFlatRedNormalize"],
            "LSSTCam/cpFlatSingleChip.yaml": ["cpFlatCombine"],
            "LSSTComCam/cpFlat.yaml": ["cpFlatCombine", "cpFlatMeasure", "cpFlatNormalize"],
            "HSC/cpFlat.yaml": ["cpFlatCombine", "cpFlatMeasure", "cpFlatNormalize"],
            "DECam/cpFlat.yaml": ["cpFlatCombine", "cpFlatMeasure", "cpFlatNormalize"],
        }
        self.assertEqual(set(expected), set(PIPELINE_FILES))
        for relative, labels in expected.items():
            with self.subTest(relative):
                config = ANAGLYPH_G if "Anaglyph" in relative else {}
                graph = self.graph(relative, **config)
                self.assertEqual(sorted(graph.tasks), labels)
                pipeline = Pipeline.from_uri(pipeline_uri(*relative.split("/")))
                instrument = relative.split("/")[0]
                self.assertEqual(pipeline.getInstrument(), f"lsst.cp.flatnorm.instrument.{instrument}")

    def test_lsstcam(self):
        graph = self.graph("LSSTCam/cpFlat.yaml")
        self.assertConfig(graph, "cpFlatMeasure", **{"connections.inputExp": "cpFlatIsrExp",
                                                     "connections.outputStats": "cpFlatStatistics",
                                                     "doVignette": True})
        self.assertConfig(graph, "cpFlatNormalize", **{"connections.inputMDs": "cpFlatStatistics",
                                                       "connections.outputScales": "cpFlatNormalizeScales",
                                                       "level": "DETECTOR"})
        self.assertConfig(graph, "cpFlatCombine", **{
            "connections.inputExpHandles": "cpFlatIsrExp", "connections.inputScales": "cpFlatNormalizeScales",
            "connections.outputData": "flat_uncorrected", "calibrationType": "flat",
            "exposureScaling": "InputList", "scalingLevel": "DETECTOR", "doVignetteMask": True,
            "vignette.radius": 350.0, "doPartialVignetteMask": True, "partialVignette.radius": 317.0,
            "checkNoData": True, "censorMaskPlanes": True, "flatSource": "DOME", "doVignette": False,
        })
        self.assertEqual(list(graph.tasks["cpFlatCombine"].config.mask), ["SAT", "DETECTED", "INTRP"])
        self.assertEqual(list(graph.tasks["cpFlatMeasure"].config.maskNameList),
                         ["DETECTED", "BAD", "NO_DATA"])

    def test_lsstcomcam(self):
        graph = self.graph("LSSTComCam/cpFlat.yaml")
        self.assertConfig(graph, "cpFlatCombine", **{
            "connections.outputData": "flat", "flatSource": "TWILIGHT", "scalingLevel": "DETECTOR",
            "doVignetteMask": False, "doPartialVignetteMask": False, "checkNoData": True,
        })

    def test_hsc_and_decam(self):
        for relative in ("HSC/cpFlat.yaml", "DECam/cpFlat.yaml"):
            with self.subTest(relative):
                graph = self.graph(relative)
                decam = relative.startswith("DECam")
                self.assertConfig(graph, "cpFlatMeasure", doVignette=not decam)
                self.assertConfig(graph, "cpFlatNormalize", level="AMP" if decam else "DETECTOR")
                self.assertConfig(graph, "cpFlatCombine", **{
                    "connections.outputData": "flat", "scalingLevel": "AMP", "exposureScaling": "InputList",
                    "checkNoData": False, "censorMaskPlanes": False, "flatSource": "DOME",
                })

    def test_anaglyph_with_bps_overrides(self):
        graph = self.graph("LSSTCam/cpFlatAnaglyph.yaml", **ANAGLYPH_G)
        for colour, value in (("Blue", "single_led_flat_m455l4"), ("Red", "single_led_flat_m505l4")):
            self.assertConfig(graph, f"cpFlat{colour}Normalize", **{
                "connections.inputMDs": "cpFlatStatistics",
                "connections.outputScales": f"cpFlat{colour}NormalizeScales",
                "connections.outputScaleTable": "", "doDownSelection": True,
                "downSelectionField": "observation_reason", "downSelectionValue": value})
            self.assertLessEqual({f"cpFlat{colour}NormalizeScales", f"cpFlat{colour}NormalizeScaleTable"},
                                 set(graph.outputs_of(f"cpFlat{colour}Normalize")))
            self.assertConfig(graph, f"cpFlat{colour}Combine", **{
                "connections.inputScales": f"cpFlat{colour}NormalizeScales",
                "connections.outputData": f"flat_{colour.lower()}_uncorrected", "doVignetteMask": True,
                "vignette.radius": 350.0, "doPartialVignetteMask": True, "partialVignette.radius": 317.0})
            self.assertConfig(graph, f"cpFlat{colour}FitGradients", **{
                "connections.input_flats": f"flat_{colour.lower()}_uncorrected",
                "connections.output_gradient": f"flat_{colour.lower()}_gradient",
                "connections.model_residual_plot": f"gradient_model_residual_{colour.lower()}_plot",
                "connections.radial_model_plot": f"gradient_radial_model_{colour.lower()}_plot",
                "do_reference_gradient": False, "do_fit_gradient": True, "do_fit_centroid": True})
            self.assertConfig(graph, f"cpFlat{colour}ApplyGradients", **{
                "connections.gradient": f"flat_{colour.lower()}_gradient",
                "connections.input_flat": f"flat_{colour.lower()}_uncorrected",
                "connections.reference_gradient": "flat_gradient_reference",
                "connections.output_flat": f"flat_{colour.lower()}"})
        self.assertConfig(graph, "cpFlatRedBlueCombine", **{
            "connections.inputFlatOneHandle": "flat_blue", "connections.inputFlatTwoHandle": "flat_red",
            "connections.outputData": "flat", "weightOne": 0.63, "calibrationType": "flat",
            "combine": "MEAN"})

    def test_anaglyph_needs_the_down_selection_values(self):
        with self.assertRaisesRegex(Exception, "downSelectionValue must be set"):
            self.graph("LSSTCam/cpFlatAnaglyph.yaml")

    def test_single_chip(self):
        graph = self.graph("LSSTCam/cpFlatSingleChip.yaml")
        self.assertConfig(graph, "cpFlatCombine", **{
            "exposureScaling": "MeanStats", "calibrationType": "flat", "stats.stat": "MEANCLIP",
            "connections.outputData": "flat"})
        self.assertEqual(set(graph.inputs_of("cpFlatCombine")), {"cpFlatIsrExp", "camera"})


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
