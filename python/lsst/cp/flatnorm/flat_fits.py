# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Post-ISR flats in FITS files: where each detector's image is, what its header says, its pixels.

`scan_flats` reads a set of files and checks everything that can be checked without a butler
repository (headers; pixels that can be read, and that give a flat level); it returns one
`FlatSource` per (exposure, detector) image, whose `~FlatSource.read` returns the
`lsst.images.MaskedImage` the flat tasks take (``cpFlatIsrExp``).  Nothing here writes.

Layouts
-------
A file holds one detector or several (a multi-extension file, MEF).  Every image HDU is one detector,
except HDUs whose ``EXTTYPE`` (else ``EXTNAME``) is ``MASK`` or ``VARIANCE`` or ends in ``_MASK`` or
``_VARIANCE``: those are the mask and variance planes of the image HDU before them.  An HDU's header
inherits the primary header's cards (its own cards win).  afw's layout of a ``MaskedImage`` or
``Exposure`` (an empty primary HDU, then ``IMAGE``, ``MASK`` with ``MP_`` cards, and ``VARIANCE``)
is recognised and read with `lsst.images.MaskedImage.read_legacy`.

Header keywords
---------------
`HeaderKeywords` says where each value is (a list of keywords, the first present wins) and what to
assume where a header says nothing.  The exposure ID is ``EXPID`` or ``EXPNUM``, else
``day_obs * 100000 + SEQNUM``, with ``day_obs`` the day, rolling over at noon UTC, holding the start
time (`lsst.cp.flatnorm.exposure_records.day_obs_timespan`).

Variance
--------
An image without a variance plane gets the variance of its Poisson and read noise::

    variance = max(image, 0) / gain + (read_noise / gain)**2

in the image's units squared, with ``gain`` in electrons per ADU and ``read_noise`` in electrons,
from the header (``GAIN``, ``RDNOISE``) or `HeaderKeywords`' defaults.  An image in electrons
(``BUNIT = 'electron'``) has ``gain = 1``; an image without ``BUNIT`` is in ADU.

Detector names
--------------
A detector name (in ``EXTNAME`` or a ``DETECTOR`` card) matches the camera's exactly, else ignoring
case when only one detector matches so (astropy writes ``EXTNAME`` in upper case).

Start time
----------
``DATE-OBS`` (ISO 8601) else ``MJD-OBS``; a ``DATE-OBS`` that is a date alone is completed by
``TIME-OBS``, as older instruments write them.

