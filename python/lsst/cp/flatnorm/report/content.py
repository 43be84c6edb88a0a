# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""What a flat report shows, read from the butler (`collect_report`) into plain data
(`ReportContent`) that `lsst.cp.flatnorm.report.site` turns into pages.

Each detector's flat is read once: binned for its page (by the smallest factor that brings its
larger side to `MAX_BINNED_SIDE` bins) and measured per amplifier.  Each input image
(``cpFlatIsrExp``) is read once, divided by its exposure scale and the flat, and binned: its
residual against the flat, binned `RESIDUAL_COARSENING` times more coarsely.
"""

from __future__ import annotations

__all__ = ["AmplifierLevel", "DetectorContent", "ExposureContent", "MAX_BINNED_SIDE", "ReportContent",
           "RunSummary", "collect_report"]

import dataclasses
import datetime
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from astropy.table import Table

from lsst.daf.butler import Butler, DatasetRef, MissingCollectionError, MissingDatasetTypeError

from ..camera_model import CameraModel, DetectorModel
from ..flat_connections import POST_ISR_FLAT_DATASET_TYPE, as_camera_model
from ..focal_plane_mosaic import bin_image
from ..gradient_model import FlatGradientModel
from .verification import read_verdicts

MAX_BINNED_SIDE = 64
"""Bins along the larger side of a detector's binned flat on its page."""
RESIDUAL_COARSENING = 2
"""The inputs' residuals are binned this many times more coarsely than the flat: a detector's page
shows one per input, so they are kept small."""
FLAT_NAMES = ("flat", "flat_uncorrected")
"""Dataset types of the flat, the first found being reported."""
SCALE_TABLE = "cpFlatNormalizeScaleTable"
GRADIENT = "flat_gradient"
GRADIENT_FIGURES = ("gradient_model_residual_plot", "gradient_radial_model_plot")
_VERSIONS_SHOWN = ("lsst_cp_flatnorm", "cp_flatnorm", "pipe_base", "daf_butler", "ctrl_mpexec", "pex_config",
                   "utils", "images", "numpy", "scipy", "astropy", "python")
"""Packages whose versions the index lists first (the rest follow)."""


@dataclasses.dataclass
class RunSummary:
    """The run a report describes."""

    instrument: str
    physical_filter: str
    collections: list[str]
    flat_dataset_type: str
    flat_run: str
    labels: list[str]
    """Task labels whose configs are in the collections: the pipeline that ran."""
    versions: dict[str, str]
    written: str
    """When the report was written (UTC, ISO 8601)."""


@dataclasses.dataclass
class AmplifierLevel:
    """One amplifier's flat: mean level and pixel scatter of its usable pixels."""

    name: str
    level: float
    noise: float
    n_pixels: int


@dataclasses.dataclass
class DetectorContent:
    """What one detector's page shows."""

    detector: DetectorModel
    binned: npt.NDArray[np.float64]
    """Binned flat (rows are y)."""
    median: float
    amplifiers: list[AmplifierLevel]
    masked: dict[str, int]
    """Pixels in each mask plane of the flat."""
    residuals: dict[int, npt.NDArray[np.float64]]
    """Binned ``input / (E * flat) - 1`` by exposure (`RESIDUAL_COARSENING` times coarser)."""
    change: npt.NDArray[np.float64] | None
    """Binned ``flat / previous - 1``, or `None` without a previous flat."""


@dataclasses.dataclass
class ExposureContent:
    """One input exposure."""

    id: int
    obs_id: str
    start: str
    minutes: float
    """Start, in minutes after the first exposure's."""
    exposure_time: float
    reason: str


@dataclasses.dataclass
class ReportContent:
    """Everything a report shows."""

    summary: RunSummary
    camera: CameraModel
    detectors: dict[int, DetectorContent]
    exposures: dict[int, ExposureContent]
    scale_table: Table | None
    gradient: FlatGradientModel | None
    gradient_figures: dict[str, bytes]
    verdicts: dict[int, bool] | None
    previous: str | None
    """Collection of the previous flat compared with, if any."""
    binning: int
    """Detector pixels per bin of the binned flats."""

    def flagged(self, detector: int | None = None, exposure: int | None = None) -> Table | None:
        """Rows of the scale table not ``USED`` (of one detector or exposure), or `None` without one."""
        if self.scale_table is None:
            return None
        rows = self.scale_table[self.scale_table["flag"] != "USED"]
        if detector is not None:
            rows = rows[rows["detector"] == detector]
        if exposure is not None:
            rows = rows[rows["exposure"] == exposure]
        return rows


