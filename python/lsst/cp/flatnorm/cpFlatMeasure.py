# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""CpFlatMeasureTask: the clipped flat level of each detector and amplifier, for the normalization."""

from __future__ import annotations

__all__ = [
    "CpFlatMeasureConfig",
    "CpFlatMeasureConnections",
    "CpFlatMeasureTask",
    "MeasureVignetteConfig",
]

from typing import Any

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.images import MaskedImage

from .calib_output import clip_passes_field, clip_threshold_field
from .flat_connections import (
    CameraConfig,
    CameraConnections,
    as_detector_model,
    camera_prerequisite,
    post_isr_flat_input,
)
from .clipped_stats import SigmaClippedStats, sigma_clipped_region_stats
from .flat_statistics import pack_statistics
from .vignette_config import VignetteConfig, detector_vignetted_pixels


class CpFlatMeasureConnections(
    CameraConnections, dimensions=("instrument", "exposure", "detector")
):
    inputExp = post_isr_flat_input("Post-ISR flat image of one exposure and detector.")
    camera = camera_prerequisite("Camera geometry: the amplifier regions of each detector.")
    outputStats = cT.Output(
        name="cpFlatStatistics",
        doc="Clipped flat level, sigma and pixel count of the detector and of each amplifier.",
        storageClass="TaskMetadata",
        dimensions=("instrument", "exposure", "detector"),
    )


class MeasureVignetteConfig(VignetteConfig):
    """The measurement's unvignetted region: `VignetteConfig` without a default radius, so that
    nothing is vignetted until a region is configured."""

    radius = pexConfig.RangeField(
        dtype=float,
        doc="Radius of the unvignetted circle (mm); pixels whose centres lie outside are vignetted. "
            "None: no region, nothing is vignetted (cp_pipe's measurement with an exposure that has no "
            "valid polygon).",
        default=None,
        optional=True,
        min=0.0,
    )


class CpFlatMeasureConfig(
    pipeBase.PipelineTaskConfig, CameraConfig, pipelineConnections=CpFlatMeasureConnections
):
    maskNameList = pexConfig.ListField[str](
        dtype=str,
        doc="Mask planes whose pixels are left out of the statistics; planes absent from an "
            "image's mask schema are ignored.",
        default=["DETECTED", "BAD", "NO_DATA"],
    )
    doVignette = pexConfig.Field[bool](
        dtype=bool,
        doc="Leave the vignetted pixels (outside the focal-plane region of ``vignette``) out of the "
            "statistics, whatever maskNameList says. cp_pipe takes the region from the valid polygon ISR "
            "attached to the exposure and vignettes nothing without one; lsst.images flats carry none, so "
            "here the region is ``vignette``, and nothing is vignetted while its radius is None.",
        default=True,
    )
    vignette = pexConfig.ConfigField[MeasureVignetteConfig](
        dtype=MeasureVignetteConfig,
        doc="The unvignetted focal-plane region (used if doVignette and its radius is set).",
    )
    numSigmaClip = clip_threshold_field(
        "Clipping threshold of the iterative clipped mean, in units of sigma."
    )
    clipMaxIter = clip_passes_field(
        "Maximum number of clipping passes (0: plain mean of the unmasked pixels)."
    )


