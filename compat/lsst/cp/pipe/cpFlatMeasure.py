# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""cp_pipe's ``cpFlatMeasure`` names: the flat measurement and normalization tasks."""

__all__ = [
    "CpFlatMeasureConnections",
    "CpFlatMeasureTask",
    "CpFlatMeasureTaskConfig",
    "CpFlatNormalizationConnections",
    "CpFlatNormalizationTask",
    "CpFlatNormalizationTaskConfig",
]

from lsst.cp.flatnorm.cpFlatMeasure import CpFlatMeasureConfig as CpFlatMeasureTaskConfig
from lsst.cp.flatnorm.cpFlatMeasure import CpFlatMeasureConnections, CpFlatMeasureTask
from lsst.cp.flatnorm.cpFlatNormalize import CpFlatNormalizationConfig as CpFlatNormalizationTaskConfig
from lsst.cp.flatnorm.cpFlatNormalize import CpFlatNormalizationConnections, CpFlatNormalizationTask
