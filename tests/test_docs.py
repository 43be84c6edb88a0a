# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The documentation builds with warnings as errors, and the API reference covers the package.

One Sphinx build (``make docs``'s sources and settings, from a fresh environment, with the dummy
builder: every page is read and every reference resolved, and no HTML is written) proves that every
page is in a table of contents, every internal reference and every cross-reference to this package
resolves, and every docstring parses; the checks after it read the pages' doctrees.
"""

import importlib
import inspect
import os
import pickle
import re
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import pytest
from docutils import nodes

import lsst.utils.tests

pytestmark = pytest.mark.slow  # a minute or more: started first (tests/conftest.py)

DOC = Path(__file__).parents[1] / "doc"
# Pages whose code blocks a test runs as written (the tutorial: tests/test_tutorial.py).
RUN_PAGES = {"own-camera.rst"}
# Blocks of commands and code; ``text`` blocks (formulas, logs, a server's config lines) are not run.
_CODE_BLOCK = re.compile(r"^ *\.\. code(?:-block)?:: (?:sh|bash|console|python|yaml)\s*$")
_NOT_RUN = re.compile(r"^ *\.\. not run: \S.*$")


def public_modules() -> list[str]:
    """The modules the API reference must cover, as ``doc/conf.py`` finds them."""
    sys.path.insert(0, str(DOC))
    try:
        conf = importlib.import_module("conf")
    finally:
        sys.path.remove(str(DOC))
    return conf.public_modules()


def public_members(module_name: str) -> list[str]:
    """The public classes and functions a module defines (a package: also those it re-exports)."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [name for name in vars(module) if not name.startswith("_")]
    members = []
    for name in names:
        value = getattr(module, name)
        if (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__.startswith(module_name):
            members.append(name)
    return members


class DocsBuildTestCase(lsst.utils.tests.TestCase):
    """Build the site once; check the build's warnings and the pages it made."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory()
        cls.doctrees = Path(cls.tmp.name) / "doctrees"
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        cls.build = subprocess.run(
            [sys.executable, "-m", "sphinx", "-b", "dummy", "-W", "--keep-going", "-q", "-E",
             "-d", str(cls.doctrees), str(DOC), str(Path(cls.tmp.name) / "out")],
            capture_output=True, text=True, env=env, timeout=900,
        )

    @classmethod
    def tearDownClass(cls) -> None:
        cls.tmp.cleanup()

    def doctree(self, page: str) -> str:
        """The text and target IDs of a built page's doctree."""
        with open(self.doctrees / f"{page}.doctree", "rb") as stream:
            document = pickle.load(stream)
        ids = " ".join(f"id={node_id}" for node in document.findall(nodes.Element) for node_id in node["ids"])
        return document.astext() + "\n" + ids

    def test_builds_without_warnings(self) -> None:
        self.assertEqual(self.build.returncode, 0, msg=self.build.stderr)
        self.assertNotIn("WARNING", self.build.stderr)

    def test_every_public_module_class_and_function_has_a_page(self) -> None:
        api = self.doctree("lsst.cp.flatnorm/api")
        for module_name in public_modules():
            with self.subTest(module=module_name):
                self.assertIn(f"id=module-{module_name}", api)
                for member in public_members(module_name):
                    self.assertTrue((self.doctrees / "py-api" / f"{module_name}.{member}.doctree").exists(),
                                    msg=f"{module_name}.{member} has no API page")

    def test_task_pages_list_their_config_fields(self) -> None:
        # The task-topic directive reads the fields from the config class itself.
        text = self.doctree("lsst.cp.flatnorm/tasks/lsst.cp.flatnorm.CpFlatNormalizationTask")
        for field in ("outlierSigma (RangeField", "disconnectedPolicy (ChoiceField of str, default 'RAISE')",
                      "colourTerms (", "cameraStorageClass ("):
            self.assertIn(field, text)


class CodeBlocksTestCase(unittest.TestCase):
    """A code block is either run by a test (the tutorial's page) or says why it is not run."""

    def test_code_blocks_are_run_or_say_why_not(self) -> None:
        unmarked = []
        for page in sorted((DOC / "lsst.cp.flatnorm").rglob("*.rst")):
            if page.name in RUN_PAGES or page.name == "api.rst":
                continue
            lines = page.read_text().splitlines()
            for number, line in enumerate(lines):
                if _CODE_BLOCK.match(line) and not (number >= 2 and _NOT_RUN.match(lines[number - 2])):
                    unmarked.append(f"{page.relative_to(DOC)}:{number + 1}")
        self.assertEqual(unmarked, [], msg="code blocks neither run by a test nor marked "
                                           "'.. not run: <reason>' on the line before last")


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module: object) -> None:
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
