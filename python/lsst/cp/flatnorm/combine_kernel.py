# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The compiled (numba) kernel of `lsst.cp.flatnorm.combine_stack`.

`combine_pixels` combines a (n_inputs, ny, nx) stack by the rule the `lsst.cp.flatnorm.combine_stack`
module documents.  It works on blocks of `block_pixels` pixels of one row at a time (longer blocks
with fewer inputs, so that the per-block steps cost little per pixel), every step a loop over the
block's pixels that the compiler turns into vector instructions.  The stacks must be C-contiguous:
with a stride unknown to the compiler such loops do not vectorize (`combine_stack` copies other
stacks in small bands).

1. the block's inputs are copied into two cache-resident arrays, one in input order with NaN where
   an input is not a candidate, one to be sorted with +inf there, two inputs per pass (an odd
   number of inputs pairs the last with a pad row of the buffers), counting the candidates and
   summing their variances;
2. a sorting network (Batcher's odd-even merge sort: a fixed list of compare-exchange steps for the
   number of inputs, the same for every pixel, so each step is a vector min and max over the block)
   sorts the second.  The median and quartiles are read at the fixed ranks of a pixel whose inputs
   are all candidates, for every pixel in one vector loop with the first widths and the test of
   whether the first pass drops an input; the few pixels with fewer candidates are then redone one
   by one at their own ranks;
3. only the pixels whose first pass drops an input are clipped further: their inputs and variances
   are gathered into a block of their own, and each clipping pass is one sweep over it, accumulating
   the count, the sums of the deviations from the median and of their squares, and the smallest and
   largest value kept.  A kept set is always the candidates within an interval of values, so two
   kept sets are equal exactly when their count, smallest and largest values are;
4. a last sweep over the block sums the kept values' deviations from the median (and their squares)
   in float64, and the outputs take one division per pixel.

