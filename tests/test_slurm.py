# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The flat pipeline submitted with ``bps submit`` to a real Slurm cluster through ctrl_bps_parsl.

A single-node Slurm cluster (munge, slurmctld, slurmd on loopback; ``servers.slurm``, which installs
Debian's packages first when they are absent and the tests run as root) takes the submission made
with the shipped ``bps/sites/parsl_slurm.yaml``, unchanged: parsl submits its pilot job with
sbatch and runs the BPS jobs in it. The outputs must match the simulation's truth and equal,
exactly, those of the same chain run locally by ``pipetask run``; afterwards the queue must be
empty and no process of the submission or of its jobs may be left (job steps, parsl's worker pool
and workers, pipetask). The phases' times (``servers.bps_timeline``) are printed with ``-s``.

Then the two faults that ``doc/lsst.cp.flatnorm/when-a-run-fails.rst`` describes, on the same chain
submitted again, without retries and with one worker (the jobs run one at a time): its pilot job
cancelled with ``scancel`` while it runs the normalization, then the pilot job of its ``bps restart``
killed abruptly (SIGKILL of every process of the job, as the OOM killer or a crashed node does it,
unbeknown to Slurm) while it runs the second of the two combines. The submission must end
with the measurements done and registered and nothing else, the restart with the normalization and
one flat more, each having lost its running job with its worker pool (parsl's ``ManagerLost``); the
same ``bps restart`` again must run only the lost combine, with outputs equal to the local run's,
exactly, and a consistent repository (`lsst.cp.flatnorm.repo_check`) after each restart. parsl's
heartbeat is cut to 10 s for it (``servers.quick_heartbeat_site``), the time parsl takes to declare
the pool lost.
"""

import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from butler_outputs import compare_outputs, output_dataset_types, run_checks
from lsst.cp.flatnorm.repo_check import check_repository
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig
from lsst.cp.flatnorm.sim.repo import build_sim_repo
from lsst.cp.flatnorm.sim.run import pipeline_uri, read_normalization
from lsst.daf.butler import Butler
from pipetask_in_process import run_pipetask
from servers import slurm
from servers.bps_timeline import read_timeline
from servers.processes import wait_until

pytestmark = pytest.mark.slow

ENV_BIN = Path(sys.executable).parent
HAVE_BPS_PARSL = (ENV_BIN / "bps").exists()
PIPELINE = pipeline_uri("SimFlatCam", "cpFlat.yaml")
# Two detectors x six exposures of 8 x 16-pixel amplifiers: two measurement jobs (clustered by
# detector), one normalization, two combines. No shadow: with two detectors the solver cannot tell
# which entry of an exposure is the outlier.
CAMERA = make_sim_camera(n_side=1, n_wavefront=1, amp_width=8, amp_height=16)
CONFIG = FlatSimConfig(n_exposures=6, dead_amplifier=None, shadow=None, saturation=(4, 1))
OUTPUT = "u/test/cpFlatSlurm"
LOCAL = "u/test/cpFlatLocal"
KILLED = "u/test/cpFlatSlurmKilled"
# The Slurm site with parsl's heartbeat at 10 s instead of 120 s: the time a lost pilot job costs
# before its jobs fail (the submitting process imports it from tests/).
TESTS = Path(__file__).parent
ONE_WORKER_QUICK_HEARTBEAT_SITE = """\
    class: servers.quick_heartbeat_site.QuickHeartbeatSlurm
    max_workers_per_node: 1
"""
SUBMIT_TIMEOUT = 420  # seconds; about a minute on 2 busy cores


@pytest.fixture(scope="module")
def cluster():
    if not HAVE_BPS_PARSL:
        pytest.skip("lsst-ctrl-bps and lsst-ctrl-bps-parsl are not installed")
    reason = slurm.skip_reason()
    if reason:
        pytest.skip(reason)
    cluster = slurm.SlurmCluster.start()
    yield cluster
    left = cluster.stop()
    assert left == [], f"processes outlived the cluster's daemons (killed): {left}"


def session_processes(session_id):
    """Live processes of a session (the submission runs in one of its own)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat:
            state, _, _, session = stat[stat.rfind(")") + 2:].split()[:4]
            if int(session) == session_id and state not in ("Z", "X"):
                pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def submission(cluster, tmp_path_factory):
    """Submit with the shipped Slurm site; then record the queue and leftovers, and run the same
    chain locally with pipetask's command, in this process, for comparison."""
    try:  # as on a real cluster, the nodes reach parsl's interchange by the submitter's host name
        socket.gethostbyname(platform.node())
    except OSError as error:
        pytest.fail(f"ctrl_bps_parsl's Slurm site needs this machine's host name {platform.node()!r} "
                    f"to resolve (/etc/hosts): {error}")
    root = tmp_path_factory.mktemp("slurm")
    repo = build_sim_repo(root / "repo", camera=CAMERA, config=CONFIG)
    write_submit_file(root / "submit.yaml", repo, OUTPUT)
    start = time.monotonic()
    with open(root / "bps.log", "w") as log:
        process = start_bps(["submit", str(root / "submit.yaml")], root, bps_env(cluster), log)
        finish(process)
    elapsed = time.monotonic() - start
    result = {
        "repo": repo, "root": root, "returncode": process.returncode, "elapsed": elapsed,
        "log": (root / "bps.log").read_text(),
        # parsl cancels its pilot job at shutdown; give Slurm and the processes a moment to go.
        "queue": settled(cluster.jobs),
        "leftovers": settled(cluster.leftovers),
        "session": settled(lambda: session_processes(process.pid)),
        "pilot_jobs": [cluster.job_times(job_id) for job_id in _all_job_ids(cluster)],
    }
    for pid in result["session"]:  # do not leave them running for the rest of the suite
        os.kill(pid, 9)
    start = time.monotonic()
    run_pipetask(repo.root, PIPELINE, [repo.defaults_collection], LOCAL, log_path=root / "pipetask.log")
    result["local_elapsed"] = time.monotonic() - start
    return result


@pytest.fixture(scope="module")
def killed_submission(cluster, submission, tmp_path_factory):
    """Submit again (same repository, another output, one worker), cancel the pilot job with
    ``scancel`` while it runs the normalization, let the submission end; ``bps restart`` it from the
    same directory and SIGKILL that restart's pilot job while it runs the second combine; ``bps
    restart`` again. Record each run's log, pilot job and outputs, and what was left at the end."""
    root = tmp_path_factory.mktemp("slurm_killed")
    repo = submission["repo"]
    write_submit_file(root / "submit.yaml", repo, KILLED, site=ONE_WORKER_QUICK_HEARTBEAT_SITE)
    env = bps_env(cluster, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    result = {"repo": repo, "root": root}
    start = time.monotonic()
    cancel = lambda job_id: cluster.client("scancel", job_id, check=True)  # noqa: E731
    # A worker opens a job's log file when it starts the job.
    started = lambda label: list(root.glob(f"submit/**/logs/{label}/**/*.stderr"))  # noqa: E731
    result["submit"] = run_bps(cluster, ["submit", str(root / "submit.yaml")], root, env, repo,
                               interrupt=(lambda: started("cpFlatNormalize"), cancel))
    (submit_dir,) = re.findall(r"^Submit dir: (.+)$", result["submit"]["log"], re.MULTILINE) or [""]
    # The documented resume: the plugin's service named (the default is HTCondor's), from the
    # directory of the submission, where parsl keeps its checkpoints (runinfo/).
    restart = ["restart", "--wms-service-class", "lsst.ctrl.bps.parsl.ParslService", "--id", submit_dir]
    result["restart"] = run_bps(cluster, restart, root, env, repo, interrupt=(
        lambda: len(started("cpFlatCombine")) > 1, cluster.kill_job_processes))
    result["second_restart"] = run_bps(cluster, restart, root, env, repo)
    result["queue"] = settled(cluster.jobs)
    result["leftovers"] = settled(cluster.leftovers)
    sessions = [run["pid"] for run in (result["submit"], result["restart"], result["second_restart"])]
    result["session"] = settled(lambda: [pid for session in sessions for pid in session_processes(session)])
    for pid in result["session"]:
        os.kill(pid, 9)
    result["elapsed"] = time.monotonic() - start
    return result


def run_bps(cluster, arguments, root, env, repo, interrupt=None):
    """``bps ARGUMENTS`` in ``root``, logged to ``root``/ARGUMENTS[0]-N.log; with ``interrupt =
    (started, stop)``, ``stop(job_id)`` its running pilot job once ``started()`` is true. Return
    its pid, exit status and log, the queue when it was interrupted, what ``stop`` returned, the
    pilot job's record (scontrol), and the outputs in the repository afterwards (their counts) and
    its consistency."""
    log_path = root / f"{arguments[0]}-{len(list(root.glob(arguments[0] + '-*.log')))}.log"
    with open(log_path, "w") as log:
        process = start_bps(arguments, root, env, log)
        run = {"pid": process.pid, "interrupted": False, "queue": [], "pilot": {}}
        if interrupt:
            started, stop = interrupt
            wait_until(lambda: started() or process.poll() is not None, SUBMIT_TIMEOUT)
            run["queue"] = cluster.jobs()
            running = [job_id for job_id, _, state in run["queue"] if state == "RUNNING"]
            if started() and process.poll() is None and running:
                (pilot,) = running
                run["stopped"] = stop(pilot)
                run["interrupted"] = True
        finish(process)
    if run["interrupted"]:
        run["pilot"] = cluster.job_times(pilot)
    butler = Butler.from_config(str(repo.root))
    run.update(returncode=process.returncode, log=log_path.read_text(),
               outputs=output_counts(butler, KILLED), check=check_repository(butler))
    return run


def output_counts(butler, collection):
    """Number of datasets of each output type of the pipeline in ``collection`` (none if it does not
    exist)."""
    if not butler.collections.query(collection):
        return {}
    return {dataset_type: len(butler.query_datasets(dataset_type, collections=collection, explain=False))
            for dataset_type in output_dataset_types(PIPELINE)}


def settled(listing, patience=15.0):
    """What ``listing()`` still lists once it is empty or ``patience`` seconds have passed."""
    wait_until(lambda: not listing(), patience)
    return listing()


def write_submit_file(path, repo, output, site=""):
    """A submit file of the shipped template and Slurm site for ``repo``, without retries (a failed
    job fails the submission at once); ``site`` adds settings (lines) to the site's."""
    path.write_text(f"""\
includeConfigs:
  - resource://lsst.cp.flatnorm/bps/bps_cpFlat.yaml
  - resource://lsst.cp.flatnorm/bps/sites/parsl_slurm.yaml
pipelineYaml: {PIPELINE}
payload:
  butlerConfig: {repo.root}
  inCollection: {repo.defaults_collection}
  dataQuery: "instrument='SimFlatCam' AND physical_filter='{CONFIG.physical_filter}'"
  output: {output}
submitPath: {path.parent}/submit/{{outputRun}}
numberOfRetries: 0
site:
  slurm:
    retries: 0
{site}""")


def bps_env(cluster, **extra):
    """The submitting process's environment; the pilot job inherits it (sbatch --export=ALL): the
    venv's bin first on PATH."""
    return dict(cluster.env, PATH=f"{ENV_BIN}{os.pathsep}{os.environ['PATH']}", **extra)


def start_bps(arguments, cwd, env, log):
    """``bps ARGUMENTS`` through the package's wrapper, in a session of its own, logging to ``log``."""
    command = [sys.executable, "-m", "lsst.cp.flatnorm.bps_support", "bps", *arguments]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def finish(process):
    """Wait for a bps process, killing it after `SUBMIT_TIMEOUT` seconds."""
    try:
        process.wait(timeout=SUBMIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _all_job_ids(cluster):
    result = cluster.client("scontrol", "-o", "show", "job")
    return [item.split("=", 1)[1] for item in result.stdout.split() if item.startswith("JobId=")]


def test_bps_submit_to_slurm(submission, killed_submission):
    """One test item, so that pytest-xdist runs the submissions once (it tears module fixtures
    down between the items of a group when its queue runs short): the uninterrupted submission's
    checks, then those of the submission whose pilot jobs were cancelled and killed (reported even
    when the first fail)."""
    try:
        run_checks(submission, checks=[
            check_submission_succeeded,
            check_jobs_ran_in_a_slurm_pilot_job,
            check_nothing_is_left_behind,
            check_outputs_equal_the_local_run_exactly,
            check_outputs_match_truth,
        ])
    finally:
        run_checks(killed_submission, checks=[
            check_the_pilot_job_was_cancelled_while_it_ran_the_normalization,
            check_the_submission_ended_with_the_measurements_only,
            check_the_restart_pilot_job_was_killed_while_it_ran_the_second_combine,
            check_the_restart_ended_with_one_combine_lost,
            check_the_second_restart_ran_only_the_lost_combine,
            check_restarted_outputs_equal_the_local_run_exactly,
            check_the_repository_is_consistent_and_nothing_is_left,
        ])


def check_submission_succeeded(submission):
    log = submission["log"]
    assert submission["returncode"] == 0, log[-3000:]
    assert "'tasks_failed_count': 0" in log, log[-3000:]
    failed = [path for path in (submission["root"] / "submit").rglob("*.stderr")
              if "Traceback" in path.read_text()]
    assert failed == [], failed and failed[0].read_text()[-3000:]


def check_jobs_ran_in_a_slurm_pilot_job(submission):
    """One pilot job, submitted by parsl with the site's settings, ran every BPS job and was
    cancelled by parsl at the end; the timeline is printed with -s."""
    (pilot,) = submission["pilot_jobs"]
    assert pilot["JobState"] == "CANCELLED"  # parsl's scale-in
    assert pilot["Partition"] == slurm.SlurmCluster.partition
    assert pilot["TimeLimit"] == "02:00:00"
    assert pilot["OverSubscribe"] == "NO"  # --exclusive
    (run_dir,) = (submission["root"] / "runinfo").iterdir()
    timeline = read_timeline(run_dir)
    assert timeline.executor == "slurm"
    assert sorted(job.app for job in timeline.jobs) == [
        "cpFlatCombine", "cpFlatCombine", "cpFlatNormalize", "measureByDetector", "measureByDetector"]
    assert sum(job.n_quanta for job in timeline.jobs) == len(CAMERA) * CONFIG.n_exposures + 1 + len(CAMERA)
    print(f"\nbps submit {submission['elapsed']:.1f} s (pipetask run -j 1 of the same chain: "
          f"{submission['local_elapsed']:.1f} s); Slurm pilot job submitted {pilot['SubmitTime']}, "
          f"started {pilot['StartTime']}, ended {pilot['EndTime']}\n{timeline.summary()}")


def check_nothing_is_left_behind(submission):
    assert submission["queue"] == []
    assert submission["leftovers"] == []
    assert submission["session"] == []


def check_outputs_equal_the_local_run_exactly(submission):
    repo = submission["repo"]
    counts = compare_outputs(repo.butler, OUTPUT, repo.butler, LOCAL, output_dataset_types(PIPELINE))
    assert sorted(counts.values()) == [1, 1, len(CAMERA), len(CAMERA) * CONFIG.n_exposures]


def check_outputs_match_truth(submission):
    repo = submission["repo"]
    truth = repo.truth
    outputs = read_normalization(repo.butler, OUTPUT, "SimFlatCam", CONFIG.physical_filter)
    assert set(outputs.table["flag"]) == {"USED"}
    for detector, scale in truth.detector_scales().items():
        assert outputs.scales["detScale"][detector] == pytest.approx(scale, rel=1e-3)
    recovered = outputs.exposure_scales()
    for exposure, scale in truth.exposure_scales().items():
        assert recovered[exposure] == pytest.approx(scale, rel=1e-3)
    for detector in CAMERA:
        detector_id = detector.getId()
        flat = repo.butler.get("flat", instrument="SimFlatCam", detector=detector_id,
                               physical_filter=CONFIG.physical_filter, collections=OUTPUT)
        usable = truth.usable_pixels(detector_id)
        ratio = flat.image.array[usable] / truth.pixel_response(detector_id)[usable]
        assert np.mean(ratio) == pytest.approx(1.0, rel=2e-3)
        # Six exposures of ~10^4 electrons: ~0.4% noise per pixel.
        assert np.percentile(np.abs(ratio - 1), 99) < 0.02


def _shutdown_counts(log):
    """parsl's task counts at the end of a run, from its shutdown line: (completed, failed)."""
    (line,) = [line for line in log.splitlines() if "Workflow shutdown information" in line]
    completed = re.search(r"'tasks_completed_count': (\d+)", line)
    failed = re.search(r"'tasks_failed_count': (\d+)", line)
    assert completed and failed, line
    return int(completed.group(1)), int(failed.group(1))


def _jobs_done(run_dir):
    """The BPS jobs (labels) that a parsl run ran to success, from its log (a job lost with its
    worker pool may still have been reported completed by its worker)."""
    log = (run_dir / "parsl.log").read_text()
    apps = dict(re.findall(r"Task (\d+) submitted for App (\S+),", log))
    return sorted(apps[task] for task in re.findall(r"Task (\d+) changing state from \S+ to exec_done", log))


def check_the_pilot_job_was_cancelled_while_it_ran_the_normalization(killed):
    submit = killed["submit"]
    assert submit["interrupted"], submit["log"][-3000:]
    (pilot,) = [job for job in submit["queue"] if job[2] == "RUNNING"]
    assert submit["pilot"]["JobId"] == pilot[0]
    assert submit["pilot"]["JobState"] == "CANCELLED"


def check_the_submission_ended_with_the_measurements_only(killed):
    """The normalization was lost with its worker pool; the combines never ran."""
    _check_the_run_lost_one_job(killed["submit"], killed["root"] / "runinfo" / "000",
                                done=["measureByDetector", "measureByDetector"], normalized=0, flats=0)


def check_the_restart_pilot_job_was_killed_while_it_ran_the_second_combine(killed):
    """SIGKILL of its processes, not a cancellation: Slurm records the job as failed, its script
    killed by signal 9."""
    restart = killed["restart"]
    assert restart["interrupted"], restart["log"][-3000:]
    killed_commands = " ".join(command for _, command in restart["stopped"])
    assert "process_worker_pool" in killed_commands and "run-qbb" in killed_commands, killed_commands
    assert "slurmstepd" not in killed_commands, killed_commands
    print(f"killed the restart's pilot job: {len(restart['stopped'])} processes")
    (pilot,) = [job for job in restart["queue"] if job[2] == "RUNNING"]
    assert restart["pilot"]["JobId"] == pilot[0] != killed["submit"]["pilot"]["JobId"]
    assert (restart["pilot"]["JobState"], restart["pilot"]["ExitCode"]) == ("FAILED", "0:9")


def check_the_restart_ended_with_one_combine_lost(killed):
    """The submission's checkpoint spared the measurements; the normalization and the first combine
    ran; the second was lost with the pilot job, and its flat is not registered."""
    assert "Restart failed" not in killed["restart"]["log"], killed["restart"]["log"][-3000:]
    _check_the_run_lost_one_job(killed["restart"], killed["root"] / "runinfo" / "001",
                                done=["cpFlatCombine", "cpFlatNormalize"], normalized=1, flats=1)


def _check_the_run_lost_one_job(run, run_dir, done, normalized, flats):
    """bps's exit status does not say that a job was lost, its log does; parsl ran the jobs ``done``;
    the final job registered their outputs, and only theirs, each with its whole file."""
    assert run["returncode"] == 0, run["log"][-3000:]
    assert "Task failure due to loss of manager" in run["log"], run["log"][-3000:]
    assert _shutdown_counts(run["log"])[1] == 1, run["log"][-3000:]
    assert _jobs_done(run_dir) == done
    assert run["outputs"] == {"cpFlatStatistics": len(CAMERA) * CONFIG.n_exposures,
                              "cpFlatNormalizeScaleTable": normalized, "cpFlatNormalizeScales": normalized,
                              "flat": flats}
    assert run["check"].consistent, run["check"].report()


def check_the_second_restart_ran_only_the_lost_combine(killed):
    """The restart's checkpoint listed the jobs it took from the submission's as well as its own (the
    measurements, the normalization and the first combine): none of them ran again."""
    run = killed["second_restart"]
    assert run["returncode"] == 0, run["log"][-3000:]
    assert re.search(r"Completed loading checkpoint: \S+/runinfo/001/checkpoint/tasks.pkl with 4 tasks",
                     run["log"]), run["log"][-3000:]
    assert _shutdown_counts(run["log"])[1] == 0, run["log"][-3000:]
    assert "Restart failed" not in run["log"], run["log"][-3000:]
    runs = sorted((killed["root"] / "runinfo").iterdir())
    assert [run.name for run in runs] == ["000", "001", "002"]
    assert _jobs_done(runs[2]) == ["cpFlatCombine"]
    print(f"bps submit with its pilot job cancelled, bps restart with its pilot job killed, bps restart: "
          f"{killed['elapsed']:.1f} s")


def check_restarted_outputs_equal_the_local_run_exactly(killed):
    butler = Butler.from_config(str(killed["repo"].root))
    counts = compare_outputs(butler, KILLED, butler, LOCAL, output_dataset_types(PIPELINE))
    assert counts == killed["second_restart"]["outputs"]
    assert sorted(counts.values()) == [1, 1, len(CAMERA), len(CAMERA) * CONFIG.n_exposures]


def check_the_repository_is_consistent_and_nothing_is_left(killed):
    assert killed["second_restart"]["check"].consistent, killed["second_restart"]["check"].report()
    assert killed["queue"] == []
    assert killed["leftovers"] == []
    assert killed["session"] == []
