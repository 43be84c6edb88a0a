# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Flat verification: cp_verify's ``verifyFlat`` chain and the checks it lacks, as pipeline tasks.

- `CpVerifyFlatApplyTask` (label ``verifyFlatIsr``, in place of cp_verify's ISR) divides each
  post-ISR flat by the flat to verify and writes ``verifyFlatIsrExp`` with its predicted variance,
  and binned versions (``verifyFlatIsrExpBin8``, ``verifyFlatIsrExpBin64``);
- `CpVerifyFlatTask` (``verifyFlatDet``) measures and tests each amplifier and the detector
  (``verifyFlatDetStats``, ``verifyFlatDetResults``);
- `CpVerifyFlatExpMergeTask` (``verifyFlatExp``) tests each exposure (``verifyFlatExpStats``,
  ``verifyFlatExpResults``);
- `CpVerifyFlatRunMergeTask` (``verifyFlat``) adds the tests across exposures and the
  normalization's evidence, and writes the verdict of every detector and exposure
  (``verifyFlatStats``, ``verifyFlatResults``), which it also logs.

The statistics and tests are `lsst.cp.flatnorm.flat_verification`'s; the columns
`lsst.cp.flatnorm.verify_results`'.
"""

from __future__ import annotations

__all__ = [
    "CpVerifyFlatApplyConfig",
    "CpVerifyFlatApplyTask",
    "CpVerifyFlatConfig",
    "CpVerifyFlatExpMergeConfig",
    "CpVerifyFlatExpMergeTask",
    "CpVerifyFlatRunMergeConfig",
    "CpVerifyFlatRunMergeTask",
    "CpVerifyFlatTask",
]

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from astropy.table import Table

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.images import Image, Mask, MaskedImage, MaskPlane, MaskSchema

from .calib_output import pixel_box
from .flat_connections import CameraConfig, CameraConnections, as_detector_model, post_isr_flat_input
from .flat_verification import (
    STATISTICS,
    Thresholds,
    amp_offsets,
    amplifier_tests,
    correct_by_flat,
    detector_tests,
    exposure_tests,
    keyword_statistics,
    measure_amplifiers,
    predicted_variance,
    run_verdicts,
)
from .flat_change import change_tests, flat_change
from .focal_plane_binning import bin_detector
from .verify_results import (
    Verdicts,
    column,
    distribution_column,
    distribution_key,
    failure_list,
    summary_lines,
    verdict_table,
    verify_column,
)

_IMAGE_DIMENSIONS = ("instrument", "exposure", "detector")
_FLAT_INPUTS_KEY = "VERIFY_FLAT_N_FLAT_INPUTS"
"""Metadata key of ``verifyFlatIsrExp``: the number of the flat's inputs if the image is one of
them, else 0 (the noise prediction depends on it)."""


def _image_output(name: str, doc: str) -> cT.Output:
    return cT.Output(name=name, doc=doc, storageClass="MaskedImageV2", dimensions=_IMAGE_DIMENSIONS)


def _flat_input(name: str, doc: str, minimum: int = 1) -> cT.PrerequisiteInput:
    """A flat found for each exposure as ISR finds it (a certified flat valid at the exposure's time,
    or the flat of a RUN collection)."""
    return cT.PrerequisiteInput(name=name, doc=doc, storageClass="MaskedImageV2",
                                dimensions=("instrument", "detector", "physical_filter"), isCalibration=True,
                                minimum=minimum)


class CpVerifyFlatApplyConnections(pipeBase.PipelineTaskConnections, dimensions=_IMAGE_DIMENSIONS):
    inputExp = post_isr_flat_input("Post-ISR flats to correct with the flat under test.")
    flat = _flat_input("flat", "The flat to verify.")
    outputExposure = _image_output("verifyFlatIsrExp", "The post-ISR flat divided by the flat, with the "
                                   "variance predicted from both (cp_verify's ISR output).")
    outputBin1Exposure = _image_output("verifyFlatIsrExpBin8", "verifyFlatIsrExp binned by binFactor1.")
    outputBin2Exposure = _image_output("verifyFlatIsrExpBin64", "verifyFlatIsrExp binned by binFactor2.")

    def __init__(self, *, config: CpVerifyFlatApplyConfig):
        super().__init__(config=config)
        if not config.doBinnedExposures:
            del self.outputBin1Exposure
            del self.outputBin2Exposure


class CpVerifyFlatApplyConfig(pipeBase.PipelineTaskConfig,
                              pipelineConnections=CpVerifyFlatApplyConnections):
    doBinnedExposures: pexConfig.Field[bool] = pexConfig.Field(
        dtype=bool, default=True, doc="Write the binned corrected images (cp_verify's ISR does).")
    binFactor1: pexConfig.RangeField = pexConfig.RangeField(
        dtype=int, default=8, min=1, doc="First binning factor (pixels).")
    binFactor2: pexConfig.RangeField = pexConfig.RangeField(
        dtype=int, default=64, min=1, doc="Second binning factor (pixels).")


class CpVerifyFlatApplyTask(pipeBase.PipelineTask):
    """Divide a post-ISR flat by the flat under test, as ISR's flat correction does.

    The corrected image keeps the input's level (the flats average about 1); its variance plane is
    the variance predicted from the input's and the flat's
    (`~lsst.cp.flatnorm.flat_verification.predicted_variance`, which knows whether the image is one
    of the flat's inputs from the flat's ``CP_COMBINE_INPUT_<i>`` metadata); its mask is the
    input's, with ``NO_DATA`` where the flat is not positive and ``BAD`` where the flat is ``BAD``.
    The flat's ``LSST CALIB FLAT <amp> DISTRIBUTION <level>-PCT`` metadata is copied, as cp_verify's
    ISR does with ``doCopyCalibDistributionStatistics``.
    """

    ConfigClass = CpVerifyFlatApplyConfig
    _DefaultName = "verifyFlatIsr"
    config: CpVerifyFlatApplyConfig

    def runQuantum(self, butlerQC: pipeBase.QuantumContext, inputRefs: pipeBase.InputQuantizedConnection,
                   outputRefs: pipeBase.OutputQuantizedConnection) -> None:
        inputs = butlerQC.get(inputRefs)
        inputs["exposureId"] = int(outputRefs.outputExposure.dataId["exposure"])
        butlerQC.put(self.run(**inputs), outputRefs)

    def run(self, inputExp: MaskedImage, flat: MaskedImage, exposureId: int) -> pipeBase.Struct:
        """Correct one image.

        Parameters
        ----------
        inputExp : `lsst.images.MaskedImage`
            Post-ISR flat.
        flat : `lsst.images.MaskedImage`
            The flat under test, of the same detector and box.
        exposureId : `int`
            The image's exposure.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``outputExposure`` and, with ``doBinnedExposures``, ``outputBin1Exposure`` and
            ``outputBin2Exposure`` (`lsst.images.MaskedImage`).

        Raises
        ------
        ValueError
            Raised if the image and the flat have different boxes.
        """
        if inputExp.bbox != flat.bbox:
            raise ValueError(f"Exposure {exposureId}: the image's box {inputExp.bbox} differs from the "
                             f"flat's {flat.bbox}.")
        flat_array = flat.image.array
        corrected, usable = correct_by_flat(inputExp.image.array, flat_array)
        inputs = _flat_inputs(flat.metadata)
        n_inputs = len(inputs) if exposureId in inputs else 0
        variance = predicted_variance(inputExp.variance.array, flat_array, flat.variance.array, corrected,
                                      n_inputs or None)
        mask = _corrected_mask(inputExp.mask, flat.mask, usable)
        metadata: dict[str, int | float | str | bool | None] = {
            key: value for key, value in flat.metadata.items()
            if "DISTRIBUTION" in key and isinstance(value, float)
        }
        metadata[_FLAT_INPUTS_KEY] = n_inputs
        box = inputExp.bbox
        output = MaskedImage(Image(corrected.astype(np.float32), bbox=box), mask=mask,
                             variance=Image(variance.astype(np.float32), bbox=box), metadata=metadata)
        result = pipeBase.Struct(outputExposure=output)
        if self.config.doBinnedExposures:
            result.outputBin1Exposure = _binned(corrected, variance, self.config.binFactor1)
            result.outputBin2Exposure = _binned(corrected, variance, self.config.binFactor2)
        return result


def _flat_inputs(metadata: Mapping[str, Any]) -> set[int]:
    """The exposures the combine averaged into a flat (its ``CP_COMBINE_INPUT_<i>`` metadata)."""
    return {int(value) for key, value in metadata.items() if key.startswith("CP_COMBINE_INPUT_")}


def _corrected_mask(image_mask: Mask, flat_mask: Mask, usable: np.ndarray) -> Mask:
    """The image's mask with NO_DATA where the flat is unusable and BAD where the flat is BAD."""
    names = list(image_mask.schema.names)
    extra = [MaskPlane(name, doc) for name, doc in (("NO_DATA", "The flat is not positive."),
                                                    ("BAD", "Bad pixel of the flat.")) if name not in names]
    schema = MaskSchema([*image_mask.schema, *extra]) if extra else image_mask.schema
    mask = Mask(schema=schema, bbox=image_mask.bbox)
    for name in names:
        mask.set(name, image_mask.get(name))
    mask.set("NO_DATA", ~usable)
    if "BAD" in flat_mask.schema.names:
        mask.set("BAD", flat_mask.get("BAD"))
    return mask


def _binned(corrected: np.ndarray, variance: np.ndarray, factor: int) -> MaskedImage:
    """Bin a corrected image: the mean of each bin's usable pixels, their variance over their count,
    and NO_DATA where a bin has none."""
    shape = (corrected.shape[0] // factor, corrected.shape[1] // factor)
    _, _, means, counts = bin_detector(corrected, None, factor, 0)
    _, _, variances, _ = bin_detector(variance, ~np.isfinite(corrected), factor, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        binned_variance = np.where(counts > 0, variances / counts, np.nan)
    mask = Mask(schema=MaskSchema([MaskPlane("NO_DATA", "No usable pixel in the bin.")]), shape=shape)
    mask.set("NO_DATA", (counts == 0).reshape(shape))
    return MaskedImage(Image(means.reshape(shape).astype(np.float32)), mask=mask,
                       variance=Image(binned_variance.reshape(shape).astype(np.float32)),
                       metadata={"BINNING": factor})


def _stats_output(name: str, doc: str, dimensions: Sequence[str]) -> cT.Output:
    return cT.Output(name=name, doc=doc, storageClass="StructuredDataDict", dimensions=dimensions)


def _table_output(name: str, doc: str, dimensions: Sequence[str]) -> cT.Output:
    return cT.Output(name=name, doc=doc, storageClass="ArrowAstropy", dimensions=dimensions)


def _threshold_field(default: float, doc: str) -> pexConfig.Field[float]:
    """A test's threshold; its default is `~lsst.cp.flatnorm.flat_verification.Thresholds`'."""
    return pexConfig.Field(dtype=float, default=default, doc=doc)


def _informational_tests_field(default: Sequence[str], what: str) -> pexConfig.ListField[str]:
    return pexConfig.ListField(
        dtype=str, default=list(default),
        doc=f"Tests computed and written but not counted in SUCCESS: {what}.",
    )


class CpVerifyFlatConnections(CameraConnections, dimensions=_IMAGE_DIMENSIONS):
    inputExp = cT.Input(name="verifyFlatIsrExp", doc="Flat-corrected post-ISR flat.",
                        storageClass="MaskedImageV2", dimensions=_IMAGE_DIMENSIONS)
    outputStats = _stats_output("verifyFlatDetStats", "Amplifier and detector statistics and tests.",
                                _IMAGE_DIMENSIONS)
    outputResults = _table_output("verifyFlatDetResults", "One row per amplifier and one for the detector.",
                                  _IMAGE_DIMENSIONS)
    flat = _flat_input("flat", "The flat to verify, for its change since the previous flat.")
    previousFlat = _flat_input(
        "previousFlat",
        "The previous certified flat of the filter, under this dataset type in the input collections; the "
        "change tests are not applicable (not failed) without it.",
        minimum=0,
    )

    def __init__(self, *, config: CpVerifyFlatConfig):
        super().__init__(config=config)
        if not config.doChange:
            del self.flat
            del self.previousFlat


class CpVerifyFlatConfig(CameraConfig, pipeBase.PipelineTaskConfig,
                         pipelineConnections=CpVerifyFlatConnections):
    maskNameList: pexConfig.ListField[str] = pexConfig.ListField(
        dtype=str, default=["DETECTED", "BAD", "NO_DATA", "SAT"],
        doc="Mask planes whose pixels the statistics leave out (cp_verify's three, and SAT: a saturated "
            "pixel says nothing of the response; saturation is tested on its own).",
    )
    numSigmaClip: pexConfig.Field[float] = pexConfig.Field(
        dtype=float, default=5.0, doc="Clipping threshold (sigma) of the clipped statistics.")
    clipMaxIter: pexConfig.Field[int] = pexConfig.Field(
        dtype=int, default=3, doc="Clipping passes of the clipped statistics.")
    imageStatKeywords: pexConfig.DictField[str, str] = pexConfig.DictField(
        keytype=str, itemtype=str, default={"MEAN": "MEANCLIP", "NOISE": "STDEVCLIP"},
        doc=f"Amplifier statistics: output name to statistic ({', '.join(STATISTICS)}); MEAN and NOISE "
            "are tested.",
    )
    detectorStatKeywords: pexConfig.DictField[str, str] = pexConfig.DictField(
        keytype=str, itemtype=str, default={"MEAN": "MEAN", "SCATTER": "STDEV"},
        doc="Detector statistics of the amplifier means: output name to statistic; MEAN and SCATTER are "
            "tested.",
    )
    stageName: pexConfig.Field[str] = pexConfig.Field(
        dtype=str, default="FLAT", doc="Stage of the columns (cp_verify's; only FLAT is written).")
    useIsrStatistics: pexConfig.Field[bool] = pexConfig.Field(
        dtype=bool, default=True,
        doc="Copy the flat's percentiles (FLAT_FLAT_DIST_<level>_PCT) from verifyFlatIsrExp's metadata.")
    expectedDistributionLevels: pexConfig.ListField[float] = pexConfig.ListField(
        dtype=float, default=[0, 5, 16, 50, 84, 95, 100],
        doc="Percentile levels expected in the flat's metadata (missing ones are NaN).",
    )
    gain: pexConfig.Field[float] = pexConfig.Field(
        dtype=float, default=1.0,
        doc="Electrons per unit of the post-ISR images, for cp_verify's noise test (in electrons): 1 for "
            "images in electrons, as cp_pipe's ISR writes them (doApplyGains) and this package's "
            "simulated and ingested flats are.",
    )
    maxNoiseRatio: pexConfig.Field[float] = _threshold_field(
        Thresholds.max_noise_ratio,
        "Largest amplifier NOISE / NOISE_PREDICTED (test NOISE_PREDICTED).")
    maxAmpOffset: pexConfig.Field[float] = _threshold_field(
        Thresholds.max_amp_offset,
        "Largest absolute value of amplifier MEAN / median amplifier MEAN - 1 (AMP_OFFSET).")
    maxDetectorScatter: pexConfig.Field[float] = _threshold_field(
        Thresholds.max_detector_scatter,
        "Largest detector SCATTER / MEAN (cp_verify's SCATTER).")
    doChange: pexConfig.Field[bool] = pexConfig.Field(
        dtype=bool, default=True,
        doc="Test the change of the flat since the previous flat (previousFlat), where there is one.")
    changeBinFactor: pexConfig.RangeField = pexConfig.RangeField(
        dtype=int, default=8, min=1, doc="Bin side (pixels) of the ratio of the flat to the previous flat.")
    changeSmoothBins: pexConfig.RangeField = pexConfig.RangeField(
        dtype=int, default=5, min=3,
        doc="Side (bins) of the median filter giving the large-scale ratio of the flat to the previous "
            "flat; a feature must be smaller than half of it.")
    maxChangeStep: pexConfig.Field[float] = _threshold_field(
        Thresholds.max_change_step,
        "Largest absolute value of an amplifier's level of flat / previous flat over the "
        "detector's, minus 1 (CHANGE_AMP_STEP).")
    maxChangeLargeScale: pexConfig.Field[float] = _threshold_field(
        Thresholds.max_change_large_scale,
        "Largest absolute value of smoothed flat / previous flat - 1, the amplifiers levelled "
        "(CHANGE_LARGE_SCALE).")
    maxChangeFeature: pexConfig.Field[float] = _threshold_field(
        Thresholds.max_change_feature,
        "Largest departure of a bin of flat / previous flat from its smoothed surroundings "
        "(CHANGE_FEATURE).")
    informationalTests: pexConfig.ListField[str] = _informational_tests_field(
        ["NOISE"], "cp_verify's NOISE <= sqrt(MEAN), which images independent of the flat fail by "
        "Poisson and read noise alone"
    )

    def validate(self) -> None:
        super().validate()
        tested = {"imageStatKeywords": ("MEAN", "NOISE"), "detectorStatKeywords": ("MEAN", "SCATTER")}
        for field, needed in tested.items():
            missing = [name for name in needed if name not in getattr(self, field)]
            if missing:
                raise pexConfig.FieldValidationError(getattr(type(self), field), self,
                                                     f"Missing the tested statistics {missing}.")


class CpVerifyFlatTask(pipeBase.PipelineTask):
    """Measure and test the amplifiers and the detector of one flat-corrected image."""

    ConfigClass = CpVerifyFlatConfig
    _DefaultName = "verifyFlatDet"
    config: CpVerifyFlatConfig

    def runQuantum(self, butlerQC: pipeBase.QuantumContext, inputRefs: pipeBase.InputQuantizedConnection,
                   outputRefs: pipeBase.OutputQuantizedConnection) -> None:
        inputs = butlerQC.get(inputRefs)
        data_id = outputRefs.outputStats.dataId
        inputs["dimensions"] = {name: data_id[name] for name in _IMAGE_DIMENSIONS}
        butlerQC.put(self.run(**inputs), outputRefs)

    def thresholds(self) -> Thresholds:
        """The thresholds of this config."""
        config = self.config
        return Thresholds(max_noise_ratio=config.maxNoiseRatio, max_amp_offset=config.maxAmpOffset,
                          max_detector_scatter=config.maxDetectorScatter,
                          max_change_step=config.maxChangeStep,
                          max_change_large_scale=config.maxChangeLargeScale,
                          max_change_feature=config.maxChangeFeature)

    def run(self, inputExp: MaskedImage, camera: Any, dimensions: Mapping[str, Any],
            flat: MaskedImage | None = None, previousFlat: MaskedImage | None = None) -> pipeBase.Struct:
        """Measure and test one image.

        Parameters
        ----------
        inputExp : `lsst.images.MaskedImage`
            Flat-corrected image (``verifyFlatIsrExp``).
        camera : camera
            ``camera[detector]`` iterates over amplifiers with ``getName()`` and ``getBBox()``.
        dimensions : `~collections.abc.Mapping`
            ``instrument``, ``exposure`` and ``detector`` of the image.
        flat, previousFlat : `lsst.images.MaskedImage`, optional
            The flat under test and the previous flat of its filter; the change tests are not
            applicable without both.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``outputStats`` (`dict`: ``AMP``, ``DET``, ``VERIFY``, ``FAILURES``, ``SUCCESS``, and
            ``CHANGE``: ``APPLICABLE``, ``FAILURES`` and ``FEATURES``, kept out of ``FAILURES``
            because they are the flat's, not the exposure's) and
            ``outputResults`` (`astropy.table.Table`, `lsst.cp.flatnorm.verify_results`).
        """
        config = self.config
        detector = as_detector_model(camera, int(dimensions["detector"]))
        frame = inputExp.bbox
        regions = [_local_region(amp.getBBox(), frame) for amp in detector]
        names = [amp.getName() for amp in detector]
        mask = inputExp.mask
        planes = [name for name in config.maskNameList if name in mask.schema.names]
        good = (~np.any(mask.array & mask.schema.bitmask(*planes), axis=-1) if planes
                else np.ones(frame.shape, bool))
        saturated = mask.get("SAT") if "SAT" in mask.schema.names else np.zeros(frame.shape, bool)
        amps = measure_amplifiers(inputExp.image.array, inputExp.variance.array, good, saturated, regions,
                                  config.imageStatKeywords, config.numSigmaClip, config.clipMaxIter)
        for amp, offset in zip(amps, amp_offsets([amp["MEAN"] for amp in amps])):
            amp["AMP_OFFSET"] = float(offset)
        means = np.array([amp["MEAN"] for amp in amps])
        det = keyword_statistics(means[np.isfinite(means)], config.detectorStatKeywords, config.numSigmaClip,
                                 config.clipMaxIter)
        det["NOISE"] = float(np.nanmedian([amp["NOISE"] for amp in amps]))
        det["SATURATED_FRACTION"] = float(saturated.mean())
        thresholds = self.thresholds()
        amp_verify = {name: amplifier_tests(amp, amp["AMP_OFFSET"], config.gain, thresholds)
                      for name, amp in zip(names, amps)}
        det_verify = detector_tests(det["MEAN"], det["SCATTER"], thresholds)
        failures = [failure for name, tests in amp_verify.items()
                    for failure in failure_list(self._counted(tests), f"{name} ")]
        failures += failure_list(det_verify)
        change = self._change(flat, previousFlat, regions, names, frame, amps, det, amp_verify, det_verify)
        for tests in (*amp_verify.values(), det_verify):
            tests["SUCCESS"] = not failure_list(self._counted(tests))
        stats: dict[str, Any] = {"AMP": dict(zip(names, amps)), "DET": det,
                                 "VERIFY": {"AMP": amp_verify, "DET": det_verify}, "CHANGE": change,
                                 "FAILURES": failures, "SUCCESS": not failures and not change["FAILURES"]}
        distributions = self._distributions(inputExp.metadata, names)
        return pipeBase.Struct(outputStats=stats,
                               outputResults=_detector_table(stats, dimensions, distributions))

    def _change(self, flat: MaskedImage | None, previous: MaskedImage | None,
                regions: Sequence[tuple[slice, slice]], names: Sequence[str], frame: Any,
                amps: Sequence[dict[str, float]], det: dict[str, float],
                amp_verify: Mapping[str, dict[str, bool]], det_verify: dict[str, bool]) -> dict[str, Any]:
        """Measure and test the flat's change since the previous flat, adding its statistics and tests
        to the amplifiers' and the detector's; return its ``APPLICABLE``, ``FAILURES``, ``FEATURES``."""
        if flat is None or previous is None:
            return {"APPLICABLE": False, "FAILURES": [], "FEATURES": []}
        if flat.bbox != previous.bbox:
            raise ValueError(f"The flat's box {flat.bbox} differs from the previous flat's {previous.bbox}.")
        config, thresholds = self.config, self.thresholds()
        usable = ~(_bad(flat) | _bad(previous))
        change = flat_change(flat.image.array, previous.image.array, usable, regions, config.changeBinFactor,
                             config.changeSmoothBins, thresholds.max_change_feature)
        amp_tests, det_tests = change_tests(change, names, thresholds)
        for amp, name, step in zip(amps, names, change.amp_steps):
            amp["CHANGE_AMP_STEP"] = step
            amp_verify[name].update(amp_tests[name])
        det.update(CHANGE_LARGE_SCALE=change.large_scale, CHANGE_NOISE=change.noise,
                   CHANGE_N_FEATURES=len(change.features))
        det_verify.update(det_tests)
        features = [{"X": feature.x + frame.x.start, "Y": feature.y + frame.y.start,
                     "AMPLITUDE": feature.amplitude, "N_BINS": feature.n_bins} for feature in change.features]
        failures = [f"{name} CHANGE_AMP_STEP ({step:+.1%})" for name, step in zip(names, change.amp_steps)
                    if not amp_tests[name]["CHANGE_AMP_STEP"]]
        if not det_tests["CHANGE_LARGE_SCALE"]:
            failures.append(f"CHANGE_LARGE_SCALE ({change.large_scale:.1%})")
        if features:
            where = ", ".join(f"x={f['X']:.0f} y={f['Y']:.0f} {f['AMPLITUDE']:+.1%}" for f in features[:3])
            more = ", ..." if len(features) > 3 else ""
            failures.append(f"CHANGE_FEATURE ({len(features)}: {where}{more})")
        return {"APPLICABLE": True, "FAILURES": failures, "FEATURES": features}

    def _counted(self, tests: Mapping[str, bool]) -> dict[str, bool]:
        return {name: passed for name, passed in tests.items()
                if name not in self.config.informationalTests and name != "SUCCESS"}

    def _distributions(self, metadata: Mapping[str, Any],
                       names: Sequence[str]) -> dict[str, dict[str, float]]:
        if not self.config.useIsrStatistics:
            return {}
        levels = self.config.expectedDistributionLevels
        return {name: {distribution_column(level): float(metadata.get(distribution_key(name, level), np.nan))
                       for level in levels} for name in names}


def _bad(flat: MaskedImage) -> np.ndarray:
    """The flat's BAD pixels (none if it has no BAD plane)."""
    return flat.mask.get("BAD") if "BAD" in flat.mask.schema.names else np.zeros(flat.image.array.shape, bool)


def _local_region(box: Any, frame: Any) -> tuple[slice, slice]:
    """Array slices of an amplifier's box inside an image whose box is ``frame``."""
    amp_box = pixel_box(box)
    y0, x0 = amp_box.y.start - frame.y.start, amp_box.x.start - frame.x.start
    return slice(y0, y0 + amp_box.y.size), slice(x0, x0 + amp_box.x.size)


def _detector_table(stats: Mapping[str, Any], dimensions: Mapping[str, Any],
                    distributions: Mapping[str, Mapping[str, float]]) -> Table:
    """cp_verify's rows: one per amplifier, then the detector's."""
    base = {name: dimensions[name] for name in _IMAGE_DIMENSIONS}
    rows = []
    for name, amp in stats["AMP"].items():
        row = dict(base, amplifier=name)
        row.update({column(key): value for key, value in amp.items()})
        row.update({verify_column(key): value for key, value in stats["VERIFY"]["AMP"][name].items()})
        row.update(distributions.get(name, {}))
        rows.append(row)
    det_row = dict(base, amplifier="")
    det_row.update({column(key, "DET"): value for key, value in stats["DET"].items()})
    det_row.update({verify_column(key, "DET"): value for key, value in stats["VERIFY"]["DET"].items()})
    all_rows = (*rows, det_row)
    names = list(dict.fromkeys(key for row in all_rows for key in row))
    # A column absent from a row (the detector's in an amplifier row...) is NaN, or False for a test.
    return Table(rows=[[row.get(name, False if "_VERIFY_" in name else np.nan) for name in names]
                       for row in all_rows], names=names)


class CpVerifyFlatExpMergeConnections(pipeBase.PipelineTaskConnections,
                                      dimensions=("instrument", "exposure", "physical_filter")):
    inputStats = cT.Input(name="verifyFlatDetStats", doc="Statistics of each detector.",
                          storageClass="StructuredDataDict", dimensions=_IMAGE_DIMENSIONS, multiple=True)
    outputStats = _stats_output("verifyFlatExpStats", "Exposure statistics and tests, with its detectors'.",
                                ("instrument", "exposure", "physical_filter"))
    outputResults = _table_output("verifyFlatExpResults", "One row: the exposure's statistics and tests.",
                                  ("instrument", "exposure", "physical_filter"))


class CpVerifyFlatExpMergeConfig(pipeBase.PipelineTaskConfig,
                                 pipelineConnections=CpVerifyFlatExpMergeConnections):
    maxExposureScatter: pexConfig.Field[float] = _threshold_field(
        Thresholds.max_exposure_scatter,
        "Largest scatter of the detector means: absolute for cp_verify's SCATTER, relative to their "
        "mean for REL_SCATTER.",
    )
    minSignalToNoise: pexConfig.Field[float] = _threshold_field(
        Thresholds.min_signal_to_noise,
        "Smallest median detector MEAN / NOISE (LOW_SIGNAL_TO_NOISE).")
    lampOffSignalToNoise: pexConfig.Field[float] = _threshold_field(
        Thresholds.lamp_off_signal_to_noise,
        "Below this median detector MEAN / NOISE the lamp was off (LAMP_OFF).")
    maxSaturatedFraction: pexConfig.Field[float] = _threshold_field(
        Thresholds.max_saturated_fraction,
        "Largest saturated fraction of a detector (SATURATED).")
    informationalTests: pexConfig.ListField[str] = _informational_tests_field(
        ["SCATTER"], "cp_verify's SCATTER <= 0.05 of the absolute scatter, which depends on the flux"
    )


class CpVerifyFlatExpMergeTask(pipeBase.PipelineTask):
    """Test one exposure from its detectors' statistics."""

    ConfigClass = CpVerifyFlatExpMergeConfig
    _DefaultName = "verifyFlatExp"
    config: CpVerifyFlatExpMergeConfig

    def runQuantum(self, butlerQC: pipeBase.QuantumContext, inputRefs: pipeBase.InputQuantizedConnection,
                   outputRefs: pipeBase.OutputQuantizedConnection) -> None:
        inputs = butlerQC.get(inputRefs)
        detectors = [int(ref.dataId["detector"]) for ref in inputRefs.inputStats]
        data_id = outputRefs.outputStats.dataId
        dimensions = {name: data_id[name] for name in ("instrument", "exposure", "physical_filter")}
        butlerQC.put(self.run(dict(zip(detectors, inputs["inputStats"])), dimensions), outputRefs)

    def run(self, inputStats: Mapping[int, Mapping[str, Any]],
            dimensions: Mapping[str, Any]) -> pipeBase.Struct:
        """Test one exposure.

        Parameters
        ----------
        inputStats : `~collections.abc.Mapping` [`int`, `dict`]
            ``verifyFlatDetStats`` of each detector.
        dimensions : `~collections.abc.Mapping`
            ``instrument``, ``exposure`` and ``physical_filter``.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``outputStats`` (`dict`: ``EXP``, ``VERIFY``, ``FAILURES``, ``SUCCESS`` and the detectors'
            statistics under ``DETECTORS``) and ``outputResults`` (one-row `astropy.table.Table`).
        """
        config = self.config
        thresholds = Thresholds(max_exposure_scatter=config.maxExposureScatter,
                                min_signal_to_noise=config.minSignalToNoise,
                                lamp_off_signal_to_noise=config.lampOffSignalToNoise,
                                max_saturated_fraction=config.maxSaturatedFraction)
        detectors = sorted(inputStats)
        statistics, tests = exposure_tests(
            [inputStats[det]["DET"]["MEAN"] for det in detectors],
            [inputStats[det]["DET"]["NOISE"] for det in detectors],
            [inputStats[det]["DET"]["SATURATED_FRACTION"] for det in detectors],
            thresholds,
        )
        failures = failure_list({name: passed for name, passed in tests.items()
                                 if name not in config.informationalTests})
        tests["SUCCESS"] = not failures
        stats = {"EXP": statistics, "VERIFY": {"EXP": tests}, "FAILURES": failures, "SUCCESS": not failures,
                 "DETECTORS": {det: dict(inputStats[det]) for det in detectors}}
        row = dict(dimensions)
        row.update({column(key): value for key, value in statistics.items()})
        row.update({verify_column(key): value for key, value in tests.items()})
        return pipeBase.Struct(outputStats=stats, outputResults=Table(rows=[row]))


class CpVerifyFlatRunMergeConnections(pipeBase.PipelineTaskConnections,
                                      dimensions=("instrument", "physical_filter")):
    inputStats = cT.Input(name="verifyFlatExpStats", doc="Statistics of each exposure.",
                          storageClass="StructuredDataDict", dimensions=("instrument", "exposure"),
                          multiple=True)
    scaleTable = cT.PrerequisiteInput(
        name="cpFlatNormalizeScaleTable",
        doc="The normalization's table of the flat (log residuals, flags, uncertainties); its tests are "
            "skipped, with a log line, where the input collections have none.",
        storageClass="ArrowAstropy", dimensions=("instrument", "physical_filter"), minimum=0,
    )
    outputStats = _stats_output("verifyFlatStats", "The run's verdicts: SUCCESS, FAILURES, DETECTORS and "
                                "EXPOSURES.", ("instrument", "physical_filter"))
    outputResults = _table_output("verifyFlatResults", "Verdict of each detector and exposure.",
                                  ("instrument", "physical_filter"))


class CpVerifyFlatRunMergeConfig(pipeBase.PipelineTaskConfig,
                                 pipelineConnections=CpVerifyFlatRunMergeConnections):
    maxPatternRms: pexConfig.Field[float] = _threshold_field(
        Thresholds.max_pattern_rms,
        "Largest rms of an exposure's own large-scale pattern (PATTERN).")
    maxNormalizationPull: pexConfig.Field[float] = _threshold_field(
        Thresholds.max_pull,
        "Largest absolute log residual over its uncertainty of a used normalization entry of a "
        "detector or an exposure (NORMALIZATION_PULL).",
    )
    maxRejectedFraction: pexConfig.Field[float] = _threshold_field(
        Thresholds.max_rejected_fraction,
        "Largest fraction of a detector's or an exposure's normalization entries rejected or invalid "
        "(NORMALIZATION_REJECTED).",
    )


class CpVerifyFlatRunMergeTask(pipeBase.PipelineTask):
    """Test across exposures, add the normalization's evidence, and write and log the verdicts."""

    ConfigClass = CpVerifyFlatRunMergeConfig
    _DefaultName = "verifyFlat"
    config: CpVerifyFlatRunMergeConfig

    def runQuantum(self, butlerQC: pipeBase.QuantumContext, inputRefs: pipeBase.InputQuantizedConnection,
                   outputRefs: pipeBase.OutputQuantizedConnection) -> None:
        inputs = butlerQC.get(inputRefs)
        exposures = [int(ref.dataId["exposure"]) for ref in inputRefs.inputStats]
        data_id = outputRefs.outputStats.dataId
        title = f"{data_id['instrument']} {data_id['physical_filter']}"
        butlerQC.put(self.run(dict(zip(exposures, inputs["inputStats"])), inputs.get("scaleTable"),
                              title), outputRefs)

    def run(self, inputStats: Mapping[int, Mapping[str, Any]], scaleTable: Table | None = None,
            title: str = "the flat") -> pipeBase.Struct:
        """Reach the verdicts.

        Parameters
        ----------
        inputStats : `~collections.abc.Mapping` [`int`, `dict`]
            ``verifyFlatExpStats`` of each exposure.
        scaleTable : `astropy.table.Table`, optional
            The normalization's scale table; its tests are skipped if `None`.
        title : `str`, optional
            What is verified, for the log.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``outputStats`` (`dict`) and ``outputResults`` (`astropy.table.Table`), see
            `lsst.cp.flatnorm.verify_results`.
        """
        if scaleTable is None:
            self.log.info("No normalization scale table in the input collections: its tests are skipped.")
        thresholds = Thresholds(max_pattern_rms=self.config.maxPatternRms,
                                max_pull=self.config.maxNormalizationPull,
                                max_rejected_fraction=self.config.maxRejectedFraction)
        detectors, exposures, extra = run_verdicts(inputStats, scaleTable, thresholds)
        if not any(extra["CHANGE_APPLICABLE"].values()):
            self.log.info("No previous flat (previousFlat) in the input collections: the change tests are "
                          "not applicable.")
        verdicts = Verdicts.from_failures(detectors, exposures)
        for line in summary_lines(verdicts, title):
            self.log.info("%s", line)
        stats = {"SUCCESS": verdicts.success, "FAILURES": verdicts.failure_strings(),
                 "DETECTORS": detectors, "EXPOSURES": exposures, **extra}
        return pipeBase.Struct(outputStats=stats, outputResults=verdict_table(verdicts))
