# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""CpFlatNormalizationTask: butler I/O around the scale solvers.

The task gathers the flat statistics of every (exposure, detector) of one physical filter,
solves ``B[row, exp] = G[row] * E[exp]`` with `lsst.cp.flatnorm.scale_solver` (with
``colourTerms > 0``, times ``exp(sum_k u_k[row] v_k[exp])`` with `lsst.cp.flatnorm.colour_terms`),
computes the scales' uncertainties (`lsst.cp.flatnorm.scale_uncertainty`), and writes the scales
in cp_pipe's dictionary layout (for the combine step) plus a table with one row per measured
entry (for people).
"""

from __future__ import annotations

__all__ = [
    "CpFlatNormalizationConfig",
    "CpFlatNormalizationConnections",
    "CpFlatNormalizationTask",
    "amplifier_names",
    "scale_table_name",
]

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
from astropy.table import Table

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.daf.butler import DataCoordinate, DatasetRef
from lsst.utils.logging import getLogger

from .colour_terms import DEFAULT_MAX_SWEEPS, DEFAULT_TOLERANCE, ColourFit, ColourSolution, fit_colour_terms
from .flat_connections import (
    CameraConfig,
    CameraConnections,
    camera_prerequisite,
)
from .flat_statistics import StatisticsMatrix, gather_statistics
from .scale_dictionary import NO_VALID_ENTRY, build_scale_dictionary
from .scale_solver import DisconnectedDataError, EmptyColumnError, EntryFlag, valid_entries
from .scale_uncertainty import ScaleUncertainties, scale_uncertainties


_FLAG_NAMES = np.array([flag.name for flag in sorted(EntryFlag)])
_MAX_ENTRY_WARNINGS = 100
"""Flagged entries of one kind warned about one by one; more are counted in one line."""
_MAX_VALUES_SHOWN = 10
"""Distinct down-selection field values a no-match warning lists."""


def scale_table_name(scales_name: str) -> str:
    """Return the default dataset type name of the scale table written beside ``scales_name``.

    cp_pipe names the scales ``<label>Scales`` (``cpFlatNormalizeScales``,
    ``cpFlatRedNormalizeScales``), so the table is ``<label>ScaleTable``; a name without the
    ``Scales`` suffix gets ``ScaleTable`` appended.  Two normalizations with different scale names
    thus never write the same table.

    Parameters
    ----------
    scales_name : `str`
        Dataset type name of the scales (``connections.outputScales``).

    Returns
    -------
    name : `str`
        ``cpFlatNormalizeScales`` gives ``cpFlatNormalizeScaleTable``.
    """
    return scales_name.removesuffix("Scales") + "ScaleTable"


class CpFlatNormalizationConnections(
    CameraConnections, dimensions=("instrument", "physical_filter")
):
    config: "CpFlatNormalizationConfig"

    inputMDs = cT.Input(
        name="cpFlatStatistics",
        doc="Flat statistics (DETECTOR_MEDIAN, DETECTOR_N, AMP_*_i) of each exposure and detector.",
        storageClass="TaskMetadata",
        dimensions=("instrument", "exposure", "detector"),
        multiple=True,
    )
    camera = camera_prerequisite("Camera geometry: the amplifiers of each detector.")
    outputScales = cT.Output(
        name="cpFlatNormalizeScales",
        doc="Scales in cp_pipe's layout: expScale[det][amp][exposure] and detScale[det] "
            "(detScale[det][amp] at AMP level).",
        storageClass="StructuredDataDict",
        dimensions=("instrument", "physical_filter"),
    )
    outputScaleTable = cT.Output(
        name="",
        doc="One row per measured (exposure, detector[, amplifier]): level, count, scales and their "
            "uncertainties, colour terms, model, log residual and flag (USED, INVALID, REJECTED).  Left "
            "empty, the name is derived from "
            "outputScales' (cpFlatNormalizeScales: cpFlatNormalizeScaleTable; see scale_table_name).",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "physical_filter"),
    )

    def __init__(self, *, config: CpFlatNormalizationConfig):
        super().__init__(config=config)
        if not config.connections.outputScaleTable:
            self.outputScaleTable = dataclasses.replace(
                self.outputScaleTable, name=scale_table_name(self.outputScales.name)
            )

    def adjustQuantum(
        self,
        inputs: dict[str, tuple[cT.BaseInput, Collection[DatasetRef]]],
        outputs: dict[str, tuple[cT.Output, Collection[DatasetRef]]],
        label: str,
        data_id: DataCoordinate,
    ) -> tuple[Mapping[str, tuple[cT.BaseInput, Collection[DatasetRef]]],
               Mapping[str, tuple[cT.Output, Collection[DatasetRef]]]]:
        """Keep only the exposures whose record field matches the down-selection value, ignoring case.

        When none matches, warn naming the task label and the data ID before raising `NoWorkFound`:
        the quantum graph builder logs `NoWorkFound` only at DEBUG, so otherwise a physical filter
        would get no scales without a word in the pipetask log.
        """
        if not self.config.doDownSelection:
            return super().adjustQuantum(inputs, outputs, label, data_id)
        connection, refs = inputs["inputMDs"]
        field, wanted = self.config.downSelectionField, self.config.downSelectionValue
        values = [_exposure_field(ref, field) for ref in refs]
        kept = [ref for ref, value in zip(refs, values) if _same_text(value, wanted)]
        if not kept:
            message = _no_match_message(label, data_id, field, wanted, values)
            getLogger(f"lsst.{label}").warning("%s", message)
            raise pipeBase.NoWorkFound(message)
        adjusted = {"inputMDs": (connection, kept)}
        inputs.update(adjusted)
        super().adjustQuantum(inputs, outputs, label, data_id)
        return adjusted, {}


def _exposure_field(ref: DatasetRef, field: str) -> str | None:
    """Return the exposure record's ``field`` as text, or `None` where the record has no value."""
    record = ref.dataId.records["exposure"] if ref.dataId.hasRecords() else None
    if record is None:
        raise RuntimeError(f"Down-selection needs exposure records, but {ref} has an unexpanded data ID.")
    try:
        value = getattr(record, field)
    except AttributeError:
        # "group" is "group_name" in dimension universes before version 6.
        raise KeyError(f"Exposure records have no field {field!r} (downSelectionField).") from None
    return None if value is None else str(value)


