# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""What the two flat combine tasks share: config fields, tiles, and the finishing of the output flat.

`lsst.cp.flatnorm.cpCombine.CpFlatCombineTask` (cp_pipe's ``CalibCombineByFilterTask``) and
`lsst.cp.flatnorm.cpCombineTwoFlats.CpFlatCombineTwoFlatsTask` (cp_pipe's
``CalibCombineTwoFlatsByFilterTask``) read their inputs in tiles, combine them pixel by pixel, carry
the inputs' mask planes into the output, mark the pixels without a good input, fill NaN pixels with
the median and record cp_pipe's QA statistics.  Those steps are here, once.
"""

from __future__ import annotations

__all__ = [
    "ADDED_PLANES",
    "calibration_statistics",
    "calibration_type_field",
    "clip_passes_field",
    "clip_threshold_field",
    "combine_statistic_field",
    "distribution_percentiles_field",
    "empty_flat",
    "fill_nan_pixels",
    "iter_tiles",
    "mask_not_positive",
    "merge_masks",
    "no_good_pixels_mask_field",
    "pixel_box",
    "subregion_size_field",
    "validate_list_ranges",
]

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

import lsst.pex.config as pexConfig
from lsst.images import Box, Image, Mask, MaskedImage, MaskPlane, MaskSchema
from lsst.utils.logging import LsstLogAdapter

from .combine_stack import STATISTICS, iter_subregions

ADDED_PLANES = {
    "BAD": "No good input pixel (cp_pipe's noGoodPixelsMask), or filled with the median.",
    "NO_DATA": "No data: vignetted.",
    "VIGNETTED": "Outside the unvignetted focal-plane region.",
    "PARTLY_VIGNETTED": "Outside the fully illuminated focal-plane region.",
}
"""Descriptions of the mask planes the combine tasks add when an input lacks them."""


def calibration_type_field(default: str) -> pexConfig.Field:
    """Return cp_pipe's ``calibrationType`` field (OBSTYPE of the output).

    Parameters
    ----------
    default : `str`
        cp_pipe's default for the task: ``calibration`` for the combine, ``flat`` for the two-flat
        combination.
    """
    return pexConfig.Field(
        dtype=str,
        doc="Calibration type, recorded as OBSTYPE in the output metadata; 'flat' also writes FLATSRC "
            "and allows the vignetting masks.",
        default=default,
    )


def no_good_pixels_mask_field() -> pexConfig.Field:
    """Return cp_pipe's ``noGoodPixelsMask`` field."""
    return pexConfig.Field(
        dtype=str,
        doc="Mask plane set on pixels without a good input, and on NaN pixels filled with the median. "
            "cp_pipe uses BAD rather than NO_DATA so that downstream ISR treats them as defects "
            "(interpolated), not as an empty region.",
        default="BAD",
    )


def combine_statistic_field(default: str, doc: str) -> pexConfig.ChoiceField:
    """Return cp_pipe's ``combine`` field: the per-pixel statistic of the stack."""
    return pexConfig.ChoiceField(
        dtype=str,
        doc=doc,
        default=default,
        allowed=dict(zip(STATISTICS, (
            "Iterative clipped mean (clip, nIter), the median below minInputsForClip inputs.",
            "Mean of the unmasked inputs.",
            "Median of the unmasked inputs.",
        ), strict=True)),
    )


def clip_threshold_field(doc: str) -> pexConfig.RangeField:
    """Return a sigma-clipping threshold field: standard deviations, > 0, 3 by default.

    Parameters
    ----------
    doc : `str`
        What is clipped.
    """
    return pexConfig.RangeField(dtype=float, doc=doc, default=3.0, min=0.0, inclusiveMin=False)


def clip_passes_field(doc: str) -> pexConfig.RangeField:
    """Return a field for the most sigma-clipping passes: >= 0, 3 by default.

    Parameters
    ----------
    doc : `str`
        What the passes clip, and what 0 means.
    """
    return pexConfig.RangeField(dtype=int, doc=doc, default=3, min=0)


def subregion_size_field() -> pexConfig.ListField:
    """Return cp_pipe's ``subregionSize`` field: the tiles the inputs are read in."""
    return pexConfig.ListField(
        dtype=int,
        doc="Width, height (pixels) of the tiles the inputs are read and combined in, each >= 1. Peak "
            "memory is about 22 bytes x (number of inputs) x width x height, plus 9 bytes per detector "
            "pixel for the output: 100 inputs of 4072-pixel rows in 200-row tiles use about 1.9 GB. Each "
            "tile costs one read per input with a fixed overhead (~10 ms measured), so small tiles read "
            "slowly. The result does not depend on it.",
        length=2,
        default=(10000, 200),
    )


def distribution_percentiles_field() -> pexConfig.ListField:
    """Return cp_pipe's ``distributionPercentiles`` field (QA metadata of the output)."""
    return pexConfig.ListField(
        dtype=float,
        doc="Percentiles (each in [0, 100]) of each amplifier's pixel values recorded in the output "
            "metadata as 'LSST CALIB <TYPE> <amp> DISTRIBUTION <level>-PCT'.",
        default=[0, 5, 16, 50, 84, 95, 100],
    )


_LIST_RANGES = {"subregionSize": (1, None), "distributionPercentiles": (0.0, 100.0)}
"""Allowed range (inclusive; `None`: unbounded) of the items of the list fields above."""


def validate_list_ranges(config: pexConfig.Config) -> None:
    """Refuse items of ``subregionSize`` and ``distributionPercentiles`` outside their ranges.

    A ``ListField``'s ``itemCheck`` can only say that an item "is not a valid value"; this check,
    called from the configs' ``validate``, says which range is allowed.

    Raises
    ------
    lsst.pex.config.FieldValidationError
        Raised naming the field, the allowed range and the value.
    """
    for name, (low, high) in _LIST_RANGES.items():
        values = getattr(config, name, None)
        if values is None:
            continue
        if any(value < low or (high is not None and value > high) for value in values):
            allowed = f"[{low},{'inf)' if high is None else f'{high}]'}"
            raise pexConfig.FieldValidationError(getattr(type(config), name), config,
                                                 f"every item must be in {allowed}; got {list(values)}")


def pixel_box(box: Any) -> Box:
    """Convert an afw-protocol box (getMinX/getMinY/getWidth/getHeight) to an `lsst.images.Box`."""
    x0, y0 = box.getMinX(), box.getMinY()
    return Box.factory[y0:y0 + box.getHeight(), x0:x0 + box.getWidth()]


def iter_tiles(box: Box, subregion_size: Sequence[int]) -> Iterator[Box]:
    """Yield the tiles of ``box``, ``subregion_size = (width, height)``, row by row."""
    width, height = subregion_size
    for rows, columns in iter_subregions(box.y.size, box.x.size, height, width):
        yield Box.factory[box.y.start + rows.start:box.y.start + rows.stop,
                          box.x.start + columns.start:box.x.start + columns.stop]


def empty_flat(schema: MaskSchema, box: Box, planes: Sequence[str]) -> MaskedImage:
    """Return a float32 NaN flat whose mask has ``schema``'s planes, then those of ``planes`` it
    lacks (appended, so the inputs' planes keep their bits)."""
    missing = [MaskPlane(name, ADDED_PLANES.get(name, name)) for name in dict.fromkeys(planes)
               if name not in schema]
    schema = MaskSchema([*schema, *missing], dtype=schema.dtype)
    return MaskedImage(Image(np.nan, bbox=box, dtype=np.float32), mask_schema=schema,
                       variance=Image(np.nan, bbox=box, dtype=np.float32))


def merge_masks(target: Mask, source: Mask, where: np.ndarray) -> None:
    """Set in ``target`` the planes set in ``source``, at the pixels ``where`` is `True`.

    Planes are matched by name; planes ``target`` lacks are dropped.  This is afw's stacking rule:
    an output pixel carries the OR of the masks of the input pixels it used.
    """
    source_names = [plane.name if plane else None for plane in source.schema]
    target_names = [plane.name if plane else None for plane in target.schema]
    if source.schema.dtype == target.schema.dtype and target_names[:len(source_names)] == source_names:
        # Same leading planes: the bits line up, so OR the raw mask elements.
        n_elements = source.array.shape[-1]
        target.array[..., :n_elements] |= np.where(where[..., np.newaxis], source.array, 0)
        return
    for name in source.schema.names & target.schema.names:
        target.set(name, source.get(name) & where)


def fill_nan_pixels(flat: MaskedImage, plane: str, exclude: np.ndarray | None = None) -> int:
    """Replace NaN (or infinite) pixels of image or variance by the median, as cp_pipe does.

    Parameters
    ----------
    flat : `lsst.images.MaskedImage`
        Flat to fill in place.
    plane : `str`
        Mask plane to set on the filled pixels.
    exclude : `numpy.ndarray` [`bool`], optional
        Pixels left out of the medians (the vignetted region, which is not flat-field signal),
        unless they are all there is.

    Returns
    -------
    n_filled : `int`
        Number of pixels filled.

    Raises
    ------
    ValueError
        Raised if pixels need filling but no finite pixel is left to take the median of.
    """
    image, variance = flat.image.array, flat.variance.array
    bad = ~(np.isfinite(image) & np.isfinite(variance))
    n_filled = int(bad.sum())
    if n_filled == 0:
        return 0
    reference = ~bad if exclude is None or not (~bad & ~exclude).any() else ~bad & ~exclude
    if not reference.any():
        raise ValueError(f"All {bad.size} pixels of the flat are NaN; there is no median to fill them with.")
    image[bad] = np.median(image[reference])
    variance[bad] = np.median(variance[reference])
    flat.mask.set(plane, bad)
    return n_filled


def mask_not_positive(flat: MaskedImage, plane: str, detector: Any, detectorId: int,
                      log: logging.Logger | LsstLogAdapter, exclude: np.ndarray | None = None) -> int:
    """Mask every flat pixel whose value is not finite and positive, so that none leaves unmasked.

    Flat-fielding divides by the flat, so a zero (a dead amplifier combined from its zeros, which
    cp_pipe's scale layout keeps), a negative value or a NaN would turn science pixels into
    infinities or sign flips; masked with ``plane`` (cp_pipe's ``noGoodPixelsMask``, BAD by default)
    they are treated as defects downstream, as the pixels without a good input are.

    Parameters
    ----------
    flat : `lsst.images.MaskedImage`
        The flat, masked in place; its values are kept.
    plane : `str`
        Mask plane to set.
    detector : detector
        Iterates over amplifiers with ``getName()`` and ``getBBox()``, for the log.
    detectorId : `int`
        For the log.
    log : `logging.Logger`
        Where the warning naming the amplifiers goes.
    exclude : `numpy.ndarray` [`bool`], optional
        Pixels neither masked nor counted (the vignetted region, set to zero and masked NO_DATA on
        purpose).

    Returns
    -------
    n_masked : `int`
        Number of pixels masked (not finite and positive, outside ``exclude``).
    """
    image = flat.image.array
    pixels = ~(np.isfinite(image) & (image > 0))
    if exclude is not None:
        pixels &= ~exclude
    n_masked = int(pixels.sum())
    if n_masked:
        flat.mask.set(plane, pixels)
        by_amp = [(amp.getName(), int(pixels[_local_slices(amp.getBBox(), flat.bbox)].sum()))
                  for amp in detector]
        log.warning("Detector %d: %d pixels of the flat are not finite and positive (%s); masked %s, so that "
                    "flat-fielding never divides by them.", detectorId, n_masked,
                    ", ".join(f"{name}: {n}" for name, n in by_amp if n), plane)
    return n_masked


def _local_slices(box: Any, frame: Box) -> tuple[slice, slice]:
    """Array slices of an afw-protocol box inside an image whose box is ``frame``."""
    y0, x0 = box.getMinY() - frame.y.start, box.getMinX() - frame.x.start
    return slice(y0, y0 + box.getHeight()), slice(x0, x0 + box.getWidth())


def calibration_statistics(flat: MaskedImage, detector: Any, calibration_type: str,
                           percentiles: Sequence[float], no_good_plane: str,
                           log: logging.Logger | LsstLogAdapter) -> dict[str, float | int]:
    """Return cp_pipe's QA metadata of a combined calibration, per amplifier, warning about the
    amplifiers with pixels in ``no_good_plane``.

    Parameters
    ----------
    flat : `lsst.images.MaskedImage`
        The calibration (of the detector's box).
    detector : detector
        Iterates over amplifiers with ``getName()`` and ``getBBox()``.
    calibration_type : `str`
        Goes into the keys, upper case.
    percentiles : `~collections.abc.Sequence` [`float`]
        Percentile levels of the pixel values (NaN pixels ignored).
    no_good_plane : `str`
        Plane whose pixels are counted.
    log : `logging.Logger`
        Where the warning goes.

    Returns
    -------
    metadata : `dict`
        ``LSST CALIB <TYPE> <amp> DISTRIBUTION <level>-PCT`` for each level and
        ``LSST CALIB <TYPE> <amp> BADPIX-NUM``.
    """
    prefix = f"LSST CALIB {calibration_type.upper()}"
    metadata: dict[str, float | int] = {}
    for amp in detector:
        amp_flat = flat[pixel_box(amp.getBBox())]
        values = np.nanpercentile(amp_flat.image.array, percentiles) if len(percentiles) else []
        for level, value in zip(percentiles, values):
            metadata[f"{prefix} {amp.getName()} DISTRIBUTION {level}-PCT"] = float(value)
        n_flagged = int(amp_flat.mask.get(no_good_plane).sum())
        metadata[f"{prefix} {amp.getName()} BADPIX-NUM"] = n_flagged
        if n_flagged:
            log.warning("Found %d pixels with mask plane %s in amplifier %s.", n_flagged, no_good_plane,
                        amp.getName())
    return metadata
