# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Ingest post-ISR flat FITS files into a butler repository as ``cpFlatIsrExp`` datasets.

`ingest_flats` is all or nothing.  It checks every file (`lsst.cp.flatnorm.flat_fits.scan_flats`)
and the repository (an (exposure, detector) already ingested, an exposure whose existing record
says otherwise) before writing anything, and raises `~lsst.cp.flatnorm.flat_fits.FlatIngestError`
with every problem.  Then one butler transaction inserts the new exposures' records, puts the
images into a RUN collection and puts that run first in the instrument's umbrella collection
(``<instrument>/defaults``, with its calibration collection), so that
``pipetask run -i <instrument>/defaults`` finds the flats and the camera.  If anything fails in
the transaction, the registry and the datastore are rolled back, a ``cpFlatIsrExp`` dataset type
that the call registered is removed again, and so are the directories the datastore made: the
repository is left as it was.  Both phases report their progress on long file lists
(`lsst.cp.flatnorm.progress`).

An exposure whose record exists already (its other detectors were ingested before) keeps it, if the
headers agree with it.  Ingesting an (exposure, detector) twice is refused.
"""

from __future__ import annotations

__all__ = ["INGEST_DATASET_TYPE", "IngestResult", "default_run", "ingest_flats"]

import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

from lsst.daf.butler import (
    Butler, CollectionType, DatasetType, MissingCollectionError, MissingDatasetTypeError,
)
from lsst.pipe.base import Instrument
from lsst.resources import ResourcePath

from .butler_setup import no_new_empty_directories
from .exposure_records import ExposureInfo, insert_exposure_records
from .flat_connections import post_isr_flat_input
from .flat_fits import FlatIngestError, FlatSource, HeaderKeywords, exposure_differences, scan_flats
from .progress import Progress

_LOG = logging.getLogger(__name__)

_POST_ISR_FLATS = post_isr_flat_input("Post-ISR flats, as ingested.")
INGEST_DATASET_TYPE = _POST_ISR_FLATS.name
"""The post-ISR flats the flat pipelines read (``cpFlatIsrExp``)."""
_CAMERA_DATASET_TYPE = "camera"
_RUN_LABELS = ("flats", "ingested")


@dataclasses.dataclass(frozen=True)
class IngestResult:
    """What `ingest_flats` wrote."""

    run: str
    """RUN collection of the images."""
    umbrella: str
    """CHAINED collection that now leads with ``run``: the input collection for ``pipetask``."""
    sources: list[FlatSource]
    """Every image ingested, in file and HDU order."""
    new_exposures: list[ExposureInfo]
    """Exposures whose records were inserted (the others existed)."""


def default_run(instrument: Instrument) -> str:
    """Return the default RUN collection of ingested flats: ``<instrument>/flats/ingested``."""
    return instrument.makeCollectionName(*_RUN_LABELS)


def ingest_flats(
    butler: Butler,
    instrument_name: str,
    paths: Iterable[str | os.PathLike[str]],
    *,
    keywords: HeaderKeywords = HeaderKeywords(),
    run: str | None = None,
    refuse_empty: bool = False,
) -> IngestResult:
    """Ingest post-ISR flat FITS files as ``cpFlatIsrExp`` datasets, with their exposure records.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable butler.  The instrument must be registered, with its camera certified in its
        calibration collection (``FlatInstrument.register`` and ``write_camera`` do both).
    instrument_name : `str`
        Name of the instrument.
    paths : `~collections.abc.Iterable` [`str` or `os.PathLike`]
        FITS files (see `lsst.cp.flatnorm.flat_fits` for the layouts and keywords).
    keywords : `~lsst.cp.flatnorm.flat_fits.HeaderKeywords`, optional
        Where the headers give each value, and the defaults.
    run : `str`, optional
        RUN collection of the images; `default_run` if `None`.
    refuse_empty : `bool`, optional
        Refuse images with no finite or no positive pixel instead of ingesting them with a warning.

    Returns
    -------
    result : `IngestResult`

    Raises
    ------
    lsst.cp.flatnorm.flat_fits.FlatIngestError
        Raised, with nothing written, if the instrument or its camera is not in the repository, or
        with every problem of the files and of the repository (see `scan_flats`; also an
        (exposure, detector) already ingested, in any collection, an exposure ID above the
        instrument's ``exposure_max``, or an exposure whose record in the repository disagrees with
        the headers); or, with everything rolled back, if writing an image failed (naming the image
        and the cause: a full disk, a lost database...).
    """
    instrument, camera = _instrument_and_camera(butler, instrument_name)
    filters = {record.name for record in butler.query_dimension_records(
        "physical_filter", instrument=instrument_name, explain=False)}
    paths = list(paths)
    sources = scan_flats(paths, camera, filters, keywords, refuse_empty=refuse_empty,
                         progress=Progress(len(paths), "files checked", _LOG))
    run = run if run is not None else default_run(instrument)
    new_exposures = _check_repository(butler, instrument_name, run, sources)
    dataset_type = DatasetType(INGEST_DATASET_TYPE, _POST_ISR_FLATS.dimensions, _POST_ISR_FLATS.storageClass,
                               universe=butler.dimensions)
    # A dataset type may create tables, which cannot happen inside a transaction.
    registered = butler.registry.registerDatasetType(dataset_type)
    try:
        with no_new_empty_directories(butler):
            umbrella = _write(butler, instrument, run, dataset_type, sources, new_exposures)
    except BaseException:
        if registered:  # the rolled-back transaction left it without datasets
            butler.registry.removeDatasetType(INGEST_DATASET_TYPE)
        raise
    return IngestResult(run, umbrella, sources, new_exposures)


def _write(
    butler: Butler, instrument: Instrument, run: str, dataset_type: DatasetType,
    sources: Sequence[FlatSource], new_exposures: Sequence[ExposureInfo],
) -> str:
    """Insert the records, put the images and lead the umbrella collection with ``run``, in one
    transaction; return the umbrella collection's name.

    A put that fails (a full disk, a lost database) raises `FlatIngestError` naming the image and
    the cause, once the transaction is rolled back and the files of the images put before it are
    removed.
    """
    name = instrument.getName()
    progress = Progress(len(sources), "images written", _LOG)
    written: list[ResourcePath] = []
    try:
        with butler.transaction():
            insert_exposure_records(butler, name, new_exposures)
            butler.collections.register(run)
            for source in sources:
                image = source.read()
                try:
                    ref = butler.put(image, dataset_type, instrument=name, exposure=source.exposure.id,
                                     detector=source.detector_id, run=run)
                except Exception as error:
                    raise FlatIngestError([f"{source.where}: writing exposure {source.exposure.id}, detector "
                                           f"{source.detector_id} into run {run} failed: "
                                           f"{_root_cause(error)}"]) from error
                written.append(butler.getURI(ref))
                progress(len(written))
            return _lead_umbrella(butler, instrument, run)
    except BaseException:
        # daf_butler's rollback forgets the files of the puts before a put that failed (its
        # Datastore.transaction leaves the failed inner transaction current, so the outer one is never
        # rolled back), which would leave files that no dataset owns.
        for uri in written:
            if uri.exists():
                uri.remove()
        raise


def _root_cause(error: BaseException) -> str:
    """The first cause of ``error`` (the formatter's or the file system's), on one line."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return " ".join(f"{type(error).__name__}: {error}".split())


