# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Pixel-by-pixel clipped-mean combination of a stack of images (pure numpy).

The flat combine task reads its inputs in tiles and calls `combine_stack` on each.  Every statistic
here is computed independently for each pixel along the stack axis, with the same operations in the
same order whatever the other pixels hold, so combining a tile gives exactly the same numbers, bit
for bit, as combining the whole image and cutting the tile out afterwards.

The clipping rule (``MEANCLIP``), for each pixel:

1. The candidates are the inputs flagged valid whose value and variance are finite; ``n`` is
   their number.  The *expected width* ``sigma_var`` is the square root of the mean of their
   variances: the scatter the variance planes predict for one input.
2. The first centre is the median of the candidates and the first width the larger of
   ``IQR_TO_SIGMA`` times their interquartile range (quantiles interpolated linearly between order
   statistics, as `numpy.quantile` and afw do) and ``sigma_var``.
3. A clipping pass keeps the candidates with ``centre - n_sigma * width <= value <= centre +
   n_sigma * width``.  The next centre is the mean of the kept values and the next width the larger
   of their sample standard deviation (``ddof=1``, afw's) and ``sigma_var``.  A pass that would keep
   no input keeps the previous set instead.
4. Passes stop when the kept set does not change, or after ``n_iter`` passes.  Each pass chooses
   among all candidates, so an input dropped by one pass can come back in the next (afw's rule).

This is afw's MEANCLIP (what cp_pipe's combine uses) with one change: the width is never taken below
what the variance planes predict.  afw's first width, from the interquartile range of the inputs,
scatters by about 25% with 20 inputs; when it comes out low the first pass drops good inputs and
the narrower widths of the kept sets do not recover them within three passes: with 20 inputs it
kept 19.75 of 19.98 valid inputs per pixel, against 19.96 for astropy's ``sigma_clip``, and the
flat's pixel scatter came out 3.6% above the Poisson expectation (bench/README.md has the
comparison on the benchmark's flats).  The floor
keeps the robustness of the interquartile range to cosmic rays, which a width from the standard
deviation of all inputs lacks with few inputs (one outlier among ``n`` is never more than
``n / sqrt(n - 1)`` of the standard deviations it inflates from the median: below 3 for fewer than
8 inputs, however bright), and removes the too-narrow widths.
If the variance planes are absent (zero) the rule is afw's.

The result is the mean of the kept values, and its variance is the propagated variance of that mean,
``sum(variance_kept) / n_kept**2``; it ignores the selection itself, which for Gaussian inputs costs
about 2% of variance at 3 sigma.  Where fewer than ``min_inputs_for_clip`` candidates exist clipping
cannot tell an outlier from the rest, so the result is their median (no clipping), with variance
``MEDIAN_VARIANCE_FACTOR * sum(variance) / n**2`` for three or more candidates (the large-sample
efficiency of the median) and the variance of the mean for one or two (where the median is the
mean).  A pixel with no candidate is NaN with ``n_used == 0``.

The statistic may also be the plain ``MEAN`` of the candidates (no clipping, no median fall-back)
or their ``MEDIAN`` everywhere, the other two names cp_pipe's ``combine`` field takes for flats.
With ``variance_from_inputs=False`` the variance comes from the spread of the values used instead
of their variance planes, as afw's stacker does with many inputs: ``s**2 / n`` with ``s**2`` their
unbiased sample variance (times the median factor where the median is the result); a pixel with a
single value has no spread and keeps the propagated variance.

How it is computed: `lsst.cp.flatnorm.combine_kernel`, compiled with numba, works on blocks of a few
hundred to 2048 pixels of one row: it copies their inputs into cache-resident buffers, sorts every
pixel's candidates with a sorting network (the same compare-exchange steps for every pixel, so each
is a vector instruction over the block), reads the median and quartiles, and runs the clipping passes
only on the pixels whose first pass drops an input (about 20% with 50 inputs).  Sums are float64
(deviations from the median), so the results equal a float64 computation of the rule to rounding.
Each input pixel is read once; besides the outputs (26 bytes per pixel), memory is a few hundred KB
of block buffers.  The kernel reads C-contiguous stacks, as the combine task's tiles are; any other
stack is copied to it in bands of ``_COPY_BYTES``.  On 50 inputs of 4072 x 1000 pixels it takes a
few times the time of copying its inputs once, and with 3 to 50 inputs about the same time per
input (bench/README.md, part 5).

