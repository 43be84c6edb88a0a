# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of FlatInstrument: its config file, registry records, camera, and construction by name."""

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lsst.cp.flatnorm import instrument as flat_instrument
from lsst.cp.flatnorm.butler_setup import make_repo
from lsst.cp.flatnorm.camera_model import CameraModel
from lsst.cp.flatnorm.instrument import INSTRUMENT_PATH_ENV, FlatInstrument, FlatInstrumentConfig
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.daf.butler import CollectionType
from lsst.daf.butler.registry import ConflictingDefinitionError
from lsst.utils.introspection import get_full_type_name

CONFIG = """\
name: MyCam
camera: camera.json
filters:
  my_g: g
  my_r: r
"""


def my_camera(extra_detector_id=None):
    """A small camera named MyCam: detectors R22_S00..R22_S11 and R00_SW0 (IDs 0..4) and a guider
    "GUIDE7" (ID 7) whose name has no raft; another guider if ``extra_detector_id`` is given."""
    camera = make_sim_camera(n_side=2, n_wavefront=1, amp_width=4, amp_height=4)
    detectors = list(camera.detectors)
    for detector_id in (7, extra_detector_id):
        if detector_id is not None:
            detectors.append(detectors[0].model_copy(
                update={"id": detector_id, "name": f"GUIDE{detector_id}", "type": "GUIDER"}))
    return CameraModel(name="MyCam", detectors=detectors)


