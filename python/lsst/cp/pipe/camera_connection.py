# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The camera prerequisite every flat task declares."""

from __future__ import annotations

__all__ = ["camera_prerequisite"]

import lsst.pipe.base.connectionTypes as cT


def camera_prerequisite(doc: str) -> cT.PrerequisiteInput:
    """Return the ``camera`` connection: a ``CameraModel`` calibration with dimensions (instrument).

    Parameters
    ----------
    doc : `str`
        What the task uses the camera for.
    """
    return cT.PrerequisiteInput(
        name="camera",
        doc=doc,
        storageClass="CameraModel",
        dimensions=("instrument",),
        isCalibration=True,
    )
