# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The demo's colour section: a detector that misses the exposures of extreme lamp colour.

Flats of a camera with two sensor families (``physical_type`` ITL and E2V, alternating) whose
response to the lamp colour differs (log slopes +1% and -1% per unit colour), under a lamp whose
colour drifts through the sequence, are simulated into a repository of their own; one detector
is not read out in the reddest exposures.  The flat chain runs with ``pipetask`` with
``colourTerms=0`` and again (normalize and combine) with ``colourTerms=1``.  Each flat is
compared with the true response *at the reference colour* (the count-weighted mean exposure's,
`~lsst.cp.flatnorm.sim.flat_simulator.FlatTruth.reference_colour`), on one gauge constant per
mosaic as in the main section.  The separable model leaves that detector's flat at the mean
colour of the exposures it has; the colour terms put every exposure on the reference colour.
"""

from __future__ import annotations

__all__ = [
    "COLOUR_DETECTOR",
    "ColourSection",
    "build_colour_repo",
    "colour_sim_config",
    "compare_colour_flats",
    "run_colour_pipelines",
]

import dataclasses
import logging
from pathlib import Path

import numpy as np
from astropy.table import Table

from ..camera_model import CameraModel
from ..cpFlatNormalize import CpFlatNormalizationTask
from .camera import make_sim_camera
from .figures import plot_residual_comparison
from .flat_quality import MosaicQuality
from .flat_simulator import FlatSimConfig, FlatSimulator
from .repo import SimRepo, build_sim_repo
from .run import pipeline_uri, run_pipetask

COLOUR_DETECTOR = 2
"""The detector that misses the reddest exposures (R22_S02, a corner of the science grid)."""
N_MISSING = 3
"""How many of the reddest exposures it misses."""
FAMILY_TYPES = ("ITL", "E2V")
FAMILY_SLOPES = (("ITL", 0.01), ("E2V", -0.01))
"""Log response change per unit lamp colour of each sensor family (before centring)."""
COLOUR_DRIFT = 1.0
"""Lamp colour drift over the sequence (linear), on top of +-``COLOUR_JITTER`` per exposure."""
COLOUR_JITTER = 0.1
COLLECTIONS = {0: "u/demo/cpFlatColour0", 1: "u/demo/cpFlatColour1"}


def colour_sim_config(n_exposures: int, seed: int, camera: CameraModel) -> FlatSimConfig:
    """The colour section's simulation: families, drift, and `COLOUR_DETECTOR` missing the
    `N_MISSING` exposures of reddest lamp colour (the other corruptions as in the main section)."""
    config = FlatSimConfig(n_exposures=n_exposures, seed=seed, family_colour_slopes=FAMILY_SLOPES,
                           colour_drift=COLOUR_DRIFT, colour_half_range=COLOUR_JITTER)
    colours = [exposure.colour for exposure in FlatSimulator(camera, config).exposures]
    reddest = sorted(np.argsort(colours)[-N_MISSING:].tolist())
    return dataclasses.replace(config, missing_images=tuple((i, COLOUR_DETECTOR) for i in reddest))


def build_colour_repo(root: Path, n_exposures: int, seed: int, amp_width: int, amp_height: int) -> SimRepo:
    """Simulate the colour section's flats into a fresh repository at ``root`` (amplifiers of
    ``amp_width`` x ``amp_height`` pixels; the demo halves its main section's, for speed)."""
    camera = make_sim_camera(amp_width=amp_width, amp_height=amp_height, physical_types=FAMILY_TYPES)
    return build_sim_repo(root, camera=camera, config=colour_sim_config(n_exposures, seed, camera))