def write_config(directory, text=CONFIG, camera=None, file_name="MyCam.yaml"):
    """Write an instrument config and its camera.json into ``directory``; return the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "camera.json").write_text((camera or my_camera()).model_dump_json())
    path = directory / file_name
    path.write_text(text)
    return path


@pytest.fixture
def config_path(tmp_path):
    return write_config(tmp_path / "instruments")


@pytest.fixture
def butler(tmp_path):
    return make_repo(tmp_path / "repo")


@pytest.fixture
def no_config_path(tmp_path, monkeypatch):
    """Search an empty directory (and the package's) for instrument configs."""
    monkeypatch.setenv(INSTRUMENT_PATH_ENV, str(tmp_path / "empty"))


# Config parsing.

def test_config_from_file(config_path):
    config = FlatInstrumentConfig.from_file(config_path)
    assert config.name == "MyCam"
    assert config.camera == str(config_path.parent / "camera.json")  # relative to the config file
    assert config.filters == {"my_g": "g", "my_r": "r"}
    assert (config.exposure_max, config.visit_max, config.raft_separator) == (10**14, 10**14, "_")
    assert config.load_camera() == my_camera()


@pytest.mark.parametrize("text, error", [
    (CONFIG.replace("name: MyCam\n", ""), "name: Field required"),
    (CONFIG + "visits: 3\n", "visits: Extra inputs are not permitted"),
    (CONFIG.replace("my_r: r", "my_r: [r]"), "filters.my_r: Input should be a valid string"),
    (CONFIG.replace("my_r: r", "my_r: ''"), "filters.my_r: String should have at least 1 character"),
    (CONFIG.replace("name: MyCam", "name: My-Cam"),
     "name: 'My-Cam' is not a valid instrument name: it names the class "
     "lsst.cp.flatnorm.instrument.<name>, so it must be a Python identifier not starting with '_'."),
    (CONFIG.replace("name: MyCam", "name: FlatInstrument"),
     "name: 'FlatInstrument' cannot name an instrument: lsst.cp.flatnorm.instrument.FlatInstrument "
     "is taken by a Python or module name."),
    (CONFIG.replace("camera.json", "camera.txt"),
     "camera: expected a camera file ending in .json, .yaml, .yml, python:module.function or "
     "instrument:module.Class; got 'camera.txt'."),
    (CONFIG.replace("camera.json", "python:no-such.module"),
     "camera: expected python:module.function; got 'python:no-such.module'."),
    (CONFIG + "exposure_max: 0\n", "exposure_max: Input should be greater than 0"),
    ("- MyCam\n", "expected a mapping with keys name, camera and filters; got list."),
])
def test_config_errors_name_the_file_and_key(tmp_path, text, error):
    path = write_config(tmp_path, text)
    with pytest.raises(ValueError) as raised:
        FlatInstrumentConfig.from_file(path)
    assert str(raised.value) == f"Instrument config {path}: {error}"


def test_missing_camera_file_is_named(tmp_path):
    path = write_config(tmp_path, CONFIG.replace("camera.json", "cameras/missing.json"))
    with pytest.raises(ValueError) as raised:
        FlatInstrumentConfig.from_file(path)
    missing = tmp_path / "cameras" / "missing.json"
    assert str(raised.value) == f"Instrument config {path}: camera: no camera file {missing}."


def test_obs_yaml_camera(tmp_path, butler):
    """A .yaml camera is read as obs_base's camera YAML (a two-detector LSSTCam-like "TinyCam")."""
    camera_file = Path(__file__).parent / "data" / "obs_camera" / "tiny_lsstcam.yaml"
    path = write_config(tmp_path, f"name: TinyCam\ncamera: {camera_file}\nfilters: {{r_57: r}}\n")
    instrument = FlatInstrument.from_config(path)
    assert instrument.getCamera() == CameraModel.from_obs_yaml(camera_file)
    instrument.register(butler.registry)
    records = butler.query_dimension_records("detector", instrument="TinyCam")
    assert {(record.full_name, record.raft, record.name_in_raft, record.purpose) for record in records} == {
        ("R22_S11", "R22", "S11", "SCIENCE"), ("R00_SW1", "R00", "SW1", "WAVEFRONT")
    }


def test_python_camera_must_return_a_camera_model(tmp_path):
    config = FlatInstrumentConfig.from_file(write_config(tmp_path, CONFIG.replace(
        "camera.json", "python:lsst.cp.flatnorm.sim.camera.make_sim_camera")))
    assert config.load_camera() == make_sim_camera()
    config = config.model_copy(update={"camera": "python:os.getcwd"})
    message = "^python:os.getcwd gave a str, neither a CameraModel nor an afw Camera.$"
    with pytest.raises(TypeError, match=message):
        config.load_camera()


# Registration and the camera.

def test_register_writes_instrument_detector_and_filter_records(config_path, butler):
    instrument = FlatInstrument.from_config(config_path)
    instrument.register(butler.registry)
    instrument.register(butler.registry)  # idempotent
    (record,) = butler.query_dimension_records("instrument")
    assert (record.name, record.class_name) == ("MyCam", "lsst.cp.flatnorm.instrument.MyCam")
    assert (record.detector_max, record.exposure_max, record.visit_max) == (8, 10**14, 10**14)
    detectors = {record.id: (record.full_name, record.raft, record.name_in_raft, record.purpose)
                 for record in butler.query_dimension_records("detector")}
    assert detectors == {
        0: ("R22_S00", "R22", "S00", "SCIENCE"),
        1: ("R22_S01", "R22", "S01", "SCIENCE"),
        2: ("R22_S10", "R22", "S10", "SCIENCE"),
        3: ("R22_S11", "R22", "S11", "SCIENCE"),
        4: ("R00_SW0", "R00", "SW0", "WAVEFRONT"),
        7: ("GUIDE7", None, "GUIDE7", "GUIDER"),
    }
    filters = {record.name: record.band for record in butler.query_dimension_records("physical_filter")}
    assert filters == {"my_g": "g", "my_r": "r"}


def test_raft_separator_null_gives_no_rafts(tmp_path, butler):
    path = write_config(tmp_path, CONFIG + "raft_separator: null\n")
    FlatInstrument.from_config(path).register(butler.registry)
    records = butler.query_dimension_records("detector", where="detector = 3", instrument="MyCam")
    assert [(record.full_name, record.raft, record.name_in_raft) for record in records] == [
        ("R22_S11", None, "R22_S11")
    ]


def test_register_is_one_transaction(tmp_path, butler):
    FlatInstrument.from_config(write_config(tmp_path / "v1")).register(butler.registry)
    # A new detector and a changed band: the conflict leaves the new detector out too.
    changed = write_config(tmp_path / "v2", CONFIG.replace("my_r: r", "my_r: i"),
                           camera=my_camera(extra_detector_id=5))
    with pytest.raises(ConflictingDefinitionError):
        FlatInstrument.from_config(changed).register(butler.registry)
    assert 5 not in {record.id for record in butler.query_dimension_records("detector")}
    FlatInstrument.from_config(changed).register(butler.registry, update=True)
    assert 5 in {record.id for record in butler.query_dimension_records("detector")}


def test_write_camera_certifies_it(config_path, butler):
    instrument = FlatInstrument.from_config(config_path)
    instrument.register(butler.registry)
    ref = instrument.write_camera(butler, "v1")
    assert ref.run == "MyCam/calib/v1/unbounded"
    assert butler.collections.get_info("MyCam/calib/v1").type == CollectionType.CALIBRATION
    read = butler.get("camera", instrument="MyCam", collections="MyCam/calib/v1", timespan=None)
    assert read == my_camera()


def test_camera_argument_replaces_the_config_camera(config_path):
    small = my_camera().model_copy(update={"detectors": my_camera().detectors[:2]})
    instrument = flat_instrument.MyCam(config=FlatInstrumentConfig.from_file(config_path), camera=small)
    assert instrument.getCamera() is small
    with pytest.raises(ValueError, match="^MyCam needs a camera named 'MyCam'; got 'Other'.$"):
        flat_instrument.MyCam(camera=small.model_copy(update={"name": "Other"}))


def test_config_camera_of_another_instrument(tmp_path):
    path = write_config(tmp_path, camera=my_camera().model_copy(update={"name": "Other"}))
    with pytest.raises(ValueError) as raised:
        FlatInstrument.from_config(path).getCamera()
    camera_file = tmp_path / "camera.json"
    assert str(raised.value) == f"MyCam needs a camera named 'MyCam'; got 'Other' from {camera_file}."


# Construction by name.

def test_classes_by_name_are_cached_and_pickle(config_path):
    instrument = FlatInstrument.from_config(config_path, collection_prefix="u/me")
    assert type(instrument) is flat_instrument.MyCam is flat_instrument.instrument_class("MyCam")
    assert get_full_type_name(instrument) == "lsst.cp.flatnorm.instrument.MyCam"
    copy = pickle.loads(pickle.dumps(instrument))
    assert type(copy) is flat_instrument.MyCam
    assert (copy.getName(), copy.makeCalibrationCollectionName()) == ("MyCam", "u/me/calib")
    assert copy.getCamera() == instrument.getCamera()


def test_name_is_found_on_the_instrument_path(config_path, monkeypatch):
    monkeypatch.setenv(INSTRUMENT_PATH_ENV, os.pathsep.join(["", str(config_path.parent)]))
    assert flat_instrument.config_search_path()[0] == config_path.parent
    assert flat_instrument.MyCam().config == FlatInstrumentConfig.from_file(config_path)
    # A file found by name must describe the instrument of that name.
    write_config(config_path.parent, CONFIG, file_name="OtherCam.yaml")
    with pytest.raises(ValueError, match="is for instrument 'MyCam', not 'OtherCam'"):
        flat_instrument.OtherCam()
    with pytest.raises(ValueError, match="^OtherCam cannot take the config of instrument 'MyCam'.$"):
        flat_instrument.OtherCam(config=FlatInstrumentConfig.from_file(config_path))


def test_construction_by_name_in_a_new_process(config_path, butler, tmp_path):
    """What pipetask and the butler do: import the registry's class_name, with the config on
    CP_FLATNORM_INSTRUMENT_PATH."""
    instrument = FlatInstrument.from_config(config_path)
    instrument.register(butler.registry)
    instrument.write_camera(butler)
    script = textwrap.dedent(f"""
        import json, pickle, sys
        from lsst.daf.butler import Butler
        from lsst.pipe.base import Instrument
        from lsst.utils.introspection import get_full_type_name
        butler = Butler.from_config({str(tmp_path / "repo")!r})
        by_class = Instrument.from_string("lsst.cp.flatnorm.instrument.MyCam")
        by_name = Instrument.fromName("MyCam", butler.registry, collection_prefix="u/me")
        copy = pickle.loads(pickle.dumps(by_name))
        json.dump({{
            "types": [get_full_type_name(x) for x in (by_class, by_name, copy)],
            "calib": [x.makeCalibrationCollectionName() for x in (by_class, by_name, copy)],
            "camera": copy.getCamera() == butler.get("camera", instrument="MyCam",
                                                     collections="MyCam/calib", timespan=None),
        }}, sys.stdout)
    """)
    env = dict(os.environ, **{INSTRUMENT_PATH_ENV: str(config_path.parent)})
    result = subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True,
                            text=True)
    assert json.loads(result.stdout) == {
        "types": ["lsst.cp.flatnorm.instrument.MyCam"] * 3,
        "calib": ["MyCam/calib", "u/me/calib", "u/me/calib"],
        "camera": True,
    }


