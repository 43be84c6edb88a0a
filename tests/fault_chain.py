# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The smallest flat chain the fault tests interrupt (``test_faults_*.py``): one science and one
wavefront detector of 4 x 4-pixel amplifiers, three exposures, no flaw; and what it writes."""

import sys
from pathlib import Path

from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig
from lsst.cp.flatnorm.sim.run import pipeline_uri

PIPELINE = pipeline_uri("SimFlatCam", "cpFlat.yaml")
CAMERA = make_sim_camera(n_side=1, amp_width=4, amp_height=4, n_wavefront=1)
CONFIG = FlatSimConfig(n_exposures=3, dead_amplifier=None, shadow=None, saturation=None, n_cosmic_rays=0)
EVERY_OUTPUT = {"cpFlatStatistics": CONFIG.n_exposures * len(CAMERA), "cpFlatNormalizeScaleTable": 1,
                "cpFlatNormalizeScales": 1, "flat": len(CAMERA)}
"""Number of datasets of each output type of a complete run."""
NORMALIZATION_OUTPUTS = ("cpFlatNormalizeScales", "cpFlatNormalizeScaleTable")
CP_FLATNORM = Path(sys.executable).with_name("cp-flatnorm")
