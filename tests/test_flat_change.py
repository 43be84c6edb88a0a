# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The change of a flat since the previous flat, on simulated flats against the known truth: no false
alarm on a clean pair over 20 seeds with the documented thresholds, and a dust mote that appeared or
an amplifier that stepped found where it was put, and nothing else."""

import dataclasses

import numpy as np
import pytest

from lsst.cp.flatnorm.cpVerifyFlat import CpVerifyFlatConfig
from lsst.cp.flatnorm.flat_change import change_tests, flat_change
from lsst.cp.flatnorm.flat_verification import Thresholds
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.defects import DefectSimulator, InjectedDefects, dust_mote_profile
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig

N_SEEDS = 20
CAMERA = make_sim_camera(n_side=1, n_wavefront=1)  # a science detector (16 amplifiers) and a wavefront one
CONFIG = FlatSimConfig(n_exposures=4, dead_amplifier=None, shadow=None, saturation=None, n_cosmic_rays=0)
NEW_SEQ_NUM = 101
MOTE = (0, 100.0, 36.0, 3.0, 0.05)
"""A mote on detector 0 at the centre of the bin (12, 4) of 8 pixels, 3 pixels wide, 5% deep."""


def thresholds():
    """The thresholds of the task's config defaults."""
    config = CpVerifyFlatConfig()
    return Thresholds(max_change_step=config.maxChangeStep, max_change_large_scale=config.maxChangeLargeScale,
                      max_change_feature=config.maxChangeFeature)


def regions(detector):
    return [(slice(a.getBBox().getMinY(), a.getBBox().getMaxY() + 1),
             slice(a.getBBox().getMinX(), a.getBBox().getMaxX() + 1)) for a in detector]


def flat_of(simulator, detector):
    """The mean of the inputs each divided by its lamp level, and the pixels usable in every input."""
    images = [simulator.make_image(e.id, detector) for e in simulator.exposures]
    flat = np.mean([im.image.array / e.lamp_level for im, e in zip(images, simulator.exposures)], axis=0)
    return flat, ~np.any([im.mask.get("BAD") for im in images], axis=0)


def changes(seed, defects):
    """The change and its tests of every detector between a clean flat and a flat with ``defects``
    made a month later (the same response, other noise)."""
    config = dataclasses.replace(CONFIG, seed=seed)
    old = DefectSimulator(CAMERA, config, InjectedDefects())
    new = DefectSimulator(CAMERA, dataclasses.replace(config, day_obs=20240701), defects, NEW_SEQ_NUM)
    limits, found = thresholds(), {}
    for det in CAMERA:
        (old_flat, old_good), (new_flat, new_good) = flat_of(old, det.getId()), flat_of(new, det.getId())
        change = flat_change(new_flat, old_flat, old_good & new_good, regions(det), 8, 5,
                             limits.max_change_feature)
        found[det.getId()] = (change, *change_tests(change, [a.getName() for a in det], limits))
    return found


def failures(found):
    """The failed tests of each detector and amplifier."""
    failed = {}
    for det, (_, amps, detector) in found.items():
        names = [name for name, passed in detector.items() if not passed]
        names += [f"{amp} {name}" for amp, tests in amps.items()
                  for name, passed in tests.items() if not passed]
        if names:
            failed[det] = names
    return failed


def test_thresholds_are_the_documented_defaults():
    assert thresholds() == Thresholds()
    limits = Thresholds()
    assert (limits.max_change_step, limits.max_change_large_scale, limits.max_change_feature) == (
        0.005, 0.005, 0.01)


def test_no_false_alarm_over_20_seeds():
    worst = {"step": 0.0, "large_scale": 0.0, "noise": 0.0}
    for seed in range(N_SEEDS):
        found = changes(2000 + seed, InjectedDefects())
        assert failures(found) == {}, seed
        for change, _, _ in found.values():
            worst["step"] = max(worst["step"], np.nanmax(np.abs(change.amp_steps)))
            worst["large_scale"] = max(worst["large_scale"], change.large_scale)
            worst["noise"] = max(worst["noise"], change.noise)
    # The margins: every clean statistic well inside its threshold.
    assert worst["step"] < 0.5 * Thresholds.max_change_step
    assert worst["large_scale"] < 0.5 * Thresholds.max_change_large_scale
    assert worst["noise"] < 0.2 * Thresholds.max_change_feature


@pytest.mark.parametrize("seed", [7, 8])
def test_a_dust_mote_that_appeared_is_found_where_it_was_put(seed):
    found = changes(seed, InjectedDefects(dust_mote=MOTE))
    assert failures(found) == {0: ["CHANGE_FEATURE"]}
    (feature,) = found[0][0].features
    assert (feature.x, feature.y, feature.n_bins) == (100.0, 36.0, 1)
    # The mean of the mote's profile over its bin, against a level that is 1 around it.
    depth = 1 - dust_mote_profile((128, 256), *MOTE[1:])[32:40, 96:104].mean()
    assert feature.amplitude == pytest.approx(-depth, abs=0.003)


def test_an_amplifier_step_is_found_at_its_amplifier():
    amp = CAMERA[0][5].getName()
    found = changes(11, InjectedDefects(gain_jump=(0, amp, 1.02)))
    assert failures(found) == {0: [f"{amp} CHANGE_AMP_STEP"]}
    assert found[0][0].amp_steps[5] == pytest.approx(0.02, abs=0.002)


def test_a_moved_edge_is_a_large_scale_change():
    """A vignetting edge that moved: the new flat 3% darker over the first 12 columns (of 32 of the
    first amplifiers): a large-scale change, and nothing else."""
    det = CAMERA[0]
    old = np.ones((128, 256))
    new = old.copy()
    new[:, :12] *= 0.97
    change = flat_change(new, old, np.ones(old.shape, bool), regions(det), 8, 5, 0.01)
    amps, detector = change_tests(change, [a.getName() for a in det], Thresholds())
    assert detector == {"CHANGE_LARGE_SCALE": False, "CHANGE_FEATURE": True}
    assert all(tests["CHANGE_AMP_STEP"] for tests in amps.values())
    assert change.large_scale == pytest.approx(0.03, abs=0.002)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match=r"new flat's shape \(2, 2\) differs from the previous flat's"):
        flat_change(np.ones((2, 2)), np.ones((2, 3)), np.ones((2, 2), bool), [], 1, 1, 0.01)