def _same_text(value: str | None, wanted: str) -> bool:
    """Compare as cp_pipe does, ignoring case; an exposure without a value matches nothing."""
    return value is not None and value.casefold() == wanted.casefold()


def _no_match_message(
    label: str, data_id: DataCoordinate, field: str, wanted: str, values: Sequence[str | None]
) -> str:
    """Say which quantum gets no work, what was wanted, and what the inputs' records have instead."""
    seen = sorted({repr(value) for value in values})
    shown = ", ".join(seen[:_MAX_VALUES_SHOWN])
    if len(seen) > _MAX_VALUES_SHOWN:
        shown += f" and {len(seen) - _MAX_VALUES_SHOWN} more"
    return (
        f"{label} {data_id}: no input exposure has {field} matching {wanted!r} (ignoring case); "
        f"the {len(values)} inputs have {shown}. No scales are written for this data ID."
    )


class CpFlatNormalizationConfig(
    pipeBase.PipelineTaskConfig, CameraConfig, pipelineConnections=CpFlatNormalizationConnections
):
    level = pexConfig.ChoiceField[str](
        dtype=str,
        doc="Which statistics make the rows of the background matrix.",
        default="DETECTOR",
        optional=False,
        allowed={
            "DETECTOR": "One row per detector (DETECTOR_MEDIAN, DETECTOR_N).",
            "AMP": "One row per amplifier (AMP_MEDIAN_i, AMP_N_i, placed by AMP_NAME_i).",
        },
    )
    scaleMaxIter = pexConfig.RangeField(
        dtype=int,
        doc="Maximum number of solve-and-reject rounds. Each round is an exact weighted least-squares "
            "solve; the rounds stop when the set of rejected entries no longer changes.",
        default=10,
        min=1,
    )
    outlierSigma = pexConfig.RangeField(
        dtype=float,
        doc="Reject entries whose log residual exceeds this many robust (MAD) sigmas of all log "
            "residuals; 0 disables rejection.",
        default=5.0,
        min=0.0,
    )
    outlierFloor = pexConfig.RangeField(
        dtype=float,
        doc="Never reject an entry whose absolute log residual is at or below this (0.005 = 0.5%), so that "
            "nearly separable data keep every entry however small the noise is.",
        default=0.005,
        min=0.0,
    )
    disconnectedPolicy = pexConfig.ChoiceField[str](
        dtype=str,
        doc="What to do when the detector-exposure data split into groups that share no detector "
            "and no exposure, so that their relative scale cannot be measured.",
        default="RAISE",
        allowed={
            "RAISE": "Fail, naming the groups.",
            "SEPARATE": "Solve each group with its own gauge, warn naming the groups, and record the "
                        "group of every entry in the table.",
        },
    )
    omitUnusedScales = pexConfig.Field[bool](
        dtype=bool,
        doc="Leave out of expScale[det][amp] the exposures whose entry covering that detector or "
            "amplifier was rejected as an outlier or invalid, so that the combine step (which skips "
            "inputs without a scale) does not combine a shadowed, saturated or dead region into the "
            "flat. False keeps cp_pipe's layout: every exposure for every amplifier.",
        default=False,
    )
    doDownSelection = pexConfig.Field[bool](
        dtype=bool,
        doc="Use only the exposures whose exposure record field downSelectionField matches "
            "downSelectionValue, ignoring case.  A data ID where none matches gets no scales, and a "
            "warning naming it when the quantum graph is built.",
        default=False,
    )
    downSelectionField = pexConfig.ChoiceField[str](
        dtype=str,
        doc="Exposure record field to select on; used only if doDownSelection is True.",
        default="observation_reason",
        optional=False,
        allowed={
            "observation_reason": "The exposure record's observation_reason.",
            "observation_type": "The exposure record's observation_type.",
            "science_program": "The exposure record's science_program.",
            "group": "The exposure record's group.",
        },
    )
    downSelectionValue = pexConfig.Field[str](
        dtype=str,
        doc="Value of downSelectionField to keep, compared ignoring case; must be set if "
            "doDownSelection is True.",
        default=None,
        optional=True,
    )
    colourTerms = pexConfig.RangeField(
        dtype=int,
        doc="Number K of colour terms: fit log B[row, exp] = g[row] + e[exp] + sum_k u_k[row] v_k[exp] "
            "(a row's colour response times the exposure's lamp colour) instead of the separable model, "
            "and write expScale[det][amp][exp] = E[exp] * exp(sum_k u_k[row] v_k[exp]), so that the combine "
            "puts every exposure on the reference colour (that of the mean exposure).  0 (default): the "
            "separable model, exactly as without this field.  With chooseColourTerms, the largest K tried.",
        default=0,
        min=0,
    )
    chooseColourTerms = pexConfig.Field[bool](
        dtype=bool,
        doc="Choose the number of colour terms in 0..colourTerms from the data, by held-out entries: "
            "5-fold cross-validation of the used entries; more terms are chosen only if they predict the "
            "held-out levels with a count-weighted mean square residual more than 5% lower.",
        default=False,
    )
    colourTolerance = pexConfig.RangeField(
        dtype=float,
        doc="The colour-term fit's alternating sweeps stop when no used entry's log model changes by "
            "more than this; a fit that does not within colourMaxSweeps is reported (log warning, "
            "COLOUR_CONVERGED in the table's metadata).",
        default=DEFAULT_TOLERANCE,
        min=0.0,
        inclusiveMin=False,
    )
    colourMaxSweeps = pexConfig.RangeField(
        dtype=int,
        doc="Most alternating sweeps of one colour-term fit (per solve-and-reject round).",
        default=DEFAULT_MAX_SWEEPS,
        min=1,
    )

    def validate(self) -> None:
        super().validate()
        if self.doDownSelection and not self.downSelectionValue:
            raise pexConfig.FieldValidationError(
                CpFlatNormalizationConfig.downSelectionValue, self,
                "downSelectionValue must be set when doDownSelection is True.",
            )


