# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The flat pipeline through ``bps submit`` with the parsl plugin on this machine, and the
zipfile fix (CPython gh-127847) without which its jobs cannot read the quantum graph."""

import importlib.util
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

import lsst.utils.tests
from lsst.cp.flatnorm import bps_support
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig
from lsst.cp.flatnorm.sim.repo import build_sim_repo
from lsst.daf.butler import Butler
from lsst.pipe.base import Pipeline
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph

BPS_DIR = "resource://lsst.cp.flatnorm/bps"
PIPELINE = "resource://lsst.cp.flatnorm/pipelines/SimFlatCam/cpFlat.yaml"
ENV_BIN = Path(sys.executable).parent
HAVE_BPS_PARSL = (
    importlib.util.find_spec("lsst.ctrl.bps") is not None
    and importlib.util.find_spec("lsst.ctrl.bps.parsl") is not None
    and (ENV_BIN / "bps").exists()
)
KNOWN_AFFECTED = {(3, 12, 1), (3, 13, 0)}  # the interpreters of this project's machine (probed)
SUBMIT_TIMEOUT = 270  # seconds; the run takes 1-2.5 minutes on 2 busy cores
INSTRUMENT = "SimFlatCam"
FILTER = "sim_r"


class ZipfileSeekFixTestCase(lsst.utils.tests.TestCase):
    """`bps_support.patch_zipfile_seek` against the access pattern of quantum-graph reads."""

    def setUp(self):
        original = zipfile._SharedFile.seek
        self.addCleanup(setattr, zipfile._SharedFile, "seek", original)

    @staticmethod
    def make_archive(members):
        """An in-memory zip of uncompressed members, like a quantum graph file."""
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as writer:
            for name, data in members.items():
                writer.writestr(name, data)
        return archive

    def interleaved_reads(self, archive, members):
        """Read a block of one member, then seek forward past the 4 KiB read buffer in the other
        and read there, as a job does between the address file and the quantum datasets."""
        results = []
        with zipfile.ZipFile(archive) as reader, reader.open("addr") as addr, reader.open("mb") as mb:
            for offset in (5000, 9000, 13000):
                addr.read(1000)
                mb.seek(offset)
                results.append((offset, mb.read(100)))
        return results

    def test_probe_knows_the_interpreters(self):
        version = sys.version_info[:3]
        if version in KNOWN_AFFECTED:
            self.assertTrue(bps_support.zipfile_seek_is_broken())
        elif version < (3, 12):  # before the fast seek of uncompressed members existed
            self.assertFalse(bps_support.zipfile_seek_is_broken())

    def test_patched_reads_are_right(self):
        members = {"mb": bytes(range(256)) * 80, "addr": b"A" * 20000}
        archive = self.make_archive(members)
        broken = bps_support.zipfile_seek_is_broken()
        self.assertEqual(bps_support.patch_zipfile_seek(), broken)
        self.assertFalse(bps_support.zipfile_seek_is_broken())
        for offset, data in self.interleaved_reads(archive, members):
            self.assertEqual(data, members["mb"][offset:offset + 100], f"offset {offset}")

    @unittest.skipUnless(sys.version_info[:3] in KNOWN_AFFECTED, "interpreter without gh-127847")
    def test_unpatched_reads_are_wrong(self):
        members = {"mb": bytes(range(256)) * 80, "addr": b"A" * 20000}
        for offset, data in self.interleaved_reads(self.make_archive(members), members):
            self.assertNotEqual(data, members["mb"][offset:offset + 100], f"offset {offset}")

    def test_patch_once_and_only_when_needed(self):
        broken = bps_support.zipfile_seek_is_broken()
        self.assertEqual(bps_support.patch_zipfile_seek(), broken)
        patched_seek = zipfile._SharedFile.seek
        self.assertFalse(bps_support.patch_zipfile_seek())
        self.assertIs(zipfile._SharedFile.seek, patched_seek)

    def test_patch_fails_fast_if_it_does_not_cure(self):
        with mock.patch.object(bps_support, "zipfile_seek_is_broken", return_value=True):
            with self.assertRaisesRegex(RuntimeError, "gh-127847 and the runtime fix did not cure it"):
                bps_support.patch_zipfile_seek()

    def test_main_runs_a_console_script(self):
        with mock.patch.object(sys, "argv", ["ignored"]), mock.patch("sys.stdout", new=io.StringIO()) as out:
            with self.assertRaises(SystemExit) as exit_info:
                bps_support.main(["butler", "--help"])
        self.assertEqual(exit_info.exception.code, 0)
        self.assertIn("aggregate-graph", out.getvalue())
        self.assertFalse(bps_support.zipfile_seek_is_broken())

    def test_main_rejects_unknown_commands(self):
        with self.assertRaisesRegex(SystemExit, "no console script 'no-such-script'"):
            bps_support.main(["no-such-script"])
        with self.assertRaisesRegex(SystemExit, "usage: python -m lsst.cp.flatnorm.bps_support"):
            bps_support.main([])


def session_processes(session_id):
    """IDs of the live processes in a session (parsl puts its workers in process groups of
    their own, but they stay in the session of the ``bps`` process that started them)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _, _, session = stat[stat.rfind(")") + 2:].split()[:4]
        if int(session) == session_id and state != "Z":
            pids.append(int(entry.name))
    return pids


