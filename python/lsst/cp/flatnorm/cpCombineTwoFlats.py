# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Weighted combination of two flats of one detector and filter (cp_pipe's anaglyph flats).

cp_pipe's LSSTCam anaglyph pipeline makes a flat from the blue and one from the red half of the
flat-field projector and combines them as ``weightOne * blue + (1 - weightOne) * red`` with
``CalibCombineTwoFlatsByFilterTask``; this is that task, with its connection names and config
fields.
"""

from __future__ import annotations

__all__ = [
    "CpFlatCombineTwoFlatsConfig",
    "CpFlatCombineTwoFlatsConnections",
    "CpFlatCombineTwoFlatsTask",
]

from collections.abc import Mapping
from typing import Any

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
from lsst.daf.butler import DeferredDatasetHandle
from lsst.images import Box, MaskedImage

from .calib_output import (
    calibration_statistics,
    calibration_type_field,
    combine_statistic_field,
    distribution_percentiles_field,
    empty_flat,
    fill_nan_pixels,
    iter_tiles,
    mask_not_positive,
    merge_masks,
    no_good_pixels_mask_field,
    pixel_box,
    subregion_size_field,
    validate_list_ranges,
)
from .combine_stack import weighted_mean
from .flat_connections import (
    CameraConfig,
    CameraConnections,
    as_detector_model,
    camera_prerequisite,
    flat_input,
    flat_output,
)


class CpFlatCombineTwoFlatsConnections(
    CameraConnections, dimensions=("instrument", "detector", "physical_filter")
):
    inputFlatOneHandle = flat_input("flat_blue", "First flat; weighted by weightOne.", deferLoad=True)
    inputFlatTwoHandle = flat_input("flat_red", "Second flat; weighted by 1 - weightOne.", deferLoad=True)
    camera = camera_prerequisite("Camera geometry: the detector's box and amplifiers.")
    outputData = flat_output("The weighted combination of the two flats.")


class CpFlatCombineTwoFlatsConfig(pipeBase.PipelineTaskConfig, CameraConfig,
                                  pipelineConnections=CpFlatCombineTwoFlatsConnections):
    """Configuration of `CpFlatCombineTwoFlatsTask`; cp_pipe's ``CalibCombineTwoFlatsByFilterConfig``."""

    calibrationType = calibration_type_field("flat")
    weightOne = pexConfig.RangeField(
        dtype=float,
        doc="Weight of the first flat; the second has 1 - weightOne.",
        default=0.5,
        min=0.0,
        max=1.0,
        inclusiveMax=True,
    )
    noGoodPixelsMask = no_good_pixels_mask_field()
    combine = combine_statistic_field(
        "MEAN",
        doc="Statistic of the two weighted flats at each pixel. The mean, median and clipped mean of two "
            "values are all their mean, so each gives the weighted mean.",
    )
    subregionSize = subregion_size_field()
    distributionPercentiles = distribution_percentiles_field()

    def validate(self) -> None:
        super().validate()
        validate_list_ranges(self)


