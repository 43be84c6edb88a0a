# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The compiled (numba) kernel of `lsst.cp.flatnorm.combine_stack`.

`combine_pixels` combines a (n_inputs, ny, nx) stack by the rule the `lsst.cp.flatnorm.combine_stack`
module documents.  It works on blocks of ``BLOCK_PIXELS`` pixels of one row at a time, every step a
loop over the block's pixels that the compiler turns into vector instructions:

1. the block's inputs are copied into two cache-resident (n_inputs, block) arrays, one in input
   order with NaN where an input is not a candidate, one to be sorted with +inf there;
2. a sorting network (Batcher's odd-even merge sort: a fixed list of compare-exchange steps for the
   number of inputs, the same for every pixel, so each step is a vector min and max over the block)
   sorts the second, and the median and quartiles are read at each pixel's ranks;
3. each clipping pass is one sweep over the inputs in order, accumulating the count, the sums of the
   deviations from the median and of their squares, and the smallest and largest value kept.  A kept
   set is always the candidates within an interval of values, so two kept sets are equal exactly when
   their count, smallest and largest values are;
4. a last sweep sums the kept values and variances (and, two-pass, the squared deviations from the
   mean) in float64.

Each input pixel is read once from the caller's arrays (any strides) and nothing but a few hundred KB
of block buffers is allocated besides the outputs.
"""

from __future__ import annotations

__all__ = ["BLOCK_PIXELS", "IQR_TO_SIGMA", "MEDIAN_VARIANCE_FACTOR", "combine_pixels", "compiled_kernel",
           "sorting_network"]

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

BLOCK_PIXELS = 256
"""Pixels combined together: 50 float32 inputs of a block (50 KB) stay in the level-2 cache."""

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
def _load_block(values: np.ndarray, variances: np.ndarray, valid: np.ndarray, y: int, start: int,
                size: int, in_order: np.ndarray, ordered: np.ndarray,
                block_variances: npt.NDArray[np.float64], n_valid: npt.NDArray[np.int64],
                value_sum: npt.NDArray[np.float64], variance_sum: npt.NDArray[np.float64]) -> None:
    """Copy the inputs of pixels ``start:start + size`` of row ``y`` into the block buffers; count
    each pixel's candidates and sum their values and variances."""
    n_valid[:size], value_sum[:size], variance_sum[:size] = 0, 0.0, 0.0
    for i in range(values.shape[0]):
        row_values = values[i, y, start:start + size]
        row_variances = variances[i, y, start:start + size]
        row_valid = valid[i, y, start:start + size]
        for b in range(size):  # no branch: a vector loop
            value, variance = row_values[b], np.float64(row_variances[b])
            candidate = row_valid[b] & (value - value == 0) & (variance - variance == 0)  # finite
            in_order[i, b] = value if candidate else np.nan
            ordered[i, b] = value if candidate else np.inf
            block_variances[i, b] = variance if candidate else 0.0
            n_valid[b] += candidate
            value_sum[b] += np.float64(value) if candidate else 0.0
            variance_sum[b] += variance if candidate else 0.0


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
def _quantile(ordered: np.ndarray, b: int, n: int, q: float) -> float:
    """Quantile ``q`` of the ``n`` sorted candidates of column ``b``, interpolated as numpy does."""
    position = q * (n - 1)
    low = int(position)
    low_value = np.float64(ordered[low, b])
    high_value = np.float64(ordered[min(low + 1, n - 1), b])
    return low_value + (high_value - low_value) * (position - low)


@_jit
def _kept_moments(in_order: np.ndarray, size: int, low: npt.NDArray[np.float64],
                  high: npt.NDArray[np.float64], centre: npt.NDArray[np.float64],
                  count: npt.NDArray[np.int64], sum1: npt.NDArray[np.float64],
                  sum2: npt.NDArray[np.float64]) -> None:
    """For each column, the count of the values within ``[low, high]`` (never NaN, a non-candidate)
    and the sums of their deviations from ``centre`` and of the squares."""
    count[:size], sum1[:size], sum2[:size] = 0, 0.0, 0.0
    for i in range(in_order.shape[0]):
        row = in_order[i]
        for b in range(size):
            value = np.float64(row[b])
            inside = (low[b] <= value) & (value <= high[b])
            deviation = value - centre[b] if inside else 0.0
            count[b] += inside
            sum1[b] += deviation
            sum2[b] += deviation * deviation