def kill_session(session_id):
    """Kill every process left in the session, one by one."""
    for pid in session_processes(session_id):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
@unittest.skipUnless(HAVE_BPS_PARSL, "lsst-ctrl-bps and lsst-ctrl-bps-parsl are not installed")
@unittest.skipUnless(Path("/proc").is_dir(), "needs /proc to clean up the parsl workers")
class BpsParslSubmitTestCase(lsst.utils.tests.TestCase):
    """``bps submit`` of the SimFlatCam flat pipeline with the shipped templates and parsl site.

    Two detectors x 52 exposures: 104 measurement quanta, enough for the graph's address file
    to outgrow a 4 KiB read, which is when the zipfile bug breaks every job.
    """

    output = "u/test/cpFlat"

    @classmethod
    def setUpClass(cls):
        cls.root = Path(tempfile.mkdtemp())
        camera = make_sim_camera(n_side=1, n_wavefront=1, amp_width=8, amp_height=16)
        # No shadowed exposure: with two detectors the solver cannot tell which of an exposure's
        # two entries is the outlier.
        config = FlatSimConfig(n_exposures=52, dead_amplifier=None, shadow=None, saturation=(6, 1))
        cls.repo = build_sim_repo(cls.root / "repo", camera=camera, config=config)
        cls.submit_yaml = cls.write_submit_yaml()
        cls.process = cls.submit()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    @classmethod
    def write_submit_yaml(cls):
        path = cls.root / "submit.yaml"
        path.write_text(f"""\
includeConfigs:
  - {BPS_DIR}/bps_cpFlat.yaml
  - {BPS_DIR}/sites/parsl_local.yaml
pipelineYaml: {PIPELINE}
payload:
  butlerConfig: {cls.repo.root}
  inCollection: {cls.repo.defaults_collection}
  dataQuery: "instrument='{INSTRUMENT}' AND physical_filter='{FILTER}'"
  output: {cls.output}
submitPath: {cls.root}/submit/{{outputRun}}
numberOfRetries: 0
site:
  local:
    retries: 0
""")
        return path

    @classmethod
    def submit(cls):
        """Run ``bps submit`` (it blocks until the parsl workflow is done) in a session of its own."""
        # The jobs run `python -m ...` and pipetask: the environment's bin must come first on PATH.
        path = f"{ENV_BIN}{os.pathsep}{os.environ['PATH']}"
        env = dict(os.environ, PATH=path)
        command = [sys.executable, "-m", "lsst.cp.flatnorm.bps_support", "bps", "submit",
                   str(cls.submit_yaml)]
        with open(cls.root / "bps.log", "w") as log:
            process = subprocess.Popen(command, cwd=cls.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                process.wait(timeout=SUBMIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                kill_session(process.pid)
                process.wait()
        cls.leftovers = cls.wait_for_session_end(process.pid)
        kill_session(process.pid)
        return process

    @staticmethod
    def wait_for_session_end(session_id, patience=10.0):
        """Processes still in the session after ``patience`` seconds."""
        deadline = time.monotonic() + patience
        while (pids := session_processes(session_id)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return pids

    def test_submit_and_read_back(self):
        """One test method, so that pytest-xdist runs the submission once, not once per worker."""
        for check in (self.check_submit_succeeded_without_leftovers,
                      self.check_measurements_ran_clustered_by_detector,
                      self.check_normalization_outputs_match_truth,
                      self.check_combined_flats_match_truth,
                      self.check_graph_needs_the_fix):
            with self.subTest(check.__name__):
                check()

    def submit_dir(self):
        (path,) = (self.root / "submit" / self.output).iterdir()
        return path

    def check_submit_succeeded_without_leftovers(self):
        log = (self.root / "bps.log").read_text()
        self.assertEqual(self.process.returncode, 0, log[-3000:])
        self.assertIn("'tasks_failed_count': 0", log)
        self.assertEqual(self.leftovers, [])
        failed = [path for path in (self.submit_dir() / "logs").rglob("*.stderr")
                  if "Traceback" in path.read_text()]
        self.assertEqual(failed, [], failed and failed[0].read_text()[-3000:])

    def check_measurements_ran_clustered_by_detector(self):
        cluster_logs = self.submit_dir() / "logs" / "measureByDetector"
        logs = sorted(path.name for path in cluster_logs.glob("*.stderr"))
        self.assertEqual(logs, ["cpFlatMeasure_det0.stderr", "cpFlatMeasure_det1.stderr"])
        butler = Butler.from_config(self.repo.root, collections=self.output)
        self.assertEqual(len(butler.query_datasets("cpFlatStatistics")), 2 * 52)

    def check_normalization_outputs_match_truth(self):
        butler = Butler.from_config(self.repo.root, collections=self.output)
        data_id = {"instrument": INSTRUMENT, "physical_filter": FILTER}
        scales = butler.get("cpFlatNormalizeScales", data_id)
        table = butler.get("cpFlatNormalizeScaleTable", data_id)
        truth = self.repo.truth
        for detector, scale in truth.detector_scales().items():
            self.assertFloatsAlmostEqual(scales["detScale"][detector], scale, rtol=1e-3)
        for exposure, scale in truth.exposure_scales().items():
            self.assertFloatsAlmostEqual(scales["expScale"][1]["C10"][exposure], scale, rtol=1e-3)
        self.assertEqual(set(table["flag"]), {"USED"})
        self.assertEqual(len(table), 2 * 52)

    def check_combined_flats_match_truth(self):
        produced = Pipeline.from_uri(PIPELINE).to_graph().dataset_types
        self.assertIn("flat", produced, "the SimFlatCam pipeline should end with the combine step")
        butler = Butler.from_config(self.repo.root, collections=self.output)
        for detector in self.repo.simulator.camera:
            detector_id = detector.getId()
            flat = butler.get("flat", instrument=INSTRUMENT, detector=detector_id, physical_filter=FILTER)
            usable = self.repo.truth.usable_pixels(detector_id)
            ratio = flat.image.array[usable] / self.repo.truth.pixel_response(detector_id)[usable]
            self.assertFloatsAlmostEqual(np.mean(ratio), 1.0, rtol=2e-3)
            # 52 exposures of ~10^4 electrons each: ~0.15% noise per pixel.
            self.assertLess(np.percentile(np.abs(ratio - 1), 99), 0.01)

    def check_graph_needs_the_fix(self):
        """The submission's graph: a job's read of one late quantum fails without the fix."""
        graph_file = next(self.submit_dir().glob("*.qg"))
        quantum_ids = sorted(PredictedQuantumGraph.read_execution_quanta(graph_file).quantum_only_xgraph)
        self.addCleanup(setattr, zipfile._SharedFile, "seek", zipfile._SharedFile.seek)
        if sys.version_info[:3] in KNOWN_AFFECTED:
            self.assertTrue(bps_support.zipfile_seek_is_broken(), "zipfile was left patched")
            with self.assertRaises(EOFError):
                PredictedQuantumGraph.read_execution_quanta(graph_file, quantum_ids={quantum_ids[-1]})
        bps_support.patch_zipfile_seek()
        graph = PredictedQuantumGraph.read_execution_quanta(graph_file, quantum_ids={quantum_ids[-1]})
        self.assertEqual(len(graph), 1)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
