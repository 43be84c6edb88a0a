# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Read a camera from the camera YAML format of obs_base's ``yamlCamera``.

This is the format obs_lsst generates for LSSTCam, LATISS and LSSTComCam (``policy/<camera>.yaml``)
and that ``lsst.obs.base.yamlCamera.makeCamera`` turns into an afw camera.  Only what
`~lsst.cp.flatnorm.camera_model.CameraModel` holds is read, with ``makeCamera``'s meaning:

- ``name`` is the camera name and ``CCDs`` maps detector names to detectors;
- a detector's ``bbox`` is ``[[minX, minY], [maxX, maxY]]``, *inclusive* corners (afw's
  ``DetectorConfig.bbox_x0 .. bbox_y1``), so ``[[0, 0], [4071, 3999]]`` is 4072 x 4000 pixels;
- every amplifier box (``rawBBox``, ``rawDataBBox``, ...) is ``[[x0, y0], [width, height]]``;
- an amplifier's data region in the assembled detector has the size of its ``rawDataBBox`` and
  its origin at ``(ix * width, iy * height)`` with ``(ix, iy) = ixy``; ``flipXY``, ``perAmpData``
  and the raw offsets do not move it;
- amplifiers are in ``hdu`` order (a stable sort: LSSTCam's wavefront ``C13`` and ``C14`` share
  ``hdu: 4``);
- ``detectorType`` is afw's ``DetectorType`` value (SCIENCE=0, FOCUS=1, GUIDER=2, WAVEFRONT=3);
  the names are accepted too;
- ``offset`` is the focal-plane position (mm; a third, z, value is ignored) of the pixel
  ``refpos``, and ``yaw`` rotates the detector about it, in degrees, counter-clockwise;
  ``pitch`` and ``roll`` (zero for all obs_lsst cameras) are not kept: a warning names the
  detectors that have them.

The file is parsed with `ObsCameraLoader`, which keeps names as text and refuses a key written twice
in one mapping (two detectors or amplifiers of one name; see there).  The detectors' amplifiers
must tile them (`~lsst.cp.flatnorm.camera_model.DetectorModel`).
"""

from __future__ import annotations

__all__ = ["ObsCameraLoader", "read_obs_camera_yaml"]

import logging
import math
import os
import re
from typing import Any

import pydantic
import yaml

from .camera_model import (
    AmplifierModel,
    CameraModel,
    DetectorModel,
    DetectorType,
    PixelBox,
    summarize_validation_error,
)

_LOG = logging.getLogger(__name__)

_DETECTOR_TYPES: tuple[DetectorType, ...] = ("SCIENCE", "FOCUS", "GUIDER", "WAVEFRONT")
"""afw's ``DetectorType`` names, in the order of their values."""

_TEXT_KEYS = frozenset({"name", "serial", "physicalType"})
"""Keys whose values are text even when they look like numbers (a serial ``0123``)."""

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_TAG = "tag:yaml.org,2002:bool"

# libyaml parses several times faster; only the resolvers and constructors below run in Python.
_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ObsCameraLoader(_BaseLoader):
    """A safe YAML loader that keeps names as text.

    PyYAML follows YAML 1.1, where a detector name ``1_53`` (HSC's style) is the integer 153, an
    amplifier name ``0`` is an integer, ``010`` is octal 8 and ``yes``/``no`` are booleans.  Here:

    - every scalar mapping key is its text (``0:`` gives ``"0"``, ``1_53:`` gives ``"1_53"``);
    - the values of ``name``, ``serial`` and ``physicalType`` are their text when they look like
      numbers;
    - other scalars follow YAML 1.2's core schema: integers are decimal digits without
      underscores, floats are like ``-1.5e3``, ``.5``, ``.inf`` or ``.nan``, and only
      ``true``/``false`` (any of three cases) are booleans.

    Merge keys (``<<: *anchor``), which obs_lsst's generated files use throughout, still work.
    """

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT_TAG, _FLOAT_TAG, _BOOL_TAG)]
        # Both loaders resolve with PyYAML's Resolver's table.
        for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        _refuse_duplicate_keys(node)
        self.flatten_mapping(node)  # resolves "<<" merge keys into plain entries, which own keys override
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a scalar", key_node.start_mark)
            key = key_node.value
            if key in _TEXT_KEYS and _is_number(value_node):
                mapping[key] = value_node.value
            else:
                mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping

    def construct_decimal_int(self, node: yaml.ScalarNode) -> int:
        # SafeConstructor would read a leading 0 as octal.
        return int(self.construct_scalar(node), 10)


