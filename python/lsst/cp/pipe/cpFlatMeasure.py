# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""cp_pipe's ``cpFlatMeasure`` module: the flat measurement task, and the normalization task
re-exported under the import path that cp_pipe pipelines name."""

from __future__ import annotations

__all__ = ["CpFlatNormalizationConfig", "CpFlatNormalizationConnections", "CpFlatNormalizationTask"]

from .cpFlatNormalize import CpFlatNormalizationConfig, CpFlatNormalizationConnections, CpFlatNormalizationTask