def run_colour_pipelines(repo: SimRepo, output: Path) -> None:
    """The flat chain with ``colourTerms=0``, then normalize and combine with ``colourTerms=1``."""
    pipeline = pipeline_uri("SimFlatCam", "cpFlat.yaml")
    print(f"   pipetask run -p {pipeline} -c cpFlatNormalize:colourTerms=0 -o {COLLECTIONS[0]}")
    run_pipetask(repo.root, pipeline, [repo.defaults_collection], COLLECTIONS[0],
                 extra_args=["-c", "cpFlatNormalize:colourTerms=0"], log_path=output / "pipetask_colour0.log")
    print(f"   pipetask run -p {pipeline}#cpFlatNormalize,cpFlatCombine -c cpFlatNormalize:colourTerms=1 "
          f"-o {COLLECTIONS[1]} (reusing the cpFlatStatistics)")
    run_pipetask(repo.root, f"{pipeline}#cpFlatNormalize,cpFlatCombine", [COLLECTIONS[0]], COLLECTIONS[1],
                 extra_args=["-c", "cpFlatNormalize:colourTerms=1"], log_path=output / "pipetask_colour1.log")


@dataclasses.dataclass
class ColourSection:
    """What the colour section measured."""

    reference_colour: float
    """The reference colour (count-weighted mean exposure colour)."""
    qualities: dict[int, MosaicQuality]
    """Flat errors against the truth at the reference colour, by ``colourTerms``."""
    tables: dict[int, Table]
    """The scale tables (with their metadata), by ``colourTerms``."""
    flagged_ok: bool
    """Whether both normalizations rejected exactly the simulator's corrupted entries."""
    chosen: int
    """``k`` chosen by held-out entries (``colourTerms=2, chooseColourTerms=True``)."""
    held_out: list[float]
    """The held-out scores of ``k = 0, 1, 2``."""

    @property
    def improvement(self) -> float:
        """The absolute flat error of `COLOUR_DETECTOR` with ``colourTerms=0`` over that with 1."""
        return (abs(self.qualities[0].detectors[COLOUR_DETECTOR].detector_error)
                / abs(self.qualities[1].detectors[COLOUR_DETECTOR].detector_error))


def _read_table(repo: SimRepo, collection: str) -> Table:
    return repo.butler.get("cpFlatNormalizeScaleTable", instrument=repo.instrument.getName(),
                           physical_filter=repo.simulator.config.physical_filter, collections=collection,
                           parameters={"strip_astropy_meta_yaml": False})


def _choose(repo: SimRepo) -> tuple[int, list[float]]:
    """Run the normalization in this process on the stored statistics, choosing k in 0..2."""
    refs = repo.butler.query_datasets("cpFlatStatistics", collections=COLLECTIONS[0])
    config = CpFlatNormalizationTask.ConfigClass()
    config.colourTerms = 2
    config.chooseColourTerms = True
    # Its own logger name: quieting it must not quiet the pipelines' cpFlatNormalize in this process.
    task = CpFlatNormalizationTask(config=config, name="colourChoice")
    task.log.setLevel(logging.ERROR)  # its warnings (the shadow's rejection) are in the pipetask logs
    table = task.run(
        [repo.butler.get(ref) for ref in refs], [dict(ref.dataId.required) for ref in refs],
        repo.simulator.camera).outputScaleTable
    return int(table.meta["COLOUR_TERMS"]), [float(x) for x in table.meta["COLOUR_HELD_OUT"]]


def compare_colour_flats(repo: SimRepo) -> ColourSection:
    """Read both runs' tables and flats and compare the flats with the truth at the reference colour."""
    from .demo import measure_flats, read_flats  # the main section's comparison with the truth

    truth = repo.truth
    reference = truth.reference_colour()
    tables = {k: _read_table(repo, collection) for k, collection in COLLECTIONS.items()}
    qualities = {k: measure_flats(repo, read_flats(repo, collection), colour=reference)
                 for k, collection in COLLECTIONS.items()}
    expected = truth.expected_rejected("DETECTOR")
    flagged_ok = all(
        {(int(r["exposure"]), int(r["detector"])) for r in table[table["flag"] == "REJECTED"]} == expected
        for table in tables.values())
    chosen, held_out = _choose(repo)
    return ColourSection(reference, qualities, tables, flagged_ok, chosen, held_out)


