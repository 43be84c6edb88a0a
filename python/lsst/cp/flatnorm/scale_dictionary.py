# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The ``cpFlatNormalizeScales`` dictionary: cp_pipe's layout of the normalization's scales, both ways.

The layout is::

    {"expScale": {detector: {amplifier: {exposure: E}}},
     "detScale": {detector: G}}                    # DETECTOR level
     "detScale": {detector: {amplifier: G}}}       # AMP level
     "flags": {detector: "NO_VALID_ENTRY"}         # only if some row has no valid entry; DETECTOR
     "flags": {detector: {amplifier: "NO_VALID_ENTRY"}}   # ... AMP level
     "exposureFlags": {exposure: "NO_VALID_ENTRY"} # only if some exposure has no valid entry

``expScale`` repeats the exposure scale E of an exposure under every amplifier of every detector,
because cp_pipe's combine looks it up per amplifier; when entries are omitted, some exposures are
absent under some amplifiers.  With colour terms (`lsst.cp.flatnorm.colour_terms`) the scale under
a detector's (DETECTOR level) or an amplifier's (AMP level) entries is ``E * exp(sum_k u_k v_k)``,
the exposure scale for that row's colour response, so the same exposure's entries differ by row.
The normalization task writes the dictionary with `build_scale_dictionary`; the combine task and
the simulation read it with the other functions.

``flags`` says why a row's scale is missing: a detector (DETECTOR level) or amplifier (AMP level)
none of whose entries was valid has a NaN ``detScale`` (the honest value: nothing measured it), and
``flags`` lists it, under the same keys as ``detScale``, with the reason ``NO_VALID_ENTRY`` (its
entries are flagged INVALID in the scale table).  The entry is written only when some row has such
a reason, so a clean solution's dictionary has cp_pipe's two keys and nothing else; cp_pipe's
readers index ``expScale`` and ``detScale`` by key and never see it.  Read it with `row_flags`.

``exposureFlags`` lists the exposures none of whose entries was valid (an image with no finite or
no positive pixel, say): they are left out of the solve and out of ``expScale`` altogether, so that
the combine skips them as it skips any exposure without a usable scale, and the other exposures'
scales and flats are made.  It too is written only when some exposure has a reason.  Read it with
`exposure_flags`.