Validation
----------
An image with no finite or no positive pixel gives no flat level: it is ingested with a warning
(the normalization excludes its exposure), or refused with ``refuse_empty``.  Every problem of
every file is collected, and `FlatIngestError` reports them all at once, one line
each, naming the file, the HDU (index and ``EXTNAME``) and the keyword and value at fault.
"""

from __future__ import annotations

__all__ = [
    "FlatIngestError",
    "FlatSource",
    "HeaderKeywords",
    "day_obs_of",
    "exposure_differences",
    "scan_flats",
]

import dataclasses
import datetime
import logging
import math
import os
import re
import urllib.parse
import warnings
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import astropy.io.fits
import astropy.time
import astropy.units as u
from astropy.utils.exceptions import AstropyUserWarning
import numpy as np

from lsst.images import Image, MaskedImage, MaskPlane

from .exposure_records import ExposureInfo, day_obs_timespan
from .flat_mask import ingested_mask, legacy_planes
from .header_keywords import HeaderKeywords

_LOG = logging.getLogger(__name__)
_CUT_SHORT = ("File may have been truncated", "extra bytes after the last HDU")
"""What astropy's warnings say of a file that ends inside an HDU's data, or inside a header (which it
takes for bytes after the last HDU)."""

_SEQ_NUM_RANGE = 100_000  # exposure ID = day_obs * 100000 + seq_num, as the simulator's
_SAME_START_SECONDS = 1e-3  # start times closer than this are the same (MJDs are rounded floats)
_COMPANION_ROLES = ("MASK", "VARIANCE")
_ADU_UNITS = {"adu", "count", "counts", "dn"}
_ELECTRON_UNITS = {"electron", "electrons", "e-"}
_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME_OF_DAY = re.compile(r"\d{2}:\d{2}:\d{2}(\.\d*)?")


class FlatIngestError(ValueError):
    """Raised when flats cannot be ingested, before anything is written.

    Parameters
    ----------
    problems : `~collections.abc.Sequence` [`str`]
        Every problem found, each naming its file and HDU; all of them are in the message.
    """

    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        count = f"{len(self.problems)} problem{'' if len(self.problems) == 1 else 's'}"
        super().__init__(f"Cannot ingest the flats ({count}; nothing was ingested):\n"
                         + "\n".join(f"  {problem}" for problem in self.problems))


class _HeaderProblem(Exception):
    """A header value that is missing or cannot be used; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class _Header:
    """The header of an image HDU, inheriting the primary header's cards (its own win)."""

    own: astropy.io.fits.Header
    primary: astropy.io.fits.Header

    def find(self, keywords: Sequence[str]) -> tuple[str, Any] | None:
        """Return ``(keyword, value)`` of the first keyword present, or `None`."""
        for keyword in keywords:
            for header in (self.own, self.primary):
                if keyword in header:
                    return keyword, header[keyword]
        return None

    def require(self, keywords: Sequence[str], what: str) -> tuple[str, Any]:
        """Return ``(keyword, value)`` of the first keyword present; raise `_HeaderProblem` if none is."""
        found = self.find(keywords)
        if found is None:
            raise _HeaderProblem(f"missing {what} (looked for {_listed(keywords)})")
        return found


def _listed(keywords: Sequence[str]) -> str:
    return ", ".join(keywords) or "no keyword"


def _bad_value(keyword: str, value: Any, expected: str, what: str) -> _HeaderProblem:
    return _HeaderProblem(f"{keyword}={value!r} is not {expected} ({what})")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(found: tuple[str, Any], what: str) -> float:
    keyword, value = found
    if not _is_number(value) or value <= 0:
        raise _bad_value(keyword, value, "a number > 0", what)
    return float(value)


def _non_negative(found: tuple[str, Any], what: str) -> float:
    keyword, value = found
    if not _is_number(value) or value < 0:
        raise _bad_value(keyword, value, "a number >= 0", what)
    return float(value)


def _count(found: tuple[str, Any], what: str) -> int:
    """An integer >= 0, also written as digits in a string (IDs often are)."""
    keyword, value = found
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad_value(keyword, value, "an integer >= 0", what)
    return value


def _text(found: tuple[str, Any], what: str) -> str:
    keyword, value = found
    if not isinstance(value, str) or not value.strip():
        raise _bad_value(keyword, value, "non-empty text", what)
    return value.strip()


def _start_time(header: _Header, keywords: HeaderKeywords) -> astropy.time.Time:
    if (found := header.find(keywords.start_time)) is not None:
        keyword, value = found
        if isinstance(value, str):
            text = _with_time_of_day(value.strip(), header, keywords)
            try:
                return astropy.time.Time(text, scale="utc")
            except ValueError:
                pass
        raise _bad_value(keyword, value, "an ISO 8601 time", "start time")
    found = header.require(keywords.start_time + keywords.start_mjd, "start time")
    return astropy.time.Time(_positive(found, "start time, MJD"), format="mjd", scale="utc")


def _with_time_of_day(date: str, header: _Header, keywords: HeaderKeywords) -> str:
    """``date`` completed by the time-of-day keyword (``TIME-OBS``) if it is a date alone
    (``YYYY-MM-DD``), as older instruments write them; else ``date`` as it is."""
    if not _DATE_ONLY.fullmatch(date) or (found := header.find(keywords.start_time_of_day)) is None:
        return date
    keyword, value = found
    if not isinstance(value, str) or not _TIME_OF_DAY.fullmatch(value.strip()):
        raise _bad_value(keyword, value, "a time of day hh:mm:ss[.sss]", "start time of day")
    return f"{date}T{value.strip()}"


