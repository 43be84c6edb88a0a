# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""cp_pipe's LSSTCam gradient-reference and flat pipelines (ISR removed; the reference's
visualization steps too), and the package's own gradient pipelines, run with ``pipetask run`` on
simulated sky and dome flats (ctrl_mpexec's command, in the test process: the pipetask program
itself is run by tests/test_end_to_end.py).

The camera is LSSTCam-sized in millimetres (a 3 x 3 grid of 64 x 64-pixel science detectors of
2.9 mm pixels, reaching 340 mm along the axes, and two wavefront detectors), so cp_pipe's radii
(vignetting at 350 and 317 mm, spline nodes to 350 mm, central normalization within 25 mm) apply
as they are.  The one value the test changes is the fits' ``bin_factor``: cp_pipe's 128 pixels
are for 4k-pixel sensors, and these detectors have 64.  The simulated illuminations use cp_pipe's
spline nodes, so the fitted models can match them exactly.
"""

import shutil
import tempfile
import unittest
import warnings
from pathlib import Path

import numpy as np
import pytest

import lsst.utils.tests
from lsst.cp.flatnorm.focal_plane_binning import bin_detector
from lsst.cp.flatnorm.focal_plane_mosaic import mosaic_geometry
from lsst.cp.flatnorm.instrument import FlatInstrumentConfig, instrument_class
from lsst.cp.flatnorm.report import collect_report, write_site
from lsst.cp.flatnorm.report.content import GRADIENT_FIGURES
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig
from lsst.cp.flatnorm.sim.gradient_repo import build_gradient_repo, certify_gradient_reference
from lsst.cp.flatnorm.sim.illumination import (
    SIM_FLAT_CAM_NODES,
    dome_illumination,
    make_wide_sim_camera,
    sky_illumination,
)
from lsst.cp.flatnorm.sim.run import pipeline_uri
from lsst.daf.butler import Butler
from lsst.pipe.base import Pipeline
from pipetask_in_process import run_pipetask

pytestmark = [pytest.mark.slow]

CP_PIPE_NODES = [0.0, 100.0, 200.0, 250.0, 275.0, 290.0, 300.0, 310.0, 315.0, 317.0, 320.0, 325.0, 333.0,
                 340.0, 350.0]
"""cp_pipe's default radial_spline_nodes."""
BIN = 2  # 5.9 mm: the flat falls by up to 2 % across a bin near 350 mm, and the mean over a bin is
# not the value at its centre to 1e-4 unless bins are this small
COMPARE_BIN = 8
"""Bin size of the corrected flat's comparison with its target (pixel by pixel, then binned)."""
BOUNDARY = 10  # cp_pipe's detector_boundary
BIN_64 = 16
"""Binning of flatBin64 and flatMosaic64: the wavefront detectors have 32 rows, not one bin of 64."""
FILTER = "r_57"
N_SIGMA = 4.0
LEDS = ("single_led_flat_m455l4", "single_led_flat_m505l4")
# cp_pipe's bps/templates/bps_flat_anaglyph_g.yaml's overrides (its LEDs, in this filter).
ANAGLYPH = {"cpFlatBlueNormalize:downSelectionValue": LEDS[0],
            "cpFlatRedNormalize:downSelectionValue": LEDS[1], "cpFlatRedBlueCombine:weightOne": 0.630}


