# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Connections that more than one flat task declares: the camera and the post-ISR flats."""

from __future__ import annotations

__all__ = ["camera_prerequisite", "post_isr_flat_input"]

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


def post_isr_flat_input(doc: str, *, multiple: bool = False, deferLoad: bool = False) -> cT.Input:
    """Return the ``cpFlatProc`` input: post-ISR flats (``MaskedImageV2``) per exposure and detector.

    Parameters
    ----------
    doc : `str`
        What the task reads them for.
    multiple : `bool`, optional
        Whether the task takes several (one per exposure).
    deferLoad : `bool`, optional
        Whether the task reads them itself through deferred handles (e.g. in row bands).
    """
    return cT.Input(
        name="cpFlatProc",
        doc=doc,
        storageClass="MaskedImageV2",
        dimensions=("instrument", "exposure", "detector"),
        multiple=multiple,
        deferLoad=deferLoad,
    )