def _instrument_and_camera(butler: Butler, name: str) -> tuple[Instrument, Any]:
    try:
        instrument = Instrument.fromName(name, butler.registry)
    except (LookupError, ImportError) as error:
        raise FlatIngestError([f"instrument {name!r}: {error}"]) from None
    collection = instrument.makeCalibrationCollectionName()
    try:
        camera = butler.get(_CAMERA_DATASET_TYPE, instrument=name, collections=collection)
    except (LookupError, MissingCollectionError) as error:
        raise FlatIngestError([f"instrument {name!r} has no camera in {collection} ({error})"]) from None
    return instrument, camera


def _check_repository(
    butler: Butler, instrument: str, run: str, sources: Sequence[FlatSource]
) -> list[ExposureInfo]:
    """Return the exposures whose records are to be inserted; raise `FlatIngestError` if ``run`` is
    another kind of collection, an image is ingested already or an existing exposure record disagrees
    with the headers."""
    exposures = {source.exposure.id: source.exposure for source in sources}
    existing = _existing_exposures(butler, instrument, exposures)
    ingested = _ingested_runs(butler, instrument, exposures)
    problems = _run_problems(butler, run) + _exposure_id_problems(butler, instrument, sources)
    for source in sources:
        entry = (source.exposure.id, source.detector_id)
        if entry in ingested:
            problems.append(f"{source.where}: exposure {entry[0]}, detector {entry[1]} "
                            f"({source.detector.getName()}) is already ingested, in run {ingested[entry]}")
        if source.exposure.id in existing:
            if differences := exposure_differences(source.exposure, existing[source.exposure.id]):
                problems.append(f"{source.where}: exposure {source.exposure.id} has a record in the "
                                f"repository that differs (header vs record): {'; '.join(differences)}")
    if problems:
        raise FlatIngestError(problems)
    return [exposure for exposure_id, exposure in exposures.items() if exposure_id not in existing]