def day_obs_of(time: astropy.time.Time) -> int:
    """Return the day of observation (``YYYYMMDD``) holding ``time``.

    That is the day whose `~lsst.cp.flatnorm.exposure_records.day_obs_timespan` (noon to noon
    UTC) contains it, so the rollover is defined in one place.
    """
    date = time.utc.to_datetime().date()
    one_day = datetime.timedelta(days=1)
    candidates = (int(day.strftime("%Y%m%d")) for day in (date - one_day, date, date + one_day))
    return next(day_obs for day_obs in candidates if day_obs_timespan(day_obs).contains(time))


class _Camera:
    """The detectors of a camera by ID and by name (any camera iterating detectors with
    ``getId()``, ``getName()`` and ``getBBox()``: `~lsst.cp.flatnorm.camera_model.CameraModel`,
    an afw camera).

    A name matches ignoring case when only one detector has it so: astropy upper-cases ``EXTNAME``
    (``ImageHDU(name="chip1")`` writes ``'CHIP1'``), and many headers are upper case throughout.
    """

    def __init__(self, camera: Any):
        self.name = camera.getName()
        self.by_id = {detector.getId(): detector for detector in camera}
        self.by_name = {detector.getName(): detector for detector in camera}
        self.by_folded_name: dict[str, list[Any]] = {}
        for detector in camera:
            self.by_folded_name.setdefault(detector.getName().casefold(), []).append(detector)

    def detector(self, found: tuple[str, Any], what: str) -> Any:
        keyword, value = found
        if isinstance(value, int) and not isinstance(value, bool):
            if value not in self.by_id:
                raise _HeaderProblem(f"{keyword}={value!r} is not a detector ID of camera {self.name}")
            return self.by_id[value]
        name = _text(found, what)
        if name in self.by_name:
            return self.by_name[name]
        matches = self.by_folded_name.get(name.casefold(), [])
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise _HeaderProblem(
                f"{keyword}={value!r} matches detectors {', '.join(repr(d.getName()) for d in matches)} of "
                f"camera {self.name} ignoring case, so it names none of them (names are matched exactly, "
                "else ignoring case when that is unambiguous)")
        raise _HeaderProblem(f"{keyword}={value!r} is not a detector name of camera {self.name}")


class _Fields:
    """Values read from one header, and the problems met reading them (all are reported)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.problems: list[str] = []

    def read(self, name: str, reader: Callable[..., Any], *args: Any) -> None:
        """Store ``reader(*args)`` as ``name``, or the problem it raises."""
        try:
            self.values[name] = reader(*args)
        except _HeaderProblem as problem:
            self.problems.append(str(problem))

    def have(self, *names: str) -> bool:
        return all(name in self.values for name in names)


def _required(header: _Header, keywords: Sequence[str], what: str, convert: Callable[..., Any]) -> Any:
    return convert(header.require(keywords, what), what)


def _optional(header: _Header, keywords: Sequence[str], what: str, convert: Callable[..., Any]) -> Any:
    """The converted value of the first keyword present, or `None` if none is."""
    found = header.find(keywords)
    return None if found is None else convert(found, what)


def _read_exposure(
    fields: _Fields, header: _Header, keywords: HeaderKeywords, physical_filters: Collection[str]
) -> None:
    """Read the values of the exposure record into ``fields``."""
    fields.read("begin", _start_time, header, keywords)
    fields.read("exposure_time", _required, header, keywords.exposure_time, "exposure time", _positive)
    fields.read("physical_filter", _physical_filter, header, keywords.physical_filter, physical_filters)
    fields.read("exposure_id", _optional, header, keywords.exposure_id, "exposure ID", _count)
    fields.read("seq_num", _optional, header, keywords.seq_num, "sequence number", _count)
    fields.read("obs_id", _optional, header, keywords.obs_id, "observation ID", _identifier)
    fields.read("observation_type", _optional, header, keywords.observation_type, "observation type", _text)
    fields.read("observation_reason", _optional, header, keywords.observation_reason, "observation reason",
                _text)
    if fields.have("exposure_id", "seq_num"):
        fields.read("id", _exposure_id, fields.values["exposure_id"], fields.values["seq_num"],
                    fields.values.get("begin"), keywords)


def _exposure_info(values: dict[str, Any], keywords: HeaderKeywords) -> ExposureInfo:
    """The exposure record's values, from what `_read_exposure` read, with the defaults."""
    exposure_id = values["id"]
    return ExposureInfo(
        id=exposure_id,
        obs_id=values["obs_id"] or str(exposure_id),
        seq_num=exposure_id if values["seq_num"] is None else values["seq_num"],
        day_obs=day_obs_of(values["begin"]),
        physical_filter=values["physical_filter"],
        begin=values["begin"],
        exposure_time=values["exposure_time"],
        observation_type=(values["observation_type"] or keywords.default_observation_type).lower(),
        observation_reason=values["observation_reason"] or keywords.default_observation_reason,
    )


