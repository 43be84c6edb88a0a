# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""``cp-flatnorm camera import`` and ``cp-flatnorm register``: files written, records and the
certified camera read back, idempotence, and each refusal's message and exit status."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lsst.cp.flatnorm.butler_setup import make_repo
from lsst.cp.flatnorm.camera_model import CameraModel
from lsst.cp.flatnorm.cli import main
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.daf.butler import Butler, Config, Timespan

TESTS = Path(__file__).parent
TINY_LSSTCAM = TESTS / "data" / "obs_camera" / "tiny_lsstcam.yaml"
CP_FLATNORM = Path(sys.executable).with_name("cp-flatnorm")
ALWAYS = Timespan(None, None)
INSTRUMENT_CONFIG = "name: TinyCam\ncamera: camera.json\nfilters:\n  tiny_r: r\n  tiny_i: i\n"


def test_camera_import_writes_the_obs_camera_as_json(tmp_path, capsys):
    output = tmp_path / "camera.json"
    assert main(["camera", "import", str(TINY_LSSTCAM), "-o", str(output)]) == 0
    assert capsys.readouterr().out == (f"Camera TinyCam: 2 detectors (SCIENCE, WAVEFRONT), 12 amplifiers, "
                                       f"written to {output}.\n")
    camera = CameraModel.model_validate_json(output.read_text())
    assert camera == CameraModel.from_obs_yaml(TINY_LSSTCAM)
    assert [(det.getId(), det.getName(), len(det)) for det in camera] == [(94, "R22_S11", 8),
                                                                          (192, "R00_SW1", 4)]


def test_camera_import_of_a_python_source(tmp_path):
    output = tmp_path / "camera.json"
    assert main(["camera", "import", "python:lsst.cp.flatnorm.sim.camera.make_sim_camera",
                 "-o", str(output)]) == 0
    assert CameraModel.model_validate_json(output.read_text()) == make_sim_camera()


def test_camera_import_of_an_obs_instrument_with_an_afw_camera(tmp_path):
    """The installed command, with a stand-in afw and obs package importable (only in its process)."""
    output = tmp_path / "camera.json"
    path = os.pathsep.join([str(TESTS / "afw_standin"), str(TESTS), os.environ.get("PYTHONPATH", "")])
    command = [str(CP_FLATNORM), "camera", "import", "instrument:standin_obs_instrument.StandInCam",
               "-o", str(output)]
    process = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=path))
    assert process.returncode == 0, process.stderr
    expected = make_sim_camera(n_side=2, amp_width=4, amp_height=3, n_wavefront=1)
    camera = CameraModel.model_validate_json(output.read_text())
    # afw states every reference point; the simulator leaves it to default to the bbox centre.
    assert [det.get_reference_point() for det in camera] == [det.get_reference_point() for det in expected]
    centred = [det.model_copy(update={"reference_point": None}) for det in camera]
    assert camera.model_copy(update={"detectors": centred}) == expected


@pytest.mark.parametrize("source, message", [
    ("camera.txt", "expected a camera file ending in .json, .yaml, .yml, python:module.function or "
                   "instrument:module.Class; got 'camera.txt'."),
    ("missing.yaml", "no camera file {tmp}/missing.yaml."),
    ("python:os.getcwd", "python:os.getcwd gave a str, neither a CameraModel nor an afw Camera."),
    ("python:no_such_module.camera",
     "Unable to import 'no_such_module.camera' (No module named 'no_such_module')"),
])
def test_camera_import_refusals(tmp_path, capsys, monkeypatch, source, message):
    monkeypatch.chdir(tmp_path)
    assert main(["camera", "import", source, "-o", "out.json"]) == 1
    assert capsys.readouterr().err == f"cp-flatnorm camera: error: {message.format(tmp=tmp_path)}\n"
    assert not (tmp_path / "out.json").exists()


@pytest.fixture
def config_file(tmp_path):
    assert main(["camera", "import", str(TINY_LSSTCAM), "-o", str(tmp_path / "camera.json")]) == 0
    path = tmp_path / "TinyCam.yaml"
    path.write_text(INSTRUMENT_CONFIG)
    return path


def register(repo, config_file, *options):
    return main(["register", str(repo), "--instrument-config", str(config_file), *options])