def _find(butler: Butler, name: str, collections: Sequence[str], **where: Any) -> list[DatasetRef]:
    """Datasets of one type found first along the collections; none if the type is not registered.

    Raises
    ------
    LookupError
        Raised if a collection does not exist.
    """
    try:
        return butler.query_datasets(name, collections=collections, find_first=True, limit=None,
                                     explain=False, **where)
    except MissingDatasetTypeError:
        return []
    except MissingCollectionError as error:
        raise LookupError(str(error)) from None


def _one_filter(butler: Butler, collections: Sequence[str], name: str,
                physical_filter: str | None) -> tuple[str, str, list[DatasetRef]]:
    """The flat's dataset type, physical filter and refs; a clear error unless exactly one filter."""
    where = {} if physical_filter is None else {"physical_filter": physical_filter}
    refs = _find(butler, name, collections, **where)
    filters = sorted({str(ref.dataId["physical_filter"]) for ref in refs})
    if not filters:
        raise LookupError(f"No {name} in collections {list(collections)}"
                          + (f" for physical_filter {physical_filter!r}." if physical_filter else "."))
    if len(filters) > 1:
        raise LookupError(f"Collections {list(collections)} hold {name} of several physical filters "
                          f"{filters}; choose one with --physical-filter.")
    return name, filters[0], refs


def _flat_refs(butler: Butler, collections: Sequence[str],
               physical_filter: str | None) -> tuple[str, str, list[DatasetRef]]:
    for name in FLAT_NAMES:
        if _find(butler, name, collections):
            return _one_filter(butler, collections, name, physical_filter)
    raise LookupError(f"No flat ({' or '.join(FLAT_NAMES)}) in collections {list(collections)}.")


def _labels(butler: Butler, collections: Sequence[str]) -> list[str]:
    names = [dataset_type.name for dataset_type in butler.registry.queryDatasetTypes("*_config")]
    return sorted(name.removesuffix("_config") for name in names if _find(butler, name, collections))


def _versions(butler: Butler, collections: Sequence[str]) -> dict[str, str]:
    refs = _find(butler, "packages", collections)
    if not refs:
        return {}
    packages = butler.get(refs[0])
    items = {str(name): str(version) for name, version in dict(packages).items()}
    first = [name for name in _VERSIONS_SHOWN if name in items]
    return {name: items[name] for name in first + sorted(set(items) - set(first))}


def _exposures(butler: Butler, instrument: str, ids: Sequence[int]) -> dict[int, ExposureContent]:
    if not ids:
        return {}
    records = butler.query_dimension_records(
        "exposure", instrument=instrument, where=f"exposure IN ({', '.join(str(i) for i in ids)})",
        explain=False, limit=None)
    starts = {record.id: record.timespan.begin for record in records}
    first = min(starts.values())
    return {
        record.id: ExposureContent(
            id=int(record.id), obs_id=str(record.obs_id), start=starts[record.id].isot,
            minutes=float((starts[record.id] - first).to_value("min")),
            exposure_time=float(record.exposure_time), reason=str(record.observation_reason))
        for record in sorted(records, key=lambda record: starts[record.id])
    }


def _amplifier_levels(detector: DetectorModel, image: npt.NDArray[np.floating],
                      usable: npt.NDArray[np.bool_]) -> list[AmplifierLevel]:
    levels = []
    origin_x, origin_y = detector.getBBox().getMinX(), detector.getBBox().getMinY()
    for amp in detector:
        box = amp.getBBox()
        region = (slice(box.getMinY() - origin_y, box.getMaxY() + 1 - origin_y),
                  slice(box.getMinX() - origin_x, box.getMaxX() + 1 - origin_x))
        values = image[region][usable[region]]
        level = float(values.mean()) if values.size else math.nan
        noise = float(values.std()) if values.size > 1 else math.nan
        levels.append(AmplifierLevel(amp.getName(), level, noise, int(values.size)))
    return levels


def _binning(detector: DetectorModel) -> int:
    box = detector.getBBox()
    return max(1, math.ceil(max(box.getWidth(), box.getHeight()) / MAX_BINNED_SIDE))


