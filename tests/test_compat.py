# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""cp_pipe's class paths through the compat package, and lsst.cp.flatnorm beside a real cp_pipe.

A stub ``lsst.cp.pipe`` placed ahead on ``PYTHONPATH`` plays the real cp_pipe: it must win, and
the package and its pipelines must not need the compat package.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

import lsst.utils.tests
from lsst.cp.flatnorm.camera_model import CameraModel
from lsst.cp.flatnorm.cpCombine import CpFlatCombineConfig, CpFlatCombineConnections, CpFlatCombineTask
from lsst.cp.flatnorm.cpFlatGradients import (
    CpFlatApplyGradientsConfig,
    CpFlatApplyGradientsConnections,
    CpFlatApplyGradientsTask,
    CpFlatFitGradientsConfig,
    CpFlatFitGradientsConnections,
    CpFlatFitGradientsTask,
)
from lsst.cp.flatnorm.cpFlatMeasure import CpFlatMeasureConfig, CpFlatMeasureConnections, CpFlatMeasureTask
from lsst.cp.flatnorm.cpFlatNormalize import (
    CpFlatNormalizationConfig,
    CpFlatNormalizationConnections,
    CpFlatNormalizationTask,
)
from lsst.cp.flatnorm.formatters import BlockYamlFormatter
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.daf.butler import Butler
from lsst.pipe.base import Pipeline
from lsst.utils import doImport
from lsst.utils.introspection import get_full_type_name

ROOT = Path(__file__).parents[1]
PIPETASK = Path(sys.executable).with_name("pipetask")
PIPELINE_FILES = sorted(path.relative_to(ROOT / "pipelines").as_posix()
                        for path in (ROOT / "pipelines").rglob("*.yaml"))
# The values a pipeline needs to make its graph: cp_pipe's anaglyph pipelines take their LEDs from its
# bps templates' --config options (here bps_flat_anaglyph_g.yaml's).
ANAGLYPH_OVERRIDES = [["cpFlatBlueNormalize", "downSelectionValue", "single_led_flat_m455l4"],
                      ["cpFlatRedNormalize", "downSelectionValue", "single_led_flat_m505l4"]]
PIPELINES_TO_BUILD = json.dumps({relative: ANAGLYPH_OVERRIDES if "Anaglyph" in relative else []
                                 for relative in PIPELINE_FILES})
"""`STUB_CHECK`'s argument: each pipeline file and its config overrides."""

CP_PIPE_PATHS = {
    "lsst.cp.pipe.CpFlatMeasureTask": CpFlatMeasureTask,
    "lsst.cp.pipe.CpFlatNormalizationTask": CpFlatNormalizationTask,
    "lsst.cp.pipe.CalibCombineByFilterTask": CpFlatCombineTask,
    "lsst.cp.pipe.cpFlatMeasure.CpFlatMeasureTask": CpFlatMeasureTask,
    "lsst.cp.pipe.cpFlatMeasure.CpFlatMeasureTaskConfig": CpFlatMeasureConfig,
    "lsst.cp.pipe.cpFlatMeasure.CpFlatMeasureConnections": CpFlatMeasureConnections,
    "lsst.cp.pipe.cpFlatMeasure.CpFlatNormalizationTask": CpFlatNormalizationTask,
    "lsst.cp.pipe.cpFlatMeasure.CpFlatNormalizationTaskConfig": CpFlatNormalizationConfig,
    "lsst.cp.pipe.cpFlatMeasure.CpFlatNormalizationConnections": CpFlatNormalizationConnections,
    "lsst.cp.pipe.cpCombine.CalibCombineByFilterTask": CpFlatCombineTask,
    "lsst.cp.pipe.cpCombine.CalibCombineByFilterConfig": CpFlatCombineConfig,
    "lsst.cp.pipe.cpCombine.CalibCombineByFilterConnections": CpFlatCombineConnections,
    "lsst.cp.pipe.CpFlatFitGradientsTask": CpFlatFitGradientsTask,
    "lsst.cp.pipe.CpFlatApplyGradientsTask": CpFlatApplyGradientsTask,
    "lsst.cp.pipe.cpFlatGradients.CpFlatFitGradientsTask": CpFlatFitGradientsTask,
    "lsst.cp.pipe.cpFlatGradients.CpFlatFitGradientsConfig": CpFlatFitGradientsConfig,
    "lsst.cp.pipe.cpFlatGradients.CpFlatFitGradientsConnections": CpFlatFitGradientsConnections,
    "lsst.cp.pipe.cpFlatGradients.CpFlatApplyGradientsTask": CpFlatApplyGradientsTask,
    "lsst.cp.pipe.cpFlatGradients.CpFlatApplyGradientsConfig": CpFlatApplyGradientsConfig,
    "lsst.cp.pipe.cpFlatGradients.CpFlatApplyGradientsConnections": CpFlatApplyGradientsConnections,
    # Paths that repositories created before 0.2 store in their configs and datastore records.
    "lsst.cp.pipe.formatters.LibyamlFormatter": BlockYamlFormatter,
    "lsst.cp.pipe.camera_model.CameraModel": CameraModel,
}

