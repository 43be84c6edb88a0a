# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""How flat is a combined flat: compare it with the simulator's true pixel response (pure numpy).

For every detector the ratio ``flat / true response`` is taken over the usable pixels.  A flat
is only defined up to one overall constant, so every ratio of a mosaic is divided by a single
*gauge constant* ``k``: the median of the ratio over the usable pixels of all detectors pooled.
What is left, ``ratio / k - 1``, is the error of the flat's *relative* response, and is
summarised per detector (its median), per amplifier (its median over the amplifier's pixels) and
per pixel (robust scatter, and the fraction of pixels that stray from their detector's median by
more than a multiple of the expected noise).

One constant for the whole mosaic, never one per detector, is the point: a normalized flat is
already in the truth's gauge (``k`` close to 1), while an un-normalized flat of each detector
sits at the mean lamp level of the exposures that went into it.  That level is the same for all
detectors only if every detector combined the same exposures with the same clipping; where the
sets differ (a detector not read out in some exposures, masked pixels, clipped inputs), the
detector, amplifier or pixels in question get a different level, and the single constant shows
it as an error of their relative response.  The median makes ``k`` insensitive to the few
regions that are off.
"""

from __future__ import annotations

__all__ = [
    "FlatQuality",
    "MosaicQuality",
    "amplifier_regions",
    "gauge_constant",
    "measure_flat_quality",
    "measure_mosaic_quality",
    "response_ratio",
]

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

ROBUST_SIGMA_PER_MAD = 1.4826
"""Standard deviation of a normal distribution per unit of median absolute deviation."""

Region = tuple[slice, slice]


def amplifier_regions(detector: Any) -> dict[str, Region]:
    """Array slices ``(rows, columns)`` of every amplifier of a detector.

    Parameters
    ----------
    detector : afw-detector-like
        Iterable over amplifiers with ``getName()`` and ``getBBox()`` (``getMinX``, ``getMinY``,
        ``getWidth``, ``getHeight``), e.g. `lsst.cp.flatnorm.camera_model.DetectorModel`.

    Returns
    -------
    regions : `dict` [`str`, `tuple` [`slice`, `slice`]]
        Amplifier name -> slices into the detector's image array (pixel indices from 0).
    """
    regions = {}
    for amp in detector:
        box = amp.getBBox()
        rows = slice(box.getMinY(), box.getMinY() + box.getHeight())
        regions[amp.getName()] = (rows, slice(box.getMinX(), box.getMinX() + box.getWidth()))
    return regions


def response_ratio(flat: np.ndarray, response: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Return ``flat / response`` on the usable pixels with a finite flat, NaN elsewhere.

    Parameters
    ----------
    flat : `numpy.ndarray`, (ny, nx)
        Combined flat image (e.g. ``MaskedImage.image.array``); NaN where nothing was combined.
    response : `numpy.ndarray`, (ny, nx)
        True relative response of every pixel.
    usable : `numpy.ndarray` [`bool`], (ny, nx)
        Pixels to compare (live, not defective); the response must be positive there.

    Returns
    -------
    ratio : `numpy.ndarray` [`float`], (ny, nx)

    Raises
    ------
    ValueError
        Raised if the arrays' shapes differ or a usable pixel has a response that is not positive.
    """
    if not flat.shape == response.shape == usable.shape:
        raise ValueError(f"Shapes differ: flat {flat.shape}, response {response.shape}, "
                         f"usable {usable.shape}.")
    if not np.all(response[usable] > 0):
        raise ValueError("The true response must be positive on every usable pixel.")
    compared = usable & np.isfinite(flat)
    ratio = np.full(flat.shape, np.nan)
    ratio[compared] = flat[compared] / response[compared]
    return ratio


def gauge_constant(ratios: Iterable[np.ndarray]) -> float:
    """Return the one constant that puts a whole mosaic on the truth's gauge.

    Parameters
    ----------
    ratios : iterable of `numpy.ndarray`
        ``flat / response`` of every detector (`response_ratio`), NaN where not compared.

    Returns
    -------
    k : `float`
        Median of all finite ratios pooled, so each pixel counts once.

    Raises
    ------
    ValueError
        Raised if there is no finite ratio at all.
    """
    pooled = np.concatenate([ratio[np.isfinite(ratio)] for ratio in ratios])
    if pooled.size == 0:
        raise ValueError("No finite flat / response ratio to fix the gauge with.")
    return float(np.median(pooled))


@dataclasses.dataclass(frozen=True)
class FlatQuality:
    """Errors of one detector's flat relative to the truth, after the mosaic's gauge constant.

    An error is ``flat / (k * response) - 1``.
    """

    detector_error: float
    """Median error over the detector's compared pixels."""
    amplifier_errors: dict[str, float]
    """Median error of every amplifier with compared pixels."""
    pixel_scatter: float
    """Robust (MAD) standard deviation of the pixel errors."""
    outlier_fraction: float
    """Fraction of compared pixels whose error is further than the outlier threshold from
    ``detector_error``."""
    n_pixels: int
    """Number of compared pixels."""


def _robust_sigma(values: np.ndarray) -> float:
    return float(ROBUST_SIGMA_PER_MAD * np.median(np.abs(values - np.median(values))))


def measure_flat_quality(
    ratio: np.ndarray, gauge: float, regions: Mapping[str, Region], outlier_threshold: float
) -> FlatQuality:
    """Measure one detector's flat errors.

    Parameters
    ----------
    ratio : `numpy.ndarray`, (ny, nx)
        ``flat / response`` (`response_ratio`), NaN where not compared.
    gauge : `float`
        The mosaic's gauge constant (`gauge_constant`).
    regions : `~collections.abc.Mapping` [`str`, `tuple` [`slice`, `slice`]]
        Amplifier regions (`amplifier_regions`); amplifiers without a compared pixel are left out.
    outlier_threshold : `float`
        A pixel is an outlier if its error differs from the detector's median error by more than
        this (e.g. five times the expected relative noise of the flat).

    Returns
    -------
    quality : `FlatQuality`

    Raises
    ------
    ValueError
        Raised if no pixel was compared.
    """
    errors = ratio / gauge - 1
    compared = np.isfinite(errors)
    if not compared.any():
        raise ValueError("No pixel of this flat was compared with the truth.")
    values = errors[compared]
    detector_error = float(np.median(values))
    amplifier_errors = {
        name: float(np.median(errors[region][compared[region]]))
        for name, region in regions.items() if compared[region].any()
    }
    return FlatQuality(
        detector_error=detector_error,
        amplifier_errors=amplifier_errors,
        pixel_scatter=_robust_sigma(values),
        outlier_fraction=float(np.mean(np.abs(values - detector_error) > outlier_threshold)),
        n_pixels=int(values.size),
    )


@dataclasses.dataclass(frozen=True)
class MosaicQuality:
    """Flat errors of every detector of a mosaic, on one gauge."""

    gauge: float
    """The gauge constant ``k`` the flats were divided by."""
    detectors: dict[int, FlatQuality]
    """Quality of every detector's flat."""

    def worst_detector(self) -> tuple[int, float]:
        """The detector with the largest ``|detector_error|``, and that error."""
        detector = max(self.detectors, key=lambda d: abs(self.detectors[d].detector_error))
        return detector, self.detectors[detector].detector_error

    def worst_amplifier(self) -> tuple[tuple[int, str], float]:
        """The (detector, amplifier) with the largest ``|amplifier error|``, and that error."""
        errors = self.amplifier_errors()
        key = max(errors, key=lambda k: abs(errors[k]))
        return key, errors[key]

    def amplifier_errors(self) -> dict[tuple[int, str], float]:
        """Median error of every amplifier, keyed by (detector, amplifier)."""
        return {(det, amp): error for det, quality in self.detectors.items()
                for amp, error in quality.amplifier_errors.items()}

    def detector_rms(self) -> float:
        """Root mean square of the detector errors."""
        return float(np.sqrt(np.mean([q.detector_error**2 for q in self.detectors.values()])))

    def amplifier_rms(self) -> float:
        """Root mean square of the amplifier errors."""
        return float(np.sqrt(np.mean(np.square(list(self.amplifier_errors().values())))))

    def outlier_fraction(self) -> float:
        """Fraction of all compared pixels that are outliers."""
        n_outliers = sum(q.outlier_fraction * q.n_pixels for q in self.detectors.values())
        return float(n_outliers / sum(q.n_pixels for q in self.detectors.values()))


def measure_mosaic_quality(
    ratios: Mapping[int, np.ndarray],
    regions: Mapping[int, Mapping[str, Region]],
    outlier_thresholds: Mapping[int, float],
) -> MosaicQuality:
    """Put all detectors' flats on one gauge and measure each one's errors.

    Parameters
    ----------
    ratios : `~collections.abc.Mapping` [`int`, `numpy.ndarray`]
        ``flat / response`` of every detector (`response_ratio`).
    regions : `~collections.abc.Mapping` [`int`, `~collections.abc.Mapping`]
        Amplifier regions of every detector (`amplifier_regions`).
    outlier_thresholds : `~collections.abc.Mapping` [`int`, `float`]
        Outlier threshold of every detector (see `measure_flat_quality`).

    Returns
    -------
    quality : `MosaicQuality`
    """
    gauge = gauge_constant(ratios.values())
    return MosaicQuality(gauge, {
        det: measure_flat_quality(ratio, gauge, regions[det], outlier_thresholds[det])
        for det, ratio in ratios.items()
    })
