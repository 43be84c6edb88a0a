# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Two down-selecting normalizations in one pipeline, as in cp_pipe's anaglyph (red/blue) flats.

cp_pipe's ``_ingredients/cpFlatAnaglyphLSST.yaml`` runs ``cpFlatBlueNormalize`` and
``cpFlatRedNormalize`` on the same statistics, and its bps template selects their exposures with
``downSelectionValue`` (``single_led_flat_m565l3`` and ``single_led_flat_m660l4``).
"""

import shutil
import tempfile
import unittest
from pathlib import Path

import lsst.utils.tests
from lsst.cp.flatnorm.butler_setup import make_repo
from lsst.daf.butler import Butler, DatasetType, DimensionUniverse
from lsst.pipe.base import Pipeline
from lsst.pipe.base.pipeline_graph import DuplicateOutputError
from flat_repo import FILTER, INSTRUMENT, fill_repo, sim_exposures
from pipetask_in_process import pipetask
from stats_factory import EXPOSURES, StatisticsFactory

BLUE, RED = "single_led_flat_m565l3", "single_led_flat_m660l4"
OTHER_FILTER = "sim_g"
OTHER_EXPOSURES = [2026112500020, 2026112500021]


def anaglyph_normalizations(table_name=None):
    """cp_pipe's anaglyph normalization step, with the inputs this package's measurement writes."""
    table = f"\n      connections.outputScaleTable: {table_name}" if table_name else ""
    return "description: cp_pipe's anaglyph normalizations\ntasks:\n" + "".join(
        f"""  cpFlat{colour}Normalize:
    class: lsst.cp.flatnorm.cpFlatNormalize.CpFlatNormalizationTask
    config:
      connections.inputMDs: cpFlatStatistics
      connections.outputScales: cpFlat{colour}NormalizeScales{table}
      doDownSelection: true
      downSelectionValue: {value}
""" for colour, value in (("Blue", BLUE), ("Red", RED)))


def resolved_graph(pipeline_yaml):
    """Build a pipeline graph and resolve it against the inputs a repository would have."""
    graph = Pipeline.fromString(pipeline_yaml).to_graph()
    universe = DimensionUniverse()
    inputs = {
        "cpFlatStatistics": DatasetType("cpFlatStatistics", ("instrument", "exposure", "detector"),
                                        "TaskMetadata", universe=universe),
        "camera": DatasetType("camera", ("instrument",), "CameraModel", universe=universe,
                              isCalibration=True),
    }
    graph.resolve(dimensions=universe, dataset_types=inputs)
    return graph


class PipelineBuildTestCase(lsst.utils.tests.TestCase):

    def test_two_normalizations_write_different_tables(self):
        graph = resolved_graph(anaglyph_normalizations())
        for colour in ("Blue", "Red"):
            outputs = {name: node.storage_class_name
                       for name, node in graph.outputs_of(f"cpFlat{colour}Normalize").items()}
            self.assertEqual(outputs[f"cpFlat{colour}NormalizeScales"], "StructuredDataDict")
            self.assertEqual(outputs[f"cpFlat{colour}NormalizeScaleTable"], "ArrowAstropy")

    def test_one_explicit_table_name_collides(self):
        with self.assertRaisesRegex(DuplicateOutputError, "^Dataset type 'myTable' is produced by both "
                                    "'cpFlat(Blue|Red)Normalize' and 'cpFlat(Red|Blue)Normalize'.$"):
            resolved_graph(anaglyph_normalizations("myTable"))


class AnaglyphPipetaskTestCase(lsst.utils.tests.TestCase):
    """The ``pipetask run`` command, in this process, of the red and blue normalizations over two
    physical filters.

    In ``sim_r`` the exposures alternate blue, red, blue, red; ``sim_g``'s are plain flats, so
    neither normalization has work there and each must say so in the log.
    """

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp()
        cls.factory = StatisticsFactory(seed=41)
        cls.factory.lamps.update(zip(OTHER_EXPOSURES, [1500.0, 1700.0]))
        exposures = (sim_exposures(reasons=[BLUE, RED, BLUE, RED])
                     + sim_exposures(OTHER_EXPOSURES, physical_filter=OTHER_FILTER))
        pairs = [(e, d.id) for e in EXPOSURES + OTHER_EXPOSURES for d in cls.factory.camera]
        butler = make_repo(cls.root)
        fill_repo(butler, cls.factory, pairs, "test/cpFlatStatistics", exposures=exposures)
        butler.registry.registerRun("test/camera")
        butler.put(cls.factory.camera, "camera", instrument=INSTRUMENT, run="test/camera")
        pipeline = Path(cls.root) / "anaglyph.yaml"
        pipeline.write_text(anaglyph_normalizations())
        # The blue value in capitals: the records say it in lower case.
        cls.process = pipetask(
            "--long-log", "run", "--register-dataset-types", "-b", cls.root,
            "-i", "test/cpFlatStatistics,test/camera", "-o", "u/test/anaglyph", "-p", str(pipeline),
            "-d", f"instrument='{INSTRUMENT}'",
            "-c", f"cpFlatBlueNormalize:downSelectionValue={BLUE.upper()}")
        cls.butler = Butler.from_config(cls.root, collections="u/test/anaglyph")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_each_normalization_uses_its_exposures(self):
        self.assertEqual(self.process.returncode, 0, self.process.stderr[-3000:])
        for colour, exposures in (("Blue", EXPOSURES[0::2]), ("Red", EXPOSURES[1::2])):
            data_id = {"instrument": INSTRUMENT, "physical_filter": FILTER}
            scales = self.butler.get(f"cpFlat{colour}NormalizeScales", data_id)
            table = self.butler.get(f"cpFlat{colour}NormalizeScaleTable", data_id)
            self.assertEqual(sorted(set(table["exposure"])), exposures)
            self.assertEqual(len(table), len(exposures) * len(self.factory.camera))
            pairs = [(e, d.id) for e in exposures for d in self.factory.camera]
            true_g, norm = self.factory.true_detector_scales(pairs)
            for detector, g in true_g.items():
                self.assertAlmostEqual(scales["detScale"][detector], g, places=10)
            self.assertEqual(sorted(scales["expScale"][4]["C00"]), exposures)
            for exposure in exposures:
                self.assertAlmostEqual(scales["expScale"][4]["C00"][exposure],
                                       self.factory.lamps[exposure] * norm, places=7)

    def test_filter_without_match_is_warned_about(self):
        self.assertEqual(self.process.returncode, 0, self.process.stderr[-3000:])
        for colour, value in (("Blue", BLUE.upper()), ("Red", RED)):
            message = (f"cpFlat{colour}Normalize {{instrument: '{INSTRUMENT}', physical_filter: "
                       f"'{OTHER_FILTER}', band: 'g'}}: no input exposure has observation_reason matching "
                       f"'{value}' (ignoring case); the {2 * len(self.factory.camera)} inputs have 'flat'. "
                       "No scales are written for this data ID.")
            lines = [line for line in self.process.stderr.splitlines() if line.endswith(message)]
            self.assertEqual(len(lines), 1, self.process.stderr[-3000:])
            self.assertTrue(lines[0].startswith("WARNING "), lines[0])
            self.assertIn(f" lsst.cpFlat{colour}Normalize ", lines[0])
            self.assertEqual(self.butler.query_datasets(f"cpFlat{colour}NormalizeScales", explain=False,
                                                        physical_filter=OTHER_FILTER, instrument=INSTRUMENT),
                             [])


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
