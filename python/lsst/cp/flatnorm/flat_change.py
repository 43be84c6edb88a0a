# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The change of a detector's flat since the previous flat of its filter, on plain arrays (no butler).

The ratio ``new / old`` of two good flats of the same filter is flat but for what changed between
them.  It is measured in three parts, each with its own test:

- ``CHANGE_AMP_STEP``: each amplifier's median ratio over the detector's median amplifier ratio,
  minus 1: an amplifier whose response (gain) stepped;
- ``CHANGE_LARGE_SCALE``: the largest departure from 1 of the ratio, each amplifier divided by its
  level, binned and smoothed by a median filter of a few bins: a vignetting edge or an
  illumination pattern that moved;
- ``CHANGE_FEATURE``: the bins of the binned ratio over its smoothed version that depart from 1 by
  more than a threshold, grouped into located features: a dust mote that appeared, left or moved
  (a moved mote is a pair of features of opposite signs).
"""

from __future__ import annotations

__all__ = ["ChangeFeature", "FlatChange", "flat_change", "change_tests"]

import dataclasses
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from .flat_verification import Thresholds
from .focal_plane_binning import bin_detector

FloatArray = npt.NDArray[np.floating]
BoolArray = npt.NDArray[np.bool_]


@dataclasses.dataclass(frozen=True)
class ChangeFeature:
    """A group of adjacent bins whose ratio departs from its surroundings."""

    x: float
    """Detector pixel x of the feature's most extreme bin (relative to the image's first column)."""
    y: float
    """Detector pixel y of that bin."""
    amplitude: float
    """Ratio over its surroundings, minus 1, at that bin (negative for a new mote)."""
    n_bins: int
    """Number of bins of the feature."""


@dataclasses.dataclass(frozen=True)
class FlatChange:
    """What changed in a detector's flat."""

    amp_steps: list[float]
    """Each amplifier's level of ``new / old`` over the median amplifier's, minus 1 (NaN if the
    amplifier has no usable pixel)."""
    large_scale: float
    """Largest ``|smoothed ratio - 1|`` of the amplifier-levelled binned ratio."""
    features: list[ChangeFeature]
    """Located features, largest ``|amplitude|`` first."""
    noise: float
    """Robust standard deviation of the binned ratio over its smoothed version (1.4826 MAD): the
    features' threshold must be well above it."""


def flat_change(
    new: FloatArray,
    old: FloatArray,
    usable: BoolArray,
    regions: Sequence[tuple[slice, slice]],
    bin_factor: int,
    smooth_bins: int,
    max_feature: float,
) -> FlatChange:
    """Measure the change of a detector's flat.

    Parameters
    ----------
    new, old : `numpy.ndarray`, (ny, nx)
        The new and the previous flat of one detector and filter (any normalization each).
    usable : `numpy.ndarray` of `bool`
        Pixels usable in both (outside their bad masks); pixels where either flat is not finite
        and positive are left out too.
    regions : `~collections.abc.Sequence` [`tuple` [`slice`, `slice`]]
        ``(y, x)`` slices of each amplifier.
    bin_factor : `int`
        Pixels per bin side.
    smooth_bins : `int`
        Side of the median filter, in bins, that gives the large-scale ratio; a feature must be
        smaller than half of it to be found as a feature.
    max_feature : `float`
        Bins departing from the smoothed ratio by more than this make features.

    Returns
    -------
    change : `FlatChange`

    Raises
    ------
    ValueError
        Raised if the flats' shapes differ.
    """
    if new.shape != old.shape:
        raise ValueError(f"The new flat's shape {new.shape} differs from the previous flat's {old.shape}.")
    good = usable & np.isfinite(new) & np.isfinite(old) & (new > 0) & (old > 0)
    ratio = np.full(new.shape, np.nan)
    np.divide(new, old, out=ratio, where=good)
    levels = np.array([np.nanmedian(ratio[region]) if good[region].any() else np.nan for region in regions])
    levelled = ratio.copy()
    for region, level in zip(regions, levels):
        levelled[region] /= level
    shape = (new.shape[0] // bin_factor, new.shape[1] // bin_factor)
    _, _, binned, _ = bin_detector(levelled, None, bin_factor, 0)
    binned = binned.reshape(shape)
    # A bin without usable pixel is neutral in the smoothing, and never a feature.
    filled = np.where(np.isfinite(binned), binned, 1.0)
    smooth = ndimage.median_filter(filled, size=smooth_bins, mode="nearest")
    residual = np.where(np.isfinite(binned), filled / smooth - 1.0, 0.0)
    return FlatChange(
        amp_steps=[float(step) for step in levels / np.nanmedian(levels) - 1.0],
        large_scale=float(np.max(np.abs(smooth - 1.0))),
        features=_features(residual, max_feature, bin_factor),
        noise=float(1.4826 * np.median(np.abs(residual[np.isfinite(binned)]))) if np.isfinite(binned).any()
        else float("nan"),
    )


def _features(residual: FloatArray, max_feature: float, bin_factor: int) -> list[ChangeFeature]:
    """Group the bins beyond ``max_feature`` into features, each located at its most extreme bin."""
    labels, n_features = ndimage.label(np.abs(residual) > max_feature)
    features = []
    for index in range(1, n_features + 1):
        rows, cols = np.nonzero(labels == index)
        peak = int(np.argmax(np.abs(residual[rows, cols])))
        row, col = rows[peak], cols[peak]
        features.append(ChangeFeature(x=float((col + 0.5) * bin_factor), y=float((row + 0.5) * bin_factor),
                                      amplitude=float(residual[row, col]), n_bins=int(rows.size)))
    return sorted(features, key=lambda feature: -abs(feature.amplitude))


def change_tests(change: FlatChange, amp_names: Sequence[str],
                 thresholds: Thresholds) -> tuple[dict[str, dict[str, bool]], dict[str, bool]]:
    """The change tests of each amplifier (``CHANGE_AMP_STEP``) and of the detector
    (``CHANGE_LARGE_SCALE``, ``CHANGE_FEATURE``).

    ``change`` was measured with ``thresholds.max_change_feature``; an amplifier without a level
    (NaN) fails.
    """
    amps = {name: {"CHANGE_AMP_STEP": bool(abs(step) <= thresholds.max_change_step)}
            for name, step in zip(amp_names, change.amp_steps)}
    detector = {"CHANGE_LARGE_SCALE": bool(change.large_scale <= thresholds.max_change_large_scale),
                "CHANGE_FEATURE": not change.features}
    return amps, detector
