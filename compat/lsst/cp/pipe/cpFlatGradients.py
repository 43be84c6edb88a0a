# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""cp_pipe's ``cpFlatGradients`` names: the focal-plane gradient fit and its application.

The tasks are `lsst.cp.flatnorm.cpFlatGradients`'s, with cp_pipe's connection names, config fields
and dataset types; the gradient they write is a `lsst.cp.flatnorm.gradient_model.FlatGradientModel`
(storage class ``FlatGradientModel``) where cp_pipe writes ip_isr's ``FlatGradient``.
"""

__all__ = [
    "CpFlatApplyGradientsConfig",
    "CpFlatApplyGradientsConnections",
    "CpFlatApplyGradientsTask",
    "CpFlatFitGradientsConfig",
    "CpFlatFitGradientsConnections",
    "CpFlatFitGradientsTask",
]

from lsst.cp.flatnorm.cpFlatGradients import (
    CpFlatApplyGradientsConfig,
    CpFlatApplyGradientsConnections,
    CpFlatApplyGradientsTask,
    CpFlatFitGradientsConfig,
    CpFlatFitGradientsConnections,
    CpFlatFitGradientsTask,
)
