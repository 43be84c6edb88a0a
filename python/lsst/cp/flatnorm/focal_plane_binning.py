# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Bin the flats of a whole focal plane into points in focal-plane millimetres (pure numpy).

Each detector's flat loses ``detector_boundary`` pixels on every side, is cropped to a whole
number of ``bin_factor`` x ``bin_factor`` bins, and each bin becomes one point: the mean of its
usable pixels (finite, outside the defects and the excluded mask planes) at the focal-plane
position of their mean pixel position.  For a bin whose pixels are all usable that is its centre:
``i + (bin_factor - 1) / 2`` for pixels ``i .. i + bin_factor - 1`` in afw's convention (integer
pixel coordinates are pixel centres).  cp_pipe places every bin at ``i + bin_factor / 2``, half a
pixel off, and a partly masked bin (a defect, the vignetted edge) at its centre although its mean
comes from one side of it; at the vignetting edge, where the flat falls steeply, that biases the
outermost spline node.  Positions go through the
detector's `~lsst.cp.flatnorm.camera_model.DetectorModel.pixel_to_focal_plane` (focal-plane offset,
yaw, reference point and pixel size), and each point records whether its detector is of the ITL
family (`~lsst.cp.flatnorm.gradient_model.is_itl_family`).
"""

from __future__ import annotations

__all__ = ["BINNED_COLUMNS", "bin_detector", "binned_table", "defect_boxes", "excluded_pixels"]

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from astropy.table import Table

from .camera_model import DetectorModel
from .gradient_model import is_itl_family

BINNED_COLUMNS = ("xf", "yf", "value", "detector", "itl", "n_pixels")
"""Columns of a binned focal plane: position (mm), mean value, detector ID, ITL flag, pixels used.
The first five are cp_pipe's."""


def defect_boxes(defects: Any) -> list[tuple[int, int, int, int]]:
    """Return the defects of a detector as ``(x0, y0, width, height)`` pixel boxes.

    Parameters
    ----------
    defects : `astropy.table.Table`, iterable, or `None`
        A table with ip_isr's defect columns ``x0``, ``y0``, ``width``, ``height`` (what
        ``lsst.ip.isr.Defects.toTable`` writes, and the ``ArrowAstropy`` defects of this package's
        repositories); or an iterable of defects with ``getBBox()`` (ip_isr's ``Defects``) or of
        boxes with ``getMinX()``, ``getMinY()``, ``getWidth()``, ``getHeight()``; `None` is no defect.

    Raises
    ------
    TypeError
        Raised if ``defects`` is none of these.
    """
    if defects is None:
        return []
    columns = getattr(defects, "colnames", None)
    if columns is not None:
        missing = {"x0", "y0", "width", "height"} - set(columns)
        if missing:
            raise TypeError("A defect table needs the columns x0, y0, width, height; it lacks "
                            f"{sorted(missing)}.")
        return [(int(row["x0"]), int(row["y0"]), int(row["width"]), int(row["height"])) for row in defects]
    boxes = []
    for defect in defects:
        box = defect.getBBox() if hasattr(defect, "getBBox") else defect
        try:
            boxes.append((int(box.getMinX()), int(box.getMinY()), int(box.getWidth()), int(box.getHeight())))
        except AttributeError as error:
            raise TypeError(f"Cannot read a defect box from {defect!r}.") from error
    return boxes


def excluded_pixels(
    shape: tuple[int, int],
    origin: tuple[int, int],
    boxes: Iterable[tuple[int, int, int, int]],
    masked: np.ndarray | None = None,
) -> np.ndarray:
    """Return the pixels a binning leaves out: inside a defect box, or ``masked``.

    Parameters
    ----------
    shape : `tuple` [`int`, `int`]
        (rows, columns) of the image.
    origin : `tuple` [`int`, `int`]
        Detector pixel (x, y) of the image's first column and row.
    boxes : iterable of `tuple` [`int`, `int`, `int`, `int`]
        Defect boxes ``(x0, y0, width, height)`` in detector pixels (`defect_boxes`).
    masked : `numpy.ndarray`, optional
        Boolean array of ``shape``: pixels already excluded (e.g. by mask planes).
    """
    excluded = np.zeros(shape, dtype=bool) if masked is None else masked.copy()
    x_origin, y_origin = origin
    for x0, y0, width, height in boxes:
        rows = slice(max(y0 - y_origin, 0), max(y0 + height - y_origin, 0))
        columns = slice(max(x0 - x_origin, 0), max(x0 + width - x_origin, 0))
        excluded[rows, columns] = True
    return excluded