def print_colour_section(repo: SimRepo, section: ColourSection) -> None:
    """Print the comparison of ``colourTerms=0`` and ``1``."""
    truth = repo.truth
    missing = sorted(exposure for exposure, _ in truth.missing_images())
    colours = {e.id: e.colour for e in truth.exposures}
    print(f"   camera: {', '.join(f'{t} (log slope {s:+g} per unit colour)' for t, s in FAMILY_SLOPES)}, "
          f"alternating; lamp colour drifting by {COLOUR_DRIFT:g} over the sequence "
          f"({min(colours.values()):+.2f} .. {max(colours.values()):+.2f})")
    print(f"   detector {COLOUR_DETECTOR} not read out in the {N_MISSING} reddest exposures: "
          f"{', '.join(f'{e} ({colours[e]:+.2f})' for e in missing)}")
    print(f"   error = flat / (k x true response at the reference colour {section.reference_colour:+.4f})"
          " - 1, one constant k per mosaic")
    q0, q1 = section.qualities[0], section.qualities[1]
    rows = [
        (f"detector {COLOUR_DETECTOR} (missing the reddest) vs truth",
         *(f"{q.detectors[COLOUR_DETECTOR].detector_error:+.2e}" for q in (q0, q1))),
        ("detectors vs truth: largest |error|", *(f"{e:+.2e} (det {d})" for d, e in
                                                  (q.worst_detector() for q in (q0, q1)))),
        ("detectors vs truth: rms error", *(f"{q.detector_rms():.2e}" for q in (q0, q1))),
        ("amplifiers vs truth: rms error", *(f"{q.amplifier_rms():.2e}" for q in (q0, q1))),
        ("log-residual rms of the used entries", *(f"{t.meta['LOG_RESIDUAL_RMS']:.2e}"
                                                   for t in section.tables.values())),
        ("median det_scale_err / exp_scale_err", *(
            f"{np.nanmedian(t['det_scale_err']):.1e} / {np.nanmedian(t['exp_scale_err']):.1e}"
            for t in section.tables.values())),
    ]
    width = max(len(label) for label, _, _ in rows)
    print(f"   {'':{width}}   {'colourTerms=0':>18}   {'colourTerms=1':>18}")
    for label, zero, one in rows:
        print(f"   {label:{width}}   {zero:>18}   {one:>18}")
    table = section.tables[1]
    print(f"   detector {COLOUR_DETECTOR}'s flat error vs truth: {section.improvement:.0f}x smaller with "
          f"colourTerms=1 (goal: >= 10x)")
    print(f"   rejected entries = the simulator's corrupted ones (truth), both runs: "
          f"{'yes' if section.flagged_ok else 'NO'}; colour fit converged: {table.meta['COLOUR_CONVERGED']} "
          f"in {table.meta['COLOUR_SWEEPS']} sweep(s)")
    print(f"   chooseColourTerms with colourTerms=2 (in this process, same statistics): "
          f"k = {section.chosen}; held-out mean square log residual for k = 0, 1, 2: "
          f"{', '.join(f'{x:.2e}' for x in section.held_out)}")


def write_colour_figure(repo: SimRepo, section: ColourSection, path: Path) -> None:
    """The used entries' log residuals with ``colourTerms=0`` and ``1``, side by side, one colour scale."""
    from .demo import residual_matrix  # the main section's matrix of a table's residuals

    panels = {}
    labels: tuple[list[str], list[str]] = ([], [])
    for k, table in section.tables.items():
        residuals, row_labels, exposure_labels, rejected, invalid = residual_matrix(
            table, repo.truth, "DETECTOR")
        panels[f"colourTerms={k}: log(level / model)"] = (residuals, rejected, invalid)
        labels = (row_labels, exposure_labels)
    plot_residual_comparison(panels, *labels, path)
