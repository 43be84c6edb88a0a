# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Load the stand-in afw camera (``tests/afw_standin``) in the test process, under another name."""

import importlib.util
import sys
from pathlib import Path


def load_afw_standin():
    """Load the stand-in afw camera module under another name, so that ``lsst.afw`` stays absent."""
    path = Path(__file__).parent / "afw_standin" / "lsst" / "afw" / "cameraGeom" / "__init__.py"
    spec = importlib.util.spec_from_file_location("afw_standin_cameraGeom", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the annotations through sys.modules
    spec.loader.exec_module(module)
    return module
