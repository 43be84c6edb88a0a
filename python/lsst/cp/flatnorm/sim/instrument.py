# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The butler instrument of the simulated camera.

``SimFlatCam`` is the `~lsst.cp.flatnorm.instrument.FlatInstrument` configured by the package's
``configs/instruments/SimFlatCam.yaml``: `make_sim_camera`'s detectors and three physical
filters.  It is the class ``lsst.cp.flatnorm.instrument.SimFlatCam``, which new registrations
store; this path stays importable for the repositories and pipelines that name it::

    butler register-instrument REPO lsst.cp.flatnorm.instrument.SimFlatCam

``SimFlatCam(camera=...)`` registers and writes another camera named ``SimFlatCam`` (a small one
for tests): pixel sizes do not enter the registry, so it is compatible with the default one as
long as it has the same detectors.
"""

from __future__ import annotations

__all__ = ["SimFlatCam", "SIM_FILTERS", "CAMERA_DATASET_TYPE"]

from ..instrument import CAMERA_DATASET_TYPE, instrument_class
from .camera import SIM_CAMERA_NAME

SimFlatCam = instrument_class(SIM_CAMERA_NAME)

SIM_FILTERS: dict[str, str] = dict(SimFlatCam().config.filters)
"""Physical filters of the simulated camera and their bands."""
