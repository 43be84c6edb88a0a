# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Binned flats and their focal-plane mosaic: pipe_tasks' ``VisualizeBinCalibFilterTask`` and
``VisualizeMosaicCalibFilterTask``, which cp_pipe's LSSTCam flat pipeline ends with.

The bin task writes one binned flat per detector (``flatBin8``, ``flatBin64`` in cp_pipe's
pipeline), the mosaic task one focal-plane image per physical filter (``flatMosaic8``,
``flatMosaic64``), both with the dimensions, bin factors and config fields of pipe_tasks' tasks.
They are built on `lsst.images` and numpy (`lsst.cp.flatnorm.focal_plane_mosaic`) instead of afw.
Differences: a binned pixel is the mean of its block's finite pixels outside ``NO_DATA`` (afw's
``binImage`` averages all of them, so the vignetted zeros would pull the edge down) and is marked
``NO_DATA`` when it has none; the detector comes from the data ID, so there is no
``detectorKeyword``; the storage classes are this package's (``MaskedImageV2`` and ``ImageV2``).
"""

from __future__ import annotations

__all__ = [
    "VisualizeBinCalibFilterConfig",
    "VisualizeBinCalibFilterConnections",
    "VisualizeBinCalibFilterTask",
    "VisualizeMosaicCalibFilterConfig",
    "VisualizeMosaicCalibFilterConnections",
    "VisualizeMosaicCalibFilterTask",
    "bin_masked_image",
]

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.images import Image, Mask, MaskedImage

from .camera_model import CameraModel
from .flat_connections import (
    CameraConfig,
    CameraConnections,
    as_camera_model,
    camera_prerequisite,
    flat_input,
)
from .focal_plane_mosaic import bin_image, make_mosaic, mosaic_geometry

_DIMENSIONS = ("instrument", "detector", "physical_filter")
_EMPTY_PLANE = "NO_DATA"
"""The plane that marks pixels (and binned pixels) without data."""


def _no_data(image: MaskedImage) -> npt.NDArray[np.bool_] | None:
    """The image's ``NO_DATA`` pixels, or `None` if its mask has no such plane."""
    return image.mask.get(_EMPTY_PLANE) if _EMPTY_PLANE in image.mask.schema else None


def _binning_field(doc: str) -> pexConfig.Field:
    return pexConfig.Field(dtype=int, default=8, doc=doc, check=lambda value: value >= 1)


def bin_masked_image(image: MaskedImage, binning: int) -> MaskedImage:
    """Bin a masked image: the mean of each block's finite pixels outside ``NO_DATA``.

    The variance is that of the mean; a block without such a pixel is NaN and ``NO_DATA``.  The mask
    schema and the metadata are the input's; ``BINNING`` records the factor.

    Parameters
    ----------
    image : `lsst.images.MaskedImage`
        Image to bin; its first pixel is taken as the detector's first.
    binning : `int`
        Pixels per bin side.
    """
    excluded = _no_data(image)
    values, counts = bin_image(image.image.array, binning, excluded)
    variance, _ = bin_image(image.variance.array, binning, excluded)
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = np.where(counts > 0, variance / counts, np.nan)
    mask = Mask(schema=image.mask.schema, shape=values.shape)
    if excluded is not None:
        mask.set(_EMPTY_PLANE, counts == 0)
    # Complex values (only ever read from a FITS header) cannot be written back as native metadata.
    metadata = {key: value for key, value in image.metadata.items() if not isinstance(value, complex)}
    metadata["BINNING"] = binning
    return MaskedImage(Image(values.astype(np.float32)), mask=mask,
                       variance=Image(variance.astype(np.float32)), metadata=metadata)


class VisualizeBinCalibFilterConnections(pipeBase.PipelineTaskConnections, dimensions=_DIMENSIONS):
    inputExp = flat_input("flat", "Flat to bin.")
    outputExp = cT.Output(
        name="flatBin",
        doc="Binned flat.",
        storageClass="MaskedImageV2",
        dimensions=_DIMENSIONS,
    )


class VisualizeBinCalibFilterConfig(pipeBase.PipelineTaskConfig,
                                    pipelineConnections=VisualizeBinCalibFilterConnections):
    """Configuration of `VisualizeBinCalibFilterTask` (pipe_tasks' ``binning``)."""

    binning = _binning_field("Binning factor to apply to each input flat's image data.")