def _identifier(found: tuple[str, Any], what: str) -> str:
    """Text, or an integer written as text."""
    value = found[1]
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else _text(found, what)


def _physical_filter(header: _Header, keywords: Sequence[str], physical_filters: Collection[str]) -> str:
    found = header.require(keywords, "physical filter")
    name = _text(found, "physical filter")
    if name not in physical_filters:
        raise _HeaderProblem(f"{found[0]}={found[1]!r} is not a physical filter of the instrument "
                             f"(registered: {', '.join(sorted(physical_filters)) or 'none'})")
    return name


def _exposure_id(
    exposure_id: int | None, seq_num: int | None, begin: astropy.time.Time | None, keywords: HeaderKeywords
) -> int | None:
    """The exposure ID keyword's value, else ``day_obs * 100000 + seq_num`` (`None` without a start
    time, whose problem is reported already)."""
    if exposure_id is not None:
        return exposure_id
    if seq_num is None:
        raise _HeaderProblem(f"missing exposure ID (looked for {_listed(keywords.exposure_id)}; or "
                             f"{_listed(keywords.seq_num)} to make day_obs * {_SEQ_NUM_RANGE} + seq_num)")
    if seq_num >= _SEQ_NUM_RANGE:
        raise _HeaderProblem(f"sequence number {seq_num} is not below {_SEQ_NUM_RANGE}, so it cannot make "
                             f"the exposure ID day_obs * {_SEQ_NUM_RANGE} + seq_num")
    return None if begin is None else day_obs_of(begin) * _SEQ_NUM_RANGE + seq_num


@dataclasses.dataclass(frozen=True)
class _Noise:
    """What a missing variance plane is estimated from."""

    gain: float
    """Electrons per image unit (1 for an image in electrons)."""
    read_noise: float
    """Electrons."""

    def variance(self, image: np.ndarray) -> np.ndarray:
        return np.maximum(image, 0) / self.gain + (self.read_noise / self.gain) ** 2

    def describe(self) -> str:
        return f"estimated with gain {self.gain:g} e-/unit, read noise {self.read_noise:g} e-"


def _unit(header: _Header, keywords: HeaderKeywords) -> u.UnitBase | None:
    """The image's unit: ADU, electrons, or `None` where the header says nothing (taken as ADU)."""
    if (found := header.find(keywords.unit)) is None:
        return None
    text = _text(found, "pixel unit").lower()
    if text in _ADU_UNITS:
        return u.adu
    if text in _ELECTRON_UNITS:
        return u.electron
    raise _bad_value(*found, "ADU or electrons", "pixel unit")


