# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Flat-field normalization tasks with cp_pipe's API, on pip-installable LSST middleware.

cp_pipe's class paths (``lsst.cp.pipe.cpFlatMeasure.CpFlatNormalizationTask``, ...) are served by
the separate compatibility package ``lsst.cp.pipe`` that the wheel installs from ``compat/``; this
package never imports it, so it works beside a real cp_pipe.
"""

from .cpCombine import *  # noqa: F401,F403
from .cpCombineTwoFlats import *  # noqa: F401,F403
from .cpFlatGradients import *  # noqa: F401,F403
from .cpFlatMeasure import *  # noqa: F401,F403
from .cpFlatNormalize import *  # noqa: F401,F403
from .cpFlatVisualize import *  # noqa: F401,F403
from .version import __version__  # noqa: F401
