# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""A butler instrument configured by a YAML file: name, camera and physical filters.

`FlatInstrument` registers the instrument, detector and physical_filter records of any camera and
writes its camera model as a certified calibration, which is all the flat pipeline needs of an
instrument.  The file looks like::

    name: MyCam                 # a Python identifier: the instrument's class is named after it
    camera: camera.json         # relative to this file: a CameraModel JSON file, an obs_base
                                # yamlCamera file (.yaml/.yml), or python:module.function
    filters:                    # physical_filter: band
      my_g: g
      my_r: r

The butler and ``pipetask`` construct an instrument from the class name the registry holds, with
no argument but ``collection_prefix``, and ``getName`` is a class method, so every instrument
needs a class of its own with an importable path.  This module provides one for any name:
``lsst.cp.flatnorm.instrument.MyCam`` is created on first access (PEP 562) and, when constructed
without a config, reads ``MyCam.yaml`` from the directories of ``$CP_FLATNORM_INSTRUMENT_PATH``
or the package's ``configs/instruments/`` (``SimFlatCam.yaml`` is there).
"""

from __future__ import annotations

__all__ = [
    "CAMERA_DATASET_TYPE",
    "INSTRUMENT_PATH_ENV",
    "FlatInstrument",
    "FlatInstrumentConfig",
    "config_search_path",
    "instrument_class",
]

import builtins
import functools
import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import pydantic
import yaml

from lsst.daf.butler import (
    Butler,
    DatasetRef,
    DatasetType,
    DatasetTypeNotSupportedError,
    MissingCollectionError,
    Timespan,
)
from lsst.daf.butler.registry import CollectionType, Registry
from lsst.pipe.base import Instrument
from lsst.utils.introspection import get_full_type_name

from .butler_setup import SEED_CONFIG_PATH
from .camera_model import CameraModel, DetectorModel
from .camera_source import check_camera_source, load_camera

CAMERA_DATASET_TYPE = "camera"
_CAMERA_STORAGE_CLASS = "CameraModel"

INSTRUMENT_PATH_ENV = "CP_FLATNORM_INSTRUMENT_PATH"
"""Environment variable: directories (`os.pathsep` separated) searched for ``<Name>.yaml``
before the package's own ``configs/instruments/``."""

_PACKAGE_CONFIGS = Path(str(resources.files("lsst.cp.flatnorm") / "configs" / "instruments"))
_DEFAULT_ID_MAX = 10**14  # room for exposure IDs of the form day_obs * 100000 + seq_num

_RegistryName = Annotated[str, pydantic.StringConstraints(min_length=1, max_length=32)]
"""A name the registry stores: its instrument, physical_filter and band columns hold 32 characters
(which also keeps ``lsst.cp.flatnorm.instrument.<Name>`` within the 64 of ``class_name``)."""


def _check_instrument_name(name: str) -> str:
    """Return ``name`` if ``lsst.cp.flatnorm.instrument.<name>`` can be the instrument's class.

    Raises
    ------
    ValueError
        Raised if ``name`` is not a public identifier, or if the path would find something else:
        a name of this module (or the module itself, which `lsst.utils.doImport` probes for), or a
        builtin (`lsst.utils.introspection.get_full_type_name` gives builtins' names bare).
    """
    if not name.isidentifier() or name.startswith("_"):
        raise ValueError(f"{name!r} is not a valid instrument name: it names the class "
                         "lsst.cp.flatnorm.instrument.<name>, so it must be a Python identifier "
                         "not starting with '_'.")
    if name in globals() or name == __name__.rpartition(".")[2] or hasattr(builtins, name):
        raise ValueError(f"{name!r} cannot name an instrument: lsst.cp.flatnorm.instrument.{name} "
                         "is taken by a Python or module name.")
    return name


def _describe_error(error: Any) -> str:
    """Return one pydantic error as ``key: message`` (a validator's own text for value errors)."""
    key = ".".join(str(part) for part in error["loc"])
    message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
    return f"{key}: {message}"


