# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Flat statistics with known truth, shared by the normalization tests."""

import numpy as np

from lsst.cp.flatnorm.flat_statistics import pack_statistics
from lsst.cp.flatnorm.sim.camera import make_sim_camera

EXPOSURES = [2026112500010, 2026112500011, 2026112500012, 2026112500013]
AMP_PIXELS = 2048


class StatisticsFactory:
    """Known-truth flat statistics for the simulated camera (9 x 16 amps + 2 x 8 amps)."""

    def __init__(self, seed=5):
        self.camera = make_sim_camera(n_side=3, n_wavefront=2)
        rng = np.random.default_rng(seed)
        self.lamps = dict(zip(EXPOSURES, [1000.0, 1300.0, 900.0, 2000.0]))
        self.amp_gain = {
            (det.id, amp.getName()): rng.uniform(0.8, 1.2) for det in self.camera for amp in det
        }

    def metadata(self, exposure, detector, shuffle=False, drop=None):
        """Statistics of one (exposure, detector), amp entries optionally in a shuffled order.

        The levels are exact, so every sigma is zero.
        """
        amps = [amp.getName() for amp in self.camera[detector]]
        if shuffle:
            amps = amps[::-1]
        levels = [self.amp_gain[(detector, name)] * self.lamps[exposure] for name in amps]
        zeros = [0.0] * len(amps)
        md = pack_statistics(median=np.mean(levels), sigma=0.0, n=AMP_PIXELS * len(amps), amp_names=amps,
                             amp_medians=levels, amp_sigmas=zeros, amp_ns=[AMP_PIXELS] * len(amps))
        if drop is not None:
            del md[drop]
        return md

    def inputs(self, pairs, **kwargs):
        mds = [self.metadata(exposure, detector, **kwargs) for exposure, detector in pairs]
        dims = [{"instrument": "SimFlatCam", "exposure": exposure, "detector": detector}
                for exposure, detector in pairs]
        return mds, dims

    def all_pairs(self, skip=()):
        return [(e, d.id) for e in EXPOSURES for d in self.camera if (e, d.id) not in skip]

    def true_detector_scales(self, used_pairs):
        """True DETECTOR-level G under the gauge: the mean of G weighted by each detector's pixel
        count summed over its used exposures is one."""
        detectors = sorted({d for _, d in used_pairs})
        raw = {d: np.mean([self.amp_gain[(d, a.getName())] for a in self.camera[d]]) for d in detectors}
        weights = {d: len(self.camera[d]) * sum(1 for _, det in used_pairs if det == d) for d in detectors}
        norm = sum(raw[d] * weights[d] for d in detectors) / sum(weights.values())
        return {d: raw[d] / norm for d in detectors}, norm
