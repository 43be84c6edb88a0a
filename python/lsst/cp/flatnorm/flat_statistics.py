# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The flat statistics datasets: their keys, written and read, and the matrices the solver takes.

One statistics dataset per (exposure, detector) holds cp_pipe's keys: ``DETECTOR_MEDIAN``,
``DETECTOR_SIGMA``, ``DETECTOR_N``, and for each amplifier ``i`` ``AMP_NAME_i``, ``AMP_MEDIAN_i``,
``AMP_SIGMA_i``, ``AMP_N_i``.  `pack_statistics` writes them; `DETECTOR_KEYS` and `amp_keys`
name them for readers.

`gather_statistics` turns a list of datasets into the ``(rows, exposures)`` matrices the solver
takes, where a row is a detector (DETECTOR level) or one amplifier of a detector (AMP level).
Amplifier values are placed by their *name*, looked up in the camera, so the ``_i`` order in a
statistics dataset never decides which row a value lands in, and detectors with different
amplifier counts never collide.  Any mapping with ``get(key)`` (``lsst.pipe.base.TaskMetadata``,
``lsst.daf.base.PropertyList``, a `dict`) works as a statistics dataset.
"""

from __future__ import annotations

__all__ = [
    "DETECTOR_KEYS",
    "AmpKeys",
    "RegionKeys",
    "StatisticsMatrix",
    "amp_keys",
    "gather_statistics",
    "pack_statistics",
]

import contextlib
import functools
import numbers
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydantic

from lsst.pipe.base import TaskMetadata

LEVELS = ("DETECTOR", "AMP")
_AMP_KEY = re.compile(r"^AMP_(?:NAME|MEDIAN|SIGMA|N)_(\d+)$")
_MAX_KEYS_SHOWN = 5
_FLOAT_AS_STORED = pydantic.TypeAdapter(float)
"""How the butler's TaskMetadata reads a scalar from JSON (text that reads as a number becomes one)."""


@dataclass(frozen=True)
class RegionKeys:
    """The keys of one region's statistics (the detector or one amplifier) in a dataset."""

    median: str
    """Clipped mean level (``MEDIAN`` in cp_pipe's name)."""
    sigma: str
    """Clipped standard deviation."""
    n: str
    """Number of pixels the statistics keep."""
    name: str | None = None
    """Amplifier name; `None` for the detector, which has no name key."""


@dataclass(frozen=True)
class AmpKeys(RegionKeys):
    """The keys of one amplifier's statistics, which include its name key."""

    name: str
    """Amplifier name key."""


DETECTOR_KEYS = RegionKeys(median="DETECTOR_MEDIAN", sigma="DETECTOR_SIGMA", n="DETECTOR_N")
"""The keys of the whole detector's statistics."""


def amp_keys(index: int) -> AmpKeys:
    """Return the keys of the ``index``-th amplifier's statistics in a dataset.

    Parameters
    ----------
    index : `int`
        Position of the amplifier in the dataset (the camera's order when written by the
        measurement task; readers place values by the name key, not by this index).

    Returns
    -------
    keys : `AmpKeys`
    """
    return AmpKeys(median=f"AMP_MEDIAN_{index}", sigma=f"AMP_SIGMA_{index}", n=f"AMP_N_{index}",
                   name=f"AMP_NAME_{index}")