class FlatInstrumentConfig(pydantic.BaseModel):
    """The configuration of a `FlatInstrument`, as read by `from_file`.

    Attributes
    ----------
    name : `str`
        Instrument name; a Python identifier, since it also names the instrument's class.
    camera : `str`
        A camera source (`lsst.cp.flatnorm.camera_source`): a CameraModel JSON file (``.json``),
        an obs_base yamlCamera file (``.yaml``/``.yml``), ``python:module.function`` or
        ``instrument:module.Class``.  `from_file` makes a relative path relative to the config
        file and checks that the file exists.
    filters : `dict` [`str`, `str`]
        Band of each physical filter.
    exposure_max, visit_max : `int`
        Exclusive upper bounds of exposure and visit IDs (instrument record).
    raft_separator : `str` or `None`
        A detector name splits at its first ``raft_separator`` into the record's ``raft`` and
        ``name_in_raft`` (``R22_S11``: raft ``R22``, ``S11``); a name without it, or `None`, gives
        no raft.
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: _RegistryName
    camera: str
    filters: dict[_RegistryName, _RegistryName] = pydantic.Field(min_length=1)
    exposure_max: pydantic.PositiveInt = _DEFAULT_ID_MAX
    visit_max: pydantic.PositiveInt = _DEFAULT_ID_MAX
    raft_separator: str | None = pydantic.Field(default="_", min_length=1)

    @pydantic.field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _check_instrument_name(value)

    @pydantic.field_validator("camera")
    @classmethod
    def _check_camera(cls, value: str, info: pydantic.ValidationInfo) -> str:
        return check_camera_source(value, (info.context or {}).get("directory"))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> FlatInstrumentConfig:
        """Read and check an instrument config file.

        Parameters
        ----------
        path : `str` or `os.PathLike`
            The YAML file.

        Returns
        -------
        config : `FlatInstrumentConfig`
            The config, with the camera file's path made absolute.

        Raises
        ------
        FileNotFoundError
            Raised if there is no file at ``path``.
        ValueError
            Raised if the file is not a YAML mapping or a key is missing, unknown or invalid; the
            message names the file and the keys.
        """
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"Instrument config {path}: not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"Instrument config {path}: expected a mapping with keys name, camera and "
                             f"filters; got {type(data).__name__}.")
        try:
            return cls.model_validate(data, context={"directory": path.absolute().parent})
        except pydantic.ValidationError as err:
            errors = "; ".join(_describe_error(error) for error in err.errors())
            raise ValueError(f"Instrument config {path}: {errors}") from err

    def load_camera(self) -> CameraModel:
        """Read or build the camera that ``camera`` names (`lsst.cp.flatnorm.camera_source.load_camera`)."""
        return load_camera(self.camera)


def config_search_path() -> list[Path]:
    """Return the directories searched for ``<Name>.yaml``, first match winning: those of
    ``$CP_FLATNORM_INSTRUMENT_PATH``, then the package's ``configs/instruments``."""
    extra = os.environ.get(INSTRUMENT_PATH_ENV, "")
    return [Path(directory) for directory in extra.split(os.pathsep) if directory] + [_PACKAGE_CONFIGS]


