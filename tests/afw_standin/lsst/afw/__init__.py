# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""A test stand-in for ``lsst.afw``: only `lsst.afw.cameraGeom.Camera`, see that module."""
