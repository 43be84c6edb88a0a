# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of the flat simulator: determinism, the truth's properties and the corruptions."""

import dataclasses

import numpy as np
import pytest

from lsst.cp.flatnorm.scale_solver import EntryFlag, solve_separable_scales
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig, FlatSimulator

CAMERA = make_sim_camera(n_side=2, n_wavefront=1, amp_width=8, amp_height=16)
CONFIG = FlatSimConfig(n_exposures=6, dead_amplifier=(3, "C03"), shadow=(2, 1), saturation=(4, 0))


@pytest.fixture(scope="module")
def sim():
    return FlatSimulator(CAMERA, CONFIG)


def _entry_keys(truth, level, exposure_ids):
    keys = truth.row_keys(level)
    return lambda i, j: (exposure_ids[j], keys[i]) if level == "DETECTOR" else (exposure_ids[j], *keys[i])


def test_images_are_deterministic_and_order_independent(sim):
    exposure_ids = [exposure.id for exposure in sim.exposures]
    late = FlatSimulator(CAMERA, CONFIG).make_image(exposure_ids[3], 2)
    early = sim.make_image(exposure_ids[3], 2)
    np.testing.assert_array_equal(late.image.array, early.image.array)
    np.testing.assert_array_equal(late.mask.array, early.mask.array)
    other = FlatSimulator(CAMERA, FlatSimConfig(**{**CONFIG.__dict__, "seed": CONFIG.seed + 1}))
    assert not np.array_equal(other.make_image(exposure_ids[3], 2).image.array, early.image.array)
    assert other.truth.detector_scales() != sim.truth.detector_scales()


def test_exposure_metadata(sim):
    exposures = sim.exposures
    assert [e.id for e in exposures] == [20240601_00001 + i for i in range(6)]
    assert [e.exposure_time for e in exposures] == [10.0, 15.0, 20.0] * 2
    gaps = [(b.begin - a.begin).to_value("s") for a, b in zip(exposures, exposures[1:])]
    assert gaps == pytest.approx([60.0] * 5)
    assert exposures[0].end.isot == "2024-06-01T20:00:10.000"
    assert abs(sum(e.colour for e in exposures)) < 1e-12


@pytest.mark.parametrize("level", ["DETECTOR", "AMP"])
def test_truth_is_what_the_solver_recovers_from_noise_free_levels(sim, level):
    truth = sim.truth
    levels, counts = sim.expected_matrix(level)
    solution = solve_separable_scales(levels, counts, allow_disconnected=True)
    exposure_ids = [e.id for e in truth.exposures]
    key = _entry_keys(truth, level, exposure_ids)
    rejected = {key(i, j) for i, j in zip(*np.nonzero(solution.flags == EntryFlag.REJECTED))}
    invalid = {key(i, j) for i, j in zip(*np.nonzero(solution.flags == EntryFlag.INVALID))}
    assert rejected == truth.expected_rejected(level) and len(rejected) > 0
    assert invalid == truth.expected_invalid(level)
    true_e = truth.exposure_scales(level)
    np.testing.assert_allclose(solution.column_scales, [true_e[e] for e in exposure_ids], rtol=1e-4)
    true_g = truth.row_scales(level)
    recovered = {k: g for k, g in zip(truth.row_keys(level), solution.row_scales) if k in true_g}
    np.testing.assert_allclose(list(recovered.values()), [true_g[k] for k in recovered], rtol=1e-4)
    assert len(recovered) == len(true_g)


def test_levels_are_separable_only_to_the_1e3_level(sim):
    levels, counts = sim.expected_matrix("DETECTOR")
    solution = solve_separable_scales(levels, counts)
    used = np.abs(solution.log_residuals[solution.flags == EntryFlag.USED])
    assert 2e-4 < used.max() < 4e-3
    assert 1e-4 < solution.rms < 2e-3