class FlatInstrument(Instrument):
    """An instrument whose name, camera and filters come from a `FlatInstrumentConfig`.

    This class is generic: instruments are its subclasses `instrument_class` makes, one per name,
    available as ``lsst.cp.flatnorm.instrument.<Name>``.  Build one from a file with
    `from_config`.

    Parameters
    ----------
    collection_prefix : `str`, optional
        Prefix of the instrument's collection names; the instrument name by default.
    config : `FlatInstrumentConfig`, optional
        The instrument's config; if `None`, ``<Name>.yaml`` is looked for in
        `config_search_path`.  Without one the instrument still has its name and collection names
        (which is all ``pipetask`` asks of it), but no camera or filters.
    camera : `lsst.cp.flatnorm.camera_model.CameraModel`, optional
        Camera to use instead of the config's (tests and the simulator pass small ones); it must
        have the instrument's name.

    Raises
    ------
    ValueError
        Raised if the config or the camera is another instrument's.
    """

    _instrument_name: str | None = None
    """The instrument name of a class made by `instrument_class`; `None` on this generic class."""

    def __init__(
        self,
        collection_prefix: str | None = None,
        *,
        config: FlatInstrumentConfig | None = None,
        camera: CameraModel | None = None,
    ):
        super().__init__(collection_prefix=collection_prefix)
        name = self.getName()
        if config is not None and config.name != name:
            raise ValueError(f"{name} cannot take the config of instrument {config.name!r}.")
        self._config = config if config is not None else self._find_config()
        self._camera = self._check_camera(camera) if camera is not None else None

    @classmethod
    def getName(cls) -> str:
        if cls._instrument_name is None:
            raise TypeError("FlatInstrument is generic: use FlatInstrument.from_config(path) or "
                            "lsst.cp.flatnorm.instrument.<Name>.")
        return cls._instrument_name

    @staticmethod
    def from_config(path: str | os.PathLike[str], collection_prefix: str | None = None) -> FlatInstrument:
        """Return the instrument a config file describes.

        Parameters
        ----------
        path : `str` or `os.PathLike`
            The instrument's YAML config (see `FlatInstrumentConfig`).
        collection_prefix : `str`, optional
            Prefix of the instrument's collection names; the instrument name by default.

        Returns
        -------
        instrument : `FlatInstrument`
            An instance of ``lsst.cp.flatnorm.instrument.<name>``.
        """
        config = FlatInstrumentConfig.from_file(path)
        return instrument_class(config.name)(collection_prefix, config=config)

    @classmethod
    def _find_config(cls) -> FlatInstrumentConfig | None:
        """Read the first ``<Name>.yaml`` of `config_search_path`, or return `None`."""
        name = cls.getName()
        for directory in config_search_path():
            path = directory / f"{name}.yaml"
            if path.is_file():
                config = FlatInstrumentConfig.from_file(path)
                if config.name != name:
                    raise ValueError(f"Instrument config {path} is for instrument {config.name!r}, "
                                     f"not {name!r}.")
                return config
        return None

    @property
    def config(self) -> FlatInstrumentConfig:
        """The instrument's config.

        Raises
        ------
        LookupError
            Raised if the instrument was constructed without one and none was found.
        """
        if self._config is None:
            name = self.getName()
            directories = ", ".join(str(directory) for directory in config_search_path())
            raise LookupError(
                f"No config file {name}.yaml for instrument {name} in {directories} (add directories "
                f"with ${INSTRUMENT_PATH_ENV}). An instrument constructed by name without it still "
                "names its collections, but has no camera or filters: its camera is in the butler "
                f"repository as the certified {CAMERA_DATASET_TYPE!r} calibration (collection "
                f"{self.makeCalibrationCollectionName()}), and registering the instrument or writing "
                "its camera needs the config file (or FlatInstrument.from_config(path))."
            )
        return self._config

    def _check_camera(self, camera: CameraModel, source: str = "") -> CameraModel:
        """Return ``camera`` if it is this instrument's (the butler files it by instrument name)."""
        if camera.getName() != self.getName():
            raise ValueError(f"{self.getName()} needs a camera named {self.getName()!r}; "
                             f"got {camera.getName()!r}{source}.")
        return camera

    def getCamera(self) -> CameraModel:
        """Return the camera geometry this instrument registers and writes.

        Raises
        ------
        LookupError
            Raised if the instrument has neither a camera nor a config.
        """
        if self._camera is None:
            self._camera = self._check_camera(self.config.load_camera(), f" from {self.config.camera}")
        return self._camera

    def getRawFormatter(self, dataId: Any) -> type:
        raise NotImplementedError(
            f"{self.getName()} reads no raw data: flats come in as post-ISR images (dataset type "
            "cpFlatIsrExp, via `cp-flatnorm ingest` or the simulator), so there is no raw formatter."
        )

    def register(self, registry: Registry, *, update: bool = False) -> None:
        """Insert the instrument, detector and physical_filter records, in one transaction.

        Parameters
        ----------
        registry : `lsst.daf.butler.Registry`
            Registry of the repository to modify.
        update : `bool`, optional
            Replace existing records that differ from the new ones instead of raising.
        """
        config, camera, name = self.config, self.getCamera(), self.getName()
        instrument_record = {
            "name": name,
            "detector_max": max((detector.getId() for detector in camera), default=-1) + 1,
            "exposure_max": config.exposure_max,
            "visit_max": config.visit_max,
            "visit_system": 0,
            "class_name": get_full_type_name(self),
        }
        with registry.transaction():
            registry.syncDimensionData("instrument", instrument_record, update=update)
            for detector in camera:
                registry.syncDimensionData("detector", self._detector_record(detector), update=update)
            for physical_filter, band in config.filters.items():
                registry.syncDimensionData(
                    "physical_filter", {"instrument": name, "name": physical_filter, "band": band},
                    update=update,
                )

    def _detector_record(self, detector: DetectorModel) -> dict[str, Any]:
        """Return the dimension record of one detector: its name is the full name, split at the
        config's ``raft_separator`` into raft and name in raft."""
        full_name = detector.getName()
        separator = self.config.raft_separator
        raft, name_in_raft = (
            full_name.split(separator, 1) if separator and separator in full_name else (None, full_name)
        )
        return {
            "instrument": self.getName(),
            "id": detector.getId(),
            "full_name": full_name,
            "raft": raft,
            "name_in_raft": name_in_raft,
            "purpose": detector.type,
        }

    def write_camera(self, butler: Butler, *labels: str) -> DatasetRef:
        """Write the camera as a calibration valid at all times.

        The dataset goes into the RUN collection `makeUnboundedCalibrationRunName` and is
        certified, with an unbounded validity range, in the CALIBRATION collection
        `makeCalibrationCollectionName` (``<Name>/calib`` without labels).

        Parameters
        ----------
        butler : `lsst.daf.butler.Butler`
            Writeable butler of a repository in which the instrument is registered and that
            knows the ``CameraModel`` storage class (see `lsst.cp.flatnorm.butler_setup.make_repo`).
        *labels : `str`
            Extra labels for the collection names.

        Returns
        -------
        ref : `lsst.daf.butler.DatasetRef`
            Reference to the written camera.
        """
        dataset_type = self._camera_dataset_type(butler)
        butler.registry.registerDatasetType(dataset_type)
        run = self.makeUnboundedCalibrationRunName(*labels)
        calib_collection = self.makeCalibrationCollectionName(*labels)
        butler.registry.registerRun(run)
        butler.registry.registerCollection(calib_collection, CollectionType.CALIBRATION)
        ref = butler.put(self.getCamera(), dataset_type, instrument=self.getName(), run=run)
        butler.registry.certify(calib_collection, [ref], Timespan(None, None))
        return ref

    def register_with_camera(self, butler: Butler, *, update: bool = False) -> bool:
        """`register` the records and `certify_camera`, all or nothing.

        Parameters
        ----------
        butler : `lsst.daf.butler.Butler`
            Writeable butler of a repository made with the package's seed config.
        update : `bool`, optional
            Replace records and a certified camera that differ instead of raising.

        Returns
        -------
        written : `bool`
            Whether a camera was written (`False`: the same camera was certified already).
        """
        # A dataset type's tables cannot be created inside a transaction: register it first, and
        # remove it again if nothing else goes in.
        try:
            dataset_type = self._camera_dataset_type(butler)
            new_type = butler.registry.registerDatasetType(dataset_type)
        except KeyError:  # a repository not made with the seed config, in a process that never saw one
            raise _unknown_storage_class() from None
        try:
            with butler.transaction():
                self.register(butler.registry, update=update)
                return self.certify_camera(butler, update=update)
        except Exception:
            if new_type:
                butler.registry.removeDatasetType(CAMERA_DATASET_TYPE)
            raise

    def certify_camera(self, butler: Butler, *, update: bool = False) -> bool:
        """Write and certify the camera, unless the same camera is certified already.

        Parameters
        ----------
        butler : `lsst.daf.butler.Butler`
            Writeable butler of a repository in which the instrument is registered.
        update : `bool`, optional
            Replace a different camera certified in `makeCalibrationCollectionName` (it is
            decertified and deleted) instead of raising.

        Returns
        -------
        written : `bool`
            Whether a camera was written (`False`: the same camera was certified already).

        Raises
        ------
        ValueError
            Raised if the repository does not know the ``CameraModel`` storage class, or certifies
            a different camera and ``update`` is false.
        """
        calib_collection = self.makeCalibrationCollectionName()
        existing = self._certified_camera_ref(butler)
        if existing is not None:
            if butler.get(existing) == self.getCamera():
                return False
            if not update:
                raise ValueError(f"{calib_collection} already certifies a different camera for "
                                 f"{self.getName()}; use update (--update) to replace it.")
            with butler.transaction():
                butler.registry.decertify(calib_collection, CAMERA_DATASET_TYPE, Timespan(None, None))
                butler.pruneDatasets([existing], disassociate=True, unstore=True, purge=True)
        try:
            self.write_camera(butler)
        except DatasetTypeNotSupportedError:
            # The storage class is known process-wide once any seeded repository was opened, so only
            # the datastore of this repository can tell whether it has the formatter.
            raise _unknown_storage_class() from None
        return True

    @staticmethod
    def _camera_dataset_type(butler: Butler) -> DatasetType:
        return DatasetType(CAMERA_DATASET_TYPE, ("instrument",), _CAMERA_STORAGE_CLASS,
                           universe=butler.dimensions, isCalibration=True)

    def _certified_camera_ref(self, butler: Butler) -> DatasetRef | None:
        """The camera certified in `makeCalibrationCollectionName`, if any."""
        calib_collection = self.makeCalibrationCollectionName()
        try:
            butler.collections.get_info(calib_collection)
        except MissingCollectionError:
            return None
        if not butler.registry.queryDatasetTypes(CAMERA_DATASET_TYPE):
            return None
        return butler.find_dataset(CAMERA_DATASET_TYPE, instrument=self.getName(),
                                   collections=calib_collection, timespan=Timespan(None, None))


def _unknown_storage_class() -> ValueError:
    return ValueError(
        f"The repository does not know the {_CAMERA_STORAGE_CLASS} storage class: create it with "
        "cp-flatnorm register (or lsst.cp.flatnorm.butler_setup.make_repo), or give "
        f"`butler create` the seed config {SEED_CONFIG_PATH}."
    )


@functools.cache
def instrument_class(name: str) -> type[FlatInstrument]:
    """Return the `FlatInstrument` subclass of instrument ``name``, made once per process.

    Its path is ``lsst.cp.flatnorm.instrument.<name>`` (the module answers that attribute with
    this class), so the registry's ``class_name``, ``pipetask`` and pickle all find it.

    Raises
    ------
    ValueError
        Raised if ``name`` cannot name a class of this module.
    """
    _check_instrument_name(name)
    return type(name, (FlatInstrument,), {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"The instrument {name}: a `FlatInstrument` configured by {name}.yaml.",
        "_instrument_name": name,
    })


def __getattr__(name: str) -> type[FlatInstrument]:
    # PEP 562: any instrument name is a class of this module.  Other names (dunders that the
    # import system and tools probe among them) raise AttributeError, as a module should.
    try:
        return instrument_class(name)
    except ValueError as err:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}: {err}") from None
