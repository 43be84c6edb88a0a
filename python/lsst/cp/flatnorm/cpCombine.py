# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Flat combination: divide each post-ISR flat by its exposure scale and combine, in tiles.

The task reads the inputs through deferred handles, one tile at a time (the ``bbox`` parameter of
the ``MaskedImageV2`` storage class), so its memory grows with the number of inputs times the tile
size instead of with the whole stack of full images.  The pixel statistics are in
`lsst.cp.flatnorm.combine_stack`; the steps shared with the two-flat combination (mask merging,
NaN filling, QA metadata) in `lsst.cp.flatnorm.calib_output`.

With ``exposureScaling = InputList`` the output flat is left as combined: each input is divided by
its exposure scale E (the lamp level of that exposure) and nothing else, so the flat of a detector
keeps its relative response, about ``G * response`` where G is the detector (or amplifier) scale
from the normalization.  That is what makes flat-fielding with it put all detectors on one
photometric scale; renormalising each flat to one would erase the relative response the
normalization measured.

After combining, the flat is finished in cp_pipe's order: refuse NO_DATA carried from the inputs
(``checkNoData``), clear every mask plane but ``noGoodPixelsMask`` (``censorMaskPlanes``), fill
NaN pixels with the median and flag them ``noGoodPixelsMask``, then mark the vignetted region
(``doVignette``/``doVignetteMask``, pixel values set to zero) and the partly vignetted ring
(``doPartialVignetteMask``).
"""

from __future__ import annotations

__all__ = [
    "CalibStatsConfig",
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
from lsst.daf.butler import DeferredDatasetHandle
from lsst.images import Box, Mask, MaskedImage

from .calib_output import (
    calibration_statistics,
    calibration_type_field,
    clip_passes_field,
    clip_threshold_field,
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
from .clipped_stats import sigma_clipped_region_stats
from .combine_stack import combine_stack
from .flat_connections import (
    CameraConfig,
    CameraConnections,
    as_detector_model,
    camera_prerequisite,
    flat_output,
    post_isr_flat_input,
)
from .scale_dictionary import check_exposure_scales, has_exposure_scales, usable_exposure_scale
from .vignette_config import VignetteConfig, detector_vignetted_pixels

NO_DATA = "NO_DATA"
VIGNETTED = "VIGNETTED"
PARTLY_VIGNETTED = "PARTLY_VIGNETTED"

_RECORD_FIELDS = {"ExposureTime": "exposure_time", "DarkTime": "dark_time"}
"""The exposure-record field each time-based exposureScaling divides by."""


class CpFlatCombineConnections(
    CameraConnections, dimensions=("instrument", "detector", "physical_filter")
):
    inputExpHandles = post_isr_flat_input("Post-ISR flats of the detector; read in tiles.",
                                          multiple=True, deferLoad=True)
    inputScales = cT.Input(
        name="cpFlatNormalizeScales",
        doc="Scales from the flat normalization: expScale[det][amp][exposure] divides each input.",
        storageClass="StructuredDataDict",
        dimensions=("instrument", "physical_filter"),
    )
    camera = camera_prerequisite("Camera geometry: the detector's box, amplifiers and focal-plane place.")
    outputData = flat_output("Combined flat, to be certified as a calibration.")

    def __init__(self, *, config: CpFlatCombineConfig) -> None:
        super().__init__(config=config)
        if config.exposureScaling != "InputList":
            del self.inputScales


class CalibStatsConfig(pexConfig.Config):
    """How exposureScaling = MeanStats measures the level of each input (cp_pipe's ``stats``)."""

    stat = pexConfig.ChoiceField[str](
        dtype=str,
        doc="Statistic of the unmasked pixels each input is divided by.",
        default="MEANCLIP",
        allowed={
            "MEANCLIP": "Iterative clipped mean (clip, nIter), as the flat measurement computes it.",
            "MEAN": "Mean.",
            "MEDIAN": "Median.",
        },
    )
    clip = clip_threshold_field("Clipping threshold of MEANCLIP, in standard deviations.")
    nIter = clip_passes_field("Maximum number of clipping passes of MEANCLIP.")
    mask = pexConfig.ListField[str](
        dtype=str,
        doc="Mask planes whose pixels are left out; planes absent from an input's mask are skipped.",
        default=["DETECTED", "BAD", "NO_DATA"],
    )


class CpFlatCombineConfig(
    pipeBase.PipelineTaskConfig, CameraConfig, pipelineConnections=CpFlatCombineConnections
):
    """Configuration of `CpFlatCombineTask`; the fields are cp_pipe's ``CalibCombineByFilterConfig``'s
    (see doc/lsst.cp.flatnorm/config-fields.rst), plus ``minInputsForClip``."""

    calibrationType = calibration_type_field("calibration")
    exposureScaling = pexConfig.ChoiceField[str](
        dtype=str,
        doc="What each input is divided by before combining. An input whose divisor is not finite and "
            "positive is logged and skipped.",
        default="Unity",
        allowed={
            "InputList": "expScale[detector][amp][exposure] from inputScales (the normalization).",
            "Unity": "Nothing: every input is combined as read.",
            "ExposureTime": "The exposure time of the input's exposure record.",
            "DarkTime": "The dark time of the input's exposure record.",
            "MeanStats": "The level of the input measured as configured in ``stats``.",
        },
    )
    scalingLevel = pexConfig.ChoiceField[str](
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
    maxVisitsToCalcErrorFromInputVariance = pexConfig.RangeField(
        dtype=int,
        doc="With fewer inputs than this, the output variance is propagated from the inputs' variance "
            "planes; with this many or more it is the spread of the inputs at each pixel (s**2 / n).",
        default=5,
        min=0,
    )
    subregionSize = subregion_size_field()
    bandRows = pexConfig.RangeField(
        dtype=int,
        doc="Rows read at a time; if set, replaces the height of subregionSize.",
        default=None,
        optional=True,
        min=1,
        deprecated="bandRows is subregionSize's height, cp_pipe's name; it will be removed after v0.3.",
    )
    doVignette = pexConfig.Field[bool](
        dtype=bool,
        doc="Mark the pixels outside the ``vignette`` region NO_DATA and set them to zero (cp_pipe: for "
            "non-LSST flats, with the valid polygon of the first input; here with ``vignette``).",
        default=False,
    )
    doVignetteMask = pexConfig.Field[bool](
        dtype=bool,
        doc="Mark the pixels outside the ``vignette`` region NO_DATA and VIGNETTED and set them to zero "
            "(cp_pipe: for LSST flats). Needs calibrationType 'flat'; excludes doVignette.",
        default=False,
    )
    vignette = pexConfig.ConfigField[VignetteConfig](
        dtype=VignetteConfig,
        doc="The unvignetted focal-plane region (doVignette, doVignetteMask).",
    )
    doPartialVignetteMask = pexConfig.Field[bool](
        dtype=bool,
        doc="Mark the pixels outside the ``partialVignette`` region PARTLY_VIGNETTED, values kept. The "
            "PARTLY_VIGNETTED plane is in the output mask either way. Needs calibrationType 'flat'.",
        default=False,
    )
    partialVignette = pexConfig.ConfigField[VignetteConfig](
        dtype=VignetteConfig,
        doc="The fully illuminated focal-plane region (doPartialVignetteMask).",
    )
    distributionPercentiles = distribution_percentiles_field()
    mask = pexConfig.ListField[str](
        dtype=str,
        doc="Mask planes whose input pixels are ignored; names absent from an input's mask are skipped. "
            "cp_pipe's default keeps BAD and NO_DATA pixels: a defect's response belongs in the flat, and "
            "checkNoData refuses NO_DATA that reaches it.",
        default=["SAT", "DETECTED", "INTRP"],
    )
    combine = combine_statistic_field("MEANCLIP", doc="Statistic combining the inputs at each pixel.")
    clip = clip_threshold_field("Clipping threshold, in standard deviations of the inputs at each pixel.")
    nIter = clip_passes_field("Maximum number of clipping passes (0: plain mean of the valid inputs).")
    minInputsForClip = pexConfig.RangeField(
        dtype=int,
        doc="MEANCLIP: pixels with fewer valid inputs than this use their median instead.",
        default=3,
        min=1,
    )
    noGoodPixelsMask = no_good_pixels_mask_field()
    checkNoData = pexConfig.Field[bool](
        dtype=bool,
        doc="Raise if the combined flat has NO_DATA set, which it carries from input pixels that "
            "``mask`` does not ignore (checked before the vignetting marks NO_DATA).",
        default=True,
    )
    censorMaskPlanes = pexConfig.Field[bool](
        dtype=bool,
        doc="Clear every mask plane but noGoodPixelsMask that the inputs carried into the flat.",
        default=True,
    )
    stats = pexConfig.ConfigField[CalibStatsConfig](
        dtype=CalibStatsConfig,
        doc="How exposureScaling = MeanStats measures each input's level.",
    )
    flatSource = pexConfig.ChoiceField[str](
        dtype=str,
        doc="Light source of the flat, written as FLATSRC if calibrationType is 'flat'.",
        default="DOME",
        allowed={
            "DOME": "Dome screen with 'white' light.",
            "TWILIGHT": "Twilight sky.",
            "PSEUDO": "The instrument model.",
            "SKY": "Night sky.",
        },
    )

    def validate(self) -> None:
        super().validate()
        validate_list_ranges(self)
        if self.doVignetteMask and self.doVignette:
            raise ValueError("Cannot set both doVignetteMask and doVignette.")
        for field in ("doVignetteMask", "doPartialVignetteMask"):
            if getattr(self, field) and self.calibrationType != "flat":
                raise ValueError(f"{field} needs calibrationType 'flat'; it is {self.calibrationType!r}.")

    def tile_size(self) -> tuple[int, int]:
        """Return the (width, height) of the read tiles: subregionSize, its height replaced by
        bandRows if that is set."""
        width, height = self.subregionSize
        return width, height if self.bandRows is None else self.bandRows


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
    handle: DeferredDatasetHandle
    regions: tuple[_Region, ...]


@dataclasses.dataclass
class _Tile:
    """One tile of every input: scaled values, variances, the pixels usable, and the masks."""

    values: np.ndarray
    variances: np.ndarray
    usable: np.ndarray
    masks: list[Mask]


@dataclasses.dataclass
class _Counts:
    """Pixel counts of the combination, for the log, the errors and the metadata."""

    median: int = 0
    no_good: int = 0
    no_data_by_exposure: dict[int, int] = dataclasses.field(default_factory=dict)


class CpFlatCombineTask(pipeBase.PipelineTask):
    """Combine the scaled post-ISR flats of one detector and filter into a flat.

    Each input is divided by its exposure scale (``exposureScaling``; per amplifier region at AMP
    level), pixels in the ``mask`` planes are ignored, and the stack is combined pixel by pixel
    (``combine``: an iterative clipped mean by default, the median where too few inputs are
    valid), in tiles of ``subregionSize``.  The flat carries the OR of the masks of the input
    pixels it used; pixels no input contributed to are flagged ``noGoodPixelsMask``; the flat is
    then finished as the module docstring lists.  The output metadata records the inputs, the
    scales applied, the settings and cp_pipe's QA keys.
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
        if "inputScales" in inputs:
            ref = inputRefs.inputScales
            check_exposure_scales(inputs["inputScales"], f"{ref.datasetType.name} {ref.dataId}")
        inputs["detectorId"] = int(outputRefs.outputData.dataId["detector"])
        butlerQC.put(self.run(**inputs), outputRefs)

    def run(
        self,
        inputExpHandles: Sequence[DeferredDatasetHandle],
        camera: Any,
        detectorId: int,
        inputScales: Mapping[str, Any] | None = None,
    ) -> pipeBase.Struct:
        """Combine the flats of one detector.

        Parameters
        ----------
        inputExpHandles : `list` [`lsst.daf.butler.DeferredDatasetHandle`]
            Handles to the post-ISR flats: ``dataId["exposure"]``, ``get(component="bbox")``,
            ``get(parameters={"bbox": box})`` and (MeanStats) ``get()`` returning an
            `lsst.images.MaskedImage`.  ExposureTime and DarkTime read the exposure record of
            expanded data IDs (``dataId.records["exposure"]``), as pipetask provides them.
        camera : `lsst.cp.flatnorm.camera_model.CameraModel` or `lsst.afw.cameraGeom.Camera`
            Camera geometry; ``camera[detectorId]`` gives the detector box, amplifiers and (for the
            vignetting) focal-plane placement.  An afw detector is converted with
            `~lsst.cp.flatnorm.afw_camera.detector_from_afw`.
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
            Raised if an input image does not contain the detector's box, if, at DETECTOR level,
            the amplifier scales of one exposure disagree, or if ExposureTime/DarkTime scaling
            finds no exposure record.
        RuntimeError
            Raised if checkNoData is set and the flat carries NO_DATA from its inputs.
        """
        detector = as_detector_model(camera, detectorId)
        detector_box = pixel_box(detector.getBBox())
        inputs = self._scaled_inputs(inputExpHandles, detector, detectorId, inputScales)
        self._check_coverage(inputs, detector_box, detectorId)
        flat, counts = self._combine_in_tiles(inputs, detector_box)
        vignetted = self._finish(flat, detector, detectorId, counts)
        flat.metadata.update(self._provenance(inputs, inputExpHandles, detectorId, counts, vignetted))
        flat.metadata.update(self._qa_metadata(flat, detector))
        return pipeBase.Struct(outputData=flat)

    # Scaling.

    def _scaled_inputs(
        self, handles: Sequence[DeferredDatasetHandle], detector: Any, detectorId: int,
        inputScales: Mapping[str, Any] | None,
    ) -> list[_ScaledInput]:
        """Pair each input with its scales, skipping (with a warning) exposures without one."""
        if self.config.exposureScaling == "InputList":
            if inputScales is None:
                raise ValueError("exposureScaling is InputList but no inputScales were given.")
            check_exposure_scales(inputScales, f"inputScales (detector {detectorId})")
            if not has_exposure_scales(inputScales, detectorId):
                raise pipeBase.NoWorkFound(f"Detector {detectorId} has no entry in the exposure scales.")
        inputs = []
        for handle in sorted(handles, key=lambda handle: int(handle.dataId["exposure"])):
            exposure = int(handle.dataId["exposure"])
            regions = self._regions(handle, detector, detectorId, exposure, inputScales)
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

    def _regions(self, handle: DeferredDatasetHandle, detector: Any, detectorId: int, exposure: int,
                 inputScales: Mapping[str, Any] | None) -> tuple[_Region, ...]:
        """Return the scaled regions of one input; empty if it has no usable scale."""
        if self.config.exposureScaling == "InputList":
            amp_scales = {
                # InputList scaling always has scales: runQuantum reads them, run() refuses None.
                amp.getName(): usable_exposure_scale(inputScales,  # type: ignore[arg-type]
                                                     detectorId, amp.getName(), exposure)
                for amp in detector
            }
            return self._listed_regions(detector, detectorId, exposure, amp_scales)
        scale = self._whole_detector_scale(handle, exposure)
        if not (np.isfinite(scale) and scale > 0):
            return ()
        return (_Region(None, detector.getBBox(), scale),)

    def _whole_detector_scale(self, handle: Any, exposure: int) -> float:
        """The divisor of one input for the scalings other than InputList."""
        scaling = self.config.exposureScaling
        if scaling == "Unity":
            return 1.0
        if scaling == "MeanStats":
            return self._mean_stats_level(handle.get())
        data_id = handle.dataId
        if not getattr(data_id, "hasRecords", lambda: False)():
            raise ValueError(f"exposureScaling {scaling} needs the exposure record of exposure {exposure}, "
                             f"but its data ID {data_id} has none (pass expanded data IDs).")
        value = getattr(data_id.records["exposure"], _RECORD_FIELDS[scaling])
        return float("nan") if value is None else float(value)

    def _mean_stats_level(self, image: MaskedImage) -> float:
        """The level of a whole input image, as ``stats`` configures it (cp_pipe's CalibStatsTask)."""
        stats = self.config.stats
        planes = [name for name in stats.mask if name in image.mask.schema.names]
        good = ~np.any(image.mask.array & image.mask.schema.bitmask(*planes), axis=-1)
        good &= np.isfinite(image.image.array)
        if stats.stat == "MEDIAN":
            return float(np.median(image.image.array[good])) if good.any() else float("nan")
        n_iter = stats.nIter if stats.stat == "MEANCLIP" else 0
        return sigma_clipped_region_stats(image.image.array, good, [], stats.clip, n_iter).whole_mean

    def _listed_regions(
        self, detector: Any, detectorId: int, exposure: int, amp_scales: Mapping[str, float | None]
    ) -> tuple[_Region, ...]:
        """Return the regions of one exposure for InputList scaling; empty if it has no usable scale."""
        missing = sorted(name for name, scale in amp_scales.items() if scale is None)
        if len(missing) == len(amp_scales):
            return ()
        if self.config.scalingLevel == "AMP":
            if missing:
                self.log.info("Exposure %d, detector %d: amplifiers %s have no usable scale; their pixels "
                              "are not combined from this exposure.", exposure, detectorId, missing)
            return tuple(_Region(amp.getName(), amp.getBBox(), scale) for amp in detector
                         if (scale := amp_scales[amp.getName()]) is not None)
        scales = set(amp_scales.values())
        if len(scales) != 1:
            raise ValueError(
                f"scalingLevel is DETECTOR but the amplifier scales of exposure {exposure} on detector "
                f"{detectorId} differ or are partly missing ({dict(amp_scales)}); use scalingLevel='AMP'."
            )
        # One scale, and not every amplifier's is missing (above): it is a number.
        return (_Region(None, detector.getBBox(), scales.pop()),)  # type: ignore[arg-type]

    @staticmethod
    def _check_coverage(inputs: list[_ScaledInput], detector_box: Box, detectorId: int) -> None:
        """Raise `ValueError` if an input image does not cover the detector's box."""
        for item in inputs:
            image_box = item.handle.get(component="bbox")
            if not image_box.contains(detector_box):
                raise ValueError(f"Exposure {item.exposure}, detector {detectorId}: the image box "
                                 f"{image_box} does not contain the detector box {detector_box}.")

    # Combination.

    def _combine_in_tiles(self, inputs: list[_ScaledInput], detector_box: Box) -> tuple[MaskedImage, _Counts]:
        """Read and combine the inputs tile by tile into the output flat."""
        config = self.config
        planes = [config.noGoodPixelsMask, NO_DATA, PARTLY_VIGNETTED] + ([VIGNETTED] if config.doVignetteMask
                                                                         else [])
        variance_from_inputs = len(inputs) < config.maxVisitsToCalcErrorFromInputVariance
        flat, counts = None, _Counts()
        for tile_box in iter_tiles(detector_box, config.tile_size()):
            tile = self._read_tile(inputs, tile_box)
            if flat is None:
                flat = empty_flat(tile.masks[0].schema, detector_box, planes)
            output = flat[tile_box]  # a view into the flat's arrays
            self._merge_input_masks(output.mask, inputs, tile, counts)
            combined = combine_stack(tile.values, tile.variances, tile.usable, n_sigma=config.clip,
                                     n_iter=config.nIter, min_inputs_for_clip=config.minInputsForClip,
                                     statistic=config.combine, variance_from_inputs=variance_from_inputs)
            output.image.array[...] = combined.image
            output.variance.array[...] = combined.variance
            output.mask.set(config.noGoodPixelsMask, combined.no_data)
            counts.median += int((~combined.clipped & ~combined.no_data).sum())
            counts.no_good += int(combined.no_data.sum())
        assert flat is not None  # the detector has at least one tile
        return flat, counts

    def _read_tile(self, inputs: list[_ScaledInput], tile_box: Box) -> _Tile:
        """Read one tile of every input, scaled, with the pixels usable and each input's mask."""
        shape = (len(inputs),) + tuple(tile_box.shape)
        tile = _Tile(values=np.empty(shape, dtype=np.float32), variances=np.empty(shape, dtype=np.float32),
                     usable=np.empty(shape, dtype=bool), masks=[])
        for i, item in enumerate(inputs):
            band = item.handle.get(parameters={"bbox": tile_box})
            scale = self._scale_map(item.regions, tile_box)
            tile.values[i] = band.image.array / scale
            tile.variances[i] = band.variance.array / np.square(scale)
            tile.usable[i] = (np.isfinite(scale) & ~self._ignored_pixels(band.mask)
                              & np.isfinite(tile.values[i]) & np.isfinite(tile.variances[i]))
            tile.masks.append(band.mask)
        return tile

    @staticmethod
    def _merge_input_masks(target: Mask, inputs: list[_ScaledInput], tile: _Tile, counts: _Counts) -> None:
        """OR into ``target`` the masks of the input pixels used, counting the NO_DATA ones per
        exposure (for checkNoData's message)."""
        for item, mask, usable in zip(inputs, tile.masks, tile.usable):
            merge_masks(target, mask, usable)
            if NO_DATA in mask.schema:
                n_no_data = int((mask.get(NO_DATA) & usable).sum())
                if n_no_data:
                    counts.no_data_by_exposure[item.exposure] = (
                        counts.no_data_by_exposure.get(item.exposure, 0) + n_no_data)

    @staticmethod
    def _scale_map(regions: tuple[_Region, ...], tile_box: Box) -> np.ndarray:
        """Scale of each pixel of the tile; NaN outside every region."""
        scale = np.full(tile_box.shape, np.nan)
        y0, x0 = tile_box.y.start, tile_box.x.start
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

    # Finishing, in cp_pipe's order.

    def _finish(self, flat: MaskedImage, detector: Any, detectorId: int, counts: _Counts) -> dict[str, int]:
        """Check, censor, fill and vignette the combined flat in place; return the vignetting counts."""
        config = self.config
        if config.checkNoData:
            self._check_no_data(flat, detectorId, counts)
        if config.censorMaskPlanes:
            for name in flat.mask.schema.names - {config.noGoodPixelsMask}:
                flat.mask.clear(name)
        vignetted = (detector_vignetted_pixels(config.vignette, detector)
                     if config.doVignette or config.doVignetteMask else None)
        n_filled = fill_nan_pixels(flat, config.noGoodPixelsMask, exclude=vignetted)
        if n_filled:
            self.log.warning("Detector %d: filled %d NaN pixels with the median and flagged them %s.",
                             detectorId, n_filled, config.noGoodPixelsMask)
        result = {"N_VIGNETTED": 0, "N_PARTLY_VIGNETTED": 0}
        result["N_NOT_POSITIVE"] = mask_not_positive(flat, config.noGoodPixelsMask, detector, detectorId,
                                                     self.log, exclude=vignetted)
        if vignetted is not None:
            flat.image.array[vignetted] = 0.0
            for plane in [NO_DATA] + ([VIGNETTED] if config.doVignetteMask else []):
                flat.mask.set(plane, vignetted)
            result["N_VIGNETTED"] = int(vignetted.sum())
        if config.doPartialVignetteMask:
            partly = detector_vignetted_pixels(config.partialVignette, detector)
            flat.mask.set(PARTLY_VIGNETTED, partly)
            result["N_PARTLY_VIGNETTED"] = int(partly.sum())
        return result

    def _check_no_data(self, flat: MaskedImage, detectorId: int, counts: _Counts) -> None:
        """Raise if the flat carries NO_DATA from its inputs (cp_pipe's checkNoData)."""
        n_no_data = int(flat.mask.get(NO_DATA).sum())
        if n_no_data:
            raise RuntimeError(
                f"The combined flat of detector {detectorId} has {n_no_data} NO_DATA pixels, carried from "
                f"input pixels that NO_DATA does not exclude (pixels per exposure: "
                f"{dict(sorted(counts.no_data_by_exposure.items()))}); add NO_DATA to the 'mask' config "
                "to ignore them, or set checkNoData=False to keep them."
            )

    # Metadata.

    def _provenance(
        self, inputs: list[_ScaledInput], handles: Sequence[DeferredDatasetHandle], detectorId: int,
        counts: _Counts,
        vignetting: Mapping[str, int],
    ) -> dict[str, Any]:
        """Metadata describing how the flat was made (scalar values only)."""
        used = {item.exposure for item in inputs}
        skipped = sorted(int(h.dataId["exposure"]) for h in handles if int(h.dataId["exposure"]) not in used)
        config = self.config
        metadata: dict[str, Any] = {
            "OBSTYPE": config.calibrationType,
            "DETECTOR": detectorId,
            "CP_COMBINE_STAT": config.combine,
            "CP_COMBINE_CLIP": config.clip,
            "CP_COMBINE_N_ITER": config.nIter,
            "CP_COMBINE_MIN_INPUTS_FOR_CLIP": config.minInputsForClip,
            "CP_COMBINE_MASK_PLANES": ",".join(config.mask),
            "CP_COMBINE_EXPOSURE_SCALING": config.exposureScaling,
            "CP_COMBINE_SCALING_LEVEL": config.scalingLevel,
            "CP_COMBINE_VARIANCE": ("INPUTS" if len(inputs) < config.maxVisitsToCalcErrorFromInputVariance
                                    else "SPREAD"),
            "CP_COMBINE_N_INPUTS": len(inputs),
            "CP_COMBINE_SKIPPED_EXPOSURES": ",".join(str(exposure) for exposure in skipped),
            "CP_COMBINE_N_NO_GOOD": counts.no_good,
            "CP_COMBINE_N_MEDIAN": counts.median,
        }
        metadata.update({f"CP_COMBINE_{key}": value for key, value in vignetting.items()})
        for i, item in enumerate(inputs):
            metadata[f"CP_COMBINE_INPUT_{i}"] = item.exposure
            for region in item.regions:
                suffix = "" if region.amp_name is None else f"_{region.amp_name}"
                metadata[f"CP_COMBINE_SCALE_{i}{suffix}"] = region.scale
        if config.calibrationType == "flat":
            metadata["FLATSRC"] = config.flatSource
        return metadata

    def _qa_metadata(self, flat: MaskedImage, detector: Any) -> dict[str, float | int]:
        """cp_pipe's per-amplifier QA keys."""
        config = self.config
        return calibration_statistics(flat, detector, config.calibrationType, config.distributionPercentiles,
                                      config.noGoodPixelsMask, self.log)
