# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Butler repositories whose registry is in a throwaway PostgreSQL server (``servers.postgres``),
made as ``doc/lsst.cp.flatnorm/postgres.rst`` says: a database and a password-protected role, the
password in an ``LSST_DB_AUTH`` file, ``butler create`` with a seed file including the package's."""

import os
import subprocess
from pathlib import Path
from unittest import mock

import pytest
import yaml

import lsst.cp.flatnorm.sim.repo as sim_repo
from lsst.cp.flatnorm.sim.repo import build_sim_repo
from lsst.daf.butler import Butler
from pipetask_in_process import butler
from servers import postgres

NAMESPACE = "cp_flatnorm_test"


def start_server():
    """A started `~servers.postgres.PostgresServer` (stop it), or a pytest skip with the reason."""
    reason = postgres.skip_reason()
    if reason:
        pytest.skip(reason)
    return postgres.PostgresServer.start()


def create_registry(server, auth_dir, database, role):
    """Create ``database`` owned by ``role`` with a password, which daf_butler finds in the
    ``LSST_DB_AUTH`` file written in ``auth_dir``; return the URL and that environment variable."""
    password = server.create_database(database, role)
    url = server.url(role, database)
    auth = Path(auth_dir) / "db-auth.yaml"
    auth.write_text(yaml.safe_dump([{"url": url, "password": password}]))
    auth.chmod(0o600)  # daf_butler refuses a credentials file that others can read
    return url, {"LSST_DB_AUTH": str(auth)}


def create_postgres_repo(root: Path, registry_url: str) -> Butler:
    """The recipe of postgres.rst: a seed file that includes the package's seed config and names the
    registry database, and ``butler create`` (its click command, in this process)."""
    seed = root.with_name(root.name + "-seed.yaml")
    seed.write_text(f"""\
includeConfigs:
  - resource://lsst.cp.flatnorm/configs/butler-seed.yaml
registry:
  db: {registry_url}
  namespace: {NAMESPACE}
""")
    process = butler("create", "--seed-config", str(seed), str(root))
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, process.args, process.stdout, process.stderr)
    return Butler.from_config(str(root), writeable=True)


def build_sim_repo_on_postgres(root: Path, registry_url: str, **kwargs):
    """`~lsst.cp.flatnorm.sim.repo.build_sim_repo` on a PostgreSQL repository (``LSST_DB_AUTH`` set)."""
    # build_sim_repo creates its repository with make_repo (SQLite); give it the PostgreSQL one.
    def make_repo(path):
        return create_postgres_repo(Path(path), registry_url)

    with mock.patch.object(sim_repo, "make_repo", make_repo):
        return build_sim_repo(root, **kwargs)


def auth_env(env):
    """Patch ``os.environ`` with ``env`` (for pipetask and the butler of this process too)."""
    return mock.patch.dict(os.environ, env)
