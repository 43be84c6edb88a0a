# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Benchmark 5: the flat combination against astropy's ``sigma_clip`` and ccdproc's ``Combiner``.

A crop of 50 flats of an LSSTCam detector (4072 x 1000 pixels) is simulated with known truth: a
pixel response ``flat`` with 2% scatter, lamp levels of 20,000-30,000 electrons (gain 1.5, read
noise 5 electrons), Poisson noise, cosmic rays on 0.2% of the input pixels with amplitudes from 1
to 10,000 times the pixel's noise (log-uniform), and 0.1% of the input pixels masked.  The inputs
are divided by their levels, as the flat combination divides them by their exposure scales, and
their variance planes are computed from the noisy values, as ISR computes them.  In one process:

- ours: `combine_stack` in 200-row bands, as `CpFlatCombineTask` calls it with its default
  ``subregionSize`` (MEANCLIP, 3 sigma, 3 passes; the variance from the inputs' spread, as with
  five inputs or more);
- astropy, three ways: ``sigma_clip`` along the input axis (3 sigma, ``maxiters=3``, standard
  deviation) on the masked cube with astropy's default median centre, then the mean of what it kept;
  and on the cube with NaN at the masked inputs (``masked=False``; astropy uses bottleneck when it
  is installed, as the bench extra does), with the median and with the mean centre, then the NaN
  mean.  The NaN cube is made beforehand (not timed).  The fastest of the three is the peer;
- ccdproc (if installed: the ``bench`` extra): ``Combiner`` as its documentation shows it, on the
  unscaled inputs with ``scaling`` set to the inverse levels, ``sigma_clipping(low_thresh=3,
  high_thresh=3, func=np.ma.median)`` (its ``maxiters`` argument raises, so one pass) and
  ``average_combine()``.

Time is the best of the repeats (the run least disturbed by other work on a shared machine);
memory is the ``tracemalloc`` peak of the call (what it allocates beyond its inputs, which are made
beforehand), in a separate, untimed call.  Quality, on each method's flat against the truth:

- inputs kept per pixel (the mean over pixels), beside the valid inputs per pixel;
- the rms of the pixel pulls ``(flat - truth) / sigma_P``, where ``sigma_P`` is the standard
  deviation of the plain mean of the pixel's valid inputs without cosmic rays (the Poisson
  expectation);
- the pixels with a cosmic ray in a valid input whose pull is beyond 5.

A second, smaller crop with 20 inputs repeats the quality comparison.

The floor is the time to read the input planes once (4 + 4 + 1 bytes per input pixel: value,
variance, valid flag) at the speed numpy copies a 64 MiB array, measured on the spot
(`bench.clipstats.copy_rate`).  A sweep over 3, 5, 10, 20 and 50 inputs on one 200-row band times
ours against astropy's NaN cube with the mean centre (the fastest astropy path), per input, with the
quality of both at each number.
"""

from __future__ import annotations

__all__ = ["CombineData", "CombineResult", "QualityResult", "simulate_stack", "quality", "run"]

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lsst.cp.flatnorm.combine_stack import combine_stack

from .clipstats import copy_rate
from .timing import elapsed, format_seconds, traced_peak

_BAND_ROWS = 200  # CpFlatCombineTask's default subregionSize height
_GAIN = 1.5
_READ_NOISE = 5.0
_LEVELS = (20_000.0, 30_000.0)
_CR_FRACTION = 2e-3
_CR_RANGE = (1.0, 1e4)  # cosmic-ray amplitudes, in units of the pixel's noise
_MASKED_FRACTION = 1e-3
_PULL_LIMIT = 5.0
_BYTES_PER_INPUT_PIXEL = 4 + 4 + 1  # float32 value and variance, bool valid flag
_SWEEP_INPUTS = (3, 5, 10, 20, 50)
_SWEEP_PEER = "astropy NaN cube mean"


@dataclass
class CombineData:
    """A simulated stack of scaled flats and its truth."""

    values: np.ndarray
    """Scaled inputs (float32), (n_inputs, ny, nx)."""
    variances: np.ndarray
    """Their variance planes (float32), from the noisy values as ISR computes them."""
    valid: np.ndarray
    """Inputs not masked."""
    levels: np.ndarray
    """Lamp level of each input (what it was divided by)."""
    flat: np.ndarray
    """True response of each pixel."""
    cosmic_rays: np.ndarray
    """Input pixels hit by a cosmic ray."""
    true_variances: np.ndarray
    """The inputs' true variances (float32), for the Poisson expectation."""


