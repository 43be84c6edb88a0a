# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Every bad-input kind of the reliability page (doc/lsst.cp.flatnorm/reliability.rst) through pipetask.

One small on-disk repository holds one physical filter per kind (or per group of kinds that do not
stop the chain), so that a few ``pipetask run`` calls cover them all: the images' kinds through the
whole chain, the statistics' kinds through normalize -> combine, the scales' kinds through the
combine, the config's kinds at start-up.  For each kind the test checks a clear error naming the
data ID and the key, or a logged, flagged rejection (table flags, the dictionary's ``flags``, task
metadata counts, the quanta's logs read back from the butler); no partial output of a failed
quantum; and no flat pixel that is not finite and positive left unmasked, in any flat.
"""

import math

import numpy as np
import pytest

from lsst.cp.flatnorm.scale_dictionary import ScaleDictionaryError, build_scale_dictionary
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig, FlatSimulator
from lsst.cp.flatnorm.sim.repo import build_sim_repo
from lsst.daf.butler import Butler, DatasetType
from lsst.images import Box
from lsst.pipe.base import TaskMetadata
from flat_repo import PIPETASK, add_images, flat_instrument, log_lines, run_pipetask, synthetic_statistics
from worker_cache import built_once

pytestmark = pytest.mark.slow

PIPELINE = "resource://lsst.cp.flatnorm/pipelines/_ingredients/cpFlat.yaml"
INSTRUMENT = "RelCam"
CAMERA = make_sim_camera(n_side=1, amp_width=4, amp_height=4, n_wavefront=1, name=INSTRUMENT)
SCIENCE, WAVEFRONT = 0, 1
AMPS = {det.getId(): [amp.getName() for amp in det] for det in CAMERA}
AMP_PIXELS = 16
DEAD_AMP = "C03"
"""The science detector's amplifier with no signal (images) or no valid level (statistics)."""
MASKED_AMP = "C12"
"""A wavefront amplifier all BAD in one image."""

# Kinds that go through the whole chain (their images are bad).
IMAGE_FILTERS = {
    "img_flaws": "dead amplifier, shadowed entry, NaN pixels, fully masked amplifier, missing image",
    "img_dark": "an exposure with no light on any detector",
    "img_shape": "an image whose shape is not the detector's",
}
# Kinds that go through normalize -> combine (their statistics are bad).
STATISTICS_FILTERS = {
    "st_flagged": "NaN, zero, negative and infinite levels, a zero count, an amplifier with no valid level",
    "st_missing_key": "a missing statistic",
    "st_text": "a statistic that is text",
    "st_extra_amp": "amplifier keys beyond the camera's",
    "st_unknown_amp": "an amplifier name the camera's detector does not have",
    "st_twice_amp": "an amplifier named twice",
    "st_disconnected": "exposures that share no detector",
    "st_no_match": "down-selection matching no exposure",
}
# Kinds that go through the combine (their scales are bad).
SCALES_FILTERS = {
    "sc_no_expscale": "a scale dictionary without expScale",
    "sc_bad_scale": "exposure scales that are NaN, negative, zero or missing",
}
FILTERS = {**STATISTICS_FILTERS, **IMAGE_FILTERS, **SCALES_FILTERS}
FAILING = {"img_shape", "st_missing_key", "st_text", "st_extra_amp", "st_unknown_amp",
           "st_twice_amp", "st_disconnected", "st_no_match", "sc_no_expscale"}
"""Filters that get no scales, no scale table and no flat."""

OUTPUTS = {"images": "u/rel/images", "statistics": "u/rel/statistics", "scales": "u/rel/scales"}
STATISTICS_RUN = "rel/statistics"
SCALES_RUN = "rel/scales"


def _config(index, physical_filter, **overrides):
    # A bright lamp: Poisson noise of ~1e-4 on an amplifier's 16 pixels, far below the rejection floor
    # (0.5%), so that only the shadow is an outlier whatever the seed.
    values = {"n_exposures": 4, "seed": 100 + index, "physical_filter": physical_filter, "lamp_rate": 1e6,
              "day_obs": 20240601 + index, "start_time": f"2024-06-{1 + index:02d}T20:00:00",
              "dead_amplifier": None, "shadow": None, "saturation": None, "n_cosmic_rays": 0,
              "n_defect_columns": 0, **overrides}
    return FlatSimConfig(**values)


def _amp_box(detector, amp):
    box = CAMERA[detector][amp].getBBox()
    return slice(box.getMinY(), box.getMaxY() + 1), slice(box.getMinX(), box.getMaxX() + 1)


def _change_flaws(index, detector, image):
    if (index, detector) == (2, WAVEFRONT):
        image.image.array[0, :] = np.nan  # a row of NaN pixels that no mask plane marks
    if (index, detector) == (0, WAVEFRONT):
        bad = np.zeros(image.image.array.shape, bool)
        bad[_amp_box(WAVEFRONT, MASKED_AMP)] = True
        image.mask.set("BAD", bad)
    return image


def _change_dark(index, detector, image):
    if index == 1:
        image.image.array[...] = 0.0
    return image


def _change_shape(index, detector, image):
    if (index, detector) == (0, SCIENCE):
        return image[Box.factory[0:4, 0:32]]
    return image


def _corrupt_statistics(physical_filter, statistics, exposures):
    """Make each statistics filter's kind; return the statistics to put."""
    e = exposures
    if physical_filter == "st_flagged":
        index = {det: {name: i for i, name in enumerate(amps)} for det, amps in AMPS.items()}
        statistics[e[0], SCIENCE][f"AMP_MEDIAN_{index[SCIENCE]['C10']}"] = math.nan
        statistics[e[1], SCIENCE][f"AMP_MEDIAN_{index[SCIENCE]['C11']}"] = 0.0
        statistics[e[2], SCIENCE][f"AMP_MEDIAN_{index[SCIENCE]['C12']}"] = -5.0
        statistics[e[3], WAVEFRONT][f"AMP_N_{index[WAVEFRONT]['C13']}"] = 0
        statistics[e[0], WAVEFRONT][f"AMP_MEDIAN_{index[WAVEFRONT]['C14']}"] = math.inf
        for exposure in e:
            statistics[exposure, SCIENCE][f"AMP_MEDIAN_{index[SCIENCE][DEAD_AMP]}"] = 0.0
    elif physical_filter == "st_missing_key":
        del statistics[e[1], WAVEFRONT]["AMP_N_3"]
    elif physical_filter == "st_text":
        statistics[e[2], SCIENCE]["AMP_MEDIAN_2"] = "not-a-number"
    elif physical_filter == "st_extra_amp":
        md = statistics[e[3], WAVEFRONT]
        md["AMP_NAME_8"], md["AMP_MEDIAN_8"], md["AMP_N_8"] = "C20", 1000.0, AMP_PIXELS
    elif physical_filter == "st_unknown_amp":
        statistics[e[1], SCIENCE]["AMP_NAME_3"] = "C99"
    elif physical_filter == "st_twice_amp":
        statistics[e[2], WAVEFRONT]["AMP_NAME_5"] = statistics[e[2], WAVEFRONT]["AMP_NAME_2"]
    elif physical_filter == "st_disconnected":
        for pair in ((e[0], WAVEFRONT), (e[1], WAVEFRONT), (e[2], SCIENCE), (e[3], SCIENCE)):
            del statistics[pair]
    return statistics


def _scales(physical_filter, exposures):
    if physical_filter == "sc_no_expscale":
        return {"detScale": {SCIENCE: 1.0, WAVEFRONT: 1.0}}
    scales = build_scale_dictionary("DETECTOR", exposures=exposures, row_detectors=[SCIENCE, WAVEFRONT],
                                    row_amplifiers=["", ""], e_values=[1.0] * len(exposures),
                                    g_values=[1.0, 1.0], amp_names=AMPS)
    for amp in AMPS[SCIENCE]:
        scales["expScale"][SCIENCE][amp][exposures[1]] = math.nan
        scales["expScale"][SCIENCE][amp][exposures[2]] = -1.0
    for amp in AMPS[WAVEFRONT]:
        scales["expScale"][WAVEFRONT][amp][exposures[2]] = 0.0
        del scales["expScale"][WAVEFRONT][amp][exposures[3]]
    return scales


class Repository:
    """The repository, the simulators of its filters and the pipetask runs."""

    def __init__(self, root):
        instrument = flat_instrument(INSTRUMENT, CAMERA, dict.fromkeys(FILTERS, "r"))
        self.simulators = {}
        for index, physical_filter in enumerate(FILTERS):
            overrides = {}
            if physical_filter == "img_flaws":
                overrides = {"dead_amplifier": (SCIENCE, DEAD_AMP), "shadow": (1, SCIENCE),
                             "missing_images": ((3, WAVEFRONT),)}
            elif physical_filter == "st_no_match":
                overrides = {"observation_reasons": ("dark",)}
            config = _config(index, physical_filter, **overrides)
            self.simulators[physical_filter] = FlatSimulator(CAMERA, config)
        first, *others = FILTERS  # a statistics filter: its images are clean
        self.repo = build_sim_repo(root, instrument=instrument, simulator=self.simulators[first])
        changes = {"img_flaws": _change_flaws, "img_dark": _change_dark, "img_shape": _change_shape}
        for physical_filter in others:
            add_images(self.repo.butler, INSTRUMENT, self.simulators[physical_filter], self.repo.image_run,
                       changes.get(physical_filter))
        self._put_statistics()
        self._put_scales()
        self.processes = self._run()
        self.butler = Butler.from_config(str(root))

    def output_runs(self):
        """The RUN collection of each pipetask run that wrote outputs (the first child of its -o chain)."""
        return [self.butler.collections.get_info(chain).children[0] for chain in OUTPUTS.values()]

    def exposures(self, physical_filter):
        return [exposure.id for exposure in self.simulators[physical_filter].exposures]

    def _put_statistics(self):
        butler = self.repo.butler
        butler.registry.registerDatasetType(DatasetType(
            "cpFlatStatistics", ("instrument", "exposure", "detector"), "TaskMetadata",
            universe=butler.dimensions))
        butler.collections.register(STATISTICS_RUN)
        for index, physical_filter in enumerate(STATISTICS_FILTERS):
            exposures = self.exposures(physical_filter)
            statistics = synthetic_statistics(CAMERA, exposures, index)
            statistics = _corrupt_statistics(physical_filter, statistics, exposures)
            for (exposure, detector), md in statistics.items():
                butler.put(md, "cpFlatStatistics", instrument=INSTRUMENT, exposure=exposure,
                           detector=detector, run=STATISTICS_RUN)

    def _put_scales(self):
        butler = self.repo.butler
        butler.registry.registerDatasetType(DatasetType(
            "cpFlatNormalizeScales", ("instrument", "physical_filter"), "StructuredDataDict",
            universe=butler.dimensions))
        butler.collections.register(SCALES_RUN)
        for physical_filter in SCALES_FILTERS:
            butler.put(_scales(physical_filter, self.exposures(physical_filter)), "cpFlatNormalizeScales",
                       instrument=INSTRUMENT, physical_filter=physical_filter, run=SCALES_RUN)

    def _run(self):
        root, defaults = self.repo.root, self.repo.defaults_collection

        def query(filters):
            return f"instrument='{INSTRUMENT}' AND physical_filter IN ({', '.join(map(repr, filters))})"

        amp_level = ("-c", "cpFlatNormalize:level=AMP")
        down_selection = ("-c", "cpFlatNormalize:doDownSelection=True",
                          "-c", "cpFlatNormalize:downSelectionValue=flat")
        # pipetask's command in this process: no run here is killed or tests the program itself.
        return {
            "images": run_pipetask(root, [defaults], OUTPUTS["images"], PIPELINE, *amp_level,
                                   query=query(IMAGE_FILTERS), in_process=True),
            "statistics": run_pipetask(root, [STATISTICS_RUN, defaults], OUTPUTS["statistics"],
                                       f"{PIPELINE}#cpFlatNormalize,cpFlatCombine", *amp_level,
                                       *down_selection, query=query(STATISTICS_FILTERS), in_process=True),
            "scales": run_pipetask(root, [SCALES_RUN, defaults], OUTPUTS["scales"],
                                   f"{PIPELINE}#cpFlatCombine", query=query(SCALES_FILTERS), in_process=True),
            "normalize_config": run_pipetask(root, [defaults], "u/rel/config1", PIPELINE,
                                             "-c", "cpFlatNormalize:scaleMaxIter=0",
                                             query=query(["img_flaws"]), in_process=True),
            "combine_config": run_pipetask(root, [defaults], "u/rel/config2", PIPELINE,
                                           "-c", "cpFlatCombine:subregionSize=[0, 200]",
                                           query=query(["img_flaws"]), in_process=True),
        }


@pytest.fixture(scope="module")
@built_once
def rel(tmp_path_factory):
    if not PIPETASK.exists():
        pytest.skip("pipetask is not installed beside this interpreter")
    return Repository(tmp_path_factory.mktemp("reliability") / "repo")


def _refs(rel, dataset_type, physical_filter, **data_id):
    """Every dataset of the type and filter in any output collection of the runs."""
    data_id = {"instrument": INSTRUMENT, "physical_filter": physical_filter, **data_id}
    query = rel.butler.query_datasets
    return [ref for run in rel.output_runs()
            for ref in query(dataset_type, collections=run, data_id=data_id, explain=False)]


def _one(rel, dataset_type, physical_filter, **data_id):
    refs = _refs(rel, dataset_type, physical_filter, **data_id)
    assert len(refs) == 1, (dataset_type, physical_filter, data_id, refs)
    return rel.butler.get(refs[0])


def _messages(rel, label, physical_filter, level="WARNING", **data_id):
    """The messages at ``level`` of the quantum's log, read back from the butler."""
    return [record.message for record in _one(rel, f"{label}_log", physical_filter, **data_id)
            if record.levelname == level]


def _failure_line(label, data_id, error):
    """The executor's line for a failed quantum, as pipetask prints it."""
    return (f"lsst.pipe.base.single_quantum_executor ERROR: Execution of task '{label}' on quantum {data_id} "
            f"failed. Exception {type(error).__name__}: {error}")


def test_runs_fail_for_the_bad_kinds_only(rel):
    for name in ("images", "statistics", "scales", "normalize_config", "combine_config"):
        assert rel.processes[name].returncode == 1, (name, rel.processes[name].stderr[-3000:])
    for name in ("images", "statistics", "scales"):
        assert ("lsst.pipe.base.mp_graph_executor.MPGraphExecutorError: One or more tasks failed during "
                "execution.") in log_lines(rel.processes[name])


def test_no_flat_pixel_that_is_not_finite_and_positive_is_unmasked(rel):
    with_flats = set()
    for run in rel.output_runs():
        for ref in rel.butler.query_datasets("flat", collections=run, explain=False):
            flat = rel.butler.get(ref)
            image, masked = flat.image.array, flat.mask.array.any(axis=-1)
            bad = ~(np.isfinite(image) & (image > 0))
            assert not (bad & ~masked).any(), ref
            assert flat.metadata["CP_COMBINE_N_NOT_POSITIVE"] == int(bad.sum()), ref
            with_flats.add((ref.dataId["physical_filter"], ref.dataId["detector"]))
    assert with_flats == {(f, det) for f in set(FILTERS) - FAILING for det in (SCIENCE, WAVEFRONT)}


@pytest.mark.parametrize("physical_filter", sorted(FAILING))
def test_failed_kinds_leave_no_partial_output(rel, physical_filter):
    for dataset_type in ("cpFlatNormalizeScales", "cpFlatNormalizeScaleTable", "flat",
                         "cpFlatNormalize_metadata", "cpFlatCombine_metadata"):
        assert _refs(rel, dataset_type, physical_filter) == [], (physical_filter, dataset_type)


def _statistics_error(rel, physical_filter, exposure_index, detector):
    exposure = rel.exposures(physical_filter)[exposure_index]
    return f"Flat statistics for {{instrument={INSTRUMENT}, detector={detector}, exposure={exposure}}}"


def _expected_errors(rel):
    """(label, data ID of the failed quantum, exception) of each failing kind."""
    normalize = {f: {"instrument": INSTRUMENT, "physical_filter": f} for f in FILTERS}
    e = rel.exposures
    amps = ", ".join(AMPS[SCIENCE])
    no_expscale = ("The scales of cpFlatNormalizeScales {instrument: 'RelCam', physical_filter: "
                   "'sc_no_expscale', band: 'r'} have no 'expScale' entry (their keys: ['detScale']), so no "
                   "exposure can be scaled; they are not the normalization's output.")
    return {
        "img_shape": [("cpFlatMeasure", {"instrument": INSTRUMENT, "exposure": e("img_shape")[0],
                                         "detector": SCIENCE},
                       ValueError("Detector 0: image shape (ny, nx) = (4, 32) does not match the camera's "
                                  "detector shape (8, 32)."))],
        "st_missing_key": [("cpFlatNormalize", normalize["st_missing_key"], KeyError(
            f"{_statistics_error(rel, 'st_missing_key', 1, WAVEFRONT)} have no 'AMP_N_3' entry."))],
        "st_text": [("cpFlatNormalize", normalize["st_text"], ValueError(
            f"{_statistics_error(rel, 'st_text', 2, SCIENCE)} have 'AMP_MEDIAN_2' = 'not-a-number', which is "
            "not a number."))],
        "st_extra_amp": [("cpFlatNormalize", normalize["st_extra_amp"], ValueError(
            f"{_statistics_error(rel, 'st_extra_amp', 3, WAVEFRONT)} have amplifier keys beyond the 8 "
            "amplifiers of detector 1 in the camera (indices 0 to 7): 'AMP_MEDIAN_8' = 1000.0, "
            "'AMP_NAME_8' = 'C20', 'AMP_N_8' = 16.0. Were they measured with another camera?"))],
        "st_unknown_amp": [("cpFlatNormalize", normalize["st_unknown_amp"], ValueError(
            f"{_statistics_error(rel, 'st_unknown_amp', 1, SCIENCE)} have 'AMP_NAME_3' = 'C99', an amplifier "
            f"that detector 0 of the camera does not have (it has {amps})."))],
        "st_twice_amp": [("cpFlatNormalize", normalize["st_twice_amp"], ValueError(
            f"{_statistics_error(rel, 'st_twice_amp', 2, WAVEFRONT)} name amplifier "
            f"'{AMPS[WAVEFRONT][2]}' twice, in 'AMP_NAME_2' and 'AMP_NAME_5'."))],
        "st_disconnected": [("cpFlatNormalize", normalize["st_disconnected"], ValueError(
            "The flat statistics split into unconnected groups; set disconnectedPolicy='SEPARATE' to solve "
            f"each on its own gauge. Group 0: detectors [0], exposures {e('st_disconnected')[:2]}. Group 1: "
            f"detectors [1], exposures {e('st_disconnected')[2:]}."))],
        "sc_no_expscale": [("cpFlatCombine", {"instrument": INSTRUMENT, "detector": detector,
                                              "physical_filter": "sc_no_expscale"},
                            ScaleDictionaryError(no_expscale)) for detector in (SCIENCE, WAVEFRONT)],
    }


def test_errors_name_the_data_id_and_the_key(rel):
    """Each failing quantum's log (read back from the butler) ends with the error; pipetask prints it
    with the quantum's data ID."""
    lines = [line for name in ("images", "statistics", "scales") for line in log_lines(rel.processes[name])]
    expected = _expected_errors(rel)
    assert set(expected) == FAILING - {"st_no_match"}
    for physical_filter, failures in expected.items():
        for label, data_id, error in failures:
            message = f"Exception {type(error).__name__}: {error}"
            quantum = {k: v for k, v in data_id.items() if k not in ("instrument", "physical_filter")}
            errors = _messages(rel, label, physical_filter, level="ERROR", **quantum)
            assert any(message in line for line in errors), (physical_filter, errors)
            printed = [line for line in lines if line.startswith(
                f"lsst.pipe.base.single_quantum_executor ERROR: Execution of task '{label}' on quantum {{")
                and line.endswith(f" failed. {message}")
                and all(f"{key}: {value!r}" in line for key, value in data_id.items())]
            assert len(printed) == 1, (physical_filter, label, data_id, message)


def test_down_selection_without_match_is_a_warning_naming_the_filter(rel):
    assert ("lsst.cpFlatNormalize WARNING: cpFlatNormalize {instrument: 'RelCam', physical_filter: "
            "'st_no_match', band: 'r'}: no input exposure has observation_reason matching 'flat' (ignoring "
            "case); the 8 inputs have 'dark'. No scales are written for this data ID."
            ) in log_lines(rel.processes["statistics"])


def test_out_of_range_config_stops_before_any_work(rel):
    for name, message in (
        ("normalize_config", "lsst.pex.config.config.FieldValidationError: RangeField 'scaleMaxIter' failed "
                             "validation: 0 is outside of valid range [1,inf)"),
        ("combine_config", "lsst.pex.config.config.FieldValidationError: ListField 'subregionSize' failed "
                           "validation: every item must be in [1,inf); got [0, 200]"),
    ):
        assert message in log_lines(rel.processes[name]), name
    assert rel.butler.collections.query("u/rel/config*") == []


def test_image_flaws_are_logged_and_flagged(rel):
    """Dead amplifier, shadowed entry, NaN pixels, a fully masked amplifier and a missing image: the
    run goes on; every flaw is flagged in the scale table, counted in the metadata, logged, and the
    dead amplifier is masked in the flat."""
    e = rel.exposures("img_flaws")
    shadow = next(c for c in rel.simulators["img_flaws"].truth.corruptions if c.kind == "shadow")
    invalid = {(exposure, SCIENCE, DEAD_AMP) for exposure in e} | {(e[0], WAVEFRONT, MASKED_AMP)}
    rejected = {(e[1], SCIENCE, amp) for amp in shadow.amplifiers if amp != DEAD_AMP}
    assert len(rejected) >= 4
    table = _one(rel, "cpFlatNormalizeScaleTable", "img_flaws")
    flagged = {flag: {(int(row["exposure"]), int(row["detector"]), str(row["amplifier"]))
                      for row in table[table["flag"] == flag]} for flag in ("INVALID", "REJECTED")}
    assert flagged == {"INVALID": invalid, "REJECTED": rejected}
    assert not np.any((table["exposure"] == e[3]) & (table["detector"] == WAVEFRONT))  # no image
    counts = _one(rel, "cpFlatNormalize_metadata", "img_flaws")["cpFlatNormalize"]
    assert (counts["nInvalid"], counts["nRejected"]) == (len(invalid), len(rejected))
    scales = _one(rel, "cpFlatNormalizeScales", "img_flaws")
    assert scales["flags"] == {SCIENCE: {DEAD_AMP: "NO_VALID_ENTRY"}}
    assert np.isnan(scales["detScale"][SCIENCE][DEAD_AMP])
    assert np.isfinite(scales["detScale"][WAVEFRONT][MASKED_AMP])  # measured in two exposures
    warnings = _messages(rel, "cpFlatNormalize", "img_flaws")
    for exposure in e:
        assert (f"Flat level 0 with {AMP_PIXELS} pixels for {{exposure={exposure}, detector=0, "
                f"amp={DEAD_AMP}}} is invalid; excluded.") in warnings
    assert (f"Flat level nan with 0 pixels for {{exposure={e[0]}, detector=1, amp={MASKED_AMP}}} is invalid; "
            "excluded.") in warnings
    assert (f"No usable flat level for detector=0, amp={DEAD_AMP}: its scale is NaN and it is flagged."
            in warnings)
    assert sorted(line.split(":")[0] for line in warnings if line.startswith("Rejected outlier")) == sorted(
        f"Rejected outlier {{exposure={exposure}, detector={detector}, amp={amp}}}"
        for exposure, detector, amp in rejected)
    assert (f"Detector 1 amplifier {MASKED_AMP} has no unmasked pixel; its statistics are NaN."
            in _messages(rel, "cpFlatMeasure", "img_flaws", exposure=e[0], detector=WAVEFRONT))
    flat = _one(rel, "flat", "img_flaws", detector=SCIENCE)
    dead = np.zeros(flat.image.array.shape, bool)
    dead[_amp_box(SCIENCE, DEAD_AMP)] = True
    np.testing.assert_array_equal(flat.mask.get("BAD"), dead)
    assert np.all(flat.image.array[dead] == 0.0)
    assert flat.metadata["CP_COMBINE_N_NOT_POSITIVE"] == AMP_PIXELS
    assert flat.metadata[f"LSST CALIB FLAT {DEAD_AMP} BADPIX-NUM"] == AMP_PIXELS
    assert (f"Detector 0: {AMP_PIXELS} pixels of the flat are not finite and positive ({DEAD_AMP}: "
            f"{AMP_PIXELS}); masked BAD, so that flat-fielding never divides by them."
            in _messages(rel, "cpFlatCombine", "img_flaws", detector=SCIENCE))
    flat = _one(rel, "flat", "img_flaws", detector=WAVEFRONT)
    assert np.all(np.isfinite(flat.image.array)) and not flat.mask.get("BAD").any()
    assert flat.metadata["CP_COMBINE_N_INPUTS"] == 3


def test_invalid_statistics_are_logged_and_flagged(rel):
    e = rel.exposures("st_flagged")
    invalid = {(e[0], SCIENCE, "C10"), (e[1], SCIENCE, "C11"), (e[2], SCIENCE, "C12"),
               (e[3], WAVEFRONT, "C13"), (e[0], WAVEFRONT, "C14")}
    invalid |= {(exposure, SCIENCE, DEAD_AMP) for exposure in e}
    table = _one(rel, "cpFlatNormalizeScaleTable", "st_flagged")
    assert {(int(row["exposure"]), int(row["detector"]), str(row["amplifier"]))
            for row in table[table["flag"] != "USED"]} == invalid
    assert set(table["flag"][table["flag"] != "USED"]) == {"INVALID"}
    counts = _one(rel, "cpFlatNormalize_metadata", "st_flagged")["cpFlatNormalize"]
    assert (counts["nInvalid"], counts["nRejected"], counts["nUsed"]) == (9, 0, 24 * 4 - 9)
    scales = _one(rel, "cpFlatNormalizeScales", "st_flagged")
    assert scales["flags"] == {SCIENCE: {DEAD_AMP: "NO_VALID_ENTRY"}}
    warnings = _messages(rel, "cpFlatNormalize", "st_flagged")
    for value, (exposure, detector, amp) in (("nan", (e[0], 0, "C10")), ("0", (e[1], 0, "C11")),
                                             ("-5", (e[2], 0, "C12")), ("inf", (e[0], 1, "C14"))):
        assert (f"Flat level {value} with {AMP_PIXELS} pixels for {{exposure={exposure}, "
                f"detector={detector}, amp={amp}}} is invalid; excluded.") in warnings
    zero_count = f" with 0 pixels for {{exposure={e[3]}, detector=1, amp=C13}} is invalid; excluded."
    assert any(line.startswith("Flat level ") and line.endswith(zero_count) for line in warnings)
    assert not any("np.float64" in line for line in warnings)


def test_a_dark_exposure_is_excluded_flagged_and_not_combined(rel):
    dark = rel.exposures("img_dark")[1]
    scales = _one(rel, "cpFlatNormalizeScales", "img_dark")
    assert scales["exposureFlags"] == {dark: "NO_VALID_ENTRY"}
    assert all(dark not in per_amp for per_det in scales["expScale"].values() for per_amp in per_det.values())
    assert (f"Exposure {dark} has no valid flat level (finite, > 0, with pixels) on any amp: it is excluded "
            "from the normalization, flagged NO_VALID_ENTRY in exposureFlags, and the combine skips it."
            in _messages(rel, "cpFlatNormalize", "img_dark"))
    for detector in (SCIENCE, WAVEFRONT):
        flat = _one(rel, "flat", "img_dark", detector=detector)
        assert flat.metadata["CP_COMBINE_SKIPPED_EXPOSURES"] == str(dark)
        assert flat.metadata["CP_COMBINE_N_INPUTS"] == 3


def test_unusable_exposure_scales_are_logged_and_skipped(rel):
    e = rel.exposures("sc_bad_scale")
    for detector, skipped in ((SCIENCE, [e[1], e[2]]), (WAVEFRONT, [e[2], e[3]])):
        flat = _one(rel, "flat", "sc_bad_scale", detector=detector)
        assert flat.metadata["CP_COMBINE_SKIPPED_EXPOSURES"] == ",".join(map(str, skipped))
        assert flat.metadata["CP_COMBINE_N_INPUTS"] == 4 - len(skipped)
        warnings = _messages(rel, "cpFlatCombine", "sc_bad_scale", detector=detector)
        for exposure in skipped:
            assert (f"Exposure {exposure} has no usable scale for detector {detector}; it is not combined."
                    in warnings)


def test_a_boolean_statistic_cannot_reach_a_pipetask_run(rel):
    """The reliability page's note: a TaskMetadata dataset stores True as 1.0 (pipe_base reads JSON true as a
    float), so through the butler a boolean arrives as a number; run() refuses it where it arrives
    as one (tests/test_flat_statistics.py)."""
    exposure = rel.exposures("st_flagged")[0]
    md = TaskMetadata()
    md["AMP_N_0"] = True
    butler = Butler.from_config(str(rel.repo.root), writeable=True)
    butler.collections.register("rel/boolean")
    ref = butler.put(md, "cpFlatStatistics", instrument=INSTRUMENT, exposure=exposure, detector=SCIENCE,
                     run="rel/boolean")
    value = butler.get(ref)["AMP_N_0"]
    assert (value, type(value)) == (1.0, float)
