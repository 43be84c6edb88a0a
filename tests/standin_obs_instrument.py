# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""An obs-package-like instrument whose ``getCamera()`` gives an afw camera (the stand-in of
``tests/afw_standin``), for ``cp-flatnorm camera import instrument:standin_obs_instrument.StandInCam``.

Import it only with ``tests/afw_standin`` on ``PYTHONPATH`` (a subprocess's), as an obs package
can only be imported where afw is.
"""

from lsst.afw.cameraGeom import camera_from_model
from lsst.cp.flatnorm.sim.camera import make_sim_camera


class StandInCam:
    """Constructed without arguments, as ``cp-flatnorm`` does with ``instrument:`` sources."""

    def getCamera(self):
        return camera_from_model(make_sim_camera(n_side=2, amp_width=4, amp_height=3, n_wavefront=1))
