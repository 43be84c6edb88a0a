# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""A new user's own camera and files through ``cp-flatnorm camera import``, ``register`` and ``ingest``
and the normalization: each mistake gets a message naming its culprit before anything is written (and
the repository is left as it was), or the right behaviour."""

import io
import logging
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import astropy.time
import numpy as np
import pytest
from flat_repo import synthetic_statistics
from front_door_files import (
    DETECTORS, FILTER, NAME, amplifier_yaml, camera_yaml, detector_yaml, exposure_id, files_and_directories,
    repository_state, write_config, write_mef,
)

from lsst.cp.flatnorm.camera_model import CameraModel
from lsst.cp.flatnorm.cli import main
from lsst.cp.flatnorm.cpFlatNormalize import CpFlatNormalizationTask
from lsst.cp.flatnorm.flat_fits import FlatIngestError, scan_flats
from lsst.cp.flatnorm.progress import Progress
from lsst.cp.flatnorm.scale_dictionary import exposure_flags, exposure_scales
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.daf.butler import Butler

CP_FLATNORM = Path(sys.executable).with_name("cp-flatnorm")
RUN = f"{NAME}/flats/ingested"


@pytest.fixture(scope="module")
def tricam(tmp_path_factory):
    """TriCam registered by ``cp-flatnorm register`` in a new repository; its config's path."""
    work = tmp_path_factory.mktemp("tricam")
    config = write_config(work / "config")
    assert main(["register", str(work / "repo"), "--instrument-config", str(config)]) == 0
    return work


def ingest(work, *args):
    return main(["ingest", str(work / "repo"), "--instrument", NAME, *map(str, args)])


def refused(work, capsys, *args):
    """Ingest ``args``, which must be refused leaving the repository as it was; the error message."""
    before = repository_state(work / "repo")
    assert ingest(work, *args) == 1
    assert repository_state(work / "repo") == before
    return capsys.readouterr().err


def ingested_begin(work, index):
    butler = Butler.from_config(str(work / "repo"))
    (record,) = butler.query_dimension_records("exposure", instrument=NAME, exposure=exposure_id(index),
                                               explain=False)
    return record.timespan.begin


def test_lower_case_detector_names_match_astropys_upper_case_extname(tricam, capsys):
    path = write_mef(tricam / "flats" / "exp0.fits", 0)
    assert ingest(tricam, path) == 0
    assert "HDU 1 (CHIP1) -> exposure 2026113000001, detector 1 (chip1)" in capsys.readouterr().out
    butler = Butler.from_config(str(tricam / "repo"))
    refs = butler.query_datasets("cpFlatIsrExp", collections=RUN, instrument=NAME, exposure=exposure_id(0),
                                 explain=False)
    assert sorted(ref.dataId["detector"] for ref in refs) == [1, 2, 3]
    image = butler.get(refs[0])
    detector = refs[0].dataId["detector"]
    assert image.image.array.mean() == pytest.approx(20000.0 * [1.0, 0.9, 1.1][detector - 1])


def test_a_name_matching_two_detectors_ignoring_case_is_refused_saying_so(tmp_path):
    camera = CameraModel.model_validate({"name": "CaseCam", "detectors": [
        {"id": i, "name": name, "bbox": {"x0": 0, "y0": 0, "width": 16, "height": 4},
         "amplifiers": [{"name": "A", "bbox": {"x0": 0, "y0": 0, "width": 16, "height": 4}}]}
        for i, name in enumerate(("chip1", "CHIP1"))]})
    path = write_mef(tmp_path / "case.fits", 0, detectors=("Chip1",), DETECTOR="Chip1")
    with pytest.raises(FlatIngestError) as error:
        scan_flats([path], camera, [FILTER])
    assert error.value.problems == (
        f"{path} HDU 1 (CHIP1): DETECTOR='Chip1' matches detectors 'chip1', 'CHIP1' of camera CaseCam "
        "ignoring case, so it names none of them (names are matched exactly, else ignoring case when that is "
        "unambiguous)",)


