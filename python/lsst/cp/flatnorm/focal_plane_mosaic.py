# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Binned detector images and their focal-plane mosaic (pure numpy).

A detector's image is binned in ``binning`` x ``binning`` blocks (the mean of each block's usable
pixels), and the binned images of a camera are laid out in one image whose pixels are
``binning`` detector pixels on a side, each detector turned by its yaw (a whole number of quarter
turns, as afw's ``makeImageFromCamera`` does) and centred where
`~lsst.cp.flatnorm.camera_model.DetectorModel.pixel_to_focal_plane` puts the centre of its binned
pixels.  The mosaic's row ``r`` and column ``c`` cover focal-plane
``x0 + (c .. c + 1) * scale``, ``y0 + (r .. r + 1) * scale`` (`MosaicGeometry`), so a report can
say which detector a mosaic pixel belongs to.  Where no detector lies the mosaic is NaN.
"""

from __future__ import annotations

__all__ = ["DetectorPlacement", "MosaicGeometry", "bin_image", "make_mosaic", "mosaic_geometry",
           "quarter_turns"]

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from .camera_model import DetectorModel

_YAW_TOLERANCE = 1e-3
"""Degrees a yaw may stray from a whole number of quarter turns."""


def bin_image(
    image: npt.NDArray[np.floating],
    factor: int,
    excluded: npt.NDArray[np.bool_] | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Average ``factor`` x ``factor`` blocks of an image, ignoring non-finite and excluded pixels.

    Rows and columns that do not fill a whole block are dropped; a block without any usable pixel
    is NaN.

    Parameters
    ----------
    image : `numpy.ndarray`, (ny, nx)
        Image to bin.
    factor : `int`
        Block size (1 returns the image as float).
    excluded : `numpy.ndarray` [`bool`], (ny, nx), optional
        Pixels to leave out (e.g. ``NO_DATA``).

    Returns
    -------
    binned : `numpy.ndarray`, (ny // factor, nx // factor)
        Mean of each block's usable pixels.
    counts : `numpy.ndarray`, (ny // factor, nx // factor)
        Number of usable pixels in each block.

    Raises
    ------
    ValueError
        Raised if ``factor`` is below 1 or above a side of the image (no whole block).
    """
    if factor < 1:
        raise ValueError(f"Binning factor must be at least 1; got {factor}.")
    ny, nx = (n // factor for n in image.shape)
    if ny == 0 or nx == 0:
        raise ValueError(f"Cannot bin an image of {image.shape[1]} x {image.shape[0]} pixels by {factor}: "
                         "not one whole block.")
    region = (slice(0, ny * factor), slice(0, nx * factor))
    blocks = np.asarray(image, dtype=np.float64)[region]
    usable = np.isfinite(blocks)
    if excluded is not None:
        usable &= ~excluded[region]
    shape = (ny, factor, nx, factor)
    counts = usable.reshape(shape).sum(axis=(1, 3))
    sums = np.where(usable, blocks, 0.0).reshape(shape).sum(axis=(1, 3))
    binned = np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)
    return binned, counts.astype(np.int64)


def quarter_turns(detector: DetectorModel) -> int:
    """Return the detector's yaw in counter-clockwise quarter turns (0-3).

    Raises
    ------
    ValueError
        Raised if the yaw is not a whole number of quarter turns; the message names the detector.
    """
    turns = detector.yaw / 90.0
    if abs(turns - round(turns)) * 90.0 > _YAW_TOLERANCE:
        raise ValueError(f"Detector {detector.getId()} ({detector.getName()}) has a yaw of {detector.yaw} "
                         "degrees; a mosaic turns detectors by whole quarter turns only.")
    return int(round(turns)) % 4


@dataclasses.dataclass(frozen=True)
class DetectorPlacement:
    """Where one detector's binned image lies in the mosaic."""

    row: int
    """Mosaic row of the image's first row."""
    column: int
    """Mosaic column of the image's first column."""
    binned_shape: tuple[int, int]
    """Shape of the detector's binned image, before it is turned."""
    turns: int
    """Counter-clockwise quarter turns applied to the binned image."""

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the binned image once turned, as it lies in the mosaic."""
        rows, columns = self.binned_shape
        return (columns, rows) if self.turns % 2 else (rows, columns)


@dataclasses.dataclass(frozen=True)
class MosaicGeometry:
    """The layout of a camera's binned images in one mosaic."""

    shape: tuple[int, int]
    """(rows, columns) of the mosaic."""
    origin: tuple[float, float]
    """Focal-plane (x, y) in mm of the mosaic's lower-left corner (the outer corner of pixel 0, 0)."""
    scale: float
    """Focal-plane mm per mosaic pixel."""
    placements: dict[int, DetectorPlacement]
    """Placement of each detector, by detector ID."""

    def extent(self) -> tuple[float, float, float, float]:
        """Focal-plane (left, right, bottom, top) of the mosaic in mm (matplotlib's ``extent``)."""
        x0, y0 = self.origin
        return (x0, x0 + self.shape[1] * self.scale, y0, y0 + self.shape[0] * self.scale)


def _binned_centre(detector: DetectorModel, binning: int) -> tuple[float, float]:
    """Focal-plane position of the centre of the detector's whole bins."""
    box = detector.getBBox()
    n_x, n_y = box.getWidth() // binning, box.getHeight() // binning
    x, y = detector.pixel_to_focal_plane(box.getMinX() + (n_x * binning - 1) / 2,
                                         box.getMinY() + (n_y * binning - 1) / 2)
    return float(x), float(y)


def mosaic_geometry(camera: Iterable[DetectorModel], binning: int) -> MosaicGeometry:
    """Lay out a camera's detectors, binned by ``binning``, in one mosaic.

    Parameters
    ----------
    camera : iterable of `~lsst.cp.flatnorm.camera_model.DetectorModel`
        The detectors (a `~lsst.cp.flatnorm.camera_model.CameraModel`), all of one pixel size.
    binning : `int`
        Detector pixels per binned pixel side.

    Raises
    ------
    ValueError
        Raised if ``binning`` is below 1, the camera has no detector, the pixel sizes differ or a
        yaw is not a whole number of quarter turns.
    """
    detectors = list(camera)
    if binning < 1 or not detectors:
        raise ValueError(f"A mosaic needs a binning of at least 1 and a detector; got binning {binning} "
                         f"and {len(detectors)} detectors.")
    sizes = {det.pixel_size for det in detectors}
    if len(sizes) > 1:
        raise ValueError(f"Detectors of different pixel sizes ({sorted(sizes)} mm) cannot share a mosaic.")
    scale = binning * sizes.pop()
    corners = {}
    for det in detectors:
        binned_shape = (det.getBBox().getHeight() // binning, det.getBBox().getWidth() // binning)
        placement = DetectorPlacement(0, 0, binned_shape, quarter_turns(det))
        centre_x, centre_y = _binned_centre(det, binning)
        corners[det.getId()] = (placement, centre_x - placement.shape[1] * scale / 2,
                                centre_y - placement.shape[0] * scale / 2)
    x0 = min(left for _, left, _ in corners.values())
    y0 = min(bottom for _, _, bottom in corners.values())
    placements = {
        det_id: dataclasses.replace(placement, row=int(round((bottom - y0) / scale)),
                                    column=int(round((left - x0) / scale)))
        for det_id, (placement, left, bottom) in corners.items()
    }
    n_rows = max(p.row + p.shape[0] for p in placements.values())
    n_columns = max(p.column + p.shape[1] for p in placements.values())
    return MosaicGeometry((n_rows, n_columns), (x0, y0), scale, placements)


def make_mosaic(
    binned: Mapping[int, npt.NDArray[np.floating]],
    geometry: MosaicGeometry,
) -> npt.NDArray[np.float32]:
    """Place binned detector images in a mosaic.

    Parameters
    ----------
    binned : `~collections.abc.Mapping` [`int`, `numpy.ndarray`]
        Binned image by detector ID (unturned, as `bin_image` returns it); detectors missing here
        stay NaN.
    geometry : `MosaicGeometry`
        The layout (`mosaic_geometry`, with the binning the images were made with).

    Raises
    ------
    ValueError
        Raised if a detector is not in the layout, or its image's shape is not the one the layout
        expects (binned with another factor); the message names the detector.
    """
    mosaic = np.full(geometry.shape, np.nan, dtype=np.float32)
    for det_id, image in binned.items():
        placement = geometry.placements.get(det_id)
        if placement is None:
            raise ValueError(f"Detector {det_id} is not in the camera the mosaic is laid out for.")
        if image.shape != placement.binned_shape:
            raise ValueError(f"Detector {det_id}: binned image of shape {image.shape}, where the mosaic "
                             f"expects {placement.binned_shape}; were both made with the same binning?")
        # np.rot90 turns from the first axis (y) towards the second (x) for positive k: clockwise in
        # a y-up image, so a counter-clockwise yaw is a negative k.
        turned = np.rot90(image, k=-placement.turns)
        rows = slice(placement.row, placement.row + turned.shape[0])
        columns = slice(placement.column, placement.column + turned.shape[1])
        mosaic[rows, columns] = turned
    return mosaic
