# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Simulated flats with defects that flat verification must find, each injectable alone.

`DefectSimulator` is a `~lsst.cp.flatnorm.sim.flat_simulator.FlatSimulator` whose images carry
the defects `InjectedDefects` lists, on top of the base simulator's own (a shadowed entry,
``FlatSimConfig.shadow``, and a saturated band, ``FlatSimConfig.saturation``):

- an amplifier whose gain jumped (its response times a factor in every image), as between the
  flat's inputs and later verification inputs;
- an exposure at a low lamp level, too low to help a flat;
- an exposure with the lamp off (a thousandth of its level: ``0`` would make the simulator treat
  the pixels as dead);
- an exposure with an extra gradient across the focal plane (a dome light left on);
- a dust mote that appeared (a Gaussian dip of the response of one detector in every image), as
  between a previous flat and a new one.

`expected_failures` says what the verification should report for them: the truth of the tests.
"""

from __future__ import annotations

__all__ = ["InjectedDefects", "DefectSimulator", "LAMP_OFF_FACTOR", "dust_mote_profile"]

import dataclasses

import numpy as np

from ..camera_model import CameraModel, DetectorModel
from .flat_simulator import FlatSimConfig, FlatSimulator, SimExposure

LAMP_OFF_FACTOR = 1e-3
"""Lamp level of a lamp-off exposure, as a fraction of its nominal level."""


@dataclasses.dataclass(frozen=True)
class InjectedDefects:
    """Defects to inject; `None` leaves one out."""

    gain_jump: tuple[int, str, float] | None = None
    """(detector, amplifier, factor): the amplifier's response times ``factor`` in every image."""
    low_level: tuple[int, float] | None = None
    """(exposure index, factor): that exposure's lamp level times ``factor``."""
    lamp_off: int | None = None
    """Exposure index whose lamp was off (`LAMP_OFF_FACTOR` of its level)."""
    gradient: tuple[int, float] | None = None
    """(exposure index, amplitude): the signal times ``1 + amplitude * x / R`` on the focal plane
    (``x`` the focal-plane x coordinate, ``R`` the focal plane's radius)."""
    dust_mote: tuple[int, float, float, float, float] | None = None
    """(detector, x, y, sigma, depth): the response times ``1 - depth exp(-r^2 / 2 sigma^2)``, ``r``
    the distance in pixels from the detector pixel (x, y)."""