def _refuse_duplicate_keys(node: yaml.MappingNode) -> None:
    """Raise if a key is written twice in one mapping: YAML readers keep the last one, which would
    silently drop a detector or an amplifier given the same name twice."""
    first: dict[str, yaml.Node] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        if (earlier := first.setdefault(key_node.value, key_node)) is not key_node:
            raise yaml.constructor.ConstructorError(
                "in a mapping", node.start_mark,
                f"the key {key_node.value!r} appears twice (first on line {earlier.start_mark.line + 1}); "
                "names of detectors and amplifiers, and keys, must be unique", key_node.start_mark)


def _is_number(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag in (_INT_TAG, _FLOAT_TAG)


ObsCameraLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
ObsCameraLoader.add_implicit_resolver(_INT_TAG, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
ObsCameraLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"),
)
ObsCameraLoader.add_constructor(_INT_TAG, ObsCameraLoader.construct_decimal_int)


def read_obs_camera_yaml(path: str | os.PathLike[str]) -> CameraModel:
    """Read a camera from a camera YAML file of obs_base's ``yamlCamera`` format.

    Parameters
    ----------
    path : `str` or `os.PathLike`
        The camera YAML file (e.g. obs_lsst's generated ``lsstCam.yaml``).

    Returns
    -------
    camera : `~lsst.cp.flatnorm.camera_model.CameraModel`
        The camera, its detectors in ID order (as an afw camera iterates them).

    Raises
    ------
    ValueError
        Raised if the file is not valid YAML or does not describe a camera; the message names
        the file, and the detector, amplifier and key where there is one.
    """
    source = os.fspath(path)
    with open(source) as stream:
        try:
            document = yaml.load(stream, Loader=ObsCameraLoader)
        except (yaml.YAMLError, ValueError) as exc:
            raise ValueError(f"{source}: not readable as YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError(f"{source}: expected a mapping with the keys 'name' and 'CCDs'.")
    ccds = _require(document, "CCDs", source)
    if not isinstance(ccds, dict) or not ccds:
        raise ValueError(f"{source}: key 'CCDs' must map detector names to detectors.")
    detectors = [_read_detector(name, ccd, f"{source}: detector {name!r}") for name, ccd in ccds.items()]
    _warn_if_tilted(ccds, source)
    try:
        return CameraModel(name=_text(_require(document, "name", source)),
                           detectors=sorted(detectors, key=lambda detector: detector.id))
    except pydantic.ValidationError as exc:
        raise ValueError(f"{source}: {summarize_validation_error(exc)}") from exc


def _read_detector(name: str, ccd: Any, where: str) -> DetectorModel:
    """Build one detector from its ``CCDs`` entry; ``where`` prefixes error messages."""
    if not isinstance(ccd, dict):
        raise ValueError(f"{where}: expected a mapping, got {ccd!r}.")
    offset = _floats(ccd, "offset", where, (2, 3))
    reference = _floats(ccd, "refpos", where, (2,))
    pixel_x, pixel_y = _floats(ccd, "pixelSize", where, (2,))
    if pixel_x != pixel_y:
        raise ValueError(f"{where}: key 'pixelSize': pixels must be square; got {[pixel_x, pixel_y]}.")
    try:
        return DetectorModel(
            id=_integer(_require(ccd, "id", where), where, "id"),
            name=name,
            type=_detector_type(_require(ccd, "detectorType", where), where),
            serial=_text(ccd.get("serial", "")),
            physical_type=_text(ccd.get("physicalType", "CCD")),  # afw's default
            bbox=_box_from_corners(_require(ccd, "bbox", where), where, "bbox"),
            focal_plane_x=offset[0],
            focal_plane_y=offset[1],
            yaw=_floats(ccd, "yaw", where, None)[0],
            reference_point=(reference[0], reference[1]),
            pixel_size=pixel_x,
            amplifiers=_read_amplifiers(_require(ccd, "amplifiers", where), where),
        )
    except pydantic.ValidationError as exc:
        raise ValueError(f"{where}: {summarize_validation_error(exc)}") from exc


def _read_amplifiers(amplifiers: Any, where: str) -> list[AmplifierModel]:
    """Build a detector's amplifiers, each boxed where ``yamlCamera`` puts its data region."""
    if not isinstance(amplifiers, dict) or not amplifiers:
        raise ValueError(f"{where}: key 'amplifiers' must map amplifier names to amplifiers.")
    ordered = []
    for name, amp in amplifiers.items():
        amp_where = f"{where}: amplifier {name!r}"
        if not isinstance(amp, dict):
            raise ValueError(f"{amp_where}: expected a mapping, got {amp!r}.")
        hdu = _integer(_require(amp, "hdu", amp_where), amp_where, "hdu")
        ix, iy = _pair(_require(amp, "ixy", amp_where), amp_where, "ixy")
        _, (width, height) = _origin_and_size(_require(amp, "rawDataBBox", amp_where), amp_where,
                                              "rawDataBBox")
        try:
            box = PixelBox(x0=ix * width, y0=iy * height, width=width, height=height)
        except pydantic.ValidationError as exc:
            raise ValueError(f"{amp_where}: key 'rawDataBBox': {summarize_validation_error(exc)}") from exc
        ordered.append((hdu, AmplifierModel(name=name, bbox=box)))
    ordered.sort(key=lambda entry: entry[0])  # stable, like yamlCamera's sorted()
    return [amp for _, amp in ordered]


def _box_from_corners(value: Any, where: str, key: str) -> PixelBox:
    """Convert ``[[minX, minY], [maxX, maxY]]`` (inclusive, as afw's Box2I corners)."""
    (min_x, min_y), (max_x, max_y) = _two_pairs(value, where, key, "[[minX, minY], [maxX, maxY]]")
    if max_x < min_x or max_y < min_y:
        raise ValueError(f"{where}: key {key!r}: the corners {value!r} enclose no pixel.")
    return PixelBox(x0=min_x, y0=min_y, width=max_x - min_x + 1, height=max_y - min_y + 1)


def _origin_and_size(value: Any, where: str, key: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Check and return ``[[x0, y0], [width, height]]``, the amplifier boxes' layout."""
    return _two_pairs(value, where, key, "[[x0, y0], [width, height]]")


def _two_pairs(value: Any, where: str, key: str, layout: str) -> tuple[tuple[int, int], tuple[int, int]]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, list) for v in value)):
        raise ValueError(f"{where}: key {key!r}: expected {layout}, got {value!r}.")
    return _pair(value[0], where, key), _pair(value[1], where, key)