class CpFlatNormalizationTask(pipeBase.PipelineTask):
    """Rescale merged flat frames to remove unequal screen illumination.

    Solves ``B[row, exp] = G[row] * E[exp]`` for the exposure scales ``E`` (what the combine step
    divides each exposure by) and the detector or amplifier scales ``G`` (the relative response
    the final flat keeps), by exact count-weighted least squares in log space with outlier
    rejection; see `lsst.cp.flatnorm.scale_solver`.  With ``colourTerms`` the model has colour
    terms and the combine divides each entry by ``E * exp(sum_k u_k v_k)``; see
    `lsst.cp.flatnorm.colour_terms`.  The scales' 1-sigma uncertainties are in the table
    (`lsst.cp.flatnorm.scale_uncertainty`).
    """

    ConfigClass = CpFlatNormalizationConfig
    _DefaultName = "cpFlatNorm"
    config: CpFlatNormalizationConfig

    def runQuantum(
        self,
        butlerQC: pipeBase.QuantumContext,
        inputRefs: pipeBase.InputQuantizedConnection,
        outputRefs: pipeBase.OutputQuantizedConnection,
    ) -> None:
        inputs = butlerQC.get(inputRefs)
        inputs["inputDims"] = [dict(ref.dataId.required) for ref in inputRefs.inputMDs]
        outputs = self.run(**inputs)
        butlerQC.put(outputs, outputRefs)

    def run(
        self, inputMDs: Sequence[Any], inputDims: Sequence[Mapping[str, Any]], camera: Any
    ) -> pipeBase.Struct:
        """Normalize FLAT exposures to a consistent level.

        Parameters
        ----------
        inputMDs : `~collections.abc.Sequence`
            Flat statistics of each (exposure, detector): `lsst.pipe.base.TaskMetadata`,
            ``lsst.daf.base.PropertyList`` or any mapping with ``get(key)``.
        inputDims : `~collections.abc.Sequence` [`~collections.abc.Mapping`]
            Data ID of each statistics dataset, with ``exposure`` and ``detector`` keys.
        camera : `lsst.cp.flatnorm.camera_model.CameraModel` or `lsst.afw.cameraGeom.Camera`
            The camera; only its detectors' IDs and amplifier names are read (`amplifier_names`),
            so any camera that gives these will do, as for cp_pipe's task.

        Returns
        -------
        results : `lsst.pipe.base.Struct`
            ``outputScales`` (`dict`, cp_pipe's layout) and ``outputScaleTable``
            (`astropy.table.Table`).

        Raises
        ------
        TypeError
            Raised if ``camera`` is `None`, or its detectors give no ID or amplifier names (naming
            the detector), before anything is read.
        KeyError
            Raised if a data ID lacks exposure or detector, a statistic is missing (the message
            names the key and the data ID), or a detector is not in the camera (naming the data
            ID), before the solve.
        ValueError
            Raised if a statistic is not a number, or an amplifier key does not match the camera
            (naming the data ID and the key); if no exposure has a valid measurement, or the data
            split into unconnected groups and ``disconnectedPolicy`` is RAISE (the message names
            exposures and detectors).  An exposure with no valid measurement while others have
            some is excluded with a warning and flagged in ``exposureFlags``
            (`lsst.cp.flatnorm.scale_dictionary`).
        """
        if camera is None:
            raise TypeError("CpFlatNormalizationTask.run: camera is None; pass the camera (a CameraModel, or "
                            "an afw Camera) whose detectors and amplifiers the statistics are of.")
        amplifiers = amplifier_names(camera)
        _check_detectors_in_camera(inputDims, amplifiers, _camera_name(camera))
        named = {detector: [_Amplifier(name) for name in names] for detector, names in amplifiers.items()}
        matrix, excluded = self._exclude_empty_exposures(
            gather_statistics(inputMDs, inputDims, named, self.config.level))
        self.log.info("Solving %d %s rows x %d exposures (%d entries measured).", len(matrix.detectors),
                      matrix.level, len(matrix.exposures), int(matrix.present.sum()))
        if len(matrix.exposures) == 1:
            self.log.warning("Only one exposure (%d) to normalize: no entry can be checked against another "
                             "exposure or rejected, and each %s's scale is its level in that exposure.",
                             matrix.exposures[0], matrix.level.lower())
        fit = self._solve(matrix)
        errors = scale_uncertainties(fit.solution, matrix.counts)
        self._report(matrix, fit.solution)
        self._report_colour_and_errors(matrix, fit, errors)
        self.metadata["nExcludedExposures"] = len(excluded)
        table = self._scale_table(matrix, fit, errors)
        table.meta["EXCLUDED_EXPOSURES"] = list(excluded)
        return pipeBase.Struct(
            outputScales=self._scale_dict(matrix, fit.solution, amplifiers, excluded),
            outputScaleTable=table,
        )

    def _exclude_empty_exposures(self, matrix: StatisticsMatrix) -> tuple[StatisticsMatrix, list[int]]:
        """Leave out, with a warning, the exposures none of whose entries is valid, unless all are
        (`_solve` then says so); return the matrix of the others and the exposures left out."""
        empty = ~valid_entries(matrix.levels, matrix.counts).any(axis=0)
        if not empty.any() or empty.all():
            return matrix, []
        excluded = [matrix.exposures[j] for j in np.flatnonzero(empty)]
        for exposure in excluded:
            self.log.warning("Exposure %d has no valid flat level (finite, > 0, with pixels) on any %s: "
                             "it is excluded from the normalization, flagged %s in exposureFlags, and the "
                             "combine skips it.", exposure, matrix.level.lower(), NO_VALID_ENTRY)
        keep = ~empty
        return dataclasses.replace(
            matrix, exposures=[e for e, kept in zip(matrix.exposures, keep) if kept],
            levels=matrix.levels[:, keep], counts=matrix.counts[:, keep], present=matrix.present[:, keep],
        ), excluded

    def measureScales(
        self, bgMatrix: np.ndarray, bgCounts: np.ndarray | None = None, iterations: int = 10
    ) -> pipeBase.Struct:
        """Convert backgrounds to exposure and detector components.

        Parameters
        ----------
        bgMatrix : `numpy.ndarray`, (nRows, nExposures)
            Background levels; rows are detectors (or amplifiers), columns exposures.  Entries that
            are not finite or not positive are excluded from every sum.
        bgCounts : `numpy.ndarray`, (nRows, nExposures), optional
            Pixel counts behind each level, used as weights; 1 everywhere if `None`.  Entries with
            a count that is not finite and positive are excluded too.
        iterations : `int`, optional
            Maximum number of solve-and-reject rounds (each an exact least-squares solve).

        Returns
        -------
        scaleResult : `lsst.pipe.base.Struct`
            ``expScales`` and ``vectorE`` (the same array, (nExposures,)), ``detScales`` and
            ``vectorG`` ((nRows,), NaN for a row with no usable entry), ``bgModel`` (G x E for
            every entry), ``logResiduals`` (NaN where invalid), ``flags`` (`EntryFlag` values),
            ``rejected`` (bool mask), ``rowGroups``, ``expGroups``, ``nGroups``, ``iterations``,
            ``converged``, ``rms`` (count-weighted RMS of used log residuals) and ``sigma``
            (their MAD scatter); ``colourTerms`` (K, chosen if ``chooseColourTerms``), ``detColours``
            (u, (nRows, K)) and ``expColours`` (v, (nExposures, K)), with ``bgModel`` then
            ``G x E x exp(u v^T)``.  (``run`` also computes the scales' uncertainties.)

        Raises
        ------
        lsst.cp.flatnorm.scale_solver.EmptyColumnError
            Raised if an exposure column has no valid entry.
        lsst.cp.flatnorm.scale_solver.DisconnectedDataError
            Raised if the data split into groups and ``disconnectedPolicy`` is RAISE.
        """
        return _solution_struct(self._solve_scales(bgMatrix, bgCounts, iterations).solution)

    def _solve_scales(self, levels: np.ndarray, counts: np.ndarray | None, iterations: int) -> ColourFit:
        """Solve with the configured model, outlier rejection and disconnected-data policy
        (``colourTerms=0``: `~lsst.cp.flatnorm.scale_solver.solve_separable_scales`, unchanged)."""
        return fit_colour_terms(
            levels,
            counts,
            self.config.colourTerms,
            choose=self.config.chooseColourTerms,
            max_iterations=iterations,
            outlier_sigma=self.config.outlierSigma,
            outlier_floor=self.config.outlierFloor,
            allow_disconnected=self.config.disconnectedPolicy == "SEPARATE",
            tolerance=self.config.colourTolerance,
            max_sweeps=self.config.colourMaxSweeps,
        )

    def _solve(self, matrix: StatisticsMatrix) -> ColourFit:
        """Solve the matrix, turning index-based errors into ones that name data IDs."""
        try:
            return self._solve_scales(matrix.levels, matrix.counts, self.config.scaleMaxIter)
        except EmptyColumnError as err:
            exposures = [matrix.exposures[j] for j in err.columns]
            raise ValueError(
                f"Exposures {exposures} have no valid flat level (finite, > 0, with pixels) on any "
                f"{matrix.level.lower()}: they cannot be scaled. Remove them from the input collection "
                "or fix their statistics."
            ) from err
        except DisconnectedDataError as err:
            groups = self._describe_groups(matrix, err.row_groups, err.column_groups)
            raise ValueError(
                "The flat statistics split into unconnected groups; set disconnectedPolicy='SEPARATE' "
                f"to solve each on its own gauge. {groups}"
            ) from err

    @staticmethod
    def _describe_groups(matrix: StatisticsMatrix, row_groups: list[list[int]],
                         column_groups: list[list[int]]) -> str:
        return " ".join(
            f"Group {k}: detectors {sorted({matrix.detectors[i] for i in rows})}, "
            f"exposures {[matrix.exposures[j] for j in columns]}."
            for k, (rows, columns) in enumerate(zip(row_groups, column_groups))
        )

    def _report(self, matrix: StatisticsMatrix, solution: ColourSolution) -> None:
        """Log what was excluded and record the solve's diagnostics in the task metadata."""
        invalid = matrix.present & (solution.flags == EntryFlag.INVALID)
        self._log_entries("INVALID", np.argwhere(invalid), lambda i, j: (
            f"Flat level {matrix.levels[i, j]:.6g} with {matrix.counts[i, j]:.6g} pixels for "
            f"{matrix.entry_label(i, j)} is invalid; excluded."))
        self._log_entries("REJECTED", np.argwhere(solution.rejected), lambda i, j: (
            f"Rejected outlier {matrix.entry_label(i, j)}: level {matrix.levels[i, j]:.6g} is "
            f"{100 * np.expm1(solution.log_residuals[i, j]):+.2f}% from the "
            f"{'separable model' if solution.n_terms == 0 else 'model with colour terms'}."))
        for i in solution.empty_rows:
            self.log.warning("No usable flat level for %s: its scale is NaN and it is flagged.",
                             matrix.row_label(i))
        if solution.n_groups > 1:
            self.log.warning("Data split into %d groups, each solved on its own gauge: %s", solution.n_groups,
                             self._describe_groups(matrix, *solution.group_members()))
        if not solution.converged:
            self.log.warning("Outlier rejection did not settle within scaleMaxIter=%d rounds; the scales are "
                             "the exact solution for the last rejected set.", self.config.scaleMaxIter)
        counts: dict[str, int | bool | float] = {
            "nUsed": int(solution.used.sum()), "nRejected": int(solution.rejected.sum()),
            "nInvalid": int(invalid.sum()),
        }
        self.log.info("Solved in %d round(s): %d entries used, %d rejected, %d invalid; log-residual rms "
                      "%.3g, sigma %.3g.", solution.iterations, counts["nUsed"], counts["nRejected"],
                      counts["nInvalid"], solution.rms, solution.sigma)
        counts.update(nGroups=int(solution.n_groups), iterations=int(solution.iterations),
                      converged=bool(solution.converged), logResidualRms=float(solution.rms))
        for key, value in counts.items():
            self.metadata[key] = value

    def _report_colour_and_errors(
        self, matrix: StatisticsMatrix, fit: ColourFit, errors: ScaleUncertainties
    ) -> None:
        """Log the colour terms and the uncertainties, and summarise them in the task metadata."""
        solution = fit.solution
        if self.config.colourTerms > 0:
            how = "chosen by held-out entries" if fit.held_out is not None else "configured"
            self.log.info("Colour terms: %d (%s; colourTerms=%d); log-residual rms for 0..%d terms: %s; "
                          "%d sweep(s), last model change %.2g.", solution.n_terms, how,
                          self.config.colourTerms, self.config.colourTerms,
                          ", ".join(f"{rms:.3g}" for rms in fit.rms_by_terms), solution.sweeps,
                          solution.model_change)
            if fit.held_out is not None:
                self.log.info("Held-out mean square log residual for 0..%d terms: %s (%d entries).",
                              self.config.colourTerms, ", ".join(f"{x:.3g}" for x in fit.held_out.scores),
                              fit.held_out.n_held_out)
            if not solution.sweeps_converged:
                self.log.warning("The colour-term fit did not reach colourTolerance=%g within "
                                 "colourMaxSweeps=%d sweeps (last change of the log model %.3g).",
                                 self.config.colourTolerance,
                                 self.config.colourMaxSweeps, solution.model_change)
            for i in solution.uncoloured_rows:
                self.log.warning("%s has fewer than %d used entries: its colour response is not measured "
                                 "(set to 0, the mean).", matrix.row_label(i), solution.n_terms + 1)
            for j in solution.uncoloured_columns:
                self.log.warning("Exposure %s has fewer than %d used entries: its colour is not measured "
                                 "(set to 0, the reference).", matrix.exposures[j], solution.n_terms + 1)
        self.log.info("Scale uncertainties (1 sigma, relative): E median %.2g, max %.2g; G median %.2g, max "
                      "%.2g (residual scatter %.3g per unit weight, %d degrees of freedom).",
                      *_median_max(errors.column_errors), *_median_max(errors.row_errors), errors.scatter,
                      errors.dof)
        summary = {
            "colourTerms": int(solution.n_terms),
            "colourRms": [float(rms) for rms in fit.rms_by_terms],
            "colourConverged": bool(solution.sweeps_converged),
            "scaleErrScatter": float(errors.scatter),
            "scaleErrDof": int(errors.dof),
        }
        summary["expScaleErrMedian"], summary["expScaleErrMax"] = _median_max(errors.column_errors)
        summary["detScaleErrMedian"], summary["detScaleErrMax"] = _median_max(errors.row_errors)
        if fit.held_out is not None:
            summary["colourHeldOut"] = [float(score) for score in fit.held_out.scores]
        for key, value in summary.items():
            self.metadata[key] = value

    def _log_entries(self, flag: str, entries: np.ndarray, describe: Callable[[int, int], str]) -> None:
        """Warn about each flagged (row, exposure) entry, up to a limit; count the rest.

        Every entry is flagged in the scale table whatever the limit, so a sequence with thousands of
        missing levels does not bury the log.
        """
        for i, j in entries[:_MAX_ENTRY_WARNINGS]:
            self.log.warning("%s", describe(i, j))
        if len(entries) > _MAX_ENTRY_WARNINGS:
            self.log.warning("... and %d more entries flagged %s in the scale table.",
                             len(entries) - _MAX_ENTRY_WARNINGS, flag)

    def _scale_dict(self, matrix: StatisticsMatrix, solution: ColourSolution,
                    amplifiers: Mapping[int, list[str]], excluded: Sequence[int]) -> dict:
        """Build cp_pipe's output layout; with ``omitUnusedScales``, without the unused entries; with
        colour terms, each entry's exposure scale for its row's colour response; flagging the
        ``excluded`` exposures."""
        detectors = sorted(set(matrix.detectors))
        return build_scale_dictionary(
            matrix.level,
            exposures=matrix.exposures,
            row_detectors=matrix.detectors,
            row_amplifiers=matrix.amplifiers,
            e_values=solution.column_scales,
            g_values=solution.row_scales,
            amp_names={detector: amplifiers[detector] for detector in detectors},
            omit=~solution.used if self.config.omitUnusedScales else None,
            entry_factors=solution.entry_factors if solution.n_terms > 0 else None,
            excluded_exposures=excluded,
        )

    def _scale_table(self, matrix: StatisticsMatrix, fit: ColourFit, errors: ScaleUncertainties) -> Table:
        """One row per measured (exposure, row) entry, exposure-major."""
        solution = fit.solution
        rows, columns = np.nonzero(matrix.present.T)  # exposure-major order
        rows, columns = columns, rows
        flags = solution.flags[rows, columns]
        table = Table(
            {
                "exposure": np.asarray(matrix.exposures, dtype=np.int64)[columns],
                "detector": np.asarray(matrix.detectors, dtype=np.int64)[rows],
                "amplifier": np.asarray(matrix.amplifiers, dtype=str)[rows],
                "level": matrix.levels[rows, columns],
                "n_pixels": matrix.counts[rows, columns],
                "exp_scale": solution.column_scales[columns],
                "det_scale": solution.row_scales[rows],
                "model": solution.model[rows, columns],
                "log_residual": solution.log_residuals[rows, columns],
                "flag": _FLAG_NAMES[flags],
                "group": solution.row_groups[rows],
                "exp_scale_err": errors.column_errors[columns],
                "det_scale_err": errors.row_errors[rows],
            }
        )
        for k in range(solution.n_terms):
            table[f"colour_u_{k + 1}"] = solution.row_colours[rows, k]
            table[f"colour_v_{k + 1}"] = solution.column_colours[columns, k]
        table.meta.update({
            "LEVEL": matrix.level, "ITERATIONS": int(solution.iterations),
            "CONVERGED": bool(solution.converged), "N_GROUPS": int(solution.n_groups),
            "LOG_RESIDUAL_RMS": float(solution.rms), "LOG_RESIDUAL_SIGMA": float(solution.sigma),
            "COLOUR_TERMS": int(solution.n_terms), "COLOUR_TERMS_MAX": int(self.config.colourTerms),
            "COLOUR_RMS": [float(rms) for rms in fit.rms_by_terms],
            "COLOUR_SWEEPS": int(solution.sweeps), "COLOUR_CONVERGED": bool(solution.sweeps_converged),
            "SCALE_ERR_SCATTER": float(errors.scatter), "SCALE_ERR_DOF": int(errors.dof),
        })
        if fit.held_out is not None:
            table.meta["COLOUR_HELD_OUT"] = [float(score) for score in fit.held_out.scores]
        return table