class CpFlatMeasureTask(pipeBase.PipelineTask):
    """Measure the clipped flat level of one detector and of each of its amplifiers.

    The statistics feed `CpFlatNormalizationTask`, which solves for the exposure and detector
    scales of the flat-field normalization.  Pixels in the ``maskNameList`` planes, and with
    ``doVignette`` the pixels outside the ``vignette`` region, are left out.
    """

    ConfigClass = CpFlatMeasureConfig
    config: CpFlatMeasureConfig
    _DefaultName = "cpFlatMeasure"

    def runQuantum(
        self,
        butlerQC: pipeBase.QuantumContext,
        inputRefs: pipeBase.InputQuantizedConnection,
        outputRefs: pipeBase.OutputQuantizedConnection,
    ) -> None:
        inputs: dict[str, Any] = butlerQC.get(inputRefs)
        data_id = butlerQC.quantum.dataId
        assert data_id is not None  # a quantum of this task always has its (exposure, detector)
        inputs["detectorId"] = data_id["detector"]
        outputs = self.run(**inputs)
        butlerQC.put(outputs, outputRefs)

    def run(self, inputExp: MaskedImage, camera: Any, detectorId: int) -> pipeBase.Struct:
        """Measure the flat statistics of one detector.

        Parameters
        ----------
        inputExp : `lsst.images.MaskedImage`
            Post-ISR flat image of the detector.
        camera : `lsst.cp.flatnorm.camera_model.CameraModel` or `lsst.afw.cameraGeom.Camera`
            Camera geometry: the amplifier boxes of ``camera[detectorId]`` and, with doVignette,
            its place on the focal plane; an afw detector is converted with
            `~lsst.cp.flatnorm.afw_camera.detector_from_afw`.
        detectorId : `int`
            ID of the detector the image belongs to.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``outputStats`` (`lsst.pipe.base.TaskMetadata`): ``DETECTOR_MEDIAN`` (the clipped
            mean, named as in cp_pipe), ``DETECTOR_SIGMA``, ``DETECTOR_N``, and for each
            amplifier ``i`` in the detector's order ``AMP_NAME_i``, ``AMP_MEDIAN_i``,
            ``AMP_SIGMA_i``, ``AMP_N_i``.

        Raises
        ------
        ValueError
            Raised if the image shape differs from the detector's, or if an amplifier lies
            outside the detector.
        """
        detector = as_detector_model(camera, detectorId)
        image = inputExp.image.array
        _check_shape(detectorId, detector.getBBox(), image.shape)
        names = [amp.getName() for amp in detector]
        regions = [_amp_slices(detectorId, detector.getBBox(), amp) for amp in detector]
        stats = sigma_clipped_region_stats(
            image, ~self._excluded_pixels(inputExp, detector, detectorId), regions,
            self.config.numSigmaClip, self.config.clipMaxIter,
        )
        self._warn_empty(detectorId, names, stats)
        return pipeBase.Struct(outputStats=pack_statistics(
            median=stats.whole_mean, sigma=stats.whole_sigma, n=stats.whole_n,
            amp_names=names, amp_medians=stats.mean, amp_sigmas=stats.sigma, amp_ns=stats.n,
        ))

    def _excluded_pixels(self, inputExp: MaskedImage, detector: Any, detectorId: int) -> np.ndarray:
        """Return the pixels left out of the statistics: masked, or vignetted if doVignette and a
        region is configured."""
        excluded = self._bad_pixels(inputExp)
        if self.config.doVignette and self.config.vignette.radius is not None:
            vignetted = detector_vignetted_pixels(self.config.vignette, detector)
            self.log.info("Detector %s: %d of %d pixels are vignetted.", detectorId, vignetted.sum(),
                          vignetted.size)
            excluded |= vignetted
        return excluded

    def _bad_pixels(self, inputExp: MaskedImage) -> np.ndarray:
        """Return the pixels flagged by any configured mask plane the image's schema has."""
        schema = inputExp.mask.schema
        planes = [name for name in self.config.maskNameList if name in schema.names]
        missing = [name for name in self.config.maskNameList if name not in schema.names]
        if missing:
            self.log.debug("Mask planes %s are not in the image's mask schema; ignoring them.", missing)
        return np.any(inputExp.mask.array & schema.bitmask(*planes), axis=-1)

    def _warn_empty(self, detectorId: int, names: list[str], stats: SigmaClippedStats) -> None:
        """Log the amplifiers (and the detector) left without any usable pixel."""
        for name, count in zip(names, stats.n):
            if count == 0:
                self.log.warning("Detector %s amplifier %s has no unmasked pixel; its statistics are NaN.",
                                 detectorId, name)
        if stats.whole_n == 0:
            self.log.warning("Detector %s has no unmasked pixel; its statistics are NaN.", detectorId)


def _check_shape(detectorId: int, bbox: Any, shape: tuple[int, ...]) -> None:
    expected = (bbox.getHeight(), bbox.getWidth())
    if tuple(shape) != expected:
        raise ValueError(f"Detector {detectorId}: image shape (ny, nx) = {tuple(shape)} does not match "
                         f"the camera's detector shape {expected}.")


def _amp_slices(detectorId: int, detectorBox: Any, amp: Any) -> tuple[slice, slice]:
    """Return the ``(y, x)`` array slices of an amplifier, in an image of the detector box."""
    box = amp.getBBox()
    y0 = box.getMinY() - detectorBox.getMinY()
    x0 = box.getMinX() - detectorBox.getMinX()
    y1, x1 = y0 + box.getHeight(), x0 + box.getWidth()
    if y0 < 0 or x0 < 0 or y1 > detectorBox.getHeight() or x1 > detectorBox.getWidth():
        raise ValueError(f"Detector {detectorId}: amplifier {amp.getName()} lies outside the detector.")
    return slice(y0, y1), slice(x0, x1)
