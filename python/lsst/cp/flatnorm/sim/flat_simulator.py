# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Simulated post-ISR dome flats with a known truth.

The signal of exposure ``e`` in pixel ``p`` of detector ``d`` is

    S[e, d, p] = L[e] * (1 + c[d] * colour[e]) * R[d, p]

where ``L`` is the lamp level (a lamp whose output drifts slowly with time, times the exposure
time), ``colour`` a per-exposure lamp colour (centred on zero; it can drift through the sequence,
``FlatSimConfig.colour_drift``), ``c`` a per-detector colour sensitivity (centred on zero,
weighted by pixel count; sensor families, told apart by the detector's ``physical_type``, can
answer colour differently, ``FlatSimConfig.family_colour_slopes``) and ``R`` the fixed pixel
response:
detector response x amplifier gain error x radial vignetting across the focal plane x pixel
to pixel variations (x, if ``FlatSimConfig.illumination`` is set, a focal-plane illumination
with a known gradient model, `lsst.cp.flatnorm.sim.illumination`).  The colour term makes the
detector levels separable only to ~1e-3, as in real flats.  Images get Poisson and read noise,
cosmic rays (flagged ``CR``), defect columns at half response (flagged ``BAD``) and three
corruptions:

- a dead amplifier (exactly zero signal, *not* masked, as a real one usually is not);
- one exposure partly shadowed on one detector (whole amplifier columns at reduced signal, not
  masked): the normalization must reject that (exposure, detector) entry;
- one exposure with a saturated band on another detector, flagged ``SAT``: the measurement must
  ignore the masked pixels, and the entry must *not* be rejected.

