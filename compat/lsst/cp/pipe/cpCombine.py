# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""cp_pipe's ``cpCombine`` names for the flat combine.

The config fields cp_pipe's flat pipelines set (``calibrationType``, ``exposureScaling``,
``scalingLevel``, ``mask``, ``clip``, ``nIter``) mean the same in `lsst.cp.flatnorm.cpCombine`.
"""

__all__ = ["CalibCombineByFilterConfig", "CalibCombineByFilterConnections", "CalibCombineByFilterTask"]

from lsst.cp.flatnorm.cpCombine import CpFlatCombineConfig as CalibCombineByFilterConfig
from lsst.cp.flatnorm.cpCombine import CpFlatCombineConnections as CalibCombineByFilterConnections
from lsst.cp.flatnorm.cpCombine import CpFlatCombineTask as CalibCombineByFilterTask
