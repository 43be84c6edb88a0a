# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Ingesting post-ISR flat FITS files into a repository: what goes in, the all-or-nothing guarantee,
refusals, and a normalization run by the ``pipetask`` command (in this process:
tests/pipetask_in_process.py) on the ingested flats."""

import os

import astropy.units as u
import numpy as np
import pytest
from astropy.time import Time
from flat_files import (
    BAD_COLUMN, CAMERA, DAY_OBS, Flats, copy_flat_repo, write_detector_file, write_mef, write_mixed_set,
)

from lsst.cp.flatnorm.flat_fits import FlatIngestError, FlatSource
from lsst.cp.flatnorm.flat_ingest import INGEST_DATASET_TYPE, ingest_flats
from lsst.cp.flatnorm.sim.run import pipeline_uri, read_normalization
from lsst.daf.butler import Butler, MissingDatasetTypeError
from pipetask_in_process import run_pipetask

FLATS = Flats()
INSTRUMENT = "SimFlatCam"
RUN = "SimFlatCam/flats/ingested"
UMBRELLA = "SimFlatCam/defaults"
CALIB = "SimFlatCam/calib"
DETECTORS = list(CAMERA)


@pytest.fixture
def repo(tmp_path, tmp_path_factory):
    root = tmp_path / "repo"
    return root, copy_flat_repo(root, tmp_path_factory)


def repository_state(root, butler):
    """Everything an ingest could change: records, collections, datasets and the datastore's files and
    directories."""
    try:
        refs = butler.query_datasets(INGEST_DATASET_TYPE, collections="*", find_first=False, explain=False)
    except MissingDatasetTypeError:
        refs = None
    return {
        "exposures": sorted(r.id for r in butler.query_dimension_records("exposure", explain=False)),
        "groups": sorted(r.name for r in butler.query_dimension_records("group", explain=False)),
        "collections": sorted(butler.collections.query("*")),
        "datasets": refs,
        "files": sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                        if not f.startswith("gen3.sqlite3")),
        "directories": sorted(d for d, _, _ in os.walk(root)),
    }


def test_mixed_layouts_go_in_with_their_records(repo, tmp_path):
    root, butler = repo
    result = ingest_flats(butler, INSTRUMENT, write_mixed_set(tmp_path))
    assert (result.run, result.umbrella) == (RUN, UMBRELLA)
    assert butler.collections.get_info(UMBRELLA).children == (RUN, CALIB)
    assert len(result.sources) == len(FLATS.lamps) * len(DETECTORS)
    assert [e.id for e in result.new_exposures] == [FLATS.exposure_id(i) for i in range(len(FLATS.lamps))]
    butler = Butler.from_config(root)  # what a new process sees
    for exposure in range(len(FLATS.lamps)):
        for det in DETECTORS:
            image = butler.get(INGEST_DATASET_TYPE, collections=UMBRELLA, instrument=INSTRUMENT,
                               exposure=FLATS.exposure_id(exposure), detector=det.getId())
            expected = FLATS.adu(exposure, det)
            if exposure == 1:  # the layout with a mask: its bad column is zero
                expected[:, BAD_COLUMN] = 0.0
            np.testing.assert_array_equal(image.image.array, expected)
            np.testing.assert_allclose(image.variance.array, FLATS.variance(exposure, det), rtol=1e-6)
            assert image.mask.get("BAD")[:, BAD_COLUMN].all() == (exposure in (1, 2))
            assert image.mask.get("BAD").sum() == (det.getBBox().getHeight() if exposure in (1, 2) else 0)
    records = {r.id: r for r in butler.query_dimension_records("exposure", explain=False)}
    for exposure in range(len(FLATS.lamps)):
        record = records[FLATS.exposure_id(exposure)]
        begin = Time(FLATS.start(exposure), scale="utc")
        assert (record.observation_type, record.observation_reason) == ("flat", "flat")
        assert (record.exposure_time, record.physical_filter, record.day_obs) == (10.0, "sim_r", DAY_OBS)
        assert abs((record.timespan.begin - begin).to_value(u.s)) < 1e-6
        assert abs((record.timespan.end - begin).to_value(u.s) - 10.0) < 1e-6


def test_bad_file_last_leaves_the_repository_as_it_was(repo, tmp_path):
    root, butler = repo
    good = write_mixed_set(tmp_path)
    cards = dict(FLATS.cards(0))
    del cards["EXPTIME"]
    bad = write_mef(tmp_path / "bad.fits", FLATS, 0, cards={**cards, "EXPID": 99}, detectors=DETECTORS[:1])
    before = repository_state(root, butler)
    with pytest.raises(FlatIngestError) as error:
        ingest_flats(butler, INSTRUMENT, good + [bad])
    assert str(error.value) == ("Cannot ingest the flats (1 problem; nothing was ingested):\n"
                                f"  {bad} HDU 1 ({DETECTORS[0].getName()}): missing exposure time (looked "
                                "for EXPTIME)")
    assert repository_state(root, butler) == before
    assert before["datasets"] is None  # not even the dataset type was registered


def test_a_failure_while_writing_rolls_everything_back(repo, tmp_path, monkeypatch):
    root, butler = repo
    paths = write_mixed_set(tmp_path)
    read = FlatSource.read
    calls = []

    def failing_read(source):
        calls.append(source.where)
        if len(calls) == 7:
            raise OSError("disk went away")
        return read(source)

    monkeypatch.setattr(FlatSource, "read", failing_read)
    before = repository_state(root, butler)
    with pytest.raises(OSError, match="disk went away"):
        ingest_flats(butler, INSTRUMENT, paths)
    assert repository_state(root, butler) == before
    with pytest.raises(MissingDatasetTypeError):
        butler.get_dataset_type(INGEST_DATASET_TYPE)


def test_ingesting_again_is_refused_naming_file_and_hdu(repo, tmp_path):
    root, butler = repo
    path = write_mef(tmp_path / "mef.fits", FLATS, 0, detectors=DETECTORS[:2])
    ingest_flats(butler, INSTRUMENT, [path])
    before = repository_state(root, butler)
    with pytest.raises(FlatIngestError) as error:
        ingest_flats(butler, INSTRUMENT, [path], run="u/me/again")
    exposure = FLATS.exposure_id(0)
    assert list(error.value.problems) == [
        f"{path} HDU {i + 1} ({det.getName()}): exposure {exposure}, detector {det.getId()} "
        f"({det.getName()}) is already ingested, in run {RUN}"
        for i, det in enumerate(DETECTORS[:2])
    ]
    assert repository_state(root, butler) == before


def test_more_detectors_of_an_ingested_exposure(repo, tmp_path):
    _, butler = repo
    paths = [write_detector_file(tmp_path / f"{det.getName()}.fits", FLATS, 1, det) for det in DETECTORS]
    first = ingest_flats(butler, INSTRUMENT, paths[:2])
    second = ingest_flats(butler, INSTRUMENT, paths[2:], run="u/me/more")
    assert [e.id for e in first.new_exposures] == [FLATS.exposure_id(1)]
    assert second.new_exposures == []
    refs = butler.query_datasets(INGEST_DATASET_TYPE, collections=UMBRELLA, explain=False)
    assert sorted(ref.dataId["detector"] for ref in refs) == [det.getId() for det in DETECTORS]
    assert butler.collections.get_info(UMBRELLA).children == ("u/me/more", RUN, CALIB)


def test_an_existing_record_that_disagrees_is_refused(repo, tmp_path):
    root, butler = repo
    det0, det1 = DETECTORS[:2]
    ingest_flats(butler, INSTRUMENT, [write_mef(tmp_path / "a.fits", FLATS, 0, detectors=[det0])])
    cards = {**FLATS.cards(0), "EXPTIME": 15.0, "FILTER": "sim_g"}
    later = write_mef(tmp_path / "b.fits", FLATS, 0, cards=cards, detectors=[det1])
    before = repository_state(root, butler)
    with pytest.raises(FlatIngestError) as error:
        ingest_flats(butler, INSTRUMENT, [later])
    assert list(error.value.problems) == [
        f"{later} HDU 1 ({det1.getName()}): exposure {FLATS.exposure_id(0)} has a record in the repository "
        "that differs (header vs record): physical_filter 'sim_g' vs 'sim_r'; exposure_time 15.0 vs 10.0"]
    assert repository_state(root, butler) == before


def test_run_must_be_a_run_collection(repo, tmp_path):
    root, butler = repo
    path = write_mef(tmp_path / "mef.fits", FLATS, 0, detectors=DETECTORS[:1])
    before = repository_state(root, butler)
    with pytest.raises(FlatIngestError) as error:
        ingest_flats(butler, INSTRUMENT, [path], run=CALIB)
    assert list(error.value.problems) == [
        f"collection {CALIB} is CALIBRATION, not a RUN collection to put the images in"]
    assert repository_state(root, butler) == before


def test_filters_are_the_instruments(repo, tmp_path):
    _, butler = repo
    path = write_mef(tmp_path / "z.fits", FLATS, 0, cards={**FLATS.cards(0), "FILTER": "sim_z"},
                     detectors=DETECTORS[:1])
    with pytest.raises(FlatIngestError) as error:
        ingest_flats(butler, INSTRUMENT, [path])
    assert list(error.value.problems) == [
        f"{path} HDU 1 ({DETECTORS[0].getName()}): FILTER='sim_z' is not a physical filter of the instrument "
        "(registered: sim_g, sim_i, sim_r)"]


def test_instrument_and_camera_must_be_in_the_repository(repo, tmp_path):
    _, butler = repo
    path = write_mef(tmp_path / "mef.fits", FLATS, 0)
    with pytest.raises(FlatIngestError, match="instrument 'NoCam': No registered instrument with name"):
        ingest_flats(butler, "NoCam", [path])
    butler.registry.removeCollection(CALIB)
    with pytest.raises(FlatIngestError, match=f"instrument 'SimFlatCam' has no camera in {CALIB}"):
        ingest_flats(butler, INSTRUMENT, [path])


@pytest.mark.slow
def test_pipetask_normalization_recovers_the_lamp_levels(repo, tmp_path):
    """cpFlatMeasure -> cpFlatNormalize on ingested flats of every layout: exposure scales are proportional to
    the lamp levels and detector scales to response / gain (the product is fixed only up to one factor)."""
    root, butler = repo
    ingest_flats(butler, INSTRUMENT, write_mixed_set(tmp_path))
    run_pipetask(root, pipeline_uri("_ingredients", "cpFlatNorm.yaml"), [UMBRELLA], "u/test/norm")
    outputs = read_normalization(Butler.from_config(root), "u/test/norm", INSTRUMENT, FLATS.physical_filter)
    exposure_scales = outputs.exposure_scales()
    recovered = np.array([exposure_scales[FLATS.exposure_id(i)] for i in range(len(FLATS.lamps))])
    np.testing.assert_allclose(recovered / recovered[0], np.array(FLATS.lamps) / FLATS.lamps[0], rtol=1e-6)
    detector_scales = outputs.row_scales()
    recovered = np.array([detector_scales[det.getId()] for det in DETECTORS])
    truth = np.array([FLATS.level(0, det) for det in DETECTORS])
    np.testing.assert_allclose(recovered / recovered[0], truth / truth[0], rtol=1e-6)
