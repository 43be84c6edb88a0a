# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Iterative sigma-clipped statistics of an image and of all its amplifier regions.

The clipping rule is in `sigma_clipped_region_stats`.  The computation reads the image once,
whatever the number of passes, and keeps every answer equal to the plain float64 computation of
the same rule to rounding (bench/README.md has the timings against the memory-bandwidth floor and
astropy):

1. Clipping is cumulative and symmetric, so each set's kept pixels are always the values inside
   an interval.  A small sample of rows (a few per cent of the pixels) is clipped by the same rule
   to estimate each set's final interval, and the inner 85% of it is the set's *core*.
2. One pass over the image, a few hundred rows of one region at a time in a float64 buffer that
   stays in the CPU cache, sums the deviations from a per-region shift, and their squares, over
   the pixels inside the cores of every set they belong to (``numpy.sum`` and ``numpy.einsum``),
   and copies out the few pixels outside a core (the *tails*, about 1%).
3. The passes then run on the sums and the tails only: a pass keeps the core pixels and the tails
   that pass the test.  It is exact only while every core pixel passes, which each pass checks on
   the core's two ends (``|x - mean|`` is monotonic in ``x`` either side of the mean); a set whose
   interval ever cuts into its core, which no flat in the tests does, is recomputed from its
   pixels directly.

An earlier version clipped each region with boolean indexing and float64 copies (about 100 bytes
moved per pixel per pass); one before that used label images and `numpy.bincount`.
"""

from __future__ import annotations

__all__ = ["SigmaClippedStats", "sigma_clipped_region_stats"]

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_CORE_FRACTION = 0.85
"""Half-width of a set's core, as a fraction of the estimated half-width of its final interval."""

_SAMPLE_PIXELS = 16384
"""About how many pixels of each set (and of the whole image) the interval estimate clips."""

_CHUNK_PIXELS = 1 << 16
"""Pixels per chunk of the summing pass: its float64 buffer is 512 KiB."""


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
        Pixel values (float32 or float64; other types are converted to float64).
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

    Passes over a set stop after the first one that drops no pixel or after ``max_iter`` passes
    (a pass that drops nothing would drop nothing ever after); ``n_iter`` is the largest pass
    count of the regions and the whole image, and counts the final pass that dropped nothing.
    Pixels outside every region count for the whole image only.  The returned mean, sigma and N
    are those of the final kept set.  A region without any good pixel gets mean NaN, sigma NaN
    and N 0.

    The means and sigmas equal a float64 computation of this rule (``numpy.mean`` and
    ``numpy.std`` of the kept values) to rounding, and the kept sets are the same; see the module
    docstring for how.
    """
    if image.shape != good.shape:
        raise ValueError(f"Image shape {image.shape} differs from good-pixel mask shape {good.shape}.")
    if not n_sigma > 0:
        raise ValueError(f"n_sigma must be positive; got {n_sigma}.")
    if max_iter < 0:
        raise ValueError(f"max_iter must not be negative; got {max_iter}.")
    if image.dtype not in (np.float32, np.float64):
        image = image.astype(np.float64)
    boxes = [_box(image.shape, region) for region in regions]
    _check_disjoint(boxes)
    good = np.asarray(good, dtype=bool)
    usable = good if np.isfinite(image).all() else good & np.isfinite(image)
    cells = [_Cell(box, region=i) for i, box in enumerate(boxes)]
    covered = sum((box[1] - box[0]) * (box[3] - box[2]) for box in boxes)
    if covered < image.size:  # pixels outside every region: the whole image's only
        outside = usable.copy()
        for y0, y1, x0, x1 in boxes:
            outside[y0:y1, x0:x1] = False
        rows, columns = np.flatnonzero(outside.any(axis=1)), np.flatnonzero(outside.any(axis=0))
        if rows.size:
            cells.append(_Cell((rows[0], rows[-1] + 1, columns[0], columns[-1] + 1), region=None,
                               usable=outside))
    sets = _estimate_cores(image, usable, cells, len(boxes), float(n_sigma), max_iter)
    _sum_cells(image, usable, cells, sets)
    results = [_clip_set(image, usable, cells, s, float(n_sigma), max_iter) for s in sets]
    whole, per_region = results[0], results[1:]
    return SigmaClippedStats(
        whole_mean=whole[0], whole_sigma=whole[1], whole_n=whole[2],
        mean=np.array([r[0] for r in per_region], dtype=float),
        sigma=np.array([r[1] for r in per_region], dtype=float),
        n=np.array([r[2] for r in per_region], dtype=np.int64),
        n_iter=max(r[3] for r in results),
    )


def _box(shape: tuple[int, ...], region: tuple[slice, slice]) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of a region given as two slices (steps other than 1 are refused)."""
    (y0, y1, ystep), (x0, x1, xstep) = (s.indices(n) for s, n in zip(region, shape))
    if ystep != 1 or xstep != 1:
        raise ValueError(f"Region {region} has a step; regions must be boxes.")
    return y0, max(y0, y1), x0, max(x0, x1)


