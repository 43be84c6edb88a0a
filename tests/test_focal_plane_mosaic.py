# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Binned images and focal-plane mosaics (lsst.cp.flatnorm.focal_plane_mosaic), and the bin task's
masked binning, on hand-made detectors whose every pixel's focal-plane position is known."""

import numpy as np
import pytest

from lsst.cp.flatnorm.camera_model import AmplifierModel, CameraModel, DetectorModel, PixelBox
from lsst.cp.flatnorm.cpFlatVisualize import bin_masked_image
from lsst.cp.flatnorm.focal_plane_mosaic import bin_image, make_mosaic, mosaic_geometry, quarter_turns
from lsst.images import Image, Mask, MaskedImage, MaskPlane, MaskSchema

BIN = 4
WIDTH, HEIGHT = 16, 8  # pixels: 4 x 2 bins
PIXEL = 0.5  # mm: a bin is 2 mm


def detector(det_id, x, y, yaw):
    box = PixelBox(x0=0, y0=0, width=WIDTH, height=HEIGHT)
    return DetectorModel(id=det_id, name=f"D{det_id}", bbox=box, focal_plane_x=x, focal_plane_y=y, yaw=yaw,
                         pixel_size=PIXEL, amplifiers=[AmplifierModel(name="A", bbox=box)])


# Four detectors turned by 0, 90, 180 and 270 degrees, apart on the focal plane.
CENTRES = [(-10, -10), (10, -10), (10, 10), (-10, 10)]
CAMERA = CameraModel(name="Turns",
                     detectors=[detector(i, x, y, 90.0 * i) for i, (x, y) in enumerate(CENTRES)])


def test_bin_image_averages_usable_pixels_of_whole_blocks():
    image = np.arange(20, dtype=float).reshape(4, 5)
    image[0, 0] = np.nan
    image[2:4, 2:4] = np.nan
    excluded = np.zeros(image.shape, bool)
    excluded[3, 0] = True
    binned, counts = bin_image(image, 2, excluded)
    np.testing.assert_array_equal(binned, [[(1 + 5 + 6) / 3, (2 + 3 + 7 + 8) / 4],
                                           [(10 + 11 + 16) / 3, np.nan]])
    np.testing.assert_array_equal(counts, [[3, 4], [3, 0]])
    np.testing.assert_array_equal(bin_image(image, 1)[0], image)
    with pytest.raises(ValueError, match="Binning factor must be at least 1; got 0"):
        bin_image(image, 0)
    with pytest.raises(ValueError, match="Cannot bin an image of 5 x 4 pixels by 5: not one whole block"):
        bin_image(image, 5)


def test_each_binned_pixel_lies_where_the_camera_puts_its_pixels():
    """Every bin of every detector, turned by its yaw, lands on the mosaic pixel that covers the
    focal-plane position of its centre (DetectorModel.pixel_to_focal_plane)."""
    geometry = mosaic_geometry(CAMERA, BIN)
    assert geometry.scale == BIN * PIXEL
    n_x, n_y = WIDTH // BIN, HEIGHT // BIN
    # Each bin holds a code of its detector and position, so the mosaic says where each went.
    binned = {det.getId(): (100 * det.getId() + 10 * np.arange(n_y)[:, None] + np.arange(n_x)).astype(float)
              for det in CAMERA}
    mosaic = make_mosaic(binned, geometry)
    x0, y0 = geometry.origin
    for det in CAMERA:
        for row in range(n_y):
            for column in range(n_x):
                centre = (column * BIN + (BIN - 1) / 2, row * BIN + (BIN - 1) / 2)
                fp_x, fp_y = det.pixel_to_focal_plane(*centre)
                mosaic_row = int((fp_y - y0) // geometry.scale)
                mosaic_column = int((fp_x - x0) // geometry.scale)
                assert mosaic[mosaic_row, mosaic_column] == binned[det.getId()][row, column]
    assert np.isfinite(mosaic).sum() == 4 * n_x * n_y  # and nothing else: NaN between detectors
    assert geometry.shape == (20 // 2 + n_x, 20 // 2 + n_x)
    assert geometry.extent() == pytest.approx((x0, x0 + 14 * 2.0, y0, y0 + 14 * 2.0))


def test_bad_layouts_are_refused_with_the_detector_named():
    tilted = detector(7, 0, 0, 30.0)
    with pytest.raises(ValueError, match=r"Detector 7 \(D7\) has a yaw of 30.0 degrees"):
        quarter_turns(tilted)
    geometry = mosaic_geometry(CAMERA, BIN)
    with pytest.raises(ValueError, match=r"Detector 2: binned image of shape \(1, 2\), where the mosaic "
                                         r"expects \(2, 4\)"):
        make_mosaic({2: np.zeros((1, 2))}, geometry)
    with pytest.raises(ValueError, match="Detector 9 is not in the camera"):
        make_mosaic({9: np.zeros((2, 4))}, geometry)
    with pytest.raises(ValueError, match="different pixel sizes"):
        mosaic_geometry([*CAMERA, detector(8, 0, 0, 0).model_copy(update={"pixel_size": 0.1})], BIN)


def test_bin_masked_image_leaves_out_no_data_and_marks_empty_bins():
    schema = MaskSchema([MaskPlane("NO_DATA", "no data"), MaskPlane("BAD", "bad")])
    values = np.full((4, 4), 2.0, dtype=np.float32)
    values[:2, :2] = 0.0  # vignetted
    values[2, 2] = 6.0
    mask = Mask(schema=schema, shape=values.shape)
    no_data = np.zeros(values.shape, bool)
    no_data[:2, :2] = True
    no_data[3, 3] = True
    mask.set("NO_DATA", no_data)
    image = MaskedImage(Image(values), mask=mask, variance=Image(np.full((4, 4), 0.3, dtype=np.float32)),
                        metadata={"FLATSRC": "DOME"})
    binned = bin_masked_image(image, 2)
    np.testing.assert_array_equal(binned.image.array, np.array([[np.nan, 2.0], [2.0, 10 / 3]], np.float32))
    np.testing.assert_allclose(binned.variance.array, [[np.nan, 0.3 / 4], [0.3 / 4, 0.1]], rtol=1e-6)
    np.testing.assert_array_equal(binned.mask.get("NO_DATA"), [[True, False], [False, False]])
    assert binned.metadata["BINNING"] == 2
    assert binned.metadata["FLATSRC"] == "DOME"
