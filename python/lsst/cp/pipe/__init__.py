# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Flat-field normalization tasks with cp_pipe's API, on pip-installable LSST middleware.

This package provides ``lsst.cp.pipe`` for the flat chain only; it is not meant to be installed
beside the full cp_pipe in one environment.
"""

from .cpCombine import *  # noqa: F401,F403
from .cpFlatMeasure import *  # noqa: F401,F403
from .cpFlatNormalize import *  # noqa: F401,F403
from .version import __version__  # noqa: F401
