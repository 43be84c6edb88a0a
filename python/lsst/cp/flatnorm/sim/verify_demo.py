# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Flat verification on simulated flats: a flat made from clean inputs, verified on new ones.

`build_verification_repo` simulates the flat's inputs (with a shadowed entry, which the
normalization rejects) into a repository, runs ``SimFlatCam/cpFlat.yaml`` on them, and adds a
second set of post-ISR flats, taken later, with the defects of an
`~lsst.cp.flatnorm.sim.defects.InjectedDefects` (`lsst.cp.flatnorm.sim.defects`);
`run_verification` runs ``SimFlatCam/verifyFlat.yaml`` on the new set against the flat.  The
pipelines run in this process (`run_in_process`), as ``pipetask run`` would run them.
`demo_section` is the ``make demo`` section: one injected defect, and the verdicts printed.
"""

from __future__ import annotations

__all__ = [
    "FLAT_COLLECTION",
    "VERIFY_COLLECTION",
    "VerificationRepo",
    "build_verification_repo",
    "demo_section",
    "new_flats_config",
    "run_in_process",
    "run_verification",
    "small_camera",
]

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lsst.daf.butler import Butler
from lsst.pipe.base.simple_pipeline_executor import SimplePipelineExecutor

from ..camera_model import CameraModel
from ..exposure_records import insert_exposure_records
from ..verify_results import Verdicts, read_verdicts, summary_lines
from .camera import SIM_CAMERA_NAME, make_sim_camera
from .defects import DefectSimulator, InjectedDefects
from .flat_simulator import FlatSimConfig
from .repo import SimRepo, build_sim_repo, put_images
from .run import pipeline_uri

FLAT_COLLECTION = "u/verify/cpFlat"
"""Output collection of the flat pipeline."""
VERIFY_COLLECTION = "u/verify/verifyFlat"
"""Output collection of the verification."""
_NEW_IMAGES_RUN = "SimFlatCam/raw/verification"
_NEW_DAY_OBS = 20240701
"""Day of the new flats: a month after the flat's inputs, so their exposure IDs differ."""
_NEW_FIRST_SEQ_NUM = 101
"""Sequence number of the first new flat: other than the inputs', so that their noise differs."""


@dataclasses.dataclass
class VerificationRepo:
    """A repository with a flat and new post-ISR flats to verify it on."""

    repo: SimRepo
    simulator: DefectSimulator
    """The simulator of the new flats, whose `~DefectSimulator.expected_failures` is the truth."""
    new_images_run: str
    """RUN collection of the new post-ISR flats."""

    @property
    def physical_filter(self) -> str:
        return self.simulator.config.physical_filter


def small_camera(name: str = SIM_CAMERA_NAME) -> CameraModel:
    """A 256 x 128 science detector of 16 amplifiers (ID 0) and two 256 x 64 wavefront detectors of 8
    (IDs 1 and 2, amplifiers C10..C17): enough for every test, quickly simulated.

    Parameters
    ----------
    name : `str`, optional
        Camera name (an instrument's camera has its name).
    """
    return make_sim_camera(n_side=1, n_wavefront=2, name=name)


def build_verification_repo(
    root: str | os.PathLike[str],
    defects: InjectedDefects,
    *,
    camera: CameraModel | None = None,
    flat_config: FlatSimConfig | None = None,
    new_config: FlatSimConfig | None = None,
) -> VerificationRepo:
    """Make a flat from simulated inputs and add new post-ISR flats with injected defects.

    Parameters
    ----------
    root : `str` or `os.PathLike`
        Directory of the repository (removed first if it exists).
    defects : `lsst.cp.flatnorm.sim.defects.InjectedDefects`
        Defects of the new flats.
    camera : `lsst.cp.flatnorm.camera_model.CameraModel`, optional
        Camera; `small_camera` if `None`.
    flat_config : `lsst.cp.flatnorm.sim.flat_simulator.FlatSimConfig`, optional
        The flat's inputs: 6 exposures with the third partly shadowed on detector 0 and no other
        corruption if `None`.
    new_config : `lsst.cp.flatnorm.sim.flat_simulator.FlatSimConfig`, optional
        The new flats (same seed and camera response, so the flat fits them): 6 exposures a month
        later, the fifth with a saturated band on detector 1, if `None`.

    Returns
    -------
    repo : `VerificationRepo`
    """
    camera = camera if camera is not None else small_camera()
    flat_config = flat_config or FlatSimConfig(n_exposures=6, dead_amplifier=None, shadow=(2, 0),
                                               saturation=None)
    new_config = new_config or new_flats_config(flat_config, saturation=(4, 1))
    repo = build_sim_repo(root, camera=camera, config=flat_config)
    run_in_process(repo.root, pipeline_uri("SimFlatCam", "cpFlat.yaml"), [repo.defaults_collection],
                   FLAT_COLLECTION)
    simulator = DefectSimulator(camera, new_config, defects, first_seq_num=_NEW_FIRST_SEQ_NUM)
    insert_exposure_records(repo.butler, repo.instrument.getName(), simulator.exposures)
    put_images(repo.butler, simulator, repo.instrument.getName(), _NEW_IMAGES_RUN)
    return VerificationRepo(repo, simulator, _NEW_IMAGES_RUN)


