# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The normalization through ``pipetask run`` on LSSTCam's full geometry, read from a camera YAML.

The camera comes from obs_base's camera YAML format: by default the full-size LSSTCam file that
`lsstcam_camera_yaml` writes (205 detectors, 3,216 amplifiers), or the file named by the
environment variable ``CP_FLATNORM_CAMERA_YAML``, e.g. the ``lsstCam.yaml`` that obs_lsst's build
generates. A `FlatInstrument` named after the camera is registered from a config file, every
(exposure, detector) gets statistics with known amplifier gains and lamp levels, and the
normalization runs at AMP level through ``pipetask``: every scale must match the truth.
"""

import os
import shutil
import tempfile
from pathlib import Path

import astropy.time
import astropy.units as u
import numpy as np
import pytest
import yaml

import lsst.utils.tests
from check_methods import run_check_methods
from lsst.cp.flatnorm.butler_setup import make_repo
from lsst.cp.flatnorm.camera_model import CameraModel
from lsst.cp.flatnorm.exposure_records import ExposureInfo, insert_exposure_records
from lsst.cp.flatnorm.flat_statistics import pack_statistics
from lsst.cp.flatnorm.instrument import FlatInstrument
from lsst.daf.butler import Butler, CollectionType, DatasetType
from pipetask_in_process import pipetask
from lsstcam_camera_yaml import LSSTCAM_AMPLIFIER_COUNT, LSSTCAM_DETECTOR_COUNT, write_lsstcam_yaml

PIPELINE = Path(__file__).parents[1] / "pipelines" / "_ingredients" / "cpFlatNorm.yaml"
FILTER = "lamp_r"
LAMPS = {2026120100001: 10000.0, 2026120100002: 14000.0, 2026120100003: 8000.0}
AMP_PIXELS = 500_000
STATS_RUN = "test/cpFlatStatistics"


def camera_yaml(directory: Path) -> Path:
    """The camera file: ``CP_FLATNORM_CAMERA_YAML`` if set, else a written full-size LSSTCam."""
    given = os.environ.get("CP_FLATNORM_CAMERA_YAML")
    if given:
        return Path(given)
    path = directory / "lsstCam.yaml"
    write_lsstcam_yaml(path)
    return path


def write_instrument_config(directory: Path, camera: CameraModel, camera_path: Path) -> Path:
    config = {"name": camera.getName(), "camera": str(camera_path), "filters": {FILTER: "r"}}
    path = directory / f"{camera.getName()}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def exposures() -> list[ExposureInfo]:
    start = astropy.time.Time("2026-12-01T20:00:00", scale="tai")
    return [
        ExposureInfo(id=exposure, obs_id=f"FLAT_{exposure}", seq_num=exposure % 100_000,
                     day_obs=exposure // 100_000, physical_filter=FILTER,
                     begin=start + 60 * k * u.s, exposure_time=15.0)
        for k, exposure in enumerate(LAMPS)
    ]


def put_statistics(butler: Butler, camera: CameraModel, gains: dict[tuple[int, str], float]) -> None:
    dataset_type = DatasetType("cpFlatStatistics", ("instrument", "exposure", "detector"), "TaskMetadata",
                               universe=butler.dimensions)
    butler.registry.registerDatasetType(dataset_type)
    butler.collections.register(STATS_RUN)
    # One transaction: a registry commit per dataset (615 of them) was most of the module's time.
    with butler.transaction():
        for exposure, lamp in LAMPS.items():
            for detector in camera:
                names = [amp.getName() for amp in detector]
                levels = [gains[(detector.getId(), name)] * lamp for name in names]
                metadata = pack_statistics(
                    median=float(np.mean(levels)), sigma=0.0, n=AMP_PIXELS * len(names), amp_names=names,
                    amp_medians=levels, amp_sigmas=[0.0] * len(names), amp_ns=[AMP_PIXELS] * len(names),
                )
                butler.put(metadata, dataset_type, instrument=camera.getName(), exposure=exposure,
                           detector=detector.getId(), run=STATS_RUN)


pytestmark = pytest.mark.slow


class RealGeometryPipetaskTestCase(lsst.utils.tests.TestCase):
    """AMP-level normalization of every amplifier of a real camera, through the pipetask command
    (in this process)."""

    @classmethod
    def setUpClass(cls):
        cls.root = Path(tempfile.mkdtemp())
        camera_path = camera_yaml(cls.root)
        cls.camera = CameraModel.from_obs_yaml(camera_path)
        instrument = FlatInstrument.from_config(write_instrument_config(cls.root, cls.camera, camera_path))
        rng = np.random.default_rng(12)
        cls.gains = {(det.getId(), amp.getName()): float(rng.uniform(0.7, 1.3))
                     for det in cls.camera for amp in det}
        butler = make_repo(cls.root / "repo")
        instrument.register(butler.registry)
        instrument.write_camera(butler)
        insert_exposure_records(butler, instrument.getName(), exposures())
        put_statistics(butler, cls.camera, cls.gains)
        cls.inputs = instrument.makeUmbrellaCollectionName()
        butler.collections.register(cls.inputs, CollectionType.CHAINED)
        butler.collections.redefine_chain(cls.inputs, [STATS_RUN, instrument.makeCalibrationCollectionName()])

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def check_camera_is_read_whole(self):
        if self.camera.getName() != "LSSTCam":
            self.skipTest(f"the counts below are LSSTCam's; the camera file given is {self.camera.getName()}")
        self.assertEqual(len(self.camera), LSSTCAM_DETECTOR_COUNT)
        self.assertEqual(len(self.gains), LSSTCAM_AMPLIFIER_COUNT)
        self.assertEqual(self.camera[191].getName(), "R00_SW0")
        self.assertEqual([amp.getName() for amp in self.camera["R00_SW0"]],
                         [f"C1{i}" for i in range(8)])

    def check_pipetask_amp_level_matches_truth(self):
        name = self.camera.getName()
        process = pipetask("run", "--register-dataset-types", "-b", str(self.root / "repo"),
                           "-i", self.inputs, "-o", "u/test/amp", "-p", f"{PIPELINE}#cpFlatNormalize",
                           "-c", "cpFlatNormalize:level=AMP",
                           "-d", f"instrument='{name}' AND physical_filter='{FILTER}'")
        self.assertEqual(process.returncode, 0, process.stderr[-3000:])
        butler = Butler.from_config(str(self.root / "repo"), collections="u/test/amp")
        scales = butler.get("cpFlatNormalizeScales", instrument=name, physical_filter=FILTER)
        table = butler.get("cpFlatNormalizeScaleTable", instrument=name, physical_filter=FILTER)
        self.assertEqual(len(table), len(self.gains) * len(LAMPS))
        self.assertEqual(set(table["flag"]), {"USED"})
        # The gauge makes the pixel-weighted mean of G one; every amplifier has the same pixel
        # count in every exposure, so that is the plain mean of the amplifier gains.
        norm = np.mean(list(self.gains.values()))
        found = np.array([scales["detScale"][det][amp] for det, amp in self.gains])
        np.testing.assert_allclose(found, np.array(list(self.gains.values())) / norm, rtol=1e-9)
        for detector, amp in [(0, "C10"), (94, "C07"), (191, "C17"), (204, "C13")]:
            if detector in self.camera:
                for exposure, lamp in LAMPS.items():
                    self.assertAlmostEqual(scales["expScale"][detector][amp][exposure] / (lamp * norm),
                                           1.0, places=9)

    def test_all_checks(self):
        run_check_methods(self)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()
