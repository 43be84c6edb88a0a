# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Run the ``pipetask`` (and ``butler``, ``cp-flatnorm``) command line in the test process.

The command is ctrl_mpexec's own click command (daf_butler's for ``butler``), so its options, its
logging set-up, its graph building and its executor (``-j 1`` runs every quantum in this process)
are the ones a shell runs; what is saved is the interpreter start-up and the middleware imports of a
subprocess (about 3 s of CPU each).  A command that fails exits as the script does: its exception
logged with its traceback ("Caught an exception, details are in traceback:") and exit status 1.
Tests of the command line as a program (its script, its environment, a signal) keep a real
subprocess.
"""

import contextlib
import io
import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path

import click
from click.testing import CliRunner

from lsst.cp.flatnorm import cli as cp_flatnorm_cli
from lsst.ctrl.mpexec.cli.pipetask import cli as pipetask_cli
from lsst.daf.butler.cli.butler import cli as butler_cli
from lsst.daf.butler.cli.cliLog import CliLog


def pipetask(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``pipetask *args`` in this process; return what a subprocess run would.

    Returns
    -------
    process : `subprocess.CompletedProcess`
        Its ``returncode``, and its ``stdout`` and ``stderr`` (where its log goes) as text.
    """
    return _invoke(pipetask_cli, "pipetask", args)


def butler(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``butler *args`` in this process; return what a subprocess run would (as `pipetask`)."""
    return _invoke(butler_cli, "butler", args)


def cp_flatnorm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``cp-flatnorm *args`` in this process (its ``main``); return what a subprocess run would
    (its status, and its standard output and error as text)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cp_flatnorm_cli.main(list(args))
    return subprocess.CompletedProcess(["cp-flatnorm", *args], status, out.getvalue(), err.getvalue())


def _invoke(command: click.Command, name: str, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    # The command configures the root logger as in a fresh process, where it has no handler yet and
    # CliLog is not initialized (another click command run in this process may have left it so).
    CliLog.resetLog()
    root.handlers.clear()
    try:
        result = CliRunner().invoke(command, list(args), catch_exceptions=True)
    finally:
        CliLog.resetLog()
        logging.captureWarnings(False)
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess([name, *args], result.exit_code, result.stdout, result.stderr)


def run_pipetask(repo: str | Path, pipeline: str, inputs: Sequence[str], output: str, *,
                 extra_args: Sequence[str] = (), log_path: str | Path | None = None
                 ) -> subprocess.CompletedProcess[str]:
    """`lsst.cp.flatnorm.sim.run.run_pipetask` (``-j 1``) in this process.

    Raises
    ------
    subprocess.CalledProcessError
        Raised if the command fails, with its output.
    """
    args = ["run", "-b", str(repo), "-i", ",".join(inputs), "-o", output, "-p", str(pipeline), "-j", "1",
            "--register-dataset-types", *extra_args]
    process = pipetask(*args)
    if log_path is not None:
        Path(log_path).write_text(process.stdout + process.stderr)
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, process.args, process.stdout, process.stderr)
    return process