class VisualizeBinCalibFilterTask(pipeBase.PipelineTask):
    """Bin each detector's flat (pipe_tasks' ``VisualizeBinCalibFilterTask``), for
    `VisualizeMosaicCalibFilterTask` to mosaic."""

    ConfigClass = VisualizeBinCalibFilterConfig
    _DefaultName = "VisualizeBinCalibFilter"
    config: VisualizeBinCalibFilterConfig

    def run(self, inputExp: MaskedImage) -> pipeBase.Struct:
        """Bin a flat.

        Parameters
        ----------
        inputExp : `lsst.images.MaskedImage`
            The flat.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``outputExp``: the binned flat (`bin_masked_image`).
        """
        return pipeBase.Struct(outputExp=bin_masked_image(inputExp, self.config.binning))


class VisualizeMosaicCalibFilterConnections(CameraConnections, dimensions=("instrument", "physical_filter")):
    inputExps = cT.Input(
        name="flatBin",
        doc="Binned flats to mosaic.",
        storageClass="MaskedImageV2",
        dimensions=_DIMENSIONS,
        multiple=True,
    )
    camera = camera_prerequisite("Camera geometry: where each detector lies on the focal plane.")
    outputData = cT.Output(
        name="flatFocalPlane",
        doc="Binned flats mosaicked on the focal plane (NaN where no detector lies or no data is).",
        storageClass="ImageV2",
        dimensions=("instrument", "physical_filter"),
    )


class VisualizeMosaicCalibFilterConfig(pipeBase.PipelineTaskConfig, CameraConfig,
                                       pipelineConnections=VisualizeMosaicCalibFilterConnections):
    """Configuration of `VisualizeMosaicCalibFilterTask` (pipe_tasks' ``binning``, plus
    ``cameraStorageClass``)."""

    binning = _binning_field("Binning factor previously applied to the input flats; must be the bin "
                             "task's.")


class VisualizeMosaicCalibFilterTask(pipeBase.PipelineTask):
    """Mosaic binned flats on the focal plane (pipe_tasks' ``VisualizeMosaicCalibFilterTask``).

    ``binning`` must be the one the inputs were binned with: an input of another shape is refused
    with its detector named.
    """

    ConfigClass = VisualizeMosaicCalibFilterConfig
    _DefaultName = "VisualizeMosaicCalibFilter"
    config: VisualizeMosaicCalibFilterConfig

    def runQuantum(self, butlerQC: pipeBase.QuantumContext, inputRefs: pipeBase.InputQuantizedConnection,
                   outputRefs: pipeBase.OutputQuantizedConnection) -> None:
        inputs = butlerQC.get(inputRefs)
        detectors = [ref.dataId["detector"] for ref in inputRefs.inputExps]
        butlerQC.put(self.run(inputs["inputExps"], inputs["camera"], detectors), outputRefs)

    def run(self, inputExps: Sequence[MaskedImage], camera: Any,
            inputIds: Sequence[int]) -> pipeBase.Struct:
        """Mosaic binned flats.

        Parameters
        ----------
        inputExps : `~collections.abc.Sequence` [`lsst.images.MaskedImage`]
            Binned flats.
        camera : `~lsst.cp.flatnorm.camera_model.CameraModel` or afw camera
            Camera geometry.
        inputIds : `~collections.abc.Sequence` [`int`]
            Detector ID of each binned flat.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``outputData``: the mosaic (`lsst.images.Image`), with the focal-plane position of its
            lower-left corner (``FP_X0``, ``FP_Y0``, mm), its scale (``FP_SCALE``, mm per pixel) and
            ``BINNING`` in its metadata.
        """
        model: CameraModel = as_camera_model(camera)
        geometry = mosaic_geometry(model, self.config.binning)
        binned = {}
        for det_id, image in zip(inputIds, inputExps):
            values = np.array(image.image.array, dtype=np.float32)
            empty = _no_data(image)
            if empty is not None:
                values[empty] = np.nan
            binned[int(det_id)] = values
        mosaic = make_mosaic(binned, geometry)
        metadata = {"FP_X0": geometry.origin[0], "FP_Y0": geometry.origin[1], "FP_SCALE": geometry.scale,
                    "BINNING": self.config.binning}
        self.log.info("Mosaicked %d binned flats into a %d x %d focal-plane image.", len(binned),
                      *geometry.shape)
        return pipeBase.Struct(outputData=Image(mosaic, metadata=metadata))
