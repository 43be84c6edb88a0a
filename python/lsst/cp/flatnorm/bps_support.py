# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Run the package's pipelines through ``ctrl_bps`` on interpreters with CPython's zipfile seek bug.

A quantum graph file (``.qg``) is a zip archive of uncompressed members.  A batch job reads its
quanta with two members open at once: the address file and the multi-block file of quantum
datasets.  CPython 3.12 before 3.12.9 and 3.13 before 3.13.2 (`gh-127847
<https://github.com/python/cpython/issues/127847>`_) move the shared archive file *relative to
its current OS position* when a seek in an uncompressed member skips forward, but that position
is wherever the last read of *any* member left it.  Once the address file is larger than one
4 KiB read (about 100 quanta), every per-quantum job jumps past the end of the archive and
fails with ``EOFError`` in ``zipfile._read2``.

`patch_zipfile_seek` applies the upstream fix at run time, only when a probe shows the bug:
a relative seek of a member starts from that member's own position.  ``python -m
lsst.cp.flatnorm.bps_support COMMAND ARGS...`` applies it, then runs the console script ``COMMAND``
(``pipetask``, ``butler`` or ``bps``) in the same process; the submit templates in ``bps/`` run
every job through it.
"""

from __future__ import annotations

__all__ = ["main", "patch_zipfile_seek", "zipfile_seek_is_broken"]

import functools
import io
import os
import sys
import zipfile
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

_PATCH_MARKER = "_cp_flatnorm_gh127847"


def zipfile_seek_is_broken() -> bool:
    """Return whether this interpreter's `zipfile` has CPython's seek bug gh-127847.

    The probe reads one byte of one uncompressed member, then seeks in a second one opened
    beside it, exactly the pattern of a quantum-graph read.

    Returns
    -------
    broken : `bool`
        `True` if the seek in the second member lands in the wrong place.
    """
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as writer:
        writer.writestr("first", b"ab")
        writer.writestr("second", b"cd")
    with zipfile.ZipFile(archive) as reader, reader.open("first") as first, reader.open("second") as second:
        first.read(1)
        second.seek(1)
        return second.read(1) != b"d"


def _seek_from_member_position(seek: Callable[..., int]) -> Callable[..., int]:
    """Wrap ``zipfile._SharedFile.seek`` so that relative seeks start from the member's position."""

    @functools.wraps(seek)
    def fixed_seek(self: Any, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            # The OS position belongs to whichever member read last; this member's is self._pos.
            offset, whence = self._pos + offset, os.SEEK_SET
        return seek(self, offset, whence)

    setattr(fixed_seek, _PATCH_MARKER, True)
    return fixed_seek


def patch_zipfile_seek() -> bool:
    """Fix CPython's zipfile seek bug gh-127847 in this process, if the interpreter has it.

    Returns
    -------
    patched : `bool`
        `True` if this call installed the fix; `False` if the interpreter does not need it (or
        it was installed before).

    Raises
    ------
    RuntimeError
        Raised if the bug is still there after patching (a `zipfile` this fix does not know):
        quantum-graph reads in batch jobs would fail with ``EOFError``.
    """
    if not zipfile_seek_is_broken():
        return False
    shared_file = zipfile._SharedFile  # type: ignore[attr-defined]
    if not getattr(shared_file.seek, _PATCH_MARKER, False):
        shared_file.seek = _seek_from_member_position(shared_file.seek)
    if zipfile_seek_is_broken():
        raise RuntimeError(
            f"Python {sys.version.split()[0]} has CPython's zipfile seek bug gh-127847 and the runtime "
            "fix did not cure it: batch jobs would fail with EOFError reading the quantum graph. "
            "Use Python >= 3.12.9 or >= 3.13.2."
        )
    return True


def _console_script(name: str) -> Callable[[], int | str | None]:
    """Load the entry point of the console script ``name`` installed in this environment."""
    matches = entry_points(group="console_scripts", name=name)
    if not matches:
        raise SystemExit(f"bps_support: no console script {name!r} in this environment.")
    return next(iter(matches)).load()


def main(argv: Sequence[str] | None = None) -> int | str | None:
    """Fix the zipfile bug if needed, then run a console script in this process.

    Parameters
    ----------
    argv : `~collections.abc.Sequence` [`str`], optional
        The command and its arguments, e.g. ``["pipetask", "run-qbb", ...]``; ``sys.argv[1:]`` if
        `None`.

    Returns
    -------
    result : `int`, `str` or `None`
        What the console script returns, an exit status (click scripts exit instead).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        raise SystemExit("usage: python -m lsst.cp.flatnorm.bps_support COMMAND [ARGS...]")
    patch_zipfile_seek()
    script = _console_script(args[0])
    sys.argv = args
    return script()


if __name__ == "__main__":
    sys.exit(main())
