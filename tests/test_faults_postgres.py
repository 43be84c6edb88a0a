# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The PostgreSQL registry stops during a run, and two writers work at once, as
``doc/lsst.cp.flatnorm/when-a-run-fails.rst`` describes.

A throwaway PostgreSQL server (``servers.postgres``) holds the registry of a small simulated
repository, where the chain's measure has run.  ``pipetask run -j 2 --extend-run`` is paused
(`flat_repo.KILL_HOOK`) just before the normalization writes its first output, the server is
stopped with ``pg_ctl stop -m immediate``, and the run goes on: it fails, saying the server is
unreachable; the server is restarted.  The resume (``--extend-run``) is paused before its combines,
``cp-flatnorm ingest`` adds other exposures while that run waits, the server is stopped again
(between quanta), and that run fails too; the second resume completes, with outputs equal to an
uninterrupted run's (on SQLite: `fault_chain.reference_root`, shared with the other fault modules),
exactly.  Two ingests of different files run at once: each succeeds or fails cleanly, and nothing
is lost.  ``cp-flatnorm check`` finds every dataset with its file and every file with its dataset
at the end.  The runs the server stops under and the two ingests at once are programs of their
own; the other commands run in this process.
"""

import concurrent.futures
import subprocess

import pytest
from flat_files import Flats, write_mef

from butler_outputs import compare_outputs, output_dataset_types, run_checks
from fault_chain import (CAMERA, CONFIG, CP_FLATNORM, EVERY_OUTPUT, NORMALIZATION_OUTPUTS, PIPELINE,
                         REFERENCE, reference_root)
from flat_repo import PIPETASK, log_lines, pipetask_command, run_pipetask, run_with_fault
from lsst.cp.flatnorm.flat_ingest import INGEST_DATASET_TYPE
from lsst.cp.flatnorm.repo_check import check_repository
from lsst.daf.butler import Butler
from pipetask_in_process import cp_flatnorm
from postgres_repo import auth_env, build_sim_repo_on_postgres, create_registry, start_server

pytestmark = pytest.mark.slow

FIRST_INGESTED = 10
# The simulated exposures only: the ingests add others while the runs go on.
QUERY = f"instrument='SimFlatCam' AND exposure < {CONFIG.day_obs * 100000 + FIRST_INGESTED}"
CONNECTION_LOST = "server closed the connection unexpectedly"
CONNECTION_REFUSED = "Connection refused"


class SmallFlats(Flats):
    """FITS files of the simulated camera (the repository's), with exposure IDs and start times after
    the simulated exposures'."""

    camera = CAMERA

    def exposure_id(self, exposure):
        return super().exposure_id(exposure + FIRST_INGESTED)

    def start(self, exposure):
        return super().start(exposure + FIRST_INGESTED)


class Runs:
    """The server, the repository, what each command printed and the state after each fault."""

    def __init__(self, server, registry_url, root, reference):
        self.server = server
        self.repo = build_sim_repo_on_postgres(root / "repo", registry_url, camera=CAMERA, config=CONFIG)
        self.root = root
        self.flats = SmallFlats()
        self.files = {exposure: write_mef(root / f"exposure{exposure}.fits", self.flats, exposure)
                      for exposure in range(3)}
        self.processes = {}
        self.server_was_down = []
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            both = list(pool.map(self.ingest, [self.files[1], self.files[2]]))
        self.processes["ingest_a"], self.processes["ingest_b"] = both
        self.processes["ingest_again"] = [cp_flatnorm(*self.ingest_arguments(self.files[exposure]))
                                          for exposure, process in zip((1, 2), both)
                                          if process.returncode != 0]
        # The measure first, so that the runs the server stops under start a process for each quantum
        # (-j 2) only from the normalization on; its resumes skip the measure's quanta all the same.
        self.processes["measured"] = run_pipetask(self.repo.root, [self.repo.defaults_collection], "u/pg",
                                                  f"{PIPELINE}#cpFlatMeasure", query=QUERY, in_process=True)
        self.processes["down_in_write"] = self.with_server_down(
            "u/pg", "--extend-run", KILL_BEFORE_PUT=",".join(NORMALIZATION_OUTPUTS), KILL_WHERE="pause")
        self.processes["down_between"] = self.with_server_down(
            "u/pg", "--extend-run", ingest=self.files[0], PAUSE_AT_QUANTUM="cpFlatCombine")
        self.processes["resumed"] = run_pipetask(self.repo.root, [self.repo.defaults_collection], "u/pg",
                                                 PIPELINE, "--extend-run", query=QUERY, in_process=True)
        self.butler = Butler.from_config(str(self.repo.root))
        self.check = check_repository(self.butler)
        self.reference = Butler.from_config(str(reference))

    def command(self, output, *options, jobs=1):
        return pipetask_command(self.repo.root, [self.repo.defaults_collection], output, PIPELINE, *options,
                                query=QUERY, jobs=jobs)

    def with_server_down(self, output, *options, ingest=None, **pause):
        """Run pipetask, stop the server immediately where ``pause`` says (once the file ``ingest``,
        if given, is ingested, while the run waits), let the run go on, and start the server again
        once the run has ended."""
        def stop():
            if ingest is not None:
                self.processes["ingest_while_running"] = cp_flatnorm(*self.ingest_arguments(ingest))
            result = self.server.stop_immediately()
            self.server_was_down.append((result.returncode, not self.server._accepts()))

        name = f"pause{len(self.server_was_down)}"
        process = run_with_fault(self.command(output, *options, jobs=2), self.root / name, stop, **pause)
        self.server.restart()
        return process

    def ingest_arguments(self, path):
        return ["ingest", str(self.repo.root), "--instrument", "SimFlatCam", str(path)]

    def ingest(self, path):
        return subprocess.run([str(CP_FLATNORM), *self.ingest_arguments(path)], capture_output=True,
                              text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not PIPETASK.exists() or not CP_FLATNORM.exists():
        pytest.skip("pipetask or cp-flatnorm is not installed beside this interpreter")
    with start_server() as server:
        url, env = create_registry(server, tmp_path_factory.mktemp("auth"), "faults", "butler")
        with auth_env(env):
            yield Runs(server, url, tmp_path_factory.mktemp("faults_postgres"),
                       reference_root(tmp_path_factory))


def test_faults_of_the_postgres_registry(runs):
    """One test item, so that pytest-xdist builds the server and the runs once."""
    run_checks(runs, checks=[
        check_the_server_was_down_when_the_runs_failed,
        check_failed_runs_say_the_server_is_unreachable,
        check_resumed_run_equals_the_uninterrupted_run,
        check_concurrent_ingests_lost_nothing,
        check_the_repository_is_consistent,
    ])


def check_the_server_was_down_when_the_runs_failed(runs):
    assert runs.server_was_down == [(0, True), (0, True)]
    for name in ("down_in_write", "down_between"):
        assert runs.processes[name].returncode == 1, runs.processes[name].stderr[-3000:]


def check_failed_runs_say_the_server_is_unreachable(runs):
    for name in ("down_in_write", "down_between"):
        lines = log_lines(runs.processes[name])
        assert any(CONNECTION_LOST in line or CONNECTION_REFUSED in line for line in lines), \
            runs.processes[name].stderr[-3000:]


def check_resumed_run_equals_the_uninterrupted_run(runs):
    for name in ("measured", "resumed"):
        assert runs.processes[name].returncode == 0, (name, runs.processes[name].stderr[-3000:])
    counts = compare_outputs(runs.reference, REFERENCE, runs.butler, "u/pg", output_dataset_types(PIPELINE))
    assert counts == EVERY_OUTPUT


def check_concurrent_ingests_lost_nothing(runs):
    names = ("ingest_while_running", "ingest_a", "ingest_b")
    for name in names:
        process = runs.processes[name]
        assert process.returncode == 0 or (process.returncode == 1 and "Traceback" not in process.stderr
                                           and "cp-flatnorm ingest: error:" in process.stderr), \
            (name, process.stderr[-3000:])
    assert runs.processes["ingest_while_running"].returncode == 0
    assert all(process.returncode == 0 for process in runs.processes["ingest_again"])
    refs = runs.butler.query_datasets(INGEST_DATASET_TYPE, collections="SimFlatCam/flats/ingested",
                                      explain=False)
    expected = [(runs.flats.exposure_id(exposure), detector.getId()) for exposure in range(3)
                for detector in CAMERA]
    assert sorted((ref.dataId["exposure"], ref.dataId["detector"]) for ref in refs) == sorted(expected)


def check_the_repository_is_consistent(runs):
    assert runs.check.consistent, runs.check.report()