TWO_AMPLIFIERS_A = amplifier_yaml("A", 1, 0) + amplifier_yaml("A", 2, 1)
UNCOVERED = amplifier_yaml("A", 1, 0, width=6) + amplifier_yaml("B", 2, 1, width=6)


@pytest.mark.parametrize("detectors, message", [
    (detector_yaml("chip1", 1) + detector_yaml("chip1", 2),
     r"the key 'chip1' appears twice \(first on line 3\); names of detectors and amplifiers, and keys, must "
     r"be unique\n  in \"<file>\", line 14, column 3"),
    (detector_yaml("chip1", 1, TWO_AMPLIFIERS_A),
     r"the key 'A' appears twice \(first on line 12\); .*\n  in \"<file>\", line 13, column 7"),
    (detector_yaml("chip1", 1) + detector_yaml("chip2", 1),
     r"Camera TriCam: detector IDs and names must be unique; repeated IDs: 1\."),
    (detector_yaml("chip1", 1, UNCOVERED),
     r"detector 'chip1': Detector 1 \(chip1\): its amplifiers leave 16 of its pixels uncovered, within x "
     r"12\.\.15, y 0\.\.3\."),
])
def test_camera_yaml_refuses_repeated_names_and_uncovered_pixels(tmp_path, capsys, detectors, message):
    source = tmp_path / "camera.yaml"
    source.write_text(camera_yaml(detectors))
    assert main(["camera", "import", str(source), "-o", str(tmp_path / "camera.json")]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"cp-flatnorm camera: error: {source}: ")
    assert len(re.findall(message.replace("<file>", str(source)), error)) == 1, error
    assert not (tmp_path / "camera.json").exists()


@pytest.mark.parametrize("cut, problem", [
    (-2880 + 100, "the pixels cannot be read (is the file truncated?)"),  # inside the last image's data
    (-2 * 2880 + 100, "the file ends inside an HDU after HDU 2 (truncated or corrupted"),  # in a header
])
def test_a_truncated_file_is_refused_naming_it(tricam, capsys, cut, problem):
    path = write_mef(tricam / "truncated" / f"cut{-cut}.fits", 1)
    path.write_bytes(path.read_bytes()[:cut])
    error = refused(tricam, capsys, path)
    assert error.startswith("cp-flatnorm ingest: error: Cannot ingest the flats")
    assert f"  {path}" in error and problem in error


def test_a_path_that_is_not_ascii(tricam, capsys):
    path = write_mef(tricam / "flats ö" / "flat_ä.fits", 2)
    assert ingest(tricam, path) == 0
    butler = Butler.from_config(str(tricam / "repo"))
    image = butler.get("cpFlatIsrExp", instrument=NAME, exposure=exposure_id(2), detector=2, collections=RUN)
    assert image.metadata["INGEST_FILE"] == str(path).replace("ö", "%C3%B6").replace("ä", "%C3%A4")
    assert urllib.parse.unquote(image.metadata["INGEST_FILE"]) == str(path)


def test_an_image_without_a_flat_level_is_warned_about_or_refused(tricam, capsys, caplog):
    nan = write_mef(tricam / "empty" / "nan.fits", 3, detectors=DETECTORS[:1], data=np.full((4, 16), np.nan),
                    EXPID=exposure_id(10))
    zero = write_mef(tricam / "empty" / "zero.fits", 4, detectors=DETECTORS[:1], data=np.zeros((4, 16)),
                     EXPID=exposure_id(11), **{"DATE-OBS": "2026-11-30T18:11:00"})
    error = refused(tricam, capsys, "--refuse-empty", nan, zero)
    assert (f"{nan} HDU 1 (CHIP1): the image has no finite pixel (refused: images without a flat level are "
            "not ingested)") in error
    assert f"{zero} HDU 1 (CHIP1): the image has no positive pixel (refused" in error
    with caplog.at_level(logging.WARNING, "lsst.cp.flatnorm"):
        assert ingest(tricam, nan, zero) == 0
    assert [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING] == [
        f"{nan} HDU 1 (CHIP1): the image has no finite pixel; it is ingested, and the normalization will "
        "exclude it.",
        f"{zero} HDU 1 (CHIP1): the image has no positive pixel; it is ingested, and the normalization will "
        "exclude it."]
    assert (f"2 images without a flat level (the normalization excludes their exposures): {nan} HDU 1 "
            f"(CHIP1) (the image has no finite pixel), {zero} HDU 1 (CHIP1) (the image has no positive "
            "pixel)") in capsys.readouterr().out