CP_PIPE_STYLE_PIPELINE = """\
description: The flat chain as cp_pipe's pipelines name it.
tasks:
  cpFlatMeasure:
    class: lsst.cp.pipe.cpFlatMeasure.CpFlatMeasureTask
    config:
      connections.outputStats: cpFlatStatistics
  cpFlatNormalize:
    class: lsst.cp.pipe.cpFlatMeasure.CpFlatNormalizationTask
    config:
      connections.inputMDs: cpFlatStatistics
      connections.outputScales: cpFlatNormalizeScales
      level: AMP
  cpFlatCombine:
    class: lsst.cp.pipe.cpCombine.CalibCombineByFilterTask
    config:
      connections.inputScales: cpFlatNormalizeScales
      exposureScaling: InputList
"""


def write_stub_cp_pipe(root: Path) -> Path:
    """Write a stand-in for the real cp_pipe (its python/ directory, as eups puts it on the path)."""
    package = root / "lsst" / "cp" / "pipe"
    package.mkdir(parents=True)
    namespace = "import pkgutil\n__path__ = pkgutil.extend_path(__path__, __name__)\n"
    (root / "lsst" / "__init__.py").write_text(namespace)
    (root / "lsst" / "cp" / "__init__.py").write_text(namespace)
    (package / "__init__.py").write_text('IS_STUB = "the real cp_pipe"\n')
    return root


STUB_CHECK = textwrap.dedent("""\
    import json, pkgutil, sys
    import lsst.cp.flatnorm
    from lsst.pipe.base import Pipeline
    modules = [info.name for info in pkgutil.walk_packages(lsst.cp.flatnorm.__path__, "lsst.cp.flatnorm.")]
    for name in modules:
        __import__(name)
    tasks = {}
    for relative, overrides in json.loads(sys.argv[1]).items():
        pipeline = Pipeline.from_uri(f"resource://lsst.cp.flatnorm/pipelines/{relative}")
        for label, field, value in overrides:
            pipeline.addConfigOverride(label, field, value)
        graph = pipeline.to_graph()
        tasks[relative] = sorted(node.task_class_name for node in graph.tasks.values())
    import lsst.cp.pipe
    print(json.dumps({"stub": getattr(lsst.cp.pipe, "IS_STUB", None), "pipe": lsst.cp.pipe.__file__,
                      "n_modules": len(modules), "tasks": tasks}))
""")


