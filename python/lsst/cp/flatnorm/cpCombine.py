# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Flat combination: divide each post-ISR flat by its exposure scale and combine, in row bands.

The task reads the inputs through deferred handles, one band of rows at a time (the ``bbox``
parameter of the ``MaskedImageV2`` storage class), so its memory grows with the number of inputs
times the band size instead of with the whole stack of full images.  The pixel statistics are
in `lsst.cp.flatnorm.combine_stack`.

The output flat is left as combined: each input is divided by its exposure scale E (the lamp
level of that exposure) and nothing else, so the flat of a detector keeps its relative
response, about ``G * response`` where G is the detector (or amplifier) scale from the
normalization.  That is what makes flat-fielding with it put all detectors on one photometric
scale; renormalising each flat to one would erase the relative response the normalization
measured.
"""

from __future__ import annotations

__all__ = [
    "CpFlatCombineConfig",
    "CpFlatCombineConnections",
    "CpFlatCombineTask",
]

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.images import Box, Image, Mask, MaskedImage, MaskPlane, MaskSchema

from .flat_connections import camera_prerequisite, post_isr_flat_input
from .combine_stack import combine_stack, iter_row_bands
from .scale_dictionary import has_exposure_scales, usable_exposure_scale

NO_DATA = "NO_DATA"


class CpFlatCombineConnections(
    pipeBase.PipelineTaskConnections, dimensions=("instrument", "detector", "physical_filter")
):
    inputExpHandles = post_isr_flat_input("Post-ISR flats of the detector; read in row bands.",
                                          multiple=True, deferLoad=True)
    inputScales = cT.Input(
        name="cpFlatNormScales",
        doc="Scales from the flat normalization: expScale[det][amp][exposure] divides each input.",
        storageClass="StructuredDataDict",
        dimensions=("instrument", "physical_filter"),
    )
    camera = camera_prerequisite("Camera geometry: the detector's bounding box and amplifier regions.")
    outputData = cT.Output(
        name="flat",
        doc="Combined flat, to be certified as a calibration.",
        storageClass="MaskedImageV2",
        dimensions=("instrument", "detector", "physical_filter"),
        isCalibration=True,
    )

    def __init__(self, *, config: CpFlatCombineConfig | None = None) -> None:
        super().__init__(config=config)
        if config is not None and config.exposureScaling != "InputList":
            del self.inputScales


class CpFlatCombineConfig(pipeBase.PipelineTaskConfig, pipelineConnections=CpFlatCombineConnections):
    """Configuration of `CpFlatCombineTask`; field names follow cp_pipe's ``CalibCombineConfig``."""

    calibrationType = pexConfig.Field(
        dtype=str,
        doc="Calibration type, recorded as OBSTYPE in the output metadata.",
        default="flat",
    )
    exposureScaling = pexConfig.ChoiceField(
        dtype=str,
        doc="What each input is divided by before combining.",
        default="InputList",
        allowed={
            "InputList": "expScale[detector][amp][exposure] from inputScales; exposures without a "
                         "usable (finite, positive) scale are logged and skipped.",
            "Unity": "Nothing: every input is combined as read.",
        },
    )
    scalingLevel = pexConfig.ChoiceField(
        dtype=str,
        doc="Region each scale applies to (InputList only).",
        default="DETECTOR",
        allowed={
            "DETECTOR": "One scale per exposure for the whole detector; the amplifier entries of an "
                        "exposure must agree.",
            "AMP": "Each amplifier region is divided by its own scale; an amplifier without a scale "
                   "contributes no pixels from that exposure.",
        },
    )
    mask = pexConfig.ListField(
        dtype=str,
        doc="Mask planes whose pixels are ignored; names absent from an input's mask are skipped.",
        default=["BAD", "SAT", "NO_DATA", "DETECTED"],
    )
    clip = pexConfig.Field(
        dtype=float,
        doc="Clipping threshold, in standard deviations of the inputs at each pixel.",
        default=3.0,
        check=lambda value: value > 0,
    )
    nIter = pexConfig.Field(
        dtype=int,
        doc="Maximum number of clipping passes (0: plain mean of the valid inputs).",
        default=3,
        check=lambda value: value >= 0,
    )
    minInputsForClip = pexConfig.Field(
        dtype=int,
        doc="Pixels with fewer valid inputs than this use their median instead of the clipped mean.",
        default=3,
        check=lambda value: value >= 1,
    )
    bandRows = pexConfig.Field(
        dtype=int,
        doc="Detector rows read and combined at a time. Peak memory is about 27 bytes x (number of "
            "inputs) x bandRows x (detector width), plus 9 bytes per detector pixel for the output: "
            "100 inputs of a 4072 x 4000 detector with 100 rows use about 1.2 GB. Each band costs one "
            "read per input with a fixed overhead (~40 ms measured), so very thin bands read slowly. "
            "The result does not depend on it.",
        default=100,
        check=lambda value: value >= 1,
    )


