# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Colour terms on simulated flats: two sensor families under a lamp whose colour drifts, one
detector missing the exposures of extreme colour, through the real measure, normalize and
combine tasks (in memory), against the simulator's true response at the reference colour."""

import dataclasses

import numpy as np
import pytest

from lsst.cp.flatnorm.cpCombine import CpFlatCombineTask
from lsst.cp.flatnorm.cpFlatMeasure import CpFlatMeasureTask
from lsst.cp.flatnorm.cpFlatNormalize import CpFlatNormalizationTask
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_quality import amplifier_regions, measure_mosaic_quality, response_ratio
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig, FlatSimulator

CAMERA = make_sim_camera(n_side=3, n_wavefront=0, amp_width=16, amp_height=32, physical_types=("ITL", "E2V"))
MISSING_DETECTOR = 2
N_MISSING = 3
BASE = FlatSimConfig(n_exposures=10, family_colour_slopes=(("ITL", 0.01), ("E2V", -0.01)), colour_drift=1.0,
                     colour_half_range=0.1, dead_amplifier=None, shadow=None, saturation=None)


def _config():
    colours = [exposure.colour for exposure in FlatSimulator(CAMERA, BASE).exposures]
    reddest = sorted(np.argsort(colours)[-N_MISSING:].tolist())
    return dataclasses.replace(BASE, missing_images=tuple((i, MISSING_DETECTOR) for i in reddest))


class _Handle:
    """An in-memory stand-in for the combine's deferred dataset handles."""

    def __init__(self, image, exposure, detector):
        self.image = image
        self.dataId = {"instrument": "SimFlatCam", "exposure": exposure, "detector": detector}

    def get(self, *, component=None, parameters=None):
        if component == "bbox":
            return self.image.bbox
        return self.image if parameters is None else self.image[parameters["bbox"]]


@pytest.fixture(scope="module")
def chain():
    """Simulate, measure, then normalize and combine with colourTerms 0 and 1 (pipeline configs)."""
    sim = FlatSimulator(CAMERA, _config())
    measure = CpFlatMeasureTask()
    measure.config.maskNameList = ["DETECTED", "BAD", "NO_DATA", "SAT", "SATURATED"]
    images, mds, dims = {}, [], []
    for exposure in sim.exposures:
        for det in CAMERA:
            if sim.has_image(exposure.id, det.getId()):
                image = sim.make_image(exposure.id, det.getId())
                images.setdefault(det.getId(), []).append(_Handle(image, exposure.id, det.getId()))
                mds.append(measure.run(image, CAMERA, det.getId()).outputStats)
                dims.append({"instrument": "SimFlatCam", "exposure": exposure.id, "detector": det.getId()})
    combine = CpFlatCombineTask()
    for name, value in {"calibrationType": "flat", "exposureScaling": "InputList",
                        "mask": ["BAD", "SAT", "NO_DATA", "DETECTED"]}.items():
        setattr(combine.config, name, value)
    results = {}
    for n_terms in (0, 1):
        config = CpFlatNormalizationTask.ConfigClass()
        config.colourTerms = n_terms
        outputs = CpFlatNormalizationTask(config=config).run(mds, dims, CAMERA)
        flats = {det: combine.run(handles, CAMERA, det, outputs.outputScales).outputData.image.array
                 for det, handles in images.items()}
        results[n_terms] = (outputs, flats)
    return sim, results


def _quality(sim, flats, colour):
    truth = sim.truth
    ratios = {det: response_ratio(flat, truth.pixel_response(det, colour=colour), truth.usable_pixels(det))
              for det, flat in flats.items()}
    return measure_mosaic_quality(ratios, {det: amplifier_regions(CAMERA[det]) for det in flats},
                                  {det: 5 * truth.flat_noise(det) for det in flats})


def test_the_simulation_has_families_drift_and_the_missing_reddest(chain):
    sim, _ = chain
    colours = np.array([exposure.colour for exposure in sim.exposures])
    missing = {exposure for exposure, _ in sim.truth.missing_images()}
    kept = [exposure.colour for exposure in sim.exposures if exposure.id not in missing]
    assert min(sim.exposures[i].colour for i in range(10) if sim.exposures[i].id in missing) > max(kept)
    assert np.corrcoef(np.arange(10), colours)[0, 1] > 0.95
    slopes = {det.getId(): sim.truth.colour_slope(det.getId()) for det in CAMERA}
    itl = [slopes[det.getId()] for det in CAMERA if det.physical_type == "ITL"]
    e2v = [slopes[det.getId()] for det in CAMERA if det.physical_type == "E2V"]
    assert min(itl) > max(e2v)


def test_flat_error_of_the_detector_missing_the_extreme_colours_is_ten_times_smaller(chain):
    """colourTerms=0 leaves that detector's flat at the mean colour of its own exposures, off by
    its colour slope times that colour's distance from the reference (~1e-3); colourTerms=1 puts
    every exposure on the reference colour."""
    sim, results = chain
    reference = sim.truth.reference_colour()
    errors = {k: _quality(sim, flats, reference) for k, (_, flats) in results.items()}
    missing_colours = [e.colour for e in sim.exposures
                       if not sim.has_image(e.id, MISSING_DETECTOR)]
    kept_colours = [e.colour for e in sim.exposures if sim.has_image(e.id, MISSING_DETECTOR)]
    assert len(missing_colours) == N_MISSING
    separable = errors[0].detectors[MISSING_DETECTOR].detector_error
    expected = sim.truth.colour_slope(MISSING_DETECTOR) * (np.mean(kept_colours) - reference)
    assert separable == pytest.approx(expected, rel=0.1)
    assert abs(separable) > 1e-3
    coloured = errors[1].detectors[MISSING_DETECTOR].detector_error
    assert abs(coloured) * 10 <= abs(separable), (separable, coloured)
    # No other detector gets worse beyond the noise, and the mosaic as a whole gets better.
    assert errors[1].detector_rms() < errors[0].detector_rms() / 3
    assert abs(errors[1].worst_detector()[1]) < 1e-4


def test_scale_tables_and_dictionaries(chain):
    sim, results = chain
    separable, coloured = results[0][0], results[1][0]
    assert separable.outputScaleTable.meta["COLOUR_TERMS"] == 0
    table = coloured.outputScaleTable
    assert table.meta["COLOUR_TERMS"] == 1 and table.meta["COLOUR_CONVERGED"]
    rms0, rms1 = table.meta["COLOUR_RMS"]
    assert rms0 == pytest.approx(separable.outputScaleTable.meta["LOG_RESIDUAL_RMS"], rel=1e-12)
    assert rms1 < rms0 / 5
    # u separates the families; v follows the lamp colour.
    first = table[table["exposure"] == sim.exposures[0].id]
    u = {int(r["detector"]): r["colour_u_1"] for r in first}
    itl = [u[d.getId()] for d in CAMERA if d.physical_type == "ITL"]
    e2v = [u[d.getId()] for d in CAMERA if d.physical_type == "E2V"]
    assert min(itl) > max(e2v)
    v = {int(r["exposure"]): r["colour_v_1"] for r in table[table["detector"] == 0]}
    colours = {e.id: e.colour for e in sim.exposures}
    assert np.corrcoef([v[e] for e in v], [colours[e] for e in v])[0, 1] > 0.999
    exp_scale = coloured.outputScales["expScale"]
    assert exp_scale[0]["C10"] != exp_scale[1]["C10"]  # the families' entries differ
    assert exp_scale[0]["C10"] == exp_scale[0]["C07"]  # one scale per detector at DETECTOR level