def test_gauge_pixel_weighted_mean_of_detector_scales_is_one(sim):
    truth = sim.truth
    scales = truth.detector_scales()
    usable = {det: truth.usable_pixels(det).sum() for det in scales}
    shadowed = {det for _, det in truth.expected_rejected("DETECTOR")}
    saturated_det = CONFIG.saturation[1]
    weights = {}
    for det in scales:
        n_exposures = CONFIG.n_exposures - (det in shadowed)
        weights[det] = usable[det] * n_exposures
    # the SAT band removes pixels from one entry only
    saturated_rows = slice(int(0.45 * 32), int(0.55 * 32))
    weights[saturated_det] -= truth.usable_pixels(saturated_det)[saturated_rows].sum()
    mean = sum(weights[d] * scales[d] for d in scales) / sum(weights.values())
    assert mean == pytest.approx(1.0, abs=1e-12)


def test_pixel_response_mean_is_the_detector_scale(sim):
    for det, scale in sim.truth.detector_scales().items():
        response = sim.truth.pixel_response(det)
        assert response[sim.truth.usable_pixels(det)].mean() == pytest.approx(scale, rel=1e-12)


def test_image_level_matches_truth_within_noise(sim):
    exposure = sim.exposures[1]
    image = sim.make_image(exposure.id, 2)
    clean = ~image.mask.get("CR") & ~image.mask.get("BAD")
    expected = exposure.lamp_level * (1 + sim._colour_slope[2] * exposure.colour) * sim.response(2)
    ratio = image.image.array[clean] / expected[clean]
    noise = np.sqrt(np.mean(1 / expected[clean]) / clean.sum())
    assert abs(ratio.mean() - 1) < 5 * noise
    np.testing.assert_allclose(image.variance.array, expected + CONFIG.read_noise**2, rtol=1e-6)


def test_corruptions_are_in_the_images(sim):
    ids = [e.id for e in sim.exposures]
    kinds = {c.kind: c for c in sim.truth.corruptions}
    assert set(kinds) == {"dead_amplifier", "shadow", "saturation"}

    dead = sim.make_image(ids[0], 3)
    amp = CAMERA[3]["C03"].getBBox()
    region = (slice(amp.getMinY(), amp.getMaxY() + 1), slice(amp.getMinX(), amp.getMaxX() + 1))
    assert np.all(dead.image.array[region] == 0.0)
    assert not (dead.mask.get("NO_DATA") | dead.mask.get("SAT") | dead.mask.get("CR"))[region].any()
    assert not dead.mask.get("BAD")[region].all()  # a dead amplifier is usually not masked

    shadow = kinds["shadow"]
    assert shadow.exposure == ids[2] and shadow.detector == 1 and len(shadow.amplifiers) == 6
    shadowed = sim.make_image(ids[2], 1).image.array
    clear = sim.make_image(ids[3], 1).image.array
    lamp_ratio = sim.exposures[2].lamp_level / sim.exposures[3].lamp_level
    in_shadow = np.median(shadowed[:, :24] / clear[:, :24]) / lamp_ratio
    outside = np.median(shadowed[:, 24:] / clear[:, 24:]) / lamp_ratio
    assert in_shadow == pytest.approx(CONFIG.shadow_transmission * outside, rel=0.02)
    assert outside == pytest.approx(1.0, abs=0.01)

    saturated = sim.make_image(ids[4], 0)
    sat = saturated.mask.get("SAT")
    assert sat.sum() == CAMERA[0].getBBox().getWidth() * 3  # rows 14, 15, 16 of 32
    assert np.all(saturated.image.array[sat] == CONFIG.saturation_level)
    assert not sim.make_image(ids[3], 0).mask.get("SAT").any()


def test_defects_and_cosmic_rays_are_flagged(sim):
    image = sim.make_image(sim.exposures[0].id, 2)
    bad_columns = np.flatnonzero(image.mask.get("BAD").all(axis=0))
    assert len(bad_columns) == CONFIG.n_defect_columns
    assert image.mask.get("BAD").sum() == CONFIG.n_defect_columns * CAMERA[2].getBBox().getHeight()
    cr = image.mask.get("CR")
    assert 1 <= cr.sum() <= CONFIG.n_cosmic_rays * 4
    clean_level = np.median(image.image.array[~cr & ~image.mask.get("BAD")])
    assert np.all(image.image.array[cr] > clean_level + 0.1 * CONFIG.cosmic_ray_energy)


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="dead_amplifier=.*names no amplifier"):
        FlatSimulator(CAMERA, FlatSimConfig(dead_amplifier=(3, "C99")))
    with pytest.raises(ValueError, match="shadow=.*names no simulated"):
        FlatSimulator(CAMERA, FlatSimConfig(n_exposures=3, dead_amplifier=None, shadow=(5, 0)))
    with pytest.raises(ValueError, match="level must be"):
        FlatSimulator(CAMERA, CONFIG).truth.row_keys("CCD")


