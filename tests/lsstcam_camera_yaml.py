# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Write a full-size LSSTCam description in obs_base's camera YAML format, for tests.

Written for cp_flatnorm from LSSTCam's layout facts, not copied from obs_lsst:

- a 5 x 5 grid of rafts ``R<row><column>`` 127 mm apart; each of the 21 science rafts holds 3 x 3
  CCDs ``S<row><column>`` 42.25 mm apart, numbered ``9 * raft index + 3 * row + column`` with the
  rafts in the order R01, R02, R03, R10, ..., R43 (IDs 0-188);
- the corner rafts R00, R04, R40 and R44 (rotated by 180, 270, 90 and 0 degrees) hold two guiders
  ``SG0``, ``SG1`` and the two halves ``SW0``, ``SW1`` of a wavefront sensor, numbered from 189
  in that raft order (R00_SG0 = 189, ..., R44_SW1 = 204);
- e2v science CCDs are 4096 x 4004 pixels (16 amplifiers of 512 x 2002), ITL science and guide
  CCDs 4072 x 4000 (16 of 509 x 2000), ITL wavefront halves 4072 x 2000 (8 of 509 x 2000);
- a 16-amplifier CCD reads C10..C17 (hdu 1-8, top row left to right) then C07..C00 (hdu 9-16,
  bottom row right to left); a wavefront half reads C10..C17 right to left along one row;
- pixels are 10 microns.

Focal-plane positions are the nominal grid (the corner-raft devices without their measured
in-raft corrections) and reference points are the detector centres.

