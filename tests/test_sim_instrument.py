# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of the SimFlatCam instrument: registry records and the certified camera.

SimFlatCam is the FlatInstrument of the packaged SimFlatCam.yaml; tests/test_instrument.py tests
FlatInstrument on a camera of its own."""

import subprocess
import sys
from pathlib import Path

import pytest

from lsst.cp.flatnorm import instrument as flat_instrument
from lsst.cp.flatnorm.butler_setup import make_repo
from lsst.cp.flatnorm.camera_model import CameraModel
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.instrument import SIM_FILTERS, SimFlatCam
from lsst.daf.butler import Butler, CollectionType


@pytest.fixture
def butler(tmp_path):
    return make_repo(tmp_path / "repo")


def test_register_writes_instrument_detector_and_filter_records(butler):
    SimFlatCam().register(butler.registry)
    (instrument,) = butler.query_dimension_records("instrument")
    assert instrument.name == "SimFlatCam"
    assert instrument.class_name == "lsst.cp.flatnorm.instrument.SimFlatCam"
    assert instrument.detector_max == 11
    detectors = {record.id: record for record in butler.query_dimension_records("detector")}
    assert sorted(detectors) == list(range(11))
    assert [detectors[i].purpose for i in range(11)] == ["SCIENCE"] * 9 + ["WAVEFRONT"] * 2
    assert (detectors[4].full_name, detectors[4].raft, detectors[4].name_in_raft) == ("R22_S11", "R22", "S11")
    assert (detectors[10].full_name, detectors[10].raft, detectors[10].name_in_raft) == (
        "R44_SW0", "R44", "SW0"
    )
    filters = {record.name: record.band for record in butler.query_dimension_records("physical_filter")}
    assert filters == SIM_FILTERS == {"sim_g": "g", "sim_r": "r", "sim_i": "i"}


def test_register_is_idempotent_and_follows_the_camera(butler):
    small = make_sim_camera(n_side=2, n_wavefront=1, amp_width=4, amp_height=4)
    SimFlatCam(camera=small).register(butler.registry)
    SimFlatCam(camera=small).register(butler.registry)
    assert sorted(record.id for record in butler.query_dimension_records("detector")) == [0, 1, 2, 3, 4]


def test_camera_is_certified_with_unbounded_validity_and_readable(butler):
    camera = make_sim_camera(n_side=2, n_wavefront=1, amp_width=4, amp_height=4)
    instrument = SimFlatCam(camera=camera)
    instrument.register(butler.registry)
    ref = instrument.write_camera(butler)
    assert ref.run == "SimFlatCam/calib/unbounded"
    assert butler.collections.get_info("SimFlatCam/calib").type == CollectionType.CALIBRATION
    (association,) = butler.registry.queryDatasetAssociations("camera", collections="SimFlatCam/calib")
    assert association.ref.id == ref.id
    assert association.timespan.begin is None and association.timespan.end is None
    read = butler.get("camera", instrument="SimFlatCam", collections="SimFlatCam/calib", timespan=None)
    assert isinstance(read, CameraModel)
    assert read == camera


def test_camera_survives_a_new_butler_process_view(tmp_path):
    """The seed config makes CameraModel known to any butler opening the repo."""
    butler = make_repo(tmp_path / "repo")
    instrument = SimFlatCam()
    instrument.register(butler.registry)
    instrument.write_camera(butler)
    reopened = Butler.from_config(str(tmp_path / "repo"), collections="SimFlatCam/calib")
    assert len(reopened.get("camera", instrument="SimFlatCam", timespan=None)) == 11


def test_sim_path_is_the_configured_class():
    """Repositories and pipelines that name lsst.cp.flatnorm.sim.instrument.SimFlatCam get the class
    lsst.cp.flatnorm.instrument makes from the packaged config."""
    assert SimFlatCam is flat_instrument.SimFlatCam
    assert SimFlatCam().getCamera() == make_sim_camera()


def test_raw_formatter_and_wrong_camera_raise():
    with pytest.raises(NotImplementedError, match="reads no raw data: flats come in as post-ISR"):
        SimFlatCam().getRawFormatter({})
    with pytest.raises(ValueError, match="needs a camera named 'SimFlatCam'"):
        SimFlatCam(camera=CameraModel(name="Other", detectors=[]))


def test_butler_register_instrument_command(tmp_path):
    root = tmp_path / "repo"
    make_repo(root)
    butler_command = Path(sys.executable).with_name("butler")
    subprocess.run([str(butler_command), "register-instrument", str(root),
                    "lsst.cp.flatnorm.sim.instrument.SimFlatCam"], check=True, capture_output=True)
    butler = Butler.from_config(str(root))
    assert len(list(butler.query_dimension_records("detector"))) == 11