def pack_statistics(
    *,
    median: float,
    sigma: float,
    n: int,
    amp_names: Sequence[str],
    amp_medians: Sequence[float] | np.ndarray,
    amp_sigmas: Sequence[float] | np.ndarray,
    amp_ns: Sequence[int] | np.ndarray,
) -> TaskMetadata:
    """Write one detector's flat statistics under cp_pipe's keys.

    Parameters
    ----------
    median, sigma : `float`
        Clipped mean level and standard deviation of the whole detector.
    n : `int`
        Number of detector pixels they keep.
    amp_names : `~collections.abc.Sequence` [`str`]
        Amplifier names, in the order their ``_i`` keys are numbered.
    amp_medians, amp_sigmas : `~collections.abc.Sequence` [`float`]
        Clipped mean level and standard deviation of each amplifier.
    amp_ns : `~collections.abc.Sequence` [`int`]
        Number of pixels each amplifier's statistics keep.

    Returns
    -------
    metadata : `lsst.pipe.base.TaskMetadata`
        The statistics dataset, with plain `float`, `int` and `str` values.

    Raises
    ------
    ValueError
        Raised if the amplifier sequences differ in length.
    """
    lengths = {len(values) for values in (amp_names, amp_medians, amp_sigmas, amp_ns)}
    if len(lengths) > 1:
        raise ValueError(f"Got {len(amp_names)} amplifier names, {len(amp_medians)} medians, "
                         f"{len(amp_sigmas)} sigmas and {len(amp_ns)} counts.")
    metadata = TaskMetadata()
    _pack_region(metadata, DETECTOR_KEYS, median, sigma, n)
    for i, (name, amp_median, amp_sigma, amp_n) in enumerate(zip(amp_names, amp_medians, amp_sigmas, amp_ns)):
        keys = amp_keys(i)
        metadata[keys.name] = str(name)
        _pack_region(metadata, keys, amp_median, amp_sigma, amp_n)
    return metadata


def _pack_region(metadata: TaskMetadata, keys: RegionKeys, median: float, sigma: float, n: int) -> None:
    metadata[keys.median] = float(median)
    metadata[keys.sigma] = float(sigma)
    metadata[keys.n] = int(n)


@dataclass
class StatisticsMatrix:
    """Flat levels and pixel counts arranged as (rows, exposures).

    Attributes
    ----------
    level : `str`
        ``"DETECTOR"`` or ``"AMP"``.
    detectors : `list` [`int`]
        Detector ID of each row.
    amplifiers : `list` [`str`]
        Amplifier name of each row (``""`` at DETECTOR level).
    exposures : `list` [`int`]
        Exposure ID of each column, sorted.
    levels : `numpy.ndarray`, (nRows, nExposures)
        Measured levels; NaN where no statistics dataset exists for the pair.
    counts : `numpy.ndarray`, (nRows, nExposures)
        Pixel counts behind each level; 0 where no dataset exists.
    present : `numpy.ndarray` of `bool`, (nRows, nExposures)
        Whether a statistics dataset was supplied for the entry.
    """

    level: str
    detectors: list[int]
    amplifiers: list[str]
    exposures: list[int]
    levels: np.ndarray
    counts: np.ndarray
    present: np.ndarray

    def row_label(self, row: int) -> str:
        """Describe a row as a data ID fragment, e.g. ``detector=3, amp=C10``."""
        if self.level == "AMP":
            return f"detector={self.detectors[row]}, amp={self.amplifiers[row]}"
        return f"detector={self.detectors[row]}"

    def entry_label(self, row: int, column: int) -> str:
        """Describe an entry as a data ID, e.g. ``{exposure=7, detector=3, amp=C10}``."""
        return f"{{exposure={self.exposures[column]}, {self.row_label(row)}}}"


