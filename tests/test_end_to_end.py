# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""End to end: simulated flats in an on-disk repo, the SimFlatCam pipeline run by ``pipetask``, and the
scales read back from the butler checked against the simulator's truth.

Every ``pipetask run`` here is the command run in this process (tests/pipetask_in_process.py): the
program itself runs as a user runs it in test_tutorial (and killed in test_faults_kill)."""

import numpy as np
import pytest

from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.demo import measure_flats, read_flats, write_figures
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig
from lsst.cp.flatnorm.sim.repo import build_sim_repo
from lsst.cp.flatnorm.sim.run import pipeline_uri, read_normalization
from pipetask_in_process import run_pipetask
from worker_cache import built_once

# One repository per module: "--dist loadfile" (Makefile) keeps a module on one worker, and built_once
# keeps the worker from building it again when it tears module fixtures down early.
pytestmark = pytest.mark.slow

CAMERA = make_sim_camera(n_side=2, n_wavefront=1, amp_width=8, amp_height=16)
# Detector 2 is not read out in the second and third exposures (15 s and 20 s).
MISSING_DETECTOR = 2
CONFIG = FlatSimConfig(n_exposures=5, dead_amplifier=(3, "C03"), shadow=(2, 1), saturation=(4, 0),
                       missing_images=((1, MISSING_DETECTOR), (2, MISSING_DETECTOR)))
OUTPUT = "u/test/cpFlat"
UNSCALED = OUTPUT + "Unscaled"
OMITTED = OUTPUT + "Omitted"
COLOUR = OUTPUT + "Colour"
# Noise of one amplifier level: Poisson on 128 pixels of >= 8000 electrons, ~1e-3; the scales average
# several levels, and the clipped mean of a detector with a vignetting gradient and amplifier steps
# differs from the plain mean (the truth) by up to ~1e-3.
E_TOLERANCE = 1e-3
G_TOLERANCE = 3e-3


@pytest.fixture(scope="module")
@built_once
def repo(tmp_path_factory):
    """Build the repo and run the pipeline at DETECTOR level, then cpFlatNormalize alone at AMP level, then
    cpFlatCombine alone without normalization, then both with the rejected entries' scales omitted, then
    both with a colour term."""
    repo = build_sim_repo(tmp_path_factory.mktemp("e2e") / "repo", camera=CAMERA, config=CONFIG)
    pipeline = pipeline_uri("SimFlatCam", "cpFlat.yaml")
    run_pipetask(repo.root, pipeline, [repo.defaults_collection], OUTPUT)
    run_pipetask(repo.root, f"{pipeline}#cpFlatNormalize", [OUTPUT], OUTPUT + "Amp",
                 extra_args=["-c", "cpFlatNormalize:level=AMP"])
    run_pipetask(repo.root, f"{pipeline}#cpFlatCombine", [OUTPUT], UNSCALED,
                 extra_args=["-c", "cpFlatCombine:exposureScaling=Unity"])
    run_pipetask(repo.root, f"{pipeline}#cpFlatNormalize,cpFlatCombine", [OUTPUT], OMITTED,
                 extra_args=["-c", "cpFlatNormalize:omitUnusedScales=True"])
    run_pipetask(repo.root, f"{pipeline}#cpFlatNormalize,cpFlatCombine", [OUTPUT], COLOUR,
                 extra_args=["-c", "cpFlatNormalize:colourTerms=1"])
    return repo


def _outputs(repo, collection):
    return read_normalization(repo.butler, collection, "SimFlatCam", CONFIG.physical_filter)


def test_every_flat_was_measured(repo):
    stats = repo.butler.query_datasets("cpFlatStatistics", collections=OUTPUT)
    found = {(ref.dataId["exposure"], ref.dataId["detector"]) for ref in stats}
    images = {(e.id, det.getId()) for e in repo.truth.exposures for det in CAMERA}
    assert len(repo.truth.missing_images()) == 2
    assert found == images - repo.truth.missing_images()


@pytest.mark.parametrize("level, collection", [("DETECTOR", OUTPUT), ("AMP", OUTPUT + "Amp")])
def test_flagged_entries_are_exactly_the_corrupted_ones(repo, level, collection):
    outputs = _outputs(repo, collection)
    assert outputs.level == level
    assert outputs.entries("REJECTED") == repo.truth.expected_rejected(level)
    assert outputs.entries("INVALID") == repo.truth.expected_invalid(level)
    saturated = next(c for c in repo.truth.corruptions if c.kind == "saturation")
    used = outputs.entries("USED")
    assert (saturated.exposure, saturated.detector) in {entry[:2] for entry in used}


@pytest.mark.parametrize("level, collection", [("DETECTOR", OUTPUT), ("AMP", OUTPUT + "Amp")])
def test_exposure_scales_match_truth(repo, level, collection):
    recovered = _outputs(repo, collection).exposure_scales()
    truth = repo.truth.exposure_scales(level)
    assert set(recovered) == set(truth)
    ids = sorted(truth)
    np.testing.assert_allclose([recovered[i] for i in ids], [truth[i] for i in ids], rtol=E_TOLERANCE)


def test_detector_scales_match_truth(repo):
    det_scale = _outputs(repo, OUTPUT).scales["detScale"]
    truth = repo.truth.detector_scales()
    assert set(det_scale) == set(truth)
    np.testing.assert_allclose([det_scale[d] for d in truth], list(truth.values()), rtol=G_TOLERANCE)


def test_amplifier_scales_match_truth(repo):
    det_scale = _outputs(repo, OUTPUT + "Amp").scales["detScale"]
    truth = repo.truth.amplifier_scales()
    recovered = {(det, amp): g for det, amps in det_scale.items() for amp, g in amps.items()}
    dead = next(c for c in repo.truth.corruptions if c.kind == "dead_amplifier")
    assert set(recovered) == set(truth) | {(dead.detector, dead.amplifiers[0])}
    assert np.isnan(recovered[dead.detector, dead.amplifiers[0]])
    np.testing.assert_allclose([recovered[k] for k in truth], list(truth.values()), rtol=G_TOLERANCE)


def test_exposure_scale_layout_is_cp_pipes(repo):
    exp_scale = _outputs(repo, OUTPUT).scales["expScale"]
    exposures = {e.id for e in repo.truth.exposures}
    assert set(exp_scale) == {det.getId() for det in CAMERA}
    for det in CAMERA:
        assert list(exp_scale[det.getId()]) == [amp.getName() for amp in det]
        assert all(set(per_exposure) == exposures for per_exposure in exp_scale[det.getId()].values())


def test_demo_figures_are_written(repo, tmp_path):
    results = {"DETECTOR": _outputs(repo, OUTPUT), "AMP": _outputs(repo, OUTPUT + "Amp")}
    flats = {"normalized": read_flats(repo, OUTPUT), "un-normalized": read_flats(repo, UNSCALED)}
    paths = write_figures(repo, results, tmp_path / "figures", flats)
    assert sorted(path.name for path in paths) == [
        "exposure_scales.png", "flat_errors.png", "flat_mosaic.png", "focal_plane_amp.png",
        "focal_plane_detector.png", "residuals_amp.png", "residuals_detector.png",
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_combined_flats_match_the_true_response(repo):
    """Each flat is the inputs divided by E and combined: the true pixel response, within Poisson
    noise, on every detector without an unmasked corruption (the shadow enters the stack)."""
    truth = repo.truth
    shadowed = {c.detector for c in truth.corruptions if c.kind == "shadow"}
    for det in CAMERA:
        flat = repo.butler.get("flat", instrument="SimFlatCam", detector=det.getId(),
                               physical_filter=CONFIG.physical_filter, collections=OUTPUT)
        assert flat.bbox.shape == (det.getBBox().getHeight(), det.getBBox().getWidth())
        if det.getId() in shadowed:
            continue
        usable = truth.usable_pixels(det.getId())
        ratio = flat.image.array[usable] / truth.pixel_response(det.getId())[usable]
        assert abs(np.median(ratio) - 1) < 2e-3
        # Robust width: with five inputs a clipped mean cannot reject the (unmasked-plane) cosmic rays.
        robust_sigma = 1.4826 * np.median(np.abs(ratio - np.median(ratio)))
        assert robust_sigma == pytest.approx(truth.flat_noise(det.getId()), rel=0.25)


def test_normalized_flat_is_flatter_than_the_unnormalized_one(repo):
    """On the demo's metric (one gauge constant per mosaic), the un-normalized flat of the detector
    that misses two exposures sits at the mean lamp level of its own exposures, off by
    mean(its levels) / mean(all levels) - 1 (-17% here); the normalized flat is right to ~1e-3."""
    normalized = measure_flats(repo, read_flats(repo, OUTPUT))
    unnormalized = measure_flats(repo, read_flats(repo, UNSCALED))
    levels = np.array([e.lamp_level for e in repo.truth.exposures])
    kept = [repo.simulator.has_image(e.id, MISSING_DETECTOR) for e in repo.truth.exposures]
    expected = levels[kept].mean() / levels.mean() - 1
    detector, error = unnormalized.worst_detector()
    assert detector == MISSING_DETECTOR
    # Up to the colour term of its three exposures (colour sensitivity up to 6e-3 x colour up to 0.4).
    assert error == pytest.approx(expected, abs=5e-3)
    assert normalized.gauge == pytest.approx(1, abs=1e-3)
    assert abs(normalized.worst_detector()[1]) < 2e-3
    assert abs(normalized.worst_amplifier()[1]) < 5e-3
    assert abs(normalized.detectors[MISSING_DETECTOR].detector_error) < 2e-3
    assert normalized.amplifier_rms() < unnormalized.amplifier_rms() / 20
    assert normalized.outlier_fraction() < unnormalized.outlier_fraction() / 3


def test_omitted_scales_keep_the_shadow_out_of_the_flat(repo):
    """omitUnusedScales leaves the rejected (shadowed) entry's exposure out of its detector's scales;
    the combine then skips that exposure there instead of relying on its clipping, and the flat under
    the shadow matches the true response."""
    shadow = next(c for c in repo.truth.corruptions if c.kind == "shadow")
    exp_scale = _outputs(repo, OMITTED).scales["expScale"][shadow.detector]
    assert all(shadow.exposure not in per_exposure for per_exposure in exp_scale.values())
    flats = {collection: repo.butler.get("flat", instrument="SimFlatCam", detector=shadow.detector,
                                         physical_filter=CONFIG.physical_filter, collections=collection)
             for collection in (OUTPUT, OMITTED)}
    assert flats[OUTPUT].metadata["CP_COMBINE_SKIPPED_EXPOSURES"] == ""
    assert flats[OMITTED].metadata["CP_COMBINE_SKIPPED_EXPOSURES"] == str(shadow.exposure)
    assert flats[OMITTED].metadata["CP_COMBINE_N_INPUTS"] == flats[OUTPUT].metadata["CP_COMBINE_N_INPUTS"] - 1
    in_shadow = np.zeros(repo.truth.usable_pixels(shadow.detector).shape, dtype=bool)
    for amp in CAMERA[shadow.detector]:
        if amp.getName() in shadow.amplifiers:
            box = amp.getBBox()
            in_shadow[box.getMinY():box.getMaxY() + 1, box.getMinX():box.getMaxX() + 1] = True
    pixels = in_shadow & repo.truth.usable_pixels(shadow.detector)
    ratio = flats[OMITTED].image.array[pixels] / repo.truth.pixel_response(shadow.detector)[pixels]
    assert abs(np.median(ratio) - 1) < 2e-3


def _table_with_metadata(repo, collection):
    return repo.butler.get("cpFlatNormalizeScaleTable", instrument="SimFlatCam",
                           physical_filter=CONFIG.physical_filter, collections=collection,
                           parameters={"strip_astropy_meta_yaml": False})


def test_uncertainties_and_colour_terms_through_the_butler(repo):
    """The uncertainty columns, the colour terms and their metadata survive the butler; the task
    metadata summarises them; with colourTerms=1 the flats still match the truth, now at the
    reference colour, and the flagged entries are still exactly the corrupted ones."""
    separable, coloured = _table_with_metadata(repo, OUTPUT), _table_with_metadata(repo, COLOUR)
    used = separable["flag"] == "USED"
    for table in (separable, coloured):
        assert np.all(np.isfinite(table["exp_scale_err"])) and np.all(table["exp_scale_err"] > 0)
        assert np.all(np.isfinite(table["det_scale_err"][used]))
        assert table.meta["SCALE_ERR_DOF"] > 0
    assert separable.meta["COLOUR_TERMS"] == 0 and "colour_u_1" not in separable.colnames
    assert coloured.meta["COLOUR_TERMS"] == 1 and coloured.meta["COLOUR_CONVERGED"]
    rms = coloured.meta["COLOUR_RMS"]
    assert rms[0] == pytest.approx(separable.meta["LOG_RESIDUAL_RMS"], rel=1e-12) and rms[1] < rms[0]
    assert {"colour_u_1", "colour_v_1"} <= set(coloured.colnames)
    assert _outputs(repo, COLOUR).entries("REJECTED") == repo.truth.expected_rejected("DETECTOR")
    metadata = repo.butler.get("cpFlatNormalize_metadata", instrument="SimFlatCam",
                               physical_filter=CONFIG.physical_filter, collections=COLOUR)
    summary = metadata["cpFlatNormalize"]
    assert summary["colourTerms"] == 1 and len(summary.getArray("colourRms")) == 2
    assert summary["detScaleErrMax"] == pytest.approx(float(np.nanmax(coloured["det_scale_err"])))
    quality = measure_flats(repo, read_flats(repo, COLOUR), colour=repo.truth.reference_colour())
    assert abs(quality.worst_detector()[1]) < 2e-3
    assert abs(quality.detectors[MISSING_DETECTOR].detector_error) < 5e-4