def _check_disjoint(boxes: list[tuple[int, int, int, int]]) -> None:
    """Raise if two regions share a pixel (a pixel must count for one amplifier only)."""
    for index, (y0, y1, x0, x1) in enumerate(boxes):
        for b0, b1, a0, a1 in boxes[:index]:
            # Boxes are half-open; an empty box (y0 == y1 or x0 == x1) overlaps nothing.
            if y0 < min(y1, b1) and b0 < min(y1, b1) and x0 < min(x1, a1) and a0 < min(x1, a1):
                raise ValueError(f"Region {index} overlaps an earlier region.")


@dataclass
class _Cell:
    """Pixels that belong to the same sets: a region (the whole image's and its own), or the pixels
    outside every region (the whole image's only, selected by ``usable``)."""

    box: tuple[int, int, int, int]
    region: int | None
    usable: np.ndarray | None = None
    shift: float = 0.0
    """Subtracted from the values before summing, for precision: the region's estimated mean."""
    n: int = 0
    sum1: float = 0.0
    sum2: float = 0.0
    """Number of core pixels, and sums of their ``x - shift`` and its square."""
    tails: list[np.ndarray] = dataclasses.field(default_factory=list)
    """The usable pixels outside the core, values as in the image."""


@dataclass
class _Set:
    """The whole image (``region`` None) or one region, as clipped."""

    region: int | None
    core: tuple[float, float] | None
    """Values every pixel of the set in this range keeps, if the estimate holds; None: no core (the
    set is computed directly)."""
    shift: float = 0.0


def _sample(image: np.ndarray, usable: np.ndarray, cells: list[_Cell]) -> np.ndarray:
    """Usable values (float64) of a regular grid of rows and columns of some cells, about
    ``_SAMPLE_PIXELS`` of them."""
    n_pixels = sum((c.box[1] - c.box[0]) * (c.box[3] - c.box[2]) for c in cells)
    step = max(1, math.ceil(math.sqrt(n_pixels / _SAMPLE_PIXELS)))
    parts = []
    for cell in cells:
        y0, y1, x0, x1 = cell.box
        where = (cell.usable if cell.usable is not None else usable)[y0:y1:step, x0:x1:step]
        parts.append(image[y0:y1:step, x0:x1:step][where])
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def _estimate_cores(image: np.ndarray, usable: np.ndarray, cells: list[_Cell], n_regions: int,
                    n_sigma: float, max_iter: int) -> list[_Set]:
    """Estimate the final interval of the whole image and of each region from a sample; return
    their sets (the whole image's first) with their cores, and set the cells' shifts."""
    sets = []
    for region in [None, *range(n_regions)]:
        values = _sample(image, usable, [c for c in cells if region is None or c.region == region])
        if values.size == 0:
            sets.append(_Set(region, core=None))
            continue
        mean, sigma, _, _ = _clip_values(values, n_sigma, max_iter)
        half = _CORE_FRACTION * n_sigma * sigma if max_iter > 0 else math.inf
        sets.append(_Set(region, core=(mean - half, mean + half), shift=mean))
    for cell in cells:
        own = sets[0] if cell.region is None else sets[cell.region + 1]
        cell.shift = own.shift if own.core is not None else sets[0].shift
    return sets