def gather_statistics(
    inputMDs: Sequence[Any], inputDims: Sequence[Mapping[str, Any]], camera: Any, level: str
) -> StatisticsMatrix:
    """Arrange flat statistics into level and count matrices.

    Parameters
    ----------
    inputMDs : `~collections.abc.Sequence`
        One statistics mapping per (exposure, detector), supporting ``get(key)``.
    inputDims : `~collections.abc.Sequence` [`~collections.abc.Mapping`]
        The data ID of each statistics mapping; must contain ``exposure`` and ``detector``.
    camera : afw-camera-like
        ``camera[detectorId]`` iterates over amplifiers with ``getName()`` (AMP level only).
    level : `str`
        ``"DETECTOR"`` or ``"AMP"``.

    Returns
    -------
    matrix : `StatisticsMatrix`

    Raises
    ------
    KeyError
        Raised if a data ID lacks ``exposure`` or ``detector``, if a statistic key is missing
        from a dataset (naming the key and the data ID), or if a detector is not in the camera.
    ValueError
        Raised if the inputs are inconsistent: different lengths, the same (exposure, detector)
        twice, an amplifier name the camera's detector does not have (or has twice), or (AMP level)
        amplifier keys numbered beyond the camera's amplifiers of the detector; or if a level or
        count read is not a number (text that does not read as one, or a boolean, which is never
        read as 1 or 0).  Each
        message names the data ID and the key.  At DETECTOR level the amplifier keys are not read.
    """
    if level not in LEVELS:
        raise ValueError(f"Unknown scaling level {level!r}; expected one of {LEVELS}.")
    if len(inputMDs) != len(inputDims):
        raise ValueError(f"Got {len(inputMDs)} statistics datasets but {len(inputDims)} data IDs.")
    keys = [_exposure_detector(dims) for dims in inputDims]
    _check_unique(keys)
    exposures = sorted({exposure for exposure, _ in keys})
    detectors = sorted({detector for _, detector in keys})
    amp_names = {detector: _amp_names(camera, detector) for detector in detectors} if level == "AMP" else {}
    row_detectors, row_amps = _rows(detectors, amp_names, level)
    row_index = {key: i for i, key in enumerate(zip(row_detectors, row_amps))}
    column_index = {exposure: j for j, exposure in enumerate(exposures)}

    shape = (len(row_detectors), len(exposures))
    levels = np.full(shape, np.nan)
    counts = np.zeros(shape)
    present = np.zeros(shape, dtype=bool)
    for md, dims, (exposure, detector) in zip(inputMDs, inputDims, keys):
        column = column_index[exposure]
        for amp, value, count in _entries(md, dims, detector, level, amp_names):
            row = row_index[(detector, amp)]
            levels[row, column] = value
            counts[row, column] = count
            present[row, column] = True
    return StatisticsMatrix(level, row_detectors, row_amps, exposures, levels, counts, present)


def _exposure_detector(dims: Mapping[str, Any]) -> tuple[int, int]:
    return _integer_id(dims, "exposure"), _integer_id(dims, "detector")


def _integer_id(dims: Mapping[str, Any], dimension: str) -> int:
    """Return a data ID's integer ``exposure`` or ``detector`` ID, naming the data ID if it has none.

    Butler data IDs hold integer IDs; a detector given by name (``"R11_S01"``) is refused rather
    than guessed, because names are not unique across instruments.
    """
    try:
        value = dims[dimension]
    except KeyError:
        raise KeyError(f"Input data ID {dict(dims)} has no {dimension!r} dimension; the flat statistics "
                       "must be indexed by exposure and detector.") from None
    if isinstance(value, str) and value.isdigit():  # an ID that went through text, e.g. JSON keys
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"Input data ID {dict(dims)}: {dimension} must be the integer ID, not {value!r}"
                         f"{' (a detector name?)' if dimension == 'detector' else ''}.")
    return int(value)


def _check_unique(keys: list[tuple[int, int]]) -> None:
    seen: set[tuple[int, int]] = set()
    for exposure, detector in keys:
        if (exposure, detector) in seen:
            raise ValueError(f"Flat statistics for exposure={exposure}, detector={detector} were "
                             "supplied more than once.")
        seen.add((exposure, detector))


def _rows(
    detectors: list[int], amp_names: Mapping[int, list[str]], level: str
) -> tuple[list[int], list[str]]:
    if level == "DETECTOR":
        return detectors, [""] * len(detectors)
    row_detectors: list[int] = []
    row_amps: list[str] = []
    for detector in detectors:
        row_detectors.extend([detector] * len(amp_names[detector]))
        row_amps.extend(amp_names[detector])
    return row_detectors, row_amps


def _amp_names(camera: Any, detector: int) -> list[str]:
    try:
        amplifiers = camera[detector]
    except (KeyError, IndexError, LookupError):
        raise KeyError(f"Detector {detector} has flat statistics but is not in the camera.") from None
    return [amp.getName() for amp in amplifiers]


def _require(md: Any, key: str, dims: Mapping[str, Any]) -> Any:
    value = md.get(key)
    if value is None:
        raise KeyError(f"Flat statistics for {_describe(dims)} have no {key!r} entry.")
    return value