def _noise(header: _Header, keywords: HeaderKeywords, unit: u.UnitBase | None) -> _Noise:
    found = header.find(keywords.read_noise)
    read_noise = keywords.default_read_noise if found is None else _non_negative(found, "read noise")
    if unit == u.electron:
        return _Noise(1.0, read_noise)
    if (found := header.find(keywords.gain)) is not None:
        return _Noise(_positive(found, "gain"), read_noise)
    if keywords.default_gain is None:
        raise _HeaderProblem(f"no VARIANCE HDU, and no gain to estimate the variance with (looked for "
                             f"{_listed(keywords.gain)}; no default gain)")
    return _Noise(keywords.default_gain, read_noise)


@dataclasses.dataclass(frozen=True)
class _Planes:
    """The HDUs of one detector's image and of its mask and variance planes."""

    image: int
    mask: int | None = None
    variance: int | None = None
    afw: bool = False
    """Whether the file is afw's MaskedImage layout, which `MaskedImage.read_legacy` reads."""


def _role(header: astropy.io.fits.Header) -> str:
    """``"MASK"``, ``"VARIANCE"`` or ``"IMAGE"``, from ``EXTTYPE`` (afw's) or ``EXTNAME``."""
    name = str(header.get("EXTTYPE") or header.get("EXTNAME") or "").strip().upper()
    for role in _COMPANION_ROLES:
        if name == role or name.endswith(f"_{role}"):
            return role
    return "IMAGE"


def _where(path: Path, hdus: astropy.io.fits.HDUList, index: int) -> str:
    extname = hdus[index].header.get("EXTNAME")
    return f"{path} HDU {index}" + (f" ({str(extname).strip()})" if extname else "")


def _group_planes(path: Path, hdus: astropy.io.fits.HDUList) -> tuple[list[_Planes], list[str]]:
    """Group the image HDUs of a file into detectors: each MASK or VARIANCE HDU belongs to the
    image HDU before it."""
    groups: list[_Planes] = []
    problems: list[str] = []
    for index, hdu in enumerate(hdus):
        if not hdu.is_image or hdu.header.get("NAXIS") != 2:
            continue
        role = _role(hdu.header)
        if role == "IMAGE":
            groups.append(_Planes(index))
        elif not groups:
            problems.append(f"{_where(path, hdus, index)}: a {role} HDU before any image HDU")
        elif getattr(groups[-1], role.lower()) is not None:
            problems.append(f"{_where(path, hdus, index)}: a second {role} HDU for image HDU "
                            f"{groups[-1].image}")
        else:
            groups[-1] = (dataclasses.replace(groups[-1], mask=index) if role == "MASK"
                          else dataclasses.replace(groups[-1], variance=index))
    if not groups and not problems:
        problems.append(f"{path}: no image HDU")
    if _written_by_afw(hdus) and groups[0] == _Planes(1, 2, 3):
        groups[0] = _Planes(1, 2, 3, afw=True)
    return groups, problems


def _written_by_afw(hdus: astropy.io.fits.HDUList) -> bool:
    """Whether HDUs 1-3 are afw's IMAGE, MASK (with ``MP_`` cards) and VARIANCE, with afw's origin
    cards (``LTV1``), as `MaskedImage.read_legacy` expects."""
    return (
        len(hdus) >= 4
        and [_role(hdu.header) for hdu in hdus[1:4]] == ["IMAGE", "MASK", "VARIANCE"]
        and any(card.keyword.startswith("MP_") for card in hdus[2].header.cards)
        and all("LTV1" in hdu.header for hdu in hdus[1:4])
    )


def _shape(hdu: Any) -> tuple[int, int]:
    return hdu.header["NAXIS2"], hdu.header["NAXIS1"]