`weighted_mean` combines a few images with fixed weights (cp_pipe's two-flat combination).
"""

from __future__ import annotations

__all__ = [
    "IQR_TO_SIGMA",
    "MEDIAN_VARIANCE_FACTOR",
    "STATISTICS",
    "CombinedStack",
    "combine_stack",
    "iter_subregions",
    "weighted_mean",
]

import dataclasses
from collections.abc import Iterator

import numpy as np

from .combine_kernel import IQR_TO_SIGMA, MEDIAN_VARIANCE_FACTOR, compiled_kernel, sorting_network

_COPY_BYTES = 8 * 2**20
"""Bytes of input copied at a time when the stack is not C-contiguous (it stays in the L3 cache)."""

STATISTICS = ("MEANCLIP", "MEAN", "MEDIAN")
"""The statistics `combine_stack` computes (afw's names)."""


@dataclasses.dataclass(frozen=True)
class CombinedStack:
    """Result of `combine_stack`; every array has the shape of one input image.

    Attributes
    ----------
    image : `numpy.ndarray` [`float`]
        Clipped mean (or median, see ``clipped``); NaN where ``n_used == 0``.
    variance : `numpy.ndarray` [`float`]
        Variance of ``image`` propagated from the input variances; NaN where ``n_used == 0``.
    n_used : `numpy.ndarray` [`int`]
        Number of inputs that contributed to each pixel (after clipping).
    clipped : `numpy.ndarray` [`bool`]
        `True` where the (clipped) mean was used, `False` where the median was (or there was no
        input at all).
    """

    image: np.ndarray
    variance: np.ndarray
    n_used: np.ndarray
    clipped: np.ndarray

    @property
    def no_data(self) -> np.ndarray:
        """Pixels no input contributed to (`numpy.ndarray` [`bool`])."""
        return self.n_used == 0


def iter_subregions(
    height: int, width: int, tile_height: int, tile_width: int
) -> Iterator[tuple[slice, slice]]:
    """Split a ``height x width`` array into tiles, row by row (cp_pipe's ``subregionSize`` order).

    Parameters
    ----------
    height, width : `int`
        Shape of the array to cover.
    tile_height, tile_width : `int`
        Size of a tile; the last tile of a row or column holds the remainder.

    Yields
    ------
    rows, columns : `slice`
        Half-open ranges of one tile.

    Raises
    ------
    ValueError
        Raised if a tile size is not positive.
    """
    if tile_height < 1 or tile_width < 1:
        raise ValueError(f"Tile sizes must be positive; got {tile_height} x {tile_width}.")
    for top in range(0, height, tile_height):
        for left in range(0, width, tile_width):
            yield slice(top, min(top + tile_height, height)), slice(left, min(left + tile_width, width))


def combine_stack(
    values: np.ndarray,
    variances: np.ndarray,
    valid: np.ndarray,
    *,
    n_sigma: float = 3.0,
    n_iter: int = 3,
    min_inputs_for_clip: int = 3,
    statistic: str = "MEANCLIP",
    variance_from_inputs: bool = True,
) -> CombinedStack:
    """Combine a stack of images pixel by pixel with an iterative clipped mean.

    Parameters
    ----------
    values : `numpy.ndarray` [`float`], shape (n_inputs, ny, nx)
        The images, already scaled.  float32 stacks are worked on in float32 (sums in float64).
    variances : `numpy.ndarray` [`float`], shape (n_inputs, ny, nx)
        Their variances.
    valid : `numpy.ndarray` [`bool`], shape (n_inputs, ny, nx)
        `False` for input pixels to ignore (masked, or without a scale); pixels with a
        non-finite value or variance are ignored as well.
    n_sigma : `float`, optional
        Clipping threshold in units of the width (see the module docstring).
    n_iter : `int`, optional
        Maximum number of clipping passes.
    min_inputs_for_clip : `int`, optional
        Pixels with fewer valid inputs use the median instead of the clipped mean.
    statistic : `str`, optional
        ``"MEANCLIP"`` (the clipped mean above), ``"MEAN"`` (the mean of all valid inputs: no
        clipping and no median fall-back) or ``"MEDIAN"`` (the median of the valid inputs).
    variance_from_inputs : `bool`, optional
        Propagate the inputs' variances (`True`) or use the spread of the values (`False`); see
        the module docstring.

    Returns
    -------
    result : `CombinedStack`
        Combined image, its variance, the number of inputs used and where the mean was used.

    Raises
    ------
    ValueError
        Raised if the three arrays do not share one 3-d shape, or for an unknown statistic.
    """
    if values.ndim != 3 or values.shape != variances.shape or values.shape != valid.shape:
        raise ValueError(
            f"values, variances and valid must share one 3-d shape; got {values.shape}, "
            f"{variances.shape} and {valid.shape}."
        )
    if statistic not in STATISTICS:
        raise ValueError(f"Unknown statistic {statistic!r}; expected one of {STATISTICS}.")
    n_inputs, height, width = values.shape
    result = CombinedStack(image=np.empty((height, width)), variance=np.empty((height, width)),
                           n_used=np.empty((height, width), dtype=np.int64),
                           clipped=np.empty((height, width), dtype=bool))
    if n_inputs == 0:
        result.image[...], result.variance[...] = np.nan, np.nan
        result.n_used[...], result.clipped[...] = 0, False
        return result
    # The kernel exists for float32 and float64 stacks: anything else, or a mix, is worked on in float64.
    work_type = values.dtype if values.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    if variances.dtype != work_type:
        work_type = np.dtype(np.float64)
    min_inputs_for_mean = {"MEANCLIP": min_inputs_for_clip, "MEAN": 1, "MEDIAN": n_inputs + 1}[statistic]
    kernel, network = compiled_kernel(work_type), sorting_network(n_inputs)
    for rows in _row_bands(values, variances, valid, work_type):
        band = (slice(None), rows)
        kernel(np.ascontiguousarray(values[band], dtype=work_type),
               np.ascontiguousarray(variances[band], dtype=work_type),
               np.ascontiguousarray(valid[band], dtype=bool), network, float(n_sigma),
               n_iter if statistic == "MEANCLIP" else 0, min_inputs_for_mean, statistic != "MEAN",
               variance_from_inputs, result.image[rows], result.variance[rows], result.n_used[rows],
               result.clipped[rows])
    return result


def _row_bands(values: np.ndarray, variances: np.ndarray, valid: np.ndarray,
               work_type: np.dtype) -> list[slice]:
    """The bands of rows to give the kernel at a time: all of them if the stack is C-contiguous and of
    the kernel's types (the combine task's tiles are), otherwise bands of about ``_COPY_BYTES`` of
    input, each copied to contiguous arrays (the kernel's loops over a row's pixels compile to vector
    instructions only for contiguous rows), so that a copy never holds more than one band."""
    height = values.shape[1]
    ready = (values.dtype == work_type and variances.dtype == work_type and valid.dtype == bool
             and values.flags.c_contiguous and variances.flags.c_contiguous and valid.flags.c_contiguous)
    bytes_per_row = values.shape[0] * values.shape[2] * (2 * work_type.itemsize + 1)
    rows = height if ready else max(_COPY_BYTES // max(bytes_per_row, 1), 1)
    return [slice(top, min(top + rows, height)) for top in range(0, height, rows)]


def weighted_mean(values: np.ndarray, variances: np.ndarray, valid: np.ndarray,
                  weights: np.ndarray) -> CombinedStack:
    """Combine a stack of images pixel by pixel with fixed weights.

    At each pixel the weights of the inputs used (valid, finite value and variance) are
    renormalised to sum to one, so a pixel with a single usable input is that input, not the
    input times its weight.

    Parameters
    ----------
    values, variances : `numpy.ndarray` [`float`], shape (n_inputs, ny, nx)
        The images and their variances.
    valid : `numpy.ndarray` [`bool`], shape (n_inputs, ny, nx)
        `False` for input pixels to ignore.
    weights : `numpy.ndarray` [`float`], shape (n_inputs,)
        Non-negative weight of each input.

    Returns
    -------
    result : `CombinedStack`
        ``sum(w x) / sum(w)`` and its variance ``sum(w**2 var) / sum(w)**2`` over the inputs used;
        NaN where no input with a positive weight is usable (``n_used`` counts those).

    Raises
    ------
    ValueError
        Raised if the shapes disagree or a weight is negative or not finite.
    """
    weights = np.asarray(weights, dtype=float)
    if values.ndim != 3 or values.shape != variances.shape or values.shape != valid.shape \
            or weights.shape != values.shape[:1]:
        raise ValueError(f"values, variances and valid must share one 3-d shape and weights its first axis; "
                         f"got {values.shape}, {variances.shape}, {valid.shape} and {weights.shape}.")
    if not np.all(np.isfinite(weights) & (weights >= 0)):
        raise ValueError(f"Weights must be finite and non-negative; got {weights.tolist()}.")
    used = valid & np.isfinite(values) & np.isfinite(variances) & (weights > 0)[:, np.newaxis, np.newaxis]
    w = np.where(used, weights[:, np.newaxis, np.newaxis], 0.0)
    total = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(used, w * values, 0.0).sum(axis=0) / total
        variance = np.where(used, np.square(w) * variances, 0.0).sum(axis=0) / np.square(total)
    n_used = used.sum(axis=0)
    return CombinedStack(image=image, variance=variance, n_used=n_used, clipped=n_used > 0)