Like obs_lsst's generated files, each sensor kind's amplifiers are written once with an anchor
(``&C10_E2V``) and every detector merges them in (``C10: {<<: *C10_E2V}``).
"""

from __future__ import annotations

__all__ = ["LSSTCAM_AMPLIFIER_COUNT", "LSSTCAM_DETECTOR_COUNT", "write_lsstcam_yaml"]

import math
import os
import textwrap
from typing import Any

import yaml

LSSTCAM_DETECTOR_COUNT = 205
LSSTCAM_AMPLIFIER_COUNT = 197 * 16 + 8 * 8

_RAFT_PITCH = 127.0  # mm
_CCD_PITCH = 42.25  # mm
_CORNER_RAFT_YAW = {"R00": 180.0, "R04": 270.0, "R40": 90.0, "R44": 0.0}
_E2V_RAFTS = frozenset({"R11", "R12", "R13", "R14", "R21", "R22", "R23", "R24",
                        "R30", "R31", "R32", "R33", "R34"})

# Sensor kind: detectorType, amplifier data width and height, amplifier rows, serial prescan.
_SENSORS = {
    "E2V": (0, 512, 2002, 2, 10),
    "ITL": (0, 509, 2000, 2, 3),
    "ITL_G": (2, 509, 2000, 2, 3),
    "ITL_WF": (3, 509, 2000, 1, 3),
}

# Corner-raft devices: name, kind, offset from the raft centre before the raft's rotation, yaw.
_CORNER_DEVICES = (
    ("SG0", "ITL_G", (-_CCD_PITCH, 0.0), 270.0),
    ("SG1", "ITL_G", (0.0, -_CCD_PITCH), 0.0),
    ("SW0", "ITL_WF", (-_CCD_PITCH, -_CCD_PITCH - _CCD_PITCH / 4), 0.0),
    ("SW1", "ITL_WF", (-_CCD_PITCH, -_CCD_PITCH + _CCD_PITCH / 4), 180.0),
)


def write_lsstcam_yaml(path: str | os.PathLike[str]) -> None:
    """Write the full-size LSSTCam description to ``path``."""
    with open(path, "w") as stream:
        stream.write("name: LSSTCam\nplateScale: 20.0\n")
        stream.write("transforms: {nativeSys: FocalPlane, FieldAngle: {transformType: radial, "
                     "coeffs: [0.0, 1.0]}}\n")
        stream.write("AMPLIFIER_TEMPLATES:\n")
        for kind in _SENSORS:
            for name, amp in _amplifiers(kind).items():
                stream.write(f"  {name}_{kind}: &{name}_{kind} {_flow(amp)}\n")
        stream.write("CCDs:\n")
        for name, kind, fields in _detectors():
            stream.write(f"  {name}:\n")
            stream.write(textwrap.indent(yaml.safe_dump(fields, sort_keys=False, default_flow_style=None),
                                         "    "))
            stream.write("    amplifiers:\n")
            stream.writelines(f"      {amp}: {{<<: *{amp}_{kind}}}\n" for amp in _amplifiers(kind))


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=True, width=math.inf).strip()


def _detectors() -> list[tuple[str, str, dict[str, Any]]]:
    """Name, sensor kind and fields (amplifiers aside) of every detector, in ID order."""
    detectors = []
    for index, raft in enumerate(_science_rafts()):
        kind = "E2V" if raft in _E2V_RAFTS else "ITL"
        for row in range(3):
            for column in range(3):
                offset = ((column - 1) * _CCD_PITCH, (row - 1) * _CCD_PITCH)
                detectors.append((f"{raft}_S{row}{column}", kind, _detector(
                    9 * index + 3 * row + column, kind, _raft_centre(raft), offset, 0.0, 0.0)))
    for raft_index, (raft, raft_yaw) in enumerate(_CORNER_RAFT_YAW.items()):
        for device_index, (name, kind, offset, yaw) in enumerate(_CORNER_DEVICES):
            detector_id = 189 + 4 * raft_index + device_index
            detectors.append((f"{raft}_{name}", kind,
                              _detector(detector_id, kind, _raft_centre(raft), offset, yaw, raft_yaw)))
    return detectors


def _science_rafts() -> list[str]:
    return [f"R{row}{column}" for row in range(5) for column in range(5)
            if f"R{row}{column}" not in _CORNER_RAFT_YAW]


def _raft_centre(raft: str) -> tuple[float, float]:
    return ((int(raft[2]) - 2) * _RAFT_PITCH, (int(raft[1]) - 2) * _RAFT_PITCH)


def _detector(detector_id: int, kind: str, raft_centre: tuple[float, float], offset: tuple[float, float],
              yaw: float, raft_yaw: float) -> dict[str, Any]:
    """One ``CCDs`` entry without its amplifiers; ``offset`` is within the raft, which is rotated by
    ``raft_yaw``."""
    detector_type, width, height, rows, _ = _SENSORS[kind]
    cos_yaw, sin_yaw = math.cos(math.radians(raft_yaw)), math.sin(math.radians(raft_yaw))
    x = raft_centre[0] + cos_yaw * offset[0] - sin_yaw * offset[1]
    y = raft_centre[1] + sin_yaw * offset[0] + cos_yaw * offset[1]
    return {
        "detectorType": detector_type,
        "id": detector_id,
        "serial": f"{kind}-TEST-{detector_id:03d}",
        "physicalType": kind,
        "refpos": [(8 * width - 1) / 2, (rows * height - 1) / 2],
        "offset": [round(x, 6), round(y, 6), 0.0],
        "bbox": [[0, 0], [8 * width - 1, rows * height - 1]],  # inclusive corners
        "pixelSize": [0.010, 0.010],
        "transformDict": {"nativeSys": "Pixels", "transforms": None},
        "transposeDetector": False,
        "pitch": 0.0,
        "yaw": (yaw + raft_yaw) % 360,
        "roll": 0.0,
    }


def _amplifiers(kind: str) -> dict[str, dict[str, Any]]:
    """The amplifiers of one sensor kind, in hdu order."""
    _, width, height, rows, prescan = _SENSORS[kind]
    if rows == 1:
        layout = [(f"C1{i}", (7 - i, 0), (True, True)) for i in range(8)]
    else:
        layout = ([(f"C1{i}", (i, 1), (True, True)) for i in range(8)]
                  + [(f"C0{i}", (i, 0), (False, False)) for i in reversed(range(8))])
    return {name: _amplifier(hdu, ixy, flips, width, height, prescan)
            for hdu, (name, ixy, flips) in enumerate(layout, start=1)}


def _amplifier(hdu: int, ixy: tuple[int, int], flips: tuple[bool, bool], width: int, height: int,
               prescan: int) -> dict[str, Any]:
    """One amplifier; raw boxes are ``[[x0, y0], [width, height]]`` in a 576 x 2048 raw segment."""
    overscan = 576 - prescan - width
    return {
        "perAmpData": True,
        "readCorner": "LL",
        "hdu": hdu,
        "ixy": list(ixy),
        "flipXY": list(flips),
        "rawBBox": [[0, 0], [576, 2048]],
        "rawDataBBox": [[prescan, 0], [width, height]],
        "rawSerialPrescanBBox": [[0, 0], [prescan, height]],
        "rawSerialOverscanBBox": [[prescan + width, 0], [overscan, height]],
        "rawParallelPrescanBBox": [[0, 1], [0, 0]],
        "rawParallelOverscanBBox": [[prescan, height], [width, 2048 - height]],
        "gain": 1.5,
        "readNoise": 6.0,
        "saturation": 100000,
        "linearityType": "PROPORTIONAL",
        "linearityThreshold": 0,
        "linearityMax": 100000,
        "linearityCoeffs": [0, 100000],
    }