Each input pixel is read once from the caller's arrays, and nothing but a few hundred KB of block
buffers is allocated besides the outputs.  What each step bought is measured in bench/README.md
(part 5).
"""

from __future__ import annotations

__all__ = ["BLOCK_VALUES", "IQR_TO_SIGMA", "MEDIAN_VARIANCE_FACTOR", "block_pixels", "combine_pixels",
           "compiled_kernel", "sorting_network"]

import functools
import math

import numba
import numpy as np
import numpy.typing as npt
from numba.core.typing.templates import Signature

IQR_TO_SIGMA = 0.741301109252802
"""Ratio of a Gaussian's standard deviation to its interquartile range, 1 / (2 x 0.67449) (afw's)."""

MEDIAN_VARIANCE_FACTOR = math.pi / 2
"""Variance of the median of n Gaussian values over the variance of their mean, for large n."""

BLOCK_VALUES = 16384
"""Input values of a block (see `block_pixels`)."""

# cache: the compiled code is kept (beside the module, or in numba's user cache) for later processes;
# error_model="numpy": a division by zero gives inf or NaN, which the code handles, instead of raising.
_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


@functools.cache
def sorting_network(n: int) -> npt.NDArray[np.intp]:
    """Compare-exchange steps ``(i, j)``, ``i < j``, that sort ``n`` values (Batcher's odd-even merge
    sort), as an array of shape (steps, 2).

    The network for the next power of two is pruned of the steps that touch an index ``>= n``: with
    +inf in those places, such a step never moves anything.
    """
    size = 1 << max(n - 1, 0).bit_length()
    steps = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        steps.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return np.array(steps, dtype=np.intp).reshape(-1, 2)


@_jit
def block_pixels(n_inputs: int) -> int:
    """Pixels combined together: the block's two (n_inputs, block) buffers of candidates stay within
    about 128 KB (50 float32 inputs: 320 pixels), and few inputs get long blocks (at most 2048
    pixels), so that the per-block steps cost little per pixel."""
    return min(max(BLOCK_VALUES // max(n_inputs, 1) // 64 * 64, 256), 2048)


@_jit
def _load_block(values: np.ndarray, variances: np.ndarray, valid: np.ndarray, y: int, start: int,
                size: int, in_order: np.ndarray, ordered: np.ndarray, n_valid: npt.NDArray[np.int64],
                variance_sum: npt.NDArray[np.float64]) -> None:
    """Copy the inputs of pixels ``start:start + size`` of row ``y`` into the block buffers; count
    each pixel's candidates and sum their variances.

    Inputs are read in pairs, which halves the passes over the counts and sums; with an odd number,
    the last input's pair is the buffers' pad row, which gets no candidate.
    """
    n_inputs = values.shape[0]
    n_valid[:size], variance_sum[:size] = 0, 0.0
    for i in range(0, in_order.shape[0], 2):
        other = min(i + 1, n_inputs - 1)
        has_other = i + 1 < n_inputs
        values0, values1 = values[i, y, start:start + size], values[other, y, start:start + size]
        variances0, variances1 = variances[i, y, start:start + size], variances[other, y, start:start + size]
        valid0, valid1 = valid[i, y, start:start + size], valid[other, y, start:start + size]
        in_order0, in_order1, ordered0, ordered1 = in_order[i], in_order[i + 1], ordered[i], ordered[i + 1]
        for b in range(size):  # no branch: a vector loop
            value0, variance0, value1, variance1 = values0[b], variances0[b], values1[b], variances1[b]
            # finite value and variance
            candidate0 = valid0[b] & (value0 - value0 == 0) & (variance0 - variance0 == 0)
            candidate1 = has_other & valid1[b] & (value1 - value1 == 0) & (variance1 - variance1 == 0)
            in_order0[b], ordered0[b] = (value0, value0) if candidate0 else (np.nan, np.inf)
            in_order1[b], ordered1[b] = (value1, value1) if candidate1 else (np.nan, np.inf)
            n_valid[b] += candidate0 + candidate1
            variance_sum[b] += ((np.float64(variance0) if candidate0 else 0.0)
                                + (np.float64(variance1) if candidate1 else 0.0))


@_jit
def _sort_block(ordered: np.ndarray, network: npt.NDArray[np.intp], size: int) -> None:
    """Sort every column of ``ordered[:, :size]`` with the compare-exchange steps ``network``."""
    for step in range(network.shape[0]):
        lows, highs = ordered[network[step, 0]], ordered[network[step, 1]]
        for b in range(size):
            low, high = lows[b], highs[b]
            lows[b] = low if low < high else high
            highs[b] = high if low < high else low


@_jit
def _ranks(n: int, q: float) -> tuple[int, int, float]:
    """The two ranks among ``n`` sorted values that quantile ``q`` interpolates between, as numpy
    does, and the weight of the second."""
    position = q * (n - 1)
    low = int(position)
    return low, min(low + 1, n - 1), position - low


@_jit
def _interpolate(ordered: np.ndarray, ranks: tuple[int, int, float], b: int) -> float:
    """The quantile of the sorted column ``b`` at `_ranks` ``ranks``."""
    low, high, weight = ranks
    low_value = np.float64(ordered[low, b])
    return low_value + (np.float64(ordered[high, b]) - low_value) * weight


@_jit
def _quantile(ordered: np.ndarray, b: int, n: int, q: float) -> float:
    """Quantile ``q`` of the ``n`` sorted candidates of column ``b``."""
    return _interpolate(ordered, _ranks(n, q), b)


@_jit
def _kept_sums(stack: np.ndarray, size: int, low: npt.NDArray[np.float64], high: npt.NDArray[np.float64],
               centre: npt.NDArray[np.float64], count: npt.NDArray[np.int64], sum1: npt.NDArray[np.float64],
               sum2: npt.NDArray[np.float64], least: npt.NDArray[np.float64], most: npt.NDArray[np.float64],
               with_extremes: bool) -> None:
    """For each column of ``stack[:, :size]`` (an even number of rows), the count of the values within
    ``[low, high]`` (never NaN, a non-candidate), the sums of their deviations from ``centre`` and of
    the squares, and if ``with_extremes`` the smallest and largest of them.

    Rows are read in pairs, which halves the passes over the sums.
    """
    count[:size], sum1[:size], sum2[:size] = 0, 0.0, 0.0
    if with_extremes:
        least[:size], most[:size] = np.inf, -np.inf
    for i in range(0, stack.shape[0], 2):
        row0, row1 = stack[i], stack[i + 1]
        for b in range(size):  # no branch: a vector loop (the compiler makes one per with_extremes)
            value0, value1 = np.float64(row0[b]), np.float64(row1[b])
            inside0 = (low[b] <= value0) & (value0 <= high[b])
            inside1 = (low[b] <= value1) & (value1 <= high[b])
            deviation0 = value0 - centre[b] if inside0 else 0.0
            deviation1 = value1 - centre[b] if inside1 else 0.0
            count[b] += inside0 + inside1
            sum1[b] += deviation0 + deviation1
            sum2[b] += deviation0 * deviation0 + deviation1 * deviation1
            if with_extremes:
                smaller = min(value0 if inside0 else np.inf, value1 if inside1 else np.inf)
                larger = max(value0 if inside0 else -np.inf, value1 if inside1 else -np.inf)
                least[b] = smaller if smaller < least[b] else least[b]
                most[b] = larger if larger > most[b] else most[b]


@_jit
def _clip(stack: np.ndarray, size: int, n_valid: npt.NDArray[np.int64], sigma_var: npt.NDArray[np.float64],
          median: npt.NDArray[np.float64], width: npt.NDArray[np.float64], n_sigma: float, n_passes: int,
          low: npt.NDArray[np.float64], high: npt.NDArray[np.float64],
          scratch: npt.NDArray[np.float64], counts: npt.NDArray[np.int64]) -> None:
    """Run the clipping passes on the columns of ``stack[:, :size]`` (values in input order, NaN for
    non-candidates), from their median and first width; leave each column's kept interval in
    ``[low, high]`` (``(-inf, inf)`` where all the candidates are kept).  ``scratch`` and ``counts``
    are (9, block) and (3, block) arrays of work space."""
    new_low, new_high, sum1, sum2 = scratch[0], scratch[1], scratch[2], scratch[3]
    least, most, kept_least, kept_most, centre = scratch[4], scratch[5], scratch[6], scratch[7], scratch[8]
    new_count, kept_count, active = counts[0], counts[1], counts[2]
    low[:size], high[:size] = -np.inf, np.inf
    kept_count[:size], active[:size] = n_valid[:size], 1
    centre[:size] = median[:size]
    for _ in range(n_passes):
        for b in range(size):
            new_low[b] = centre[b] - n_sigma * width[b]
            new_high[b] = centre[b] + n_sigma * width[b]
        _kept_sums(stack, size, new_low, new_high, median, new_count, sum1, sum2, least, most, True)
        any_active = False
        for b in range(size):
            n = new_count[b]
            if not active[b]:
                continue
            unchanged = n == kept_count[b] and (n == n_valid[b]
                                                or (least[b] == kept_least[b] and most[b] == kept_most[b]))
            if n == 0 or unchanged:  # a pass that would keep no input keeps the previous set
                active[b] = 0
                continue
            any_active = True
            low[b], high[b], kept_count[b] = new_low[b], new_high[b], n
            kept_least[b], kept_most[b] = least[b], most[b]
            centre[b] = median[b] + sum1[b] / n
            spread = math.sqrt(max(sum2[b] - sum1[b] * sum1[b] / n, 0.0) / (n - 1)) if n >= 2 else 0.0
            width[b] = max(spread, sigma_var[b])
        if not any_active:
            break


@_jit
def _first_width(ordered: np.ndarray, b: int, n: int, variance_sum: float, n_sigma: float,
                 median: float) -> tuple[float, float, bool]:
    """The expected and first widths of column ``b`` with ``n`` sorted candidates, and whether the
    first pass would drop one of them."""
    sigma_var = math.sqrt(variance_sum * (1.0 / n))
    iqr = _quantile(ordered, b, n, 0.75) - _quantile(ordered, b, n, 0.25)
    width = max(IQR_TO_SIGMA * iqr, sigma_var)
    half_width = n_sigma * width
    outside = ordered[0, b] < median - half_width or ordered[n - 1, b] > median + half_width
    return sigma_var, width, outside


@_jit
def _columns_where(flags: npt.NDArray[np.bool_], columns: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    """The indices of the true ``flags``, written into the start of ``columns`` and returned as a
    view of it: a loop without a branch, quicker than one that branches on rare flags."""
    n = 0
    for b in range(flags.size):
        columns[n] = b
        n += flags[b]
    return columns[:n]


@_jit
def _first_widths(ordered: np.ndarray, size: int, n_valid: npt.NDArray[np.int64],
                  variance_sum: npt.NDArray[np.float64], min_inputs_for_mean: int, n_sigma: float,
                  median: npt.NDArray[np.float64], sigma_var: npt.NDArray[np.float64],
                  width: npt.NDArray[np.float64], flags: npt.NDArray[np.bool_],
                  to_clip: npt.NDArray[np.intp]) -> int:
    """The median of each column of sorted candidates, and, where clipping applies, the expected
    and first widths; list in ``to_clip`` the columns the first pass would change (a candidate
    outside its interval), and return their number.

    Columns where every input is a candidate (most) are done together, with the same ranks for
    every column; the others, one by one.  ``flags`` is a (2, block) work space.
    """
    n_inputs = ordered.shape[0]
    first, last = ordered[0], ordered[n_inputs - 1]
    outside, some_masked = flags[0], flags[1]
    median_rows, lower_rows = _ranks(n_inputs, 0.5), _ranks(n_inputs, 0.25)
    upper_rows = _ranks(n_inputs, 0.75)
    can_clip = n_inputs >= max(min_inputs_for_mean, 1)
    inverse = 1.0 / n_inputs  # no division in the loop
    for b in range(size):  # no branch: a vector loop
        median[b] = _interpolate(ordered, median_rows, b)
        iqr = _interpolate(ordered, upper_rows, b) - _interpolate(ordered, lower_rows, b)
        sigma_var[b] = math.sqrt(variance_sum[b] * inverse)
        width[b] = max(IQR_TO_SIGMA * iqr, sigma_var[b])
        half_width = n_sigma * width[b]
        outside[b] = can_clip & ((first[b] < median[b] - half_width) | (last[b] > median[b] + half_width))
        some_masked[b] = n_valid[b] != n_inputs
    to_fix = _columns_where(some_masked[:size], to_clip)
    for b in to_fix:
        n = n_valid[b]
        median[b] = _quantile(ordered, b, n, 0.5) if n > 0 else np.nan
        outside[b] = False
        if n >= max(min_inputs_for_mean, 1):
            sigma_var[b], width[b], outside[b] = _first_width(ordered, b, n, variance_sum[b], n_sigma,
                                                              median[b])
    n_clip = len(_columns_where(outside[:size], to_clip))
    return n_clip


@_jit
def _clip_block(in_order: np.ndarray, variances: np.ndarray, y: int, start: int,
                to_clip: npt.NDArray[np.intp], n_clip: int, n_valid: npt.NDArray[np.int64],
                sigma_var: npt.NDArray[np.float64], median: npt.NDArray[np.float64],
                width: npt.NDArray[np.float64], n_sigma: float, n_passes: int, low: npt.NDArray[np.float64],
                high: npt.NDArray[np.float64], variance_sum: npt.NDArray[np.float64], stack: np.ndarray,
                stack_variances: np.ndarray, scratch: npt.NDArray[np.float64],
                counts: npt.NDArray[np.int64]) -> None:
    """Clip the block's columns ``to_clip[:n_clip]``: their inputs and variances, gathered into
    ``stack`` and ``stack_variances``, go through the passes; set their kept intervals and the sums
    of their kept variances.  ``scratch`` and ``counts`` are (14, block) and (4, block) arrays of
    work space."""
    clip_n_valid = counts[3]
    clip_sigma_var, clip_median, clip_width, clip_low, clip_high = (scratch[9], scratch[10], scratch[11],
                                                                    scratch[12], scratch[13])
    for k in range(n_clip):
        b = to_clip[k]
        clip_n_valid[k], clip_sigma_var[k], clip_median[k], clip_width[k] = (n_valid[b], sigma_var[b],
                                                                             median[b], width[b])
    for i in range(variances.shape[0]):  # the pad row, if any, stays NaN
        row, row_variances = in_order[i], variances[i, y, start:]
        for k in range(n_clip):
            stack[i, k] = row[to_clip[k]]
            stack_variances[i, k] = row_variances[to_clip[k]]
    _clip(stack, n_clip, clip_n_valid, clip_sigma_var, clip_median, clip_width, n_sigma, n_passes,
          clip_low, clip_high, scratch[:9], counts[:3])
    kept_variance_sum = clip_median  # no longer needed
    kept_variance_sum[:n_clip] = 0.0
    for i in range(variances.shape[0]):
        row, row_variances = stack[i], stack_variances[i]
        for k in range(n_clip):  # no branch: a vector loop
            value = np.float64(row[k])
            inside = (clip_low[k] <= value) & (value <= clip_high[k])
            kept_variance_sum[k] += np.float64(row_variances[k]) if inside else 0.0
    for k in range(n_clip):
        b = to_clip[k]
        low[b], high[b], variance_sum[b] = clip_low[k], clip_high[k], kept_variance_sum[k]


def combine_pixels(values: np.ndarray, variances: np.ndarray, valid: np.ndarray,
                   network: npt.NDArray[np.intp], n_sigma: float, n_passes: int,
                   min_inputs_for_mean: int, need_median: bool, variance_from_inputs: bool,
                   image: npt.NDArray[np.float64], variance: npt.NDArray[np.float64],
                   n_used: npt.NDArray[np.int64], clipped: npt.NDArray[np.bool_]) -> None:
    """Combine every pixel of a stack into the output arrays (see `combine_stack.combine_stack`).

    Parameters
    ----------
    values, variances : `numpy.ndarray` [`float`], shape (n_inputs, ny, nx)
        The inputs and their variances (float32 or float64, C-contiguous); the values' type is
        the type of the work (sums are float64 whatever it is).
    valid : `numpy.ndarray` [`bool`], shape (n_inputs, ny, nx)
        `False` for input pixels to ignore.
    network : `numpy.ndarray` [`int`], shape (steps, 2)
        ``sorting_network(n_inputs)``.
    n_sigma : `float`
        Clipping threshold in units of the width.
    n_passes : `int`
        Maximum number of clipping passes (0: no clipping).
    min_inputs_for_mean : `int`
        Pixels with fewer candidates take their median.
    need_median : `bool`
        Whether the median is needed (clipping, or the median fall-back).
    variance_from_inputs : `bool`
        Propagate the variance planes (`True`) or use the spread of the values.
    image, variance, n_used, clipped : `numpy.ndarray`, shape (ny, nx)
        The outputs, overwritten.
    """
    n_inputs, height, width = values.shape
    block = block_pixels(n_inputs)
    # An even number of rows, for the loops that read two at a time: a pad row without candidate.
    in_order = np.full((n_inputs + n_inputs % 2, block), np.nan, dtype=values.dtype)
    ordered = np.full_like(in_order, np.inf)
    clip_stack, clip_variances = np.full_like(in_order, np.nan), np.empty((n_inputs, block), variances.dtype)
    n_valid, count, to_clip = np.empty(block, np.int64), np.empty(block, np.int64), np.empty(block, np.intp)
    flags = np.empty((2, block), np.bool_)
    counts, scratch = np.empty((4, block), np.int64), np.empty((14, block))
    vectors = np.empty((8, block))
    variance_sum, centre, sigma_var, first_width = vectors[0], vectors[1], vectors[2], vectors[3]
    low, high, sum1, sum2 = vectors[4], vectors[5], vectors[6], vectors[7]
    n_min = min_inputs_for_mean if n_passes > 0 else n_inputs + 1
    for y in range(height):
        for start in range(0, width, block):
            size = min(block, width - start)
            _load_block(values, variances, valid, y, start, size, in_order, ordered, n_valid, variance_sum)
            low[:size], high[:size] = -np.inf, np.inf
            if need_median:
                _sort_block(ordered, network, size)
                n_clip = _first_widths(ordered[:n_inputs], size, n_valid, variance_sum, n_min, n_sigma,
                                       centre, sigma_var, first_width, flags, to_clip)
                if n_clip:
                    _clip_block(in_order, variances, y, start, to_clip, n_clip, n_valid, sigma_var, centre,
                                first_width, n_sigma, n_passes, low, high, variance_sum, clip_stack,
                                clip_variances, scratch, counts)
            else:
                centre[:size] = 0.0  # the mean first, then the deviations from it
                _kept_sums(in_order, size, low, high, centre, count, sum1, sum2, low, high, False)
                for b in range(size):
                    centre[b] = sum1[b] / count[b]
            _kept_sums(in_order, size, low, high, centre, count, sum1, sum2, low, high, False)
            end = start + size
            _write_block(size, count, n_valid, centre, sum1, sum2, variance_sum, min_inputs_for_mean,
                         variance_from_inputs, image[y, start:end], variance[y, start:end],
                         n_used[y, start:end], clipped[y, start:end])


@_jit
def _write_block(size: int, count: npt.NDArray[np.int64], n_valid: npt.NDArray[np.int64],
                 centre: npt.NDArray[np.float64], sum1: npt.NDArray[np.float64],
                 sum2: npt.NDArray[np.float64], variance_sum: npt.NDArray[np.float64],
                 min_inputs_for_mean: int, variance_from_inputs: bool, image: npt.NDArray[np.float64],
                 variance: npt.NDArray[np.float64], n_used: npt.NDArray[np.int64],
                 clipped: npt.NDArray[np.bool_]) -> None:
    """The outputs of a block's pixels from the count and sums of their kept values (deviations
    from ``centre``: the median or, for the plain mean, the mean); NaN where nothing is kept."""
    for b in range(size):  # two divisions per pixel, the slowest vector instructions here
        n = count[b]
        inverse = 1.0 / n  # inf for no input, which makes the outputs NaN
        use_mean = n_valid[b] >= min_inputs_for_mean
        propagated = variance_sum[b] * inverse * inverse
        spread = max(sum2[b] - sum1[b] * sum1[b] * inverse, 0.0) / (n * (n - 1))
        result = spread if not variance_from_inputs and n >= 2 else propagated
        median_factor = MEDIAN_VARIANCE_FACTOR if n >= 3 else 1.0
        image[b] = centre[b] + sum1[b] * inverse if use_mean else centre[b]
        variance[b] = result if use_mean else result * median_factor
        n_used[b] = n
        clipped[b] = use_mean & (n > 0)


def _signature(dtype: numba.types.Float) -> Signature:
    """`combine_pixels`'s signature for stacks of ``dtype`` (C-contiguous, read-only accepted)."""
    stack = numba.types.Array(dtype, 3, "C", readonly=True)
    valid = numba.types.Array(numba.types.boolean, 3, "C", readonly=True)

    def output(item: numba.types.Type) -> numba.types.Array:
        return numba.types.Array(item, 2, "C")

    return numba.types.void(stack, stack, valid, numba.types.Array(numba.types.intp, 2, "C", readonly=True),
                            numba.types.float64, numba.types.int64, numba.types.int64, numba.types.boolean,
                            numba.types.boolean, output(numba.types.float64), output(numba.types.float64),
                            output(numba.types.int64), output(numba.types.boolean))


@functools.cache
def compiled_kernel(dtype: np.dtype) -> numba.core.dispatcher.Dispatcher:
    """`combine_pixels` compiled for stacks of ``dtype`` (float32 or float64), on first use (about
    8 s of CPU per type, once: numba keeps the machine code in its cache for later processes).

    Each type is compiled only when a stack of that type comes (the combine task's are float32),
    with one signature, so no call compiles again.
    """
    return numba.njit([_signature(numba.from_dtype(dtype))], cache=True, nogil=True,
                      error_model="numpy")(combine_pixels)
