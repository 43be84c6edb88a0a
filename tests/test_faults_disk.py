# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The disk under the datastore fills, as ``doc/lsst.cp.flatnorm/when-a-run-fails.rst`` describes.

A small tmpfs is mounted where the datastore writes a run's files (needs root; skipped with the
reason where the mount is refused).  ``pipetask run`` is paused (`flat_repo.KILL_HOOK`) before its
first combine, the tmpfs is filled, and the run goes on: the combines fail naming the device and the
file; after the filler is removed, ``--extend-run`` completes, with outputs equal to an uninterrupted
run's (`fault_chain.reference_root`, shared with the other fault modules), exactly.
``cp-flatnorm ingest`` into a tmpfs with room for two images fails at the third with one line naming
the disk, and leaves the repository and the tmpfs as they were; run again once space is freed, it
ingests everything.  The commands that meet the full disk are programs of their own; the others run
in this process.  ``cp-flatnorm check`` finds every dataset with its file and no
file without its dataset, each time.
"""

import atexit
import errno
import os
import shutil
import subprocess

import pytest
from flat_files import Flats, make_flat_repo, write_mef

from butler_outputs import compare_outputs, output_dataset_types
from fault_chain import CAMERA, CP_FLATNORM, EVERY_OUTPUT, PIPELINE, REFERENCE, copy_of_reference
from flat_repo import PIPETASK, log_lines, pipetask_command, run_pipetask, run_with_fault
from lsst.cp.flatnorm.flat_ingest import INGEST_DATASET_TYPE
from lsst.cp.flatnorm.repo_check import check_repository
from lsst.daf.butler import Butler
from pipetask_in_process import cp_flatnorm
from worker_cache import built_once

pytestmark = pytest.mark.slow

FLATS = Flats()
TMPFS_SIZE = "4m"
FULL_RUN = "flats/full"
NO_SPACE = f"[Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}"


def mount_tmpfs(path):
    """Mount a small tmpfs on ``path`` (created); the reason it cannot be, else `None`."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    return None if result.returncode == 0 else f"mount -t tmpfs refused: {result.stderr.strip()}"


def fill(directory, leave=0):
    """Write ``directory/filler`` until the file system has no more than ``leave`` bytes free; return
    the bytes free then."""
    chunk = b"\0" * 65536
    with open(directory / "filler", "wb", buffering=0) as filler:
        try:
            while (free := shutil.disk_usage(directory).free) > leave:
                filler.write(chunk[:min(len(chunk), free - leave)])
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return shutil.disk_usage(directory).free


def files(directory):
    return sorted(path for path in directory.rglob("*") if path.is_file())