def _check_planes(planes: _Planes, hdus: astropy.io.fits.HDUList, detector: Any, camera: str) -> None:
    """Raise `_HeaderProblem` if the image does not have the detector's shape, or a mask or variance
    plane does not match the image."""
    bbox = detector.getBBox()
    expected = (bbox.getHeight(), bbox.getWidth())
    shape = _shape(hdus[planes.image])
    if shape != expected:
        raise _HeaderProblem(f"image shape (ny, nx) = {shape} differs from the shape {expected} of "
                             f"detector {detector.getId()} ({detector.getName()}) of camera {camera}")
    for role, index in (("MASK", planes.mask), ("VARIANCE", planes.variance)):
        if index is not None and _shape(hdus[index]) != shape:
            raise _HeaderProblem(f"{role} HDU {index} has shape {_shape(hdus[index])}, the image {shape}")
    if planes.mask is not None and hdus[planes.mask].header["BITPIX"] < 0:
        raise _HeaderProblem(f"MASK HDU {planes.mask} holds floating-point values "
                             f"(BITPIX={hdus[planes.mask].header['BITPIX']}), not mask bits")


@dataclasses.dataclass(frozen=True)
class FlatSource:
    """One detector's post-ISR flat in a FITS file: where it is and what its header says.

    Attributes
    ----------
    path : `pathlib.Path`
        The file.
    where : `str`
        The file and image HDU (index and ``EXTNAME``), as messages name them.
    exposure : `lsst.cp.flatnorm.exposure_records.ExposureInfo`
        The exposure record's values.
    detector : detector-like
        The camera's detector.
    """

    path: Path
    where: str
    exposure: ExposureInfo
    detector: Any
    _planes: _Planes
    _unit: u.UnitBase | None
    _noise: _Noise | None
    """How to estimate the variance; `None` if the file has a variance plane."""
    emptiness: str | None = None
    """Why the image cannot give a flat level (no finite or no positive pixel), or `None`."""

    @property
    def hdu(self) -> int:
        """Index of the image HDU."""
        return self._planes.image

    @property
    def detector_id(self) -> int:
        return self.detector.getId()

    def read(self) -> MaskedImage:
        """Read the flat: float32 image and variance, and the mask of `lsst.cp.flatnorm.flat_mask`,
        on the detector's pixel box; non-finite pixels are flagged ``NO_DATA``.

        Returns
        -------
        image : `lsst.images.MaskedImage`
            Its metadata names the file, the HDU and where the variance comes from.
        """
        reader = _read_afw if self._planes.afw else _read_hdus
        image, variance, planes = reader(self.path, self._planes, self.where)
        image = np.asarray(image, dtype=np.float32)
        if variance is None:
            assert self._noise is not None  # scanning gave a noise model to every flat without variance
            variance = self._noise.variance(image)
        bbox = self.detector.getBBox()
        yx0 = (bbox.getMinY(), bbox.getMinX())
        mask = ingested_mask(planes, image.shape, yx0, self.where)
        mask.set("NO_DATA", ~np.isfinite(image))
        metadata: dict[str, int | float | str | bool | None] = {
            "INGEST_FILE": ascii_path(self.path),
            "INGEST_HDU": self.hdu,
            "VARIANCE_SOURCE": "file" if self._noise is None else self._noise.describe(),
        }
        return MaskedImage(
            Image(image, yx0=yx0, unit=self._unit), mask=mask,
            variance=Image(np.asarray(variance, dtype=np.float32), yx0=yx0), metadata=metadata,
        )


def ascii_path(path: Path) -> str:
    """``path`` in ASCII, as FITS headers need: other characters percent-encoded, as in a file URI
    (``flats ö`` gives ``flats %C3%B6``)."""
    return urllib.parse.quote(str(path), safe="/\\:~ ")


type _Pixels = tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]
"""Image, variance (or `None`) and mask planes by name."""


def _read_hdus(path: Path, planes: _Planes, where: str) -> _Pixels:
    with astropy.io.fits.open(path) as hdus:
        image = np.array(hdus[planes.image].data)
        variance = None if planes.variance is None else np.array(hdus[planes.variance].data)
        mask = {} if planes.mask is None else legacy_planes(hdus[planes.mask].header,
                                                            hdus[planes.mask].data, where)
    return image, variance, mask