def simulate_stack(n_inputs: int, shape: tuple[int, int], seed: int = 16) -> CombineData:
    """Simulate ``n_inputs`` scaled flats of ``shape`` pixels (see the module docstring)."""
    rng = np.random.default_rng(seed)
    flat = (1.0 + 0.02 * rng.standard_normal(shape)).astype(np.float32)
    levels = rng.uniform(*_LEVELS, n_inputs)
    values = np.empty((n_inputs,) + shape, dtype=np.float32)
    variances = np.empty_like(values)
    true_variances = np.empty_like(values)
    cosmic_rays = np.zeros(values.shape, dtype=bool)
    for i, level in enumerate(levels):  # one input at a time: float64 temporaries of one image
        signal = flat * level
        true_variance = signal / _GAIN + _READ_NOISE**2
        raw = signal + np.sqrt(true_variance) * rng.standard_normal(shape)
        hits = rng.random(shape) < _CR_FRACTION
        raw[hits] += np.exp(rng.uniform(*np.log(_CR_RANGE), hits.sum())) * np.sqrt(true_variance[hits])
        cosmic_rays[i] = hits
        values[i] = raw / level
        variances[i] = (np.maximum(raw, 0.0) / _GAIN + _READ_NOISE**2) / level**2
        true_variances[i] = true_variance / level**2
    valid = rng.random(values.shape) >= _MASKED_FRACTION
    return CombineData(values=values, variances=variances, valid=valid, levels=levels, flat=flat,
                       cosmic_rays=cosmic_rays, true_variances=true_variances)


def ours(data: CombineData) -> tuple[np.ndarray, np.ndarray]:
    """`combine_stack` in bands of rows, as the combine task calls it: (flat, inputs kept).

    The bands are slices of the stack, which `combine_stack` copies to contiguous arrays (the task
    reads each tile into contiguous arrays); a single band's results are returned as they are.
    """
    images, kept = [], []
    for top in range(0, data.values.shape[1], _BAND_ROWS):
        band = (slice(None), slice(top, top + _BAND_ROWS))
        result = combine_stack(data.values[band], data.variances[band], data.valid[band],
                               n_sigma=3.0, n_iter=3, variance_from_inputs=False)
        images.append(result.image)
        kept.append(result.n_used)
    if len(images) == 1:
        return images[0], kept[0]
    return np.concatenate(images), np.concatenate(kept)


def astropy_masked(data: CombineData) -> tuple[np.ndarray, np.ndarray]:
    """astropy's ``sigma_clip`` on the masked cube (median centre), then the mean: (flat, inputs kept)."""
    from astropy.stats import sigma_clip

    clipped = sigma_clip(np.ma.masked_array(data.values, mask=~data.valid), sigma=3.0, maxiters=3, axis=0,
                         cenfunc="median", stdfunc="std")
    return clipped.mean(axis=0).filled(np.nan), (~np.ma.getmaskarray(clipped)).sum(axis=0)


def nan_cube(data: CombineData) -> np.ndarray:
    """The inputs with NaN where they are masked: astropy's fastest input."""
    return np.where(data.valid, data.values, np.float32(np.nan))


