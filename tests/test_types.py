# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""mypy on python/ and compat/ with the settings of pyproject.toml's ``[tool.mypy]``, clean.

The directories, not a list of modules, are checked, so a new module is checked as soon as it
exists. mypy's cache (``.mypy_cache``, which git ignores) makes a second run a few seconds long.
"""

import subprocess
import sys
import unittest
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a minute or more: started first (tests/conftest.py)

ROOT = Path(__file__).parents[1]


class TypesTestCase(unittest.TestCase):
    """Type-check the package and its compatibility package."""

    def test_mypy_is_clean(self) -> None:
        process = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True,
                                 timeout=900)
        self.assertEqual(process.returncode, 0, msg=process.stdout + process.stderr)
        self.assertIn("Success: no issues found", process.stdout)


if __name__ == "__main__":
    unittest.main()
