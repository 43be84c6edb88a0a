# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""CpFlatNormalizationTask through the butler: pipe_base's test quanta and the ``pipetask run`` command."""

import shutil
import tempfile
import unittest
from pathlib import Path

import numpy as np

import lsst.daf.butler.tests as butlerTests
import lsst.pipe.base.testUtils
import lsst.utils.tests
from lsst.cp.flatnorm import CpFlatNormalizationTask
from lsst.cp.flatnorm.butler_setup import make_repo, seed_config
from lsst.cp.flatnorm.exposure_records import insert_exposure_records
from lsst.cp.flatnorm.sim.instrument import SimFlatCam
from lsst.daf.butler import Butler, DataCoordinate, DatasetType
from flat_repo import FILTER, INSTRUMENT, fill_repo, log_lines, sim_exposures
from pipetask_in_process import pipetask
from stats_factory import EXPOSURES, StatisticsFactory

PIPELINE = Path(__file__).parents[1] / "pipelines" / "_ingredients" / "cpFlatNorm.yaml"
OTHER_FILTER = "sim_g"


class TestQuantumTestCase(lsst.utils.tests.TestCase):
    """makeQuantum / runTestQuantum / assertValidOutput on a repo with real dimension records."""

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp()
        cls.repo = butlerTests.makeTestRepo(cls.root, config=seed_config())
        cls.factory = StatisticsFactory(seed=17)
        cls.pairs = cls.factory.all_pairs(skip={(EXPOSURES[1], 2)})
        cls.stats_run = "test/cpFlatStatistics"
        cls.dims = fill_repo(cls.repo, cls.factory, cls.pairs, cls.stats_run)
        record = next(iter(cls.repo.registry.queryDimensionRecords("exposure", exposure=EXPOSURES[3],
                                                                   instrument=INSTRUMENT)))
        cls.repo.registry.syncDimensionData("exposure", dict(record.toDict(), observation_reason=None),
                                            update=True)
        cls.repo.put(cls.factory.camera, "camera", instrument=INSTRUMENT, run=cls.stats_run)
        for name, storage_class in (("cpFlatNormalizeScales", "StructuredDataDict"),
                                    ("cpFlatNormalizeScaleTable", "ArrowAstropy")):
            cls.repo.registry.registerDatasetType(DatasetType(
                name, ("instrument", "physical_filter"), storage_class, universe=cls.repo.dimensions))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def setUp(self):
        self.butler = Butler.from_config(butler=self.repo, run=self.stats_run)
        self.data_id = {"instrument": INSTRUMENT, "physical_filter": FILTER}

    def make_quantum(self, task):
        io_ids = {
            "inputMDs": self.dims,
            "camera": {"instrument": INSTRUMENT},
            "outputScales": self.data_id,
            "outputScaleTable": self.data_id,
        }
        return lsst.pipe.base.testUtils.makeQuantum(task, self.butler, self.data_id, io_ids)

    def test_run_test_quantum_passes_inputs(self):
        task = CpFlatNormalizationTask()
        run = lsst.pipe.base.testUtils.runTestQuantum(task, self.butler, self.make_quantum(task))
        run.assert_called_once()
        kwargs = run.call_args.kwargs
        self.assertEqual(set(kwargs), {"inputMDs", "inputDims", "camera"})
        self.assertEqual(len(kwargs["inputMDs"]), len(self.pairs))
        self.assertEqual(sorted((d["exposure"], d["detector"]) for d in kwargs["inputDims"]),
                         sorted(self.pairs))
        self.assertEqual(kwargs["camera"], self.factory.camera)

    def test_outputs_written_and_read_back(self):
        config = CpFlatNormalizationTask.ConfigClass()
        config.level = "AMP"
        task = CpFlatNormalizationTask(config=config)
        quantum = self.make_quantum(task)
        lsst.pipe.base.testUtils.runTestQuantum(task, self.butler, quantum, mockRun=False)
        scales = self.butler.get("cpFlatNormalizeScales", self.data_id)
        table = self.butler.get("cpFlatNormalizeScaleTable", self.data_id)
        gains = self.factory.amp_gain
        detector_counts = {d: sum(1 for _, det in self.pairs if det == d) for d, _ in gains}
        norm = sum(g * detector_counts[d] for (d, _), g in gains.items()) / sum(
            detector_counts[d] for d, _ in gains)
        self.assertAlmostEqual(scales["detScale"][9]["C15"], gains[(9, "C15")] / norm, places=10)
        self.assertAlmostEqual(scales["expScale"][2]["C10"][EXPOSURES[1]],
                               self.factory.lamps[EXPOSURES[1]] * norm, places=7)
        self.assertEqual(len(table), sum(len(self.factory.camera[d]) for _, d in self.pairs))
        self.assertEqual(set(table["flag"]), {"USED"})
        result = task.run(*self._run_args())
        lsst.pipe.base.testUtils.assertValidOutput(task, result)

    def down_select(self, value, field=None, records=True):
        """Run adjustQuantum with down-selection on every statistics dataset of the repo."""
        config = CpFlatNormalizationTask.ConfigClass()
        config.doDownSelection = True
        config.downSelectionValue = value
        if field is not None:
            config.downSelectionField = field
        connections = config.ConnectionsClass(config=config)
        refs = self.butler.query_datasets("cpFlatStatistics", collections=self.stats_run,
                                          with_dimension_records=records)
        data_id = DataCoordinate.standardize(self.data_id, universe=self.butler.dimensions)
        adjusted, _ = connections.adjustQuantum({"inputMDs": (connections.inputMDs, refs)}, {},
                                                "cpFlatRedNormalize", data_id)
        return sorted((ref.dataId["exposure"], ref.dataId["detector"]) for ref in adjusted["inputMDs"][1])

    def test_down_selection_ignores_case(self):
        # observation_reason is "flat" but for EXPOSURES[3], which has none; the default field is
        # observation_reason.
        self.assertEqual(self.down_select("FLAT"), sorted(p for p in self.pairs if p[0] != EXPOSURES[3]))
        self.assertEqual(self.down_select("sim-flats", field="science_program"), sorted(self.pairs))

    def test_down_selection_without_match_warns_naming_data_id(self):
        message = (f"cpFlatRedNormalize {{instrument: '{INSTRUMENT}', physical_filter: '{FILTER}'}}: no "
                   "input exposure has observation_reason matching 'dark' (ignoring case); the "
                   f"{len(self.pairs)} inputs have 'flat', None. No scales are written for this data ID.")
        with self.assertLogs("lsst.cpFlatRedNormalize", level="WARNING") as logs:
            with self.assertRaises(lsst.pipe.base.NoWorkFound) as cm:
                self.down_select("dark")
        self.assertEqual(str(cm.exception), message)
        self.assertEqual(logs.output, [f"WARNING:lsst.cpFlatRedNormalize:{message}"])

    def test_down_selection_needs_exposure_records(self):
        pattern = (r"^Down-selection needs exposure records, but cpFlatStatistics@\{instrument: "
                   r"'SimFlatCam'.* has an unexpanded data ID\.$")
        with self.assertRaisesRegex(RuntimeError, pattern):
            self.down_select("flat", records=False)

    def _run_args(self):
        mds = [self.butler.get("cpFlatStatistics", dim) for dim in self.dims]
        return mds, self.dims, self.factory.camera


