# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Property-based tests of the front door: camera YAML, FITS headers and images generated around valid
ones go through ``cp-flatnorm camera import``, ``register`` and ``ingest``.  Every outcome is either
success with the right camera or records, or an error naming the culprit, with nothing left behind.

The examples are derandomized and bounded, so the suite runs the same examples every time.
"""

import itertools
import json

import astropy.time
import numpy as np
import pytest
from front_door_files import (
    AMP_WIDTH, DETECTORS, FILTER, NAME, SHAPE, amplifier_yaml, camera_yaml, cards, detector_yaml,
    repository_state, write_config, write_mef,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from lsst.cp.flatnorm.camera_model import CameraModel
from lsst.cp.flatnorm.cli import main
from lsst.daf.butler import Butler

BOUNDED = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                   phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure shows its example
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _detector(draw, index):
    """One detector's YAML, and the culprits it has (text its refusal must contain)."""
    widths = draw(st.lists(st.sampled_from([AMP_WIDTH, AMP_WIDTH, AMP_WIDTH - 2, AMP_WIDTH + 1]),
                           min_size=2, max_size=2))
    names = ("A", "A") if draw(st.booleans()) and draw(st.booleans()) else ("A", "B")
    amplifiers = "".join(amplifier_yaml(name, hdu, hdu - 1, width)
                         for hdu, name, width in zip((1, 2), names, widths))
    culprits = []
    if names == ("A", "A"):
        culprits.append("the key 'A' appears twice")
    if widths != [AMP_WIDTH, AMP_WIDTH]:
        culprits.append(f"Detector {index + 1}")
    return amplifiers, culprits


@st.composite
def cameras(draw):
    """TriCam's camera YAML, perhaps with a repeated detector name or ID and amplifiers that do not tile."""
    names, ids = list(DETECTORS), [1, 2, 3]
    culprits = []
    if draw(st.integers(0, 3)) == 0:
        names[2] = names[0]
        culprits.append(f"the key '{names[0]}' appears twice")
    if draw(st.integers(0, 3)) == 0:
        ids[2] = ids[1]
        culprits.append("repeated IDs: 2")
    entries = []
    for index in range(3):
        amplifiers, detector_culprits = _detector(draw, index)
        entries.append(detector_yaml(names[index], ids[index], amplifiers))
        culprits += detector_culprits
    return camera_yaml("".join(entries)), culprits


@BOUNDED
@given(camera=cameras())
def test_camera_import_and_register(tmp_path_factory, capsys, camera):
    text, culprits = camera
    work = tmp_path_factory.mktemp("camera")
    config = write_config(work)
    (work / "camera.yaml").write_text(text)
    status = main(["camera", "import", str(work / "camera.yaml"), "-o", str(work / "camera.json")])
    if not culprits:
        assert status == 0
        model = CameraModel.model_validate(json.loads((work / "camera.json").read_text()))
        assert [(d.getId(), d.getName(), [a.getName() for a in d]) for d in model] == [
            (i + 1, name, ["A", "B"]) for i, name in enumerate(DETECTORS)]
        return
    assert status == 1
    assert not (work / "camera.json").exists()
    assert_names_a_culprit(capsys.readouterr().err, "camera", work / "camera.yaml", culprits)
    assert main(["register", str(work / "repo"), "--instrument-config", str(config)]) == 1
    assert not (work / "repo").exists()
    assert_names_a_culprit(capsys.readouterr().err, "register", work / "camera.yaml", culprits)


def assert_names_a_culprit(err, command, source, culprits):
    """The camera reader stops at its first problem: the message names the file and one culprit."""
    assert err.startswith(f"cp-flatnorm {command}: error: {source}: ") and "Traceback" not in err, err
    assert any(culprit in err for culprit in culprits), (culprits, err)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz")
    assert main(["register", str(work / "repo"), "--instrument-config", str(write_config(work))]) == 0
    return work


EXPOSURE_IDS = itertools.count(2026113000101)
START = "2026-11-30T18:30:15.500"