def astropy_nan(cube: np.ndarray, centre: str) -> tuple[np.ndarray, np.ndarray]:
    """astropy's ``sigma_clip`` on a NaN cube (``masked=False``), then the NaN mean: (flat, kept)."""
    from astropy.stats import sigma_clip

    clipped = sigma_clip(cube, sigma=3.0, maxiters=3, axis=0, cenfunc=centre, stdfunc="std", masked=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        return np.nanmean(clipped, axis=0), np.isfinite(clipped).sum(axis=0)


def ccdproc_combiner(data: CombineData) -> tuple[np.ndarray, np.ndarray]:
    """ccdproc's ``Combiner`` as documented, on the unscaled inputs: (flat, inputs kept)."""
    from astropy.nddata import CCDData
    from ccdproc import Combiner

    ccds = [CCDData(data.values[i] * np.float32(level), mask=~data.valid[i], unit="electron")
            for i, level in enumerate(data.levels)]
    combiner = Combiner(ccds)
    combiner.scaling = 1.0 / data.levels
    combiner.sigma_clipping(low_thresh=3.0, high_thresh=3.0, func=np.ma.median)
    flat = combiner.average_combine()
    return np.asarray(flat.data), (~combiner.data_arr.mask).sum(axis=0)


def ccdproc_maxiters_error() -> str | None:
    """What ccdproc says when asked for three clipping passes (None if it accepts them)."""
    from astropy.nddata import CCDData
    from ccdproc import Combiner

    combiner = Combiner([CCDData(np.ones((2, 2)), unit="electron") for _ in range(3)])
    try:
        combiner.sigma_clipping(low_thresh=3.0, high_thresh=3.0, func=np.ma.median, maxiters=3)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


@dataclass
class QualityResult:
    """Quality of one method's flat against the truth."""

    kept: float
    """Inputs kept per pixel (mean over pixels)."""
    valid: float
    """Valid inputs per pixel."""
    pull_rms: float
    leaked: int
    """Pixels with a cosmic ray in a valid input whose pull is beyond 5."""
    max_cr_pull: float


def quality(data: CombineData, flat: np.ndarray, kept: np.ndarray) -> QualityResult:
    """Compare a combined flat with the truth (see the module docstring)."""
    good = data.valid & ~data.cosmic_rays
    true_variance = np.where(good, data.true_variances, 0.0).sum(axis=0, dtype=np.float64)
    expected = np.sqrt(true_variance) / good.sum(axis=0)
    pull = (flat - data.flat) / expected
    hit = (data.cosmic_rays & data.valid).any(axis=0)
    return QualityResult(kept=float(kept.mean()), valid=float(data.valid.sum(axis=0).mean()),
                         pull_rms=float(np.sqrt(np.mean(np.square(pull)))),
                         leaked=int((np.abs(pull[hit]) > _PULL_LIMIT).sum()),
                         max_cr_pull=float(np.abs(pull[hit]).max(initial=0.0)))


@dataclass
class _Method:
    name: str
    seconds: list[float] = field(default_factory=list)
    peak: int = 0
    quality: QualityResult | None = None

    @property
    def best(self) -> float:
        return min(self.seconds)


@dataclass
class SweepPoint:
    """Ours against astropy's NaN cube with the mean centre, at one number of inputs."""

    n_inputs: int
    ours: float
    astropy: float
    floor: float
    ours_quality: QualityResult
    astropy_quality: QualityResult


@dataclass
class CombineResult:
    """Timings, memory peaks and quality of the combine benchmark."""

    shape: tuple[int, int, int]
    methods: dict[str, _Method]
    small_quality: dict[str, QualityResult]
    small_inputs: int
    skipped: str | None
    ccdproc_maxiters: str | None
    copy_rate: float
    sweep: list[SweepPoint]
    sweep_shape: tuple[int, int]
    quick: bool = False

    @property
    def floor(self) -> float:
        """Seconds to read the input planes once at the copy rate measured on the spot."""
        n, ny, nx = self.shape
        return n * ny * nx * _BYTES_PER_INPUT_PIXEL / self.copy_rate

    def fastest_astropy(self) -> _Method:
        peers = [method for name, method in self.methods.items() if name.startswith("astropy")]
        return min(peers, key=lambda method: method.best)

    def report(self) -> list[str]:
        """Lines summarising the benchmark, with the goals met or missed."""
        n, ny, nx = self.shape
        label = f"combine {nx}x{ny}x{n}"
        mine, astropy, lines = self.methods["ours"], self.fastest_astropy(), []
        for name, method in self.methods.items():
            lines.append(f"{label}: {name} {format_seconds(method.best)} (best of "
                         f"{len(method.seconds)}), memory peak {method.peak / 2**20:.0f} MiB")
        floor_ratio = mine.best / self.floor
        lines.append(f"{label}: ours = {floor_ratio:.1f}x the floor {format_seconds(self.floor)} (reading "
                     f"{_BYTES_PER_INPUT_PIXEL} B per input pixel once; numpy copies at "
                     f"{self.copy_rate / 1e9:.1f} GB/s) "
                     f"(goal <= 10x: {_verdict(floor_ratio <= 10, self.quick)})")
        speed = astropy.best / mine.best
        memory = mine.peak / astropy.peak
        lines.append(f"{label}: speed ratio astropy / ours {speed:.1f}x against astropy's fastest path, "
                     f"{astropy.name} (goal >= 3x: {_verdict(speed >= 3, self.quick)}); "
                     f"memory ours / astropy {memory:.3f} = 1/{1 / memory:.0f} "
                     f"(goal <= 1/4: {_verdict(memory <= 0.25, self.quick)})")
        if "ccdproc" in self.methods:
            ccdproc = self.methods["ccdproc"]
            lines.append(f"{label}: speed ratio ccdproc / ours {ccdproc.best / mine.best:.1f}x; "
                         f"memory ours / ccdproc 1/{ccdproc.peak / mine.peak:.0f}; ccdproc's "
                         f"sigma_clipping(maxiters=3) raises {self.ccdproc_maxiters}")
        else:
            lines.append(f"{label}: ccdproc skipped: {self.skipped}")
        lines += self._sweep_lines()
        qualities = {name: m.quality for name, m in self.methods.items() if m.quality is not None}
        lines += _quality_lines(label, qualities, astropy.name, self.quick)
        lines += _quality_lines(f"combine {nx}x{min(ny, _BAND_ROWS)}x{self.small_inputs}", self.small_quality,
                                astropy.name, self.quick)
        return lines

    def _sweep_lines(self) -> list[str]:
        ny, nx = self.sweep_shape
        last = self.sweep[-1]
        per_input_at_most = last.ours / last.n_inputs
        lines = []
        for point in self.sweep:
            speed = point.astropy / point.ours
            per_input = point.ours / point.n_inputs
            lines.append(f"combine sweep {nx}x{ny}x{point.n_inputs}: ours {format_seconds(point.ours)} "
                         f"({format_seconds(per_input)} per input, "
                         f"{point.ours / point.floor:.1f}x the floor), "
                         f"astropy NaN cube mean centre {format_seconds(point.astropy)}: speed ratio "
                         f"{speed:.1f}x (goal >= 3x: {_verdict(speed >= 3, self.quick)}); per input "
                         f"<= at {last.n_inputs} inputs: "
                         f"{_verdict(per_input <= 1.05 * per_input_at_most, self.quick)}")
            lines += _quality_lines(f"combine sweep {nx}x{ny}x{point.n_inputs}",
                                    {"ours": point.ours_quality, _SWEEP_PEER: point.astropy_quality},
                                    _SWEEP_PEER, self.quick)
        return lines


def _quality_lines(label: str, results: dict[str, QualityResult], peer: str, quick: bool) -> list[str]:
    ours_, astropy = results["ours"], results[peer]
    lines = [f"{label}: quality {name}: inputs kept per pixel {q.kept:.4f} of {q.valid:.4f} valid, pull rms "
             f"{q.pull_rms:.4f}, cosmic-ray pixels beyond {_PULL_LIMIT:.0f} sigma {q.leaked} (largest pull "
             f"{q.max_cr_pull:.1f})" for name, q in results.items()]
    lines.append(f"{label}: quality goals: kept >= astropy's ({ours_.kept:.4f} vs {astropy.kept:.4f}: "
                 f"{_verdict(ours_.kept >= astropy.kept, quick)}; {peer}), pull rms within 1% of Poisson "
                 f"({ours_.pull_rms:.4f}: {_verdict(ours_.pull_rms <= 1.01, quick)}; astropy "
                 f"{astropy.pull_rms:.4f}), no cosmic ray beyond {_PULL_LIMIT:.0f} sigma ({ours_.leaked}: "
                 f"{_verdict(ours_.leaked == 0, quick)})")
    return lines


def _verdict(met: bool, quick: bool = False) -> str:
    if quick:
        return "not judged in a quick run"
    return "met" if met else "MISSED"


def _methods(data: CombineData) -> tuple[dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]], str | None]:
    cube = nan_cube(data)
    methods: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
        "ours": lambda: ours(data),
        "astropy masked median": lambda: astropy_masked(data),
        "astropy NaN cube median": lambda: astropy_nan(cube, "median"),
        "astropy NaN cube mean": lambda: astropy_nan(cube, "mean"),
    }
    try:
        import ccdproc  # noqa: F401
    except ImportError as error:
        return methods, f"not installed ({error}); pip install -e '.[bench]'"
    methods["ccdproc"] = lambda: ccdproc_combiner(data)
    return methods, None