def test_register_creates_the_repository_and_certifies_the_camera(tmp_path, config_file, capsys):
    repo = tmp_path / "repo"
    assert register(repo, config_file) == 0
    assert capsys.readouterr().out == (f"Created repository {repo}; registered TinyCam (2 detectors, filters "
                                       "tiny_r, tiny_i); camera certified in TinyCam/calib.\n")
    butler = Butler.from_config(str(repo))
    records = {r.id: (r.full_name, r.raft, r.name_in_raft, r.purpose)
               for r in butler.registry.queryDimensionRecords("detector", instrument="TinyCam")}
    assert records == {94: ("R22_S11", "R22", "S11", "SCIENCE"), 192: ("R00_SW1", "R00", "SW1", "WAVEFRONT")}
    filters = {r.name: r.band for r in butler.registry.queryDimensionRecords("physical_filter")}
    assert filters == {"tiny_r": "r", "tiny_i": "i"}
    camera = butler.get("camera", instrument="TinyCam", collections="TinyCam/calib", timespan=ALWAYS)
    assert camera == CameraModel.from_obs_yaml(TINY_LSSTCAM)


def test_register_again_changes_nothing(tmp_path, config_file, capsys):
    repo = tmp_path / "repo"
    assert register(repo, config_file) == 0
    assert register(repo, config_file) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"Opened repository {repo}; registered TinyCam (2 detectors, filters tiny_r, tiny_i); camera already "
        "certified, unchanged in TinyCam/calib.")
    butler = Butler.from_config(str(repo))
    assert len(butler.query_datasets("camera", collections="*", find_first=False)) == 1


def test_a_changed_camera_needs_update(tmp_path, config_file, capsys):
    repo = tmp_path / "repo"
    assert register(repo, config_file) == 0
    camera = CameraModel.model_validate_json((tmp_path / "camera.json").read_text())
    moved = camera.model_copy(update={"detectors": [camera.detectors[0].model_copy(update={"yaw": 1.5}),
                                                    *camera.detectors[1:]]})
    (tmp_path / "camera.json").write_text(moved.model_dump_json())
    capsys.readouterr()
    assert register(repo, config_file) == 1
    assert capsys.readouterr().err == ("cp-flatnorm register: error: TinyCam/calib already certifies a "
                                       "different camera for TinyCam; use update (--update) to replace it.\n")
    butler = Butler.from_config(str(repo))
    assert butler.get("camera", instrument="TinyCam", collections="TinyCam/calib", timespan=ALWAYS) == camera
    assert register(repo, config_file, "--update") == 0
    butler = Butler.from_config(str(repo))
    assert butler.get("camera", instrument="TinyCam", collections="TinyCam/calib", timespan=ALWAYS) == moved
    assert len(butler.query_datasets("camera", collections="*", find_first=False)) == 1


def test_register_refuses_a_repository_without_the_camera_storage_class(tmp_path, config_file, capsys):
    repo = tmp_path / "plain"
    Butler.makeRepo(str(repo), config=Config())
    assert register(repo, config_file) == 1
    assert capsys.readouterr().err.startswith(
        "cp-flatnorm register: error: The repository does not know the CameraModel storage class: create it "
        "with cp-flatnorm register (or lsst.cp.flatnorm.butler_setup.make_repo), or give `butler create` "
        "the seed config ")
    butler = Butler.from_config(str(repo))
    assert not butler.registry.queryDimensionRecords("instrument").any()
    assert not butler.registry.queryDatasetTypes("camera")
    assert list(butler.collections.query("*")) == []


def test_register_refuses_a_bad_config(tmp_path, capsys):
    path = tmp_path / "Bad.yaml"
    path.write_text("name: Bad\ncamera: camera.json\nfilters: {r: r}\n")
    assert register(tmp_path / "repo", path) == 1
    assert capsys.readouterr().err == (f"cp-flatnorm register: error: Instrument config {path}: camera: "
                                       f"no camera file {tmp_path}/camera.json.\n")
    assert not (tmp_path / "repo").exists()


def test_registered_repository_is_the_seeded_kind(tmp_path, config_file):
    """A repository that make_repo created already is opened, not recreated."""
    repo = tmp_path / "repo"
    make_repo(repo)
    assert register(repo, config_file) == 0
    assert Butler.from_config(str(repo)).registry.queryDimensionRecords("instrument").count() == 1