class LSSTCamGradientPipelinesTestCase(lsst.utils.tests.TestCase):
    """Sky flats through LSSTCam/cpFlatGradientReference.yaml, the reference certified, then dome
    flats through LSSTCam/cpFlat.yaml, and through LSSTCam/cpFlatAnaglyph.yaml with the overrides of
    cp_pipe's bps template (the two dome exposures are the blue and the red LED's)."""

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp()
        camera = make_wide_sim_camera(n_side=3).model_copy(update={"name": "LSSTCam"})
        config = FlatInstrumentConfig(name="LSSTCam", filters={FILTER: "r"},
                                      camera="python:lsst.cp.flatnorm.sim.camera.make_sim_camera")
        instrument = instrument_class("LSSTCam")(config=config, camera=camera)
        cls.sky = sky_illumination(350.0, nodes=CP_PIPE_NODES)
        cls.dome = dome_illumination(350.0, nodes=CP_PIPE_NODES)
        common = dict(n_exposures=2, physical_filter=FILTER, detector_response_sigma=0.0,
                      amp_gain_error_sigma=0.0, vignetting=0.0, colour_slope_max=0.0, n_cosmic_rays=0,
                      dead_amplifier=None, shadow=None, saturation=None)
        cls.repo = build_gradient_repo(
            Path(cls.root) / "repo", camera=camera, instrument=instrument,
            dome=FlatSimConfig(illumination=cls.dome, observation_reasons=LEDS, **common),
            sky=FlatSimConfig(illumination=cls.sky, day_obs=20240602, start_time="2024-06-02T20:00:00",
                              **common),
        )
        cls.camera = camera
        cls.data_id = {"instrument": "LSSTCam", "physical_filter": FILTER}
        cls.failure = None
        try:
            cls.pipetask("LSSTCam/cpFlatGradientReference.yaml", [cls.repo.sky_collection], "u/sky",
                         ["cpFlatFitGradientsReference"])
            certify_gradient_reference(cls.repo.butler, "u/sky", cls.repo.dome.calib_collection, FILTER,
                                       "LSSTCam")
            cls.pipetask("LSSTCam/cpFlat.yaml", [cls.repo.dome.defaults_collection], "u/dome",
                         ["cpFlatFitGradients"], [arg for label in ("cpFlatBin64", "cpFlatMosaic64")
                                                  for arg in ("-c", f"{label}:binning={BIN_64}")])
            # The anaglyph flat of the same exposures, reusing their statistics.
            cls.pipetask("LSSTCam/cpFlatAnaglyph.yaml", ["u/dome"], "u/anaglyph",
                         ["cpFlatBlueFitGradients", "cpFlatRedFitGradients"],
                         ["--skip-existing-in", "u/dome"]
                         + [arg for key, value in ANAGLYPH.items() for arg in ("-c", f"{key}={value}")])
            # The package's instrument-independent pipelines, their gradient steps alone, on the
            # flats the cp_pipe pipelines combined.
            cls.pipetask("_ingredients/cpFlatGradientReference.yaml#cpFlatFitGradientsReference",
                         ["u/sky"], "u/skyPackage", ["cpFlatFitGradientsReference"])
            cls.pipetask("_ingredients/cpFlatCorrected.yaml#cpFlatFitGradients,cpFlatApplyGradients",
                         ["u/dome"], "u/domePackage", ["cpFlatFitGradients"])
        except Exception as error:  # reported by the test, with pipetask's output
            cls.failure = error
        cls.butler = Butler.from_config(str(cls.repo.root))

    @classmethod
    def pipetask(cls, relative, inputs, output, fit_labels, extra_args=()):
        path, _, labels = relative.partition("#")
        uri = pipeline_uri(*path.split("/")) + (f"#{labels}" if labels else "")
        log = Path(cls.root) / f"{output.replace('/', '_')}.log"
        sizes = [arg for label in fit_labels for arg in ("-c", f"{label}:bin_factor={BIN}")]
        try:
            run_pipetask(cls.repo.root, uri, inputs, output, log_path=log,
                         extra_args=[*sizes, "-d", "instrument='LSSTCam'", *extra_args])
        except Exception as error:
            raise RuntimeError(f"pipetask failed on {relative}:\n{log.read_text()[-4000:]}") from error

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_pipelines(self):
        """Every check_* method, as subtests of one test, so that the pipelines run once."""
        if self.failure is not None:
            self.fail(str(self.failure))
        for name in sorted(name for name in dir(self) if name.startswith("check_")):
            with self.subTest(name):
                getattr(self, name)()

    def get(self, name, collection, **data_id):
        return self.butler.get(name, collections=collection, **self.data_id, **data_id)

    def assertWithinNoise(self, fitted, truth, errors, what):
        fitted, truth, errors = (np.atleast_1d(np.asarray(a, dtype=float)) for a in (fitted, truth, errors))
        self.assertTrue(np.all(np.isfinite(errors)), what)
        np.testing.assert_array_less(np.abs(fitted - truth), N_SIGMA * errors, err_msg=what)

    def assertFitMatches(self, gradient, illumination, simulator):
        errors = gradient.uncertainties
        # The combined flats are the simulated response in the normalization's gauge (detector
        # scales of mean 1): the spline times the normalization factor and that gauge's factor is the
        # true radial function.
        truth = simulator.truth
        gauge = float(np.median(simulator.response(0) / truth.pixel_response(0)))
        scale = gradient.normalization_factor * gauge
        self.assertWithinNoise(np.array(gradient.radial_spline_values) * scale, illumination.radial_values,
                               np.array(errors.radial_spline_values) * scale, "radial profile")
        self.assertWithinNoise(gradient.itl_ratio, illumination.itl_ratio, errors.itl_ratio, "family ratio")
        self.assertWithinNoise([gradient.gradient_x, gradient.gradient_y], illumination.gradient,
                               [errors.gradient_x, errors.gradient_y], "gradient")
        if gradient.metadata["FIT_CENTROID"]:
            self.assertWithinNoise([gradient.centroid_delta_x, gradient.centroid_delta_y],
                                   illumination.centre_offset,
                                   [errors.centroid_delta_x, errors.centroid_delta_y], "centre")
        self.assertTrue(gradient.fit.converged)
        self.assertEqual(gradient.radial_spline_nodes, CP_PIPE_NODES)

    def check_reference_fit(self):
        reference = self.get("flat_gradient_reference", "u/sky")
        self.assertTrue(reference.is_reference)
        self.assertEqual(reference.metadata["INPUT_DATASET_TYPE"], "flat")
        self.assertFitMatches(reference, self.sky, self.repo.sky)
        refs = self.butler.query_datasets("flat_gradient_reference",
                                          collections=self.repo.dome.calib_collection, **self.data_id)
        self.assertEqual(len(refs), 1)  # certified

    def check_dome_fit(self):
        gradient = self.get("flat_gradient", "u/dome")
        self.assertFalse(gradient.is_reference)
        self.assertEqual(gradient.metadata["INPUT_DATASET_TYPE"], "flat_uncorrected")
        self.assertFitMatches(gradient, self.dome, self.repo.dome.simulator)
        self.assertTrue(self.butler.getURI("flat_gradient", collections="u/dome", **self.data_id).path
                        .endswith(".json"))

    def check_corrected_flat_has_the_sky_radial_function(self):
        """The corrected dome flat against the sky's radial function (times the dome's ITL ratio,
        which the flat keeps), binned: its error is the binned flat's noise, bin by bin."""
        self.assertCorrectedAtNoise("u/dome", self.repo.dome.simulator.truth.flat_noise)
        reference = self.get("flat_gradient_reference", "u/sky")
        flat = self.get("flat", "u/dome", detector=4)
        self.assertEqual(flat.metadata["CP_GRADIENT_REFERENCE_CREATED"], reference.created)
        self.assertEqual(flat.metadata["FLATSRC"], "DOME")

    def check_anaglyph_flat(self):
        """The anaglyph pipeline: each LED's flat (one exposure) fitted and corrected, then their
        weighted combination, which is at its noise against the sky's radial function too."""
        weight = ANAGLYPH["cpFlatRedBlueCombine:weightOne"]
        for colour, exposure in (("blue", 0), ("red", 1)):
            gradient = self.get(f"flat_{colour}_gradient", "u/anaglyph")
            self.assertWithinNoise([gradient.gradient_x, gradient.gradient_y], self.dome.gradient,
                                   [gradient.uncertainties.gradient_x, gradient.uncertainties.gradient_y],
                                   f"{colour} gradient")
            table = self.get(f"cpFlat{colour.title()}NormalizeScaleTable", "u/anaglyph")
            self.assertEqual(set(table["exposure"]), {self.repo.dome.simulator.exposures[exposure].id})
        for det in (0, 4):
            blue, red = (self.get(f"flat_{colour}", "u/anaglyph", detector=det).image.array
                         for colour in ("blue", "red"))
            flat = self.get("flat", "u/anaglyph", detector=det).image.array
            self.assertFloatsAlmostEqual(flat, weight * blue + (1 - weight) * red, rtol=1e-6, atol=1e-7)
        levels = [exposure.lamp_level for exposure in self.repo.dome.simulator.exposures]
        read = self.repo.dome.simulator.config.read_noise

        def noise(det):  # of weight * blue + (1 - weight) * red, each one exposure, per pixel
            variances = [(level + read**2) / level**2 for level in levels]
            return np.sqrt(weight**2 * variances[0] + (1 - weight)**2 * variances[1])

        self.assertCorrectedAtNoise("u/anaglyph", noise)

    def assertCorrectedAtNoise(self, collection, pixel_noise):
        """The binned error of a collection's corrected flat against the sky's radial function,
        in units of the bins' noise (``pixel_noise(detector)`` per pixel)."""
        simulator = self.repo.dome.simulator
        errors, before, sigmas = [], [], []
        for detector in self.camera:
            if detector.type != "SCIENCE":
                continue
            det = detector.getId()
            flat = self.get("flat", collection, detector=det)
            uncorrected = self.get("flat_uncorrected", "u/dome", detector=det)
            target = (simulator.response(det) / self.dome.detector_map(detector)
                      * self.sky.radial_map(detector) * self.dome.family_factor(detector))
            excluded = flat.mask.get("BAD") | flat.mask.get("NO_DATA")
            _, _, error, n_pixels = bin_detector(flat.image.array / target, excluded, COMPARE_BIN, BOUNDARY)
            whole = n_pixels >= COMPARE_BIN * (COMPARE_BIN - 1)  # at most a defect column; not vignetted
            errors.append(error[whole])
            before.append(bin_detector(uncorrected.image.array / target, excluded, COMPARE_BIN,
                                       BOUNDARY)[2][whole])
            sigmas.append(pixel_noise(det) / np.sqrt(n_pixels[whole]))
            # Vignetted pixels stay zero and NO_DATA.
            vignetted = uncorrected.mask.get("VIGNETTED")
            self.assertTrue(np.all(flat.mask.get("NO_DATA")[vignetted]))
            self.assertTrue(np.all(flat.image.array[vignetted] == 0.0))
        errors, before, sigmas = (np.concatenate(a) for a in (errors, before, sigmas))
        pulls = (errors / np.median(errors) - 1) / sigmas
        self.assertGreater(len(pulls), 100)
        self.assertLess(np.std(pulls), 1.3, collection)
        self.assertLess(np.max(np.abs(pulls)), 5.0, collection)
        self.assertGreater(np.std((before / np.median(before) - 1) / sigmas), 10, collection)

    def check_qa_figures_are_png(self):
        for collection in ("u/sky", "u/dome"):
            for name in ("gradient_model_residual_plot", "gradient_radial_model_plot"):
                uri = self.butler.getURI(name, collections=collection, **self.data_id)
                self.assertEqual(uri.read()[:4], b"\x89PNG", (collection, name))

    def check_binned_flats_and_mosaics(self):
        """cp_pipe's last four steps: each flat binned by 8 and 64 (the mean of each block's pixels
        outside NO_DATA), and the binned flats mosaicked where the camera puts them."""
        for name, binning in (("8", 8), ("64", BIN_64)):
            mosaic = self.get(f"flatMosaic{name}", "u/dome")
            geometry = mosaic_geometry(self.camera, binning)
            self.assertEqual(mosaic.array.shape, geometry.shape)
            self.assertEqual((mosaic.metadata["FP_X0"], mosaic.metadata["FP_SCALE"]),
                             (geometry.origin[0], geometry.scale))
            n_finite = 0
            for det in self.camera:
                flat = self.get("flat", "u/dome", detector=det.getId())
                binned = self.get(f"flatBin{name}", "u/dome", detector=det.getId())
                rows, columns = (n // binning for n in flat.image.array.shape)
                blocks = np.where(flat.mask.get("NO_DATA"), np.nan, flat.image.array)
                blocks = blocks[:rows * binning, :columns * binning].reshape(rows, binning, columns, binning)
                with np.errstate(invalid="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN (vignetted) blocks
                    expected = np.nanmean(blocks, axis=(1, 3))
                np.testing.assert_allclose(binned.image.array, expected, rtol=1e-6, err_msg=f"{det.getId()}")
                np.testing.assert_array_equal(binned.mask.get("NO_DATA"), np.isnan(expected))
                # The bin nearest the detector's centre is at the centre's focal-plane position.
                row, column = rows // 2, columns // 2
                x, y = det.pixel_to_focal_plane((column + 0.5) * binning - 0.5, (row + 0.5) * binning - 0.5)
                x0, y0 = geometry.origin
                at = (int((y - y0) // geometry.scale), int((x - x0) // geometry.scale))
                # (NaN in both where that bin is vignetted)
                np.testing.assert_array_equal(mosaic.array[at], binned.image.array[row, column],
                                              err_msg=f"{binning} {det.getId()}")
                n_finite += np.isfinite(expected).sum()
            self.assertEqual(np.isfinite(mosaic.array).sum(), n_finite)

    def check_report_shows_the_gradient(self):
        """The report of the dome run: the fitted gradient, its radial function and QA figures."""
        content = collect_report(self.butler, ["u/dome"], input_residuals=False)
        gradient = self.get("flat_gradient", "u/dome")
        self.assertEqual(content.gradient.gradient_x, gradient.gradient_x)
        self.assertEqual(set(content.gradient_figures), set(GRADIENT_FIGURES))
        index = write_site(content, Path(self.root) / "report")
        for name in ("radial_function", *GRADIENT_FIGURES):
            self.assertEqual((index.parent / "img" / f"{name}.png").read_bytes()[:4], b"\x89PNG", name)
        page = (index.parent / "gradients.html").read_text()
        self.assertIn(f'<td data-value="{gradient.gradient_x!r}">', page)

    def check_package_pipelines_give_the_same_models(self):
        for name, cp_pipe, package in (("flat_gradient_reference", "u/sky", "u/skyPackage"),
                                       ("flat_gradient", "u/dome", "u/domePackage")):
            ours, theirs = self.get(name, package), self.get(name, cp_pipe)
            self.assertEqual(ours.radial_spline_values, theirs.radial_spline_values, name)
            self.assertEqual((ours.gradient_x, ours.gradient_y), (theirs.gradient_x, theirs.gradient_y))
        np.testing.assert_array_equal(self.get("flat", "u/domePackage", detector=4).image.array,
                                      self.get("flat", "u/dome", detector=4).image.array)


class GradientPipelineFilesTestCase(lsst.utils.tests.TestCase):
    """The gradient pipelines' labels, connections and configs, without running them."""

    def graph(self, *parts):
        return Pipeline.from_uri(pipeline_uri(*parts)).to_graph()

    def test_cp_pipe_lsstcam_pipelines(self):
        graph = self.graph("LSSTCam", "cpFlat.yaml")
        self.assertEqual(sorted(graph.tasks), ["cpFlatApplyGradients", "cpFlatBin64", "cpFlatBin8",
                                               "cpFlatCombine", "cpFlatFitGradients", "cpFlatMeasure",
                                               "cpFlatMosaic64", "cpFlatMosaic8", "cpFlatNormalize"])
        for binning in (8, 64):  # cp_pipe's names and bin factors
            self.assertEqual(graph.tasks[f"cpFlatBin{binning}"].config.binning, binning)
            self.assertEqual(graph.tasks[f"cpFlatMosaic{binning}"].config.binning, binning)
            self.assertEqual(set(graph.inputs_of(f"cpFlatBin{binning}")), {"flat"})
            self.assertIn(f"flatMosaic{binning}", graph.outputs_of(f"cpFlatMosaic{binning}"))
            self.assertIn(f"flatBin{binning}", graph.inputs_of(f"cpFlatMosaic{binning}"))
        fit = graph.tasks["cpFlatFitGradients"].config
        self.assertEqual((fit.do_reference_gradient, fit.do_fit_gradient, fit.do_fit_centroid, fit.bin_factor,
                          list(fit.radial_spline_nodes)), (False, True, True, 128, CP_PIPE_NODES))
        self.assertIn("flat", graph.outputs_of("cpFlatApplyGradients"))
        self.assertEqual(set(graph.inputs_of("cpFlatApplyGradients")),
                         {"camera", "flat_uncorrected", "flat_gradient", "flat_gradient_reference"})
        reference = self.graph("LSSTCam", "cpFlatGradientReference.yaml")
        self.assertEqual(sorted(reference.tasks), ["cpFlatCombine", "cpFlatFitGradientsReference",
                                                   "cpFlatMeasure", "cpFlatNormalize"])
        fit = reference.tasks["cpFlatFitGradientsReference"].config
        self.assertEqual((fit.do_reference_gradient, fit.do_fit_gradient, fit.do_fit_centroid),
                         (True, True, False))
        self.assertIn("flat_gradient_reference", reference.outputs_of("cpFlatFitGradientsReference"))
        self.assertTrue(reference.tasks["cpFlatCombine"].config.doVignetteMask)

    def test_simflatcam_pipelines_fit_simflatcam_geometry(self):
        for name, label in (("cpFlatCorrected.yaml", "cpFlatFitGradients"),
                            ("cpFlatGradientReference.yaml", "cpFlatFitGradientsReference")):
            config = self.graph("SimFlatCam", name).tasks[label].config
            self.assertEqual(tuple(config.radial_spline_nodes), SIM_FLAT_CAM_NODES)
            self.assertEqual(config.bin_factor, 16)

    def test_contract_ties_the_fit_to_the_combined_flats(self):
        pipeline = Pipeline.from_uri(pipeline_uri("_ingredients", "cpFlatCorrected.yaml"))
        pipeline.addConfigOverride("cpFlatFitGradients", "connections.input_flats", "flat_other")
        with self.assertRaisesRegex(Exception, "must fit the flats that cpFlatCombine writes"):
            pipeline.to_graph()


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
