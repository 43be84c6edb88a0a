# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Free loopback ports, daemons started and stopped by PID, and the processes that carry a tag in
their environment (how the tests find what a server or a batch job left behind)."""

from __future__ import annotations

__all__ = ["Daemon", "free_port", "start_service", "tagged_processes", "wait_until"]

import atexit
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.2) -> object:
    """Call ``condition`` until it returns something true (returned) or ``timeout`` seconds pass
    (then its last, false, value is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def start_service(service, *steps: Callable[[], object]) -> float:
    """Run a service's start-up ``steps`` in order and return how long they took.

    ``service.stop`` is registered to run at interpreter exit, in case the tests die before they
    stop the service, and runs at once if a step fails, so no process outlives a failed start.
    """
    atexit.register(service.stop)
    begin = time.monotonic()
    try:
        for step in steps:
            step()
    except BaseException:
        service.stop()
        raise
    return time.monotonic() - begin


def tagged_processes(tag: str) -> list[tuple[int, str]]:
    """Live (not zombie) processes whose environment holds ``tag`` (as ``NAME=value``).

    Returns
    -------
    processes : `list` [`tuple` [`int`, `str`]]
        PID and command line of each.
    """
    needle = tag.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat[stat.rfind(")") + 2:].split()[0] in ("Z", "X"):
                continue
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone, or not ours to read
            continue
        found.append((int(entry.name), command.strip()))
    return found


class Daemon:
    """A server process run in the foreground, in a session of its own, logging to a file.

    Parameters
    ----------
    name : `str`
        For messages.
    command : `~collections.abc.Sequence` [`str`]
        The command (its daemon's "do not fork" option given).
    log : `pathlib.Path`
        File that receives its standard output and error.
    env : `dict` [`str`, `str`], optional
        Environment.
    user : `str`, optional
        Run as this user (the caller being root).
    cwd : `pathlib.Path`, optional
        Working directory (one that ``user`` may enter).
    """

    def __init__(self, name: str, command: Sequence[str], log: Path, *, env: dict | None = None,
                 user: str | None = None, cwd: Path | None = None):
        self.name = name
        self.log = log
        kwargs = {}
        if user is not None:
            kwargs = dict(user=user, group=_primary_group(user), extra_groups=[])
        with open(log, "ab") as out:
            self.process = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                            start_new_session=True, **kwargs)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, n_lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n_lines:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal the process, wait for it, kill it if it outlives ``timeout``; return its status."""
        if self.alive():
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _primary_group(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid
