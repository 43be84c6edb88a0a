# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The built wheel in a fresh virtual environment, outside the source tree.

The wheel must carry the pipelines and bps files as package resources, declare the dependencies
``pyproject.toml`` names, work without any environment variable, and leave a real cp_pipe (a stub
ahead on PYTHONPATH) in charge of ``lsst.cp.pipe``.  After the wheel is uninstalled, the same
environment plays an eups set-up: the dependencies installed, and only the directories the eups
table names on PYTHONPATH.

The fresh environment gets its dependencies from this test environment rather than from the
network or pip's cache (installing numpy, scipy, astropy and the middleware took two minutes): a
``.pth`` file puts a view of this environment's ``site-packages`` on its path, which holds every
installed distribution except this package's editable install (its dist-info and its import hook),
so that the wheel is the only ``lsst.cp.flatnorm`` the environment can find; the wheel is installed
with ``--no-deps``, and ``pip check`` then proves that the dependencies its metadata declares are
satisfied there.
"""

import email.parser
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import tomllib
import unittest
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import lsst.utils.tests
from test_compat import (PIPELINE_FILES, PIPELINES_TO_BUILD, STUB_CHECK, check_pipetask_builds,
                         check_stub_result, write_stub_cp_pipe)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]
SOURCE_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                       "demo_output", "bench", ".pytest_cache", ".hypothesis")
BPS_FILES = sorted(path.relative_to(ROOT / "bps").as_posix() for path in (ROOT / "bps").rglob("*.yaml"))
PIPELINES = "resource://lsst.cp.flatnorm/pipelines"
TIMEOUT = 300  # seconds for building or installing the wheel
DISTRIBUTION = "lsst-cp-flatnorm"

# A submit file as a user writes one, including the shipped template and site file by URI; daf_butler's
# Config resolves includeConfigs as ctrl_bps's BpsConfig does.
BPS_CHECK = textwrap.dedent("""\
    import json, pathlib, sys
    from lsst.daf.butler import Config
    from lsst.resources import ResourcePath
    prefix = "resource://lsst.cp.flatnorm/bps/"
    missing = [name for name in sys.argv[1:] if not ResourcePath(prefix + name).exists()]
    submit = pathlib.Path("submit.yaml")
    includes = "".join(f"  - {prefix}{name}\\n" for name in ("bps_cpFlat.yaml", "sites/parsl_local.yaml"))
    submit.write_text("includeConfigs:\\n" + includes)
    config = Config(str(submit.absolute()))
    print(json.dumps({"missing": missing, "pipelineYaml": config["pipelineYaml"],
                      "pipeline_exists": ResourcePath(config["pipelineYaml"]).exists(),
                      "computeSite": config["computeSite"]}))
""")


def run(command, *, env, cwd, timeout=300):
    return subprocess.run([str(part) for part in command], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


class WheelTestCase(lsst.utils.tests.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.work = Path(cls.tmp.name)
        cls.wheel = cls.build_wheel()
        cls.venv = cls.work / "venv"
        cls.bin = cls.venv / "bin"
        cls.env = {"PATH": f"{cls.bin}{os.pathsep}{os.environ['PATH']}", "HOME": str(cls.work)}
        cls.stub = write_stub_cp_pipe(cls.work / "cp_pipe_python")
        subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(cls.venv)], check=True,
                       timeout=TIMEOUT)
        cls.see_test_dependencies()
        install = run([cls.bin / "python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                       cls.wheel], env=cls.env, cwd=cls.work, timeout=TIMEOUT)
        if install.returncode != 0:
            raise RuntimeError(f"Installing the wheel failed:\n{install.stderr[-3000:]}")

    @classmethod
    def see_test_dependencies(cls):
        """Put this environment's distributions, except this package's editable install, on the fresh
        environment's path (a view of symbolic links, named by a ``.pth`` file), and write the
        ``pipetask`` script that installing lsst-ctrl-mpexec would write."""
        view = cls.work / "test-site-packages"
        view.mkdir()
        # Its dist-info, and its .pth file and import hook.
        hidden = (f"{DISTRIBUTION.replace('-', '_')}-", "__editable__")
        for directory in dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib")):
            for entry in Path(directory).iterdir():
                if not entry.name.startswith(hidden) and not (view / entry.name).exists():
                    (view / entry.name).symlink_to(entry)
        site_packages = Path(subprocess.check_output(
            [cls.bin / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True).strip())
        (site_packages / "test_dependencies.pth").write_text(f"{view}\n")
        (entry_point,) = importlib.metadata.entry_points(group="console_scripts", name="pipetask")
        module, _, function = entry_point.value.partition(":")
        script = cls.bin / "pipetask"
        script.write_text(f"#!{cls.bin / 'python'}\nimport sys\nfrom {module} import {function}\n"
                          f"sys.exit({function}())\n")
        script.chmod(0o755)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def build_wheel(cls) -> Path:
        """Build the wheel from a copy of the source tree, leaving the checkout untouched."""
        source = cls.work / "source"
        shutil.copytree(ROOT, source, symlinks=True, ignore=SOURCE_IGNORE)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "-w", str(cls.work / "dist"), str(source)], check=True, timeout=TIMEOUT,
                       capture_output=True)
        shutil.rmtree(source)
        (wheel,) = (cls.work / "dist").glob("lsst_cp_flatnorm-*.whl")
        return wheel

    def python(self, code, *args, pythonpath=None):
        env = dict(self.env, PYTHONPATH=pythonpath) if pythonpath else self.env
        process = run([self.bin / "python", "-c", code, *args], env=env, cwd=self.work)
        self.assertEqual(process.returncode, 0, process.stderr[-3000:])
        return json.loads(process.stdout.splitlines()[-1])

    def test_wheel_then_eups_layout(self):
        """One method, so that pytest-xdist builds and installs the wheel once."""
        for check in (self.check_wheel_contents, self.check_declared_dependencies,
                      self.check_dependencies_satisfied, self.check_imports_from_the_wheel,
                      self.check_pipetask_builds_every_pipeline, self.check_bps_files_resolve,
                      self.check_beside_a_stub_cp_pipe, self.check_eups_layout):
            with self.subTest(check.__name__):
                check()

    def check_wheel_contents(self):
        names = set(zipfile.ZipFile(self.wheel).namelist())
        for relative in PIPELINE_FILES:
            self.assertIn(f"lsst/cp/flatnorm/pipelines/{relative}", names)
        for relative in BPS_FILES:
            self.assertIn(f"lsst/cp/flatnorm/bps/{relative}", names)
        self.assertIn("lsst/cp/flatnorm/configs/butler-seed.yaml", names)
        self.assertIn("lsst/cp/flatnorm/configs/instruments/SimFlatCam.yaml", names)
        self.assertIn("lsst/cp/pipe/cpFlatMeasure.py", names)

    def check_declared_dependencies(self):
        """The wheel's metadata requires what pyproject.toml names: the dependencies, and each extra's."""
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        with zipfile.ZipFile(self.wheel) as wheel:
            (name,) = (name for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))
            metadata = email.parser.Parser().parsestr(wheel.read(name).decode())
        self.assertEqual(metadata["Requires-Python"], project["requires-python"])
        self.assertEqual(sorted(metadata.get_all("Provides-Extra")), sorted(project["optional-dependencies"]))
        expected = [Requirement(text) for text in project["dependencies"]]
        for extra, requirements in project["optional-dependencies"].items():
            expected += [Requirement(f'{text}; extra == "{extra}"') for text in requirements]
        declared = [Requirement(text) for text in metadata.get_all("Requires-Dist")]
        self.assertEqual(sorted(map(str, declared)), sorted(map(str, expected)))

    def check_dependencies_satisfied(self):
        """pip finds the wheel installed, and every requirement of every distribution met."""
        show = run([self.bin / "python", "-m", "pip", "show", "--files", DISTRIBUTION], env=self.env,
                   cwd=self.work)
        self.assertEqual(show.returncode, 0, show.stderr)
        self.assertIn(f"Location: {self.venv}", show.stdout)
        check = run([self.bin / "python", "-m", "pip", "check"], env=self.env, cwd=self.work)
        self.assertEqual((check.returncode, check.stdout.strip()), (0, "No broken requirements found."),
                         check.stderr)

    def check_imports_from_the_wheel(self):
        result = self.python(
            "import json, lsst.cp.flatnorm, lsst.cp.pipe\n"
            "from lsst.cp.pipe.cpFlatMeasure import CpFlatNormalizationTask\n"
            "print(json.dumps({'flatnorm': lsst.cp.flatnorm.__file__, 'pipe': lsst.cp.pipe.__file__,\n"
            "                  'task': CpFlatNormalizationTask.__module__}))"
        )
        for key in ("flatnorm", "pipe"):
            self.assertTrue(result[key].startswith(str(self.venv)), result)
        self.assertEqual(result["task"], "lsst.cp.flatnorm.cpFlatNormalize")

    def check_pipetask_builds_every_pipeline(self):
        check_pipetask_builds(self, self.bin, self.env, self.work)

    def check_bps_files_resolve(self):
        result = self.python(BPS_CHECK, *BPS_FILES)
        self.assertEqual(result["missing"], [])
        self.assertEqual(result["pipelineYaml"], f"{PIPELINES}/SimFlatCam/cpFlat.yaml")
        self.assertTrue(result["pipeline_exists"])
        self.assertEqual(result["computeSite"], "local")

    def check_beside_a_stub_cp_pipe(self):
        check_pipetask_builds(self, self.bin, dict(self.env, PYTHONPATH=str(self.stub)), self.work,
                              stub=self.stub)

    def check_eups_layout(self):
        """Without the wheel: the table's PYTHONPATH holds lsst.cp.flatnorm and no lsst.cp.pipe."""
        uninstall = run([self.bin / "python", "-m", "pip", "uninstall", "--yes", "lsst-cp-flatnorm"],
                        env=self.env, cwd=self.work)
        self.assertEqual(uninstall.returncode, 0, uninstall.stderr)
        table = (ROOT / "ups" / "cp_flatnorm.table").read_text()
        table_path = os.pathsep.join(entry.replace("${PRODUCT_DIR}", str(ROOT)) for entry in
                                     re.findall(r"^envPrepend\(PYTHONPATH,\s*(.+?)\)\s*$", table, re.M))
        alone = run([self.bin / "python", "-c", "import lsst.cp.flatnorm; import lsst.cp.pipe"],
                    env=dict(self.env, PYTHONPATH=table_path), cwd=self.work)
        self.assertIn("No module named 'lsst.cp.pipe'", alone.stderr)
        for path in (f"{self.stub}{os.pathsep}{table_path}", f"{table_path}{os.pathsep}{self.stub}"):
            check_stub_result(self, self.python(STUB_CHECK, PIPELINES_TO_BUILD, pythonpath=path), self.stub)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
