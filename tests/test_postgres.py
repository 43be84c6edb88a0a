# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The flat chain on a butler repository whose registry is in PostgreSQL.

A throwaway PostgreSQL server (``servers.postgres``; Debian's package is installed first when it is
absent and the tests run as root) gets a database and a password-protected role, as an
administrator would give them; the repository is created on it with the package's seed config by
``butler create``, exactly as ``doc/lsst.cp.flatnorm/postgres.rst`` says, the password coming from
an ``LSST_DB_AUTH`` file. The simulated flats go into it and into a SQLite repository alike; the
chain (measure -> normalize -> combine) runs with ``pipetask run`` twice at the same time on
PostgreSQL, into two output runs, and meanwhile once on SQLite (its command in this process: only
the two PostgreSQL writers need processes of their own). Every output dataset of the three runs must
be equal, exactly.
"""

import concurrent.futures
import subprocess
import time

import numpy as np
import pytest

from butler_outputs import compare_outputs, output_dataset_types, run_checks
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig
from lsst.cp.flatnorm.sim.repo import build_sim_repo
from lsst.cp.flatnorm.sim.run import pipeline_uri, read_normalization, run_pipetask
from pipetask_in_process import run_pipetask as run_in_process
from postgres_repo import NAMESPACE, auth_env, build_sim_repo_on_postgres, create_registry, start_server

pytestmark = pytest.mark.slow

# Five detectors (four science, one wavefront) x five exposures of 8 x 16-pixel amplifiers, with a
# dead amplifier, a shadowed and a saturated entry, so that rejection and invalid entries happen.
CAMERA = make_sim_camera(n_side=2, n_wavefront=1, amp_width=8, amp_height=16)
CONFIG = FlatSimConfig(n_exposures=5, dead_amplifier=(3, "C03"), shadow=(2, 1), saturation=(4, 0))
PIPELINE = pipeline_uri("SimFlatCam", "cpFlat.yaml")
OUTPUTS = ("u/pg/cpFlatA", "u/pg/cpFlatB")
SQLITE_OUTPUT = "u/sqlite/cpFlat"
DATABASE, ROLE = "flats", "butler"


@pytest.fixture(scope="module")
def server():
    with start_server() as server:
        yield server


@pytest.fixture(scope="module")
def registry_url(server, tmp_path_factory):
    """A database owned by a role with a password, which daf_butler finds in the LSST_DB_AUTH file."""
    url, env = create_registry(server, tmp_path_factory.mktemp("auth"), DATABASE, ROLE)
    with auth_env(env):  # for pipetask too
        yield url


def run_concurrently(jobs, meanwhile):
    """Run ``(repo, inputs, output, log)`` pipetask jobs at the same time, and ``meanwhile()`` in this
    thread; the jobs' (start, end) times."""
    def run(job):
        repo, inputs, output, log = job
        start = time.monotonic()
        try:
            run_pipetask(repo, PIPELINE, inputs, output, log_path=log)
        except subprocess.CalledProcessError as error:
            raise AssertionError(f"pipetask into {output} failed:\n{log.read_text()[-3000:]}") from error
        return start, time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        intervals = [pool.submit(run, job) for job in jobs]
        meanwhile()
        return [interval.result() for interval in intervals]


@pytest.fixture(scope="module")
def repos(registry_url, tmp_path_factory):
    """The same simulated flats in a PostgreSQL and a SQLite repository, and the chain run on both:
    twice at once on PostgreSQL (different output runs), and once on SQLite, all three together."""
    root = tmp_path_factory.mktemp("postgres")
    pg = build_sim_repo_on_postgres(root / "pg", registry_url, camera=CAMERA, config=CONFIG)
    sqlite = build_sim_repo(root / "sqlite", camera=CAMERA, config=CONFIG)
    jobs = [(pg.root, [pg.defaults_collection], output, root / f"pipetask-{i}.log")
            for i, output in enumerate(OUTPUTS)]
    intervals = run_concurrently(jobs, lambda: run_in_process(
        sqlite.root, PIPELINE, [sqlite.defaults_collection], SQLITE_OUTPUT,
        log_path=root / "pipetask-sqlite.log"))
    return pg, sqlite, intervals


def test_flat_chain_on_postgres(server, repos):
    """One test item, so that pytest-xdist builds the server and the runs once (it tears module
    fixtures down between the items of a group when its queue runs short)."""
    run_checks(server, repos, checks=[
        check_registry_is_in_postgres,
        check_the_two_postgres_runs_were_concurrent,
        check_postgres_outputs_equal_sqlite_outputs_exactly,
        check_postgres_runs_match_truth,
    ])


def check_registry_is_in_postgres(server, repos):
    pg, _, _ = repos
    assert pg.butler._config["registry", "db"].startswith("postgresql://")
    assert not list(pg.root.glob("*.sqlite3"))
    tables = {row[0] for row in server.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (NAMESPACE,), DATABASE)}
    assert {"collection", "dataset", "file_datastore_records"} <= tables
    # The datasets the runs wrote are rows there.
    for output in OUTPUTS:
        ids = [ref.id for ref in pg.butler.query_datasets("flat", collections=output)]
        rows = server.query(f"SELECT count(*) FROM {NAMESPACE}.dataset WHERE id = ANY(%s)", (ids,), DATABASE)
        assert rows == [(len(CAMERA),)]


def check_the_two_postgres_runs_were_concurrent(server, repos):
    _, _, intervals = repos
    (start_a, end_a), (start_b, end_b) = intervals
    overlap = min(end_a, end_b) - max(start_a, start_b)
    assert overlap > 0.8 * min(end_a - start_a, end_b - start_b)


def check_postgres_outputs_equal_sqlite_outputs_exactly(server, repos):
    pg, sqlite, _ = repos
    dataset_types = output_dataset_types(PIPELINE)
    n_images = len(CAMERA) * CONFIG.n_exposures
    for output in OUTPUTS:
        counts = compare_outputs(pg.butler, output, sqlite.butler, SQLITE_OUTPUT, dataset_types)
        assert sorted(counts.values()) == [1, 1, len(CAMERA), n_images]


def check_postgres_runs_match_truth(server, repos):
    """The outputs are not merely equal: the scales are right (as in test_end_to_end)."""
    pg, _, _ = repos
    for output in OUTPUTS:
        outputs = read_normalization(pg.butler, output, "SimFlatCam", CONFIG.physical_filter)
        assert outputs.entries("REJECTED") == pg.truth.expected_rejected("DETECTOR")
        assert outputs.entries("INVALID") == pg.truth.expected_invalid("DETECTOR")
        recovered = outputs.exposure_scales()
        truth = pg.truth.exposure_scales("DETECTOR")
        ids = sorted(truth)
        np.testing.assert_allclose([recovered[i] for i in ids], [truth[i] for i in ids], rtol=1e-3)