def _best(function: Callable[[], object], repeats: int) -> float:
    return min(elapsed(function)[0] for _ in range(repeats))


def sweep(shape: tuple[int, int], rate: float, repeats: int) -> list[SweepPoint]:
    """Ours and astropy's fastest path on ``shape`` at each number of inputs of the sweep."""
    points = []
    for n_inputs in _SWEEP_INPUTS:
        data = simulate_stack(n_inputs, shape, seed=n_inputs)
        cube = nan_cube(data)
        points.append(SweepPoint(n_inputs=n_inputs, ours=_best(lambda: ours(data), repeats),
                                 astropy=_best(lambda: astropy_nan(cube, "mean"), repeats),
                                 floor=n_inputs * shape[0] * shape[1] * _BYTES_PER_INPUT_PIXEL / rate,
                                 ours_quality=quality(data, *ours(data)),
                                 astropy_quality=quality(data, *astropy_nan(cube, "mean"))))
    return points


def run(quick: bool) -> list[CombineResult]:
    """Run the combine benchmark on a 4072 x 1000 crop of 50 inputs, or a small one if ``quick``."""
    n_inputs, shape, small_inputs, repeats = (12, (64, 512), 20, 1) if quick else (50, (1000, 4072), 20, 3)
    data = simulate_stack(n_inputs, shape)
    ours(simulate_stack(3, (2, 2)))  # compile the kernel, or load it from numba's cache, before timing
    functions, skipped = _methods(data)
    methods = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy and ccdproc warn about all-masked pixels
        for name, function in functions.items():
            method = methods[name] = _Method(name)
            for _ in range(1 if name in ("ccdproc", "astropy masked median") else repeats):
                seconds, (flat, kept) = elapsed(function)
                method.seconds.append(seconds)
            method.quality = quality(data, flat, kept)
            method.peak = traced_peak(function)
        small = simulate_stack(small_inputs, (min(shape[0], _BAND_ROWS), shape[1]), seed=17)
        small_functions, _ = _methods(small)
        small_quality = {name: quality(small, *function()) for name, function in small_functions.items()}
        rate = copy_rate()
        points = sweep((min(shape[0], _BAND_ROWS), shape[1]), rate, repeats)
    maxiters = ccdproc_maxiters_error() if skipped is None else None
    return [CombineResult(shape=(n_inputs,) + shape, methods=methods, small_quality=small_quality,
                          small_inputs=small_inputs, skipped=skipped, ccdproc_maxiters=maxiters,
                          copy_rate=rate, sweep=points, sweep_shape=(min(shape[0], _BAND_ROWS), shape[1]),
                          quick=quick)]
