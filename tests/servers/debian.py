# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Server binaries from Debian's packages: found, or installed with apt-get when absent.

`require` is what a test fixture calls. It returns `None` when the binaries are there (installing
the packages first if they are absent and this process may install them: root, or passwordless
sudo) and otherwise a one-line reason to skip. ``CP_FLATNORM_SKIP_SERVERS=1`` skips without
looking. Installs are serialised across processes (pytest-xdist workers) by a file lock.
"""

from __future__ import annotations

__all__ = ["SKIP_ENV", "require", "which"]

import fcntl
import glob
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

SKIP_ENV = "CP_FLATNORM_SKIP_SERVERS"
"""Set to 1 to skip the PostgreSQL and Slurm tests (nothing is installed)."""

_LOCK = Path(tempfile.gettempdir()) / "cp_flatnorm_apt.lock"
_APT_TIMEOUT = 900  # seconds for one apt-get call (a download on a slow mirror)


def _missing(binaries: Sequence[str], search: Sequence[str]) -> list[str]:
    return [binary for binary in binaries if not which(binary, search)]


def which(binary: str, search: Sequence[str] = ()) -> str | None:
    """Where a command is: on PATH, in the sbin directories, or in a directory matching one of the
    ``search`` patterns (the newest-looking match first, e.g. ``/usr/lib/postgresql/*/bin``)."""
    directories = [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]
    for pattern in search:
        directories.extend(sorted(glob.glob(pattern), key=_version_key, reverse=True))
    return shutil.which(binary, path=os.pathsep.join(directories))


def _version_key(path: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"[/.]", path)]


def _installer() -> list[str] | None:
    """The command prefix that may run apt-get, or `None`."""
    if shutil.which("apt-get") is None:
        return None
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def _apt_get(prefix: list[str], *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(
        [*prefix, "apt-get", "-o", "DPkg::Lock::Timeout=600", *args],
        env=env, capture_output=True, text=True, timeout=_APT_TIMEOUT,
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def require(binaries: Sequence[str], packages: Sequence[str], search: Sequence[str] = ()) -> str | None:
    """Make sure the binaries exist, installing ``packages`` with apt-get when they do not.

    Parameters
    ----------
    binaries : `~collections.abc.Sequence` [`str`]
        Command names.
    packages : `~collections.abc.Sequence` [`str`]
        Debian packages that provide them.
    search : `~collections.abc.Sequence` [`str`], optional
        More directories to look in, as glob patterns (see `which`).

    Returns
    -------
    reason : `str` or `None`
        `None` if every binary is there now; else a one-line reason to skip.
    """
    if os.environ.get(SKIP_ENV, "") not in ("", "0"):
        return f"{SKIP_ENV} is set"
    if not _missing(binaries, search):
        return None
    prefix = _installer()
    if prefix is None:
        return (f"{', '.join(_missing(binaries, search))} absent and not installable here "
                f"(needs apt-get as root or passwordless sudo: apt-get install {' '.join(packages)})")
    with open(_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be installing them right now
        if not _missing(binaries, search):
            return None
        args = ["install", "-y", "--no-install-recommends", *packages]
        result = _apt_get(prefix, *args)
        if result.returncode != 0:  # a fresh machine may have no package lists yet
            _apt_get(prefix, "update")
            result = _apt_get(prefix, *args)
    if result.returncode != 0:
        return f"apt-get install {' '.join(packages)} failed: {_last_line(result.stderr or result.stdout)}"
    if missing := _missing(binaries, search):
        return f"{', '.join(missing)} still absent after apt-get install {' '.join(packages)}"
    return None