def _detector_content(butler: Butler, detector: DetectorModel, flat_ref: DatasetRef, binning: int,
                      inputs: dict[int, DatasetRef], exposure_scales: dict[int, float],
                      previous: DatasetRef | None) -> DetectorContent:
    flat = butler.get(flat_ref)
    image = np.asarray(flat.image.array, dtype=np.float64)
    schema = flat.mask.schema
    planes = {plane.name: flat.mask.get(plane.name) for plane in schema if plane is not None}
    no_data = planes.get("NO_DATA", np.zeros(image.shape, bool))
    usable = np.isfinite(image) & ~no_data
    binned, _ = bin_image(image, binning, ~usable)
    with np.errstate(invalid="ignore", divide="ignore"):
        residuals = {}
        for exposure, ref in sorted(inputs.items()):
            scale = exposure_scales.get(exposure, math.nan)
            residuals[exposure] = bin_image(butler.get(ref).image.array / (scale * image) - 1.0,
                                            RESIDUAL_COARSENING * binning, ~usable)[0]
        change = None
        if previous is not None:
            change = bin_image(image / butler.get(previous).image.array - 1.0, binning, ~usable)[0]
    return DetectorContent(
        detector=detector, binned=binned,
        median=float(np.median(image[usable])) if usable.any() else math.nan,
        amplifiers=_amplifier_levels(detector, image, usable),
        masked={name: int(pixels.sum()) for name, pixels in planes.items() if pixels.any()},
        residuals=residuals, change=change)


def _exposure_scales(table: Table | None, detector: int) -> dict[int, float]:
    """The exposure scale each input of a detector was divided by (its row's ``exp_scale``)."""
    if table is None:
        return {}
    rows = table[table["detector"] == detector]
    return {int(row["exposure"]): float(row["exp_scale"]) for row in rows}


def collect_report(
    butler: Butler,
    collections: Sequence[str],
    *,
    physical_filter: str | None = None,
    previous: str | None = None,
    input_residuals: bool = True,
) -> ReportContent:
    """Read what a report shows of a flat run.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        The repository.
    collections : `~collections.abc.Sequence` [`str`]
        Collections with the run's outputs (``flat`` or ``flat_uncorrected``, the normalization's
        ``cpFlatNormalizeScaleTable``, the gradient where fitted, the verification where run) and
        its inputs (``cpFlatIsrExp``, the camera).
    physical_filter : `str`, optional
        The flat's physical filter; needed only if the collections hold flats of several.
    previous : `str`, optional
        Collection holding the previous flat of the same filter, to compare each detector with.
    input_residuals : `bool`, optional
        Whether to read every input image for its residual against the flat.

    Raises
    ------
    LookupError
        Raised if the collections hold no flat, flats of several filters with none chosen, or no
        camera; the message names the collections.
    """
    collections = list(collections)
    flat_name, physical_filter, flat_refs = _flat_refs(butler, collections, physical_filter)
    instrument = str(flat_refs[0].dataId["instrument"])
    data_id = {"instrument": instrument, "physical_filter": physical_filter}
    camera_refs = _find(butler, "camera", collections, instrument=instrument)
    if not camera_refs:
        raise LookupError(f"No camera of {instrument} in collections {collections}.")
    camera = as_camera_model(butler.get(camera_refs[0]))
    table_refs = _find(butler, SCALE_TABLE, collections, **data_id)
    table = butler.get(table_refs[0]) if table_refs else None
    exposure_ids = sorted({int(e) for e in table["exposure"]}) if table is not None else []
    inputs: dict[int, dict[int, DatasetRef]] = {}
    if input_residuals and table is not None:
        for ref in _find(butler, POST_ISR_FLAT_DATASET_TYPE, collections, instrument=instrument,
                         where=f"exposure IN ({', '.join(str(i) for i in exposure_ids)})"):
            inputs.setdefault(int(ref.dataId["detector"]), {})[int(ref.dataId["exposure"])] = ref
    previous_flats = _find(butler, "flat", [previous], **data_id) if previous else []
    previous_refs = {int(ref.dataId["detector"]): ref for ref in previous_flats}
    binning = _binning(next(iter(camera)))
    detectors = {}
    for ref in sorted(flat_refs, key=lambda ref: int(ref.dataId["detector"])):
        det_id = int(ref.dataId["detector"])
        detectors[det_id] = _detector_content(butler, camera[det_id], ref, binning, inputs.get(det_id, {}),
                                              _exposure_scales(table, det_id), previous_refs.get(det_id))
    gradient_refs = _find(butler, GRADIENT, collections, **data_id)
    summary = RunSummary(
        instrument=instrument, physical_filter=physical_filter, collections=collections,
        flat_dataset_type=flat_name, flat_run=flat_refs[0].run, labels=_labels(butler, collections),
        versions=_versions(butler, collections),
        written=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return ReportContent(
        summary=summary, camera=camera, detectors=detectors,
        exposures=_exposures(butler, instrument, exposure_ids), scale_table=table,
        gradient=butler.get(gradient_refs[0]) if gradient_refs else None,
        gradient_figures={name: butler.getURI(refs[0]).read() for name in GRADIENT_FIGURES
                          if (refs := _find(butler, name, collections, **data_id))},
        verdicts=read_verdicts(butler, collections, instrument, physical_filter), previous=previous,
        binning=binning)
