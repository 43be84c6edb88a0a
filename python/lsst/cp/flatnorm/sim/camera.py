# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Geometry of the simulated mosaic camera ("SimFlatCam").

A square grid of science detectors with 16 amplifiers (two rows of eight, named like LSSTCam's
``C10..C17`` over ``C07..C00``) and half-height wavefront detectors with 8 amplifiers named
``C10..C17``, as LSSTCam's wavefront sensors are, placed around the grid.  Detectors have
LSSTCam's full names: the grid is the central raft, ``R22_S00`` .. ``R22_S22`` for 3 x 3, and each
wavefront detector is ``SW0`` of a corner raft (``R00_SW0``, ``R44_SW0``, ``R40_SW0``,
``R04_SW0``), so that the instrument's records split them into raft and sensor as LSSTCam's are.
Sizes are parameters so that tests can use tiny images.
"""

from __future__ import annotations

__all__ = ["SIM_CAMERA_NAME", "make_sim_camera"]

from collections.abc import Sequence

from ..camera_model import AmplifierModel, CameraModel, DetectorModel, PixelBox

SIM_CAMERA_NAME = "SimFlatCam"
_AMPS_PER_ROW = 8
_GAP_PIXELS = 20  # space between neighbouring detectors on the focal plane
_SCIENCE_RAFT = "R22"  # LSSTCam's central raft


def _amplifiers(amp_width: int, amp_height: int, n_rows: int) -> list[AmplifierModel]:
    """Amplifiers of one detector, in LSSTCam's order: the top row C10..C17 left to right, then
    the bottom row C07..C00 left to right.  A one-row (wavefront) detector has C10..C17, as
    LSSTCam's wavefront sensors do."""
    amps = []
    for row in reversed(range(n_rows)):
        top = row == n_rows - 1
        for column in range(_AMPS_PER_ROW):
            name = f"C1{column}" if top else f"C0{_AMPS_PER_ROW - 1 - column}"
            box = PixelBox(x0=column * amp_width, y0=row * amp_height, width=amp_width, height=amp_height)
            amps.append(AmplifierModel(name=name, bbox=box))
    return amps


def make_sim_camera(
    n_side: int = 3,
    amp_width: int = 32,
    amp_height: int = 64,
    n_wavefront: int = 2,
    pixel_size: float = 0.01,
    name: str = SIM_CAMERA_NAME,
    physical_types: Sequence[str] | None = None,
) -> CameraModel:
    """Build the simulated camera.

    Parameters
    ----------
    n_side : `int`, optional
        The science detectors form an ``n_side`` x ``n_side`` grid (IDs ``0 .. n_side**2 - 1``).
    amp_width, amp_height : `int`, optional
        Amplifier size in pixels; a science detector is 8 x 2 amplifiers.
    n_wavefront : `int`, optional
        Number of half-height (8-amplifier) wavefront detectors, IDs following the science ones;
        at most 4, placed at the corners of the grid.
    pixel_size : `float`, optional
        Pixel size in mm.
    name : `str`, optional
        Camera name; an instrument's camera has the instrument's name (tests simulate small
        cameras of other instruments' names).
    physical_types : `~collections.abc.Sequence` [`str`], optional
        Sensor families (afw's ``getPhysicalType()``, e.g. ``("ITL", "E2V")``) given to the
        detectors in turn, by ID; `None` keeps ``DetectorModel``'s default (``"simulated"``).

    Returns
    -------
    camera : `lsst.cp.flatnorm.camera_model.CameraModel`
    """
    if not 0 <= n_wavefront <= 4:
        raise ValueError(f"n_wavefront must be between 0 and 4; got {n_wavefront}.")
    width = _AMPS_PER_ROW * amp_width
    pitch_x = (width + _GAP_PIXELS) * pixel_size
    pitch_y = (2 * amp_height + _GAP_PIXELS) * pixel_size
    centre = (n_side - 1) / 2
    digits = len(str(n_side - 1))  # "S00".."S22" for 3 x 3; zero-padded so that names never collide
    detectors = []
    for i in range(n_side * n_side):
        row, column = divmod(i, n_side)
        detectors.append(DetectorModel(
            id=i, name=f"{_SCIENCE_RAFT}_S{row:0{digits}d}{column:0{digits}d}", type="SCIENCE",
            serial=f"SIM-SCI-{i:03d}",
            bbox=PixelBox(x0=0, y0=0, width=width, height=2 * amp_height),
            focal_plane_x=(column - centre) * pitch_x, focal_plane_y=(row - centre) * pitch_y,
            pixel_size=pixel_size, amplifiers=_amplifiers(amp_width, amp_height, 2),
        ))
    corners = [(-1, -1), (1, 1), (-1, 1), (1, -1)]
    reach = centre + 0.75
    for k in range(n_wavefront):
        sign_x, sign_y = corners[k]
        raft = f"R{2 + 2 * sign_y}{2 + 2 * sign_x}"  # LSSTCam's 5 x 5 rafts are R<row><column>
        detectors.append(DetectorModel(
            id=n_side * n_side + k, name=f"{raft}_SW0", type="WAVEFRONT", serial=f"SIM-WFS-{k:03d}",
            bbox=PixelBox(x0=0, y0=0, width=width, height=amp_height),
            focal_plane_x=sign_x * reach * pitch_x, focal_plane_y=sign_y * reach * pitch_y,
            pixel_size=pixel_size, amplifiers=_amplifiers(amp_width, amp_height, 1),
        ))
    if physical_types:
        detectors = [det.model_copy(update={"physical_type": physical_types[det.id % len(physical_types)]})
                     for det in detectors]
    return CameraModel(name=name, detectors=detectors)