The butler's YAML storage keeps integer keys, but scales that went through JSON arrive with
string keys, so the readers accept both.
"""

from __future__ import annotations

__all__ = [
    "NO_VALID_ENTRY",
    "ScaleDictionaryError",
    "build_scale_dictionary",
    "check_exposure_scales",
    "exposure_flags",
    "exposure_scales",
    "has_exposure_scales",
    "row_flags",
    "row_scales",
    "scale_level",
    "usable_exposure_scale",
]

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_EXP_SCALE = "expScale"
_DET_SCALE = "detScale"
_FLAGS = "flags"
_EXPOSURE_FLAGS = "exposureFlags"
_LEVELS = ("DETECTOR", "AMP")

NO_VALID_ENTRY = "NO_VALID_ENTRY"
"""``flags`` reason of a row none of whose entries was valid, so that its ``detScale`` is NaN."""


class ScaleDictionaryError(ValueError):
    """A scale dictionary without the layout a reader needs; the message names what is missing."""


def build_scale_dictionary(
    level: str,
    *,
    exposures: Sequence[int],
    row_detectors: Sequence[int],
    row_amplifiers: Sequence[str],
    e_values: Sequence[float] | np.ndarray,
    g_values: Sequence[float] | np.ndarray,
    amp_names: Mapping[int, Sequence[str]],
    omit: np.ndarray | None = None,
    entry_factors: np.ndarray | None = None,
    excluded_exposures: Sequence[int] = (),
) -> dict[str, dict]:
    """Write exposure and row scales in cp_pipe's layout.

    Parameters
    ----------
    level : `str`
        ``"DETECTOR"`` (one row per detector; ``detScale[det]`` is G) or ``"AMP"`` (one row per
        amplifier; ``detScale[det][amp]`` is G).
    exposures : `~collections.abc.Sequence` [`int`]
        Exposure ID of each column.
    row_detectors : `~collections.abc.Sequence` [`int`]
        Detector ID of each row.
    row_amplifiers : `~collections.abc.Sequence` [`str`]
        Amplifier name of each row (ignored at DETECTOR level).
    e_values : `~collections.abc.Sequence` [`float`]
        Exposure scale E of each exposure.
    g_values : `~collections.abc.Sequence` [`float`]
        Row scale G of each row.
    amp_names : `~collections.abc.Mapping` [`int`, `~collections.abc.Sequence` [`str`]]
        The camera's amplifier names of every detector with a row, in the camera's order: the
        amplifiers of ``expScale[det]``.
    omit : `numpy.ndarray` of `bool`, (nRows, nExposures), optional
        Entries whose exposure scale is left out of ``expScale``: under every amplifier of the
        detector for a DETECTOR-level row, under its own amplifier for an AMP-level row.
    entry_factors : `numpy.ndarray`, (nRows, nExposures), optional
        Factors multiplying ``E`` per entry (colour terms: ``exp(sum_k u_k[row] v_k[exposure])``),
        placed as ``omit`` is; `None` writes ``E`` alone, the same under every amplifier.
    excluded_exposures : `~collections.abc.Sequence` [`int`], optional
        Exposures left out of the solve because none of their entries was valid (not among
        ``exposures``); listed in ``exposureFlags`` with `NO_VALID_ENTRY`.

    Returns
    -------
    scales : `dict`
        ``{"expScale": ..., "detScale": ...}`` with `int` detector and exposure keys, `str`
        amplifier keys and `float` scales; and ``"flags"`` (same keys as ``detScale``, value
        `NO_VALID_ENTRY`) if some row's G is not finite, which the solvers give only to a row with
        no valid entry; ``"exposureFlags"`` if ``excluded_exposures`` is not empty.

    Raises
    ------
    ValueError
        Raised if ``level`` is unknown or the lengths (or ``omit``'s or ``entry_factors``' shape)
        disagree.
    """
    _check_shapes(level, exposures, e_values, row_detectors, row_amplifiers, g_values, omit)
    _check_shapes(level, exposures, e_values, row_detectors, row_amplifiers, g_values, entry_factors)
    per_exposure = {int(exposure): float(e) for exposure, e in zip(exposures, e_values)}
    # Each amplifier gets its own copy: omitting pops from one, and the YAML writer refuses aliases.
    exp_scale = {
        detector: {str(amp): dict(per_exposure) for amp in amp_names[detector]}
        for detector in sorted({int(detector) for detector in row_detectors})
    }
    if entry_factors is not None:
        _scale_entries(exp_scale, level, exposures, row_detectors, row_amplifiers, e_values, entry_factors)
    if omit is not None:
        _omit_entries(exp_scale, level, exposures, row_detectors, row_amplifiers, omit)
    scales: dict[str, dict] = {
        _EXP_SCALE: exp_scale, _DET_SCALE: _det_scale(level, row_detectors, row_amplifiers, g_values)
    }
    flags = _row_flags(level, row_detectors, row_amplifiers, g_values)
    if flags:
        scales[_FLAGS] = flags
    if excluded_exposures:
        scales[_EXPOSURE_FLAGS] = {int(exposure): NO_VALID_ENTRY for exposure in excluded_exposures}
    return scales


def _check_shapes(
    level: str,
    exposures: Sequence[int],
    e_values: Sequence[float] | np.ndarray,
    row_detectors: Sequence[int],
    row_amplifiers: Sequence[str],
    g_values: Sequence[float] | np.ndarray,
    omit: np.ndarray | None,
) -> None:
    if level not in _LEVELS:
        raise ValueError(f"Unknown scaling level {level!r}; expected one of {_LEVELS}.")
    if len(exposures) != len(e_values):
        raise ValueError(f"Got {len(exposures)} exposures but {len(e_values)} exposure scales.")
    if not len(row_detectors) == len(row_amplifiers) == len(g_values):
        raise ValueError(f"Got {len(row_detectors)} row detectors, {len(row_amplifiers)} row amplifiers "
                         f"and {len(g_values)} row scales.")
    if omit is not None and np.shape(omit) != (len(row_detectors), len(exposures)):
        raise ValueError(f"The per-entry array has shape {np.shape(omit)}; expected "
                         f"{(len(row_detectors), len(exposures))} (rows, exposures).")


def _scale_entries(
    exp_scale: dict[int, dict[str, dict[int, float]]],
    level: str,
    exposures: Sequence[int],
    row_detectors: Sequence[int],
    row_amplifiers: Sequence[str],
    e_values: Sequence[float] | np.ndarray,
    entry_factors: np.ndarray,
) -> None:
    """Write ``E[exposure] * entry_factors[row, exposure]`` under each row's amplifiers."""
    scales = np.asarray(e_values, dtype=float)[np.newaxis, :] * np.asarray(entry_factors, dtype=float)
    keys = [int(exposure) for exposure in exposures]
    for i, detector in enumerate(row_detectors):
        detector = int(detector)
        amps = list(exp_scale[detector]) if level == "DETECTOR" else [str(row_amplifiers[i])]
        for amp in amps:
            exp_scale[detector][amp] = dict(zip(keys, scales[i].tolist()))


