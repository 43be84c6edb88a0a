# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""SIGKILL in the middle of a write, as ``doc/lsst.cp.flatnorm/when-a-run-fails.rst`` describes.

A test hook (`flat_repo.KILL_HOOK`) kills the process while the datastore writes a file: half of
its bytes are in the temporary file beside the final name, nothing is moved or registered.  One
``pipetask run`` is killed so in the normalization's second output (the first one registered), its
resume (``--extend-run --clobber-outputs``) is killed so in the second flat, and the second resume
(``--extend-run``) completes: its outputs equal an uninterrupted run's (`fault_chain.reference_root`,
shared with the other fault modules), exactly.  A ``cp-flatnorm ingest`` killed in its second image
leaves the registry as it was, and the same command run again ingests everything.
``cp-flatnorm check`` finds, each time, every dataset with its file and exactly the files the kills
left, and ``--remove-orphans`` removes them.  The killed commands are programs of their own; the
others run the same commands in this process.
"""

import subprocess
from pathlib import Path

import pytest
from flat_files import Flats, make_flat_repo, write_mef

from butler_outputs import compare_outputs, output_dataset_types
from fault_chain import (CP_FLATNORM, EVERY_OUTPUT, NORMALIZATION_OUTPUTS, PIPELINE, REFERENCE,
                         copy_of_reference)
from flat_repo import PIPETASK, hooked_env, log_lines, run_pipetask
from lsst.cp.flatnorm.cli import main
from lsst.cp.flatnorm.flat_ingest import INGEST_DATASET_TYPE
from lsst.cp.flatnorm.repo_check import check_repository
from lsst.daf.butler import Butler
from pipetask_in_process import cp_flatnorm
from worker_cache import built_once

pytestmark = pytest.mark.slow

FLATS = Flats()
SIGKILL = -9


def kill_in_write(dataset_types, after):
    """Keyword arguments of `flat_repo.run_pipetask` that SIGKILL it in the middle of a write."""
    return dict(kill_before_put=dataset_types, kill_after_puts=after, kill_signal="KILL", kill_where="write")


class Runs:
    """The repositories, what each command printed and what ``check_repository`` found after it."""

    def __init__(self, root, tmp_path_factory):
        # The inputs and the uninterrupted run, REFERENCE, shared with the other fault modules.
        self.repo = copy_of_reference(tmp_path_factory, root / "sim")

        def run(output, *options, **kwargs):
            return run_pipetask(self.repo.root, [self.repo.defaults_collection], output, PIPELINE,
                                *options, **kwargs)

        self.processes = {"killed_normalize": run("u/kill", **kill_in_write(NORMALIZATION_OUTPUTS, 1))}
        self.checks = {"killed_normalize": self.check()}
        butler = Butler.from_config(str(self.repo.root))
        self.normalization_written = {name for name in NORMALIZATION_OUTPUTS if butler.query_datasets(
            name, collections="u/kill", find_first=False, explain=False)}
        self.processes["killed_combine"] = run("u/kill", "--extend-run", "--clobber-outputs",
                                               **kill_in_write(("flat",), 1))
        self.checks["killed_combine"] = self.check()
        # Only the killed runs need a process of their own.
        self.processes["resumed"] = run("u/kill", "--extend-run", in_process=True)
        self.checks["resumed"] = self.check()
        self.butler = Butler.from_config(str(self.repo.root))
        self._ingest(root)

    def check(self, repo=None):
        return check_repository(Butler.from_config(str(repo or self.repo.root)))

    def _ingest(self, root):
        self.ingest_repo = root / "ingest"
        make_flat_repo(self.ingest_repo)
        self.flat_file = write_mef(root / "mef.fits", FLATS, 0)
        command = [str(CP_FLATNORM), "ingest", str(self.ingest_repo), "--instrument", "SimFlatCam",
                   str(self.flat_file)]
        env = hooked_env(KILL_BEFORE_PUT=INGEST_DATASET_TYPE, KILL_AFTER_PUTS="1", KILL_SIGNAL="KILL",
                         KILL_WHERE="write")
        self.processes["killed_ingest"] = subprocess.run(command, capture_output=True, text=True, env=env,
                                                         timeout=300)
        self.checks["killed_ingest"] = self.check(self.ingest_repo)
        self.processes["ingest_again"] = cp_flatnorm(*command[1:])
        self.checks["ingest_again"] = self.check(self.ingest_repo)


@pytest.fixture(scope="module")
@built_once
def runs(tmp_path_factory):
    if not PIPETASK.exists() or not CP_FLATNORM.exists():
        pytest.skip("pipetask or cp-flatnorm is not installed beside this interpreter")
    return Runs(tmp_path_factory.mktemp("faults_kill"), tmp_path_factory)


def half_written(check, dataset_type):
    """The one file a kill left: the datastore's temporary file of ``dataset_type``."""
    (orphan,) = [path for path in check.orphans if f"{dataset_type}_" in path.name and ".tmp." in path.name]
    return orphan