def _read_afw(path: Path, planes: _Planes, where: str) -> _Pixels:
    with astropy.io.fits.open(path) as hdus:
        names = MaskPlane.read_legacy(hdus[planes.mask].header, strip=False)
    # Every plane keeps its afw name, so that nothing is guessed or refused by lsst.images
    legacy = MaskedImage.read_legacy(path, plane_map={name: MaskPlane(name, "") for name in names})
    mask = {plane.name: legacy.mask.get(plane.name) for plane in legacy.mask.schema if plane is not None}
    return legacy.image.array, legacy.variance.array, mask


def _scan_hdu(
    path: Path, hdus: astropy.io.fits.HDUList, planes: _Planes, camera: _Camera,
    physical_filters: Collection[str], keywords: HeaderKeywords, refuse_empty: bool,
) -> FlatSource:
    """Check one detector's image and header; raise `FlatIngestError` with every problem found."""
    where = _where(path, hdus, planes.image)
    header = _Header(hdus[planes.image].header, hdus[0].header)
    fields = _Fields()
    _read_exposure(fields, header, keywords, physical_filters)
    fields.read("detector", _required, header, keywords.detector, "detector", camera.detector)
    if fields.have("detector"):
        fields.read("planes", _check_planes, planes, hdus, fields.values["detector"], camera.name)
    fields.read("unit", _unit, header, keywords)
    if planes.variance is None and fields.have("unit"):
        fields.read("noise", _noise, header, keywords, fields.values["unit"])
    fields.read("emptiness", _emptiness, hdus[planes.image])
    if (emptiness := fields.values.get("emptiness")) is not None:
        if refuse_empty:
            fields.problems.append(f"{emptiness} (refused: images without a flat level are not ingested)")
        else:
            _LOG.warning("%s: %s; it is ingested, and the normalization will exclude it.", where, emptiness)
    if fields.problems:
        raise FlatIngestError([f"{where}: {problem}" for problem in fields.problems])
    values = fields.values
    return FlatSource(path, where, _exposure_info(values, keywords), values["detector"], planes,
                      values["unit"], values.get("noise"), emptiness)


def _emptiness(hdu: Any) -> str | None:
    """Read the image's pixels: what makes it useless as a flat (no finite pixel, no positive one),
    or `None`; raise `_HeaderProblem` if they cannot be read (a truncated file)."""
    try:
        pixels = np.asarray(hdu.data)
    except (TypeError, ValueError, OSError, EOFError) as error:
        raise _HeaderProblem(f"the pixels cannot be read (is the file truncated?): {error}") from None
    finite = pixels[np.isfinite(pixels)]
    if finite.size == 0:
        return "the image has no finite pixel"
    if not (finite > 0).any():
        return "the image has no positive pixel"
    return None


