# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""TriCam, a user's own three-detector camera (``chip1``..``chip3``, amplifiers ``A`` and ``B``), as
obs_base camera YAML and an instrument config, and its flats as astropy writes them."""

import os
from pathlib import Path

import astropy.io.fits as fits
import numpy as np

from lsst.daf.butler import Butler

NAME = "TriCam"
FILTER = "tri_r"
DETECTORS = ("chip1", "chip2", "chip3")
AMP_WIDTH, AMP_HEIGHT = 8, 4
SHAPE = (AMP_HEIGHT, 2 * AMP_WIDTH)
LAMPS = (20000.0, 26000.0, 17000.0)
RESPONSES = (1.0, 0.9, 1.1)
FIRST_EXPOSURE = 2026113000001


def amplifier_yaml(name, hdu, ix, width=AMP_WIDTH):
    return f"      {name}: {{hdu: {hdu}, ixy: [{ix}, 0], rawDataBBox: [[0, 0], [{width}, {AMP_HEIGHT}]]}}\n"


def detector_yaml(name, detector_id, amplifiers=None):
    amplifiers = amplifiers or amplifier_yaml("A", 1, 0) + amplifier_yaml("B", 2, 1)
    return (f"  {name}:\n    id: {detector_id}\n    detectorType: 0\n    offset: [{detector_id}.0, 0.0]\n"
            f"    refpos: [7.5, 1.5]\n    yaw: 0.0\n    pixelSize: [0.01, 0.01]\n"
            f"    bbox: [[0, 0], [{SHAPE[1] - 1}, {SHAPE[0] - 1}]]\n    amplifiers:\n{amplifiers}")


def camera_yaml(detectors=None):
    """TriCam's camera YAML; ``detectors`` replaces its ``CCDs`` entries (text of `detector_yaml`)."""
    if detectors is None:
        detectors = "".join(detector_yaml(name, i + 1) for i, name in enumerate(DETECTORS))
    return f"name: {NAME}\nCCDs:\n{detectors}"


def write_config(directory, name=NAME):
    """camera.yaml and the instrument config ``<name>.yaml`` using it; return the config's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "camera.yaml").write_text(camera_yaml())
    config = directory / f"{name}.yaml"
    config.write_text(f"name: {name}\ncamera: camera.yaml\nfilters:\n  {FILTER}: r\n")
    return config


def exposure_id(index):
    return FIRST_EXPOSURE + index


def cards(index, **changes):
    values = {"EXPID": exposure_id(index), "DATE-OBS": f"2026-11-30T18:{index:02d}:00", "EXPTIME": 20.0,
              "FILTER": FILTER, "IMGTYPE": "FLAT", "BUNIT": "electron"}
    values.update(changes)
    return {key: value for key, value in values.items() if value is not None}


def pixels(index, detector):
    """Exposure ``index`` (of `LAMPS`, cyclically) on ``detector`` (its name in any case)."""
    response = RESPONSES[[name.casefold() for name in DETECTORS].index(detector.casefold())]
    return np.full(SHAPE, LAMPS[index % len(LAMPS)] * response, dtype=np.float32)


def write_mef(path, index, *, detectors=DETECTORS, data=None, **changes):
    """One exposure in one file, an image HDU named (by astropy, so upper case) after each detector."""
    primary = fits.PrimaryHDU()
    primary.header.update(cards(index, **changes))
    hdus = [primary] + [fits.ImageHDU(pixels(index, name) if data is None else data, name=name)
                        for name in detectors]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(path)
    return path


def files_and_directories(root):
    """Every file and directory under ``root`` but the registry's database."""
    return sorted(os.path.join(directory, name) for directory, names, files in os.walk(root)
                  for name in names + files if not name.startswith("gen3.sqlite3"))


def repository_state(root):
    """What an ingest could change: exposure records, datasets of every collection, files and directories."""
    butler = Butler.from_config(str(root))
    return {
        "exposures": sorted(r.id for r in butler.query_dimension_records("exposure", explain=False)),
        "datasets": sorted(str(ref) for ref in butler.query_all_datasets("*", find_first=False)),
        "paths": files_and_directories(root),
    }
