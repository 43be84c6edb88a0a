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

How it is computed: the stack is processed in chunks of about 2**18 input values, small enough to
stay in the CPU's cache.  The candidates of each pixel are sorted once, as integers that order like
the floats (numpy sorts integers with vector instructions, floats 3-5x slower), and the median and
quartiles are read from them.  Every kept set is an interval of values, so a pass only counts, for
each pixel, the candidates below its lower bound and at most its upper bound; the kept set changes
exactly when a count does.  The first pass runs on the whole chunk; a pixel it leaves unchanged has
converged, so the later passes, and the sums they need, run on the pixels it changed (about 20%
with 50 inputs).  Sums are accumulated in float64 around the median, so the results equal a float64
computation of the rule to rounding.  Besides the outputs (25 bytes per pixel), memory is a few MB
of chunk buffers.

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
import math
from collections.abc import Iterator

import numpy as np

IQR_TO_SIGMA = 0.741301109252802
"""Ratio of a Gaussian's standard deviation to its interquartile range, 1 / (2 x 0.67449) (afw's)."""

MEDIAN_VARIANCE_FACTOR = math.pi / 2
"""Variance of the median of n Gaussian values over the variance of their mean, for large n."""

STATISTICS = ("MEANCLIP", "MEAN", "MEDIAN")
"""The statistics `combine_stack` computes (afw's names)."""

