# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""``cp-flatnorm ingest``: what it prints, its options, and its exit status and message on bad input."""

import subprocess
import sys
from pathlib import Path

import pytest
from flat_files import CAMERA, Flats, copy_flat_repo, write_mef

from lsst.cp.flatnorm.cli import main
from lsst.cp.flatnorm.flat_ingest import INGEST_DATASET_TYPE
from lsst.daf.butler import Butler

FLATS = Flats()
DETECTORS = list(CAMERA)
CP_FLATNORM = Path(sys.executable).with_name("cp-flatnorm")


@pytest.fixture
def repo(tmp_path, tmp_path_factory):
    root = tmp_path / "repo"
    copy_flat_repo(root, tmp_path_factory)
    return root


def ingest(repo, *args):
    return main(["ingest", str(repo), "--instrument", "SimFlatCam", *map(str, args)])


def test_ingest_prints_what_went_in(repo, tmp_path, capsys):
    path = write_mef(tmp_path / "mef.fits", FLATS, 0, detectors=DETECTORS[:2])
    assert ingest(repo, path) == 0
    exposure = FLATS.exposure_id(0)
    assert capsys.readouterr().out.splitlines() == [
        "Ingested 2 images from 1 file into run SimFlatCam/flats/ingested (first in SimFlatCam/defaults):",
        *[f"  {path} HDU {i + 1} ({det.getName()}) -> exposure {exposure}, detector {det.getId()} "
          f"({det.getName()})" for i, det in enumerate(DETECTORS[:2])],
        "1 exposure (1 new):",
        f"  {exposure} 2024-06-02T05:00:00.000 10 s sim_r flat new: detectors "
        f"{DETECTORS[0].getId()}, {DETECTORS[1].getId()}",
    ]


def test_bad_input_exits_1_with_the_message(repo, tmp_path, capsys):
    path = write_mef(tmp_path / "mef.fits", FLATS, 0, cards={**FLATS.cards(0), "EXPTIME": -1.0},
                     detectors=DETECTORS[:1])
    assert ingest(repo, path) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("cp-flatnorm ingest: error: Cannot ingest the flats (1 problem; nothing was "
                            f"ingested):\n  {path} HDU 1 ({DETECTORS[0].getName()}): EXPTIME=-1.0 is not a "
                            "number > 0 "
                            "(exposure time)\n")


def test_keyword_options(repo, tmp_path, capsys):
    """A keyword file, -k settings over it, and --gain/--read-noise for headers without GAIN/RDNOISE."""
    det = DETECTORS[2]
    cards = {"EXPNUM": 7, "DATE-OBS": FLATS.start(0), "EXPTIME": 2.0, "FILTER": "sim_g",
             "CCDNAME": det.getName(), "KIND": "dome"}
    path = write_mef(tmp_path / "custom.fits", FLATS, 0, cards=cards, detectors=DETECTORS[2:3],
                     noise_cards=False)
    config = tmp_path / "keywords.yaml"
    config.write_text("exposure_id: EXPID\ndetector: CCDNAME\n")
    assert ingest(repo, "--keyword-config", config, "-k", "exposure_id=EXPNUM", "--keyword",
                  "observation_type=KIND", "--gain", 2.5, "--read-noise", 5, path) == 0
    assert f"exposure 7, detector {det.getId()} ({det.getName()})" in capsys.readouterr().out
    butler = Butler.from_config(repo)
    image = butler.get(INGEST_DATASET_TYPE, instrument="SimFlatCam", exposure=7, detector=det.getId(),
                       collections="SimFlatCam/defaults")
    assert image.metadata["VARIANCE_SOURCE"] == "estimated with gain 2.5 e-/unit, read noise 5 e-"
    [record] = butler.query_dimension_records("exposure", instrument="SimFlatCam", explain=False)
    assert (record.observation_type, record.exposure_time, record.physical_filter) == ("dome", 2.0, "sim_g")


@pytest.mark.parametrize("args, message", [
    (["--keyword-config", "missing.yaml"],
     "header keywords: [Errno 2] No such file or directory: 'missing.yaml'"),
    (["-k", "exposure"], "--keyword 'exposure' is not FIELD=VALUE"),
    (["-k", "exposure=EXPID"], "header keywords: 1 validation error for HeaderKeywords\nexposure\n"),
    (["--gain", "-2"], "header keywords: 1 validation error for HeaderKeywords\ndefault_gain\n"),
])
def test_bad_keyword_settings(repo, tmp_path, capsys, args, message):
    path = write_mef(tmp_path / "mef.fits", FLATS, 0, detectors=DETECTORS[:1])
    assert ingest(repo, *args, path) == 1
    assert capsys.readouterr().err.startswith(f"cp-flatnorm ingest: error: {message}")


def test_not_a_repository(tmp_path, capsys):
    path = write_mef(tmp_path / "mef.fits", FLATS, 0, detectors=DETECTORS[:1])
    assert ingest(tmp_path / "nowhere", path) == 1
    assert capsys.readouterr().err.startswith(f"cp-flatnorm ingest: error: cannot open the repository "
                                              f"{tmp_path / 'nowhere'}: ")


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        main(["ingest", "repo", "file.fits"])
    assert exit_.value.code == 2
    assert "the following arguments are required: --instrument" in capsys.readouterr().err


@pytest.mark.skipif(not CP_FLATNORM.exists(), reason="cp-flatnorm is not installed beside this interpreter")
def test_console_script_reports_without_traceback(repo, tmp_path):
    path = write_mef(tmp_path / "mef.fits", FLATS, 0, cards={**FLATS.cards(0), "FILTER": "sim_z"},
                     detectors=DETECTORS[:1])
    process = subprocess.run([str(CP_FLATNORM), "ingest", str(repo), "--instrument", "SimFlatCam", str(path)],
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert "FILTER='sim_z' is not a physical filter of the instrument" in process.stderr
