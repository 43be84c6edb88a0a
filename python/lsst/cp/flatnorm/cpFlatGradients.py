# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Focal-plane gradients of flats: fit them (`CpFlatFitGradientsTask`) and correct a dome flat to the
sky's radial function (`CpFlatApplyGradientsTask`).

These are cp_pipe's two tasks of the same names, with its labels' connection names, config fields
and dataset types, on this package's types: flats are `lsst.images.MaskedImage` (``MaskedImageV2``),
the camera is `~lsst.cp.flatnorm.camera_model.CameraModel` (or an afw camera), the gradient is a
`~lsst.cp.flatnorm.gradient_model.FlatGradientModel` (storage class ``FlatGradientModel``) and the
defects are optional tables of pixel boxes.  The model and its fit are described in
`lsst.cp.flatnorm.gradient_model` and `lsst.cp.flatnorm.gradient_fit`; the binning in
`lsst.cp.flatnorm.focal_plane_binning`.

LSSTCam's corrected-flat pipeline fits the combined dome flat (``flat_uncorrected``) into
``flat_gradient`` and then writes ``flat`` = the dome flat with its planar gradient removed and its
radial function replaced by the reference's; the reference (``flat_gradient_reference``, one per
physical filter) is fitted the same way to a sky flat, by the gradient-reference pipeline.
"""

from __future__ import annotations

__all__ = [
    "DEFECTS_STORAGE_CLASSES",
    "CpFlatApplyGradientsConfig",
    "CpFlatApplyGradientsConnections",
    "CpFlatApplyGradientsTask",
    "CpFlatFitGradientsConfig",
    "CpFlatFitGradientsConnections",
    "CpFlatFitGradientsTask",
]

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from astropy.table import Table

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.daf.butler import DeferredDatasetHandle
from lsst.images import Box, MaskedImage

from .camera_model import DetectorModel
from .flat_connections import (
    CameraConfig,
    CameraConnections,
    as_detector_model,
    camera_prerequisite,
    flat_input,
    flat_output,
)
from .focal_plane_binning import bin_detector, binned_table, defect_boxes, excluded_pixels
from .gradient_fit import FlatGradientFitter, GradientFit, robust_sigma
from .gradient_model import FlatGradientFitSummary, FlatGradientModel, FlatGradientUncertainties

GRADIENT_STORAGE_CLASS = "FlatGradientModel"
"""Storage class of ``flat_gradient`` and ``flat_gradient_reference`` (cp_pipe: ``IsrCalib``)."""

DEFECTS_STORAGE_CLASSES: dict[str, str] = {
    "ArrowAstropy": "A table with ip_isr's defect columns x0, y0, width, height (detector pixels), as this "
                    "package's repositories store defects.",
    "Defects": "ip_isr's Defects, as repositories made by the full stack store them (needs ip_isr); each "
               "defect's getBBox() is read.",
}
"""Storage classes the ``input_defects`` connection can read."""

NO_DATA = "NO_DATA"

_BAND_ROWS = 512
"""Rows of the flat corrected at a time, which bounds the memory of the focal-plane coordinates."""


def _filter_connection(connection_type: type, name: str, doc: str, storageClass: str = GRADIENT_STORAGE_CLASS,
                       **kwargs: Any) -> Any:
    """A connection of ``connection_type`` to a dataset per physical filter (a gradient by default)."""
    return connection_type(name=name, doc=doc, storageClass=storageClass,
                           dimensions=("instrument", "physical_filter"), **kwargs)


def _read(handle: Any) -> Any:
    """The dataset behind a deferred (or in-memory) handle, or ``handle`` itself."""
    if isinstance(handle, (DeferredDatasetHandle, pipeBase.InMemoryDatasetHandle)):
        return handle.get()
    return handle


class CpFlatFitGradientsConnections(CameraConnections,
                                    dimensions=("instrument", "physical_filter")):
    camera = camera_prerequisite("Camera geometry: where each detector's pixels are on the focal plane, "
                                 "its type and its physical type (sensor family).")
    input_flats = flat_input("flat_uncorrected", "Flats of every detector to fit the gradient to.",
                             multiple=True, deferLoad=True)
    input_defects = cT.PrerequisiteInput(
        name="defects",
        doc="Defects of the detectors (optional); their pixels are left out of the bins.",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "detector"),
        isCalibration=True,
        multiple=True,
        deferLoad=True,
    )
    output_reference_gradient = _filter_connection(
        cT.Output, "flat_gradient_reference",
        "Reference (sky) flat gradient, a calibration (do_reference_gradient).", isCalibration=True,
    )
    output_gradient = _filter_connection(cT.Output, "flat_gradient", "Gradient fitted to a dome flat.")
    model_residual_plot = _filter_connection(
        cT.Output, "gradient_model_residual_plot",
        "Binned flat, model and data / model over the focal plane (PNG).", storageClass="Plot",
    )
    radial_model_plot = _filter_connection(
        cT.Output, "gradient_radial_model_plot",
        "Binned flat without the plane and ITL ratio against radius, with the radial spline (PNG).",
        storageClass="Plot",
    )

    def __init__(self, *, config: CpFlatFitGradientsConfig):
        super().__init__(config=config)
        self.input_defects = dataclasses.replace(self.input_defects, storageClass=config.defectsStorageClass)
        if config.do_reference_gradient:
            del self.output_gradient
        else:
            del self.output_reference_gradient


def _increasing(values: Any) -> bool:
    return len(values) >= 2 and all(b > a for a, b in zip(values, values[1:]))


class CpFlatFitGradientsConfig(pipeBase.PipelineTaskConfig, CameraConfig,
                               pipelineConnections=CpFlatFitGradientsConnections):
    """Configuration of `CpFlatFitGradientsTask`: cp_pipe's ``CpFlatFitGradientsConfig`` fields and
    defaults, plus ``mask_planes``, ``outlier_sigma``, ``cameraStorageClass`` and
    ``defectsStorageClass``."""

    do_reference_gradient = pexConfig.Field[bool](
        dtype=bool,
        doc="Write a reference gradient (from a sky flat), flat_gradient_reference, instead of "
            "flat_gradient.",
        default=False,
    )
    bin_factor = pexConfig.Field[int](dtype=int, doc="Pixels per side of a bin.", default=128,
                                      check=lambda value: value >= 1)
    do_constrain_zero = pexConfig.Field[bool](dtype=bool,
                                              doc="Fix the outermost radial spline value to zero.",
                                              default=False)
    do_fit_centroid = pexConfig.Field[bool](dtype=bool, doc="Fit an offset of the radial function's centre "
                                            "from the focal-plane centroid.", default=False)
    do_fit_gradient = pexConfig.Field[bool](dtype=bool, doc="Fit a planar gradient over the focal plane.",
                                            default=False)
    do_normalize_center = pexConfig.Field[bool](
        dtype=bool,
        doc="Divide the flat by its median within normalize_center_radius of the centroid before the fit "
            "(the model's normalization_factor); otherwise the factor is 1 and min/max_flat_value are "
            "relative to that median.",
        default=True,
    )
    normalize_center_radius = pexConfig.Field[float](dtype=float,
                                                     doc="Radius (mm) of the central normalization.",
                                                     default=25.0, check=lambda value: value > 0)
    fp_centroid_x = pexConfig.Field[float](dtype=float,
                                           doc="Focal-plane centroid x (mm): the plane's pivot and "
                                           "the nominal radial centre.", default=0.0)
    fp_centroid_y = pexConfig.Field[float](dtype=float, doc="Focal-plane centroid y (mm).", default=0.0)
    radial_spline_nodes_initial = pexConfig.ListField[float](
        dtype=float,
        doc="Radial spline nodes (mm) of the first fit, made only inside the largest of them, which "
            "measures the ITL ratio that the second fit keeps.",
        default=[0.0, 100.0, 200.0, 250.0, 275.0, 317.0],
    )
    radial_spline_nodes = pexConfig.ListField[float](
        dtype=float,
        doc="Radial spline nodes (mm) of the full fit; points beyond the last are not used.",
        default=[0.0, 100.0, 200.0, 250.0, 275.0, 290.0, 300.0, 310.0, 315.0, 317.0, 320.0, 325.0, 333.0,
                 340.0, 350.0],
    )
    min_flat_value = pexConfig.Field[float](dtype=float, doc="Smallest (relative) binned value fitted.",
                                            default=0.05)
    max_flat_value = pexConfig.Field[float](dtype=float, doc="Largest (relative) binned value fitted.",
                                            default=1.5)
    detector_boundary = pexConfig.Field[int](dtype=int,
                                             doc="Pixels along each detector edge left out of bins.",
                                             default=10, check=lambda value: value >= 0)
    fit_eps = pexConfig.Field[float](dtype=float, doc="Relative step of the finite-difference Jacobian.",
                                     default=1e-8, check=lambda value: value > 0)
    fit_gtol = pexConfig.Field[float](dtype=float, doc="Gradient tolerance of the minimizer.", default=1e-10,
                                      check=lambda value: value > 0)
    do_use_non_science_detectors = pexConfig.Field[bool](
        dtype=bool, doc="Fit the non-science (wavefront, guider, focus) detectors too.", default=False)
    fixed_model_residual_plot_scale = pexConfig.Field[float](
        dtype=float, doc="Half-width around 1 of the data / model colour scale; percentiles if None.",
        default=None, optional=True)
    mask_planes = pexConfig.ListField[str](
        dtype=str,
        doc="Mask planes whose pixels are left out of the bins (planes a flat lacks are skipped). cp_pipe "
            "leaves out NO_DATA only; BAD also marks the pixels the combine filled with the median.",
        default=["NO_DATA", "BAD"],
    )
    outlier_sigma = pexConfig.Field[float](
        dtype=float,
        doc="Bins whose residual is beyond this many robust sigmas are left out of the fit (0: none).",
        default=5.0,
        check=lambda value: value >= 0,
    )
    defectsStorageClass = pexConfig.ChoiceField[str](
        dtype=str,
        doc="Storage class of the defects in the repository.",
        default="ArrowAstropy",
        allowed=DEFECTS_STORAGE_CLASSES,
    )

    def validate(self) -> None:
        super().validate()
        for name in ("radial_spline_nodes", "radial_spline_nodes_initial"):
            if not _increasing(list(getattr(self, name))):
                raise ValueError(f"{name} must have at least two increasing nodes; got "
                                 f"{list(getattr(self, name))}.")
        if not self.min_flat_value < self.max_flat_value:
            raise ValueError(f"min_flat_value ({self.min_flat_value}) must be below max_flat_value "
                             f"({self.max_flat_value}).")


class CpFlatFitGradientsTask(pipeBase.PipelineTask):
    """Fit the large-scale gradients of a flat over the whole focal plane.

    The flats of all detectors are binned into focal-plane points, divided by their median near the
    centre, and fitted with the model of `~lsst.cp.flatnorm.gradient_model.FlatGradientModel` in two
    passes: inside the largest of ``radial_spline_nodes_initial`` (which fixes the ITL ratio), then
    over ``radial_spline_nodes`` with that ratio.  Writes ``flat_gradient_reference`` (a sky flat's,
    ``do_reference_gradient``) or ``flat_gradient`` (a dome flat's) and two QA figures.
    """

    ConfigClass = CpFlatFitGradientsConfig
    _DefaultName = "cpFlatFitGradients"
    config: CpFlatFitGradientsConfig

    def runQuantum(self, butlerQC: pipeBase.QuantumContext, inputRefs: pipeBase.InputQuantizedConnection,
                   outputRefs: pipeBase.OutputQuantizedConnection) -> None:
        inputs = butlerQC.get(inputRefs)
        gradient_ref = (outputRefs.output_reference_gradient if self.config.do_reference_gradient
                        else outputRefs.output_gradient)
        struct = self.run(
            camera=inputs["camera"],
            input_flat_handle_dict={int(h.dataId["detector"]): h for h in inputs["input_flats"]},
            input_defect_handle_dict={int(h.dataId["detector"]): h for h in inputs.get("input_defects", [])},
            instrument=str(gradient_ref.dataId["instrument"]),
            physical_filter=str(gradient_ref.dataId["physical_filter"]),
        )
        butlerQC.put(self._gradient(struct), gradient_ref)
        for name in ("model_residual_plot", "radial_model_plot"):
            figure = getattr(struct, name)
            if figure is not None:
                butlerQC.put(figure, getattr(outputRefs, name))

    def _gradient(self, struct: pipeBase.Struct) -> FlatGradientModel:
        if self.config.do_reference_gradient:
            return struct.output_reference_gradient
        return struct.output_gradient

    def run(
        self,
        *,
        camera: Any,
        input_flat_handle_dict: Mapping[
            int, DeferredDatasetHandle | pipeBase.InMemoryDatasetHandle | MaskedImage
        ],
        input_defect_handle_dict: Mapping[int, Any] | None = None,
        binned_image: Table | None = None,
        instrument: str = "",
        physical_filter: str = "",
    ) -> pipeBase.Struct:
        """Fit the gradient model to the flats of a focal plane.

        Parameters
        ----------
        camera : `~lsst.cp.flatnorm.camera_model.CameraModel` or `lsst.afw.cameraGeom.Camera`
            Camera: each detector's focal-plane placement, type and physical type.
        input_flat_handle_dict : `dict` [`int`, `lsst.daf.butler.DeferredDatasetHandle`]
            Flats by detector ID: deferred or in-memory dataset handles, or
            `lsst.images.MaskedImage` objects.
        input_defect_handle_dict : `dict` [`int`, `typing.Any`], optional
            Defects by detector ID, handles or objects (see
            `~lsst.cp.flatnorm.focal_plane_binning.defect_boxes`); a detector without an entry has
            none.
        binned_image : `astropy.table.Table`, optional
            Bins from an earlier run (its ``binned_image``); if given, the flats are not read.
        instrument, physical_filter : `str`, optional
            Recorded in the model.

        Returns
        -------
        struct : `lsst.pipe.base.Struct`
            ``output_reference_gradient`` (``do_reference_gradient``) or ``output_gradient``
            (`~lsst.cp.flatnorm.gradient_model.FlatGradientModel`); ``model_residual_plot`` and
            ``radial_model_plot`` (`matplotlib.figure.Figure`, `None` if matplotlib is not
            installed); ``binned_image`` (`astropy.table.Table`, the bins before normalization).

        Raises
        ------
        ValueError
            Raised if no bin is near the centre to normalize by, or too few bins are left to fit.
        """
        config = self.config
        if binned_image is None:
            self.log.info("Binning %d flats by %d.", len(input_flat_handle_dict), config.bin_factor)
            binned_image = self._bin(camera, input_flat_handle_dict, input_defect_handle_dict or {})
        else:
            self.log.info("Using the %d bins given.", len(binned_image))
        binned = binned_image.copy()
        detector_used = self._detector_selection(camera, binned)
        radius = np.hypot(binned["xf"] - config.fp_centroid_x, binned["yf"] - config.fp_centroid_y)
        central_value = self._central_value(binned, radius, detector_used)
        normalization = central_value if config.do_normalize_center else 1.0
        binned["value"] = binned["value"] / normalization
        low, high = (config.min_flat_value, config.max_flat_value) if config.do_normalize_center else (
            config.min_flat_value * central_value, config.max_flat_value * central_value)
        values = np.asarray(binned["value"])
        good = (detector_used & np.isfinite(values) & (values >= low) & (values <= high)
                & (np.asarray(binned["n_pixels"]) > 0) & (radius <= config.radial_spline_nodes[-1]))
        binned = binned[good]
        radius = radius[good]
        self.log.info("Fitting %d bins of %d detectors.", len(binned), len(np.unique(binned["detector"])))
        first, second, fitter = self._fit(binned, radius)
        gradient = self._model(first, second, fitter, binned, normalization, instrument, physical_filter,
                               len(input_flat_handle_dict))
        self._log_result(gradient)
        plots = self._plots(binned, gradient, physical_filter)  # the rejected bins show as outliers
        struct = pipeBase.Struct(binned_image=binned_image, **plots)
        if config.do_reference_gradient:
            struct.output_reference_gradient = gradient
        else:
            struct.output_gradient = gradient
        return struct

    # Binning.

    def _bin(self, camera: Any, flats: Mapping[int, Any], defects: Mapping[int, Any]) -> Table:
        parts = []
        for detector_id in sorted(flats):
            detector = as_detector_model(camera, detector_id)
            flat = _read(flats[detector_id])
            boxes = defect_boxes(_read(defects[detector_id])) if detector_id in defects else []
            planes = [name for name in self.config.mask_planes if name in flat.mask.schema.names]
            masked = (np.any(flat.mask.array & flat.mask.schema.bitmask(*planes), axis=-1) if planes
                      else None)
            origin = (flat.bbox.x.start, flat.bbox.y.start)
            excluded = excluded_pixels(flat.image.array.shape, origin, boxes, masked)
            parts.append((detector, bin_detector(flat.image.array, excluded, self.config.bin_factor,
                                                 self.config.detector_boundary, origin)))
            del flat
        return binned_table(parts)

    def _detector_selection(self, camera: Any, binned: Table) -> np.ndarray:
        """Bins of the detectors the fit uses: science detectors, or all (do_use_non_science_detectors)."""
        detector_ids = np.asarray(binned["detector"])
        if self.config.do_use_non_science_detectors:
            return np.ones(len(binned), dtype=bool)
        science = [d for d in np.unique(detector_ids)
                   if as_detector_model(camera, int(d)).type == "SCIENCE"]
        return np.isin(detector_ids, science)

    def _central_value(self, binned: Table, radius: np.ndarray, used: np.ndarray) -> float:
        """Median of the usable bins within normalize_center_radius of the centroid."""
        values = np.asarray(binned["value"])
        central = used & (radius < self.config.normalize_center_radius) & np.isfinite(values)
        if not central.any():
            raise ValueError(
                f"No usable bin lies within normalize_center_radius={self.config.normalize_center_radius} mm "
                f"of the focal-plane centroid ({self.config.fp_centroid_x}, {self.config.fp_centroid_y}); "
                "increase the radius (cp_pipe's default suits LSSTCam) or check the flats."
            )
        return float(np.median(values[central]))

    # Fitting.

    def _fitter(self, nodes: Sequence[float], binned: Table, selection: np.ndarray) -> FlatGradientFitter:
        config = self.config
        n_pixels = np.asarray(binned["n_pixels"], dtype=float)[selection]
        return FlatGradientFitter(
            np.asarray(nodes), np.asarray(binned["xf"])[selection], np.asarray(binned["yf"])[selection],
            np.asarray(binned["value"])[selection], np.asarray(binned["itl"])[selection],
            weights=np.sqrt(n_pixels / n_pixels.max()), constrain_zero=config.do_constrain_zero,
            fit_centroid=config.do_fit_centroid, fit_gradient=config.do_fit_gradient,
            fp_centroid_x=config.fp_centroid_x, fp_centroid_y=config.fp_centroid_y,
        )

    def _fit(self, binned: Table,
             radius: np.ndarray) -> tuple[GradientFit | None, GradientFit, FlatGradientFitter]:
        """The two passes: inner (ITL ratio), then full with that ratio fixed."""
        config = self.config
        fit_options: dict[str, Any] = {"outlier_sigma": config.outlier_sigma, "diff_step": config.fit_eps,
                                       "gtol": config.fit_gtol}
        inner = radius < max(config.radial_spline_nodes_initial)
        self.log.info("First fit: %d bins inside %.2f mm.", inner.sum(),
                      max(config.radial_spline_nodes_initial))
        first = None
        ratio = None
        initial = self._fitter(config.radial_spline_nodes_initial, binned, inner)
        if initial.fit_itl_ratio:
            first = initial.fit(initial.compute_p0(), **fit_options)
            ratio = float(first.value("itl_ratio")[0])
        else:
            self.log.info("The first fit has bins of one sensor family only; it measures no ITL ratio.")
        everything = np.ones(len(binned), dtype=bool)
        fitter = self._fitter(config.radial_spline_nodes, binned, everything)
        self.log.info("Final fit: %d bins inside %.2f mm.", len(binned), max(config.radial_spline_nodes))
        second = fitter.fit(fitter.compute_p0(itl_ratio=ratio), freeze_itl_ratio=ratio is not None,
                            **fit_options)
        for name, result in (("first", first), ("final", second)):
            if result is not None and not result.converged:
                self.log.warning("The %s gradient fit did not converge: %s", name, result.message)
        return first, second, fitter

    def _model(self, first: GradientFit | None, second: GradientFit, fitter: FlatGradientFitter,
               binned: Table, normalization: float, instrument: str, physical_filter: str,
               n_flats: int) -> FlatGradientModel:
        config = self.config
        fields: dict[str, Any] = {}
        errors: dict[str, Any] = {"radial_spline_values": second.error("spline").tolist()}
        if fitter.fit_itl_ratio:
            fields["itl_ratio"] = float(second.value("itl_ratio")[0])
            source = first if first is not None else second
            errors["itl_ratio"] = float(source.error("itl_ratio")[0])
        if config.do_fit_centroid:
            fields["centroid_delta_x"], fields["centroid_delta_y"] = second.value("centroid_delta").tolist()
            errors["centroid_delta_x"], errors["centroid_delta_y"] = second.error("centroid_delta").tolist()
        if config.do_fit_gradient:
            fields["gradient_x"], fields["gradient_y"] = second.value("gradient").tolist()
            errors["gradient_x"], errors["gradient_y"] = second.error("gradient").tolist()
        kept = ~second.rejected
        model_values = fitter.compute_model(second.parameters)
        relative = np.asarray(binned["value"]) / model_values - 1.0
        summary = FlatGradientFitSummary(
            n_bins=int(kept.sum()), n_rejected=int(second.rejected.sum()),
            n_detectors=len(np.unique(np.asarray(binned["detector"])[kept])), bin_factor=config.bin_factor,
            residual_sigma=robust_sigma(relative[kept]),
            converged=bool(second.converged and (first is None or first.converged)), message=second.message,
        )
        metadata = {
            "INPUT_DATASET_TYPE": config.connections.input_flats,
            "N_INPUT_FLATS": n_flats,
            "BIN_FACTOR": config.bin_factor,
            "DETECTOR_BOUNDARY": config.detector_boundary,
            "NORMALIZE_CENTER": config.do_normalize_center,
            "NORMALIZE_CENTER_RADIUS": config.normalize_center_radius,
            "FIT_CENTROID": config.do_fit_centroid,
            "FIT_GRADIENT": config.do_fit_gradient,
            "CONSTRAIN_ZERO": config.do_constrain_zero,
            "INITIAL_FIT_RADIUS": max(config.radial_spline_nodes_initial),
        }
        return FlatGradientModel(
            is_reference=config.do_reference_gradient, instrument=instrument, physical_filter=physical_filter,
            radial_spline_nodes=list(config.radial_spline_nodes),
            radial_spline_values=second.value("spline").tolist(),
            centroid_x=config.fp_centroid_x, centroid_y=config.fp_centroid_y,
            normalization_factor=normalization, uncertainties=FlatGradientUncertainties(**errors),
            fit=summary, metadata=metadata, **fields,
        )

    def _log_result(self, gradient: FlatGradientModel) -> None:
        fit = gradient.fit
        assert fit is not None  # a fitted model always has its summary
        self.log.info(
            "Gradient fit: normalization %.6g, ITL ratio %.6f, centre offset (%.4g, %.4g) mm, gradient "
            "(%.4g, %.4g) per mm; %d bins of %d detectors (%d rejected), residual sigma %.3g.",
            gradient.normalization_factor, gradient.itl_ratio, gradient.centroid_delta_x,
            gradient.centroid_delta_y, gradient.gradient_x, gradient.gradient_y, fit.n_bins, fit.n_detectors,
            fit.n_rejected, fit.residual_sigma,
        )

    def _plots(self, binned: Table, gradient: FlatGradientModel, physical_filter: str) -> dict[str, Any]:
        try:
            from .gradient_plots import model_residual_figure, radial_model_figure
            title = f"{physical_filter}: {self.config.connections.input_flats}"
            return {
                "model_residual_plot": model_residual_figure(
                    binned, gradient, title, self.config.fixed_model_residual_plot_scale),
                "radial_model_plot": radial_model_figure(binned, gradient, title),
            }
        except ImportError as error:
            self.log.warning("No QA figures: %s (install matplotlib, e.g. the 'demo' extra).", error)
            return {"model_residual_plot": None, "radial_model_plot": None}


class CpFlatApplyGradientsConnections(CameraConnections,
                                      dimensions=("instrument", "physical_filter", "detector")):
    camera = camera_prerequisite("Camera geometry: where the detector's pixels are on the focal plane.")
    input_flat = flat_input("flat_uncorrected", "Dome flat to correct.")
    reference_gradient = _filter_connection(
        cT.PrerequisiteInput, "flat_gradient_reference",
        "Reference (sky) gradient: the radial function the corrected flat gets.", isCalibration=True,
    )
    gradient = _filter_connection(
        cT.Input, "flat_gradient", "Gradient fitted to the dome flats of the whole focal plane."
    )
    output_flat = flat_output("Gradient-corrected flat.")


class CpFlatApplyGradientsConfig(pipeBase.PipelineTaskConfig, CameraConfig,
                                 pipelineConnections=CpFlatApplyGradientsConnections):
    """Configuration of `CpFlatApplyGradientsTask` (cp_pipe's has no field; ``cameraStorageClass`` is
    this package's)."""


class CpFlatApplyGradientsTask(pipeBase.PipelineTask):
    """Remove a dome flat's planar gradient and give it the reference's radial function.

    Every pixel of the flat is multiplied by

        P_dome(x, y) * S_ref(r_ref) / S_dome(r_dome) / normalization_dome

    at its focal-plane position (x, y), with ``P`` the dome gradient's plane, ``S`` the radial
    splines about each model's own centre, and the dome model's normalization factor; the variance
    by its square.  The ITL ratio is not touched: it is the detectors' real response.  A pixel
    whose factor is not finite and positive (a reference spline at or below zero) is set to zero and
    flagged NO_DATA, as vignetted pixels are.
    """

    ConfigClass = CpFlatApplyGradientsConfig
    _DefaultName = "cpFlatApplyGradients"
    config: CpFlatApplyGradientsConfig

    def runQuantum(self, butlerQC: pipeBase.QuantumContext, inputRefs: pipeBase.InputQuantizedConnection,
                   outputRefs: pipeBase.OutputQuantizedConnection) -> None:
        inputs = butlerQC.get(inputRefs)
        inputs["detectorId"] = int(outputRefs.output_flat.dataId["detector"])
        butlerQC.put(self.run(**inputs), outputRefs)

    def run(self, *, camera: Any, input_flat: MaskedImage, reference_gradient: FlatGradientModel,
            gradient: FlatGradientModel, detectorId: int) -> pipeBase.Struct:
        """Correct one detector's flat.

        Parameters
        ----------
        camera : `~lsst.cp.flatnorm.camera_model.CameraModel` or `lsst.afw.cameraGeom.Camera`
            Camera geometry.
        input_flat : `lsst.images.MaskedImage`
            The dome flat (``flat_uncorrected``).
        reference_gradient : `~lsst.cp.flatnorm.gradient_model.FlatGradientModel`
            The sky reference.
        gradient : `~lsst.cp.flatnorm.gradient_model.FlatGradientModel`
            The dome flats' gradient.
        detectorId : `int`
            The flat's detector.

        Returns
        -------
        struct : `lsst.pipe.base.Struct`
            ``output_flat`` (`lsst.images.MaskedImage`): the corrected flat, with the input's
            metadata and the correction's (``CP_GRADIENT_*``).

        Raises
        ------
        ValueError
            Raised if the two models or the flat name different physical filters.
        """
        self._check_filters(input_flat, reference_gradient, gradient)
        detector = as_detector_model(camera, detectorId)
        output = input_flat.copy()
        n_invalid = 0
        height = output.image.array.shape[0]
        for start in range(0, height, _BAND_ROWS):
            rows = slice(start, min(start + _BAND_ROWS, height))
            factor = self._factor(detector, output, rows, reference_gradient, gradient)
            invalid = ~(np.isfinite(factor) & (factor > 0))
            factor[invalid] = 0.0
            output.image.array[rows] = output.image.array[rows] * factor
            output.variance.array[rows] = output.variance.array[rows] * factor**2
            if invalid.any():
                if NO_DATA in output.mask.schema.names:
                    box = output.bbox
                    band = Box.factory[box.y.start + rows.start:box.y.start + rows.stop,
                                       box.x.start:box.x.stop]
                    output.mask[band].set(NO_DATA, invalid)
                n_invalid += int(invalid.sum())
        if n_invalid:
            self.log.warning("Detector %d: %d pixels have no valid gradient correction (reference radial "
                             "function not positive); they are set to 0 and flagged NO_DATA.",
                             detectorId, n_invalid)
        output.metadata.update(self._metadata(reference_gradient, gradient, n_invalid))
        return pipeBase.Struct(output_flat=output)

    @staticmethod
    def _factor(detector: DetectorModel, flat: MaskedImage, rows: slice, reference: FlatGradientModel,
                gradient: FlatGradientModel) -> np.ndarray:
        """The correction factor of a band of rows of the flat."""
        x = flat.bbox.x.start + np.arange(flat.image.array.shape[1], dtype=float)
        y = flat.bbox.y.start + np.arange(rows.start, rows.stop, dtype=float)
        xf, yf = detector.pixel_to_focal_plane(*np.meshgrid(x, y))
        with np.errstate(divide="ignore", invalid="ignore"):
            return (gradient.gradient_model(xf, yf) * reference.radial_model_xy(xf, yf)
                    / gradient.radial_model_xy(xf, yf) / gradient.normalization_factor)

    @staticmethod
    def _check_filters(flat: MaskedImage, reference: FlatGradientModel, gradient: FlatGradientModel) -> None:
        named = (("reference gradient", reference.physical_filter), ("gradient", gradient.physical_filter))
        filters = {name: value for name, value in named if value}
        if len(set(filters.values())) > 1:
            raise ValueError(f"The gradients are of different physical filters: {filters}.")

    @staticmethod
    def _metadata(reference: FlatGradientModel, gradient: FlatGradientModel,
                  n_invalid: int) -> dict[str, Any]:
        return {
            "CP_GRADIENT_NORMALIZATION": gradient.normalization_factor,
            "CP_GRADIENT_X": gradient.gradient_x,
            "CP_GRADIENT_Y": gradient.gradient_y,
            "CP_GRADIENT_CENTROID_X": gradient.centroid_x,
            "CP_GRADIENT_CENTROID_Y": gradient.centroid_y,
            "CP_GRADIENT_DOME_CENTRE_X": gradient.centre[0],
            "CP_GRADIENT_DOME_CENTRE_Y": gradient.centre[1],
            "CP_GRADIENT_REFERENCE_CENTRE_X": reference.centre[0],
            "CP_GRADIENT_REFERENCE_CENTRE_Y": reference.centre[1],
            "CP_GRADIENT_ITL_RATIO": gradient.itl_ratio,
            "CP_GRADIENT_REFERENCE_CREATED": reference.created,
            "CP_GRADIENT_CREATED": gradient.created,
            "CP_GRADIENT_N_INVALID": n_invalid,
        }
