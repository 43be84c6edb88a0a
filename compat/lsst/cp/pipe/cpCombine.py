# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""cp_pipe's ``cpCombine`` names for the flat combine and the two-flat (anaglyph) combination.

Every config field of cp_pipe's ``CalibCombineByFilterConfig`` and
``CalibCombineTwoFlatsByFilterConfig`` exists in `lsst.cp.flatnorm.cpCombine` and
`lsst.cp.flatnorm.cpCombineTwoFlats`; doc/lsst.cp.flatnorm/config-fields.rst says what each does.
"""

__all__ = [
    "CalibCombineByFilterConfig",
    "CalibCombineByFilterConnections",
    "CalibCombineByFilterTask",
    "CalibCombineTwoFlatsByFilterConfig",
    "CalibCombineTwoFlatsByFilterConnections",
    "CalibCombineTwoFlatsByFilterTask",
]

from lsst.cp.flatnorm.cpCombine import CpFlatCombineConfig as CalibCombineByFilterConfig
from lsst.cp.flatnorm.cpCombine import CpFlatCombineConnections as CalibCombineByFilterConnections
from lsst.cp.flatnorm.cpCombine import CpFlatCombineTask as CalibCombineByFilterTask
from lsst.cp.flatnorm.cpCombineTwoFlats import (
    CpFlatCombineTwoFlatsConfig as CalibCombineTwoFlatsByFilterConfig,
    CpFlatCombineTwoFlatsConnections as CalibCombineTwoFlatsByFilterConnections,
)
from lsst.cp.flatnorm.cpCombineTwoFlats import CpFlatCombineTwoFlatsTask as CalibCombineTwoFlatsByFilterTask
