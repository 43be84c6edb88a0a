# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""CpFlatFitGradientsTask and CpFlatApplyGradientsTask on simulated flats with a known illumination
(in memory: the flats are the mean of simulated exposures, each divided by its lamp level)."""

import dataclasses
import io
import unittest

import numpy as np
from astropy.table import Table

import lsst.utils.tests
from lsst.cp.flatnorm.cpFlatGradients import CpFlatApplyGradientsTask, CpFlatFitGradientsTask
from lsst.cp.flatnorm.focal_plane_binning import bin_detector
from lsst.cp.flatnorm.gradient_model import FlatGradientModel
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig, FlatSimulator
from lsst.cp.flatnorm.sim.illumination import (
    dome_illumination,
    science_radius,
    sky_illumination,
    with_sensor_families,
)
from lsst.images import Image, MaskedImage

BIN = 8
BOUNDARY = 4
N_SIGMA = 4.0
"""Tolerance of every comparison with the truth, in standard deviations of what is compared."""


def simulate(camera, illumination, seed):
    """Flats and defect tables of a simulation whose only large-scale structure is ``illumination``."""
    config = FlatSimConfig(n_exposures=4, seed=seed, illumination=illumination, detector_response_sigma=0.0,
                           amp_gain_error_sigma=0.0, vignetting=0.0, colour_slope_max=0.0, n_cosmic_rays=0,
                           dead_amplifier=None, shadow=None, saturation=None)
    simulator = FlatSimulator(camera, config)
    flats, defects = {}, {}
    for detector in camera:
        images = [simulator.make_image(exposure.id, detector.getId()) for exposure in simulator.exposures]
        mean = np.mean([image.image.array / exposure.lamp_level
                        for image, exposure in zip(images, simulator.exposures)], axis=0)
        variance = np.full(mean.shape, simulator.truth.flat_noise(detector.getId())**2, dtype=np.float32)
        flats[detector.getId()] = MaskedImage(Image(mean.astype(np.float32)), mask=images[0].mask,
                                              variance=Image(variance), metadata={"SOURCE": "sim"})
        columns = np.sort(simulator.defect_columns(detector.getId()))
        defects[detector.getId()] = Table({"x0": columns, "y0": np.zeros(len(columns), int),
                                           "width": np.ones(len(columns), int),
                                           "height": np.full(len(columns), detector.getBBox().getHeight())})
    return simulator, flats, defects


def fit_config(illumination, **fields):
    config = CpFlatFitGradientsTask.ConfigClass()
    config.bin_factor = BIN
    config.detector_boundary = BOUNDARY
    config.normalize_center_radius = 0.5
    config.radial_spline_nodes = list(illumination.radial_nodes)
    config.radial_spline_nodes_initial = list(illumination.radial_nodes[:-1])
    config.do_fit_gradient = True
    config.do_fit_centroid = True
    for name, value in fields.items():
        setattr(config, name, value)
    return config


class GradientTaskTestCase(lsst.utils.tests.TestCase):
    """A 5 x 5 grid of 64 x 64-pixel detectors (ITL and e2v in a checkerboard) and two wavefront
    detectors; dome and sky flats of four exposures each."""

    @classmethod
    def setUpClass(cls):
        camera = make_sim_camera(n_side=5, amp_width=8, amp_height=32, n_wavefront=2)
        cls.camera = with_sensor_families(camera)
        radius = science_radius(cls.camera)
        cls.dome = dome_illumination(radius)
        cls.sky = sky_illumination(radius)
        cls.dome_sim, cls.dome_flats, cls.defects = simulate(cls.camera, cls.dome, seed=11)
        cls.sky_sim, cls.sky_flats, _ = simulate(cls.camera, cls.sky, seed=12)
        cls.dome_fit = CpFlatFitGradientsTask(config=fit_config(cls.dome)).run(
            camera=cls.camera, input_flat_handle_dict=cls.dome_flats, input_defect_handle_dict=cls.defects,
            instrument="SimFlatCam", physical_filter="sim_r")
        cls.sky_fit = CpFlatFitGradientsTask(config=fit_config(cls.sky, do_reference_gradient=True,
                                                               do_fit_centroid=False)).run(
            camera=cls.camera, input_flat_handle_dict=cls.sky_flats, input_defect_handle_dict=cls.defects,
            instrument="SimFlatCam", physical_filter="sim_r")

    def assertWithinNoise(self, fitted, truth, errors, what):
        fitted, truth, errors = (np.atleast_1d(np.asarray(a, dtype=float)) for a in (fitted, truth, errors))
        self.assertTrue(np.all(np.isfinite(errors)), what)
        np.testing.assert_array_less(np.abs(fitted - truth), N_SIGMA * errors, err_msg=what)

    def check_against_truth(self, gradient, illumination, fit_centroid=True):
        errors = gradient.uncertainties
        # The flats are the simulated response itself (mean of exposure / lamp level): the fitted
        # spline times the normalization is the true radial function.
        scale = gradient.normalization_factor
        self.assertWithinNoise(np.array(gradient.radial_spline_values) * scale, illumination.radial_values,
                               np.array(errors.radial_spline_values) * scale, "radial profile")
        self.assertWithinNoise(gradient.itl_ratio, illumination.itl_ratio, errors.itl_ratio, "family ratio")
        self.assertWithinNoise([gradient.gradient_x, gradient.gradient_y], illumination.gradient,
                               [errors.gradient_x, errors.gradient_y], "gradient")
        if fit_centroid:
            self.assertWithinNoise([gradient.centroid_delta_x, gradient.centroid_delta_y],
                                   illumination.centre_offset,
                                   [errors.centroid_delta_x, errors.centroid_delta_y], "centre")
        # The noise is what the binned flat's is: 4 exposures of ~1.5e4 electrons and 0.5 % pixel
        # response, over 64-pixel bins, about 9e-4 per bin.
        self.assertLess(gradient.fit.residual_sigma, 1.2e-3)
        self.assertLess(max(errors.radial_spline_values[1:-1]), 3e-4)

    def test_dome_fit_recovers_the_simulated_illumination(self):
        gradient = self.dome_fit.output_gradient
        self.assertFalse(gradient.is_reference)
        self.check_against_truth(gradient, self.dome)
        self.assertTrue(gradient.fit.converged)
        self.assertEqual(gradient.fit.n_rejected, 0)
        self.assertEqual(gradient.fit.n_detectors, 25)  # the wavefront detectors are left out
        self.assertEqual((gradient.instrument, gradient.physical_filter), ("SimFlatCam", "sim_r"))
        self.assertEqual(gradient.metadata["INPUT_DATASET_TYPE"], "flat_uncorrected")
        # The offset and gradient are many sigma from zero: the test would see them missing.
        self.assertGreater(abs(gradient.gradient_x) / gradient.uncertainties.gradient_x, 50)
        self.assertGreater(abs(gradient.centroid_delta_x) / gradient.uncertainties.centroid_delta_x, 20)

    def test_sky_reference_fit(self):
        self.assertFalse(hasattr(self.sky_fit, "output_gradient"))
        gradient = self.sky_fit.output_reference_gradient
        self.assertTrue(gradient.is_reference)
        self.check_against_truth(gradient, self.sky, fit_centroid=False)
        self.assertEqual((gradient.centroid_delta_x, gradient.centroid_delta_y), (0.0, 0.0))

    def test_binned_image_covers_every_detector_and_is_reused(self):
        binned = self.dome_fit.binned_image
        self.assertEqual(set(binned["detector"]), {det.getId() for det in self.camera})
        # (64 - 2 * 4) // 8 = 7 bins a side; a wavefront detector is 32 pixels high: 3 rows.
        self.assertEqual(len(binned), 25 * 7 * 7 + 2 * 3 * 7)
        again = CpFlatFitGradientsTask(config=fit_config(self.dome)).run(
            camera=self.camera, input_flat_handle_dict={}, binned_image=binned)
        self.assertEqual(again.output_gradient.radial_spline_values,
                         self.dome_fit.output_gradient.radial_spline_values)

    def test_defects_leave_their_bins_out(self):
        """With cp_pipe's mask planes (NO_DATA only) the half-response defect columns stay in the
        bins unless the defects are given; then every bin holding one is a rejected outlier."""
        config = fit_config(self.dome, mask_planes=["NO_DATA"])
        without = CpFlatFitGradientsTask(config=config).run(camera=self.camera,
                                                            input_flat_handle_dict=self.dome_flats)
        n_defect_bins = 0
        for detector in self.camera:
            if detector.type == "SCIENCE":
                columns = self.dome_sim.defect_columns(detector.getId())
                bins = {(c - BOUNDARY) // BIN for c in columns if BOUNDARY <= c < BOUNDARY + 7 * BIN}
                n_defect_bins += 7 * len(bins)
        self.assertEqual(without.output_gradient.fit.n_rejected, n_defect_bins)
        with_defects = CpFlatFitGradientsTask(config=config).run(
            camera=self.camera, input_flat_handle_dict=self.dome_flats, input_defect_handle_dict=self.defects)
        self.assertEqual(with_defects.output_gradient.fit.n_rejected, 0)

    def test_qa_figures_are_png(self):
        for name in ("model_residual_plot", "radial_model_plot"):
            buffer = io.BytesIO()
            getattr(self.dome_fit, name).savefig(buffer, format="png")
            self.assertEqual(buffer.getvalue()[:4], b"\x89PNG")

    def test_no_bin_near_the_centre(self):
        config = fit_config(self.dome, fp_centroid_x=100.0)
        with self.assertRaisesRegex(ValueError, "normalize_center_radius"):
            CpFlatFitGradientsTask(config=config).run(camera=self.camera, input_flat_handle_dict={},
                                                      binned_image=self.dome_fit.binned_image)

    def test_apply_gives_the_dome_flat_the_sky_radial_function(self):
        """After the apply step, the dome flat's large-scale error against the sky's radial function
        (times the dome's ITL ratio, which the flat keeps) is within the binned flat's noise."""
        task = CpFlatApplyGradientsTask()
        gradient = self.dome_fit.output_gradient
        reference = self.sky_fit.output_reference_gradient
        errors, before, noise = [], [], []
        for detector in self.camera:
            if detector.type != "SCIENCE":
                continue
            det = detector.getId()
            flat = self.dome_flats[det]
            corrected = task.run(camera=self.camera, input_flat=flat, reference_gradient=reference,
                                 gradient=gradient, detectorId=det).output_flat
            response = self.dome_sim.response(det)
            target = response / self.dome.detector_map(detector) * self.sky.radial_map(detector)
            target *= self.dome.family_factor(detector)
            bad = corrected.mask.get("BAD")
            errors.append(bin_detector(corrected.image.array / target, bad, BIN, BOUNDARY)[2])
            before.append(bin_detector(flat.image.array / target, bad, BIN, BOUNDARY)[2])
            noise.append(self.dome_sim.truth.flat_noise(det) / BIN)
            np.testing.assert_allclose(corrected.variance.array / flat.variance.array,
                                       (corrected.image.array / flat.image.array)**2, rtol=1e-5)
            self.assertEqual(corrected.metadata["SOURCE"], "sim")
            self.assertEqual(corrected.metadata["CP_GRADIENT_NORMALIZATION"], gradient.normalization_factor)
        errors, before = np.concatenate(errors), np.concatenate(before)
        errors, before = errors / np.median(errors) - 1, before / np.median(before) - 1
        sigma = float(np.mean(noise))  # of a bin (Poisson and read noise); about 5.7e-4
        # Measured: 1.04 sigma rms and 4.0 sigma at most over 1,225 bins; the two fitted models add
        # little to the bins' own noise.
        self.assertLess(np.std(errors), 1.3 * sigma)
        self.assertLess(np.max(np.abs(errors)), 5 * sigma)
        # Uncorrected, the dome's gradient, centre and radial function are 29 sigma rms.
        self.assertGreater(np.std(before), 10 * sigma)

    def test_apply_flags_pixels_without_a_valid_correction(self):
        reference = FlatGradientModel(radial_spline_nodes=list(self.sky.radial_nodes),
                                      radial_spline_values=[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
        gradient = self.dome_fit.output_gradient
        detector = self.camera[0]  # a corner detector, reaching beyond the zero nodes
        corrected = CpFlatApplyGradientsTask().run(camera=self.camera, input_flat=self.dome_flats[0],
                                                   reference_gradient=reference, gradient=gradient,
                                                   detectorId=0).output_flat
        xf, yf = self.dome.focal_plane(detector)
        invalid = ~(reference.radial_model_xy(xf, yf) > 0)
        self.assertTrue(invalid.any() and not invalid.all())
        np.testing.assert_array_equal(corrected.mask.get("NO_DATA"), invalid)
        self.assertTrue(np.all(corrected.image.array[invalid] == 0))
        self.assertEqual(corrected.metadata["CP_GRADIENT_N_INVALID"], invalid.sum())

    def test_apply_refuses_models_of_different_filters(self):
        reference = self.sky_fit.output_reference_gradient.model_copy(update={"physical_filter": "sim_g"})
        with self.assertRaisesRegex(ValueError, "different physical filters"):
            CpFlatApplyGradientsTask().run(camera=self.camera, input_flat=self.dome_flats[0],
                                           reference_gradient=reference,
                                           gradient=self.dome_fit.output_gradient, detectorId=0)

    def test_config_validation(self):
        config = fit_config(self.dome)
        config.radial_spline_nodes = [0.0, 2.0, 1.0]
        with self.assertRaisesRegex(ValueError, "increasing"):
            config.validate()
        config = fit_config(self.dome, min_flat_value=2.0)
        with self.assertRaisesRegex(ValueError, "min_flat_value"):
            config.validate()

    def test_connections_follow_do_reference_gradient(self):
        for reference, present, absent in ((False, "output_gradient", "output_reference_gradient"),
                                           (True, "output_reference_gradient", "output_gradient")):
            config = CpFlatFitGradientsTask.ConfigClass()
            config.do_reference_gradient = reference
            connections = config.connections.ConnectionsClass(config=config)
            self.assertIn(present, connections.outputs)
            self.assertNotIn(absent, connections.outputs)
            self.assertEqual(connections.input_defects.storageClass, "ArrowAstropy")
            self.assertEqual(connections.input_flats.name, "flat_uncorrected")
        config.defectsStorageClass = "Defects"
        config.cameraStorageClass = "Camera"
        connections = config.connections.ConnectionsClass(config=config)
        self.assertEqual((connections.input_defects.storageClass, connections.camera.storageClass),
                         ("Defects", "Camera"))
        apply_config = CpFlatApplyGradientsTask.ConfigClass()
        apply_connections = apply_config.connections.ConnectionsClass(config=apply_config)
        self.assertEqual({c: getattr(apply_connections, c).name for c in apply_connections.allConnections},
                         {"camera": "camera", "input_flat": "flat_uncorrected", "gradient": "flat_gradient",
                          "reference_gradient": "flat_gradient_reference", "output_flat": "flat"})
        self.assertIn("reference_gradient", apply_connections.prerequisiteInputs)


class IlluminationTestCase(lsst.utils.tests.TestCase):
    def test_simulated_response_carries_the_illumination(self):
        camera = with_sensor_families(make_sim_camera(n_side=3, amp_width=4, amp_height=8, n_wavefront=1))
        illumination = dataclasses.replace(dome_illumination(science_radius(camera)), itl_ratio=0.9)
        config = FlatSimConfig(n_exposures=2, dead_amplifier=None, shadow=None, saturation=None)
        plain = FlatSimulator(camera, config)
        lit = FlatSimulator(camera, dataclasses.replace(config, illumination=illumination))
        for detector in camera:
            ratio = lit.response(detector.getId()) / plain.response(detector.getId())
            xf, yf = illumination.focal_plane(detector)
            expected = illumination.as_model().full_model(xf, yf, "ITL" in detector.physical_type)
            np.testing.assert_allclose(ratio[plain.usable(detector.getId())],
                                       expected[plain.usable(detector.getId())], rtol=1e-12)
        self.assertEqual([det.physical_type for det in camera],
                         ["E2V", "ITL", "E2V", "ITL", "E2V", "ITL", "E2V", "ITL", "E2V", "ITL_WF"])

    def test_scaled_illumination_is_the_same_function_of_scaled_positions(self):
        illumination = dome_illumination(5.0)
        scaled = illumination.scaled(70.0)
        x, y = np.array([0.3, -2.0, 4.1]), np.array([1.0, 2.5, -0.5])
        itl = np.array([True, False, True])
        np.testing.assert_allclose(scaled.as_model().full_model(70 * x, 70 * y, itl),
                                   illumination.as_model().full_model(x, y, itl), rtol=1e-12)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