@_jit
def _kept_extremes(in_order: np.ndarray, size: int, low: npt.NDArray[np.float64],
                   high: npt.NDArray[np.float64], least: npt.NDArray[np.float64],
                   most: npt.NDArray[np.float64]) -> None:
    """For each column, the smallest and largest value within ``[low, high]``."""
    least[:size], most[:size] = np.inf, -np.inf
    for i in range(in_order.shape[0]):
        row = in_order[i]
        for b in range(size):
            value = np.float64(row[b])
            inside = (low[b] <= value) & (value <= high[b])
            smaller, larger = (value, value) if inside else (np.inf, -np.inf)
            least[b] = smaller if smaller < least[b] else least[b]
            most[b] = larger if larger > most[b] else most[b]


@_jit
def _kept_variance_sum(in_order: np.ndarray, block_variances: npt.NDArray[np.float64], size: int,
                       low: npt.NDArray[np.float64], high: npt.NDArray[np.float64],
                       variance_sum: npt.NDArray[np.float64]) -> None:
    """For each column, the sum of the variances of the values within ``[low, high]``."""
    variance_sum[:size] = 0.0
    for i in range(in_order.shape[0]):
        row, row_variances = in_order[i], block_variances[i]
        for b in range(size):
            value = np.float64(row[b])
            variance_sum[b] += row_variances[b] if (low[b] <= value) & (value <= high[b]) else 0.0


@_jit
def _clip(stack: np.ndarray, size: int, n_valid: npt.NDArray[np.int64], sigma_var: npt.NDArray[np.float64],
          median: npt.NDArray[np.float64], width: npt.NDArray[np.float64], n_sigma: float, n_passes: int,
          low: npt.NDArray[np.float64], high: npt.NDArray[np.float64],
          scratch: tuple[npt.NDArray[np.float64], ...], counts: tuple[npt.NDArray[np.int64], ...]) -> None:
    """Run the clipping passes on the columns of ``stack[:, :size]`` (values in input order, NaN for
    non-candidates), from their median and first width; leave each column's kept interval in
    ``[low, high]`` (``(-inf, inf)`` where all the candidates are kept)."""
    new_low, new_high, sum1, sum2, least, most, kept_least, kept_most, centre = scratch
    new_count, kept_count, active = counts
    low[:size], high[:size] = -np.inf, np.inf
    kept_count[:size], active[:size] = n_valid[:size], 1
    centre[:size] = median[:size]
    for _ in range(n_passes):
        for b in range(size):
            new_low[b] = centre[b] - n_sigma * width[b]
            new_high[b] = centre[b] + n_sigma * width[b]
        _kept_moments(stack, size, new_low, new_high, median, new_count, sum1, sum2)
        _kept_extremes(stack, size, new_low, new_high, least, most)
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
def _first_widths(ordered: np.ndarray, size: int, n_valid: npt.NDArray[np.int64],
                  variance_sum: npt.NDArray[np.float64], min_inputs_for_mean: int, n_sigma: float,
                  median: npt.NDArray[np.float64], sigma_var: npt.NDArray[np.float64],
                  width: npt.NDArray[np.float64], to_clip: npt.NDArray[np.intp]) -> int:
    """The median of each column of sorted candidates, and, where clipping applies, the expected
    and first widths; list in ``to_clip`` the columns the first pass would change (a candidate
    outside its interval), and return their number."""
    n_clip = 0
    for b in range(size):
        n = n_valid[b]
        median[b] = _quantile(ordered, b, n, 0.5) if n > 0 else np.nan
        if n < max(min_inputs_for_mean, 1):
            continue
        sigma_var[b] = math.sqrt(variance_sum[b] / n)
        iqr = _quantile(ordered, b, n, 0.75) - _quantile(ordered, b, n, 0.25)
        width[b] = max(IQR_TO_SIGMA * iqr, sigma_var[b])
        half_width = n_sigma * width[b]
        if ordered[0, b] < median[b] - half_width or ordered[n - 1, b] > median[b] + half_width:
            to_clip[n_clip] = b
            n_clip += 1
    return n_clip


@_jit
def _vectors() -> npt.NDArray[np.float64]:
    return np.empty(BLOCK_PIXELS)


