# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Flat quality against truth (lsst.cp.flatnorm.sim.flat_quality) on synthetic arrays with known answers,
the simulator's missing images, and the mosaic figure's binning."""

import dataclasses

import numpy as np
import pytest

from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_quality import (
    ROBUST_SIGMA_PER_MAD,
    amplifier_regions,
    gauge_constant,
    measure_flat_quality,
    measure_mosaic_quality,
    response_ratio,
)
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig, FlatSimulator

CAMERA = make_sim_camera(n_side=2, n_wavefront=1, amp_width=4, amp_height=6)
SIM_CONFIG = FlatSimConfig(n_exposures=4, dead_amplifier=None, shadow=None, saturation=None)
HALVES = {"left": (slice(None), slice(0, 2)), "right": (slice(None), slice(2, 4))}


def test_amplifier_regions_tile_the_detector_in_camera_order():
    detector = CAMERA[0]
    regions = amplifier_regions(detector)
    assert list(regions) == [amp.getName() for amp in detector]
    covered = np.zeros((12, 32), dtype=int)
    for region in regions.values():
        covered[region] += 1
        assert covered[region].shape == (6, 4)
    assert np.all(covered == 1)
    assert regions["C10"] == (slice(6, 12), slice(0, 4))
    assert regions["C00"] == (slice(0, 6), slice(28, 32))


def test_response_ratio_compares_only_usable_finite_pixels():
    flat = np.array([[2.0, 4.0], [np.nan, 9.0]])
    response = np.array([[1.0, 2.0], [1.0, 0.0]])
    usable = np.array([[True, True], [True, False]])
    ratio = response_ratio(flat, response, usable)
    np.testing.assert_array_equal(ratio, [[2.0, 2.0], [np.nan, np.nan]])


def test_response_ratio_errors():
    with pytest.raises(ValueError, match=r"Shapes differ: flat \(2, 2\), response \(2, 3\)"):
        response_ratio(np.ones((2, 2)), np.ones((2, 3)), np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="must be positive on every usable pixel"):
        response_ratio(np.ones((1, 2)), np.array([[1.0, 0.0]]), np.ones((1, 2), dtype=bool))


def test_gauge_constant_is_the_pooled_median():
    assert gauge_constant([np.array([1.0, 2.0, 3.0]), np.array([[np.nan, 10.0]])]) == 2.5
    with pytest.raises(ValueError, match="No finite flat / response ratio"):
        gauge_constant([np.full(3, np.nan)])


def test_flat_quality_of_two_offset_amplifiers():
    """Left half +1%, right half -2% after the gauge 2: exact medians, MAD scatter and outliers."""
    errors = np.zeros((4, 4))
    errors[:, :2], errors[:, 2:] = 0.01, -0.02
    quality = measure_flat_quality(2.0 * (1 + errors), 2.0, HALVES, outlier_threshold=0.02)
    assert quality.amplifier_errors == pytest.approx({"left": 0.01, "right": -0.02})
    assert quality.detector_error == pytest.approx(-0.005)
    assert quality.pixel_scatter == pytest.approx(ROBUST_SIGMA_PER_MAD * 0.015)
    assert quality.outlier_fraction == 0.0
    assert quality.n_pixels == 16
    tight = measure_flat_quality(2.0 * (1 + errors), 2.0, HALVES, outlier_threshold=0.01)
    assert tight.outlier_fraction == 1.0


def test_flat_quality_noise_and_planted_outliers():
    """Gaussian pixel errors of 3e-3: the robust scatter recovers it; 1% planted +5% pixels are the
    outliers; NaN pixels and an amplifier without compared pixels are left out."""
    rng = np.random.default_rng(7)
    errors = 0.003 * rng.standard_normal((100, 100))
    errors.flat[::100] = 0.05
    errors[:, -1] = np.nan
    regions = {"all": (slice(None), slice(None)), "empty": (slice(None), slice(99, 100))}
    quality = measure_flat_quality(1 + errors, 1.0, regions, outlier_threshold=5 * 0.003)
    assert quality.n_pixels == 9900
    assert quality.outlier_fraction == pytest.approx(100 / 9900)
    assert quality.pixel_scatter == pytest.approx(0.003, rel=0.05)
    assert list(quality.amplifier_errors) == ["all"]
    assert abs(quality.detector_error) < 2e-4


def test_flat_quality_without_compared_pixels():
    with pytest.raises(ValueError, match="No pixel of this flat was compared"):
        measure_flat_quality(np.full((2, 2), np.nan), 1.0, HALVES, outlier_threshold=0.1)


def test_unnormalized_detector_missing_exposures_is_off_by_its_mean_lamp_level():
    """Un-normalized flats are the plain mean of the images: each detector sits at the mean lamp
    level of its own exposures.  Three detectors have all six, one misses the two brightest: on one
    gauge constant (the pooled median, i.e. the complete detectors' level) that detector is off by
    exactly mean(its levels) / mean(all levels) - 1, and every complete detector is exact."""
    lamp = np.array([10.0, 15.0, 20.0, 10.0, 15.0, 20.0])
    response = 1 + 0.05 * np.random.default_rng(3).standard_normal((4, 4))
    subsets = {0: lamp, 1: lamp, 2: lamp, 3: lamp[[0, 1, 3, 4]]}
    usable = np.ones(response.shape, dtype=bool)
    ratios = {det: response_ratio(np.mean(levels) * response, response, usable)
              for det, levels in subsets.items()}
    regions = {det: HALVES for det in subsets}
    quality = measure_mosaic_quality(ratios, regions, dict.fromkeys(subsets, 1e-3))
    assert quality.gauge == pytest.approx(15.0)
    detector, error = quality.worst_detector()
    assert detector == 3
    assert error == pytest.approx(12.5 / 15.0 - 1)
    assert [quality.detectors[d].detector_error for d in range(3)] == pytest.approx([0, 0, 0])
    assert quality.detector_rms() == pytest.approx(abs(error) / 2)
    (amp_detector, _), amp_error = quality.worst_amplifier()
    assert amp_detector == 3 and amp_error == pytest.approx(error)
    assert quality.amplifier_rms() == pytest.approx(abs(error) / 2)
    assert set(quality.amplifier_errors()) == {(d, half) for d in range(4) for half in HALVES}
    assert quality.outlier_fraction() == 0.0


def test_mosaic_outlier_fraction_counts_pixels():
    """Outlier fractions are pooled by pixel count, not averaged over detectors."""
    small = np.ones((1, 4))
    small[0, 0] = 1.5
    large = np.ones((4, 4))
    quality = measure_mosaic_quality({0: small, 1: large}, {0: {}, 1: {}}, {0: 0.1, 1: 0.1})
    assert quality.detectors[0].outlier_fraction == 0.25
    assert quality.outlier_fraction() == pytest.approx(1 / 20)


def test_missing_images_leave_the_gauge_and_noise_consistent():
    complete = FlatSimulator(CAMERA, SIM_CONFIG)
    sim = FlatSimulator(CAMERA, dataclasses.replace(SIM_CONFIG, missing_images=((0, 1), (3, 1))))
    first, last = sim.exposures[0].id, sim.exposures[3].id
    assert sim.truth.missing_images() == {(first, 1), (last, 1)}
    assert not sim.has_image(first, 1) and sim.has_image(first, 0)
    levels, counts = sim.expected_matrix("DETECTOR")
    assert counts[1, [0, 3]].tolist() == [0, 0] and levels[1, [0, 3]].tolist() == [0, 0]
    np.testing.assert_array_equal(counts[:, 1:3], complete.expected_matrix("DETECTOR")[1][:, 1:3])
    # Poisson noise of the mean of images each divided by its level L: sqrt(sum(1 / L)) / n, up to
    # the read noise; detector 1 keeps two of the four images.
    inverse_levels = np.array([1 / e.lamp_level for e in sim.exposures])
    expected = (np.sqrt(inverse_levels[1:3].sum()) / 2) / (np.sqrt(inverse_levels.sum()) / 4)
    assert sim.truth.flat_noise(1) / complete.truth.flat_noise(1) == pytest.approx(expected, rel=2e-3)
    assert sim.truth.flat_noise(0) == complete.truth.flat_noise(0)
    # The gauge weights each detector by its used pixels: fewer images of detector 1, other factor.
    assert sim.truth.detector_scales() != pytest.approx(complete.truth.detector_scales(), rel=1e-9)


def test_missing_images_must_be_simulated():
    with pytest.raises(ValueError, match=r"missing_images: \(4, 0\) names no simulated"):
        FlatSimulator(CAMERA, dataclasses.replace(SIM_CONFIG, missing_images=((4, 0),)))
    with pytest.raises(ValueError, match=r"missing_images: \(0, 99\) names no simulated"):
        FlatSimulator(CAMERA, dataclasses.replace(SIM_CONFIG, missing_images=((0, 99),)))