def _sum_cells(image: np.ndarray, usable: np.ndarray, cells: list[_Cell], sets: list[_Set]) -> None:
    """The summing pass: each cell's core sums, and its tails.

    A cell's pixels are in its core when they lie in the cores of all of its sets; a set without a
    core makes all of its cells' pixels tails.
    """
    whole = sets[0]
    buffer = np.empty(max([_CHUNK_PIXELS] + [cell.box[3] - cell.box[2] for cell in cells]))
    for cell in cells:
        own = sets[cell.region + 1] if cell.region is not None else whole
        cores = [s.core for s in ((whole, own) if cell.region is not None else (whole,))]
        if any(core is None for core in cores):
            low, high = math.inf, -math.inf
        else:
            # No core is None here (the test above), which mypy cannot see through any().
            low = max(core[0] for core in cores) - cell.shift  # type: ignore[index]
            high = min(core[1] for core in cores) - cell.shift  # type: ignore[index]
        y0, y1, x0, x1 = cell.box
        width = x1 - x0
        if width == 0:
            continue
        rows = max(1, _CHUNK_PIXELS // width)
        mask = cell.usable if cell.usable is not None else usable
        for top in range(y0, y1, rows):
            bottom = min(top + rows, y1)
            values = image[top:bottom, x0:x1]
            ok = mask[top:bottom, x0:x1]
            deviation = buffer[:values.size].reshape(values.shape)
            np.subtract(values, cell.shift, out=deviation, dtype=np.float64)
            n_ok = int(np.count_nonzero(ok))
            if n_ok == 0:
                continue
            if n_ok < ok.size:
                np.copyto(deviation, 0.0, where=~ok)
            if low <= high:
                tails = deviation < low
                tails |= deviation > high
                if n_ok < ok.size and not low <= 0.0 <= high:
                    tails &= ok
                n_tails = int(np.count_nonzero(tails))
            else:  # no core: every usable pixel is a tail
                tails, n_tails = ok, n_ok
            if n_tails:
                cell.tails.append(values[tails])
                np.copyto(deviation, 0.0, where=tails)
            flat = deviation.reshape(-1)
            cell.n += n_ok - n_tails
            cell.sum1 += float(flat.sum())
            cell.sum2 += _square_sum(flat)


def _square_sum(values: np.ndarray) -> float:
    """Sum of squares of a 1-d float64 array.  `numpy.einsum` rather than a BLAS dot product, which
    OpenBLAS spreads over threads above 10,000 values: 2.5x slower on a busy two-core machine."""
    return float(np.einsum("i,i->", values, values))


def _moments(n: int, sum1: float, sum2: float, shift: float) -> tuple[float, float]:
    """Mean and population sigma from the sums of ``x - shift`` and its square."""
    if n == 0:
        return math.nan, math.nan
    offset = sum1 / n
    return shift + offset, math.sqrt(max(sum2 / n - offset * offset, 0.0))


def _clip_set(image: np.ndarray, usable: np.ndarray, cells: list[_Cell], target: _Set, n_sigma: float,
              max_iter: int) -> tuple[float, float, int, int]:
    """Clip one set from its cells' core sums and tails: (mean, sigma, N, passes)."""
    chosen = [c for c in cells if target.region is None or c.region == target.region]
    if target.core is None:
        return _clip_directly(image, usable, chosen, n_sigma, max_iter)
    shift = target.shift
    n, sum1, sum2 = 0, 0.0, 0.0
    for cell in chosen:  # the cells' core sums, moved to the set's shift
        delta = cell.shift - shift
        n += cell.n
        sum1 += cell.sum1 + cell.n * delta
        sum2 += cell.sum2 + 2.0 * delta * cell.sum1 + cell.n * delta * delta
    tails = np.concatenate([t for c in chosen for t in c.tails]).astype(np.float64) if any(
        c.tails for c in chosen) else np.zeros(0)
    # The core pixels of the set lie within these values (the tails test rounded x - shift).
    ends = _core_ends(chosen, target)
    alive = tails
    deviation = alive - shift
    mean, sigma = _moments(n + alive.size, sum1 + deviation.sum(), sum2 + _square_sum(deviation),
                           shift)
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        if not sigma > 0:
            break
        limit = n_sigma * sigma
        if ends is not None and not (abs(ends[0] - mean) <= limit and abs(ends[1] - mean) <= limit):
            return _clip_directly(image, usable, chosen, n_sigma, max_iter)
        keep = np.abs(alive - mean) <= limit
        if keep.all():
            break
        alive = alive[keep]
        deviation = alive - shift
        mean, sigma = _moments(n + alive.size, sum1 + deviation.sum(), sum2 + _square_sum(deviation),
                               shift)
    return mean, sigma, n + alive.size, n_iter


def _core_ends(cells: list[_Cell], target: _Set) -> tuple[float, float] | None:
    """The smallest and largest value a core pixel of ``target``'s cells can have, or None if they
    have no core pixel."""
    if not any(cell.n for cell in cells):
        return None
    low, high = target.core  # type: ignore[misc]  # cells with pixels (above): the target has a core
    # A pixel is in its cell's core when its rounded x - shift lies in [low - shift, high - shift]:
    # allow for that rounding.
    slack = 4 * np.finfo(np.float64).eps * max(abs(low), abs(high), *(abs(c.shift) for c in cells))
    return low - slack, high + slack


def _clip_directly(image: np.ndarray, usable: np.ndarray, cells: list[_Cell], n_sigma: float,
                   max_iter: int) -> tuple[float, float, int, int]:
    """Clip a set from all of its pixels (when its core estimate failed or it has none)."""
    parts = []
    for cell in cells:
        y0, y1, x0, x1 = cell.box
        mask = cell.usable if cell.usable is not None else usable
        parts.append(image[y0:y1, x0:x1][mask[y0:y1, x0:x1]])
    values = np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)
    return _clip_values(values, n_sigma, max_iter)


def _clip_values(values: np.ndarray, n_sigma: float, max_iter: int) -> tuple[float, float, int, int]:
    """Clip one set of float64 values by the rule, directly: (mean, sigma, N, passes)."""
    mean, sigma = _direct_moments(values)
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        # A zero sigma means every kept value is equal: clipping has converged.
        if not sigma > 0:
            break
        keep = np.abs(values - mean) <= n_sigma * sigma
        if keep.all():
            break
        values = values[keep]
        mean, sigma = _direct_moments(values)
    return mean, sigma, int(values.size), n_iter


def _direct_moments(values: np.ndarray) -> tuple[float, float]:
    """Mean and population sigma (NaN for no values, without a RuntimeWarning)."""
    if values.size == 0:
        return math.nan, math.nan
    mean = float(values.mean())
    return mean, float(np.sqrt(np.mean(np.square(values - mean))))