def _omit_entries(
    exp_scale: dict[int, dict[str, dict[int, float]]],
    level: str,
    exposures: Sequence[int],
    row_detectors: Sequence[int],
    row_amplifiers: Sequence[str],
    omit: np.ndarray,
) -> None:
    """Drop ``exp_scale[det][amp][exposure]`` wherever the entry covering it is to be omitted."""
    for i, j in np.argwhere(omit):
        detector = int(row_detectors[i])
        amps = list(exp_scale[detector]) if level == "DETECTOR" else [str(row_amplifiers[i])]
        for amp in amps:
            exp_scale[detector][amp].pop(int(exposures[j]), None)


def _det_scale(
    level: str, row_detectors: Sequence[int], row_amplifiers: Sequence[str],
    g_values: Sequence[float] | np.ndarray,
) -> dict[int, Any]:
    """``detScale``: G by detector (DETECTOR) or by detector and amplifier (AMP)."""
    det_scale: dict[int, Any] = {}
    for detector, amp, g in zip(row_detectors, row_amplifiers, g_values):
        if level == "AMP":
            det_scale.setdefault(int(detector), {})[str(amp)] = float(g)
        else:
            det_scale[int(detector)] = float(g)
    return det_scale


def _row_flags(
    level: str, row_detectors: Sequence[int], row_amplifiers: Sequence[str],
    g_values: Sequence[float] | np.ndarray,
) -> dict[int, Any]:
    """``flags``: `NO_VALID_ENTRY` for each row whose G is not finite, keyed as ``detScale``."""
    flags: dict[int, Any] = {}
    for detector, amp, g in zip(row_detectors, row_amplifiers, g_values):
        if math.isfinite(float(g)):
            continue
        if level == "AMP":
            flags.setdefault(int(detector), {})[str(amp)] = NO_VALID_ENTRY
        else:
            flags[int(detector)] = NO_VALID_ENTRY
    return flags


def _lookup(mapping: Mapping[Any, Any], key: int | str) -> Any:
    """Return ``mapping[key]``, also trying ``str(key)``, or `None` if neither is present."""
    for candidate in (key, str(key)):
        if candidate in mapping:
            return mapping[candidate]
    return None


def check_exposure_scales(scales: Any, source: str) -> None:
    """Raise a `ScaleDictionaryError` naming ``source`` unless ``scales`` has an ``expScale`` mapping.

    Parameters
    ----------
    scales : `object`
        What should be a scale dictionary.
    source : `str`
        Where it came from, for the message (e.g. the dataset type and data ID).

    Raises
    ------
    ScaleDictionaryError
        Raised if ``scales`` is not a mapping or has no ``expScale`` mapping; the message lists the
        keys it has instead.
    """
    if not isinstance(scales, Mapping):
        raise ScaleDictionaryError(f"The scales of {source} are a {type(scales).__name__}, not a dictionary "
                                   f"with an {_EXP_SCALE!r} entry.")
    if _EXP_SCALE not in scales:
        raise ScaleDictionaryError(f"The scales of {source} have no {_EXP_SCALE!r} entry (their keys: "
                                   f"{sorted(map(str, scales))}), so no exposure can be scaled; they are not "
                                   "the normalization's output.")
    if not isinstance(scales[_EXP_SCALE], Mapping):
        raise ScaleDictionaryError(f"The scales of {source} have an {_EXP_SCALE!r} entry that is a "
                                   f"{type(scales[_EXP_SCALE]).__name__}, not a dictionary by detector.")


def has_exposure_scales(scales: Mapping[str, Any], detector: int) -> bool:
    """Return whether ``expScale`` has an entry, even an empty one, for a detector.

    Parameters
    ----------
    scales : `~collections.abc.Mapping`
        A scale dictionary; integer or string keys.
    detector : `int`
        Detector ID.

    Returns
    -------
    present : `bool`
    """
    return _lookup(scales[_EXP_SCALE], detector) is not None