def test_a_date_only_date_obs_is_completed_by_time_obs(tricam):
    path = write_mef(tricam / "old" / "dated.fits", 5, **{"DATE-OBS": "2026-11-30", "TIME-OBS": "18:30:15.5"})
    assert ingest(tricam, path) == 0
    begin = ingested_begin(tricam, 5)
    assert abs((begin - astropy.time.Time("2026-11-30T18:30:15.5", scale="utc")).sec) < 1e-3


def test_a_bad_time_obs_is_named(tricam, capsys):
    path = write_mef(tricam / "old" / "bad_time.fits", 6, **{"DATE-OBS": "2026-11-30", "TIME-OBS": "6pm"})
    assert "TIME-OBS='6pm' is not a time of day hh:mm:ss[.sss] (start time of day)" in refused(
        tricam, capsys, path)


def test_an_exposure_id_above_the_instruments_maximum_is_refused(tricam, capsys):
    path = write_mef(tricam / "ids" / "big.fits", 7, EXPID=10**14 + 1)
    assert (f"{path} HDU 1 (CHIP1): exposure ID {10**14 + 1} is above the largest that instrument "
            f"TriCam allows (exposure_max = {10**14})") in refused(tricam, capsys, path)


def test_register_on_a_plain_butler_repository_explains_and_changes_nothing(tmp_path):
    """The command itself: its process has seen no repository with the package's storage classes."""
    Butler.makeRepo(str(tmp_path / "plain"))
    before = files_and_directories(tmp_path / "plain")
    config = write_config(tmp_path / "config")
    process = subprocess.run([str(CP_FLATNORM), "register", str(tmp_path / "plain"), "--instrument-config",
                              str(config)], capture_output=True, text=True)
    assert process.returncode == 1
    assert process.stderr.startswith("cp-flatnorm register: error: The repository does not know the "
                                     "CameraModel storage class: create it with cp-flatnorm register")
    assert files_and_directories(tmp_path / "plain") == before


def test_a_failed_register_leaves_no_repository(tmp_path, capsys):
    config = write_config(tmp_path / "config", name="OtherCam")
    assert main(["register", str(tmp_path / "repo"), "--instrument-config", str(config)]) == 1
    assert "OtherCam needs a camera named 'OtherCam'; got 'TriCam'" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_bar_on_a_terminal_and_log_lines_otherwise(caplog):
    terminal = _Terminal()
    progress = Progress(3, "files checked", logging.getLogger("test"), terminal, interval=0.0)
    for done in (1, 2, 3):
        progress(done)
    bar = "#" * 10
    assert terminal.getvalue() == (f"\r[{bar}{' ' * 20}] 1/3 files checked\r[{bar * 2}{' ' * 10}] 2/3 files "
                                   f"checked\r[{bar * 3}] 3/3 files checked\n")
    with caplog.at_level(logging.INFO, "test"):
        progress = Progress(2, "images written", logging.getLogger("test"), io.StringIO(), interval=0.0)
        progress(1)
        progress(2)
        quiet = Progress(2, "images written", logging.getLogger("test"), io.StringIO(), interval=3600.0)
        quiet(1)
        quiet(2)
    assert caplog.messages == ["1/2 images written.", "2/2 images written."]


def test_help_imports_no_middleware():
    code = ("import sys\nfrom lsst.cp.flatnorm.cli import build_parser\nparser = build_parser()\n"
            "for argv in ([], ['camera'], ['camera', 'import'], ['register'], ['ingest']):\n"
            "    try:\n        parser.parse_args(argv + ['--help'])\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('lsst.daf.butler', 'lsst.pipe.base', 'astropy', 'lsst.images') "
            "if m in sys.modules))\n")
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert process.returncode == 0, process.stderr
    assert "default_read_noise" in process.stdout  # the ingest help's keyword table
    assert process.stdout.rstrip().endswith("[]")


