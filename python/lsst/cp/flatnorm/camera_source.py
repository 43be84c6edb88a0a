# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Where a camera comes from: the camera sources that instrument configs and
``cp-flatnorm camera import`` accept.

A source is one of:

- a CameraModel JSON file (``.json``), as ``cp-flatnorm camera import`` writes;
- an obs_base camera YAML file (``.yaml``/``.yml``, `CameraModel.from_obs_yaml`), as obs_lsst
  generates for LSSTCam, LATISS and LSSTComCam;
- ``python:module.function``: a callable taking no argument that returns a `CameraModel` or an
  afw ``Camera`` (converted with `CameraModel.from_afw`);
- ``instrument:module.Class``: a pipe_base ``Instrument`` class, constructed without arguments,
  whose ``getCamera()`` gives the camera (an obs package's instrument, such as
  ``instrument:lsst.obs.lsst.LsstCam``, where the full stack is set up).
"""

from __future__ import annotations

__all__ = ["CAMERA_FILE_SUFFIXES", "check_camera_source", "load_camera"]

from pathlib import Path
from collections.abc import Callable
from typing import Any, cast

import pydantic

from lsst.utils import doImport

from .camera_model import CameraModel

CAMERA_FILE_SUFFIXES = (".json", ".yaml", ".yml")
_PYTHON_PREFIX = "python:"
_INSTRUMENT_PREFIX = "instrument:"
_IMPORT_PREFIXES = (_PYTHON_PREFIX, _INSTRUMENT_PREFIX)


def check_camera_source(source: str, directory: Path | None = None) -> str:
    """Check the form of a camera source and return it, a file made absolute.

    Parameters
    ----------
    source : `str`
        The source (see the module documentation).
    directory : `pathlib.Path`, optional
        Directory a relative file path is relative to (the current directory by default).

    Returns
    -------
    source : `str`
        ``source``, or the absolute path of the camera file.

    Raises
    ------
    ValueError
        Raised if the source has none of the accepted forms or names no existing file.
    """
    prefix = next((prefix for prefix in _IMPORT_PREFIXES if source.startswith(prefix)), None)
    if prefix is not None:
        module, _, attribute = source.removeprefix(prefix).rpartition(".")
        if not all(part.isidentifier() for part in module.split(".") + [attribute]):
            target = "function" if prefix == _PYTHON_PREFIX else "Class"
            raise ValueError(f"expected {prefix}module.{target}; got {source!r}.")
        return source
    path = Path(source)
    if path.suffix not in CAMERA_FILE_SUFFIXES:
        raise ValueError(f"expected a camera file ending in {', '.join(CAMERA_FILE_SUFFIXES)}, "
                         f"python:module.function or instrument:module.Class; got {source!r}.")
    path = (directory or Path()).absolute() / path
    if not path.is_file():
        raise ValueError(f"no camera file {path}.")
    return str(path)


def load_camera(source: str) -> CameraModel:
    """Read, build or convert the camera that ``source`` names.

    Parameters
    ----------
    source : `str`
        A source accepted by `check_camera_source`.

    Returns
    -------
    camera : `lsst.cp.flatnorm.camera_model.CameraModel`

    Raises
    ------
    ValueError
        Raised if the source is malformed, or a camera file does not hold a valid camera (the
        message names the file).
    TypeError
        Raised if a ``python:`` or ``instrument:`` source gives something that is neither a
        `CameraModel` nor camera-like (no detectors to iterate).
    """
    source = check_camera_source(source)
    if source.startswith(_PYTHON_PREFIX):
        make_camera = cast(Callable[[], Any], doImport(source.removeprefix(_PYTHON_PREFIX)))
        return _as_camera_model(make_camera(), source)
    if source.startswith(_INSTRUMENT_PREFIX):
        instrument = cast(Callable[[], Any], doImport(source.removeprefix(_INSTRUMENT_PREFIX)))()
        return _as_camera_model(instrument.getCamera(), source)
    path = Path(source)
    try:
        if path.suffix == ".json":
            return CameraModel.model_validate_json(path.read_text())
        return CameraModel.from_obs_yaml(path)
    except pydantic.ValidationError as err:
        raise ValueError(f"Camera file {path}: {err}") from err


def _as_camera_model(camera: Any, source: str) -> CameraModel:
    """Return ``camera`` as a `CameraModel`, converting an afw camera by its protocol."""
    if isinstance(camera, CameraModel):
        return camera
    if not hasattr(camera, "__iter__") or not hasattr(camera, "getName"):
        raise TypeError(f"{source} gave a {type(camera).__name__}, neither a CameraModel nor an afw Camera.")
    return CameraModel.from_afw(camera)