def _number(md: Any, key: str, dims: Mapping[str, Any]) -> float:
    """Return a statistic as a `float`; refuse (naming key and data ID) anything but a real number.

    A boolean is refused rather than read as 1 or 0: the measurement never writes one, so it means the
    dataset is not flat statistics.  Text is read as the butler reads a `TaskMetadata` from its JSON
    (pydantic's float: ``'1043.3'`` is 1043.3, ``'abc'`` is refused), so that ``run`` and
    ``pipetask`` take the same datasets.
    """
    value = _require(md, key, dims)
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"Flat statistics for {_describe(dims)} have {key!r} = {bool(value)}, a boolean, "
                         "not a number.")
    if isinstance(value, str):
        with contextlib.suppress(pydantic.ValidationError):
            return _FLOAT_AS_STORED.validate_python(value)
    if not isinstance(value, numbers.Real):
        raise ValueError(f"Flat statistics for {_describe(dims)} have {key!r} = {value!r}, which is not a "
                         "number.")
    return float(value)


def _level_and_count(md: Any, keys: RegionKeys, dims: Mapping[str, Any]) -> tuple[float, float]:
    return _number(md, keys.median, dims), _number(md, keys.n, dims)


def _describe(dims: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in dict(dims).items()) + "}"


def _key_names(md: Any) -> Collection[str] | None:
    """The keys of a statistics dataset (a mapping's or TaskMetadata's ``keys()``, a PropertyList's
    ``names()``), or `None` for an object that only answers ``get``."""
    for method in ("keys", "names"):
        if callable(getattr(md, method, None)):
            return getattr(md, method)()
    return None


@functools.cache
def _known_keys(n_amps: int) -> frozenset[str]:
    """The keys a dataset of a detector with ``n_amps`` amplifiers may hold."""
    keys = {DETECTOR_KEYS.median, DETECTOR_KEYS.sigma, DETECTOR_KEYS.n}
    for i in range(n_amps):
        region = amp_keys(i)
        keys.update((region.name, region.median, region.sigma, region.n))
    return frozenset(keys)


def _check_no_extra_amplifiers(md: Any, dims: Mapping[str, Any], detector: int, n_amps: int) -> None:
    """Refuse amplifier keys numbered at or beyond the camera's number of amplifiers of the detector."""
    names = _key_names(md)
    if names is None:  # only get(): look for the next amplifier's keys
        keys = amp_keys(n_amps)
        names = [key for key in (keys.name, keys.median, keys.sigma, keys.n) if md.get(key) is not None]
    known = _known_keys(n_amps)
    unknown = [str(key) for key in names if key not in known]  # usually none: the regex is for these
    extra = sorted((key for key in unknown if (match := _AMP_KEY.match(key)) and int(match[1]) >= n_amps),
                   key=_amp_key_order)
    if extra:
        shown = ", ".join(f"{key!r} = {md.get(key)!r}" for key in extra[:_MAX_KEYS_SHOWN])
        if len(extra) > _MAX_KEYS_SHOWN:
            shown += f" and {len(extra) - _MAX_KEYS_SHOWN} more"
        raise ValueError(f"Flat statistics for {_describe(dims)} have amplifier keys beyond the {n_amps} "
                         f"amplifiers of detector {detector} in the camera (indices 0 to {n_amps - 1}): "
                         f"{shown}. Were they measured with another camera?")


def _amp_key_order(key: str) -> tuple[int, str]:
    """Sort amplifier keys by their index, then by name."""
    match = _AMP_KEY.match(key)
    return (int(match[1]) if match else -1, key)


def _entries(
    md: Any, dims: Mapping[str, Any], detector: int, level: str, amp_names: Mapping[int, list[str]]
) -> list[tuple[str, float, float]]:
    """Return (amplifier name, level, count) triples of one statistics dataset."""
    if level == "DETECTOR":
        return [("", *_level_and_count(md, DETECTOR_KEYS, dims))]
    expected = amp_names[detector]
    _check_no_extra_amplifiers(md, dims, detector, len(expected))
    entries = []
    seen: dict[str, str] = {}
    for i in range(len(expected)):
        keys = amp_keys(i)
        name = str(_require(md, keys.name, dims))
        if name not in expected:
            raise ValueError(f"Flat statistics for {_describe(dims)} have {keys.name!r} = {name!r}, an "
                             f"amplifier that detector {detector} of the camera does not have (it has "
                             f"{', '.join(expected)}).")
        if name in seen:
            raise ValueError(f"Flat statistics for {_describe(dims)} name amplifier {name!r} twice, in "
                             f"{seen[name]!r} and {keys.name!r}.")
        seen[name] = keys.name
        entries.append((name, *_level_and_count(md, keys, dims)))
    return entries
