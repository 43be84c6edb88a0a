# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The smallest flat chain the fault tests interrupt (``test_faults_*.py``, ``test_resume.py``): one
science and one wavefront detector of 4 x 4-pixel amplifiers, three exposures, no flaw; what it
writes; and its repository with an uninterrupted run, built once for all the modules that compare
an interrupted run with it."""

import fcntl
import os
import shutil
import sys
from pathlib import Path

import pytest

from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig, FlatSimulator
from lsst.cp.flatnorm.sim.repo import SimRepo, build_sim_repo, open_sim_repo
from lsst.cp.flatnorm.sim.run import pipeline_uri
from pipetask_in_process import run_pipetask

PIPELINE = pipeline_uri("SimFlatCam", "cpFlat.yaml")
CAMERA = make_sim_camera(n_side=1, amp_width=4, amp_height=4, n_wavefront=1)
CONFIG = FlatSimConfig(n_exposures=3, dead_amplifier=None, shadow=None, saturation=None, n_cosmic_rays=0)
EVERY_OUTPUT = {"cpFlatStatistics": CONFIG.n_exposures * len(CAMERA), "cpFlatNormalizeScaleTable": 1,
                "cpFlatNormalizeScales": 1, "flat": len(CAMERA)}
"""Number of datasets of each output type of a complete run."""
NORMALIZATION_OUTPUTS = ("cpFlatNormalizeScales", "cpFlatNormalizeScaleTable")
CP_FLATNORM = Path(sys.executable).with_name("cp-flatnorm")
REFERENCE = "u/ref"
"""Output collection of the uninterrupted run in `reference_root`."""


def shared_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of this test session that every pytest-xdist worker sees (the base temporary
    directory's parent under xdist, which pytest makes anew for each session; else the base)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def reference_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chain's repository with the uninterrupted run `REFERENCE`, built by the first module of the
    session that asks (under a file lock, so that two workers never build it twice).  Read it only:
    `copy_of_reference` gives a repository to write in."""
    shared = shared_directory(tmp_path_factory)
    directory = shared / "fault_chain_reference"
    with open(shared / "fault_chain_reference.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (directory / "built").exists():
            shutil.rmtree(directory, ignore_errors=True)  # what a failed build left
            repo = build_sim_repo(directory / "repo", camera=CAMERA, config=CONFIG)
            run_pipetask(repo.root, PIPELINE, [repo.defaults_collection], REFERENCE)
            (directory / "built").touch()
    return directory / "repo"


def copy_of_reference(tmp_path_factory: pytest.TempPathFactory, root: Path) -> SimRepo:
    """A copy at ``root`` of `reference_root`: the simulated inputs and the run `REFERENCE`, as
    `~lsst.cp.flatnorm.sim.repo.build_sim_repo` and a run of `PIPELINE` would leave them."""
    shutil.copytree(reference_root(tmp_path_factory), root)
    return open_sim_repo(root, FlatSimulator(CAMERA, CONFIG))
