# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The test helpers' own rules: when the PostgreSQL and Slurm tests skip, and how their programs
are found (fast; the servers themselves run in test_postgres.py and test_slurm.py)."""

import os
import stat
from unittest import mock

import pytest

from servers import debian
from servers.bps_timeline import read_timeline
from servers.processes import free_port, tagged_processes


@pytest.fixture
def no_skip_env(monkeypatch):
    monkeypatch.delenv(debian.SKIP_ENV, raising=False)


def test_skip_env_skips_without_looking(monkeypatch):
    monkeypatch.setenv(debian.SKIP_ENV, "1")
    with mock.patch.object(debian, "_installer", side_effect=AssertionError("looked")):
        assert debian.require(["sh"], ["dash"]) == f"{debian.SKIP_ENV} is set"


def test_present_binaries_need_nothing(no_skip_env):
    with mock.patch.object(debian, "_installer", side_effect=AssertionError("tried to install")):
        assert debian.require(["sh"], ["dash"]) is None


def test_absent_and_not_installable_skips_with_one_line(no_skip_env):
    with mock.patch.object(debian, "_installer", return_value=None):
        reason = debian.require(["no-such-server-cpfn"], ["no-such-package-cpfn"])
    assert "no-such-server-cpfn absent and not installable here" in reason
    assert "apt-get install no-such-package-cpfn" in reason
    assert "\n" not in reason


def test_failed_install_skips_with_apt_gets_last_line(no_skip_env):
    failed = mock.Mock(returncode=100, stdout="",
                       stderr="Reading package lists...\nE: Unable to locate package x\n")
    with mock.patch.object(debian, "_installer", return_value=[]), \
            mock.patch.object(debian, "_apt_get", return_value=failed) as apt_get:
        reason = debian.require(["no-such-server-cpfn"], ["x"])
    assert reason == "apt-get install x failed: E: Unable to locate package x"
    # Tried, refreshed the package lists, tried again.
    assert [call.args[1] for call in apt_get.call_args_list] == ["install", "update", "install"]


def test_which_searches_versioned_directories(tmp_path):
    for version in ("9", "15", "13"):
        binary = tmp_path / "pg" / version / "bin" / "initdb-cpfn"
        binary.parent.mkdir(parents=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    found = debian.which("initdb-cpfn", [str(tmp_path / "pg" / "*" / "bin")])
    assert found == str(tmp_path / "pg" / "15" / "bin" / "initdb-cpfn")
    assert debian.which("initdb-cpfn") is None


def test_tagged_processes_finds_children_by_environment():
    import subprocess

    tag = f"CP_FLATNORM_TEST_TAG={free_port()}"
    name, value = tag.split("=")
    child = subprocess.Popen(["sleep", "30"], env=dict(os.environ, **{name: value}))
    try:
        assert [pid for pid, _ in tagged_processes(tag)] == [child.pid]
    finally:
        child.kill()
        child.wait()
    assert tagged_processes(tag) == []


def test_timeline_of_a_parsl_run(tmp_path):
    """The phases, from log lines in the formats of parsl 2026.10 and pipetask."""
    run = tmp_path / "runinfo" / "000"
    job_log = tmp_path / "job.stderr"
    job_log.write_text(
        "INFO 2026-12-01T15:54:12.000+00:00 lsst.ctrl.mpexec.cli.utils ()(utils.py:253) - QuantumGraph\n"
        "INFO 2026-12-01T15:54:12.500+00:00 x - Execution of task 'a' on quantum {} took 0.250 seconds\n"
        "INFO 2026-12-01T15:54:13.000+00:00 x - Execution of task 'a' on quantum {} took 0.750 seconds\n")
    t0 = 1796140440.0  # 2026-12-01T15:54:00Z
    (run / "slurm" / "block-0" / "m").mkdir(parents=True)
    (run / "parsl.log").write_text("\n".join([
        f"{t0:.6f} x MainProcess-1 MainThread-1 dflow:123 __init__ INFO: Starting DataFlowKernel",
        f"{t0 + 1:.6f} x dflow:1053 submit INFO: Task 0 submitted for App measureByDetector, not waiting",
        f"{t0 + 1:.6f} x dflow:734 launch_task INFO: Parsl task 0 try 0 launched on executor slurm with "
        "executor id 1",
        f"{t0 + 1:.6f} x log_std_stream INFO: Standard error for task 0 will be redirected to {job_log}",
        f"{t0 + 5:.6f} x scale_out_facade INFO: [Scaling executor slurm] Scaling out by 1 blocks",
        f"{t0 + 40:.6f} x dflow INFO: Workflow shutdown information: {{'tasks_failed_count': 0}}",
    ]) + "\n")
    (run / "slurm" / "interchange.log").write_text(
        f"{t0 + 9:.6f} x interchange INFO: Registered manager b'm' (py3.12, 2026.10.26)\n")
    (run / "slurm" / "block-0" / "m" / "worker_0.log").write_text(
        f"{t0 + 10:.6f} x worker INFO: Received executor task 1\n"
        f"{t0 + 16:.6f} x worker INFO: Completed executor task 1\n")
    timeline = read_timeline(run)
    assert timeline.executor == "slurm"
    assert (timeline.to_scale_out, timeline.to_registration, timeline.to_first_job) == (5, 4, 1)
    assert timeline.start_up == 10 and timeline.tail == 24
    (job,) = timeline.jobs
    assert (job.app, job.n_quanta, job.quanta, job.wall, job.overhead) == ("measureByDetector", 2, 1, 6, 5)
    assert job.to_first_log == pytest.approx(2)
    assert "start-up 10.0 s = to scale-out 5.0 + to worker registration 4.0" in timeline.summary()


def test_timeline_of_a_parsl_run_that_launched_nothing(tmp_path):
    """A restart whose jobs were all in the previous run's checkpoint launches none."""
    run = tmp_path / "runinfo" / "001"
    run.mkdir(parents=True)
    (run / "parsl.log").write_text(
        "1796140440.000000 x dflow:123 __init__ INFO: Starting DataFlowKernel\n"
        "1796140441.000000 x dflow:1053 submit INFO: Task 0 submitted for App measureByDetector, "
        "not waiting\n")
    timeline = read_timeline(run)
    assert (timeline.executor, timeline.jobs) == ("", [])
    assert timeline.summary() == "executor (none): no job ran"