_CHUNK_VALUES = 1 << 18
"""Input values (inputs x pixels) processed at a time: the chunk's float64 work array is 1 MB."""


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
    n_pixels = height * width
    result = _Outputs(n_pixels)
    if n_inputs == 0:
        result.no_input(slice(None))
    else:
        # A view when each input's pixels form one block (whole images, row bands), else a copy.
        flat = [array.reshape(n_inputs, n_pixels) for array in (values, variances, valid)]
        options = _Options(n_sigma=float(n_sigma), n_passes=n_iter if statistic == "MEANCLIP" else 0,
                           min_inputs_for_mean={"MEANCLIP": min_inputs_for_clip, "MEAN": 1,
                                                "MEDIAN": n_inputs + 1}[statistic],
                           sort=statistic != "MEAN", variance_from_inputs=variance_from_inputs)
        step = max(_CHUNK_VALUES // n_inputs, 2)
        for start in range(0, n_pixels, step):
            columns = slice(start, min(start + step, n_pixels))
            chunk_values, chunk_variances, chunk_valid = (array[:, columns] for array in flat)
            _combine_chunk(chunk_values, chunk_variances, chunk_valid, options, result, columns)
    return CombinedStack(image=result.image.reshape(height, width),
                         variance=result.variance.reshape(height, width),
                         n_used=result.n_used.reshape(height, width),
                         clipped=result.clipped.reshape(height, width))


@dataclasses.dataclass(frozen=True)
class _Options:
    n_sigma: float
    n_passes: int
    min_inputs_for_mean: int
    sort: bool
    variance_from_inputs: bool


class _Outputs:
    """The output arrays of `combine_stack`, flattened."""

    def __init__(self, n_pixels: int) -> None:
        self.image = np.empty(n_pixels)
        self.variance = np.empty(n_pixels)
        self.n_used = np.empty(n_pixels, dtype=np.int64)
        self.clipped = np.empty(n_pixels, dtype=bool)

    def no_input(self, columns: slice) -> None:
        self.image[columns] = np.nan
        self.variance[columns] = np.nan
        self.n_used[columns] = 0
        self.clipped[columns] = False


def _column_sums(array: np.ndarray, dtype: type | None = None, where: np.ndarray | bool = True) -> np.ndarray:
    """Sum a 2-d array over axis 0 (only the entries ``where`` is true), adding the rows in order for
    every column.

    numpy reduces a (n, c >= 2) array row by row, but a single column as a contiguous vector (in a
    pairwise order), so one column is padded to two: a pixel's sum must not depend on how many other
    pixels share its chunk.
    """
    if array.shape[1] == 1:
        if where is not True:
            where = np.repeat(where, 2, axis=1)
        return np.add.reduce(np.repeat(array, 2, axis=1), axis=0, dtype=dtype, where=where, initial=0)[:1]
    return np.add.reduce(array, axis=0, dtype=dtype, where=where, initial=0)


def _count(mask: np.ndarray) -> np.ndarray:
    """Number of `True` values in each column of a 2-d boolean array (`numpy.intp`)."""
    if mask.shape[0] < 256:  # byte sums cannot overflow: a vectorised add of the rows
        return _column_sums(mask.view(np.uint8), np.uint8).astype(np.intp)
    return _column_sums(mask, np.intp)


def _keys(values: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """Integer sort keys of float32 or float64 values, the largest key where not ``candidates``.

    A float's key is its bit pattern with the magnitude bits of negative values flipped: an integer
    of the same width, in the same order as the floats (`_key_values` inverts it).  Integers sort
    with vectorised instructions where floats do not (2-5x faster here).
    """
    itype = np.int32 if values.dtype == np.float32 else np.int64
    bits = values.view(itype)
    keys = np.right_shift(bits, 8 * bits.itemsize - 1)
    keys &= np.iinfo(itype).max
    keys ^= bits
    if candidates is not None:
        np.copyto(keys, np.iinfo(itype).max, where=~candidates)
    return keys


def _key_values(keys: np.ndarray) -> np.ndarray:
    """The float values of keys made by `_keys` (the largest key gives NaN)."""
    bits = keys >> (8 * keys.itemsize - 1)
    bits &= np.iinfo(keys.dtype).max
    bits ^= keys
    return bits.view(np.float32 if keys.dtype == np.int32 else np.float64)


def _quantiles(sorted_keys: np.ndarray, n_valid: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Quantiles ``qs`` of the first ``n_valid`` entries of each row of sorted keys, in float64.

    Linear interpolation between order statistics (numpy's default and afw's); NaN where
    ``n_valid == 0``.  Returns an array of shape (len(qs), n_rows).
    """
    n_rows, n_columns = sorted_keys.shape
    if n_rows and n_valid.min() == n_columns:  # every input valid: the same ranks for every row
        position = np.multiply(qs, n_columns - 1)[:, np.newaxis]
        low = position.astype(np.intp)  # positions are not negative: truncation is the floor
        high = np.minimum(low + 1, n_columns - 1)
        low_values = _key_values(sorted_keys[:, low[:, 0]].T).astype(np.float64)
        high_values = _key_values(sorted_keys[:, high[:, 0]].T).astype(np.float64)
    else:
        last = np.maximum(n_valid - 1, 0)
        position = np.multiply.outer(qs, last)
        low = position.astype(np.intp)
        high = np.minimum(low + 1, last)
        row = np.arange(0, n_rows * n_columns, n_columns)
        flat = sorted_keys.reshape(-1)
        low_values = _key_values(flat[low + row]).astype(np.float64)
        high_values = _key_values(flat[high + row]).astype(np.float64)
    high_values -= low_values
    high_values *= position - low
    low_values += high_values
    low_values[:, n_valid == 0] = np.nan
    return low_values


def _key_bounds(centre: np.ndarray, half_width: np.ndarray,
                key_type: type) -> tuple[np.ndarray, np.ndarray]:
    """The keys ``(lo, hi)`` with ``lo <= key(x) <= hi`` exactly when ``centre - half_width <= x <=
    centre + half_width`` (float64 arithmetic) for values ``x`` of the keys' float type.

    For float32 the float64 bounds are rounded inwards: consecutive float32 values have consecutive
    keys, so the key of the rounded bound moves by one where the rounding went outwards.
    """
    low, high = centre - half_width, centre + half_width
    if key_type == np.int64:
        return _keys(low), _keys(high)
    with np.errstate(over="ignore", invalid="ignore"):
        low32, high32 = low.astype(np.float32), high.astype(np.float32)
        return _keys(low32) + (low32 < low), _keys(high32) - (high32 > high)


def _deviation_sums(values: np.ndarray, kept: np.ndarray, centre: np.ndarray,
                    squares: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Sums over the kept entries of each column of ``values - centre`` (float64), and of its squares."""
    deviation = values.astype(np.float64)
    deviation -= centre
    np.copyto(deviation, 0.0, where=~kept)
    sum1 = _column_sums(deviation)
    return sum1, _column_sums(np.square(deviation, out=deviation)) if squares else None


def _combine_chunk(values: np.ndarray, variances: np.ndarray, valid: np.ndarray, options: _Options,
                   out: _Outputs, columns: slice) -> None:
    """Combine the pixels ``columns`` (the columns of the (n_inputs, n) arrays) into ``out``."""
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    candidates = np.isfinite(values)
    candidates &= np.isfinite(variances)
    candidates &= valid
    n_valid = _count(candidates)
    variance_sum = _column_sums(variances, np.float64, where=candidates)
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma_var = np.sqrt(variance_sum / n_valid)
    use_mean = n_valid >= options.min_inputs_for_mean
    spread = not options.variance_from_inputs
    sum2 = None
    if options.sort:
        keys = _keys(values, candidates)
        ordered = np.ascontiguousarray(keys.T)  # (pixels, inputs): each pixel's inputs contiguous
        ordered.sort(axis=1)  # the n_valid candidates first, in increasing order
        median, lower, upper = _quantiles(ordered, n_valid, (0.5, 0.25, 0.75))
        centre = median
        if spread:
            # Sums of the deviations from the median (robust), and of their squares.
            sum1, sum2 = _deviation_sums(values, candidates, centre, squares=True)
        else:
            sum1 = _column_sums(values, np.float64, where=candidates) - n_valid * centre
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            centre = _column_sums(values, np.float64, where=candidates) / n_valid
        sum1, sum2 = _deviation_sums(values, candidates, centre, squares=spread)
    n_used = n_valid.copy()
    if options.sort and options.n_passes > 0 and use_mean.any():
        width = np.maximum(IQR_TO_SIGMA * (upper - lower), sigma_var)
        clip = _clip_passes(keys, ordered, n_valid, median, sigma_var, width, use_mean, options)
        if clip.index.size:
            # Where clipping dropped inputs: the count and sums of the kept ones, and the sum of
            # their variances.
            n_used[clip.index] = clip.n_kept
            sum1[clip.index] = clip.sum1
            if spread:
                sum2[clip.index] = clip.sum2  # type: ignore[index]  # spread: sum2 is an array
            variance_sum[clip.index] = _column_sums(np.take(variances, clip.index, axis=1), np.float64,
                                                    where=clip.kept)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = centre + sum1 / n_used
        variance = variance_sum / np.square(n_used, dtype=np.float64)
        if spread:
            sample_variance = np.maximum(sum2 - sum1 * sum1 / n_used, 0.0) / (n_used - 1)
            variance = np.where(n_used >= 2, sample_variance / n_used, variance)
    if options.sort:
        out.image[columns] = np.where(use_mean, mean, median)
        median_factor = np.where(n_valid >= 3, MEDIAN_VARIANCE_FACTOR, 1.0)
        variance = np.where(use_mean, variance, median_factor * variance)
    else:
        out.image[columns] = mean
    out.variance[columns] = variance
    out.n_used[columns] = n_used
    out.clipped[columns] = use_mean


@dataclasses.dataclass
class _Clipped:
    """The pixels whose kept set is not all of their candidates, after the clipping passes."""

    index: np.ndarray
    """Their columns in the chunk."""
    kept: np.ndarray
    """Their kept inputs, (n_inputs, len(index))."""
    n_kept: np.ndarray
    sum1: np.ndarray
    sum2: np.ndarray
    """Sums of the kept values' deviations from the median, and of their squares."""


def _clip_passes(keys: np.ndarray, ordered: np.ndarray, n_valid: np.ndarray, median: np.ndarray,
                 sigma_var: np.ndarray, width: np.ndarray, use_mean: np.ndarray,
                 options: _Options) -> _Clipped:
    """Run the clipping passes on the pixels ``use_mean``, from the median and ``width``.

    Every kept set is the candidates within a range of values, which their keys select as a range
    of keys and, in each pixel's sorted keys (``ordered``), as a range of ranks ``[a, b)``: ``a``
    candidates lie below the lower bound and ``b`` at most at the upper one.  A pass changes a kept
    set exactly when ``a`` or ``b`` changes.  The first pass counts on the unsorted keys of the whole
    chunk (the largest key for non-candidates); a pixel it leaves unchanged has converged, so the
    later passes work on the sorted keys of the pixels it changed only.
    """
    key_type = keys.dtype.type
    low, high = _key_bounds(median, options.n_sigma * width, key_type)
    below = _count(keys < low)
    at_most = _count(keys <= high)
    index = np.flatnonzero(use_mean & (at_most > below) & ((below != 0) | (at_most != n_valid)))
    # The sorted keys of the pixels the first pass changed (every pixel that can end up clipped),
    # one pixel per column.
    sub_keys = np.ascontiguousarray(ordered[index].T)
    sub_values = _key_values(sub_keys)
    ranks = np.arange(sub_keys.shape[0])[:, np.newaxis]
    sub_median, sub_sigma_var = median[index], sigma_var[index]
    low_key, high_key = low[index], high[index]
    low_rank, high_rank = below[index], at_most[index]
    sum1, sum2 = np.zeros(index.size), np.zeros(index.size)
    changed = np.arange(index.size)  # the pixels (columns of sub_keys) the last pass changed
    for n_pass in range(1, options.n_passes + 1):
        # The sums of the new kept sets, and the next centre and width: the mean and sample
        # deviation of the kept values, the width never below sigma_var.
        kept = ranks >= low_rank[changed]
        kept &= ranks < high_rank[changed]
        s1, s2 = _deviation_sums(np.take(sub_values, changed, axis=1), kept, sub_median[changed],
                                 squares=True)
        sum1[changed], sum2[changed] = s1, s2
        if n_pass == options.n_passes:
            break
        n_kept = high_rank[changed] - low_rank[changed]
        with np.errstate(invalid="ignore", divide="ignore"):
            centre = sub_median[changed] + s1 / n_kept
            sample_variance = np.maximum(s2 - s1 * s1 / n_kept, 0.0) / (n_kept - 1)
        width = np.maximum(np.where(n_kept >= 2, np.sqrt(sample_variance), 0.0), sub_sigma_var[changed])
        # The next pass.
        part = np.take(sub_keys, changed, axis=1)
        new_low, new_high = _key_bounds(centre, options.n_sigma * width, key_type)
        new_below, new_at_most = _count(part < new_low), _count(part <= new_high)
        moved = (new_at_most > new_below) & ((new_below != low_rank[changed])
                                             | (new_at_most != high_rank[changed]))
        changed = changed[moved]
        if changed.size == 0:
            break
        low_key[changed], high_key[changed] = new_low[moved], new_high[moved]
        low_rank[changed], high_rank[changed] = new_below[moved], new_at_most[moved]
    # A pixel whose kept set came back to all of its candidates is not clipped.  The kept inputs of
    # the others, in the input order: the candidates whose keys are in the kept range.
    clipped = np.flatnonzero((low_rank != 0) | (high_rank != n_valid[index]))
    part = np.take(keys, index[clipped], axis=1)
    kept = part >= low_key[clipped]
    kept &= part <= high_key[clipped]
    return _Clipped(index=index[clipped], kept=kept, n_kept=high_rank[clipped] - low_rank[clipped],
                    sum1=sum1[clipped], sum2=sum2[clipped])


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
