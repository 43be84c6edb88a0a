# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The stand-in afw camera classes of ``tests/afw_standin``, for the test process itself.

The test process must not see an importable ``lsst.afw`` (the package would then take it for the
real one), so the module is loaded under another name; subprocesses that need ``lsst.afw`` put
``tests/afw_standin`` on their ``PYTHONPATH`` instead.
"""

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).parent / "afw_standin" / "lsst" / "afw" / "cameraGeom" / "__init__.py"
_NAME = "afw_standin_cameraGeom"


def load_afw_standin():
    """Return the stand-in ``lsst.afw.cameraGeom`` module, loaded once as ``afw_standin_cameraGeom``."""
    if _NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(_NAME, _PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module  # pydantic resolves the annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[_NAME]