def new_flats_config(flat_config: FlatSimConfig, **changes: Any) -> FlatSimConfig:
    """The configuration of new flats of the camera the flat's inputs simulate: the same seed (the
    same response), 6 exposures a month later, without the inputs' shadowed entry.

    Parameters
    ----------
    flat_config : `lsst.cp.flatnorm.sim.flat_simulator.FlatSimConfig`
        The flat's inputs.
    **changes
        Other fields to change.
    """
    fields: dict[str, Any] = dict(n_exposures=6, day_obs=_NEW_DAY_OBS, start_time="2024-07-01T20:00:00",
                                  shadow=None)
    return dataclasses.replace(flat_config, **(fields | changes))


def run_in_process(root: str | os.PathLike[str], pipeline: str, inputs: Sequence[str], output: str,
                   where: str = "") -> Butler:
    """Run a pipeline as ``pipetask run -b root -i inputs -o output -p pipeline -d where`` would,
    in this process (quanta one after another).

    Returns
    -------
    butler : `lsst.daf.butler.Butler`
        A butler reading ``output``.
    """
    butler = SimplePipelineExecutor.prep_butler(str(root), inputs=list(inputs), output=output)
    executor = SimplePipelineExecutor.from_pipeline_filename(pipeline, where=where, butler=butler)
    executor.run(register_dataset_types=True)
    return butler


def run_verification(verification: VerificationRepo, pipeline: str | None = None,
                     output: str = VERIFY_COLLECTION, extra_inputs: Sequence[str] = ()) -> Verdicts:
    """Run the verification of the flat on the new flats and read the verdicts back.

    Parameters
    ----------
    verification : `VerificationRepo`
        The repository.
    pipeline : `str`, optional
        Pipeline URI; ``SimFlatCam/verifyFlat.yaml`` if `None`.
    output : `str`, optional
        Output collection.
    extra_inputs : `~collections.abc.Sequence` [`str`], optional
        More input collections (the previous flat's, for the change tests).
    """
    pipeline = pipeline or pipeline_uri("SimFlatCam", "verifyFlat.yaml")
    repo = verification.repo
    inputs = [verification.new_images_run, FLAT_COLLECTION, *extra_inputs]
    butler = run_in_process(repo.root, pipeline, inputs, output,
                            where=f"exposure.day_obs = {verification.simulator.config.day_obs}")
    table = butler.get("verifyFlatResults", instrument=repo.instrument.getName(),
                       physical_filter=verification.physical_filter)
    return read_verdicts(table)


def demo_section(output: Path) -> Verdicts:
    """``make demo``'s verification: a flat checked on new flats one of whose amplifiers stepped.

    Parameters
    ----------
    output : `pathlib.Path`
        The demo's output directory; the repository is ``output / "verify_repo"``.

    Returns
    -------
    verdicts : `lsst.cp.flatnorm.verify_results.Verdicts`
    """
    clean = FlatSimConfig(n_exposures=6, dead_amplifier=None, shadow=None, saturation=None)
    defects = InjectedDefects(gain_jump=(2, "C15", 1.08))
    verification = build_verification_repo(output / "verify_repo", defects, flat_config=clean,
                                           new_config=new_flats_config(clean))
    verdicts = run_verification(verification)
    for line in summary_lines(verdicts, f"SimFlatCam {verification.physical_filter}"):
        print(line)
    print("   Injected: amplifier C15 of detector 2 responds 8% more in the new flats than in the flat's "
          "inputs (a gain jump).\n   AMP_OFFSET says its corrected level stands more than 2% "
          "(maxAmpOffset) from the median amplifier of its detector, in every exposure: remake the flat "
          "(or the gains) for it.  Every other test passed.")
    return verdicts
