# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The statistics and tests of flat verification, on plain arrays (no butler).

A new flat is applied to post-ISR flats (its own inputs or independent ones) as ISR's flat
correction does, ``r = x / F``, and the corrected images are measured and tested at four levels:

- amplifier: the clipped mean and noise; cp_verify's noise test ``NOISE <= sqrt(MEAN)`` (in
  electrons), which Poisson plus read noise cannot pass on an independent image (see
  `cp_verify_noise_test`), and the test against the noise predicted from the variance planes
  (`predicted_variance`); the offset of the amplifier's mean from its detector's median amplifier;
- detector: cp_verify's ``SCATTER``, the standard deviation of the amplifier means over their mean;
- exposure: the scatter of the detector means, absolute (cp_verify's column) and relative; the
  signal-to-noise of the detectors (too low to help; lamp off); the saturated fraction; the
  large-scale pattern an exposure has and the others lack (`pattern_rms`);
- the normalization's own evidence: each entry's residual against the ``G x E`` model over its
  stated uncertainty (`normalization_pulls`) and the fraction of rejected or invalid entries.

The thresholds are arguments: the tasks' configs hold their documented defaults.
"""

from __future__ import annotations

__all__ = [
    "STATISTICS",
    "Thresholds",
    "amp_offsets",
    "amplifier_tests",
    "correct_by_flat",
    "cp_verify_noise_test",
    "detector_tests",
    "INPUT_QUALITY_TESTS",
    "exposure_tests",
    "keyword_statistics",
    "measure_amplifiers",
    "normalization_pulls",
    "pattern_rms",
    "predicted_variance",
    "relative_scatter",
    "run_verdicts",
]

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .clipped_stats import SigmaClippedStats, sigma_clipped_region_stats

FloatArray = npt.NDArray[np.floating]
BoolArray = npt.NDArray[np.bool_]


STATISTICS = ("MEAN", "MEDIAN", "STDEV", "MEANCLIP", "STDEVCLIP")
"""Statistics the keyword fields may name (afw's names): plain mean and median, sample standard
deviation, and the sigma-clipped mean and (population) standard deviation."""


def correct_by_flat(image: FloatArray, flat: FloatArray) -> tuple[FloatArray, BoolArray]:
    """Divide an image by a flat as ISR's flat correction does, keeping the image's level.

    The flats of this package average about 1 over the camera, so the division keeps the level of
    the image; a pixel whose flat is not positive or not finite has no corrected value.

    Parameters
    ----------
    image, flat : `numpy.ndarray`, (ny, nx)
        Post-ISR image and flat.

    Returns
    -------
    corrected : `numpy.ndarray`, float64
        ``image / flat``; NaN where the flat is unusable.
    usable : `numpy.ndarray` of `bool`
        Pixels whose flat is finite and positive.
    """
    if image.shape != flat.shape:
        raise ValueError(f"Image shape {image.shape} differs from flat shape {flat.shape}.")
    usable = np.isfinite(flat) & (flat > 0)
    corrected = np.full(image.shape, np.nan)
    np.divide(image, flat, out=corrected, where=usable)
    return corrected, usable


def predicted_variance(
    image_variance: FloatArray,
    flat: FloatArray,
    flat_variance: FloatArray,
    corrected: FloatArray,
    n_flat_inputs: int | None,
) -> FloatArray:
    """Variance of ``r = x / F`` predicted from the image's and the flat's variance planes.

    To first order, ``Var r = Var x / F^2 + r^2 Var F / F^2 - 2 r Cov(x, F) / F^2``.  When the image
    is one of the ``N`` inputs the flat averaged, ``F`` holds ``x / E`` with weight ``1 / N``, so
    ``Cov(x, F) = Var x / (N E)`` and, with ``r ~ E``, the last term is ``-2 Var x / (N F^2)``: the
    flat's own inputs look less noisy than independent images.

    Parameters
    ----------
    image_variance : `numpy.ndarray`
        Variance plane of the image (Poisson plus read noise, in the image's units squared).
    flat, flat_variance : `numpy.ndarray`
        The flat and its variance plane.
    corrected : `numpy.ndarray`
        ``image / flat`` (`correct_by_flat`).
    n_flat_inputs : `int` or `None`
        Number of inputs the flat averaged if the image is one of them, else `None`.

    Returns
    -------
    variance : `numpy.ndarray`, float64
        NaN where the flat is unusable.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        own = image_variance / flat.astype(np.float64) ** 2
        if n_flat_inputs:
            own = own * (1.0 - 2.0 / n_flat_inputs)
        return own + corrected**2 * flat_variance / flat.astype(np.float64) ** 2


def keyword_statistics(values: FloatArray, keywords: Mapping[str, str], n_sigma: float,
                       max_iter: int) -> dict[str, float]:
    """Compute the statistics a keyword field asks for (``{output name: statistic}``).

    Parameters
    ----------
    values : `numpy.ndarray`
        The values to measure (one dimension, all usable).
    keywords : `~collections.abc.Mapping` [`str`, `str`]
        Output name and statistic (one of `STATISTICS`), e.g. cp_verify's
        ``{"MEAN": "MEAN", "NOISE": "STDEVCLIP"}``.
    n_sigma : `float`
        Clipping threshold of the clipped statistics.
    max_iter : `int`
        Clipping passes of the clipped statistics.

    Returns
    -------
    statistics : `dict` [`str`, `float`]
        NaN for every statistic of an empty ``values`` (and STDEV of a single value).

    Raises
    ------
    ValueError
        Raised if a statistic is not one of `STATISTICS`.
    """
    unknown = sorted(set(keywords.values()) - set(STATISTICS))
    if unknown:
        raise ValueError(f"Unknown statistics {unknown}; known are {list(STATISTICS)}.")
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return {name: float("nan") for name in keywords}
    clipped = None
    if {"MEANCLIP", "STDEVCLIP"} & set(keywords.values()):
        clipped = sigma_clipped_region_stats(values[np.newaxis, :], np.ones((1, values.size), dtype=bool),
                                             [], n_sigma, max_iter)

    def clipped_stats() -> SigmaClippedStats:
        assert clipped is not None  # computed above whenever a clipped statistic is asked for
        return clipped

    plain = {
        "MEAN": lambda: float(values.mean()),
        "MEDIAN": lambda: float(np.median(values)),
        "STDEV": lambda: float(values.std(ddof=1)) if values.size > 1 else float("nan"),
        "MEANCLIP": lambda: float(clipped_stats().whole_mean),
        "STDEVCLIP": lambda: float(clipped_stats().whole_sigma),
    }
    return {name: plain[statistic]() for name, statistic in keywords.items()}


def measure_amplifiers(
    corrected: FloatArray,
    variance: FloatArray,
    good: BoolArray,
    saturated: BoolArray,
    regions: Sequence[tuple[slice, slice]],
    keywords: Mapping[str, str],
    n_sigma: float,
    max_iter: int,
) -> list[dict[str, float]]:
    """Measure every amplifier of a flat-corrected image.

    Parameters
    ----------
    corrected : `numpy.ndarray`, (ny, nx)
        Flat-corrected image.
    variance : `numpy.ndarray`, (ny, nx)
        Its predicted variance (`predicted_variance`).
    good : `numpy.ndarray` of `bool`
        Pixels the statistics may use (outside the masked planes, with a usable flat).
    saturated : `numpy.ndarray` of `bool`
        Pixels flagged saturated (counted whatever ``good`` says).
    regions : `~collections.abc.Sequence` [`tuple` [`slice`, `slice`]]
        ``(y, x)`` slices of each amplifier.
    keywords : `~collections.abc.Mapping` [`str`, `str`]
        The statistics to compute (`keyword_statistics`; cp_verify's ``imageStatKeywords``).
    n_sigma : `float`
        Clipping threshold (cp_verify's ``numSigmaClip``).
    max_iter : `int`
        Clipping passes (cp_verify's ``clipMaxIter``).

    Returns
    -------
    measurements : `list` [`dict` [`str`, `float`]]
        For each region in order: the keyword statistics, ``NOISE_PREDICTED`` (square root of the
        mean predicted variance of its usable pixels), ``N_PIXELS`` (usable pixels) and
        ``SATURATED_FRACTION``.
    """
    usable = good & np.isfinite(variance) & np.isfinite(corrected)
    measurements = []
    for region in regions:
        region_usable = usable[region]
        statistics = keyword_statistics(corrected[region][region_usable], keywords, n_sigma, max_iter)
        region_variance = variance[region][region_usable]
        statistics["NOISE_PREDICTED"] = (float(np.sqrt(region_variance.mean())) if region_variance.size
                                         else float("nan"))
        statistics["N_PIXELS"] = int(region_usable.sum())
        statistics["SATURATED_FRACTION"] = float(saturated[region].mean())
        measurements.append(statistics)
    return measurements


def cp_verify_noise_test(mean: float, noise: float, gain: float) -> bool:
    """cp_verify's amplifier noise test: ``NOISE <= sqrt(MEAN)`` with both in electrons.

    For an image of ``S`` electrons with read noise ``s_r`` the noise is at least
    ``sqrt(S + s_r^2)``, above ``sqrt(S)``: an independent image never passes (10000 e- with 5 e-
    read noise has 100.12 e- of noise against a limit of 100), and the flat's own noise adds to
    that.  Only the flat's own inputs pass, by their correlation with the flat (`predicted_variance`).

    Parameters
    ----------
    mean, noise : `float`
        Amplifier mean and noise in the image's units.
    gain : `float`
        Electrons per unit of the image (1 for images in electrons).
    """
    return bool(noise * gain <= np.sqrt(mean * gain))


def amp_offsets(amp_means: Sequence[float]) -> FloatArray:
    """Each amplifier mean over the median of its detector's amplifier means, minus 1.

    After a good flat every amplifier of a detector has the same level; an amplifier whose
    response stepped since the flat's inputs were taken stands out by its step.
    """
    values = np.asarray(amp_means, dtype=float)
    median = np.nanmedian(values) if np.isfinite(values).any() else np.nan
    return values / median - 1.0


def relative_scatter(means: Sequence[float]) -> tuple[float, float]:
    """The population standard deviation of some means (cp_verify's exposure ``SCATTER``, which
    depends on the flux) and the same over their mean (which does not).

    Returns
    -------
    scatter, relative : `float`
        NaN if no mean is finite.
    """
    values = np.asarray(means, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    scatter = float(values.std())
    return scatter, scatter / float(values.mean())


def pattern_rms(levels: FloatArray) -> FloatArray:
    """The rms large-scale pattern of each exposure that the other exposures lack.

    Each exposure's amplifier levels are divided by their median; the reference pattern is the
    median of that over exposures; the pattern of an exposure is the rms of its levels over the
    reference, minus 1.  A pattern every exposure shares (what the flat did not remove) cancels;
    a dome light left on or a shutter problem in one exposure stays.

    Parameters
    ----------
    levels : `numpy.ndarray`, (nExposures, nAmplifiers)
        Flat-corrected amplifier means; NaN where not measured.

    Returns
    -------
    rms : `numpy.ndarray`, (nExposures,)
        NaN for every exposure if fewer than three exposures are given (no reference).
    """
    levels = np.asarray(levels, dtype=float)
    if levels.shape[0] < 3:
        return np.full(levels.shape[0], np.nan)
    normalized = levels / np.nanmedian(levels, axis=1, keepdims=True)
    reference = np.nanmedian(normalized, axis=0, keepdims=True)
    residual = normalized / reference - 1.0
    return np.sqrt(np.nanmean(residual**2, axis=1))


def normalization_pulls(
    log_residual: FloatArray,
    n_pixels: FloatArray,
    scatter: float,
    exp_scale_err: FloatArray,
    det_scale_err: FloatArray,
) -> FloatArray:
    """Each normalization entry's log residual over its stated uncertainty.

    The normalization weights an entry by its pixel count ``w``, so its log level has the variance
    ``s^2 / w`` (``s`` the measured scatter per unit weight, the scale table's
    ``SCALE_ERR_SCATTER``); the model ``G E`` adds the scales' own variances
    (``exp_scale_err``, ``det_scale_err``, relative).  Adding them, rather than subtracting the
    model's share, makes the pull a little smaller than 1 in rms: a conservative test.

    Returns
    -------
    pulls : `numpy.ndarray`
        NaN where the uncertainty is not finite and positive.
    """
    variance = (scatter**2 / np.asarray(n_pixels, dtype=float) + np.asarray(exp_scale_err) ** 2
                + np.asarray(det_scale_err) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        pulls = np.asarray(log_residual, dtype=float) / np.sqrt(variance)
    pulls[~(np.isfinite(variance) & (variance > 0))] = np.nan
    return pulls


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Limits of the tests (the tasks' config fields of the same meaning give the defaults)."""

    max_noise_ratio: float = 1.1
    """Amplifier ``NOISE`` over ``NOISE_PREDICTED``."""
    max_amp_offset: float = 0.02
    """``|amplifier mean / detector median - 1|``."""
    max_detector_scatter: float = 0.05
    """cp_verify's detector ``SCATTER / MEAN``."""
    max_exposure_scatter: float = 0.05
    """cp_verify's exposure ``SCATTER`` (absolute, so it depends on the flux) and the relative one."""
    min_signal_to_noise: float = 50.0
    """Median over detectors of their mean over their noise (banzai refuses flats below 50)."""
    lamp_off_signal_to_noise: float = 5.0
    """Below this signal-to-noise the lamp was off (reported instead of the low signal-to-noise)."""
    max_saturated_fraction: float = 0.001
    """Largest fraction of saturated pixels of a detector."""
    max_pattern_rms: float = 0.005
    """rms of the exposure's own large-scale pattern (`pattern_rms`)."""
    max_pull: float = 5.0
    """Largest ``|log residual| / uncertainty`` of the normalization's used entries."""
    max_rejected_fraction: float = 0.05
    """Fraction of a detector's or an exposure's normalization entries rejected or invalid."""
    max_change_step: float = 0.005
    """``|amplifier level of new / previous flat over the detector's - 1|`` (`flat_change`)."""
    max_change_large_scale: float = 0.005
    """Largest ``|smoothed new / previous flat - 1|`` with the amplifiers levelled."""
    max_change_feature: float = 0.01
    """Largest departure of a bin of ``new / previous flat`` from its smoothed surroundings."""


def amplifier_tests(statistics: Mapping[str, float], offset: float, gain: float,
                    thresholds: Thresholds) -> dict[str, bool]:
    """The amplifier tests: ``NOISE`` (cp_verify's), ``NOISE_PREDICTED`` and ``AMP_OFFSET``.

    ``statistics`` has ``MEAN``, ``NOISE`` and ``NOISE_PREDICTED`` (`measure_amplifiers`).  A test
    of a missing statistic (NaN) fails, so an amplifier without usable pixels is reported.
    """
    mean, noise = statistics["MEAN"], statistics["NOISE"]
    return {
        "NOISE": cp_verify_noise_test(mean, noise, gain),
        "NOISE_PREDICTED": bool(noise <= thresholds.max_noise_ratio * statistics["NOISE_PREDICTED"]),
        "AMP_OFFSET": bool(abs(offset) <= thresholds.max_amp_offset),
    }


def detector_tests(mean: float, scatter: float, thresholds: Thresholds) -> dict[str, bool]:
    """cp_verify's detector test ``SCATTER``: ``SCATTER / MEAN <= max_detector_scatter``."""
    return {"SCATTER": bool(scatter / mean <= thresholds.max_detector_scatter)}


def exposure_tests(
    detector_means: Sequence[float],
    detector_noises: Sequence[float],
    saturated_fractions: Sequence[float],
    thresholds: Thresholds,
) -> tuple[dict[str, float], dict[str, bool]]:
    """The exposure statistics and tests.

    Parameters
    ----------
    detector_means, detector_noises : `~collections.abc.Sequence` [`float`]
        Mean and noise (median over its amplifiers) of each detector of the exposure.
    saturated_fractions : `~collections.abc.Sequence` [`float`]
        Saturated fraction of each detector.

    Returns
    -------
    statistics : `dict` [`str`, `float`]
        ``SCATTER`` (cp_verify's, absolute), ``REL_SCATTER``, ``SIGNAL_TO_NOISE``,
        ``SATURATED_FRACTION`` (largest of a detector).
    tests : `dict` [`str`, `bool`]
        ``SCATTER`` (cp_verify's), ``REL_SCATTER``, ``LAMP_OFF`` and ``LOW_SIGNAL_TO_NOISE``
        (one of them fails, not both) and ``SATURATED``.
    """
    scatter, relative = relative_scatter(detector_means)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.asarray(detector_means, dtype=float) / np.asarray(detector_noises, dtype=float)
    snr = float(np.nanmedian(ratios)) if np.isfinite(ratios).any() else float("nan")
    saturated = float(np.max(saturated_fractions)) if len(saturated_fractions) else 0.0
    lamp_on = bool(snr >= thresholds.lamp_off_signal_to_noise)
    statistics = {"SCATTER": scatter, "REL_SCATTER": relative, "SIGNAL_TO_NOISE": snr,
                  "SATURATED_FRACTION": saturated}
    tests = {
        "SCATTER": bool(scatter <= thresholds.max_exposure_scatter),
        "REL_SCATTER": bool(relative <= thresholds.max_exposure_scatter) or not lamp_on,
        "LAMP_OFF": lamp_on,
        "LOW_SIGNAL_TO_NOISE": bool(snr >= thresholds.min_signal_to_noise) or not lamp_on,
        "SATURATED": bool(saturated <= thresholds.max_saturated_fraction),
    }
    return statistics, tests


INPUT_QUALITY_TESTS = ("LAMP_OFF", "LOW_SIGNAL_TO_NOISE", "SATURATED", "PATTERN")
"""Exposure tests that blame the exposure: the detector failures of an exposure failing one of them
are not counted against its detectors."""


def run_verdicts(
    exposure_stats: Mapping[int, Mapping[str, Any]],
    scale_table: Any | None,
    thresholds: Thresholds,
) -> tuple[dict[int, list[str]], dict[int, list[str]], dict[str, Any]]:
    """Collect every failure of a run into the verdict of each detector and exposure.

    Parameters
    ----------
    exposure_stats : `~collections.abc.Mapping` [`int`, `dict`]
        Each exposure's statistics (``verifyFlatExpStats``: ``FAILURES``, ``VERIFY`` and
        ``DETECTORS``, each detector's ``FAILURES`` and amplifier ``MEAN``).
    scale_table : `astropy.table.Table` or `None`
        The normalization's scale table (``exposure``, ``detector``, ``flag``, ``log_residual``,
        ``n_pixels``, ``exp_scale_err``, ``det_scale_err``; ``SCALE_ERR_SCATTER`` in its meta);
        its tests are skipped if `None`.
    thresholds : `Thresholds`
        ``max_pattern_rms``, ``max_pull`` and ``max_rejected_fraction`` are used.

    Returns
    -------
    detectors, exposures : `dict` [`int`, `list` [`str`]]
        The failures of each detector and exposure.  A detector's failures in the exposures that
        pass the `INPUT_QUALITY_TESTS` are listed once each with the number of exposures they
        failed in; the failures of the flat's change since the previous flat (a detector's
        ``CHANGE`` ``FAILURES``, the flat's and not the exposures') once each.
    statistics : `dict` [`str`, `dict`]
        ``PATTERN_RMS`` of each exposure with the lamp on; ``CHANGE_APPLICABLE`` of each detector
        (whether a previous flat was found: without it the change tests are not applicable).
    """
    exposures = {int(exp): list(stats["FAILURES"]) for exp, stats in exposure_stats.items()}
    pattern = _pattern_failures(exposure_stats, thresholds.max_pattern_rms, exposures)
    detectors = _detector_failures(exposure_stats, exposures)
    applicable = _add_change_failures(exposure_stats, detectors)
    if scale_table is not None:
        by_detector, by_exposure = _normalization_failures(scale_table, thresholds)
        for target, found in ((detectors, by_detector), (exposures, by_exposure)):
            for key, failures in found.items():
                target.setdefault(key, []).extend(failures)
    return detectors, exposures, {"PATTERN_RMS": pattern, "CHANGE_APPLICABLE": applicable}


def _pattern_failures(exposure_stats: Mapping[int, Mapping[str, Any]], max_rms: float,
                      exposures: dict[int, list[str]]) -> dict[int, float]:
    """Test the pattern of every exposure with the lamp on, adding PATTERN to ``exposures``."""
    lit = sorted(int(exp) for exp, stats in exposure_stats.items()
                 if stats["VERIFY"]["EXP"]["LAMP_OFF"])
    keys = sorted({(int(det), amp) for exp in lit
                   for det, det_stats in exposure_stats[exp]["DETECTORS"].items()
                   for amp in det_stats["AMP"]})
    levels = np.array([[_amp_mean(exposure_stats[exp], key) for key in keys] for exp in lit]).reshape(
        len(lit), len(keys))
    pattern = {}
    for exp, rms in zip(lit, pattern_rms(levels)):
        pattern[exp] = float(rms)
        if rms > max_rms:
            exposures[exp].append("PATTERN")
    return pattern


def _amp_mean(stats: Mapping[str, Any], key: tuple[int, str]) -> float:
    detectors = stats["DETECTORS"]
    det_stats = detectors.get(key[0], detectors.get(str(key[0])))
    if det_stats is None or key[1] not in det_stats["AMP"]:
        return float("nan")
    return float(det_stats["AMP"][key[1]]["MEAN"])


def _detector_failures(exposure_stats: Mapping[int, Mapping[str, Any]],
                       exposures: Mapping[int, list[str]]) -> dict[int, list[str]]:
    """Each detector's failures over the exposures that pass the input-quality tests."""
    counts: dict[int, collections.Counter[str]] = {}
    n_exposures: dict[int, int] = {}
    for exp, stats in exposure_stats.items():
        blamed = any(test in INPUT_QUALITY_TESTS for test in exposures[int(exp)])
        for det, det_stats in stats["DETECTORS"].items():
            counter = counts.setdefault(int(det), collections.Counter())
            if not blamed:
                n_exposures[int(det)] = n_exposures.get(int(det), 0) + 1
                counter.update(det_stats["FAILURES"])
    return {det: [f"{failure} ({n} of {n_exposures[det]} exposures)"
                  for failure, n in sorted(counter.items())] for det, counter in counts.items()}


def _add_change_failures(exposure_stats: Mapping[int, Mapping[str, Any]],
                         detectors: dict[int, list[str]]) -> dict[int, bool]:
    """Add each detector's change failures, once whatever the number of exposures; return whether the
    change was tested for each detector."""
    applicable: dict[int, bool] = {}
    for stats in exposure_stats.values():
        for det, det_stats in stats["DETECTORS"].items():
            change = det_stats.get("CHANGE", {"APPLICABLE": False, "FAILURES": []})
            applicable[int(det)] = applicable.get(int(det), False) or bool(change["APPLICABLE"])
            failures = detectors.setdefault(int(det), [])
            failures.extend(failure for failure in change["FAILURES"] if failure not in failures)
    return applicable


def _normalization_failures(table: Any, thresholds: Thresholds
                            ) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """NORMALIZATION_REJECTED and NORMALIZATION_PULL of each detector and exposure of a scale table."""
    flags = np.asarray(table["flag"]).astype(str)
    bad = (flags == "REJECTED") | (flags == "INVALID")
    used = flags == "USED"
    residuals = np.asarray(table["log_residual"], dtype=float)
    weights = np.asarray(table["n_pixels"], dtype=float)
    scatter = table.meta.get("SCALE_ERR_SCATTER")
    if scatter is None:
        row_keys = zip(np.asarray(table["detector"])[used], np.asarray(table["amplifier"]).astype(str)[used])
        rows = {(int(det), amp) for det, amp in row_keys}
        n_parameters = len(rows) + len(np.unique(np.asarray(table["exposure"])[used])) - 1
        scatter = _scatter_per_unit_weight(residuals[used], weights[used], n_parameters)
    pulls = normalization_pulls(residuals, weights, float(scatter), np.asarray(table["exp_scale_err"]),
                                np.asarray(table["det_scale_err"]))
    pulls[~used] = np.nan
    found: list[dict[int, list[str]]] = []
    for name in ("detector", "exposure"):
        keys = np.asarray(table[name]).astype(np.int64)
        failures: dict[int, list[str]] = {}
        for key in np.unique(keys):
            selected = keys == key
            failures[int(key)] = _entry_failures(bad[selected], pulls[selected], thresholds)
        found.append(failures)
    return found[0], found[1]


def _scatter_per_unit_weight(residuals: FloatArray, weights: FloatArray, n_parameters: int) -> float:
    """The normalization's scatter per unit weight ``s`` (`lsst.cp.flatnorm.scale_uncertainty`), for a
    scale table whose metadata did not keep it.

    The normalization computes ``sqrt(sum w r^2 / (n - p))``; here the mean square is replaced by
    the square of 1.4826 times the median ``|r| sqrt(w)``, so that the one entry the test is after
    does not inflate the scale it is measured against.
    """
    dof = residuals.size - n_parameters
    if dof <= 0:
        return float("nan")
    robust = 1.4826 * float(np.median(np.abs(residuals) * np.sqrt(weights)))
    return robust * float(np.sqrt(residuals.size / dof))


def _entry_failures(bad: BoolArray, pulls: FloatArray, thresholds: Thresholds) -> list[str]:
    failures = []
    if bad.mean() > thresholds.max_rejected_fraction:
        failures.append(f"NORMALIZATION_REJECTED ({bad.sum()} of {bad.size} entries)")
    largest = float(np.nanmax(np.abs(pulls))) if np.isfinite(pulls).any() else 0.0
    if largest > thresholds.max_pull:
        failures.append(f"NORMALIZATION_PULL ({largest:.1f} sigma)")
    return failures
