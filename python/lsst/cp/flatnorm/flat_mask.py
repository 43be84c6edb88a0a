# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The mask of an ingested post-ISR flat, built from the planes its FITS file names.

Every ingested flat gets the planes of `MASK_PLANES`, under afw's names, which the measurement
(``maskNameList``) and combine (``mask``) configs use, whether or not the file has them.  A FITS
``MASK`` HDU names its bits with afw's ``MP_<NAME> = bit`` cards; `legacy_planes` reads them.
lsst.images' names of afw planes (``SATURATED``, ``COSMIC_RAY``...) are translated back to afw's,
so the tasks see them.  Planes the tasks do not read are kept under their own names; those that
are not afw's standard planes either are logged, once per image.
"""

from __future__ import annotations

__all__ = ["MASK_PLANES", "ingested_mask", "legacy_planes"]

import logging
from collections.abc import Mapping, Sequence

import astropy.io.fits
import numpy as np

from lsst.images import Mask, MaskPlane, MaskSchema

_LOG = logging.getLogger(__name__)

MASK_PLANES: tuple[MaskPlane, ...] = (
    MaskPlane("BAD", "Bad pixel in the instrument."),
    MaskPlane("SAT", "Pixel was saturated."),
    MaskPlane("CR", "A cosmic ray affected this pixel."),
    MaskPlane("DETECTED", "Pixel was part of a detected source."),
    MaskPlane("NO_DATA", "No data was available for this pixel (or its value is not finite)."),
)
"""Planes every ingested flat has, first and in this order (afw's names)."""

_OTHER_AFW_PLANES: dict[str, str] = {
    "INTRP": "Pixel value was interpolated.",
    "EDGE": "Pixel was too close to the edge to be considered for detection.",
    "DETECTED_NEGATIVE": "Pixel was part of a detected source with negative flux.",
    "SUSPECT": "Pixel was close to the saturation level.",
    "CROSSTALK": "Pixel was affected by crosstalk and corrected accordingly.",
    "UNMASKEDNAN": "Pixel was found to be NaN unexpectedly.",
    "VIGNETTED": "Pixel was vignetted by the optics.",
    "PARTLY_VIGNETTED": "Pixel was partly vignetted by the optics.",
    "ITL_DIP": "Pixel was affected by a dark vertical trail from a bright source, on an ITL CCD.",
}
"""afw's other standard planes, which the flat tasks do not read but keep."""

_AFW_NAMES: dict[str, str] = {
    "SATURATED": "SAT",
    "COSMIC_RAY": "CR",
    "INTERPOLATED": "INTRP",
    "DETECTION_EDGE": "EDGE",
    "UNMASKED_NAN": "UNMASKEDNAN",
}
"""lsst.images' names of afw planes -> afw's names."""


def legacy_planes(header: astropy.io.fits.Header, array: np.ndarray, where: str) -> dict[str, np.ndarray]:
    """Return the pixels of each plane an afw-style ``MASK`` HDU names with ``MP_`` cards.

    Parameters
    ----------
    header : `astropy.io.fits.Header`
        Header of the ``MASK`` HDU; its ``MP_<NAME>`` cards give each plane's bit.
    array : `numpy.ndarray`
        Integer mask pixels.
    where : `str`
        The file and HDU of the mask, for the log.

    Returns
    -------
    planes : `dict` [`str`, `numpy.ndarray`]
        Plane name -> boolean pixels, in bit order.  A mask without ``MP_`` cards says nothing of
        what its bits mean: every non-zero pixel is then ``BAD``, and a note is logged.
    """
    bits = {card.keyword.removeprefix("MP_"): int(card.value)
            for card in header.cards if card.keyword.startswith("MP_")}
    # int64 keeps afw's bit 31 (a negative int32) a plain bit
    pixels = np.asarray(array).astype(np.int64)
    if not bits:
        _LOG.info("%s: the MASK HDU has no MP_ cards naming its bits; its non-zero pixels are BAD.", where)
        return {"BAD": pixels != 0}
    return {name: (pixels & (1 << bit)) != 0 for name, bit in sorted(bits.items(), key=lambda item: item[1])}


def ingested_mask(
    planes: Mapping[str, np.ndarray], shape: Sequence[int], yx0: Sequence[int], where: str
) -> Mask:
    """Build the mask of an ingested flat from the planes of its file.

    Parameters
    ----------
    planes : `~collections.abc.Mapping` [`str`, `numpy.ndarray`]
        Plane name (afw's, or lsst.images' name of an afw plane) -> boolean pixels.
    shape : `~collections.abc.Sequence` [`int`]
        ``(ny, nx)`` of the image.
    yx0 : `~collections.abc.Sequence` [`int`]
        ``(y, x)`` of the image's first pixel.
    where : `str`
        The file and HDU the mask comes from, for the log.

    Returns
    -------
    mask : `lsst.images.Mask`
        `MASK_PLANES` first, then the file's other planes in its order.
    """
    renamed: dict[str, np.ndarray] = {}
    for name, pixels in planes.items():
        afw_name = _AFW_NAMES.get(name, name)
        renamed[afw_name] = renamed[afw_name] | pixels if afw_name in renamed else pixels
    core = {plane.name for plane in MASK_PLANES}
    extra = [name for name in renamed if name not in core]
    unknown = [name for name in extra if name not in _OTHER_AFW_PLANES]
    if unknown:
        _LOG.info("%s: mask planes %s are not afw's standard planes; kept under their own names, which "
                  "the flat tasks do not read.", where, ", ".join(unknown))
    schema = MaskSchema(list(MASK_PLANES) + [
        MaskPlane(name, _OTHER_AFW_PLANES.get(name, "Plane of the ingested file.")) for name in extra
    ])
    mask = Mask(schema=schema, shape=shape, yx0=yx0)
    for name, pixels in renamed.items():
        mask.set(name, pixels)
    return mask