# Colour: sensor families and a drifting lamp colour (opt-in; the defaults have neither).

FAMILY_CAMERA = make_sim_camera(n_side=3, n_wavefront=0, amp_width=8, amp_height=16,
                                physical_types=("ITL", "E2V"))
FAMILY_CONFIG = FlatSimConfig(n_exposures=10, family_colour_slopes=(("ITL", 0.01), ("E2V", -0.01)),
                              colour_drift=1.0, colour_half_range=0.1)


def test_colour_defaults_are_off():
    config = FlatSimConfig()
    assert (config.family_colour_slopes, config.colour_drift) == ((), 0.0)
    assert {det.physical_type for det in make_sim_camera()} == {"simulated"}


def test_sensor_families_and_lamp_colour_drift():
    sim = FlatSimulator(FAMILY_CAMERA, FAMILY_CONFIG)
    plain = FlatSimulator(FAMILY_CAMERA, dataclasses.replace(FAMILY_CONFIG, family_colour_slopes=(),
                                                             colour_drift=0.0))
    # Everything else is drawn as without them: the families and the drift only add.
    assert [e.lamp_level for e in sim.exposures] == [e.lamp_level for e in plain.exposures]
    np.testing.assert_array_equal(sim.response(4), plain.response(4))
    family = np.array([0.01 if det.physical_type == "ITL" else -0.01 for det in FAMILY_CAMERA])
    slopes = np.array([sim.colour_slope(det.getId()) for det in FAMILY_CAMERA])
    plain_slopes = np.array([plain.colour_slope(det.getId()) for det in FAMILY_CAMERA])
    np.testing.assert_allclose(slopes - plain_slopes, family - family.mean(), atol=1e-15)
    assert slopes.mean() == pytest.approx(0.0, abs=1e-15)  # centred (equal pixel counts here)
    drift = np.arange(10) / 9 - 0.5
    colours = np.array([e.colour for e in sim.exposures])
    plain_colours = [e.colour for e in plain.exposures]
    np.testing.assert_allclose(colours - plain_colours, drift - drift.mean(), atol=1e-15)
    assert abs(colours.sum()) < 1e-12


def test_families_must_name_every_detectors_type():
    with pytest.raises(ValueError, match=r"family_colour_slopes lists \['ITL'\] but detector 1 .* 'E2V'"):
        FlatSimulator(FAMILY_CAMERA, FlatSimConfig(family_colour_slopes=(("ITL", 0.01),)))


def test_truth_at_the_reference_colour():
    config = dataclasses.replace(FAMILY_CONFIG, missing_images=((8, 2), (9, 2)), shadow=(3, 0))
    sim = FlatSimulator(FAMILY_CAMERA, config)
    truth = sim.truth
    levels, counts = sim.expected_matrix("DETECTOR")
    counts[0, 3] = 0  # the shadowed entry is rejected
    colours = np.array([e.colour for e in sim.exposures])
    reference = truth.reference_colour()
    assert reference == pytest.approx(np.average(colours, weights=counts.sum(axis=0)), rel=1e-12)
    assert reference < 0  # detector 2 misses the two reddest exposures
    for det in (2, 3):
        ratio = truth.pixel_response(det, colour=reference) / truth.pixel_response(det)
        factor = truth._gauge("DETECTOR")[1] / truth._gauge("DETECTOR", reference)[1]
        np.testing.assert_allclose(ratio, factor * (1 + sim.colour_slope(det) * reference), rtol=1e-12)
    scales = truth.row_scales(colour=reference)
    weights = counts.sum(axis=1)
    assert np.average([scales[d] for d in range(9)], weights=weights) == pytest.approx(1.0, abs=1e-12)
    for det in (2, 7):
        usable = truth.usable_pixels(det)
        mean = truth.pixel_response(det, colour=reference)[usable].mean()
        assert mean == pytest.approx(scales[det], rel=1e-12)