def usable_exposure_scale(
    scales: Mapping[str, Any], detector: int, amplifier: str, exposure: int
) -> float | None:
    """Return the exposure scale of one exposure under one amplifier, if it can divide an image.

    Parameters
    ----------
    scales : `~collections.abc.Mapping`
        A scale dictionary; integer or string keys.
    detector : `int`
        Detector ID.
    amplifier : `str`
        Amplifier name.
    exposure : `int`
        Exposure ID.

    Returns
    -------
    scale : `float` or `None`
        ``expScale[detector][amplifier][exposure]`` if it is finite and positive; `None` if it is
        not, or if any of the three keys is absent.
    """
    per_amplifier = _lookup(scales[_EXP_SCALE], detector) or {}
    scale = _lookup(_lookup(per_amplifier, amplifier) or {}, exposure)
    if scale is None:
        return None
    scale = float(scale)
    return scale if math.isfinite(scale) and scale > 0 else None


def scale_level(scales: Mapping[str, Any]) -> str:
    """Return the level a scale dictionary was written at.

    Parameters
    ----------
    scales : `~collections.abc.Mapping`
        A scale dictionary.

    Returns
    -------
    level : `str`
        ``"AMP"`` if ``detScale`` holds a scale per amplifier, else ``"DETECTOR"``.

    Raises
    ------
    ValueError
        Raised if ``detScale`` is empty, so that the level cannot be told.
    """
    first = next(iter(scales[_DET_SCALE].values()), None)
    if first is None:
        raise ValueError("The scale dictionary has no detScale entry: its level cannot be told.")
    return "AMP" if isinstance(first, Mapping) else "DETECTOR"


def exposure_scales(scales: Mapping[str, Any]) -> dict[int, float]:
    """Return the exposure scale E of every exposure anywhere in ``expScale``.

    Every entry of an exposure holds the same E, so each is read where it first appears; an
    exposure omitted under some amplifiers is still found under the others.  With colour terms
    the entries of an exposure differ by row (``E * exp(sum_k u_k v_k)``) and this returns the
    first one found; ``E`` itself is the scale table's ``exp_scale``.

    Parameters
    ----------
    scales : `~collections.abc.Mapping`
        A scale dictionary; integer or string keys.

    Returns
    -------
    scales : `dict` [`int`, `float`]
        E by exposure ID, in the order the exposures first appear.
    """
    found: dict[int, float] = {}
    for per_amplifier in scales[_EXP_SCALE].values():
        for per_exposure in per_amplifier.values():
            for exposure, scale in per_exposure.items():
                found.setdefault(int(exposure), float(scale))
    return found


def row_scales(scales: Mapping[str, Any]) -> dict[int, float] | dict[tuple[int, str], float]:
    """Return the row scale G of every detector or amplifier in ``detScale``.

    Parameters
    ----------
    scales : `~collections.abc.Mapping`
        A scale dictionary; integer or string keys.

    Returns
    -------
    scales : `dict`
        G by detector ID (DETECTOR level) or by ``(detector, amplifier)`` (AMP level), as
        `lsst.cp.flatnorm.sim.flat_simulator.FlatTruth.row_scales` keys the truth.
    """
    det_scale = scales[_DET_SCALE]
    if scale_level(scales) == "AMP":
        return {(int(detector), str(amp)): float(g)
                for detector, per_amplifier in det_scale.items() for amp, g in per_amplifier.items()}
    return {int(detector): float(g) for detector, g in det_scale.items()}


def row_flags(scales: Mapping[str, Any]) -> dict[int, str] | dict[tuple[int, str], str]:
    """Return why each flagged row has no scale, keyed as `row_scales` keys the scales.

    Parameters
    ----------
    scales : `~collections.abc.Mapping`
        A scale dictionary; integer or string keys.  One without ``flags`` (cp_pipe's own, or a
        solution where every row was measured) has no flagged row.

    Returns
    -------
    flags : `dict`
        The reason (`NO_VALID_ENTRY`) by detector ID (DETECTOR level) or by ``(detector,
        amplifier)`` (AMP level); empty if nothing is flagged.
    """
    flags = scales.get(_FLAGS) or {}
    found: dict = {}
    for detector, value in flags.items():
        if isinstance(value, Mapping):
            found.update({(int(detector), str(amp)): str(reason) for amp, reason in value.items()})
        else:
            found[int(detector)] = str(value)
    return found


def exposure_flags(scales: Mapping[str, Any]) -> dict[int, str]:
    """Return why each exposure left out of the solve has no scale (`NO_VALID_ENTRY`), by exposure
    ID; empty if none was (and for cp_pipe's own dictionaries).

    Parameters
    ----------
    scales : `~collections.abc.Mapping`
        A scale dictionary; integer or string keys.
    """
    return {int(exposure): str(reason) for exposure, reason in (scales.get(_EXPOSURE_FLAGS) or {}).items()}
