# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Post-ISR flat FITS files with a known truth, in every layout ``cp-flatnorm ingest`` reads.

The signal of exposure ``e`` on detector ``d`` is ``lamp[e] * response[d] * pattern`` electrons,
written in ADU (divided by the detector's gain) unless a writer says otherwise.  The pattern's mean
over any set of whole columns is exactly 1, so a detector's level is ``lamp * response / gain``, and
the normalization's exposure scales are proportional to the lamp levels.
"""

import dataclasses
import functools
import shutil
from pathlib import Path

import astropy.io.fits as fits
import numpy as np
from astropy.time import Time

from lsst.cp.flatnorm.butler_setup import make_repo
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.instrument import SimFlatCam
from lsst.daf.butler import Butler

CAMERA = make_sim_camera(n_side=2, n_wavefront=1, amp_width=8, amp_height=8)
DAY_OBS = 20240601
AFW_PLANES = ("BAD", "SAT", "INTRP", "CR", "EDGE", "DETECTED", "DETECTED_NEGATIVE", "SUSPECT", "NO_DATA")
BAD_COLUMN = 3


@dataclasses.dataclass(frozen=True)
class Flats:
    """The truth of a set of flats and the header cards that describe it."""

    lamps: tuple[float, ...] = (20000.0, 25000.0, 18000.0, 30000.0)
    """Electrons per unit response, per exposure."""
    gains: tuple[float, ...] = (1.5, 2.0, 1.2, 1.8, 1.0)
    """Electrons per ADU, per detector (in camera order)."""
    responses: tuple[float, ...] = (1.0, 0.9, 1.1, 0.95, 0.8)
    read_noise: float = 4.0
    exposure_time: float = 10.0
    physical_filter: str = "sim_r"
    camera = CAMERA

    @property
    def detectors(self):
        return list(self.camera)

    def gain(self, detector):
        return self.gains[detector.getId()]

    def exposure_id(self, exposure):
        return DAY_OBS * 100_000 + exposure + 1

    def start(self, exposure):
        """Before noon UTC, so in the day of observation before the calendar day."""
        return f"2024-06-02T05:{exposure:02d}:00"

    def cards(self, exposure):
        """The primary header of an exposure (EXPID, DATE-OBS, EXPTIME, FILTER, IMGTYPE)."""
        return {"EXPID": self.exposure_id(exposure), "DATE-OBS": self.start(exposure),
                "EXPTIME": self.exposure_time, "FILTER": self.physical_filter, "IMGTYPE": "FLAT"}

    def electrons(self, exposure, detector):
        bbox = detector.getBBox()
        y, x = np.mgrid[0:bbox.getHeight(), 0:bbox.getWidth()]
        waves = np.sin(2 * np.pi * x / bbox.getWidth()) * np.cos(2 * np.pi * y / bbox.getHeight())
        pattern = 1 + 0.02 * waves
        return self.lamps[exposure] * self.responses[detector.getId()] * pattern

    def adu(self, exposure, detector):
        return (self.electrons(exposure, detector) / self.gain(detector)).astype(np.float32)

    def variance(self, exposure, detector):
        """The variance the ingest estimates for an image in ADU."""
        gain = self.gain(detector)
        return self.adu(exposure, detector) / gain + (self.read_noise / gain) ** 2

    def level(self, exposure, detector):
        return self.lamps[exposure] * self.responses[detector.getId()] / self.gain(detector)


def _primary(cards):
    hdu = fits.PrimaryHDU()
    hdu.header.update(cards)
    return hdu


def write_mef(path, flats, exposure, *, cards=None, detectors=None, data=None, noise_cards=True):
    """One image HDU per detector, named by EXTNAME, each with its GAIN and RDNOISE (unless not
    ``noise_cards``); no mask or variance."""
    hdus = [_primary(flats.cards(exposure) if cards is None else cards)]
    for detector in detectors or flats.detectors:
        pixels = flats.adu(exposure, detector) if data is None else data
        hdu = fits.ImageHDU(pixels, name=detector.getName())
        if noise_cards:
            hdu.header.update({"GAIN": flats.gain(detector), "RDNOISE": flats.read_noise})
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path)
    return Path(path)


def bad_column_mask(detector, bits):
    """A mask with the given bit set in column `BAD_COLUMN`."""
    bbox = detector.getBBox()
    mask = np.zeros((bbox.getHeight(), bbox.getWidth()), dtype=np.int32)
    mask[:, BAD_COLUMN] = bits
    return mask


def _plane_cards(planes):
    """afw's ``MP_<NAME> = bit`` cards; cfitsio writes the longer ones as HIERARCH cards, as does this."""
    return {f"HIERARCH MP_{name}": bit for bit, name in enumerate(planes)}


def write_detector_file(path, flats, exposure, detector, *, planes=("BAD", "SAT", "GLOW"), variance=True):
    """Primary header with DETECTOR, then IMAGE, MASK (``MP_`` cards naming ``planes``; every plane is set
    in column `BAD_COLUMN`, whose pixels are 0) and VARIANCE HDUs."""
    image = flats.adu(exposure, detector)
    image[:, BAD_COLUMN] = 0.0
    mask = fits.ImageHDU(bad_column_mask(detector, sum(1 << bit for bit in range(len(planes)))), name="MASK")
    mask.header.update(_plane_cards(planes))
    hdus = [_primary({**flats.cards(exposure), "DETECTOR": detector.getId()}),
            fits.ImageHDU(image, name="IMAGE"), mask]
    if variance:
        hdus.append(fits.ImageHDU(flats.variance(exposure, detector).astype(np.float32), name="VARIANCE"))
    fits.HDUList(hdus).writeto(path)
    return Path(path)


def write_afw_file(path, flats, exposure, detector):
    """afw's MaskedImage layout: empty primary HDU with the metadata, then IMAGE, MASK and VARIANCE, each with
    INHERIT, EXTTYPE, the xy0 cards (LTV1/2 and the LINEAR 'A' WCS) and, for the mask, afw's standard
    ``MP_`` planes plus MYPLANE.  BAD and MYPLANE are set in column `BAD_COLUMN`."""
    planes = AFW_PLANES + ("MYPLANE",)
    data = {
        "IMAGE": flats.adu(exposure, detector),
        "MASK": bad_column_mask(detector, (1 << planes.index("BAD")) | (1 << planes.index("MYPLANE"))),
        "VARIANCE": flats.variance(exposure, detector).astype(np.float32),
    }
    hdus = [_primary({**flats.cards(exposure), "DETECTOR": detector.getId()})]
    for exttype, pixels in data.items():
        hdu = fits.ImageHDU(pixels, name=exttype)
        hdu.header.update({"INHERIT": True, "EXTTYPE": exttype, "CTYPE1A": "LINEAR", "CTYPE2A": "LINEAR",
                           "CRPIX1A": 1.0, "CRPIX2A": 1.0, "CRVAL1A": 0.0, "CRVAL2A": 0.0,
                           "CUNIT1A": "PIXEL", "CUNIT2A": "PIXEL", "LTV1": 0, "LTV2": 0})
        hdus.append(hdu)
    hdus[1].header["BUNIT"] = "adu"
    hdus[2].header.update(_plane_cards(planes))
    fits.HDUList(hdus).writeto(path)
    return Path(path)


def write_mixed_set(directory, flats=Flats()):
    """Every exposure of ``flats`` in another layout, all in ADU: exposure 0 in one MEF (variance estimated),
    1 in one file per detector with mask and variance, 2 in afw files, 3 in an MEF whose header has MJD-OBS
    and SEQNUM instead of DATE-OBS and EXPID."""
    directory = Path(directory)
    paths = [write_mef(directory / "exp0.fits", flats, 0)]
    paths += [write_detector_file(directory / f"exp1_{det.getName()}.fits", flats, 1, det)
              for det in flats.detectors]
    paths += [write_afw_file(directory / f"exp2_{det.getName()}.fits", flats, 2, det)
              for det in flats.detectors]
    cards = {key: value for key, value in flats.cards(3).items() if key not in ("EXPID", "DATE-OBS")}
    cards.update({"SEQNUM": 4, "MJD-OBS": Time(flats.start(3), scale="utc").mjd})
    paths.append(write_mef(directory / "exp3.fits", flats, 3, cards=cards))
    return paths


def make_flat_repo(root):
    """A repository with SimFlatCam registered for `CAMERA` and the camera certified, no exposures."""
    butler = make_repo(root)
    instrument = SimFlatCam(camera=CAMERA)
    instrument.register(butler.registry)
    instrument.write_camera(butler)
    return butler


def copy_flat_repo(root, tmp_path_factory):
    """`make_flat_repo`'s repository at ``root``, copied from one made once per test process under
    pytest's base temporary directory (a fifth of the CPU of making it); its writeable butler."""
    shutil.copytree(_flat_repo_template(tmp_path_factory.getbasetemp()), root)
    return Butler.from_config(str(root), writeable=True)


@functools.cache
def _flat_repo_template(base_temp):
    root = base_temp / "flat_repo_template"
    make_flat_repo(root)
    return root
