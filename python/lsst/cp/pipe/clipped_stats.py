# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Iterative sigma-clipped statistics of an image and of all its amplifier regions.

Every pixel carries an integer label (the index of the region that contains it), and each
clipping pass computes the moments of all regions at once with `numpy.bincount` and clips each
region with its own mean and sigma: there is no Python loop over pixels or over regions.  The
whole image is clipped the same way, as a single label of its own.
"""

from __future__ import annotations

__all__ = ["SigmaClippedStats", "sigma_clipped_region_stats"]

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SigmaClippedStats:
    """Sigma-clipped statistics of a whole image and of each of its regions.

    Attributes
    ----------
    whole_mean, whole_sigma : `float`
        Clipped mean and sigma of all good pixels of the image (NaN if there are none).
    whole_n : `int`
        Number of pixels the whole-image statistics keep.
    mean, sigma : `numpy.ndarray` of `float`, (nRegions,)
        Clipped mean and sigma of each region (NaN where ``n`` is 0).
    n : `numpy.ndarray` of `int`, (nRegions,)
        Number of pixels kept in each region.
    n_iter : `int`
        Number of clipping passes run, for whichever of the regions and the whole image needed
        more (see `sigma_clipped_region_stats`).
    """

    whole_mean: float
    whole_sigma: float
    whole_n: int
    mean: np.ndarray
    sigma: np.ndarray
    n: np.ndarray
    n_iter: int


def sigma_clipped_region_stats(
    image: np.ndarray,
    good: np.ndarray,
    regions: Sequence[tuple[slice, slice]],
    n_sigma: float,
    max_iter: int,
) -> SigmaClippedStats:
    """Compute iteratively sigma-clipped means of an image and of disjoint regions of it.

    Parameters
    ----------
    image : `numpy.ndarray`, (ny, nx)
        Pixel values.
    good : `numpy.ndarray` of `bool`, (ny, nx)
        Pixels that may be used.  Non-finite pixels are excluded whatever ``good`` says.
    regions : `~collections.abc.Sequence` [`tuple` [`slice`, `slice`]]
        ``(y slice, x slice)`` of each region in ``image``; regions must not overlap and need not
        cover the image.
    n_sigma : `float`
        Clipping threshold, in units of sigma; must be positive.
    max_iter : `int`
        Maximum number of clipping passes; 0 gives the plain mean and sigma of the good pixels.

    Returns
    -------
    stats : `SigmaClippedStats`

    Raises
    ------
    ValueError
        Raised if the shapes of ``image`` and ``good`` differ, if two regions overlap, if
        ``n_sigma`` is not positive or if ``max_iter`` is negative.

    Notes
    -----
    The whole image and each region are clipped separately, each with its own statistics.  For
    one of them, with the kept set starting as all of its good pixels, a clipping pass:

    1. computes the mean and sigma of the kept pixels, where sigma is the *population* standard
       deviation ``sqrt(sum((x - mean)**2) / N)`` (``ddof=0``, as `numpy.std`);
    2. drops from the kept set every pixel with ``|x - mean| > n_sigma * sigma``.  Clipping is
       cumulative: a dropped pixel never comes back.  A set with sigma 0 (all values equal) is
       left as it is, so rounding in the mean cannot drop identical values.

    Passes stop after the first one that drops no pixel (from any region, for the regions; from
    the image, for the whole image) or after ``max_iter`` passes; ``n_iter`` is the larger pass
    count of the regions and the whole image, and counts the final pass that dropped nothing.
    Pixels outside every region are clipped as one more region, whose statistics are not
    returned.  The returned mean, sigma and N are those of the final kept set.  A region without
    any good pixel gets mean NaN, sigma NaN and N 0.
    """
    if image.shape != good.shape:
        raise ValueError(f"Image shape {image.shape} differs from good-pixel mask shape {good.shape}.")
    if not n_sigma > 0:
        raise ValueError(f"n_sigma must be positive; got {n_sigma}.")
    if max_iter < 0:
        raise ValueError(f"max_iter must not be negative; got {max_iter}.")
    n_regions = len(regions)
    use = good & np.isfinite(image)
    values = image[use].astype(np.float64)
    # Label n_regions gathers the pixels outside every region; its statistics are dropped.
    region_labels = _label_image(image.shape, regions)[use]
    mean, sigma, n, region_iter = _clip_labels(values, region_labels, n_regions + 1, n_sigma, max_iter)
    del region_labels
    # The whole image is one more labelling of the same pixels, clipped on its own.
    whole_mean, whole_sigma, whole_n, whole_iter = _clip_labels(
        values, np.zeros(values.size, dtype=np.intp), 1, n_sigma, max_iter
    )
    return SigmaClippedStats(
        whole_mean=float(whole_mean[0]), whole_sigma=float(whole_sigma[0]), whole_n=int(whole_n[0]),
        mean=mean[:n_regions], sigma=sigma[:n_regions], n=n[:n_regions].astype(np.int64),
        n_iter=max(region_iter, whole_iter),
    )


def _label_image(shape: tuple[int, ...], regions: Sequence[tuple[slice, slice]]) -> np.ndarray:
    """Return an image holding each pixel's region index (``len(regions)`` outside them all)."""
    outside = len(regions)
    labels = np.full(shape, outside, dtype=np.intp)
    for index, region in enumerate(regions):
        if np.any(labels[region] != outside):
            raise ValueError(f"Region {index} overlaps an earlier region.")
        labels[region] = index
    return labels


def _clip_labels(
    values: np.ndarray, labels: np.ndarray, n_labels: int, n_sigma: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Clip every label's values at once; see `sigma_clipped_region_stats` for the rule.

    Clipping is cumulative, so dropped pixels are removed from the arrays rather than masked:
    later passes work on fewer pixels and need no masked sums.
    """
    mean, sigma, n = _label_moments(values, labels, n_labels)
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        # A zero sigma means every kept value of the label is equal: the label has converged.
        threshold = np.where(sigma > 0, n_sigma * sigma, np.inf)
        keep = np.abs(values - mean[labels]) <= threshold[labels]
        if keep.all():
            break
        values, labels = values[keep], labels[keep]
        mean, sigma, n = _label_moments(values, labels, n_labels)
    return mean, sigma, n, n_iter


def _label_moments(
    values: np.ndarray, labels: np.ndarray, n_labels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the mean, population sigma and count of the values of each label.

    Sigma comes from the squared deviations from the mean (two passes), not from the difference
    of the sum of squares and the squared sum, which loses precision on flats with a large level.
    """
    n = np.bincount(labels, minlength=n_labels)
    mean = _divide_or_nan(np.bincount(labels, weights=values, minlength=n_labels), n)
    squares = np.bincount(labels, weights=(values - mean[labels])**2, minlength=n_labels)
    return mean, np.sqrt(_divide_or_nan(squares, n)), n


def _divide_or_nan(numerator: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Divide by counts, giving NaN (and no RuntimeWarning) where the count is zero."""
    return np.divide(numerator, count, out=np.full(numerator.shape, np.nan), where=count > 0)