class CpFlatCombineTwoFlatsTask(pipeBase.PipelineTask):
    """Combine two flats of one detector and filter with fixed weights.

    At each pixel the result is ``(w1 * flat1 + w2 * flat2) / (w1 + w2)`` over the flats whose
    pixel is finite (``w1 = weightOne``, ``w2 = 1 - weightOne``), with variance
    ``(w1**2 var1 + w2**2 var2) / (w1 + w2)**2``; no mask plane excludes a pixel (cp_pipe's
    statistics control for this task masks nothing).  The output mask is the OR of the masks of the
    pixels used; a pixel with neither is flagged ``noGoodPixelsMask`` and filled with the median,
    and a pixel not finite and positive (both flats zero there, say) is flagged ``noGoodPixelsMask``
    too, unless NO_DATA marks it (vignetted on purpose).  The metadata keeps the keys the two flats
    share (FLATSRC among them), with OBSTYPE, the weights, ``CP_COMBINE_N_NOT_POSITIVE`` and cp_pipe's
    QA keys.
    """

    ConfigClass = CpFlatCombineTwoFlatsConfig
    _DefaultName = "cpFlatCombineTwoFlats"
    config: CpFlatCombineTwoFlatsConfig

    def runQuantum(
        self,
        butlerQC: pipeBase.QuantumContext,
        inputRefs: pipeBase.InputQuantizedConnection,
        outputRefs: pipeBase.OutputQuantizedConnection,
    ) -> None:
        inputs = butlerQC.get(inputRefs)
        inputs["detectorId"] = int(outputRefs.outputData.dataId["detector"])
        butlerQC.put(self.run(**inputs), outputRefs)

    def run(self, *, inputFlatOneHandle: DeferredDatasetHandle, inputFlatTwoHandle: DeferredDatasetHandle,
            camera: Any, detectorId: int) -> pipeBase.Struct:
        """Combine two flats of one detector.

        Parameters
        ----------
        inputFlatOneHandle, inputFlatTwoHandle : `lsst.daf.butler.DeferredDatasetHandle`
            Handles to the two flats (``get(component="bbox")`` and ``get(parameters={"bbox":
            box})`` returning an `lsst.images.MaskedImage`).
        camera : `lsst.cp.flatnorm.camera_model.CameraModel` or `lsst.afw.cameraGeom.Camera`
            ``camera[detectorId]`` gives the detector box and amplifiers; an afw detector is
            converted with `~lsst.cp.flatnorm.afw_camera.detector_from_afw`.
        detectorId : `int`
            Detector to combine.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``outputData``: the combined flat (`lsst.images.MaskedImage`, float32).

        Raises
        ------
        ValueError
            Raised if a flat does not contain the detector's box.
        """
        detector = as_detector_model(camera, detectorId)
        detector_box = pixel_box(detector.getBBox())
        handles = (inputFlatOneHandle, inputFlatTwoHandle)
        for number, handle in enumerate(handles, start=1):
            image_box = handle.get(component="bbox")
            if not image_box.contains(detector_box):
                raise ValueError(f"Flat {number} of detector {detectorId}: its box {image_box} does not "
                                 f"contain the detector box {detector_box}.")
        flat, input_metadata = self._combine_in_tiles(handles, detector_box)
        n_filled = fill_nan_pixels(flat, self.config.noGoodPixelsMask)
        if n_filled:
            self.log.warning("Detector %d: filled %d NaN pixels with the median and flagged them %s.",
                             detectorId, n_filled, self.config.noGoodPixelsMask)
        no_data = flat.mask.get("NO_DATA") if "NO_DATA" in flat.mask.schema.names else None
        n_not_positive = mask_not_positive(flat, self.config.noGoodPixelsMask, detector, detectorId, self.log,
                                           exclude=no_data)
        flat.metadata.update(self._metadata(input_metadata, flat, detector))
        flat.metadata["CP_COMBINE_N_NOT_POSITIVE"] = n_not_positive
        return pipeBase.Struct(outputData=flat)

    def _weights(self) -> np.ndarray:
        return np.array([self.config.weightOne, 1.0 - self.config.weightOne])

    def _combine_in_tiles(
        self, handles: tuple[DeferredDatasetHandle, DeferredDatasetHandle], detector_box: Box
    ) -> tuple[MaskedImage, list[Mapping[str, Any]]]:
        """Read and combine the two flats tile by tile; return the flat and the flats' metadata."""
        flat: MaskedImage | None = None
        input_metadata: list[Mapping[str, Any]] = []
        for tile_box in iter_tiles(detector_box, self.config.subregionSize):
            tiles = [handle.get(parameters={"bbox": tile_box}) for handle in handles]
            if flat is None:
                flat = empty_flat(tiles[0].mask.schema, detector_box, [self.config.noGoodPixelsMask])
                input_metadata = [dict(tile.metadata.native) for tile in tiles]
            values = np.stack([tile.image.array for tile in tiles])
            variances = np.stack([tile.variance.array for tile in tiles])
            # No mask plane excludes a pixel: only non-finite ones and a zero weight do.
            weighted = (self._weights() > 0)[:, np.newaxis, np.newaxis]
            used = np.isfinite(values) & np.isfinite(variances) & weighted
            combined = weighted_mean(values, variances, used, self._weights())
            output = flat[tile_box]  # a view into the flat's arrays
            output.image.array[...] = combined.image
            output.variance.array[...] = combined.variance
            for tile, tile_used in zip(tiles, used):
                merge_masks(output.mask, tile.mask, tile_used)
            output.mask.set(self.config.noGoodPixelsMask, combined.no_data)
        assert flat is not None  # the detector has at least one tile
        return flat, input_metadata

    def _metadata(self, input_metadata: list[Mapping[str, Any]], flat: MaskedImage,
                  detector: Any) -> dict[str, Any]:
        """The flats' common metadata, then OBSTYPE, the weights and the QA keys."""
        first, second = input_metadata
        metadata = {key: value for key, value in first.items() if key in second and second[key] == value}
        metadata["OBSTYPE"] = self.config.calibrationType
        metadata.update({f"CP_COMBINE_WEIGHT_{i}": float(weight) for i, weight in enumerate(self._weights())})
        metadata.update(calibration_statistics(flat, detector, self.config.calibrationType,
                                               self.config.distributionPercentiles,
                                               self.config.noGoodPixelsMask, self.log))
        return metadata
