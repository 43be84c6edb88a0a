# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Benchmark 6: clipped statistics of one detector against the memory-bandwidth floor and astropy.

A flat of one LSSTCam detector (4072 x 4000 float32 pixels, 16 amplifiers of 509 x 2000 with gains
differing by up to 5%, Poisson noise at 50,000 electrons, a 1% mask, cosmic rays on 0.01% of the
pixels) is measured as `CpFlatMeasureTask` measures it: clipped mean, sigma and count of the whole
detector and of each amplifier, 3 sigma, at most 3 passes.  In one process:

- floor: the time to move 4 passes x 5 bytes per pixel (the float32 value and the good-pixel
  flag) at the speed numpy copies a 64 MiB array here (``numpy.copyto``), measured on the spot;
- ours: `sigma_clipped_region_stats`;
- astropy ``SigmaClip`` (``cenfunc="mean"``, ``stdfunc="std"``, ``maxiters=3``: the same rule)
  called on each region's good float32 pixels with ``masked=False``, then the mean, standard
  deviation and count of what it keeps;
- astropy ``sigma_clipped_stats`` on each region with the mask, float32, same rule;
- reference: the rule written plainly in float64 (``numpy`` boolean indexing, ``mean``, ``std``),
  the answers ours must equal to rounding.

Each is timed ``REPEATS`` times; the median is reported.  The answers are checked: ours against the
float64 reference (same counts, means and sigmas to 1e-12 of sigma), astropy's against it too
(astropy works in float32).
"""

from __future__ import annotations

__all__ = ["ClipStatsResult", "detector_flat", "run"]

import statistics
import warnings
from dataclasses import dataclass

import numpy as np

from lsst.cp.flatnorm.clipped_stats import sigma_clipped_region_stats

from .timing import elapsed, format_seconds

REPEATS = 5
_SHAPE = (4000, 4072)
_AMP = (2000, 509)
_PASSES, _BYTES_PER_PIXEL = 4, 5
_COPY_BYTES = 64 * 2**20


def detector_flat(shape: tuple[int, int], amp: tuple[int, int],
                  seed: int = 6) -> tuple[np.ndarray, np.ndarray, list[tuple[slice, slice]]]:
    """A float32 flat, its good pixels and its amplifier regions (see the module docstring)."""
    rng = np.random.default_rng(seed)
    regions = [(slice(y, y + amp[0]), slice(x, x + amp[1]))
               for y in range(0, shape[0], amp[0]) for x in range(0, shape[1], amp[1])]
    level = np.empty(shape)
    for region in regions:
        level[region] = 50_000.0 * rng.uniform(0.95, 1.05)
    image = rng.normal(level, np.sqrt(level)).astype(np.float32)
    hits = rng.random(shape) < 1e-4
    image[hits] += rng.exponential(20_000.0, hits.sum()).astype(np.float32)
    good = rng.random(shape) >= 0.01
    return image, good, regions


def copy_rate() -> float:
    """Bytes per second numpy copies a 64 MiB float32 array at (fastest of 10)."""
    source = np.ones(_COPY_BYTES // 4, dtype=np.float32)
    target = np.empty_like(source)
    best = min(elapsed(lambda: np.copyto(target, source))[0] for _ in range(10))
    return _COPY_BYTES / best


def reference(image: np.ndarray, good: np.ndarray, region: tuple[slice, slice],
              max_iter: int = 3) -> tuple[float, float, int]:
    """The rule written plainly in float64: (mean, sigma, N)."""
    values = image[region][good[region]].astype(np.float64)
    for _ in range(max_iter):
        if not values.std() > 0:
            break
        kept = values[np.abs(values - values.mean()) <= 3.0 * values.std()]
        if kept.size == values.size:
            break
        values = kept
    return float(values.mean()), float(values.std()), int(values.size)


def ours(image: np.ndarray, good: np.ndarray, regions: list[tuple[slice, slice]]) -> list[tuple]:
    stats = sigma_clipped_region_stats(image, good, regions, 3.0, 3)
    whole = (stats.whole_mean, stats.whole_sigma, stats.whole_n)
    return [whole] + list(zip(stats.mean, stats.sigma, stats.n))


def astropy_sigmaclip(image: np.ndarray, good: np.ndarray, regions: list[tuple[slice, slice]]) -> list[tuple]:
    from astropy.stats import SigmaClip

    clip = SigmaClip(sigma=3.0, maxiters=3, cenfunc="mean", stdfunc="std")
    results = []
    for region in [(slice(None), slice(None))] + regions:
        kept = clip(image[region][good[region]], masked=False, copy=False)
        results.append((float(kept.mean()), float(kept.std()), int(kept.size)))
    return results


def astropy_sigma_clipped_stats(image: np.ndarray, good: np.ndarray,
                                regions: list[tuple[slice, slice]]) -> list[tuple]:
    from astropy.stats import sigma_clipped_stats

    results = []
    for region in [(slice(None), slice(None))] + regions:
        mean, _, sigma = sigma_clipped_stats(image[region], mask=~good[region], sigma=3.0, maxiters=3,
                                             cenfunc="mean", stdfunc="std")
        results.append((float(mean), float(sigma), -1))  # it does not say how many pixels it kept
    return results


@dataclass
class ClipStatsResult:
    """Timings (seconds) and agreement of the clipped-statistics benchmark."""

    shape: tuple[int, int]
    copy_rate: float
    times: dict[str, list[float]]
    differences: dict[str, tuple[float, int]]
    """Per method: the largest |mean - reference| / sigma, and the number of sets whose count differs."""
    quick: bool = False

    @property
    def floor(self) -> float:
        return _PASSES * _BYTES_PER_PIXEL * self.shape[0] * self.shape[1] / self.copy_rate

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def report(self) -> list[str]:
        """Lines summarising the benchmark, with the goals met or missed."""
        label = f"clipstats {self.shape[1]}x{self.shape[0]}"
        floor, mine = self.floor, self.median("ours")
        fastest = min(("astropy SigmaClip", "astropy sigma_clipped_stats"), key=self.median)
        lines = [f"{label}: floor {format_seconds(floor)} (4 passes x 5 B/pixel; numpy copies at "
                 f"{self.copy_rate / 1e9:.1f} GB/s, {2 * self.copy_rate / 1e9:.1f} GB/s read + written)"]
        for name in self.times:
            agreement = ""
            if name in self.differences:
                difference, counts = self.differences[name]
                agreement = (f"; vs float64 reference: max |mean difference| / sigma {difference:.1e}"
                             + (f", counts differ in {counts} of 17 sets" if counts >= 0 else ""))
            lines.append(f"{label}: {name} {format_seconds(self.median(name))} = "
                         f"{self.median(name) / floor:.1f}x the floor (median of {len(self.times[name])})"
                         f"{agreement}")
        lines.append(f"{label}: ours / floor {mine / floor:.1f}x (goal <= 5x: "
                     f"{_verdict(mine <= 5 * floor, self.quick)}); "
                     f"{fastest} / ours {self.median(fastest) / mine:.1f}x (astropy's fastest; goal >= 2x: "
                     f"{_verdict(self.median(fastest) >= 2 * mine, self.quick)})")
        return lines


def _verdict(met: bool, quick: bool) -> str:
    if quick:
        return "not judged in a quick run"
    return "met" if met else "MISSED"


def _compare(results: list[tuple], expected: list[tuple]) -> tuple[float, int]:
    difference = max(abs(mean - ref_mean) / ref_sigma for (mean, _, _), (ref_mean, ref_sigma, _)
                     in zip(results, expected))
    if results[0][2] < 0:
        return difference, -1
    counts = sum(n != ref_n for (_, _, n), (_, _, ref_n) in zip(results, expected))
    return difference, counts


def run(quick: bool) -> list[ClipStatsResult]:
    """Run the benchmark on one LSSTCam-sized detector, or a small image if ``quick``."""
    shape, amp, repeats = ((256, 512), (128, 64), 1) if quick else (_SHAPE, _AMP, REPEATS)
    image, good, regions = detector_flat(shape, amp)
    rate = copy_rate()
    methods = {"ours": ours, "astropy SigmaClip": astropy_sigmaclip,
               "astropy sigma_clipped_stats": astropy_sigma_clipped_stats}
    times: dict[str, list[float]] = {name: [] for name in ["reference", *methods]}
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            for name, function in methods.items():
                seconds, results[name] = elapsed(lambda: function(image, good, regions))
                times[name].append(seconds)
        seconds, expected = elapsed(lambda: [reference(image, good, region)
                                             for region in [(slice(None), slice(None))] + regions])
        times["reference"].append(seconds)
    differences = {name: _compare(result, expected) for name, result in results.items()}
    return [ClipStatsResult(shape=shape, copy_rate=rate, times=times, differences=differences, quick=quick)]