class _Amplifier:
    def __init__(self, name):
        self.name = name

    def getName(self):
        return self.name


class _Detector:
    """A detector giving its ID, name and amplifier names, and nothing else."""

    def __init__(self, detector):
        self.id, self.name = detector.getId(), detector.getName()
        self.amplifiers = [_Amplifier(amp.getName()) for amp in detector]

    def getId(self):
        return self.id

    def getName(self):
        return self.name

    def __iter__(self):
        return iter(self.amplifiers)


SIM_CAMERA = make_sim_camera(n_side=1, amp_width=4, amp_height=4, n_wavefront=1)
SIM_EXPOSURES = [2024060100001, 2024060100002, 2024060100003]


def normalization_inputs(exposures=SIM_EXPOSURES):
    statistics = synthetic_statistics(SIM_CAMERA, exposures, seed=22)
    return list(statistics.values()), [{"exposure": e, "detector": d} for e, d in statistics]


@pytest.mark.parametrize("level", ["DETECTOR", "AMP"])
def test_normalization_needs_only_ids_and_amplifier_names(level):
    task = CpFlatNormalizationTask()
    task.config.level = level
    minimal = [_Detector(detector) for detector in SIM_CAMERA]
    assert (task.run(*normalization_inputs(), minimal).outputScales
            == task.run(*normalization_inputs(), SIM_CAMERA).outputScales)


def test_normalization_names_what_a_camera_lacks():
    with pytest.raises(TypeError, match=r"^Camera detector 0 does not iterate over amplifiers with getName"):
        CpFlatNormalizationTask().run(*normalization_inputs(), [_NoAmplifiers()])


class _NoAmplifiers:
    def getId(self):
        return 0


def test_an_exposure_without_a_valid_entry_is_excluded_and_flagged():
    task = CpFlatNormalizationTask()
    mds, dims = normalization_inputs()
    for md, dim in zip(mds, dims):
        if dim["exposure"] == SIM_EXPOSURES[1]:
            md["DETECTOR_MEDIAN"] = float("nan")
    with CaptureWarnings(logging.getLogger(task.log.name)) as warnings:
        result = task.run(mds, dims, SIM_CAMERA)
    assert warnings == [f"Exposure {SIM_EXPOSURES[1]} has no valid flat level (finite, > 0, with pixels) on "
                        "any detector: it is excluded from the normalization, flagged NO_VALID_ENTRY in "
                        "exposureFlags, and the combine skips it."]
    assert task.metadata["nExcludedExposures"] == 1
    scales = result.outputScales
    assert exposure_flags(scales) == {SIM_EXPOSURES[1]: "NO_VALID_ENTRY"}
    kept = [i for i, e in enumerate(SIM_EXPOSURES) if e != SIM_EXPOSURES[1]]
    expected = task.run([mds[i] for i, d in enumerate(dims) if d["exposure"] != SIM_EXPOSURES[1]],
                        [d for d in dims if d["exposure"] != SIM_EXPOSURES[1]], SIM_CAMERA).outputScales
    assert exposure_scales(scales) == exposure_scales(expected)
    assert sorted(exposure_scales(scales)) == [SIM_EXPOSURES[i] for i in kept]
    assert result.outputScaleTable.meta["EXCLUDED_EXPOSURES"] == [SIM_EXPOSURES[1]]


def test_a_single_exposure_is_warned_about():
    task = CpFlatNormalizationTask()
    with CaptureWarnings(logging.getLogger(task.log.name)) as warnings:
        task.run(*normalization_inputs(SIM_EXPOSURES[:1]), SIM_CAMERA)
    assert (f"Only one exposure ({SIM_EXPOSURES[0]}) to normalize: no entry can be checked against another "
            "exposure or rejected, and each detector's scale is its level in that exposure.") in warnings


class CaptureWarnings(logging.Handler):
    """The WARNING messages of a logger while in the block."""

    def __init__(self, log):
        super().__init__(logging.WARNING)
        self.log = log
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        self.log.addHandler(self)
        return self.messages

    def __exit__(self, *_):
        self.log.removeHandler(self)
