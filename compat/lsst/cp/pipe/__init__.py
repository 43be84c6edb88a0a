# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""cp_pipe's import paths for the flat chain, served by `lsst.cp.flatnorm`.

Pipelines written for cp_pipe name ``lsst.cp.pipe.cpFlatMeasure.CpFlatNormalizationTask`` and
friends.  Where cp_pipe is not installed, this package answers those names with cp_flatnorm's
tasks.  It is installed only with the wheel (from ``compat/``); the eups table does not put it on
``PYTHONPATH``, and a real cp_pipe earlier on the path always wins.
"""

from .cpCombine import *  # noqa: F401,F403
from .cpFlatGradients import *  # noqa: F401,F403
from .cpFlatMeasure import *  # noqa: F401,F403