@st.composite
def flats(draw):
    """One exposure's MEF header changes and pixels, and the culprits they have: those of the file, and
    those the repository shows (checked once the files are good)."""
    changes, culprits, repository_culprits = {}, [], []
    start = draw(st.sampled_from(["iso", "date+time", "mjd", "bad date", "bad time"]))
    if start == "date+time":
        changes.update({"DATE-OBS": START[:10], "TIME-OBS": START[11:]})
    elif start == "mjd":
        changes.update({"DATE-OBS": None, "MJD-OBS": astropy.time.Time(START, scale="utc").mjd})
    elif start == "bad date":
        changes["DATE-OBS"] = "yesterday"
        culprits.append("DATE-OBS='yesterday' is not an ISO 8601 time")
    elif start == "bad time":
        changes.update({"DATE-OBS": START[:10], "TIME-OBS": "noon"})
        culprits.append("TIME-OBS='noon' is not a time of day")
    else:
        changes["DATE-OBS"] = START
    changes["EXPTIME"] = draw(st.one_of(st.floats(0.5, 100.0), st.sampled_from([0.0, -1.0, "ten"])))
    if not isinstance(changes["EXPTIME"], float) or changes["EXPTIME"] <= 0:
        culprits.append(f"EXPTIME={changes['EXPTIME']!r} is not a number > 0")
    expid = draw(st.sampled_from(["fresh"] * 4 + ["too big", "negative"]))
    if expid == "too big":
        changes["EXPID"] = 10**14 + 7
        repository_culprits.append(f"exposure ID {10**14 + 7} is above the largest")
    elif expid == "negative":
        changes["EXPID"] = -5
        culprits.append("EXPID=-5 is not an integer >= 0")
    if draw(st.integers(0, 4)) == 0:
        changes["FILTER"] = "no_such_filter"
        culprits.append("FILTER='no_such_filter' is not a physical filter")
    names = [draw(st.sampled_from([name, name.upper(), name.capitalize()])) for name in DETECTORS]
    fill = draw(st.sampled_from([None, None, np.nan, 0.0]))
    truncate = draw(st.integers(0, 5)) == 0
    if truncate:
        culprits.append("truncated")
    return changes, culprits or repository_culprits, names, fill, truncate


@settings(BOUNDED, max_examples=4)  # each example ingests: a second or so
@given(flat=flats())
def test_ingest(repo, capsys, flat):
    changes, culprits, names, fill, truncate = flat
    exposure = next(EXPOSURE_IDS)
    changes = {"EXPID": exposure, **changes}
    data = None if fill is None else np.full(SHAPE, fill, dtype=np.float32)
    path = write_mef(repo / "flats" / f"{exposure}.fits", 0, detectors=names, data=data, **changes)
    if truncate:
        path.write_bytes(path.read_bytes()[:-3000])
    before = repository_state(repo / "repo")
    status = main(["ingest", str(repo / "repo"), "--instrument", NAME, str(path)])
    out, err = capsys.readouterr()
    if culprits:
        assert status == 1
        assert "cp-flatnorm ingest: error: Cannot ingest the flats" in err and "Traceback" not in err
        for culprit in culprits:
            assert culprit in err and str(path) in err, (culprit, err)
        assert repository_state(repo / "repo") == before
        return
    assert status == 0, err
    butler = Butler.from_config(str(repo / "repo"))
    (record,) = butler.query_dimension_records("exposure", instrument=NAME, exposure=exposure, explain=False)
    header = cards(0, **changes)
    assert (record.physical_filter, record.exposure_time) == (FILTER, header["EXPTIME"])
    assert abs((record.timespan.begin - astropy.time.Time(START, scale="utc")).sec) < 1e-3
    refs = butler.query_datasets("cpFlatIsrExp", collections=f"{NAME}/flats/ingested",
                                 instrument=NAME, exposure=exposure, explain=False)
    assert sorted(ref.dataId["detector"] for ref in refs) == [1, 2, 3]
    assert ("without a flat level" in out) == (fill is not None)
