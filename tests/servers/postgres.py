# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""A throwaway PostgreSQL server on loopback, for tests.

`PostgresServer.start` runs ``initdb`` in a new temporary directory and starts ``postgres`` on a
free port of 127.0.0.1 (no Unix socket), as a non-root user when the tests run as root (PostgreSQL
refuses root: the ``postgres`` account of Debian's package, else ``nobody``). It has a superuser
``cpflat_admin`` that connects without a password; every other role must give its password (SCRAM),
as on a real server. `PostgresServer.stop_immediately` and `PostgresServer.restart` crash and
recover it, for fault tests. `PostgresServer.stop` shuts it down (fast shutdown) and removes the directory.
``fsync`` and ``full_page_writes`` are off: the data is thrown away, and only a crash of the machine
could lose what the operating system holds.  ``synchronous_commit`` stays on, as on a production
server: a commit is confirmed once its WAL is handed to the operating system, so what was committed
survives a crash of the server (`PostgresServer.stop_immediately`), as the fault tests need.

Run ``python tests/servers/postgres.py`` to start one by hand; it prints the URL and waits for
Ctrl-C.
"""

from __future__ import annotations

__all__ = ["PACKAGES", "PostgresServer", "skip_reason"]

import atexit
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1]))

from servers import debian
from servers.processes import Daemon, free_port, start_service, wait_until

PACKAGES = ("postgresql",)
"""Debian's server (PostgreSQL 15 on Debian 12); btree_gist, which daf_butler needs, is in it."""
_SEARCH = ("/usr/lib/postgresql/*/bin",)
_START_TIMEOUT = 60.0


def skip_reason() -> str | None:
    """`None` if the server binaries are there (installed now if absent and installable), else a
    one-line reason to skip."""
    return debian.require(["initdb", "postgres"], PACKAGES, _SEARCH)


def _server_user() -> str | None:
    """Whom to run the server as: `None` (this user) unless this is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("Running as root, and there is no 'postgres' or 'nobody' account to run PostgreSQL.")


class PostgresServer:
    """A running throwaway server (use `start`).

    Attributes
    ----------
    host : `str`
        ``127.0.0.1``.
    port : `int`
    admin : `str`
        The superuser, which connects from loopback without a password.
    root : `pathlib.Path`
        Temporary directory with the data directory and the log.
    """

    host = "127.0.0.1"
    admin = "cpflat_admin"

    def __init__(self, root: Path, bin_dir: Path, user: str | None):
        self.root = root
        self.bin_dir = bin_dir
        self.user = user
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = 0
        self.daemon: Daemon | None = None
        self.startup_seconds = float("nan")
        """Wall time of initdb and start (measured by `start`)."""

    @classmethod
    def start(cls, parent: str | os.PathLike[str] | None = None) -> PostgresServer:
        """Create a cluster in a new temporary directory (in ``parent``, else the system's) and start
        its server on a free loopback port.

        The directory must be reachable by the server's user: under pytest's ``tmp_path``, which is
        private to root, it is not, so the default is the system's temporary directory.
        """
        reason = skip_reason()
        if reason:
            raise RuntimeError(f"PostgreSQL is not available: {reason}")
        bin_dir = Path(debian.which("initdb", _SEARCH)).parent
        user = _server_user()
        root = Path(tempfile.mkdtemp(prefix="cp_flatnorm_pg_", dir=parent))
        if user is not None:
            shutil.chown(root, user)
        server = cls(root, bin_dir, user)
        server.startup_seconds = start_service(server, server._initdb, server._run)
        return server

    def _as_user(self) -> dict:
        if self.user is None:
            return {}
        return dict(user=self.user, group=pwd.getpwnam(self.user).pw_gid, extra_groups=[])

    def _initdb(self) -> None:
        command = [str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", self.admin, "--auth=trust",
                   "-E", "UTF8", "--locale=C", "--no-sync"]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root, **self._as_user())
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        (self.data / "pg_hba.conf").write_text(
            f"host all {self.admin} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )

    def _run(self) -> None:
        for attempt in range(3):  # a free port can be taken between choosing and binding it
            self.port = free_port()
            if self._launch():
                return
            tail = self.daemon.log_tail()
            if "could not bind" not in tail and "in use" not in tail:
                break
        raise RuntimeError(f"PostgreSQL did not start on port {self.port}; its log ends:\n{tail}")

    def _launch(self) -> bool:
        """Start ``postgres`` on `port`; whether it accepts connections (else it is stopped)."""
        options = {
            "listen_addresses": self.host, "port": self.port, "unix_socket_directories": "",
            "fsync": "off", "full_page_writes": "off",
            "max_connections": 200, "logging_collector": "off",
        }
        command = [str(self.bin_dir / "postgres"), "-D", str(self.data)]
        for key, value in options.items():
            command += ["-c", f"{key}={value}"]
        self.daemon = Daemon("postgres", command, self.log, user=self.user, cwd=self.root)
        daemon = self.daemon
        if wait_until(lambda: not daemon.alive() or self._accepts(), _START_TIMEOUT) and daemon.alive():
            return True
        self.daemon.stop(signal.SIGINT)
        return False

    def stop_immediately(self) -> subprocess.CompletedProcess:
        """``pg_ctl stop -m immediate``: the server quits at once, without rolling back or closing its
        clients' sessions, as when it crashes; its data directory stays for `restart`."""
        command = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "stop", "-m", "immediate"]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root, **self._as_user())
        if self.daemon is not None:
            self.daemon.process.wait(30)
        return result

    def restart(self) -> None:
        """Start the stopped server again, on the same port (recovering from an immediate stop)."""
        if not self._launch():
            raise RuntimeError(f"PostgreSQL did not restart on port {self.port}; its log ends:\n"
                               f"{self.daemon.log_tail()}")

    def _accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(host=self.host, port=self.port, user=self.admin, dbname="postgres",
                                 connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def url(self, user: str, database: str) -> str:
        """``postgresql://user@127.0.0.1:port/database`` (no password: daf_butler reads it from
        ``LSST_DB_AUTH``, libpq from ``PGPASSWORD`` or ``~/.pgpass``)."""
        return f"postgresql://{user}@{self.host}:{self.port}/{database}"

    def execute(self, statements: Sequence[str], database: str = "postgres") -> None:
        """Run SQL statements as the superuser, outside any transaction."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.admin, dbname=database,
                             autocommit=True) as connection:
            for statement in statements:
                connection.execute(statement)

    def query(self, statement: str, params: Sequence = (), database: str = "postgres") -> list[tuple]:
        """Rows of a query run as the superuser."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.admin, dbname=database) as connection:
            return connection.execute(statement, params).fetchall()

    def create_database(self, name: str, owner: str, extensions: Sequence[str] = ("btree_gist",)) -> str:
        """Create a login role ``owner`` with a new random password, a database ``name`` it owns, and
        the extensions in that database, as an administrator does for a butler registry.

        Returns
        -------
        password : `str`
            The role's password.
        """
        password = secrets.token_hex(16)
        self.execute([f"CREATE ROLE {owner} LOGIN PASSWORD '{password}'",
                      f"CREATE DATABASE {name} OWNER {owner}"])
        self.execute([f"CREATE EXTENSION IF NOT EXISTS {extension}" for extension in extensions], name)
        return password

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, disconnect), then remove the files."""
        if self.daemon is not None:
            self.daemon.stop(signal.SIGINT)
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.stop)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


if __name__ == "__main__":
    with PostgresServer.start() as server:
        print(f"PostgreSQL on {server.url(server.admin, 'postgres')} ({server.root}); Ctrl-C stops it.")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