def combine_pixels(values: np.ndarray, variances: np.ndarray, valid: np.ndarray,
                   network: npt.NDArray[np.intp], n_sigma: float, n_passes: int,
                   min_inputs_for_mean: int, need_median: bool, variance_from_inputs: bool,
                   image: npt.NDArray[np.float64], variance: npt.NDArray[np.float64],
                   n_used: npt.NDArray[np.int64], clipped: npt.NDArray[np.bool_]) -> None:
    """Combine every pixel of a stack into the output arrays (see `combine_stack.combine_stack`).

    Parameters
    ----------
    values, variances : `numpy.ndarray` [`float`], shape (n_inputs, ny, nx)
        The inputs and their variances (float32 or float64, any strides); the values' type is
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
    in_order = np.empty((n_inputs, BLOCK_PIXELS), dtype=values.dtype)
    ordered, to_clip_stack = np.empty_like(in_order), np.empty_like(in_order)
    block_variances = np.empty((n_inputs, BLOCK_PIXELS))
    to_clip_variances = np.empty((n_inputs, BLOCK_PIXELS))
    n_valid, count = np.empty(BLOCK_PIXELS, np.int64), np.empty(BLOCK_PIXELS, np.int64)
    to_clip = np.empty(BLOCK_PIXELS, np.intp)
    counts = (np.empty(BLOCK_PIXELS, np.int64), np.empty(BLOCK_PIXELS, np.int64),
              np.empty(BLOCK_PIXELS, np.int64))
    scratch = (_vectors(), _vectors(), _vectors(), _vectors(), _vectors(), _vectors(), _vectors(), _vectors(),
               _vectors())
    value_sum, variance_sum, centre, sigma_var = _vectors(), _vectors(), _vectors(), _vectors()
    first_width, low, high, sum1, sum2 = _vectors(), _vectors(), _vectors(), _vectors(), _vectors()
    clip_low, clip_high, clip_variance_sum = _vectors(), _vectors(), _vectors()
    for y in range(height):
        for start in range(0, width, BLOCK_PIXELS):
            size = min(BLOCK_PIXELS, width - start)
            _load_block(values, variances, valid, y, start, size, in_order, ordered, block_variances,
                        n_valid, value_sum, variance_sum)
            low[:size], high[:size] = -np.inf, np.inf
            if need_median:
                _sort_block(ordered, network, size)
                n_clip = _first_widths(ordered, size, n_valid, variance_sum,
                                       min_inputs_for_mean if n_passes > 0 else n_inputs + 1,
                                       n_sigma, centre, sigma_var, first_width, to_clip)
                if n_clip:
                    # Only the pixels the first pass changes are clipped further: their inputs,
                    # gathered into a block of their own, go through the passes.
                    pixels = to_clip[:n_clip]
                    for i in range(n_inputs):
                        for k in range(n_clip):
                            to_clip_stack[i, k] = in_order[i, pixels[k]]
                            to_clip_variances[i, k] = block_variances[i, pixels[k]]
                    _clip(to_clip_stack, n_clip, n_valid[pixels], sigma_var[pixels], centre[pixels],
                          first_width[pixels], n_sigma, n_passes, clip_low, clip_high, scratch, counts)
                    _kept_variance_sum(to_clip_stack, to_clip_variances, n_clip, clip_low, clip_high,
                                       clip_variance_sum)
                    low[pixels], high[pixels] = clip_low[:n_clip], clip_high[:n_clip]
                    variance_sum[pixels] = clip_variance_sum[:n_clip]
            else:
                for b in range(size):
                    centre[b] = value_sum[b] / n_valid[b]
            _kept_moments(in_order, size, low, high, centre, count, sum1, sum2)
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
    for b in range(size):
        n = count[b]
        use_mean = n_valid[b] >= min_inputs_for_mean
        propagated = variance_sum[b] / (n * n)
        spread = max(sum2[b] - sum1[b] * sum1[b] / n, 0.0) / (n - 1) / n
        result = spread if not variance_from_inputs and n >= 2 else propagated
        median_factor = MEDIAN_VARIANCE_FACTOR if n >= 3 else 1.0
        image[b] = centre[b] + sum1[b] / n if use_mean else centre[b]
        variance[b] = result if use_mean else result * median_factor
        n_used[b] = n
        clipped[b] = use_mean & (n > 0)


def _signature(dtype: numba.types.Float) -> Signature:
    """`combine_pixels`'s signature for stacks of ``dtype`` (any strides, read-only accepted)."""
    stack = numba.types.Array(dtype, 3, "A", readonly=True)
    valid = numba.types.Array(numba.types.boolean, 3, "A", readonly=True)

    def output(item: numba.types.Type) -> numba.types.Array:
        return numba.types.Array(item, 2, "C")

    return numba.types.void(stack, stack, valid, numba.types.Array(numba.types.intp, 2, "C", readonly=True),
                            numba.types.float64, numba.types.int64, numba.types.int64, numba.types.boolean,
                            numba.types.boolean, output(numba.types.float64), output(numba.types.float64),
                            output(numba.types.int64), output(numba.types.boolean))


@functools.cache
def compiled_kernel() -> numba.core.dispatcher.Dispatcher:
    """`combine_pixels` compiled for float32 and float64 stacks, on first use (about 10 s, once:
    numba keeps the machine code in its cache for later processes).

    Only these two signatures exist, whatever the strides of the arrays a caller passes, so no
    call compiles again.
    """
    return numba.njit([_signature(numba.types.float32), _signature(numba.types.float64)], cache=True,
                      nogil=True, error_model="numpy")(combine_pixels)
