# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The camera model under its pre-0.2 path, which repositories created then name as the
``CameraModel`` storage class's pytype."""

__all__ = ["CameraModel"]

from lsst.cp.flatnorm.camera_model import CameraModel