def _pair(value: Any, where: str, key: str) -> tuple[int, int]:
    """Return two integers given as a two-element list."""
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"{where}: key {key!r}: expected two integers, got {value!r}.")
    return _integer(value[0], where, key), _integer(value[1], where, key)


def _integer(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: key {key!r}: expected an integer, got {value!r}.")
    return value


def _floats(mapping: dict[str, Any], key: str, where: str, lengths: tuple[int, ...] | None) -> list[float]:
    """Return the finite number (``lengths=None``) or list of numbers under ``key``."""
    value = _require(mapping, key, where)
    values = [value] if lengths is None else value
    if lengths is not None and (not isinstance(value, list) or len(value) not in lengths):
        raise ValueError(f"{where}: key {key!r}: expected a list of {' or '.join(map(str, lengths))} "
                         f"numbers, got {value!r}.")
    for number in values:
        # A NaN is left when a template's placeholder (obs_lsst's "offset: [.nan, .nan]") is not
        # overridden: refuse it rather than put the detector nowhere.
        if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
            raise ValueError(f"{where}: key {key!r}: expected finite numbers, got {value!r}.")
    return [float(number) for number in values]


def _detector_type(value: Any, where: str) -> DetectorType:
    """Map afw's ``DetectorType`` value (or name) to its name."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(_DETECTOR_TYPES):
        return _DETECTOR_TYPES[value]
    if isinstance(value, str) and value.upper() in _DETECTOR_TYPES:
        return _DETECTOR_TYPES[_DETECTOR_TYPES.index(value.upper())]
    raise ValueError(f"{where}: key 'detectorType': expected 0-3 or one of {', '.join(_DETECTOR_TYPES)}, "
                     f"got {value!r}.")


def _require(mapping: dict[str, Any], key: str, where: str) -> Any:
    try:
        return mapping[key]
    except KeyError:
        raise ValueError(f"{where}: missing key {key!r}.") from None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _warn_if_tilted(ccds: dict[str, Any], source: str) -> None:
    """Warn about detectors with a pitch or roll, which the model cannot hold."""
    tilted = [name for name, ccd in ccds.items()
              if any(ccd.get(angle, 0.0) not in (0, None) for angle in ("pitch", "roll"))]
    if tilted:
        _LOG.warning("%s: pitch and roll of %d detector(s) are ignored (%s).", source, len(tilted),
                     ", ".join(tilted[:5]) + (", ..." if len(tilted) > 5 else ""))