class DefectSimulator(FlatSimulator):
    """A flat simulator whose images carry injected defects.

    Parameters
    ----------
    camera : `lsst.cp.flatnorm.camera_model.CameraModel`
        Camera geometry.
    config : `lsst.cp.flatnorm.sim.flat_simulator.FlatSimConfig`
        Simulation parameters.
    defects : `InjectedDefects`
        What to inject.
    first_seq_num : `int`, optional
        Sequence number of the first exposure.  The noise of an image is drawn from the seed and
        its sequence number, so new flats of the same seed (the same camera response) need other
        sequence numbers than the flat's inputs, or they would repeat their noise.
    """

    def __init__(self, camera: CameraModel, config: FlatSimConfig, defects: InjectedDefects,
                 first_seq_num: int = 1):
        self.defects = defects
        self._first_seq_num = first_seq_num
        super().__init__(camera, config)
        self._check_defects()

    def _check_defects(self) -> None:
        defects = self.defects
        if defects.gain_jump is not None:
            detector, amp, _ = defects.gain_jump
            if detector not in self.camera or amp not in {a.getName() for a in self.camera[detector]}:
                raise ValueError(f"gain_jump={defects.gain_jump} names no amplifier of the camera.")
        if defects.dust_mote is not None and defects.dust_mote[0] not in self.camera:
            raise ValueError(f"dust_mote={defects.dust_mote} names no detector of the camera.")
        for name, index in (("low_level", defects.low_level and defects.low_level[0]),
                            ("lamp_off", defects.lamp_off),
                            ("gradient", defects.gradient and defects.gradient[0])):
            if index is not None and not 0 <= index < self.config.n_exposures:
                raise ValueError(f"{name} names exposure index {index}, outside the "
                                 f"{self.config.n_exposures} simulated exposures.")

    def _make_exposures(self, rng: np.random.Generator) -> list[SimExposure]:
        exposures = [self._renumbered(exposure) for exposure in super()._make_exposures(rng)]
        factors = {}
        if self.defects.low_level is not None:
            factors[self.defects.low_level[0]] = self.defects.low_level[1]
        if self.defects.lamp_off is not None:
            factors[self.defects.lamp_off] = LAMP_OFF_FACTOR
        for index, factor in factors.items():
            exposure = exposures[index]
            exposures[index] = dataclasses.replace(exposure, lamp_level=exposure.lamp_level * factor)
        return exposures

    def _renumbered(self, exposure: SimExposure) -> SimExposure:
        seq_num = exposure.seq_num + self._first_seq_num - 1
        return dataclasses.replace(exposure, seq_num=seq_num, id=exposure.day_obs * 100_000 + seq_num,
                                   obs_id=f"SF_O_{exposure.day_obs}_{seq_num:06d}")

    def _amp_map(self, det: DetectorModel) -> np.ndarray:
        gains = super()._amp_map(det)
        jump = self.defects.gain_jump
        if jump is not None and jump[0] == det.getId():
            gains[dict(self._amp_slices(det))[jump[1]]] *= jump[2]
        mote = self.defects.dust_mote
        if mote is not None and mote[0] == det.getId():
            gains *= dust_mote_profile(gains.shape, *mote[1:])
        return gains

    def _signal(self, exposure: SimExposure, detector: int) -> tuple[np.ndarray, np.ndarray]:
        signal, usable = super()._signal(exposure, detector)
        gradient = self.defects.gradient
        if gradient is not None and self.exposures[gradient[0]].id == exposure.id:
            det = self.camera[detector]
            width = det.getBBox().getWidth()
            x = det.focal_plane_x + (np.arange(width) - (width - 1) / 2) * det.pixel_size
            signal = signal * (1 + gradient[1] * x / self._focal_plane_radius)[np.newaxis, :]
        return signal, usable

    def expected_failures(self) -> dict[str, dict]:
        """What a verification of these images must report, and nothing more.

        Returns
        -------
        failures : `dict`
            ``{"exposures": {exposure ID: set of tests}, "amplifiers": {(detector, amplifier):
            set of tests}}`` for the injected defects of this simulator's images (the gain jump
            fails ``AMP_OFFSET`` in every exposure whose lamp was on; the saturated band
            ``SATURATED``).
        """
        defects = self.defects
        exposures: dict[int, set[str]] = {}
        if defects.low_level is not None:
            exposures.setdefault(self.exposures[defects.low_level[0]].id, set()).add("LOW_SIGNAL_TO_NOISE")
        if defects.lamp_off is not None:
            exposures.setdefault(self.exposures[defects.lamp_off].id, set()).add("LAMP_OFF")
        if defects.gradient is not None:
            exposures.setdefault(self.exposures[defects.gradient[0]].id, set()).add("PATTERN")
        if self.config.saturation is not None:
            exposures.setdefault(self.exposures[self.config.saturation[0]].id, set()).add("SATURATED")
        amplifiers = {}
        if defects.gain_jump is not None:
            amplifiers[defects.gain_jump[:2]] = {"AMP_OFFSET"}
        return {"exposures": exposures, "amplifiers": amplifiers}


def dust_mote_profile(shape: tuple[int, ...], x: float, y: float, sigma: float, depth: float) -> np.ndarray:
    """The response of a detector with a dust mote, relative to its response without.

    Parameters
    ----------
    shape : `tuple` [`int`, `int`]
        The detector's (rows, columns).
    x, y : `float`
        Pixel of the mote's centre.
    sigma : `float`
        Gaussian width of the mote (pixels).
    depth : `float`
        Fraction of the light the mote takes at its centre.
    """
    rows, cols = np.indices(shape[:2])
    return 1.0 - depth * np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2))