def test_unknown_name_without_config(no_config_path, tmp_path):
    instrument = flat_instrument.NoConfigCam()
    assert instrument.getName() == "NoConfigCam"
    assert instrument.makeUmbrellaCollectionName() == "NoConfigCam/defaults"
    message = ("No config file NoConfigCam.yaml for instrument NoConfigCam in "
               f"{tmp_path / 'empty'}, {flat_instrument.config_search_path()[-1]} (add directories with "
               "$CP_FLATNORM_INSTRUMENT_PATH). An instrument constructed by name without it still names "
               "its collections, but has no camera or filters: its camera is in the butler repository "
               "as the certified 'camera' calibration (collection NoConfigCam/calib), and registering "
               "the instrument or writing its camera needs the config file (or "
               "FlatInstrument.from_config(path)).")
    with pytest.raises(LookupError) as raised:
        instrument.getCamera()
    assert str(raised.value) == message
    with pytest.raises(LookupError, match="registering the instrument"):
        instrument.register(None)


def test_what_is_not_an_instrument(no_config_path):
    with pytest.raises(TypeError, match="FlatInstrument is generic"):
        FlatInstrument()
    with pytest.raises(NotImplementedError, match=r"^NoConfigCam reads no raw data: flats come in as "
                       r"post-ISR images \(dataset type cpFlatIsrExp, via `cp-flatnorm ingest`"):
        flat_instrument.NoConfigCam().getRawFormatter({})
    for name in ("_private", "__path__", "instrument", "object"):
        assert not hasattr(flat_instrument, name)
