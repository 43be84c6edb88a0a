# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The flat verification pipeline in a butler repository, against the simulator's truth.

One repository: a flat made by SimFlatCam/cpFlat.yaml from 6 exposures (one entry shadowed), and
6 new exposures with one defect each at a different detector, amplifier or exposure (a gain jump
on detector 2, a low-level, a lamp-off, a gradient and a saturated exposure), and a previous flat
(``previousFlat``) that is the flat but for a dust mote that appeared since on detector 1 and an
amplifier of detector 0 whose response stepped (the change tests' statistics against noise are
`test_flat_change`'s).  SimFlatCam's
verifyFlat.yaml runs on them in this process with pipetask's executor; the verdicts must flag
exactly those defects.  Every other instrument's verifyFlat.yaml builds its quantum graph against
the same repository (a one-detector exposure of that instrument added), and one of them runs
through the ``pipetask run`` command (in this process: tests/pipetask_in_process.py).
"""

import contextlib
import io

import numpy as np
import pytest

from lsst.cp.flatnorm import cli
from lsst.cp.flatnorm.cpVerifyFlat import CpVerifyFlatConfig, CpVerifyFlatTask
from lsst.cp.flatnorm.exposure_records import insert_exposure_records
from lsst.cp.flatnorm.sim.defects import InjectedDefects, dust_mote_profile
from lsst.cp.flatnorm.sim.run import pipeline_uri
from lsst.cp.flatnorm.sim.verify_demo import (
    FLAT_COLLECTION,
    VERIFY_COLLECTION,
    build_verification_repo,
    run_verification,
    small_camera,
)
from lsst.cp.flatnorm.verify_results import read_verdicts
from lsst.daf.butler import Butler, DatasetType
from lsst.pipe.base.simple_pipeline_executor import SimplePipelineExecutor
from flat_repo import flat_instrument
from pipetask_in_process import run_pipetask
from worker_cache import built_once

pytestmark = pytest.mark.slow  # a minute or more: started first (tests/conftest.py)

PREVIOUS_FLAT_RUN = "SimFlatCam/calib/previous"
MOTE = (1, 100.0, 36.0, 3.0, 0.05)
"""Dust mote (detector, x, y, sigma, depth) of the flat and not of the previous flat."""
STEP = (0, "C03", 1.02)
"""Amplifier whose flat stepped since the previous flat, and by how much."""
DEFECTS = InjectedDefects(gain_jump=(2, "C15", 1.1), low_level=(1, 0.03), lamp_off=2, gradient=(3, 0.05))
OTHER_INSTRUMENTS = ("DECam", "HSC", "LSSTCam", "LSSTComCam")
LABELS = {"verifyFlatIsr": 1, "verifyFlatDet": 1, "verifyFlatExp": 1, "verifyFlat": 1}


@pytest.fixture(scope="module")
@built_once
def verified(tmp_path_factory):
    verification = build_verification_repo(tmp_path_factory.mktemp("verify") / "repo", DEFECTS)
    put_previous_flats(verification)
    verdicts = run_verification(verification, extra_inputs=[PREVIOUS_FLAT_RUN])
    butler = Butler.from_config(str(verification.repo.root), collections=VERIFY_COLLECTION)
    return verification, verdicts, butler


def put_previous_flats(verification):
    """The flat of every detector as ``previousFlat``, without MOTE and with STEP undone."""
    butler = Butler.from_config(str(verification.repo.root), writeable=True)
    dataset_type = DatasetType("previousFlat", ("instrument", "detector", "physical_filter"), "MaskedImageV2",
                               universe=butler.dimensions, isCalibration=True)
    butler.registry.registerDatasetType(dataset_type)
    butler.collections.register(PREVIOUS_FLAT_RUN)
    camera = verification.repo.instrument.getCamera()
    for det in camera:
        flat = butler.get("flat", instrument="SimFlatCam", detector=det.getId(), physical_filter="sim_r",
                          collections=FLAT_COLLECTION)
        if det.getId() == MOTE[0]:
            flat.image.array[...] /= dust_mote_profile(flat.image.array.shape, *MOTE[1:])
        if det.getId() == STEP[0]:
            box = next(amp.getBBox() for amp in det if amp.getName() == STEP[1])
            flat.image.array[box.getMinY():box.getMaxY() + 1, box.getMinX():box.getMaxX() + 1] /= STEP[2]
        butler.put(flat, dataset_type, instrument="SimFlatCam", detector=det.getId(), physical_filter="sim_r",
                   run=PREVIOUS_FLAT_RUN)


def exposure_ids(verification):
    return [exposure.id for exposure in verification.simulator.exposures]


def test_verdicts_flag_exactly_the_injected_defects(verified):
    verification, verdicts, _ = verified
    truth = verification.simulator.expected_failures()
    assert truth["amplifiers"] == {(2, "C15"): {"AMP_OFFSET"}}
    # Detector 2's amplifier C15 fails in the two exposures not blamed on their input quality.
    # The flat's change since the previous flat is found once, at its detector and amplifier.
    assert verdicts.failed_detectors() == {
        0: ["C03 CHANGE_AMP_STEP (+2.0%)", "NORMALIZATION_REJECTED (1 of 6 entries)"],
        1: ["CHANGE_FEATURE (1: x=100 y=36 -2.9%)"],
        2: ["C15 AMP_OFFSET (2 of 2 exposures)"],
    }
    shadowed = verification.repo.truth.expected_rejected()
    assert shadowed == {(2024060100003, 0)}
    expected_exposures = {exposure: sorted(tests) for exposure, tests in truth["exposures"].items()}
    expected_exposures[2024060100003] = ["NORMALIZATION_REJECTED (1 of 3 entries)"]
    assert verdicts.failed_exposures() == expected_exposures
    assert set(verdicts.detectors) == {0, 1, 2}
    assert len(verdicts.exposures) == 6 + 6 and not verdicts.success


def test_amplifier_columns_read_back(verified):
    verification, _, butler = verified
    clean = exposure_ids(verification)[0]
    table = butler.get("verifyFlatDetResults", instrument="SimFlatCam", exposure=clean, detector=2)
    amps = table[table["amplifier"] != ""]
    jumped = amps[amps["amplifier"] == "C15"][0]
    assert jumped["FLAT_AMP_OFFSET"] == pytest.approx(0.1, abs=0.005)
    assert not jumped["FLAT_VERIFY_AMP_OFFSET"] and not jumped["FLAT_VERIFY_SUCCESS"]
    others = amps[amps["amplifier"] != "C15"]
    assert np.all(others["FLAT_VERIFY_SUCCESS"]) and np.all(np.abs(others["FLAT_AMP_OFFSET"]) < 0.01)
    # cp_verify's noise test is kept as cp_verify computes it (its outcome depends on the flat's
    # normalization, see test_flat_verification), and not counted; the predicted noise is met to a few
    # per cent.
    assert list(amps["FLAT_VERIFY_NOISE"]) == list(amps["FLAT_NOISE"] <= np.sqrt(amps["FLAT_MEAN"]))
    assert np.all(amps["FLAT_VERIFY_NOISE_PREDICTED"])
    assert np.all(np.abs(amps["FLAT_NOISE"] / amps["FLAT_NOISE_PREDICTED"] - 1) < 0.05)
    # The corrected level follows the lamp: the two clean exposures' levels are in the ratio of their
    # lamp levels (times their colour terms, below 0.3%).
    last = exposure_ids(verification)[5]
    later = butler.get("verifyFlatDetResults", instrument="SimFlatCam", exposure=last, detector=2)
    lamps = [exposure.lamp_level for exposure in verification.simulator.exposures]
    ratio = np.median(later[later["amplifier"] != ""]["FLAT_MEAN"]) / np.median(amps["FLAT_MEAN"])
    assert ratio == pytest.approx(lamps[5] / lamps[0], rel=0.003)
    # The flat's percentiles, copied from its metadata.
    flat = butler.get("flat", instrument="SimFlatCam", detector=2, physical_filter="sim_r",
                      collections=FLAT_COLLECTION)
    median = flat.metadata["LSST CALIB FLAT C15 DISTRIBUTION 50.0-PCT"]
    assert jumped["FLAT_FLAT_DIST_50.0_PCT"] == pytest.approx(median)
    detector_row = table[table["amplifier"] == ""][0]
    assert detector_row["FLAT_DET_VERIFY_SCATTER"]
    # One amplifier of 8 stepped by 10%: a sample standard deviation of 0.1 / sqrt(8).
    scatter = detector_row["FLAT_DET_SCATTER"] / detector_row["FLAT_DET_MEAN"]
    assert scatter == pytest.approx(0.1 / 8**0.5, rel=0.2)


def test_exposure_columns_read_back(verified):
    verification, _, butler = verified
    ids = exposure_ids(verification)
    rows = {exposure: butler.get("verifyFlatExpResults", instrument="SimFlatCam", exposure=exposure)[0]
            for exposure in ids}
    assert rows[ids[0]]["FLAT_SIGNAL_TO_NOISE"] > 80 and rows[ids[0]]["FLAT_VERIFY_SUCCESS"]
    assert 5 < rows[ids[1]]["FLAT_SIGNAL_TO_NOISE"] < 50
    assert not rows[ids[1]]["FLAT_VERIFY_LOW_SIGNAL_TO_NOISE"]
    assert rows[ids[2]]["FLAT_SIGNAL_TO_NOISE"] < 5 and not rows[ids[2]]["FLAT_VERIFY_LAMP_OFF"]
    assert rows[ids[4]]["FLAT_SATURATED_FRACTION"] == pytest.approx(0.1, abs=0.02)
    # cp_verify's absolute scatter fails at any real flux, and is not counted; the relative one passes.
    assert all(not row["FLAT_VERIFY_SCATTER"] and row["FLAT_VERIFY_REL_SCATTER"] for row in rows.values())
    stats = butler.get("verifyFlatStats", instrument="SimFlatCam", physical_filter="sim_r")
    assert stats["PATTERN_RMS"][ids[3]] > 0.01 > 0.002 > stats["PATTERN_RMS"][ids[0]]
    assert ids[2] not in stats["PATTERN_RMS"]
    assert "detector 2 C15 AMP_OFFSET (2 of 2 exposures)" in stats["FAILURES"]


def test_change_columns_read_back(verified):
    """The change since the previous flat: its columns and located features, the same in every exposure."""
    verification, _, butler = verified
    stats = butler.get("verifyFlatStats", instrument="SimFlatCam", physical_filter="sim_r")
    assert stats["CHANGE_APPLICABLE"] == {0: True, 1: True, 2: True}
    ids = exposure_ids(verification)
    for exposure in (ids[0], ids[5]):
        tables = {det: butler.get("verifyFlatDetResults", instrument="SimFlatCam", exposure=exposure,
                                  detector=det) for det in (0, 1, 2)}
        for det, table in tables.items():
            amps, det_row = table[table["amplifier"] != ""], table[table["amplifier"] == ""][0]
            stepped = amps["amplifier"] == (STEP[1] if det == STEP[0] else "")
            assert np.all(amps["FLAT_CHANGE_AMP_STEP"][stepped] == pytest.approx(0.02, abs=0.001))
            assert np.all(np.abs(amps["FLAT_CHANGE_AMP_STEP"][~stepped]) < 0.002)
            assert list(amps["FLAT_VERIFY_CHANGE_AMP_STEP"]) == list(~stepped)
            assert det_row["FLAT_DET_CHANGE_N_FEATURES"] == (1 if det == MOTE[0] else 0)
            assert det_row["FLAT_DET_VERIFY_CHANGE_FEATURE"] == (det != MOTE[0])
            assert det_row["FLAT_DET_VERIFY_CHANGE_LARGE_SCALE"]
            assert det_row["FLAT_DET_CHANGE_LARGE_SCALE"] < 0.002
        det_stats = butler.get("verifyFlatDetStats", instrument="SimFlatCam", exposure=exposure, detector=1)
        (feature,) = det_stats["CHANGE"]["FEATURES"]
        assert (feature["X"], feature["Y"], feature["N_BINS"]) == (100.0, 36.0, 1)
        # The change is between the two flats only: the new images agree with the flat, and the
        # exposure's own failures are none, while the detector's SUCCESS counts the change.
        assert det_stats["FAILURES"] == [] and not det_stats["SUCCESS"]


def test_binned_images(verified):
    verification, _, butler = verified
    data_id = {"instrument": "SimFlatCam", "exposure": exposure_ids(verification)[0], "detector": 1}
    image = butler.get("verifyFlatIsrExp", data_id)
    for name, factor in (("verifyFlatIsrExpBin8", 8), ("verifyFlatIsrExpBin64", 64)):
        binned = butler.get(name, data_id)
        assert binned.image.array.shape == (64 // factor, 256 // factor)
        block = image.image.array[:factor, :factor]
        assert binned.image.array[0, 0] == pytest.approx(block.mean(), rel=1e-5)


def test_config_fields_act(verified):
    """maskNameList and imageStatKeywords change what the detector task measures."""
    verification, _, butler = verified
    saturated = exposure_ids(verification)[4]
    image = butler.get("verifyFlatIsrExp", instrument="SimFlatCam", exposure=saturated, detector=1)
    dimensions = {"instrument": "SimFlatCam", "exposure": saturated, "detector": 1}
    camera = verification.repo.instrument.getCamera()

    def amp_means(**fields):
        config = CpVerifyFlatConfig()
        config.update(**fields)
        stats = CpVerifyFlatTask(config=config).run(image, camera, dimensions).outputStats
        return np.array([amp["MEAN"] for amp in stats["AMP"].values()])

    masked = amp_means()
    # Without SAT in the list the saturated band (100000 e- over 7 of the 64 rows of every amplifier)
    # raises the plain mean of the amplifiers by 60%.
    unmasked = amp_means(maskNameList=["BAD"], imageStatKeywords={"MEAN": "MEAN", "NOISE": "STDEV"})
    assert np.all(unmasked / masked > 1.5)
    medians = amp_means(imageStatKeywords={"MEAN": "MEDIAN", "NOISE": "STDEVCLIP"})
    assert np.all(np.abs(medians / masked - 1) < 0.01) and not np.array_equal(medians, masked)


def test_cli_prints_the_verdicts(verified):
    verification, _, _ = verified
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(["verify", str(verification.repo.root), "--collections", VERIFY_COLLECTION])
    lines = out.getvalue().splitlines()
    assert status == 3
    assert lines[0].startswith("Flat verification of SimFlatCam sim_r (u/verify/verifyFlat/")
    assert lines[0].endswith("): FAILED")
    assert lines[1:5] == ["  0 of 3 detectors passed.",
                          "  detector 0 FAILED: C03 CHANGE_AMP_STEP (+2.0%); NORMALIZATION_REJECTED (1 of 6 "
                          "entries)",
                          "  detector 1 FAILED: CHANGE_FEATURE (1: x=100 y=36 -2.9%)",
                          "  detector 2 FAILED: C15 AMP_OFFSET (2 of 2 exposures)"]
    assert "  7 of 12 exposures passed." in lines


def add_instrument(butler, name, verification):
    """Register ``name`` with SimFlatCam's camera, one exposure of one detector, and a flat."""
    simulator = verification.simulator
    instrument = flat_instrument(name, small_camera(name), {"sim_r": "r"})
    instrument.register(butler.registry)
    instrument.write_camera(butler)
    exposure = simulator.exposures[0]
    insert_exposure_records(butler, name, [exposure])
    run = inputs_of(name)[0]
    butler.collections.register(run)
    butler.put(simulator.make_image(exposure.id, 0), "cpFlatIsrExp", instrument=name, exposure=exposure.id,
               detector=0, run=run)
    flat = butler.get("flat", instrument="SimFlatCam", detector=0, physical_filter="sim_r",
                      collections=FLAT_COLLECTION)
    flat_type = DatasetType("flat", ("instrument", "detector", "physical_filter"), "MaskedImageV2",
                            universe=butler.dimensions, isCalibration=True)
    butler.put(flat, flat_type, instrument=name, detector=0, physical_filter="sim_r", run=run)
    return inputs_of(name)


def test_every_instrument_pipeline_builds_its_graph(verified):
    verification, _, _ = verified
    root = str(verification.repo.root)
    butler = Butler.from_config(root, writeable=True)
    for name in OTHER_INSTRUMENTS:
        inputs = add_instrument(butler, name, verification)
        graph_butler = SimplePipelineExecutor.prep_butler(root, inputs=inputs, output=f"u/{name}/verifyFlat")
        executor = SimplePipelineExecutor.from_pipeline_filename(
            pipeline_uri(name, "verifyFlat.yaml"), butler=graph_butler)
        graph = executor.quantum_graph
        assert {label: len(graph.get_task_quanta(label)) for label in LABELS} == LABELS, name
    # One of them through the command line, as a user runs it.
    run_pipetask(root, pipeline_uri("HSC", "verifyFlat.yaml"), inputs_of("HSC"), "u/HSC/cli")
    cli_butler = Butler.from_config(root, collections="u/HSC/cli")
    table = cli_butler.get("verifyFlatResults", instrument="HSC", physical_filter="sim_r")
    assert read_verdicts(table).detectors == {0: []}
    # Without a previous flat the change tests are not applicable, and not failed.
    stats = cli_butler.get("verifyFlatStats", instrument="HSC", physical_filter="sim_r")
    assert stats["CHANGE_APPLICABLE"] == {0: False}
    det_stats = cli_butler.get("verifyFlatDetStats", instrument="HSC", detector=0,
                               exposure=verification.simulator.exposures[0].id)
    assert det_stats["CHANGE"] == {"APPLICABLE": False, "FAILURES": [], "FEATURES": []}


def inputs_of(name):
    """The input collections of an instrument added by `add_instrument`."""
    return [f"{name}/verify/inputs", f"{name}/calib"]