@dataclasses.dataclass(frozen=True)
class _Region:
    """A detector region and the scale its pixels are divided by."""

    amp_name: str | None
    """Amplifier name, or `None` for the whole detector."""
    bbox: Any
    scale: float


@dataclasses.dataclass(frozen=True)
class _ScaledInput:
    """One input exposure and the regions it contributes; pixels outside every region are unused."""

    exposure: int
    handle: Any
    regions: tuple[_Region, ...]


def _box(pixel_box: Any) -> Box:
    """Convert an afw-protocol box (getMinX/getMinY/getWidth/getHeight) to an `lsst.images.Box`."""
    x0, y0 = pixel_box.getMinX(), pixel_box.getMinY()
    return Box.factory[y0:y0 + pixel_box.getHeight(), x0:x0 + pixel_box.getWidth()]


class CpFlatCombineTask(pipeBase.PipelineTask):
    """Combine the scaled post-ISR flats of one detector and filter into a flat.

    Each input is divided by its exposure scale (per amplifier region at AMP level), pixels in
    the configured mask planes are ignored, and the stack is combined pixel by pixel with an
    iterative clipped mean (the median where too few inputs are valid), in bands of
    ``bandRows`` rows.  The variance is propagated from the inputs' variance planes; pixels no
    input contributed to are NaN and masked NO_DATA.  The output metadata records the inputs,
    the scales applied and the clipping settings (``CP_COMBINE_*`` keys).
    """

    ConfigClass = CpFlatCombineConfig
    _DefaultName = "cpFlatCombine"
    config: CpFlatCombineConfig

    def runQuantum(
        self,
        butlerQC: pipeBase.QuantumContext,
        inputRefs: pipeBase.InputQuantizedConnection,
        outputRefs: pipeBase.OutputQuantizedConnection,
    ) -> None:
        inputs = butlerQC.get(inputRefs)
        inputs["detectorId"] = int(outputRefs.outputData.dataId["detector"])
        butlerQC.put(self.run(**inputs), outputRefs)

    def run(
        self,
        inputExpHandles: Sequence[Any],
        camera: Any,
        detectorId: int,
        inputScales: Mapping[str, Any] | None = None,
    ) -> pipeBase.Struct:
        """Combine the flats of one detector.

        Parameters
        ----------
        inputExpHandles : `list` [`lsst.daf.butler.DeferredDatasetHandle`]
            Handles to the post-ISR flats: ``dataId["exposure"]``, ``get(component="bbox")`` and
            ``get(parameters={"bbox": box})`` returning an `lsst.images.MaskedImage`.
        camera : `lsst.cp.flatnorm.camera_model.CameraModel` or afw camera
            Camera geometry; ``camera[detectorId]`` gives the detector box and amplifiers.
        detectorId : `int`
            Detector to combine.
        inputScales : `dict`, optional
            The normalization's scales, ``{"expScale": {det: {amp: {exposure: scale}}}, ...}``
            (integer or string keys); required when ``exposureScaling`` is InputList.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``outputData``: the combined flat (`lsst.images.MaskedImage`, float32).

        Raises
        ------
        lsst.pipe.base.NoWorkFound
            Raised if no input exposure has a usable scale for this detector.
        ValueError
            Raised if an input image does not contain the detector's box, or if, at DETECTOR level,
            the amplifier scales of one exposure disagree.
        """
        detector = camera[detectorId]
        detector_box = _box(detector.getBBox())
        inputs = self._scaled_inputs(inputExpHandles, detector, detectorId, inputScales)
        self._check_coverage(inputs, detector_box, detectorId)
        flat, n_median = self._combine_in_bands(inputs, detector_box)
        flat.metadata.update(self._provenance(inputs, inputExpHandles, detectorId, flat, n_median))
        return pipeBase.Struct(outputData=flat)

    def _scaled_inputs(
        self, handles: Sequence[Any], detector: Any, detectorId: int, inputScales: Mapping[str, Any] | None
    ) -> list[_ScaledInput]:
        """Pair each input with its scales, skipping (with a warning) exposures without one."""
        if self.config.exposureScaling == "Unity":
            whole = (_Region(None, detector.getBBox(), 1.0),)
            return [_ScaledInput(int(h.dataId["exposure"]), h, whole) for h in self._sorted(handles)]
        if inputScales is None:
            raise ValueError("exposureScaling is InputList but no inputScales were given.")
        if not has_exposure_scales(inputScales, detectorId):
            raise pipeBase.NoWorkFound(f"Detector {detectorId} has no entry in the exposure scales.")
        inputs = []
        for handle in self._sorted(handles):
            exposure = int(handle.dataId["exposure"])
            amp_scales = {
                amp.getName(): usable_exposure_scale(inputScales, detectorId, amp.getName(), exposure)
                for amp in detector
            }
            regions = self._regions(detector, detectorId, exposure, amp_scales)
            if regions:
                inputs.append(_ScaledInput(exposure, handle, regions))
            else:
                self.log.warning("Exposure %d has no usable scale for detector %d; it is not combined.",
                                 exposure, detectorId)
        if not inputs:
            raise pipeBase.NoWorkFound(
                f"None of the {len(handles)} input exposures has a usable scale for detector {detectorId}."
            )
        return inputs

    @staticmethod
    def _sorted(handles: Sequence[Any]) -> list[Any]:
        return sorted(handles, key=lambda handle: int(handle.dataId["exposure"]))

    def _regions(
        self, detector: Any, detectorId: int, exposure: int, amp_scales: Mapping[str, float | None]
    ) -> tuple[_Region, ...]:
        """Return the scaled regions of one exposure; empty if it has no usable scale."""
        missing = sorted(name for name, scale in amp_scales.items() if scale is None)
        if len(missing) == len(amp_scales):
            return ()
        if self.config.scalingLevel == "AMP":
            if missing:
                self.log.info("Exposure %d, detector %d: amplifiers %s have no usable scale; their pixels "
                              "are not combined from this exposure.", exposure, detectorId, missing)
            return tuple(_Region(amp.getName(), amp.getBBox(), amp_scales[amp.getName()]) for amp in detector
                         if amp_scales[amp.getName()] is not None)
        scales = set(amp_scales.values())
        if len(scales) != 1:
            raise ValueError(
                f"scalingLevel is DETECTOR but the amplifier scales of exposure {exposure} on detector "
                f"{detectorId} differ or are partly missing ({dict(amp_scales)}); use scalingLevel='AMP'."
            )
        return (_Region(None, detector.getBBox(), scales.pop()),)

    @staticmethod
    def _check_coverage(inputs: list[_ScaledInput], detector_box: Box, detectorId: int) -> None:
        """Raise `ValueError` if an input image does not cover the detector's box."""
        for item in inputs:
            image_box = item.handle.get(component="bbox")
            if not image_box.contains(detector_box):
                raise ValueError(f"Exposure {item.exposure}, detector {detectorId}: the image box "
                                 f"{image_box} does not contain the detector box {detector_box}.")

    def _combine_in_bands(self, inputs: list[_ScaledInput], detector_box: Box) -> tuple[MaskedImage, int]:
        """Read and combine the inputs band by band into the output flat.

        Returns the flat and the number of pixels that used the median fall-back.
        """
        flat = None
        n_median = 0
        for start, stop in iter_row_bands(detector_box.y.size, self.config.bandRows):
            band_box = Box.factory[detector_box.y.start + start:detector_box.y.start + stop,
                                   detector_box.x.start:detector_box.x.stop]
            values, variances, valid, schema = self._read_band(inputs, band_box)
            band = combine_stack(values, variances, valid, n_sigma=self.config.clip,
                                 n_iter=self.config.nIter, min_inputs_for_clip=self.config.minInputsForClip)
            del values, variances, valid
            if flat is None:
                flat = self._empty_flat(schema, detector_box)
            output = flat[band_box]  # a view into the flat's arrays
            output.image.array[...] = band.image
            output.variance.array[...] = band.variance
            output.mask.set(NO_DATA, band.no_data)
            n_median += int((~band.clipped & ~band.no_data).sum())
        return flat, n_median

    def _read_band(
        self, inputs: list[_ScaledInput], band_box: Box
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, MaskSchema]:
        """Read one band of every input, scaled, with the validity of each pixel and the first
        input's mask schema."""
        shape = (len(inputs),) + tuple(band_box.shape)
        values = np.empty(shape, dtype=np.float32)
        variances = np.empty(shape, dtype=np.float32)
        valid = np.empty(shape, dtype=bool)
        for i, item in enumerate(inputs):
            band = item.handle.get(parameters={"bbox": band_box})
            scale = self._scale_map(item.regions, band_box)
            values[i] = band.image.array / scale
            variances[i] = band.variance.array / np.square(scale)
            valid[i] = np.isfinite(scale) & ~self._ignored_pixels(band.mask)
            if i == 0:
                schema = band.mask.schema
        return values, variances, valid, schema

    @staticmethod
    def _scale_map(regions: tuple[_Region, ...], band_box: Box) -> np.ndarray:
        """Scale of each pixel of the band; NaN outside every region."""
        scale = np.full(band_box.shape, np.nan)
        y0, x0 = band_box.y.start, band_box.x.start
        for region in regions:
            box = region.bbox
            rows = slice(max(box.getMinY() - y0, 0), max(box.getMaxY() + 1 - y0, 0))
            columns = slice(max(box.getMinX() - x0, 0), max(box.getMaxX() + 1 - x0, 0))
            scale[rows, columns] = region.scale
        return scale

    def _ignored_pixels(self, mask: Mask) -> np.ndarray:
        """Pixels with any of the configured mask planes set (planes the mask lacks are skipped)."""
        present = [name for name in self.config.mask if name in mask.schema.names]
        if len(present) != len(self.config.mask):
            self.log.debug("Mask planes %s are not in the input mask; ignoring them.",
                           sorted(set(self.config.mask) - set(present)))
        return np.any(mask.array & mask.schema.bitmask(*present), axis=-1)

    @staticmethod
    def _empty_flat(schema: MaskSchema, box: Box) -> MaskedImage:
        """A float32 masked image for the flat, with the inputs' mask planes plus NO_DATA."""
        if NO_DATA not in schema:
            schema = MaskSchema(list(schema) + [MaskPlane(NO_DATA, "No valid input pixel.")],
                                dtype=schema.dtype)
        return MaskedImage(Image(np.nan, bbox=box, dtype=np.float32), mask_schema=schema,
                           variance=Image(np.nan, bbox=box, dtype=np.float32))

    def _provenance(
        self, inputs: list[_ScaledInput], handles: Sequence[Any], detectorId: int, flat: MaskedImage,
        n_median: int,
    ) -> dict[str, Any]:
        """Metadata describing how the flat was made (scalar values only)."""
        used = {item.exposure for item in inputs}
        skipped = sorted(int(h.dataId["exposure"]) for h in handles if int(h.dataId["exposure"]) not in used)
        config = self.config
        metadata: dict[str, Any] = {
            "OBSTYPE": config.calibrationType,
            "DETECTOR": detectorId,
            "CP_COMBINE_STAT": "MEANCLIP",
            "CP_COMBINE_CLIP": config.clip,
            "CP_COMBINE_N_ITER": config.nIter,
            "CP_COMBINE_MIN_INPUTS_FOR_CLIP": config.minInputsForClip,
            "CP_COMBINE_MASK_PLANES": ",".join(config.mask),
            "CP_COMBINE_EXPOSURE_SCALING": config.exposureScaling,
            "CP_COMBINE_SCALING_LEVEL": config.scalingLevel,
            "CP_COMBINE_N_INPUTS": len(inputs),
            "CP_COMBINE_SKIPPED_EXPOSURES": ",".join(str(exposure) for exposure in skipped),
            "CP_COMBINE_N_NO_DATA": int(flat.mask.get(NO_DATA).sum()),
            "CP_COMBINE_N_MEDIAN": n_median,
        }
        for i, item in enumerate(inputs):
            metadata[f"CP_COMBINE_INPUT_{i}"] = item.exposure
            for region in item.regions:
                suffix = "" if region.amp_name is None else f"_{region.amp_name}"
                metadata[f"CP_COMBINE_SCALE_{i}{suffix}"] = region.scale
        return metadata
