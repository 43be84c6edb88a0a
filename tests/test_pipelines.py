# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The shipped pipelines through the pipetask command, run in this process (the program runs ``build``
in tests/test_wheel.py, ``qgraph`` in tests/test_cpFlatNormalize_camera.py): build, contracts and
quantum graphs."""

import re
import shutil
import tempfile
import unittest
from pathlib import Path

import lsst.utils.tests
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig
from lsst.cp.flatnorm.sim.repo import build_sim_repo
from lsst.cp.flatnorm.sim.run import pipeline_uri
from pipetask_in_process import pipetask

SIM_PIPELINE = pipeline_uri("SimFlatCam", "cpFlat.yaml")
INGREDIENT = pipeline_uri("_ingredients", "cpFlatNorm.yaml")


class PipelineBuildTestCase(lsst.utils.tests.TestCase):
    def test_show_pipeline_has_cp_pipe_labels_and_classes(self):
        process = pipetask("build", "-p", SIM_PIPELINE, "--show", "pipeline")
        self.assertEqual(process.returncode, 0, process.stderr[-2000:])
        shown = process.stdout
        for label, cls in (("cpFlatMeasure", "lsst.cp.flatnorm.cpFlatMeasure.CpFlatMeasureTask"),
                           ("cpFlatNormalize", "lsst.cp.flatnorm.cpFlatNormalize.CpFlatNormalizationTask"),
                           ("cpFlatCombine", "lsst.cp.flatnorm.cpCombine.CpFlatCombineTask")):
            self.assertRegex(shown, rf"{label}:\s*\n\s*class: {re.escape(cls)}")
        self.assertIn("instrument: lsst.cp.flatnorm.sim.instrument.SimFlatCam", shown)

    def test_contract_rejects_mismatched_statistics_name(self):
        # Contracts are checked when the pipeline graph is built (not by --show pipeline).
        process = pipetask("build", "-p", INGREDIENT, "-c", "cpFlatNormalize:connections.inputMDs=otherStats",
                           "--show", "pipeline-graph")
        self.assertNotEqual(process.returncode, 0)
        self.assertIn("cpFlatNormalize must read the statistics that cpFlatMeasure writes", process.stderr)


class QuantumGraphTestCase(lsst.utils.tests.TestCase):
    """`pipetask qgraph` on a small simulated repo: one quantum per image, per filter, per detector."""

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp()
        camera = make_sim_camera(n_side=2, amp_width=4, amp_height=4, n_wavefront=1)
        config = FlatSimConfig(n_exposures=3, dead_amplifier=None, shadow=None, saturation=None,
                               missing_images=((0, 4),))
        cls.repo = build_sim_repo(Path(cls.root) / "repo", camera=camera, config=config)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_qgraph_counts_quanta_per_task(self):
        process = pipetask("qgraph", "-b", str(self.repo.root), "-i", self.repo.defaults_collection,
                           "-o", "u/test/qgraph", "-p", SIM_PIPELINE)
        self.assertEqual(process.returncode, 0, process.stderr[-3000:])
        # pipetask prints a summary table with one "N label" row per task (on stderr without a terminal).
        rows = re.findall(r"^\s*(\d+)\s+(cpFlat\w+)\s*$", process.stdout + process.stderr, re.M)
        counts = {label: int(n) for n, label in rows}
        # 5 detectors x 3 exposures less one missing image; one normalization; 5 combined flats.
        self.assertEqual(counts, {"cpFlatMeasure": 14, "cpFlatNormalize": 1, "cpFlatCombine": 5},
                         process.stdout + process.stderr[-3000:])


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