# `pipetask build --show pipeline` of each pipeline file (argv[1], JSON) through the pipetask command, in
# one process: a process per file would start the interpreter and import the middleware 20 times.
PIPETASK_BUILDS = textwrap.dedent("""\
    import json, sys
    from click.testing import CliRunner
    from lsst.ctrl.mpexec.cli.pipetask import cli
    from lsst.daf.butler.cli.cliLog import CliLog
    results = {}
    for relative in json.loads(sys.argv[1]):
        uri = f"resource://lsst.cp.flatnorm/pipelines/{relative}"
        result = CliRunner().invoke(cli, ["build", "-p", uri, "--show", "pipeline"])
        CliLog.resetLog()
        results[relative] = {"returncode": result.exit_code, "stdout": result.stdout,
                             "stderr": result.stderr + repr(result.exception or "")}
    print(json.dumps(results))
""")


def check_pipetask_builds(test: unittest.TestCase, bin_dir: Path, env: dict[str, str], cwd: str | Path,
                          stub: Path | None = None) -> None:
    """Check that ``pipetask build --show pipeline`` shows every shipped pipeline file on this
    package's tasks: the first file through the ``pipetask`` program of ``bin_dir``, every file
    through its command in one process of ``bin_dir``'s interpreter (`PIPETASK_BUILDS`).  With a
    ``stub`` cp_pipe on the ``PYTHONPATH`` of ``env``, that process runs `STUB_CHECK` first (an
    interpreter start and the middleware imports fewer) and its result is checked as well."""
    first_uri = f"resource://lsst.cp.flatnorm/pipelines/{PIPELINE_FILES[0]}"
    first = subprocess.run([str(bin_dir / "pipetask"), "build", "-p", first_uri, "--show", "pipeline"],
                           env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    # PIPETASK_BUILDS iterates its argument: the pipeline files, which are PIPELINES_TO_BUILD's keys.
    script, argument = (STUB_CHECK + PIPETASK_BUILDS, PIPELINES_TO_BUILD) if stub else \
        (PIPETASK_BUILDS, json.dumps(PIPELINE_FILES))
    process = subprocess.run([str(bin_dir / "python"), "-c", script, argument],
                             env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    test.assertEqual(process.returncode, 0, process.stderr[-3000:])
    lines = process.stdout.splitlines()
    if stub:
        check_stub_result(test, json.loads(lines[-2]), stub)
    results = json.loads(lines[-1])
    test.assertEqual(sorted(results), PIPELINE_FILES)
    results["pipetask program"] = {"returncode": first.returncode, "stdout": first.stdout,
                                   "stderr": first.stderr}
    for relative, result in results.items():
        with test.subTest(relative):
            test.assertEqual(result["returncode"], 0, result["stderr"][-3000:])
            test.assertRegex(result["stdout"], r"class: lsst\.cp\.flatnorm\.")


def check_stub_result(test: unittest.TestCase, result: dict, stub: Path) -> None:
    """Check what `STUB_CHECK` printed: the stub won, every module imported, every pipeline built
    on this package's task classes."""
    test.assertEqual(result["stub"], "the real cp_pipe")
    test.assertTrue(result["pipe"].startswith(str(stub)), result["pipe"])
    test.assertGreaterEqual(result["n_modules"], 14)
    test.assertEqual(set(result["tasks"]), set(PIPELINE_FILES))
    for relative, classes in result["tasks"].items():
        test.assertTrue(classes and all(name.startswith("lsst.cp.flatnorm.") for name in classes),
                        (relative, classes))


class ClassPathTestCase(lsst.utils.tests.TestCase):
    """Where cp_pipe is absent, its class paths are this package's classes."""

    def test_cp_pipe_class_paths_are_ours(self):
        for path, expected in CP_PIPE_PATHS.items():
            with self.subTest(path):
                self.assertIs(doImport(path), expected)

    def test_cp_pipe_style_pipeline_builds_on_our_tasks(self):
        graph = Pipeline.fromString(CP_PIPE_STYLE_PIPELINE).to_graph()
        classes = {label: node.task_class for label, node in graph.tasks.items()}
        self.assertEqual(classes, {"cpFlatMeasure": CpFlatMeasureTask,
                                   "cpFlatNormalize": CpFlatNormalizationTask,
                                   "cpFlatCombine": CpFlatCombineTask})
        self.assertEqual(graph.tasks["cpFlatNormalize"].config.level, "AMP")
        self.assertIn("cpFlatNormalizeScales", graph.dataset_types)


class BesideRealCpPipeTestCase(lsst.utils.tests.TestCase):
    """eups set-ups of cp_pipe (a stub) and this product: the stub's lsst.cp.pipe wins, and the
    package and its pipelines do not need ours. tests/test_wheel.py checks the same for the wheel.

    (In this editable install, setuptools' import hook resolves lsst.cp.flatnorm only through an
    ``lsst.cp`` package of its own, so a cp_pipe ahead on the path needs python/ on it as well, which
    is what ``setup cp_flatnorm`` does.)
    """

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.stub = write_stub_cp_pipe(Path(cls.tmp.name) / "cp_pipe_python")
        cp_pipe_first = f"{cls.stub}{os.pathsep}{ROOT / 'python'}"
        flatnorm_first = f"{ROOT / 'python'}{os.pathsep}{cls.stub}"
        orders = {"cp_pipe first": cp_pipe_first, "cp_flatnorm first": flatnorm_first}
        cls.envs = {order: {"PYTHONPATH": path, "PATH": str(PIPETASK.parent)}
                    for order, path in orders.items()}

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_cp_flatnorm_first_stub_wins_and_everything_imports_and_builds(self):
        process = subprocess.run([sys.executable, "-c", STUB_CHECK, PIPELINES_TO_BUILD],
                                 env=self.envs["cp_flatnorm first"], cwd=self.tmp.name,
                                 capture_output=True, text=True, timeout=300)
        self.assertEqual(process.returncode, 0, process.stderr[-3000:])
        check_stub_result(self, json.loads(process.stdout.splitlines()[-1]), self.stub)

    @unittest.skipUnless(PIPETASK.exists(), "pipetask is not installed beside this interpreter")
    def test_cp_pipe_first_stub_wins_and_pipetask_builds_every_pipeline_file(self):
        """With cp_pipe first: the same check, and every pipeline file through pipetask."""
        check_pipetask_builds(self, PIPETASK.parent, self.envs["cp_pipe first"], self.tmp.name,
                              stub=self.stub)


class EupsTableTestCase(lsst.utils.tests.TestCase):
    def test_table_puts_no_cp_pipe_on_pythonpath(self):
        table = (ROOT / "ups" / "cp_flatnorm.table").read_text()
        entries = re.findall(r"^envPrepend\(PYTHONPATH,\s*(.+?)\)\s*$", table, re.M)
        directories = [Path(entry.replace("${PRODUCT_DIR}", str(ROOT))) for entry in entries]
        self.assertEqual(directories, [ROOT / "python"])
        for directory in directories:
            self.assertFalse((directory / "lsst" / "cp" / "pipe").exists(), directory)
        self.assertTrue((ROOT / "python" / "lsst" / "cp" / "flatnorm" / "__init__.py").is_file())
        # The shipped pipelines resolve inside the package directory the table puts on the path.
        for relative in PIPELINE_FILES:
            self.assertTrue((ROOT / "python" / "lsst" / "cp" / "flatnorm" / "pipelines" / relative).is_file())


OLD_FORMATTER = "lsst.cp.pipe.formatters.LibyamlFormatter"
OLD_CAMERA_TYPE = "lsst.cp.pipe.camera_model.CameraModel"

# A repository as 0.1 made it, when the implementation was lsst.cp.pipe: its seed config names the
# old camera-model type and formatter, and its datastore records the old formatter path (the
# datastore records the written class's own path, so an alias cannot write it: the script rewrites
# the record). It runs in a fresh process, as a user's session opening the repository would: one
# process cannot hold two definitions of the CameraModel storage class.
PRE_0_2_REPOSITORY = textwrap.dedent(f"""\
    import json, sqlite3, sys
    from contextlib import closing
    from lsst.cp.flatnorm.sim.camera import make_sim_camera
    from lsst.daf.butler import Butler, Config, DatasetType

    repo = sys.argv[1]
    seed = {{"storageClasses": {{"CameraModel": {{"pytype": "{OLD_CAMERA_TYPE}"}}}},
            "datastore": {{"formatters": {{"CameraModel": "lsst.daf.butler.formatters.json.JsonFormatter",
                                           "StructuredDataDict": "{OLD_FORMATTER}"}}}}}}
    Butler.makeRepo(repo, config=Config(seed))
    butler = Butler.from_config(repo, writeable=True, run="old")
    butler.registry.insertDimensionData("instrument", {{"name": "SimFlatCam"}})
    for name, storage_class in (("scales", "StructuredDataDict"), ("camera", "CameraModel")):
        butler.registry.registerDatasetType(
            DatasetType(name, ("instrument",), storage_class, universe=butler.dimensions))
    scales = {{"expScale": {{0: {{"C00": {{7: 1234.5}}}}}}, "detScale": {{0: 0.98}}}}
    ref = butler.put(scales, "scales", instrument="SimFlatCam")
    butler.put(make_sim_camera(n_side=1, amp_width=4, amp_height=4, n_wavefront=0), "camera",
               instrument="SimFlatCam")
    written = [info.formatter for info in butler._datastore.getStoredItemsInfo(ref)]
    butler.close()
    with closing(sqlite3.connect(repo + "/gen3.sqlite3")) as db, db:
        db.execute("UPDATE file_datastore_records SET formatter = ? WHERE formatter = ?",
                   ("{OLD_FORMATTER}", written[0]))

    reader = Butler.from_config(repo, collections="old")
    camera = reader.get("camera", instrument="SimFlatCam")
    print(json.dumps({{
        "written": written,
        "stored": [info.formatter for info in reader._datastore.getStoredItemsInfo(ref)],
        "scales_equal": reader.get("scales", instrument="SimFlatCam") == scales,
        "camera_type": f"{{type(camera).__module__}}.{{type(camera).__name__}}",
        "amplifiers": [amp.getName() for amp in camera[0]],
    }}))
""")


class ExistingRepositoryTestCase(lsst.utils.tests.TestCase):
    """Repositories written before 0.2 name the old formatter and camera-model paths; they still read."""

    def test_pre_0_2_repository_reads_back(self):
        with tempfile.TemporaryDirectory() as root:
            repo = Path(root) / "repo"
            process = subprocess.run([sys.executable, "-c", PRE_0_2_REPOSITORY, str(repo)], cwd=root,
                                     capture_output=True, text=True, timeout=300)
            self.assertEqual(process.returncode, 0, process.stderr[-3000:])
            result = json.loads(process.stdout.splitlines()[-1])
            self.assertEqual(result["written"], ["lsst.cp.flatnorm.formatters.BlockYamlFormatter"])
            self.assertEqual(result["stored"], [OLD_FORMATTER])
            self.assertTrue(result["scales_equal"])
            self.assertEqual(result["camera_type"], "lsst.cp.flatnorm.camera_model.CameraModel")
            expected = [amp.getName() for amp in make_sim_camera(n_side=1, amp_width=4, amp_height=4,
                                                                 n_wavefront=0)[0]]
            self.assertEqual(result["amplifiers"], expected)
            # The install page's migration lets this process, which knows the new definition, open it.
            config = repo / "butler.yaml"
            config.write_text(config.read_text().replace(OLD_CAMERA_TYPE, get_full_type_name(CameraModel)))
            camera = Butler.from_config(str(repo), collections="old").get("camera", instrument="SimFlatCam")
            self.assertEqual([amp.getName() for amp in camera[0]], expected)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