def _exposure_id_problems(butler: Butler, instrument: str, sources: Sequence[FlatSource]) -> list[str]:
    """An exposure ID above the largest the instrument's record allows (``exposure_max``)."""
    (record,) = butler.query_dimension_records("instrument", instrument=instrument, explain=False)
    return [f"{source.where}: exposure ID {source.exposure.id} is above the largest that instrument "
            f"{instrument} allows (exposure_max = {record.exposure_max})"
            for source in sources if source.exposure.id > record.exposure_max]


def _run_problems(butler: Butler, run: str) -> list[str]:
    try:
        collection_type = butler.collections.get_info(run).type
    except MissingCollectionError:
        return []
    if collection_type != CollectionType.RUN:
        return [f"collection {run} is {collection_type.name}, not a RUN collection to put the images in"]
    return []


def _existing_exposures(butler: Butler, instrument: str, exposures: Iterable[int]) -> dict[int, ExposureInfo]:
    """The exposures among ``exposures`` that have records, as `ExposureInfo`, to compare."""
    records = butler.query_dimension_records(
        "exposure", instrument=instrument, where="exposure IN (:ids)", bind={"ids": list(exposures)},
        explain=False, limit=None,
    )
    return {
        record.id: ExposureInfo(
            id=record.id, obs_id=record.obs_id, seq_num=record.seq_num, day_obs=record.day_obs,
            physical_filter=record.physical_filter, begin=record.timespan.begin,
            exposure_time=record.exposure_time, observation_type=record.observation_type,
            observation_reason=record.observation_reason,
        )
        for record in records
    }


def _ingested_runs(butler: Butler, instrument: str, exposures: Iterable[int]) -> dict[tuple[int, int], str]:
    """(exposure, detector) -> run of every ``cpFlatIsrExp`` of these exposures, in any collection."""
    try:
        refs = butler.query_datasets(
            INGEST_DATASET_TYPE, collections="*", find_first=False, instrument=instrument,
            where="exposure IN (:ids)", bind={"ids": list(exposures)}, explain=False, limit=None,
        )
    except MissingDatasetTypeError:
        return {}
    return {(int(ref.dataId["exposure"]), int(ref.dataId["detector"])): ref.run for ref in refs}


def _lead_umbrella(butler: Butler, instrument: Instrument, run: str) -> str:
    """Put ``run`` first in the instrument's umbrella collection, creating it (``run`` and the
    calibration collection) if need be; return its name."""
    umbrella = instrument.makeUmbrellaCollectionName()
    if butler.collections.register(umbrella, CollectionType.CHAINED):
        butler.collections.redefine_chain(umbrella, [run, instrument.makeCalibrationCollectionName()])
    elif run not in butler.collections.get_info(umbrella).children:
        butler.collections.prepend_chain(umbrella, run)
    return umbrella