def _scan_file(
    path: Path, camera: _Camera, physical_filters: Collection[str], keywords: HeaderKeywords,
    refuse_empty: bool,
) -> tuple[list[FlatSource], list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AstropyUserWarning)
        try:
            hdus = astropy.io.fits.open(path)
            hdus.readall()  # every header, so that a file cut short says so here
        except OSError as error:
            return [], [f"{path}: not a readable FITS file ({error})"]
    with hdus:
        groups, problems = _group_planes(path, hdus)
        if cut_short := [warning for warning in caught if _is_cut_short(warning)]:
            said = str(cut_short[0].message).splitlines()[0]
            problems.append(f"{path}: the file ends inside an HDU after HDU {len(hdus) - 1} (truncated or "
                            f"corrupted; astropy: {said}); nothing of it is ingested")
        sources = []
        for planes in groups:
            try:
                sources.append(_scan_hdu(path, hdus, planes, camera, physical_filters, keywords,
                                         refuse_empty))
            except FlatIngestError as error:
                problems.extend(error.problems)
    for warning in caught:
        if not _is_cut_short(warning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return sources, problems


def _is_cut_short(warning: warnings.WarningMessage) -> bool:
    """Whether astropy warned of a file that ends inside an HDU's data or header."""
    return any(sign in str(warning.message) for sign in _CUT_SHORT)


_COMPARED_FIELDS = ("obs_id", "seq_num", "day_obs", "physical_filter", "begin", "exposure_time",
                    "observation_type", "observation_reason")


def exposure_differences(new: ExposureInfo, old: ExposureInfo) -> list[str]:
    """Return what two descriptions of one exposure disagree on, as ``"<field> <new> vs <old>"``.

    Start times within a millisecond are the same.
    """
    differences = []
    for field in _COMPARED_FIELDS:
        a, b = getattr(new, field), getattr(old, field)
        if isinstance(a, astropy.time.Time):
            if abs((a - b).to_value(u.s)) < _SAME_START_SECONDS:
                continue
            a, b = a.utc.isot, b.utc.isot
        elif a == b:
            continue
        differences.append(f"{field} {a!r} vs {b!r}")
    return differences


def _check_inputs(sources: Sequence[FlatSource]) -> list[str]:
    """Problems between files: an (exposure, detector) twice, or an exposure described two ways."""
    problems = []
    first_of_entry: dict[tuple[int, int], FlatSource] = {}
    first_of_exposure: dict[int, FlatSource] = {}
    for source in sources:
        entry = (source.exposure.id, source.detector_id)
        if (other := first_of_entry.setdefault(entry, source)) is not source:
            problems.append(f"{source.where}: exposure {entry[0]}, detector {entry[1]} "
                            f"({source.detector.getName()}) is also in {other.where}")
        other = first_of_exposure.setdefault(source.exposure.id, source)
        if differences := exposure_differences(source.exposure, other.exposure):
            problems.append(f"{source.where}: exposure {source.exposure.id} is described differently in "
                            f"{other.where}: {'; '.join(differences)}")
    return problems


def scan_flats(
    paths: Iterable[str | os.PathLike[str]],
    camera: Any,
    physical_filters: Collection[str],
    keywords: HeaderKeywords = HeaderKeywords(),
    *,
    refuse_empty: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[FlatSource]:
    """Find every detector's flat in the files and check it: headers, and whether the pixels can be
    read and give a flat level.

    Parameters
    ----------
    paths : `~collections.abc.Iterable` [`str` or `os.PathLike`]
        FITS files, each one detector's flat or several (see the module documentation).
    camera : camera-like
        The instrument's camera: iterates detectors with ``getId()``, ``getName()``, ``getBBox()``.
    physical_filters : `~collections.abc.Collection` [`str`]
        The instrument's registered physical filters.
    keywords : `HeaderKeywords`, optional
        Where the headers give each value.
    refuse_empty : `bool`, optional
        Refuse an image with no finite or no positive pixel (by default it is ingested with a
        warning, and its `FlatSource.emptiness` says why it is empty).
    progress : `~collections.abc.Callable` [[`int`], `None`], optional
        Called with the number of files checked so far after each file.

    Returns
    -------
    sources : `list` [`FlatSource`]
        One per image, in file and HDU order.

    Raises
    ------
    FlatIngestError
        Raised with every problem found: an unreadable or truncated file or one without an image; a
        missing keyword or unusable value; a detector the camera does not have; an image whose
        shape is not its detector's, or whose mask or variance plane does not match it; a physical
        filter the instrument does not have; no variance plane and no gain; an empty image with
        ``refuse_empty``; an (exposure, detector) in two places; one exposure described differently
        by two images.
    """
    camera_index = _Camera(camera)
    sources: list[FlatSource] = []
    problems: list[str] = []
    for checked, path in enumerate(paths, start=1):
        found, file_problems = _scan_file(Path(path), camera_index, physical_filters, keywords, refuse_empty)
        sources.extend(found)
        problems.extend(file_problems)
        if progress is not None:
            progress(checked)
    problems.extend(_check_inputs(sources))
    if not sources and not problems:
        problems.append("no files to ingest")
    if problems:
        raise FlatIngestError(problems)
    return sources