class Runs:
    """The repositories on their tmpfs mounts, what each command printed, and checks of each state."""

    def __init__(self, root, tmp_path_factory):
        # The inputs and the uninterrupted run, REFERENCE, shared with the other fault modules.
        self.repo = copy_of_reference(tmp_path_factory, root / "sim")
        self.ingest_repo = root / "ingest"
        make_flat_repo(self.ingest_repo)
        self.skip_reason = (self._mount(self.repo.root / "u" / "disk")
                            or self._mount(self.ingest_repo / "flats"))
        if self.skip_reason:
            return
        self.processes = {}
        self._combine_on_a_full_disk(root)
        self._ingest_on_a_full_disk(root)

    def _mount(self, path):
        reason = mount_tmpfs(path)
        if reason is None:
            atexit.register(subprocess.run, ["umount", str(path)], check=True)
        return reason

    def check(self, repo):
        return check_repository(Butler.from_config(str(repo)))

    def _combine_on_a_full_disk(self, root):
        disk = self.repo.root / "u" / "disk"
        command = pipetask_command(self.repo.root, [self.repo.defaults_collection], "u/disk", PIPELINE)

        def fill_the_disk():
            self.free_at_combine = fill(disk)

        self.processes["full"] = run_with_fault(command, root / "pause", fill_the_disk,
                                                PAUSE_AT_QUANTUM="cpFlatCombine")
        self.full_check = self.check(self.repo.root)
        (disk / "filler").unlink()
        self.processes["resumed"] = run_pipetask(self.repo.root, [self.repo.defaults_collection], "u/disk",
                                                 PIPELINE, "--extend-run", in_process=True)
        self.resumed_check = self.check(self.repo.root)

    def _ingest_on_a_full_disk(self, root):
        disk = self.ingest_repo / "flats"
        # Exposure 1 goes in first, to the disk: its images' files give the space two images take.
        write_mef(root / "exposure1.fits", FLATS, 1)
        self.processes["first_ingest"] = self.ingest(root / "exposure1.fits", in_process=True)
        sizes = [path.stat().st_size for path in (self.ingest_repo / "SimFlatCam").rglob("cpFlatIsrExp_*")]
        self.files_before = files(disk)
        self.free_at_ingest = fill(disk, leave=2 * max(sizes) + max(sizes) // 2)
        write_mef(root / "exposure0.fits", FLATS, 0)
        # A program of its own: HDF5 crashed the process at its exit after a write that ran out of space.
        self.processes["full_ingest"] = self.ingest(root / "exposure0.fits", "--run", FULL_RUN)
        self.files_after_full_ingest = files(disk)
        self.full_ingest_check = self.check(self.ingest_repo)
        (disk / "filler").unlink()
        self.processes["ingest_again"] = self.ingest(root / "exposure0.fits", "--run", FULL_RUN,
                                                     in_process=True)
        self.ingest_again_check = self.check(self.ingest_repo)

    def ingest(self, *args, in_process=False):
        arguments = ["ingest", str(self.ingest_repo), "--instrument", "SimFlatCam", *map(str, args)]
        if in_process:
            return cp_flatnorm(*arguments)
        return subprocess.run([str(CP_FLATNORM), *arguments], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
@built_once
def runs(tmp_path_factory):
    if not PIPETASK.exists() or not CP_FLATNORM.exists():
        pytest.skip("pipetask or cp-flatnorm is not installed beside this interpreter")
    runs = Runs(tmp_path_factory.mktemp("faults_disk"), tmp_path_factory)
    if runs.skip_reason:
        pytest.skip(runs.skip_reason)
    return runs


def test_the_disk_was_full_when_the_combine_wrote(runs):
    assert runs.free_at_combine < 4096
    process = runs.processes["full"]
    assert process.returncode == 1
    lines = log_lines(process)
    disk = f"file://{runs.repo.root / 'u' / 'disk'}/"
    for detector in CAMERA:
        # The flat's write failed, into the tmpfs, for lack of space (astropy's OSError, then daf_butler's).
        assert any(line.startswith("Failed to serialize dataset flat@{instrument: 'SimFlatCam', detector: "
                                   f"{detector.getId()},") and f"to temporary location {disk}" in line
                   for line in lines), process.stderr[-5000:]
    assert any(NO_SPACE in line for line in lines)


def test_combine_on_a_full_disk_resumes_with_extend_run(runs):
    # Every dataset has its file; the only file without a dataset is the test's filler.
    assert runs.full_check.broken == []
    assert runs.full_check.orphans == [runs.repo.root / "u" / "disk" / "filler"]
    process = runs.processes["resumed"]
    assert process.returncode == 0, process.stderr[-3000:]
    butler = Butler.from_config(str(runs.repo.root))
    counts = compare_outputs(butler, REFERENCE, butler, "u/disk", output_dataset_types(PIPELINE))
    assert counts == EVERY_OUTPUT
    assert runs.resumed_check.consistent, runs.resumed_check.report()


def test_ingest_on_a_full_disk_fails_naming_the_disk_and_writes_nothing(runs):
    assert runs.processes["first_ingest"].returncode == 0
    process = runs.processes["full_ingest"]
    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert NO_SPACE in process.stderr and str(runs.ingest_repo / "flats") in process.stderr, process.stderr
    assert runs.files_after_full_ingest == runs.files_before + [runs.ingest_repo / "flats" / "filler"]
    check = runs.full_ingest_check
    assert check.broken == [] and check.orphans == [runs.ingest_repo / "flats" / "filler"]
    assert check.n_datasets == 1 + len(FLATS.detectors)  # the camera and exposure 1's images


def test_ingest_runs_again_once_space_is_freed(runs):
    process = runs.processes["ingest_again"]
    assert process.returncode == 0, process.stderr[-3000:]
    butler = Butler.from_config(str(runs.ingest_repo))
    assert len(butler.query_datasets(INGEST_DATASET_TYPE, collections=FULL_RUN, explain=False)) == \
        len(FLATS.detectors)
    check = runs.ingest_again_check
    assert check.consistent, check.report()