class PipetaskRunTestCase(lsst.utils.tests.TestCase):
    """The ``pipetask run`` command of the shipped pipeline's cpFlatNormalize step on an on-disk repo."""

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp()
        cls.factory = StatisticsFactory(seed=23)
        cls.pairs = cls.factory.all_pairs(skip={(EXPOSURES[0], 5), (EXPOSURES[3], 10)})
        butler = make_repo(cls.root)
        cls.inputs = "test/cpFlatStatistics"
        fill_repo(butler, cls.factory, cls.pairs, cls.inputs)
        SimFlatCam(camera=cls.factory.camera).write_camera(butler)
        # Exposure 1 is taken for another reason: down-selection on observation_reason must drop it.
        record = butler.registry.queryDimensionRecords("exposure", exposure=EXPOSURES[1],
                                                       instrument=INSTRUMENT).__iter__().__next__()
        butler.registry.syncDimensionData("exposure", dict(record.toDict(), observation_reason="test"),
                                          update=True)
        # A second filter whose exposures are all taken for another reason: down-selecting "flat"
        # matches none of them.
        insert_exposure_records(butler, INSTRUMENT, sim_exposures(
            [e + 100 for e in EXPOSURES], physical_filter=OTHER_FILTER, reasons=["dark"] * len(EXPOSURES)))
        for exposure, detector in cls.pairs:
            butler.put(cls.factory.metadata(exposure, detector), "cpFlatStatistics", instrument=INSTRUMENT,
                       exposure=exposure + 100, detector=detector, run=cls.inputs)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def pipetask(self, output, *config, query=f"instrument='{INSTRUMENT}' AND physical_filter='{FILTER}'"):
        """Run the ``pipetask run`` command in this process (the program runs in test_reliability)."""
        args = ["--long-log", "run", "--register-dataset-types", "-b", self.root, "-i",
                f"{self.inputs},{INSTRUMENT}/calib", "-o", output, "-p", f"{PIPELINE}#cpFlatNormalize",
                "-d", query]
        for item in config:
            args += ["-c", item]
        return pipetask(*args)

    def test_pipetask_run_amp_level(self):
        process = self.pipetask("u/test/amp", "cpFlatNormalize:level=AMP")
        self.assertEqual(process.returncode, 0, process.stderr[-3000:])
        butler = Butler.from_config(self.root, collections="u/test/amp")
        data_id = {"instrument": INSTRUMENT, "physical_filter": FILTER}
        scales = butler.get("cpFlatNormalizeScales", data_id)
        table = butler.get("cpFlatNormalizeScaleTable", data_id,
                           parameters={"strip_astropy_meta_yaml": False})
        meta = table.meta
        self.assertEqual((meta["LEVEL"], meta["CONVERGED"], meta["N_GROUPS"]), ("AMP", True, 1))
        gains = self.factory.amp_gain
        counts = {d: sum(1 for _, det in self.pairs if det == d) for d, _ in gains}
        norm = sum(g * counts[d] for (d, _), g in gains.items()) / sum(counts[d] for d, _ in gains)
        for (detector, amp), gain in gains.items():
            self.assertAlmostEqual(scales["detScale"][detector][amp], gain / norm, places=9)
        for exposure in EXPOSURES:
            self.assertAlmostEqual(scales["expScale"][5]["C00"][exposure],
                                   self.factory.lamps[exposure] * norm, places=6)
        self.assertEqual(len(table), sum(len(self.factory.camera[d]) for _, d in self.pairs))
        np.testing.assert_allclose(table["model"], table["level"], rtol=1e-9)

    def test_pipetask_down_selection(self):
        process = self.pipetask("u/test/select", "cpFlatNormalize:doDownSelection=True",
                                "cpFlatNormalize:downSelectionField=observation_reason",
                                "cpFlatNormalize:downSelectionValue=flat")
        self.assertEqual(process.returncode, 0, process.stderr[-3000:])
        butler = Butler.from_config(self.root, collections="u/test/select")
        table = butler.get("cpFlatNormalizeScaleTable", instrument=INSTRUMENT, physical_filter=FILTER)
        self.assertEqual(sorted(set(table["exposure"])), [EXPOSURES[0], EXPOSURES[2], EXPOSURES[3]])
        scales = butler.get("cpFlatNormalizeScales", instrument=INSTRUMENT, physical_filter=FILTER)
        self.assertNotIn(EXPOSURES[1], scales["expScale"][0]["C10"])

    def no_match_warning(self):
        return (f"lsst.cpFlatNormalize WARNING: cpFlatNormalize {{instrument: '{INSTRUMENT}', "
                f"physical_filter: '{OTHER_FILTER}', band: 'g'}}: no input exposure has observation_reason "
                f"matching 'flat' (ignoring case); the {len(self.pairs)} inputs have 'dark'. No scales are "
                "written for this data ID.")

    def test_pipetask_down_selection_matching_nothing_in_one_of_two_filters(self):
        """The run succeeds for the filter with a match; the other is named in a WARNING."""
        process = self.pipetask("u/test/select2", "cpFlatNormalize:doDownSelection=True",
                                "cpFlatNormalize:downSelectionValue=flat", query=f"instrument='{INSTRUMENT}'")
        self.assertEqual(process.returncode, 0, process.stderr[-3000:])
        self.assertIn(self.no_match_warning(), log_lines(process))
        butler = Butler.from_config(self.root, collections="u/test/select2")
        found = {ref.dataId["physical_filter"] for ref in butler.query_datasets("cpFlatNormalizeScales")}
        self.assertEqual(found, {FILTER})
        table = butler.get("cpFlatNormalizeScaleTable", instrument=INSTRUMENT, physical_filter=FILTER)
        self.assertEqual(sorted(set(table["exposure"])), [EXPOSURES[0], EXPOSURES[2], EXPOSURES[3]])

    def test_pipetask_down_selection_matching_nothing_in_the_only_filter(self):
        """The graph is empty and pipetask fails saying the logs above explain why: they do."""
        process = self.pipetask("u/test/select1", "cpFlatNormalize:doDownSelection=True",
                                "cpFlatNormalize:downSelectionValue=flat",
                                query=f"instrument='{INSTRUMENT}' AND physical_filter='{OTHER_FILTER}'")
        self.assertEqual(process.returncode, 1, process.stderr[-3000:])
        lines = log_lines(process)
        self.assertIn("Error: QuantumGraph was empty; ERROR logs above should provide details.", lines)
        self.assertIn(self.no_match_warning(), lines)
        empty = "Error: QuantumGraph was empty; ERROR logs above should provide details."
        self.assertLess(lines.index(self.no_match_warning()), lines.index(empty))
        butler = Butler.from_config(self.root)
        self.assertNotIn("u/test/select1", butler.collections.query("u/test/*"))


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