`FlatTruth` gives the scales a normalization should recover, in the package's gauge: row scales
``G`` (detectors, or amplifiers) normalised so that their mean weighted by each row's total used
pixel count is 1, and exposure scales ``E`` absorbing the inverse factor.  For a normalization
with colour terms, which puts every exposure on the reference colour (`FlatTruth.reference_colour`),
`FlatTruth.row_scales` and `FlatTruth.pixel_response` give the response at a given colour.  Everything is
deterministic given the seed; each image has its own random stream, so images can be made in
any order or in parallel.
"""

from __future__ import annotations

__all__ = [
    "MASK_PLANES",
    "Corruption",
    "FlatSimConfig",
    "FlatSimulator",
    "FlatTruth",
    "SimExposure",
]

import dataclasses
from collections.abc import Iterable
from functools import cached_property
from typing import TYPE_CHECKING

import astropy.time
import astropy.units as u
import numpy as np

from lsst.images import Image, Mask, MaskedImage, MaskPlane, MaskSchema

from ..camera_model import AmplifierModel, CameraModel, DetectorModel
from ..exposure_records import ExposureInfo

if TYPE_CHECKING:
    from .illumination import FocalPlaneIllumination

MASK_PLANES: tuple[MaskPlane, ...] = (
    MaskPlane("BAD", "Bad pixel in the instrument (simulated defect column)."),
    MaskPlane("SAT", "Pixel was saturated."),
    MaskPlane("CR", "A cosmic ray affected this pixel."),
    MaskPlane("DETECTED", "Pixel was part of a detected source."),
    MaskPlane("NO_DATA", "No data was available for this pixel."),
)
"""Mask planes of the simulated images (afw's names, which cp_pipe's configs use)."""

_SHADOW_AMP_COLUMNS = 3  # the shadow covers the leftmost amplifier columns of the detector
_SATURATED_ROWS = (0.45, 0.55)  # fractions of the detector height flagged SAT
_DEFECT_RESPONSE = 0.5
_MAX_CR_LENGTH = 4


@dataclasses.dataclass(frozen=True)
class FlatSimConfig:
    """Parameters of the flat simulation (defaults give a realistic, quickly simulated set)."""

    n_exposures: int = 12
    seed: int = 20240601
    physical_filter: str = "sim_r"
    day_obs: int = 20240601
    start_time: str = "2024-06-01T20:00:00"
    """UTC start of the first exposure (ISO format)."""
    cadence: float = 60.0
    """Seconds between the starts of consecutive exposures."""
    exposure_times: tuple[float, ...] = (10.0, 15.0, 20.0)
    """Exposure times, cycled through the sequence (seconds)."""
    lamp_rate: float = 1000.0
    """Lamp flux at the start, in electrons per second per unit response."""
    lamp_drift: float = 0.04
    """Fractional change of the lamp flux over the whole sequence."""
    lamp_jitter: float = 0.005
    """RMS of the exposure-to-exposure lamp fluctuations (fractional)."""
    detector_response_sigma: float = 0.05
    amp_gain_error_sigma: float = 0.02
    pixel_response_sigma: float = 0.005
    vignetting: float = 0.15
    """Fractional loss of response at the edge of the focal plane (quadratic in radius)."""
    illumination: FocalPlaneIllumination | None = None
    """Large-scale illumination multiplying every pixel's response at its focal-plane position
    (radial function, gradient, centre offset and sensor-family ratio, `.illumination`), or `None`."""
    colour_half_range: float = 0.4
    """Exposure colours are uniform in +-this (then centred)."""
    colour_slope_max: float = 0.006
    """Per-detector colour sensitivities are uniform in +-this (then centred)."""
    family_colour_slopes: tuple[tuple[str, float], ...] = ()
    """Colour sensitivity of each sensor family, ``((physical_type, slope), ...)`` (e.g.
    ``(("ITL", 0.01), ("E2V", -0.01))``), added to the draw of every detector whose
    ``physical_type`` it is, before the slopes are centred; every detector's type must be listed.
    Empty (default): no families."""
    colour_drift: float = 0.0
    """Drift of the lamp colour over the sequence: exposure ``i`` of ``n`` gets
    ``colour_drift * (i / (n - 1) - 1/2)`` added to its uniform draw (before centring)."""
    read_noise: float = 5.0
    n_defect_columns: int = 2
    """Defect columns per detector."""
    n_cosmic_rays: int = 5
    """Cosmic-ray tracks per image."""
    cosmic_ray_energy: float = 20000.0
    saturation_level: float = 100000.0
    dead_amplifier: tuple[int, str] | None = (5, "C03")
    """(detector, amplifier) with no signal, or `None`."""
    shadow: tuple[int, int] | None = (3, 0)
    """(exposure index, detector) partly shadowed, or `None`."""
    shadow_transmission: float = 0.6
    saturation: tuple[int, int] | None = (6, 4)
    """(exposure index, detector) with a saturated, SAT-flagged band, or `None`."""
    missing_images: tuple[tuple[int, int], ...] = ()
    """(exposure index, detector) pairs with no image at all (the detector was not read out), so
    that detector's flat is made from fewer exposures than the others'."""
    observation_reasons: tuple[str, ...] = ("flat",)
    """``observation_reason`` of the exposure records, cycled through the sequence (e.g. the two
    LEDs of cp_pipe's anaglyph flats, which its normalizations down-select on)."""


@dataclasses.dataclass(frozen=True)
class SimExposure(ExposureInfo):
    """Observation metadata and truth of one simulated exposure."""

    lamp_level: float
    """Signal per unit response (electrons), before the colour term."""
    colour: float
    science_program: str = dataclasses.field(default="SIM-FLATS", kw_only=True)
    has_simulated: bool = dataclasses.field(default=True, kw_only=True)


@dataclasses.dataclass(frozen=True)
class Corruption:
    """A defect the simulator put in on purpose.

    Attributes
    ----------
    kind : `str`
        ``"dead_amplifier"``, ``"shadow"`` or ``"saturation"``.
    detector : `int`
        Affected detector.
    exposure : `int` or `None`
        Affected exposure ID; `None` for every exposure.
    amplifiers : `tuple` [`str`, ...]
        Affected amplifiers.
    masked : `bool`
        Whether the affected pixels are flagged in the mask (and so should be ignored, not
        rejected).
    """

    kind: str
    detector: int
    exposure: int | None
    amplifiers: tuple[str, ...]
    masked: bool


class FlatTruth:
    """What a flat normalization of the simulated data should recover.

    Parameters
    ----------
    simulator : `FlatSimulator`
        The simulator whose truth this is.
    """

    def __init__(self, simulator: FlatSimulator):
        self._sim = simulator

    @property
    def exposures(self) -> list[SimExposure]:
        return self._sim.exposures

    @property
    def corruptions(self) -> list[Corruption]:
        return self._sim.corruptions

    def expected_rejected(self, level: str = "DETECTOR") -> set[tuple]:
        """Entries a normalization should reject as outliers of the separable model.

        Parameters
        ----------
        level : `str`
            ``"DETECTOR"`` (entries ``(exposure, detector)``) or ``"AMP"`` (entries
            ``(exposure, detector, amplifier)``).
        """
        shadows = [c for c in self.corruptions if c.kind == "shadow"]
        if _check_level(level) == "DETECTOR":
            return {(c.exposure, c.detector) for c in shadows}
        return {(c.exposure, c.detector, amp) for c in shadows for amp in c.amplifiers}

    def expected_invalid(self, level: str = "DETECTOR") -> set[tuple]:
        """Entries whose level is not positive (the dead amplifier at AMP level)."""
        if _check_level(level) == "DETECTOR":
            return set()
        return {
            (exposure.id, c.detector, amp)
            for c in self.corruptions if c.kind == "dead_amplifier"
            for exposure in self.exposures for amp in c.amplifiers
        }

    def missing_images(self) -> set[tuple[int, int]]:
        """(exposure ID, detector) pairs that have no image."""
        return self._sim.missing_images

    def row_keys(self, level: str = "DETECTOR") -> list:
        """Row keys in camera order: detector IDs, or (detector, amplifier) pairs."""
        if _check_level(level) == "DETECTOR":
            return [det.getId() for det in self._sim.camera]
        return [(det.getId(), amp.getName()) for det in self._sim.camera for amp in det]

    def expected_levels(self, level: str = "DETECTOR") -> np.ndarray:
        """Noise-free mean signal over the usable pixels of every entry.

        Usable pixels are live and not masked.  Corrupted entries (shadow) are included as
        they are; entries without usable pixels, or without an image, are 0.

        Returns
        -------
        levels : `numpy.ndarray`, (nRows, nExposures)
            Rows follow `row_keys`, columns `exposures`.
        """
        return self._sim.expected_matrix(level)[0]

    def _used_counts(self, level: str) -> np.ndarray:
        """Expected pixel counts of every (row, exposure) entry, 0 for the rejected and invalid ones."""
        keys = self.row_keys(level)
        rejected = self.expected_rejected(level) | self.expected_invalid(level)
        _, counts = self._sim.expected_matrix(level)
        for j, exposure in enumerate(self.exposures):
            for i, key in enumerate(keys):
                entry = (exposure.id, key) if level == "DETECTOR" else (exposure.id, *key)
                if entry in rejected:
                    counts[i, j] = 0
        return counts

    def _gauge(self, level: str, colour: float | None = None) -> tuple[np.ndarray, float]:
        """Return the unnormalised row scales (at ``colour`` if given) and the gauge factor that
        normalises them."""
        keys = self.row_keys(level)
        counts = self._used_counts(level)
        raw = np.array([self._sim.mean_response(key) for key in keys])
        if colour is not None:
            raw = raw * np.array([1 + self.colour_slope(key) * colour for key in keys])
        weights = counts.sum(axis=1)
        used = weights > 0
        factor = float(np.sum(weights[used] * raw[used]) / np.sum(weights[used]))
        return raw, factor

    def row_scales(self, level: str = "DETECTOR", colour: float | None = None) -> dict:
        """True row scales ``G`` in the package's gauge.

        Parameters
        ----------
        level : `str`, optional
            ``"DETECTOR"`` or ``"AMP"``.
        colour : `float`, optional
            Lamp colour at which the response is taken (colour terms: `reference_colour`); `None`
            for the colour-averaged response a separable normalization recovers (equal to the
            response at colour 0, since the colours are centred).

        Returns
        -------
        scales : `dict`
            Detector ID (or ``(detector, amplifier)``) -> scale; rows without any usable entry
            (the dead amplifier at AMP level) are left out.
        """
        raw, factor = self._gauge(level, colour)
        invalid_rows = {entry[1:] for entry in self.expected_invalid(level)}
        return {
            key: float(value / factor)
            for key, value in zip(self.row_keys(level), raw)
            if key not in invalid_rows
        }

    def detector_scales(self) -> dict[int, float]:
        """True detector scales ``G`` (DETECTOR level)."""
        return self.row_scales("DETECTOR")

    def amplifier_scales(self) -> dict[tuple[int, str], float]:
        """True amplifier scales ``G`` (AMP level), keyed by (detector, amplifier)."""
        return self.row_scales("AMP")

    def exposure_scales(self, level: str = "DETECTOR") -> dict[int, float]:
        """True exposure scales ``E`` (lamp levels times the gauge factor), by exposure ID."""
        _, factor = self._gauge(level)
        return {exposure.id: exposure.lamp_level * factor for exposure in self.exposures}

    def pixel_response(
        self, detector: int, level: str = "DETECTOR", colour: float | None = None
    ) -> np.ndarray:
        """True relative response of every pixel of a detector, in the gauge of ``level``.

        This is what a flat combined from the exposures divided by their scales ``E`` should
        converge to: its mean over the usable pixels is the detector's scale ``G``.  Dead and
        defect pixels carry their true (zero or reduced) response.  With ``colour``, the response
        at that lamp colour (a normalization with colour terms puts every exposure on the
        `reference_colour`), its mean the ``G`` of ``row_scales(level, colour)``.
        """
        _, factor = self._gauge(level, colour)
        response = self._sim.response(detector) / factor
        if colour is not None:
            response *= 1 + self.colour_slope(detector) * colour
        return response

    def colour_slope(self, key: int | tuple[int, str]) -> float:
        """Colour sensitivity ``c`` of a detector (or of the detector of a (detector, amplifier))."""
        return self._sim.colour_slope(key[0] if isinstance(key, tuple) else key)

    def reference_colour(self, level: str = "DETECTOR") -> float:
        """The lamp colour a normalization with colour terms puts every exposure on: the mean
        exposure colour weighted by each exposure's used pixel count (without the rejected and
        invalid entries), as its gauge makes the count-weighted mean of the exposure colours ``v``
        zero."""
        weights = self._used_counts(level).sum(axis=0)
        return float(np.average([exposure.colour for exposure in self.exposures], weights=weights))

    def flat_noise(self, detector: int) -> float:
        """Expected relative RMS, over the usable pixels, of the mean of all images of a detector
        each divided by its lamp level (Poisson and read noise only)."""
        response = self._sim.response(detector)[self.usable_pixels(detector)]
        variance = np.zeros_like(response)
        exposures = [e for e in self.exposures if self._sim.has_image(e.id, detector)]
        for exposure in exposures:
            signal = exposure.lamp_level * response
            variance += (signal + self._sim.config.read_noise**2) / signal**2
        return float(np.sqrt(variance.mean()) / len(exposures))

    def usable_pixels(self, detector: int) -> np.ndarray:
        """Boolean array: pixels that are live and not in a defect column."""
        return self._sim.usable(detector)


def _check_level(level: str) -> str:
    if level not in ("DETECTOR", "AMP"):
        raise ValueError(f"level must be 'DETECTOR' or 'AMP'; got {level!r}.")
    return level


class FlatSimulator:
    """Simulate post-ISR flats of a camera with a known truth.

    Parameters
    ----------
    camera : `lsst.cp.flatnorm.camera_model.CameraModel`
        Camera geometry (`lsst.cp.flatnorm.sim.camera.make_sim_camera`).
    config : `FlatSimConfig`, optional
        Simulation parameters.
    """

    def __init__(self, camera: CameraModel, config: FlatSimConfig | None = None):
        self.camera = camera
        self.config = config if config is not None else FlatSimConfig()
        self._check_config()
        rng = np.random.default_rng([self.config.seed, 0])
        detector_ids = [det.getId() for det in camera]
        self._detector_response = dict(zip(
            detector_ids, 1 + self.config.detector_response_sigma * rng.standard_normal(len(detector_ids))
        ))
        self._amp_gain = {
            (det.getId(), amp.getName()): 1 + self.config.amp_gain_error_sigma * rng.standard_normal()
            for det in camera for amp in det
        }
        self._colour_slope = self._centred_colour_slopes(rng)
        self.exposures = self._make_exposures(rng)
        self.corruptions = self._make_corruptions()
        self.missing_images = {
            (self.exposures[index].id, detector) for index, detector in self.config.missing_images
        }
        self._expected: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.truth = FlatTruth(self)

    def _check_config(self) -> None:
        config = self.config
        if config.dead_amplifier is not None:
            detector, amp = config.dead_amplifier
            if detector not in self.camera or amp not in {a.getName() for a in self.camera[detector]}:
                raise ValueError(f"dead_amplifier={config.dead_amplifier} names no amplifier of the camera.")
        for name in ("shadow", "saturation"):
            entry = getattr(config, name)
            if entry is not None and not self._is_simulated(entry):
                raise ValueError(f"{name}={entry} names no simulated (exposure index, detector).")
        for entry in config.missing_images:
            if not self._is_simulated(entry):
                raise ValueError(f"missing_images: {entry} names no simulated (exposure index, detector).")
        families = dict(config.family_colour_slopes)
        for det in self.camera if families else ():
            if det.physical_type not in families:
                raise ValueError(f"family_colour_slopes lists {sorted(families)} but detector {det.getId()} "
                                 f"({det.getName()}) has physical_type {det.physical_type!r}.")

    def _is_simulated(self, entry: tuple[int, int]) -> bool:
        """Whether an (exposure index, detector) pair is in the simulated sequence and camera."""
        return 0 <= entry[0] < self.config.n_exposures and entry[1] in self.camera

    def _centred_colour_slopes(self, rng: np.random.Generator) -> dict[int, float]:
        """Draw colour sensitivities and remove their pixel-count weighted mean, so that the
        colour term has no separable part and the truth scales stay exact to first order."""
        limit = self.config.colour_slope_max
        slopes = rng.uniform(-limit, limit, len(self.camera))
        if self.config.family_colour_slopes:
            families = dict(self.config.family_colour_slopes)
            slopes += np.array([families[det.physical_type] for det in self.camera])
        pixels = np.array([det.getBBox().getWidth() * det.getBBox().getHeight() for det in self.camera])
        slopes -= np.sum(pixels * slopes) / np.sum(pixels)
        return {det.getId(): float(slope) for det, slope in zip(self.camera, slopes)}

    def _make_exposures(self, rng: np.random.Generator) -> list[SimExposure]:
        config = self.config
        n = config.n_exposures
        colours = rng.uniform(-config.colour_half_range, config.colour_half_range, n)
        if config.colour_drift:
            colours += config.colour_drift * (np.arange(n) / max(n - 1, 1) - 0.5)
        colours -= colours.mean()
        jitter = 1 + config.lamp_jitter * rng.standard_normal(n)
        start = astropy.time.Time(config.start_time, format="isot", scale="utc")
        exposures = []
        for i in range(n):
            seq_num = i + 1
            exposure_time = config.exposure_times[i % len(config.exposure_times)]
            drift = 1 + config.lamp_drift * i / max(n - 1, 1)
            exposures.append(SimExposure(
                id=config.day_obs * 100_000 + seq_num,
                obs_id=f"SF_O_{config.day_obs}_{seq_num:06d}",
                seq_num=seq_num,
                day_obs=config.day_obs,
                physical_filter=config.physical_filter,
                begin=start + i * config.cadence * u.s,
                exposure_time=exposure_time,
                lamp_level=float(config.lamp_rate * drift * jitter[i] * exposure_time),
                colour=float(colours[i]),
                observation_reason=config.observation_reasons[i % len(config.observation_reasons)],
            ))
        return exposures

    def _make_corruptions(self) -> list[Corruption]:
        config = self.config
        corruptions = []
        if config.dead_amplifier is not None:
            detector, amp = config.dead_amplifier
            corruptions.append(Corruption("dead_amplifier", detector, None, (amp,), masked=False))
        if config.shadow is not None:
            index, detector = config.shadow
            amps = tuple(amp.getName() for amp in self.camera[detector] if self._in_shadow(amp))
            corruptions.append(Corruption("shadow", detector, self.exposures[index].id, amps, masked=False))
        if config.saturation is not None:
            index, detector = config.saturation
            box = self._saturated_rows(self.camera[detector])
            amps = tuple(
                amp.getName() for amp in self.camera[detector]
                if amp.getBBox().getMinY() < box.stop and amp.getBBox().getMaxY() >= box.start
            )
            corruptions.append(
                Corruption("saturation", detector, self.exposures[index].id, amps, masked=True)
            )
        return corruptions

    @staticmethod
    def _in_shadow(amp: AmplifierModel) -> bool:
        return amp.getBBox().getMinX() < _SHADOW_AMP_COLUMNS * amp.getBBox().getWidth()

    @staticmethod
    def _saturated_rows(detector: DetectorModel) -> slice:
        height = detector.getBBox().getHeight()
        return slice(int(_SATURATED_ROWS[0] * height), int(_SATURATED_ROWS[1] * height))

    def _corruption(self, kind: str, exposure_id: int, detector: int) -> Corruption | None:
        for c in self.corruptions:
            if c.kind == kind and c.detector == detector and c.exposure in (None, exposure_id):
                return c
        return None

    @cached_property
    def _focal_plane_radius(self) -> float:
        """Largest distance of a detector corner from the focal-plane centre (mm)."""
        corners = []
        for det in self.camera:
            half_width = det.getBBox().getWidth() * det.pixel_size / 2
            half_height = det.getBBox().getHeight() * det.pixel_size / 2
            corners.append(np.hypot(abs(det.focal_plane_x) + half_width,
                                    abs(det.focal_plane_y) + half_height))
        return float(max(corners))

    def _vignetting(self, det: DetectorModel) -> np.ndarray:
        bbox = det.getBBox()
        y, x = np.mgrid[0:bbox.getHeight(), 0:bbox.getWidth()]
        fp_x = det.focal_plane_x + (x - (bbox.getWidth() - 1) / 2) * det.pixel_size
        fp_y = det.focal_plane_y + (y - (bbox.getHeight() - 1) / 2) * det.pixel_size
        return 1 - self.config.vignetting * (fp_x**2 + fp_y**2) / self._focal_plane_radius**2

    def defect_columns(self, detector: int) -> np.ndarray:
        """Columns of a detector at half response and flagged BAD in every image (its defects)."""
        return self._defect_columns(self.camera[detector])

    def _defect_columns(self, det: DetectorModel) -> np.ndarray:
        rng = np.random.default_rng([self.config.seed, 1, det.getId()])
        return rng.choice(det.getBBox().getWidth(), self.config.n_defect_columns, replace=False)

    def _amp_slices(self, det: DetectorModel) -> Iterable[tuple[str, tuple[slice, slice]]]:
        for amp in det:
            box = amp.getBBox()
            rows = slice(box.getMinY(), box.getMaxY() + 1)
            yield amp.getName(), (rows, slice(box.getMinX(), box.getMaxX() + 1))

    def _amp_map(self, det: DetectorModel) -> np.ndarray:
        gains = np.zeros((det.getBBox().getHeight(), det.getBBox().getWidth()))
        for name, region in self._amp_slices(det):
            gains[region] = self._amp_gain[det.getId(), name]
        if self.config.dead_amplifier is not None and self.config.dead_amplifier[0] == det.getId():
            gains[dict(self._amp_slices(det))[self.config.dead_amplifier[1]]] = 0.0
        return gains

    def colour_slope(self, detector: int) -> float:
        """Colour sensitivity ``c`` of a detector: its signal is ``L (1 + c colour) R``."""
        return self._colour_slope[detector]

    def response(self, detector: int) -> np.ndarray:
        """Noise-free response of every pixel of a detector (signal per unit lamp level)."""
        return self._responses[detector].copy()

    @cached_property
    def _responses(self) -> dict[int, np.ndarray]:
        responses = {}
        for det in self.camera:
            rng = np.random.default_rng([self.config.seed, 2, det.getId()])
            shape = (det.getBBox().getHeight(), det.getBBox().getWidth())
            pixels = 1 + self.config.pixel_response_sigma * rng.standard_normal(shape)
            response = self._detector_response[det.getId()] * self._amp_map(det) * self._vignetting(det)
            response *= pixels
            if self.config.illumination is not None:
                response *= self.config.illumination.detector_map(det)
            response[:, self._defect_columns(det)] *= _DEFECT_RESPONSE
            responses[det.getId()] = response
        return responses

    def usable(self, detector: int) -> np.ndarray:
        """Live pixels outside the defect columns."""
        det = self.camera[detector]
        usable = self._amp_map(det) > 0
        usable[:, self._defect_columns(det)] = False
        return usable

    def mean_response(self, key: int | tuple[int, str]) -> float:
        """Mean response over the usable pixels of a detector or (detector, amplifier)."""
        detector, region = self._row_region(key)
        usable = self.usable(detector)[region]
        return float(self._responses[detector][region][usable].mean()) if usable.any() else 0.0

    def _row_region(self, key: int | tuple[int, str]) -> tuple[int, tuple[slice, slice]]:
        if isinstance(key, tuple):
            detector, amp = key
            return detector, dict(self._amp_slices(self.camera[detector]))[amp]
        return key, (slice(None), slice(None))

    def _signal(self, exposure: SimExposure, detector: int) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free signal of one image, and the pixels of it a measurement may use."""
        det = self.camera[detector]
        lamp = exposure.lamp_level * (1 + self._colour_slope[detector] * exposure.colour)
        signal = lamp * self._responses[detector]
        usable = self.usable(detector)
        shadow = self._corruption("shadow", exposure.id, detector)
        if shadow is not None:
            for name, region in self._amp_slices(det):
                if name in shadow.amplifiers:
                    signal[region] *= self.config.shadow_transmission
        if self._corruption("saturation", exposure.id, detector) is not None:
            usable[self._saturated_rows(det), :] = False
        return signal, usable

    def expected_matrix(self, level: str) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free mean signal and usable pixel count of every (row, exposure) entry."""
        if level not in self._expected:
            self._expected[level] = self._compute_expected_matrix(level)
        levels, counts = self._expected[level]
        return levels.copy(), counts.copy()

    def _compute_expected_matrix(self, level: str) -> tuple[np.ndarray, np.ndarray]:
        keys = self.truth.row_keys(level)
        levels = np.zeros((len(keys), len(self.exposures)))
        counts = np.zeros_like(levels)
        for j, exposure in enumerate(self.exposures):
            for det in self.camera:
                if not self.has_image(exposure.id, det.getId()):
                    continue
                signal, usable = self._signal(exposure, det.getId())
                for i, key in enumerate(keys):
                    if key == det.getId() or (isinstance(key, tuple) and key[0] == det.getId()):
                        _, region = self._row_region(key)
                        n = np.count_nonzero(usable[region])
                        counts[i, j] = n
                        levels[i, j] = signal[region][usable[region]].mean() if n else 0.0
        return levels, counts

    def has_image(self, exposure_id: int, detector: int) -> bool:
        """Whether the detector was read out in the exposure (see ``FlatSimConfig.missing_images``)."""
        return (exposure_id, detector) not in self.missing_images

    def exposure(self, exposure_id: int) -> SimExposure:
        """Return the exposure with the given ID."""
        for exposure in self.exposures:
            if exposure.id == exposure_id:
                return exposure
        raise KeyError(f"No simulated exposure {exposure_id}.")

    def make_image(self, exposure_id: int, detector: int) -> MaskedImage:
        """Simulate the post-ISR flat of one exposure and detector.

        Parameters
        ----------
        exposure_id : `int`
            Exposure ID (see `exposures`).
        detector : `int`
            Detector ID.

        Returns
        -------
        image : `lsst.images.MaskedImage`
            Image in electrons (float32), mask with the planes of `MASK_PLANES`, and variance.
        """
        exposure = self.exposure(exposure_id)
        rng = np.random.default_rng([self.config.seed, 3, exposure.seq_num, detector])
        det = self.camera[detector]
        signal, _ = self._signal(exposure, detector)
        pixels = rng.poisson(signal) + self.config.read_noise * rng.standard_normal(signal.shape)
        variance = signal + self.config.read_noise**2
        cosmic_rays = self._add_cosmic_rays(pixels, rng)
        dead = signal == 0
        pixels[dead] = 0.0  # a dead amplifier outputs nothing at all, cosmic rays included
        mask = Mask(schema=MaskSchema(MASK_PLANES), shape=signal.shape)
        bad = np.zeros(signal.shape, dtype=bool)
        bad[:, self._defect_columns(det)] = True
        mask.set("BAD", bad)
        mask.set("CR", cosmic_rays & ~dead)
        if self._corruption("saturation", exposure.id, detector) is not None:
            saturated = np.zeros(signal.shape, dtype=bool)
            saturated[self._saturated_rows(det), :] = True
            pixels[saturated] = self.config.saturation_level
            mask.set("SAT", saturated)
        metadata: dict[str, int | float | str | bool | None] = {
            "EXPTIME": exposure.exposure_time, "FILTER": exposure.physical_filter,
            "EXPID": exposure.id, "DETECTOR": detector, "SIMULATE": True,
        }
        return MaskedImage(
            Image(pixels.astype(np.float32)), mask=mask, variance=Image(variance.astype(np.float32)),
            metadata=metadata,
        )

    def _add_cosmic_rays(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Add short horizontal cosmic-ray tracks in place; return the pixels they hit."""
        hit = np.zeros(pixels.shape, dtype=bool)
        height, width = pixels.shape
        for _ in range(self.config.n_cosmic_rays):
            y = rng.integers(height)
            x = rng.integers(width - _MAX_CR_LENGTH)
            length = rng.integers(1, _MAX_CR_LENGTH + 1)
            pixels[y, x:x + length] += self.config.cosmic_ray_energy * rng.uniform(0.2, 1.0, length)
            hit[y, x:x + length] = True
        return hit