def bin_detector(
    image: np.ndarray,
    excluded: np.ndarray | None,
    bin_factor: int,
    detector_boundary: int,
    origin: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bin one detector's flat.

    Parameters
    ----------
    image : `numpy.ndarray`
        The flat, (rows, columns).
    excluded : `numpy.ndarray` or `None`
        Boolean array of the same shape: pixels to leave out (non-finite pixels are left out too).
    bin_factor : `int`
        Pixels per bin side.
    detector_boundary : `int`
        Pixels left out along every edge before binning.
    origin : `tuple` [`int`, `int`], optional
        Detector pixel (x, y) of ``image[0, 0]``.

    Returns
    -------
    x, y : `numpy.ndarray`
        Detector pixel position of each bin: the mean position of its usable pixels, or its centre
        if it has none (flattened, row-major).
    value : `numpy.ndarray`
        Mean of the bin's usable pixels (NaN if it has none).
    n_pixels : `numpy.ndarray`
        Number of usable pixels of each bin.
    """
    if bin_factor < 1 or detector_boundary < 0:
        raise ValueError(f"bin_factor must be >= 1 and detector_boundary >= 0; got {bin_factor}, "
                         f"{detector_boundary}.")
    n_rows = max((image.shape[0] - 2 * detector_boundary) // bin_factor, 0)
    n_columns = max((image.shape[1] - 2 * detector_boundary) // bin_factor, 0)
    lo = detector_boundary
    region = (slice(lo, lo + n_rows * bin_factor), slice(lo, lo + n_columns * bin_factor))
    values = np.asarray(image[region], dtype=np.float64)
    usable = np.isfinite(values)
    if excluded is not None:
        usable &= ~excluded[region]
    shape = (n_rows, bin_factor, n_columns, bin_factor)
    sums = np.where(usable, values, 0.0).reshape(shape).sum(axis=(1, 3))
    counts = usable.reshape(shape).sum(axis=(1, 3))
    # The mean position of the usable pixels, which is the bin's centre when they all are.
    rows, columns = np.indices(values.shape, dtype=np.float64)
    row_sums = np.where(usable, rows, 0.0).reshape(shape).sum(axis=(1, 3))
    column_sums = np.where(usable, columns, 0.0).reshape(shape).sum(axis=(1, 3))
    centre = (bin_factor - 1) / 2
    x_centre, y_centre = np.meshgrid(np.arange(n_columns) * bin_factor + centre,
                                     np.arange(n_rows) * bin_factor + centre)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / counts, np.nan)
        x = np.where(counts > 0, column_sums / counts, x_centre)
        y = np.where(counts > 0, row_sums / counts, y_centre)
    return ((origin[0] + lo + x).ravel(), (origin[1] + lo + y).ravel(), means.ravel(), counts.ravel())


def binned_table(parts: Sequence[tuple[DetectorModel, tuple[np.ndarray, ...]]]) -> Table:
    """Assemble binned detectors into one table with `BINNED_COLUMNS`.

    Parameters
    ----------
    parts : `~collections.abc.Sequence` [`tuple`]
        ``(detector, bin_detector(...))`` for each detector.

    Returns
    -------
    binned : `astropy.table.Table`
        One row per bin: ``xf``, ``yf`` (focal-plane mm), ``value``, ``detector``, ``itl``,
        ``n_pixels``.
    """
    columns: dict[str, list[np.ndarray]] = {name: [] for name in BINNED_COLUMNS}
    for detector, (x, y, value, n_pixels) in parts:
        xf, yf = detector.pixel_to_focal_plane(x, y)
        columns["xf"].append(np.asarray(xf, dtype=np.float64))
        columns["yf"].append(np.asarray(yf, dtype=np.float64))
        columns["value"].append(np.asarray(value, dtype=np.float64))
        columns["detector"].append(np.full(len(value), detector.getId(), dtype=np.int32))
        columns["itl"].append(np.full(len(value), is_itl_family(detector.physical_type), dtype=bool))
        columns["n_pixels"].append(np.asarray(n_pixels, dtype=np.int64))
    dtypes = {"xf": np.float64, "yf": np.float64, "value": np.float64, "detector": np.int32,
              "itl": bool, "n_pixels": np.int64}
    return Table({name: (np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtypes[name]))
                  for name, arrays in columns.items()})