def amplifier_names(camera: Any) -> dict[int, list[str]]:
    """Return the amplifier names of each detector of ``camera``, by detector ID: all the
    normalization reads of a camera.

    Parameters
    ----------
    camera : camera-like
        Iterates detectors with ``getId()``, each iterating amplifiers with ``getName()`` (a
        `~lsst.cp.flatnorm.camera_model.CameraModel`, an afw camera, or anything as small).

    Raises
    ------
    TypeError
        Raised, naming the detector and what it lacks, if the camera does not give these.
    """
    names: dict[int, list[str]] = {}
    try:
        detectors = list(camera)
    except TypeError:
        raise TypeError(f"The camera {camera!r} does not iterate over its detectors.") from None
    for detector in detectors:
        try:
            detector_id = int(detector.getId())
        except AttributeError:
            raise TypeError(f"Camera detector {detector!r} has no getId(): the normalization needs each "
                            "detector's ID and amplifier names.") from None
        try:
            names[detector_id] = [str(amp.getName()) for amp in detector]
        except (AttributeError, TypeError):
            raise TypeError(f"Camera detector {detector_id} does not iterate over amplifiers with getName(): "
                            "the normalization needs each detector's amplifier names.") from None
    return names


@dataclasses.dataclass(frozen=True)
class _Amplifier:
    """An amplifier as `amplifier_names` found it: its name, all the statistics are keyed by."""

    name: str

    def getName(self) -> str:
        return self.name