def test_the_kills_happened_in_the_middle_of_writes(runs):
    for name in ("killed_normalize", "killed_combine", "killed_ingest"):
        assert runs.processes[name].returncode == SIGKILL, (name, runs.processes[name].stderr[-3000:])
    check = runs.checks["killed_normalize"]
    assert check.broken == [] and len(check.orphans) == 1
    (killed,) = set(NORMALIZATION_OUTPUTS) - runs.normalization_written
    half_written(check, killed)
    check = runs.checks["killed_combine"]
    assert check.broken == [] and len(check.orphans) == 2
    half_written(check, "flat")


def test_sigkilled_run_resumes_with_the_documented_commands(runs):
    process = runs.processes["resumed"]
    assert process.returncode == 0, process.stderr[-3000:]
    assert ("lsst.pipe.base.mp_graph_executor INFO: Executed 1 quanta successfully, 0 failed and 0 remain "
            "out of total 1 quanta.") in log_lines(process)
    counts = compare_outputs(runs.butler, REFERENCE, runs.butler, "u/kill", output_dataset_types(PIPELINE))
    assert counts == EVERY_OUTPUT


def test_check_finds_what_the_kills_left_and_removes_it(runs, capsys):
    check = runs.checks["resumed"]
    assert check.broken == []
    assert len(check.orphans) == 2  # the two temporary files; every final file has its dataset
    assert all(".tmp." in path.name for path in check.orphans)
    assert main(["check", str(runs.repo.root)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("0 without their file as recorded, 2 files that no dataset owns.")
    assert out[1:] == [f"  no dataset owns {path}" for path in check.orphans]
    assert main(["check", str(runs.repo.root), "--remove-orphans"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "Removed the 2 files that no dataset owns."
    assert not any(path.exists() for path in check.orphans)
    assert main(["check", str(runs.repo.root)]) == 0
    assert runs.check().consistent


def test_check_finds_a_missing_and_a_truncated_file(runs, tmp_path):
    butler = Butler.from_config(str(runs.ingest_repo))
    truncated, missing = butler.query_datasets(INGEST_DATASET_TYPE, collections="SimFlatCam/flats/ingested",
                                               explain=False)[:2]
    truncated_path, missing_path = (Path(butler.getURI(ref).ospath) for ref in (truncated, missing))
    size = truncated_path.stat().st_size
    truncated_path.rename(tmp_path / "truncated")
    missing_path.rename(tmp_path / "missing")
    try:
        truncated_path.write_bytes((tmp_path / "truncated").read_bytes()[:size // 2])
        check = runs.check(runs.ingest_repo)
        assert sorted(check.broken) == sorted([
            f"{INGEST_DATASET_TYPE}@{truncated.dataId.required} in {truncated.run}: {truncated_path} "
            f"has {size // 2} bytes, {size} recorded",
            f"{INGEST_DATASET_TYPE}@{missing.dataId.required} in {missing.run}: {missing_path} is missing",
        ])
        assert main(["check", str(runs.ingest_repo), "--remove-orphans"]) == 1
    finally:
        (tmp_path / "truncated").rename(truncated_path)
        (tmp_path / "missing").rename(missing_path)


def test_sigkilled_ingest_leaves_the_registry_as_it_was_and_runs_again(runs):
    check = runs.checks["killed_ingest"]
    assert check.n_datasets == 1  # the camera
    # The first image's file moved into place, the second's half written: neither registered.
    assert len(check.orphans) == 2 and check.broken == []
    half_written(check, INGEST_DATASET_TYPE)
    process = runs.processes["ingest_again"]
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.startswith(f"Ingested {len(FLATS.detectors)} images from 1 file")
    check = runs.checks["ingest_again"]
    assert check.n_datasets == 1 + len(FLATS.detectors) and check.broken == []
    (left,) = check.orphans  # the half-written temporary; the other file now has its dataset
    assert ".tmp." in left.name