def _camera_name(camera: Any) -> str:
    get_name = getattr(camera, "getName", None)
    return str(get_name()) if callable(get_name) else "given"


def _check_detectors_in_camera(
    inputDims: Sequence[Mapping[str, Any]], amplifiers: Mapping[int, list[str]], camera_name: str
) -> None:
    """Raise `KeyError` naming the first data ID whose detector the camera does not have, before
    anything is solved (the scale dictionary lists each detector's amplifiers from the camera)."""
    known = set(amplifiers)
    for dims in inputDims:
        detector = dims.get("detector")
        if isinstance(detector, bool) or not (isinstance(detector, int | np.integer)
                                              or (isinstance(detector, str) and detector.isdigit())):
            continue  # not an integer ID: gather_statistics names what is wrong with this data ID
        if int(detector) not in known:
            described = "{" + ", ".join(f"{key}={value}" for key, value in dict(dims).items()) + "}"
            raise KeyError(f"Detector {detector} has flat statistics ({described}) but is not in the camera "
                           f"{camera_name}.")


def _median_max(values: np.ndarray) -> tuple[float, float]:
    """Median and maximum of the finite values (NaN if there is none)."""
    finite = values[np.isfinite(values)]
    return (float(np.median(finite)), float(np.max(finite))) if finite.size else (float("nan"),) * 2


def _solution_struct(solution: ColourSolution) -> pipeBase.Struct:
    """Repack a solution under cp_pipe's ``measureScales`` field names."""
    return pipeBase.Struct(
        expScales=solution.column_scales,
        detScales=solution.row_scales,
        vectorE=solution.column_scales,
        vectorG=solution.row_scales,
        bgModel=solution.model,
        logResiduals=solution.log_residuals,
        flags=solution.flags,
        rejected=solution.rejected,
        rowGroups=solution.row_groups,
        expGroups=solution.column_groups,
        nGroups=solution.n_groups,
        iterations=solution.iterations,
        converged=solution.converged,
        rms=solution.rms,
        sigma=solution.sigma,
        colourTerms=solution.n_terms,
        detColours=solution.row_colours,
        expColours=solution.column_colours,
    )
